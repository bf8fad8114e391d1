"""Metrics out: clu writers (TensorBoard scalars and images), metrics.jsonl, progress lines.

metrics.jsonl is strict JSON (a non-finite value is written as null) and holds each step once
(training metrics and the evaluations of a step share its row); a run that resumes from step N (after a crash, a preemption or a non-finite rollback) first
drops the rows after N that the lost part of the run had written. Progress (steps/s, %, ETA and
the share of time spent in evaluation) is clu's ReportProgress; the metrics line adds img/s.

clu's writers and progress report import TensorFlow (for TensorBoard summaries). On a machine
without it (GPU hosts that only have JAX and PyTorch, where the on-device data engine needs no
TensorFlow either) the logger keeps metrics.jsonl and the console lines and says once that
TensorBoard events are off.
"""

import contextlib
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging

try:
  from clu import metric_writers
  from clu import periodic_actions
except ImportError:  # no TensorFlow: see the module docstring
  metric_writers = periodic_actions = None

METRICS_FILE = "metrics.jsonl"


def _json_value(v: float):
  return v if math.isfinite(v) else None


def truncate_jsonl(path: str, last_step: int) -> int:
  """Keeps the rows of `path` with step <= last_step (atomically); returns how many went."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line).get("step", 0) <= last_step:
        keep.append(line if line.endswith("\n") else line + "\n")
    except ValueError:  # a torn last line of a killed run
      continue
  if len(keep) != len(lines):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return len(lines) - len(keep)


class MetricsLogger:
  """Writes scalars and images to TensorBoard and scalars to metrics.jsonl (process 0 only)
  and logs progress."""

  def __init__(self, workdir: str, total_steps: int, global_batch: int, log_every: int):
    self.is_main = jax.process_index() == 0
    if metric_writers is None:
      logging.warning("TensorBoard events are off: clu's writers need tensorflow, which is not "
                      "installed; metrics go to %s/%s and the console", workdir, METRICS_FILE)
      self.writer = None
    else:
      self.writer = metric_writers.create_default_writer(
          workdir, just_logging=not self.is_main, asynchronous=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    self.jsonl = None
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._row = None  # the current step's row, written when the next step begins
    self.progress = None if periodic_actions is None else periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=self.writer if self.is_main else None,
        every_steps=log_every, every_secs=None)
    self._t0 = None
    self._s0 = None

  def start(self, step: int):
    """(Re)starts the run at `step`: metrics.jsonl rows after it are dropped (they belong to a
    part of a run that is being redone), and timing restarts."""
    self.flush()
    if self.is_main and self.jsonl is None:
      dropped = truncate_jsonl(self.path, step)
      if dropped:
        logging.info("metrics.jsonl: dropped %d row(s) after step %d (written by the part of an "
                     "earlier run that is being redone)", dropped, step)
      self.jsonl = open(self.path, "a")
    elif self.is_main:
      self.jsonl.close()
      truncate_jsonl(self.path, step)
      self.jsonl = open(self.path, "a")
    self.reset_timer(step)

  def reset_timer(self, step: int):
    """Rates are measured from here (e.g. after the first step, which includes compilation)."""
    self._t0, self._s0 = time.perf_counter(), step

  def tick(self, step: int):
    """Once per step: clu's progress report (rate, ETA, time in evaluation)."""
    if self.progress is not None:
      self.progress(step)

  def timed(self, name: str):
    """Context manager: time spent in `name` (e.g. 'eval') shows in the progress line."""
    if self.progress is None:
      return contextlib.nullcontext()
    return self.progress.timed(name, wait_jax_async_dispatch=False)

  def write(self, step: int, scalars: dict, progress: bool = True) -> dict:
    scalars = {k: float(v) for k, v in scalars.items() if np.ndim(v) == 0}
    now = time.perf_counter()
    if progress and self._t0 is not None and step > self._s0:
      rate = (step - self._s0) / (now - self._t0)
      scalars["images_per_s"] = rate * self.global_batch
      self._t0, self._s0 = now, step
      eta = ("" if self.progress is not None else  # else clu's progress line says it
             f"  ETA {int((self.total_steps - step) / max(rate, 1e-9)) // 60} min")
      logging.info("step %d/%d  %s  %.1f img/s%s", step, self.total_steps, _fmt(scalars),
                   scalars["images_per_s"], eta)
    elif progress:
      logging.info("step %d/%d  %s", step, self.total_steps, _fmt(scalars))
    if self.writer is not None:
      self.writer.write_scalars(step, scalars)
    if self.jsonl:
      if self._row is not None and self._row["step"] != step:
        self.flush()
      self._row = self._row or {"step": step}
      self._row.update({k: _json_value(v) for k, v in scalars.items()})
    return scalars

  def flush(self):
    """Writes the pending step's row to metrics.jsonl."""
    if self.jsonl and self._row is not None:
      self.jsonl.write(json.dumps(self._row, allow_nan=False) + "\n")
      self.jsonl.flush()
    self._row = None

  def write_images(self, step: int, images: dict):
    """{name: uint8 (H, W, 3)} -> TensorBoard images (process 0 draws them; others pass)."""
    images = {k: np.asarray(v)[None] for k, v in images.items() if v is not None}
    if images and self.writer is not None:
      self.writer.write_images(step, images)

  def close(self):
    self.flush()
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
    if self.jsonl:
      self.jsonl.close()


def _fmt(scalars: dict) -> str:
  return "  ".join(f"{k} {v:.4g}" for k, v in scalars.items() if k != "images_per_s")
