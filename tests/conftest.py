"""Test setup: 8 simulated CPU devices, set before JAX starts (sharding tests need them).

MAELITE_TEST_PLATFORM=gpu keeps JAX's default backend instead, for the GPU-only tests
(`MAELITE_TEST_PLATFORM=gpu pytest tests/test_models.py -k cudnn`); fp32 matmuls then run at
full precision, not TF32, so that the equality tests keep their tolerances.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Entry points keep compiled programs on disk (utils/compile_cache.py); the scripts the tests
# run use one cache per test session, not the user's ~/.cache.
if "MAELITE_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="maelite_jax_cache_")
  os.environ["MAELITE_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
if os.environ.get("MAELITE_TEST_PLATFORM", "cpu") == "cpu":
  jax.config.update("jax_platforms", "cpu")
else:
  jax.config.update("jax_default_matmul_precision", "highest")
