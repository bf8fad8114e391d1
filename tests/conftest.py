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

# Test files that take minutes on a 2-core machine, longest first (durations of `make test`,
# 2026-11-30). `make test`'s pytest-xdist workers take whole files in collection order; starting
# the long ones first keeps one worker from running the last long file alone at the end.
SLOW_FILES_FIRST = ("test_docs_commands.py", "test_reproduce.py", "test_train.py",
                    "test_reliability.py", "test_crash_loop.py", "test_learning.py",
                    "test_faults.py", "test_finetune.py", "test_mocov3.py", "test_cli.py")


def pytest_collection_modifyitems(config, items):
  """Slow files first (stable: the tests of a file keep their order, other files theirs)."""
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES_FIRST)))
