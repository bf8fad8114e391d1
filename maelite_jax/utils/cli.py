"""What every entry point shares: --config / --workdir / --distributed, quiet logs, multi-host
start, and config errors reported as one readable line instead of a traceback."""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags


def define_flags(config_help: str):
  """Defines the common flags; returns their holders (config, workdir, distributed)."""
  config = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and results go")
  distributed = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize()")
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir, distributed


def start(argv, config, distributed: bool):
  """Checks argv, quiets library logs, starts multi-host JAX when asked; returns config."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  from maelite_jax.utils.logs import quiet_library_logs
  quiet_library_logs()
  if distributed or config.get("distributed") or os.environ.get("MAELITE_DISTRIBUTED") == "1":
    jax.distributed.initialize()
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


def run(main):
  logging.set_verbosity(logging.INFO)
  app.run(main)
