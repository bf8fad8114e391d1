"""Keeps the console readable: our progress lines stay (and long loops get one, `Progress`),
libraries' INFO chatter goes."""

import logging as py_logging
import time

from absl import logging as absl_logging

_NOISY = ("/orbax/", "/etils/", "xla_bridge.py", "/clu/", "/tensorflow_datasets/")
# clu's progress report (steps/s, %, ETA, time in evaluation) is ours to show.
_KEPT = ("/clu/platform/local.py",)


class _LibraryFilter(py_logging.Filter):
  def filter(self, record):
    if record.levelno >= py_logging.WARNING or any(k in record.pathname for k in _KEPT):
      return True
    return not any(part in record.pathname for part in _NOISY)


def quiet_library_logs():
  """Drops INFO records of orbax/clu/tfds/jax backend probing from the absl handler."""
  absl_logging.get_absl_handler().addFilter(_LibraryFilter())


class Progress:
  """Progress of a long loop (feature extraction, an evaluation pass): one line at most every
  `every_s` seconds, "what: 4,000 / 10,000 images, 812 img/s, ETA 7 s", and none at all for a
  loop that ends sooner, so short evaluations stay quiet and long ones never look stuck."""

  def __init__(self, what: str, total: int | None = None, every_s: float = 10.0,
               unit: str = "images"):
    self._clock = time.perf_counter
    self.what, self.total, self.every_s, self.unit = what, total, every_s, unit
    self.done = 0
    self.start = self.last = self._clock()

  def update(self, n: int) -> None:
    self.done += int(n)
    now = self._clock()
    if now - self.last < self.every_s:
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    line = f"{self.what}: {self.done:,}"
    if self.total:
      line += f" / {self.total:,} {self.unit}"
      eta = max(self.total - self.done, 0) / max(rate, 1e-9)
      line += f", {rate:,.0f} {self.unit_rate()}, ETA {eta:.0f} s"
    else:
      line += f" {self.unit}, {rate:,.0f} {self.unit_rate()}"
    absl_logging.info("%s", line)

  def unit_rate(self) -> str:
    return {"images": "img/s"}.get(self.unit, f"{self.unit}/s")
