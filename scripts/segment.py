"""Semantic segmentation entry point: any encoder checkpoint -> ViT + semantic FPN, mIoU.

  python scripts/segment.py --config configs/seg_tiny.py:cpu --workdir runs/seg_cpu
  python scripts/segment.py --config configs/seg_tiny.py:ade20k \
      --config.data.data_dir=/data/ade20k --config.init=runs/mae_tiny_in1k --workdir runs/seg_ade

Resumes from <workdir>/checkpoints; the best params go to <workdir>/best, per-class IoU of each
evaluation to <workdir>/segmentation_eval.jsonl, and a finished run appends rows to
<workdir>/results.csv (protocol 'segment': top1 = mIoU, top5 = pixel accuracy).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maelite_jax.utils import cli  # noqa: E402

_CONFIG, _WORKDIR, _DISTRIBUTED = cli.define_flags("segmentation config file[:variant]")


def main(argv):
  config = cli.start(argv, _CONFIG.value, _DISTRIBUTED.value)
  from absl import logging
  from maelite_jax.train.loop import train_and_evaluate
  final = cli.guarded(train_and_evaluate, config, _WORKDIR.value)
  logging.info("done: %s", {k: round(v, 5) for k, v in final.items()})


if __name__ == "__main__":
  cli.run(main)
