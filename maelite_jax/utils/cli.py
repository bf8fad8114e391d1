"""What every entry point shares: --config / --workdir / --distributed flags, quiet logs,
multi-host start, the persistent compilation cache (utils/compile_cache.py; --compilation_cache,
--compilation_cache_dir), and one error path.

Exit codes (documented in docs/reliability.md):
  0   finished (or already finished: nothing to do)
  1   a crash (a bug): the traceback is printed
  2   a user error (config, data, checkpoint, import/export file, full disk, missing file): one
      paragraph naming the problem and the fix, no traceback (`--debug` or MAELITE_DEBUG=1
      shows it)
  75  preempted (SIGTERM/SIGINT): the checkpoint is written, rerun the same command to resume
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from maelite_jax.utils import compile_cache
from maelite_jax.utils import distributed as distributed_lib
from maelite_jax.utils.errors import (ConfigError, UserError, disk_full_message, failed_path,
                                      is_disk_full)

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


# ----------------------------------------------------------------- user errors -> one paragraph

def user_error_message(e: BaseException) -> str | None:
  """The one paragraph for a user error, or None for a bug."""
  if isinstance(e, UserError):
    return str(e)
  if is_disk_full(e):
    return disk_full_message(failed_path(e) or os.getcwd())
  if isinstance(e, FileNotFoundError):
    return f"{e}. Check the path."
  return None


def _config_flags():
  """The names and values of the config-file flags (--config, --finetune_config, ...)."""
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if type(flag).__name__ == "_ConfigFlag":
      yield name, flag


def _check_configs_loaded():
  """ml_collections defers a config file's load error until the config is first read; this
  reads it now, as one paragraph naming the flag and the file."""
  for name, flag in _config_flags():
    value = flag.value
    if type(value).__name__ == "_ErrorConfig":
      error = object.__getattribute__(value, "_error")
      reason = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
      path = _flag_argument(sys.argv, name) or ""
      raise ConfigError(f"--{name} {path}: the config file cannot be loaded ({reason}). "
                        "Pass an existing config file, e.g. configs/mae_tiny.py:cpu "
                        "(FILE[:VARIANT]).")


def _flag_argument(argv, name: str) -> str | None:
  """The value given to --name (as --name=V or --name V) on the command line, if any."""
  found = None  # the last one wins, as in absl
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      found = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      found = argv[i + 1]
  return found


def load_config_file(spec: str):
  """FILE[:VARIANT] -> FILE's get_config(VARIANT), as ml_collections' --config loads it."""
  import importlib.util
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("maelite_config_check", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*([variant] if variant else []))


def _override_problem(argv, error: BaseException) -> str:
  """Names the --config.* override that the config has no key for, with the keys it has."""
  import difflib
  for name, _ in _config_flags():
    spec = _flag_argument(argv, name)
    if not spec:
      continue
    try:
      config = load_config_file(spec)
    except Exception:  # noqa: BLE001 - the file itself is the problem: reported elsewhere
      continue
    for arg in argv:
      if not arg.startswith(f"--{name}."):
        continue
      path = arg.split("=", 1)[0][len(f"--{name}."):]
      node, walked = config, name
      for part in path.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
          near = difflib.get_close_matches(part, keys, n=1)
          hint = f"did you mean {walked}.{near[0]}? " if near else ""
          listing = (f"{hint}its keys: {', '.join(sorted(keys))}" if keys else
                     f"{walked} is a value, not a group")
          return (f"{arg.split('=', 1)[0]}: {walked} has no key {part!r} ({listing}). Check "
                  f"the key against the config file {spec.split(':')[0]}; "
                  "unknown keys are rejected.")
        node, walked = node[part], f"{walked}.{part}"
  msg = str(error).strip("'\"").replace("\\'", "'").replace("\\n", " ")
  return (f"config: {msg}. Check the key names and types of your --config.* flags against the "
          "config file (unknown keys and wrong types are rejected).")


def parse_flags(argv, parser=None):
  """absl's flag parsing with its errors as one paragraph and exit status 2 (absl: 1)."""
  try:
    return (parser or flags.FLAGS)(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # a config file that raised while loading: the traceback's last line is its message
    reason = lines[-1] if lines else str(e)
    if lines and "Error whilst parsing config file" in str(e):
      reason = f"{lines[0].split(':', 1)[0]}: {reason}"
    print(f"error: {reason}. See --helpshort for the flags.", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def run(main, flags_parser=None, verbosity=logging.INFO, check_args=None):
  """app.run(main) with the one error path (see the module docstring). `check_args(argv)`
  validates a command's positional arguments and their flags for --dry_run (raising a
  UserError); without it a dry run accepts none."""
  started = {"main": False}

  def wrapped(argv):
    started["main"] = True
    try:
      _check_configs_loaded()
      if _DRY_RUN.value:  # the flags (and --config with its overrides) parsed: the line is valid
        if check_args is not None:
          check_args(argv)
        elif len(argv) > 1:
          raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        print("dry run: the command line is valid; nothing was run", flush=True)
        return 0
      compile_cache.setup(_CACHE.value, _CACHE_DIR.value)  # before anything compiles
      return main(argv)
    except Exception as e:  # noqa: BLE001 - classified below; bugs are re-raised
      message = user_error_message(e)
      if message is None or _debug():
        raise
      print(f"error: {message}", file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)

  logging.set_verbosity(verbosity)
  try:
    app.run(wrapped, flags_parser=lambda argv: parse_flags(argv, flags_parser))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if started["main"]:
      raise
    # An error while applying --config.* overrides (unknown key, wrong type) or loading the file.
    print(f"error: {_override_problem(sys.argv, e)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
