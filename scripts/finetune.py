"""Fine-tuning (and transfer) entry point: any encoder checkpoint -> classifier, top-1/top-5.

  python scripts/finetune.py --config configs/finetune_tiny.py:cpu --workdir runs/ft_cpu
  python scripts/finetune.py --config configs/finetune_tiny.py \
      --config.init=runs/mae_tiny_in1k --workdir runs/ft_in1k
  python scripts/finetune.py --config configs/transfer.py:cifar100 \
      --config.init=runs/mae_tiny_in1k --workdir runs/transfer_cifar100

Resumes from <workdir>/checkpoints; the best params go to <workdir>/best and each finished run
appends rows to <workdir>/results.csv.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maelite_jax.utils import cli  # noqa: E402

_CONFIG, _WORKDIR, _DISTRIBUTED = cli.define_flags("fine-tuning config file[:variant]")


def main(argv):
  config = cli.start(argv, _CONFIG.value, _DISTRIBUTED.value)
  from absl import logging
  from maelite_jax.train.loop import train_and_evaluate
  final = cli.guarded(train_and_evaluate, config, _WORKDIR.value)
  logging.info("done: %s", {k: round(v, 5) for k, v in final.items()})


if __name__ == "__main__":
  cli.run(main)
