"""Metrics out: clu writers (TensorBoard) + metrics.jsonl, and a human progress line."""

import json
import os
import time

import jax
from absl import logging
from clu import metric_writers


class MetricsLogger:
  """Writes scalars to TensorBoard and metrics.jsonl (process 0 only) and logs progress."""

  def __init__(self, workdir: str, total_steps: int, global_batch: int):
    self.is_main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_main, asynchronous=True)
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.is_main else None
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._t0 = None
    self._s0 = None

  def start(self, step: int):
    self._t0, self._s0 = time.perf_counter(), step

  def write(self, step: int, scalars: dict, progress: bool = True) -> dict:
    scalars = {k: float(v) for k, v in scalars.items()}
    now = time.perf_counter()
    if progress and self._t0 is not None and step > self._s0:
      rate = (step - self._s0) / (now - self._t0)
      scalars["images_per_s"] = rate * self.global_batch
      scalars["steps_per_s"] = rate
      eta = (self.total_steps - step) / max(rate, 1e-9)
      self._t0, self._s0 = now, step
      logging.info("step %d/%d  %s  %.1f img/s  ETA %s", step, self.total_steps,
                   _fmt(scalars), scalars["images_per_s"], _fmt_eta(eta))
    elif progress:
      logging.info("step %d/%d  %s", step, self.total_steps, _fmt(scalars))
    self.writer.write_scalars(step, scalars)
    if self.jsonl:
      self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self.jsonl.flush()
    return scalars

  def close(self):
    self.writer.flush()
    self.writer.close()
    if self.jsonl:
      self.jsonl.close()


def _fmt(scalars: dict) -> str:
  return "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()
                   if k not in ("images_per_s", "steps_per_s"))


def _fmt_eta(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"
