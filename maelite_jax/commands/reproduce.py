"""The paper's comparisons at small scale in one command.

  python scripts/reproduce.py --scale cpu --workdir runs/reproduce_cpu   # ~80 min on 2 CPU cores
  python scripts/reproduce.py --scale gpu --workdir runs/reproduce_gpu   # ~10 min on one GPU
  python scripts/reproduce.py --scale tiny --workdir /tmp/repro          # a smoke test

Pre-trains MAE-Tiny, MoCo-v3-Tiny, an MAE-Small teacher and D-MAE-Tiny; fine-tunes each (and a
ViT-Tiny from scratch), on the full training split and on a small labelled subset; evaluates the
frozen encoders (k-NN, linear probe, random init as the floor); analyses attention distance and
layer CKA against the supervised model; checks the paper's findings; writes the report (default
docs/reproduction.md for the CPU scale, docs/reproduction_gpu.md for the GPU scale; the tiny
scale writes it into the workdir). Every run lives in
the workdir, so a rerun resumes where the last one stopped. The arms are configs/reproduce.py.
"""

import os

from absl import flags

from maelite_jax.utils import cli

_SCALE = flags.DEFINE_enum("scale", "cpu", ["tiny", "cpu", "gpu"], "study size (configs/"
                           "reproduce.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "where every run of the study goes")
_REPORT = flags.DEFINE_string("report", None, "the Markdown report (default: cpu "
                              "docs/reproduction.md, gpu docs/reproduction_gpu.md, tiny "
                              "<workdir>/reproduction.md)")
flags.mark_flag_as_required("workdir")


def _main(argv):
  cli.start(argv)
  from maelite_jax.configs import reproduce
  from maelite_jax.study import reproduction
  report = _REPORT.value or {
      "tiny": os.path.join(_WORKDIR.value, "reproduction.md"),
      "cpu": os.path.join("docs", "reproduction.md"),
      "gpu": os.path.join("docs", "reproduction_gpu.md")}[_SCALE.value]
  reproduction.run(reproduce.get_config(_SCALE.value), _WORKDIR.value, report,
                   reproduction.command_line())


def main():
  cli.run(_main)


if __name__ == "__main__":
  main()
