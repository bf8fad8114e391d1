"""Keeps the console readable: our progress lines stay, libraries' INFO chatter goes."""

import logging as py_logging

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
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_LibraryFilter())
