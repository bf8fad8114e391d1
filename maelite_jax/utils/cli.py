"""What every entry point shares: --config / --workdir / --distributed flags, quiet logs,
multi-host start, the persistent compilation cache (utils/compile_cache.py; --compilation_cache,
--compilation_cache_dir), and one error path.

Exit codes (documented in the README):
  0   finished
  1   a crash (a bug): the traceback is printed
  2   a user error (config, data, checkpoint, import/export file, full disk, missing file): one
      paragraph naming the problem and the fix, no traceback (`--debug` or MAELITE_DEBUG=1
      shows it)
  75  preempted (SIGTERM/SIGINT): the checkpoint is written, rerun the same command to resume
"""

import errno
import os
import shutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from maelite_jax.utils import compile_cache
from maelite_jax.utils import distributed as distributed_lib
from maelite_jax.utils.errors import UserError

# TensorFlow's C++ INFO lines (oneDNN notices at import) are not ours; warnings still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75
DEBUG_ENV = "MAELITE_DEBUG"

_DEBUG = flags.DEFINE_bool("debug", False, f"show tracebacks of user errors (also {DEBUG_ENV}=1)")
_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "keep compiled XLA programs on disk, so that a second run of the "
    f"same config skips compilation (off: --nocompilation_cache or {compile_cache.ENV_SWITCH}=0)")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "where the compilation cache lives (default: "
    f"${compile_cache.ENV_DIR}, else ~/.cache/maelite_jax/jax_cache)")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "check the command line and exit: flag names and values, the config file "
    "and its :variant, every --config.* override (nothing is read, trained or written)")


def define_flags(config_help: str, workdir_help: str = "where checkpoints, metrics and results "
                 "go"):
  """Defines --config (with --config.* overrides), --workdir and the multi-host flags; returns
  their holders (config, workdir)."""
  config = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  flags.DEFINE_string("data_service", None, "tf.data service dispatcher HOST:PORT: training "
                      "examples are decoded and augmented by its workers (sets "
                      "config.data.service_address; docs/input-pipeline.md)")
  distributed_lib.define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir


def start(argv, config=None):
  """Checks argv, quiets library logs, starts multi-host JAX when asked; returns config."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if config is not None and "data_service" in flags.FLAGS and flags.FLAGS.data_service:
    config.data.service_address = flags.FLAGS.data_service
  import jax
  from maelite_jax.utils.logs import quiet_library_logs
  quiet_library_logs()
  distributed_lib.initialize_from_flags(config)
  logging.info("JAX %s: %d process(es), %d device(s): %s", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind)
  return config


def _debug() -> bool:
  return os.environ.get(DEBUG_ENV) == "1" or ("debug" in flags.FLAGS and flags.FLAGS.debug
                                             if flags.FLAGS.is_parsed() else False)


def user_error_message(e: BaseException) -> str | None:
  """The one paragraph for a user error, or None for a bug."""
  if isinstance(e, UserError):
    return str(e)
  if isinstance(e, FileNotFoundError):
    return f"{e}. Check the path."
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    where = e.filename or os.getcwd()
    probe = where
    while probe and not os.path.exists(probe):
      probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe or ".").free / 2**20
    device = os.stat(probe or ".").st_dev
    return (f"no space left on the device holding {where} (device {device >> 8}:{device & 0xff}, "
            f"{free:.0f} MiB free). Free space or move the workdir; a rerun resumes from the "
            "last complete checkpoint (incomplete ones are ignored).")
  return None


def run(main, flags_parser=None, verbosity=logging.INFO):
  """app.run(main) with the one error path (see the module docstring)."""
  started = {"main": False}

  def wrapped(argv):
    started["main"] = True
    if _DRY_RUN.value:  # the flags (and --config with its overrides) parsed: the line is valid
      if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
      print("dry run: the command line is valid; nothing was run", flush=True)
      return 0
    try:
      compile_cache.setup(_CACHE.value, _CACHE_DIR.value)  # before anything compiles
      return main(argv)
    except Exception as e:  # noqa: BLE001 - classified below; bugs are re-raised
      message = user_error_message(e)
      if message is None or _debug():
        raise
      logging.error("%s", message)
      print(f"error: {message}", file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)

  logging.set_verbosity(verbosity)
  try:
    app.run(wrapped, **({"flags_parser": flags_parser} if flags_parser else {}))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if started["main"]:
      raise
    # An error while parsing --config.* overrides (unknown key, wrong type) or loading the file.
    msg = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
    print(f"error: config: {msg}. Check the key names and types of your --config.* flags "
          "against the config file (unknown keys and wrong types are rejected).",
          file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
