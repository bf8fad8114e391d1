"""Offline evaluation of one checkpoint with the evaluators of a config.

  python scripts/knn.py      --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/linprobe.py --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/fewshot.py  --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/evaluate.py --config configs/linprobe_tiny.py:cpu \
      --finetune_config configs/finetune_tiny.py:cpu --config.init=runs/mae_tiny_cpu \
      --workdir runs/eval_mae_cpu [--finetune_config.total_steps=300]

knn / linprobe / fewshot run one entry of config.evals on the encoder of config.init ('' = a
random encoder, the baseline); evaluate.py runs all of them and, with --finetune_config, also
fine-tunes config.init with that config (in <workdir>/finetune). Every row goes to
<workdir>/results.csv, printed once at the end.
"""

import os

from ml_collections import config_flags

from maelite_jax.utils import cli

_CONFIG, _WORKDIR = cli.define_flags("evaluation config file[:variant], e.g. "
                                     "configs/linprobe_tiny.py:cpu")


def _run(argv, names):
  config = cli.start(argv, _CONFIG.value)
  from maelite_jax.evaluate.offline import evaluate_checkpoint
  from maelite_jax.train import results
  evaluate_checkpoint(config, _WORKDIR.value, names)
  return config, results


def _one(name):
  def main(argv):
    _, results = _run(argv, [name])
    print(results.format_table(results.read_rows(_WORKDIR.value)), flush=True)
  return main


def knn():
  cli.run(_one("knn"))


def linear():
  cli.run(_one("linear"))


def fewshot():
  cli.run(_one("fewshot"))


_FINETUNE = config_flags.DEFINE_config_file(
    "finetune_config", None, "fine-tuning config file[:variant] (optional), e.g. "
    "configs/finetune_tiny.py:cpu; its init is set to --config.init", lock_config=True)


def _evaluate(argv):
  config, results = _run(argv, None)
  top = _WORKDIR.value
  if _FINETUNE.value is not None:
    from maelite_jax.run import train_and_evaluate
    ft = _FINETUNE.value
    with ft.unlocked():
      ft.init = config.init
    sub = os.path.join(top, "finetune")
    before = len(results.read_rows(sub))
    train_and_evaluate(ft, sub)
    rows = results.read_rows(sub)[before:]
    results.append_rows(top, [dict(r, value=float(r["value"]) / 100) for r in rows])
  print(results.format_table(results.read_rows(top)), flush=True)


def main():
  cli.run(_evaluate)


if __name__ == "__main__":
  main()
