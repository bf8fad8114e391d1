"""Transfer fine-tuning sweep over base lr x layer decay, chosen on a validation split.

  python scripts/sweep.py --config configs/transfer.py:oxford_flowers102 \
      --config.init=runs/mae_tiny_in1k --workdir runs/sweep_flowers \
      [--config.sweep.base_lrs="(0.01, 0.03)" --config.sweep.layer_decays="(0.75,)"]

The grid is written to <workdir>/sweep.csv; the winner, retrained on the full training split
and tested on the eval split, is appended to <workdir>/results.csv.
"""

from absl import logging

from maelite_jax.utils import cli

_CONFIG, _WORKDIR = cli.define_flags("fine-tuning / transfer config file[:variant]")


def _main(argv):
  config = cli.start(argv, _CONFIG.value)
  from maelite_jax.evaluate.sweep import run_sweep
  out = run_sweep(config, _WORKDIR.value)
  logging.info("best: %s", out["best"])


def main():
  cli.run(_main)


if __name__ == "__main__":
  main()
