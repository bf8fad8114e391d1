"""The results table: every evaluation appends one row to `<workdir>/results.csv`.

One flat CSV per workdir is what people grep, paste into a paper table or load with pandas; the
columns are fixed so rows from fine-tuning, linear probing, k-NN and few-shot line up.
"""

import csv
import datetime
import os

import jax

COLUMNS = ("model", "pretrain", "protocol", "dataset", "top1", "top5", "workdir", "date")
FILENAME = "results.csv"


def append_row(workdir: str, *, model: str, pretrain: str, protocol: str, dataset: str,
               top1: float, top5: float | None = None, echo: bool = True) -> dict:
  """Appends a row (accuracies in %, 2 decimals) and prints the whole table; process 0 only."""
  row = {"model": model, "pretrain": pretrain or "scratch", "protocol": protocol,
         "dataset": dataset, "top1": f"{100 * float(top1):.2f}",
         "top5": "" if top5 is None else f"{100 * float(top5):.2f}",
         "workdir": os.path.abspath(workdir),
         "date": datetime.datetime.now().isoformat(timespec="seconds")}
  if jax.process_index() != 0:
    return row
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, FILENAME)
  new = not os.path.exists(path)
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    if new:
      writer.writeheader()
    writer.writerow(row)
  if echo:
    print(format_table(read_rows(workdir)), flush=True)
  return row


def read_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def format_table(rows: list[dict], columns=COLUMNS[:-2] + ("date",)) -> str:
  """Fixed-width text table of `rows` (the workdir column is left out: it is the file's home)."""
  if not rows:
    return "(no results yet)"
  widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
  line = lambda r: "  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip()
  header = line({c: c for c in columns})
  return "\n".join([header, "-" * len(header)] + [line(r) for r in rows])
