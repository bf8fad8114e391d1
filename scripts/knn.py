"""Weighted k-NN (DINO: cosine, k=20, T=0.07) on frozen features; appends results.csv.

  python scripts/knn.py --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/knn.py --config configs/linprobe_tiny.py \
      --config.init=runs/mae_tiny_in1k --workdir runs/eval_in1k

--config.init='' evaluates a randomly initialised encoder (the baseline). scripts/linprobe.py
and scripts/fewshot.py take the same config and share the cached features of a workdir.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maelite_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
  cli.run_protocol("knn")
