"""Pre-training entry point (MAE; later MoCo-v3 and D-MAE through the same loop).

  python scripts/pretrain.py --config configs/mae_tiny.py:cpu --workdir runs/mae_tiny_cpu \
      [--config.total_steps=500 ...]

Multi-host (TPU pods, multi-node GPU): pass --distributed or set MAELITE_DISTRIBUTED=1 (or
config.distributed=True) and jax.distributed.initialize() picks up the cluster from the
environment; every process runs the same command. Without a cluster manager, pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID).

SIGTERM/SIGINT (e.g. preemption) finish the step, write a checkpoint and exit with status 0; a
second signal aborts at once. Rerunning the same command resumes from the latest checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from maelite_jax.utils import distributed  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and figures go")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  from maelite_jax.utils.logs import quiet_library_logs
  quiet_library_logs()
  config = _CONFIG.value
  distributed.initialize_from_flags(config)
  from maelite_jax.train.loop import train_and_evaluate
  from maelite_jax.train.validate import ConfigError
  logging.info("JAX %s: %d process(es), %d device(s): %s", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind)
  try:
    final = train_and_evaluate(config, _WORKDIR.value)
  except ConfigError as e:
    logging.error("%s", e)
    sys.exit(f"config error: {e}")
  logging.info("done: %s", {k: round(v, 5) for k, v in final.items()})


if __name__ == "__main__":
  from maelite_jax.utils import cli
  logging.set_verbosity(logging.INFO)
  cli.run(main)
