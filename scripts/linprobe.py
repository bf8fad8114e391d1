"""Linear probe of a frozen encoder (MAE's protocol on cached features); appends results.csv.

  python scripts/linprobe.py --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/linprobe.py --config configs/linprobe_tiny.py \
      --config.init=runs/mae_tiny_in1k --workdir runs/eval_in1k

--config.init='' probes a randomly initialised encoder (the baseline). scripts/knn.py and
scripts/fewshot.py take the same config and reuse the cached features of the same workdir.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maelite_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
  cli.run_protocol("linear")
