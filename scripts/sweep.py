"""Transfer fine-tuning sweep over base lr x layer decay, chosen on a validation split.

  python scripts/sweep.py --config configs/transfer.py:oxford_flowers102 \
      --config.init=runs/mae_tiny_in1k --workdir runs/sweep_flowers \
      [--config.sweep.base_lrs="(0.01, 0.03)" --config.sweep.layer_decays="(0.75,)"]

The grid is written to <workdir>/sweep.csv; the winner, retrained on the full training split
and tested on the eval split, is appended to <workdir>/results.csv.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maelite_jax.utils import cli  # noqa: E402

_CONFIG, _WORKDIR, _DISTRIBUTED = cli.define_flags("fine-tuning / transfer config file[:variant]")


def main(argv):
  config = cli.start(argv, _CONFIG.value, _DISTRIBUTED.value)
  from absl import logging
  from maelite_jax.evaluate.sweep import run_sweep
  out = cli.guarded(run_sweep, config, _WORKDIR.value)
  logging.info("best: %s", out["best"])


if __name__ == "__main__":
  cli.run(main)
