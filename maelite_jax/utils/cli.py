"""What every entry point shares: --config / --workdir / --distributed, quiet logs, multi-host
start, and config errors reported as one readable line instead of a traceback."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from maelite_jax.utils import distributed as distributed_lib


def define_flags(config_help: str):
  """Defines the common flags; returns their holders (config, workdir, distributed)."""
  config = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and results go")
  # --distributed, --coordinator_address, --num_processes, --process_id (multi-host start)
  distributed = distributed_lib.define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir, distributed


def start(argv, config, distributed: bool):
  """Checks argv, quiets library logs, starts multi-host JAX when asked; returns config."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  from maelite_jax.utils.logs import quiet_library_logs
  quiet_library_logs()
  distributed_lib.initialize_from_flags(config, enabled=distributed)
  logging.info("JAX %s: %d process(es), %d device(s): %s", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind)
  return config


def guarded(fn, *args, **kwargs):
  """Runs fn; a bad config or missing checkpoint exits with its message (no traceback)."""
  from maelite_jax.train.validate import ConfigError
  try:
    return fn(*args, **kwargs)
  except (ConfigError, FileNotFoundError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")


_STARTED = {"main": False}


def run(main):
  """app.run(main) at INFO verbosity, turning an error raised while parsing `--config.*`
  overrides (unknown key, wrong type) into a short message instead of a traceback."""
  def wrapped(argv):
    _STARTED["main"] = True
    return main(argv)

  logging.set_verbosity(logging.INFO)
  try:
    app.run(wrapped)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if _STARTED["main"]:
      raise
    msg = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
    sys.exit(f"config error: {msg}\nCheck the key names and types of your --config.* flags "
             "against the config file (unknown keys and wrong types are rejected).")


def run_protocol(protocol: str):
  """Entry point of the frozen-feature evaluation scripts (knn, linear, fewshot): the same flags
  and config, one protocol each, results appended to the workdir's results.csv."""
  config_flag, workdir_flag, distributed_flag = define_flags("configs/linprobe_tiny.py[:variant]")

  def main(argv):
    config = start(argv, config_flag.value, distributed_flag.value)
    from maelite_jax.evaluate.protocols import PROTOCOLS
    out = guarded(PROTOCOLS[protocol], config, workdir_flag.value)
    logging.info("%s: %s", protocol, out)

  run(main)
