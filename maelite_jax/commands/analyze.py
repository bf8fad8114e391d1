"""Analysis entry point: checkpoints -> CKA heat maps, attention statistics, maps, reconstructions.

  python scripts/analyze.py --config configs/analyze.py:cpu \
      --config.models=mae=runs/mae_tiny_cpu,moco=runs/mocov3_tiny_cpu --workdir runs/analysis

Writes to the workdir: `analysis.json` (all numbers), `cka_<A>_vs_<B>.png` for every pair of
models (self-pairs included), `attention_distance.png`, `attention_entropy.png`,
`attn_maps_<model>_block<i>.png` and, for MAE checkpoints, `recon_<model>.png`.
"""

from absl import logging

from maelite_jax.utils import cli

_CONFIG, _WORKDIR = cli.define_flags("analysis config file[:variant], e.g. configs/analyze.py:cpu",
                                     "where analysis.json and the PNG figures go")


def _main(argv):
  config = cli.start(argv, _CONFIG.value)
  from maelite_jax.analysis.report import run
  result = run(config, _WORKDIR.value)
  logging.info("wrote %d figures and analysis.json to %s", len(result["figures"]), _WORKDIR.value)


def main():
  cli.run(_main)


if __name__ == "__main__":
  main()
