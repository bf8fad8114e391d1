"""JAX's persistent compilation cache, on by default for every entry point (utils/cli.py).

Why: XLA compiles the training step once per process, 15-60 s on a 2-core CPU and ~25 s on a
GPU (where autotuning adds to it); the same config run again (a resumed run, a rerun, the next
sweep point with the same shapes) then loads the executable from disk instead. The key is JAX's
own (the lowered program, jaxlib version, platform, XLA flags and compile options, devices), so a
changed model, config or JAX version compiles afresh and never loads a stale program.

Where (first match wins):
  --nocompilation_cache or MAELITE_COMPILATION_CACHE=0   off
  --compilation_cache_dir=DIR                           DIR
  JAX_COMPILATION_CACHE_DIR (JAX's own setting)         left as JAX read it
  MAELITE_COMPILATION_CACHE_DIR                         that directory
  default                                               $XDG_CACHE_HOME or ~/.cache, then
                                                        maelite_jax/jax_cache
Programs that compile in >= MIN_COMPILE_SECS are stored; the directory is capped at MAX_BYTES
(JAX evicts the least recently used entries). On GPU, JAX also keeps XLA's per-fusion autotuning
results there (jax_persistent_cache_enable_xla_caches), most of a GPU compile.
"""

import os

ENV_DIR = "MAELITE_COMPILATION_CACHE_DIR"
ENV_SWITCH = "MAELITE_COMPILATION_CACHE"
# Small programs (metric reductions, data transfers) compile in milliseconds: not worth a file.
# The train step, the init and the evaluators' forward passes all take longer than this.
MIN_COMPILE_SECS = 0.3
MAX_BYTES = 4 * 2**30
_OFF_VALUES = ("0", "false", "no", "off")


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "maelite_jax", "jax_cache")


def resolve_dir(enabled: bool = True, path: str | None = None) -> str | None:
  """The cache directory the rules above pick, or None when the cache is off."""
  if not enabled or os.environ.get(ENV_SWITCH, "").strip().lower() in _OFF_VALUES:
    return None
  if path:
    return os.path.abspath(os.path.expanduser(path))
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.path.abspath(os.path.expanduser(os.environ["JAX_COMPILATION_CACHE_DIR"]))
  if os.environ.get(ENV_DIR):
    return os.path.abspath(os.path.expanduser(os.environ[ENV_DIR]))
  return default_dir()


def setup(enabled: bool = True, path: str | None = None) -> str | None:
  """Turns the cache on (or off) for this process; call before the first compilation.

  Returns the directory in use, or None. A directory that cannot be created turns the cache
  off with a warning rather than failing the run: a cache is an optimisation, never a need.
  """
  import jax
  from absl import logging
  from jax.experimental.compilation_cache import compilation_cache
  # JAX decides once per process whether the cache is used (at its first compilation); reset
  # so that a compilation before this call (e.g. an import-time jnp op) cannot pin that choice.
  from jax._src import compilation_cache as jax_cache_state
  if jax_cache_state._cache_checked:  # only then is there a choice to undo (and a log line)
    compilation_cache.reset_cache()
  where = resolve_dir(enabled, path)
  if where is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  try:
    os.makedirs(where, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache off: cannot create %s (%s); pass "
                    "--compilation_cache_dir=DIR or --nocompilation_cache", where, e)
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", where)
  # JAX's own settings (env JAX_PERSISTENT_CACHE_*) win over ours when they are given.
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
  if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  logging.info("compilation cache: %s (--nocompilation_cache turns it off)", where)
  return where
