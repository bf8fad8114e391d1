"""The results table: every finished evaluation appends rows to `<workdir>/results.csv`.

One flat CSV per workdir is what people grep, paste into a paper table or load with pandas. It
is long: one row per (model, pretraining, protocol, metric), so fine-tuning's top-1, k-NN's
top-1, segmentation's mIoU and the random-init baselines all line up in the same columns.
"""

import csv
import datetime
import os

import jax

COLUMNS = ("model", "pretrain", "protocol", "dataset", "metric", "value", "step", "workdir",
           "date")
FILENAME = "results.csv"
SHOWN = ("model", "pretrain", "protocol", "dataset", "metric", "value", "step")


def append_rows(workdir: str, rows: list[dict]) -> list[dict]:
  """Appends rows (values in %, 2 decimals; missing columns filled); process 0 writes."""
  date = datetime.datetime.now().isoformat(timespec="seconds")
  out = [{"pretrain": "scratch", "step": "", "workdir": os.path.abspath(workdir), "date": date,
          **r, "value": f"{100 * float(r['value']):.2f}"} for r in rows]
  if jax.process_index() != 0 or not out:
    return out
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, FILENAME)
  new = not os.path.exists(path)
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    if new:
      writer.writeheader()
    writer.writerows({c: r.get(c, "") for c in COLUMNS} for r in out)
  return out


def read_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def format_table(rows: list[dict], columns=SHOWN) -> str:
  """Fixed-width text table of `rows` (the workdir column is left out: it is the file's home)."""
  if not rows:
    return "(no results yet)"
  widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
  line = lambda r: "  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip()
  header = line({c: c for c in columns})
  return "\n".join([header, "-" * len(header)] + [line(r) for r in rows])
