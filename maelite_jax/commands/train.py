"""Training entry point: pre-training (MAE, MoCo-v3, D-MAE), fine-tuning, transfer and
segmentation all run the one loop; the config's `objective` decides what is trained.

  python scripts/pretrain.py --config configs/mae_tiny.py:cpu --workdir runs/mae_tiny_cpu \
      [--config.total_steps=500 ...]
  python scripts/finetune.py --config configs/finetune_tiny.py:cpu --workdir runs/ft_cpu
  python scripts/segment.py  --config configs/seg_tiny.py:cpu --workdir runs/seg_cpu

Rerunning the same command resumes from the workdir's latest checkpoint. Multi-host (TPU pods,
multi-node GPU): pass --distributed or set MAELITE_DISTRIBUTED=1 (or config.distributed=True);
every process runs the same command. Without a cluster manager pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I.
SIGTERM/SIGINT (preemption) finish the step, write a checkpoint and exit with status 75; a
second signal aborts at once.
"""

import sys

from absl import logging

from maelite_jax.utils import cli

_CONFIG, _WORKDIR = cli.define_flags("config file[:variant], e.g. configs/mae_tiny.py:cpu")


def _main(argv):
  config = cli.start(argv, _CONFIG.value)
  import jax
  from maelite_jax.train.validate import validate_config
  # The config's own checks first, in seconds: the trainer's imports (TensorFlow, clu) take
  # tens of seconds on a small machine; the trainer checks again, with the data.
  validate_config(config, num_devices=jax.device_count(), check_data=False)
  from maelite_jax.run import build_trainer
  trainer = build_trainer(config, _WORKDIR.value)
  final = trainer.run()
  if trainer.preempted:
    logging.warning("preempted after step %d: the checkpoint is written; rerun the same command "
                    "to resume (exit status %d)", trainer.step, cli.EXIT_PREEMPTED)
    sys.exit(cli.EXIT_PREEMPTED)
  if final:  # else the run had already finished: the loop said so
    logging.info("done: %s", {k: round(v, 5) for k, v in final.items()})


def main():
  cli.run(_main)


if __name__ == "__main__":
  main()
