"""One preparer at a time: a blocking `flock` around one-time work that several processes of
one machine may start together (tfds `download_and_prepare`, the on-device .npz cache).

Two processes preparing one dataset (two runs started together, the workers of
`pytest -n 2`, the processes of a simulated multi-host job) would otherwise race:
tfds renames its finished `incomplete.*` folder onto the dataset folder and the second rename
fails, or one process reads the half-written files of the other. The second process waits
here, then finds the work done (callers re-check after taking the lock). The kernel drops the
lock when its holder dies, so a killed preparer never blocks the next one. Paths with a URL
scheme (gs://...) are not locked: flock does not exist there (tfds' own rename still guards).
"""

import contextlib
import fcntl
import os

from absl import logging


@contextlib.contextmanager
def prepare_lock(path: str):
  """Hold an exclusive lock on the file `path` + '.lock' (created, with its folder) while the
  body runs; waits for another holder, logging once that it does."""
  if "://" in path:
    yield
    return
  lock_path = os.path.expanduser(path) + ".lock"
  os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
  with open(lock_path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info("Waiting for another process preparing %s (%s).", path, lock_path)
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
