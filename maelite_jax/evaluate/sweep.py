"""A small hyper-parameter sweep for (transfer) fine-tuning: base lr x layer decay.

Each grid point is an ordinary fine-tuning run (the one loop) in <workdir>/<name>, trained on
config.sweep.train_split and evaluated on config.sweep.val_split, so the test split is never
looked at while choosing. The grid goes to <workdir>/sweep.csv; with sweep.rerun_best the
winner is trained again on data.train_split and tested on data.eval_split in <workdir>/best_run,
which appends the reported row to <workdir>/results.csv. Rerunning the command resumes each
point from its own checkpoints (a finished point is only evaluated again).
"""

import csv
import os

import jax
from absl import logging

from maelite_jax.train import results


def point_name(base_lr: float, layer_decay: float) -> str:
  return f"lr{base_lr:g}_ld{layer_decay:g}"


def point_config(config, base_lr: float, layer_decay: float, *, validation: bool):
  """A copy of `config` for one grid point (validation=True: train/val splits of the sweep)."""
  cfg = config.copy_and_resolve_references()
  cfg.optim.base_lr = base_lr
  cfg.optim.layer_decay = layer_decay
  if validation:
    cfg.data.train_split = config.sweep.train_split
    cfg.data.eval_split = config.sweep.val_split
    cfg.protocol = f"{config.protocol}-val"
    cfg.best_metric = ""
  return cfg


def run_sweep(config, workdir: str, devices=None) -> dict:
  """Runs the grid (and the best point's final run); returns {'grid': rows, 'best': row, ...}."""
  from maelite_jax.run import train_and_evaluate
  rows = []
  grid = [(lr, decay) for lr in config.sweep.base_lrs for decay in config.sweep.layer_decays]
  for i, (lr, decay) in enumerate(grid):
    name = point_name(lr, decay)
    logging.info("sweep point %d / %d: %s (base lr %g, layer decay %g), trained on %s, "
                 "chosen on %s", i + 1, len(grid), name, lr, decay, config.sweep.train_split,
                 config.sweep.val_split)
    final = train_and_evaluate(point_config(config, lr, decay, validation=True),
                               os.path.join(workdir, name), devices)
    rows.append({"name": name, "base_lr": lr, "layer_decay": decay,
                 "val_top1": final.get("best_top1", final.get("top1", 0.0)),
                 "val_top1_last": final.get("top1", 0.0)})
    logging.info("sweep %s: val top-1 %.4f", name, rows[-1]["val_top1"])
  best = max(rows, key=lambda r: r["val_top1"])
  _write_grid(workdir, rows, best)
  out = {"grid": rows, "best": best}
  if config.sweep.rerun_best:
    cfg = point_config(config, best["base_lr"], best["layer_decay"], validation=False)
    cfg.protocol = f"{config.protocol}-swept"
    logging.info("sweep: %s chosen; training it on %s and testing on %s", best["name"],
                 config.data.train_split, config.data.eval_split)
    out["test"] = train_and_evaluate(cfg, os.path.join(workdir, "best_run"), devices)
    rows = [r for r in results.read_rows(os.path.join(workdir, "best_run"))
            if r["protocol"] == cfg.protocol]
    results.append_rows(workdir, [dict(r, protocol=f"{cfg.protocol}({best['name']})",
                                       value=float(r["value"]) / 100) for r in rows])
  return out


def _write_grid(workdir, rows, best):
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "sweep.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) + ["chosen"])
    writer.writeheader()
    for r in rows:
      writer.writerow(dict(r, chosen=int(r is best)))
  print(results.format_table([{k: (f"{v:.4f}" if isinstance(v, float) else v)
                               for k, v in dict(r, chosen="*" if r is best else "").items()}
                              for r in rows],
                             columns=("name", "base_lr", "layer_decay", "val_top1",
                                      "val_top1_last", "chosen")), flush=True)
