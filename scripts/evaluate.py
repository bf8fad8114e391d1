"""One command, every protocol: fine-tune, linear probe, k-NN and few-shot of one checkpoint.

  python scripts/evaluate.py --init runs/mae_tiny_cpu --workdir runs/eval_mae_cpu --variant cpu
  python scripts/evaluate.py --init runs/mae_tiny_in1k --workdir runs/eval_in1k --baseline

Runs the configs configs/finetune_tiny.py[:variant] and configs/linprobe_tiny.py[:variant]
with config.init = --init (fine-tuning in <workdir>/finetune, the frozen protocols sharing the
cached features of <workdir>/frozen), collects every row in <workdir>/results.csv and prints
it. --baseline adds the frozen protocols on a randomly initialised encoder for comparison.
Use scripts/finetune.py / linprobe.py / knn.py / fewshot.py for full control over a config.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from maelite_jax.utils import cli  # noqa: E402

_INIT = flags.DEFINE_string("init", None, "encoder checkpoint (a workdir or step folder)")
_WORKDIR = flags.DEFINE_string("workdir", None, "where runs and results.csv go")
_VARIANT = flags.DEFINE_enum("variant", "", ["", "cpu", "tiny"], "config variant ('' = ImageNet "
                             "recipes, 'cpu' = the built-in dataset, 'tiny' = smoke test)")
_PROTOCOLS = flags.DEFINE_list("protocols", ["finetune", "linear", "knn", "fewshot"],
                               "which protocols to run")
_BASELINE = flags.DEFINE_bool("baseline", False, "also run the frozen protocols on a random "
                              "encoder")
flags.mark_flags_as_required(["init", "workdir"])


def main(argv):
  from absl import logging
  from ml_collections import ConfigDict
  cli.start(argv, ConfigDict(), False)
  from configs import finetune_tiny, linprobe_tiny
  from maelite_jax.evaluate import results
  from maelite_jax.evaluate.protocols import PROTOCOLS
  from maelite_jax.train.loop import train_and_evaluate
  top = _WORKDIR.value
  rows = []

  def run(fn, config, workdir):
    """fn's result; the rows it appended to workdir/results.csv are collected."""
    before = len(results.read_rows(workdir))
    out = cli.guarded(fn, config, workdir)
    rows.extend(results.read_rows(workdir)[before:])
    return out

  if "finetune" in _PROTOCOLS.value:
    config = finetune_tiny.get_config(_VARIANT.value)
    config.init = _INIT.value
    run(train_and_evaluate, config, os.path.join(top, "finetune"))
  for init in [_INIT.value] + ([""] if _BASELINE.value else []):
    config = linprobe_tiny.get_config(_VARIANT.value)
    config.init = init
    sub = os.path.join(top, "frozen" if init else "frozen_random")
    for name in ("linear", "knn", "fewshot"):
      if name in _PROTOCOLS.value:
        logging.info("%s (%s): %s", name, init or "random init", run(PROTOCOLS[name], config, sub))
  for r in rows:
    results.append_row(top, model=r["model"], pretrain=r["pretrain"], protocol=r["protocol"],
                       dataset=r["dataset"], top1=float(r["top1"]) / 100,
                       top5=float(r["top5"]) / 100 if r["top5"] else None, echo=False)
  print(results.format_table(results.read_rows(top)), flush=True)


if __name__ == "__main__":
  cli.run(main)
