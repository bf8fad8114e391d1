"""The workdir lock: one writing run per workdir.

Two runs on one workdir (a typo, a job submitted twice) would overwrite each other's
checkpoints and interleave metrics.jsonl; orbax even deletes the other run's half-written
checkpoints when its manager starts. So the run takes `<workdir>/lock` before it touches
anything there, and a second run stops with one paragraph naming the holder and the fix.

- The lock is `flock` on that file, held while the run lives: the kernel drops it when the
  process dies, even by SIGKILL, so a crashed run never blocks the rerun. The file also holds
  the holder's host, pid and start time (JSON) for the message, and its mtime is a heartbeat
  (refreshed every HEARTBEAT_S by a daemon thread).
- A record left by a dead process (the lock itself is free) is taken over with a note. On
  another host we cannot ask whether the pid lives, and some shared filesystems do not pass
  `flock` between hosts: a record from another host whose heartbeat is younger than STALE_S
  is treated as held.
- Multi-host jobs: only process 0 takes the lock (it is the one writer of metrics and
  checkpoint metadata); the other processes of the job are not blocked, they learn from
  process 0 whether the lock was taken and stop with it if not.
- Released on exit, normal or by an exception (the record is cleared; the empty file stays:
  deleting a lock file races with a process that just opened it).
- Paths with a scheme (gs://...) are not locked (no flock there); the log says so.
"""

import errno
import json
import os
import socket
import threading
import time

from absl import logging

from maelite_jax.utils.errors import UserError

LOCK_FILE = "lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0


class WorkdirLocked(UserError):
  """Another live run holds the workdir."""


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return ""


def _process_start(pid: int) -> str:
  """The kernel's start time of `pid` (clock ticks since boot): tells a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return ""


def _alive(record: dict) -> bool | None:
  """Whether the record's process still runs (None: it is on another host, unknown)."""
  if record.get("host") != socket.gethostname():
    return None
  if record.get("boot_id") != _boot_id():  # this host rebooted since
    return False
  pid = int(record.get("pid", -1))
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  except (OSError, ValueError, OverflowError):
    return False
  start = record.get("pid_start")
  return not start or _process_start(pid) == start


def describe(record: dict) -> str:
  started = record.get("started")
  when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
  return f"pid {record.get('pid', '?')} on host {record.get('host', '?')} (started {when})"


class WorkdirLock:
  """`with WorkdirLock(workdir):` -> held inside, released after (see the module doc)."""

  def __init__(self, workdir: str, command: str = ""):
    self.workdir = workdir
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.command = command
    self._fd = None
    self._stop = threading.Event()
    self._thread = None
    self.took_over = None  # the stale record taken over, if any

  def acquire(self) -> "WorkdirLock":
    if "://" in self.workdir:
      logging.info("workdir %s is not on a local or mounted filesystem: not locked (make sure "
                   "one run writes it)", self.workdir)
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      flocked = self._flock(fd)
      record = self._read(fd)
      if not flocked:
        raise self._held_error(record)
      if record:
        alive = _alive(record)
        age = time.time() - os.fstat(fd).st_mtime
        if alive is None and age < STALE_S:  # another host, recent heartbeat: maybe live
          raise self._held_error(record, other_host_age=age)
        self.took_over = record
        logging.warning(
            "workdir lock %s: took over the lock of %s, %s (its run ended without releasing "
            "it, e.g. killed); the run resumes from the workdir's last complete checkpoint",
            self.path, describe(record),
            "a process that no longer exists" if alive is False else
            f"another host, silent for {age / 60:.0f} min")
      self._write(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    self._thread = threading.Thread(target=self._heartbeat, name="workdir-lock", daemon=True)
    self._thread.start()
    return self

  def _flock(self, fd) -> bool:
    import fcntl
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        return False
      # ENOLCK / EOPNOTSUPP: the filesystem has no flock; the record and heartbeat still work
      logging.warning("workdir lock %s: the filesystem does not support flock (%s); relying on "
                      "the lock record and its heartbeat", self.path, e)
      return True

  @staticmethod
  def _read(fd) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
      data += chunk
    try:
      record = json.loads(data.decode() or "{}")
    except (ValueError, UnicodeDecodeError):
      return {}
    return record if isinstance(record, dict) else {}

  def _write(self, fd):
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "boot_id": _boot_id(), "pid_start": _process_start(os.getpid()),
              "command": self.command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)

  def _held_error(self, record: dict, other_host_age: float | None = None) -> WorkdirLocked:
    holder = describe(record) if record else "another process"
    cmd = f" running `{record['command']}`" if record.get("command") else ""
    extra = (f" That host last refreshed the lock {other_host_age:.0f} s ago; if its run is "
             f"gone, delete {self.path}." if other_host_age is not None else
             f" If you are sure it is not a run of this project, delete {self.path}.")
    return WorkdirLocked(
        f"--workdir {self.workdir} is in use by {holder}{cmd}: a second run would overwrite its "
        "checkpoints and metrics. Wait for it to finish (or stop it: a rerun resumes from its "
        f"last checkpoint), or pass another --workdir.{extra}")

  def _heartbeat(self):
    while not self._stop.wait(HEARTBEAT_S):
      try:
        os.utime(self._fd)
      except (OSError, TypeError):
        return

  def release(self):
    if self._fd is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    try:
      os.ftruncate(self._fd, 0)  # no record: nothing for the next run to report or take over
    except OSError:
      pass
    os.close(self._fd)  # closing drops the flock
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


def command_line() -> str:
  import sys
  return " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])[:500] if sys.argv else ""


def lock_workdir(workdir: str) -> WorkdirLock:
  """The lock for a job: process 0 takes it, every process learns whether it could, and all
  of them stop with the holder's paragraph if not. Returns the held lock (a no-op one on the
  other processes)."""
  import jax
  lock = WorkdirLock(workdir, command_line())
  if jax.process_count() == 1:
    return lock.acquire()
  import numpy as np
  from jax.experimental import multihost_utils
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirLocked as e:
      error = e
  ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
  if error is not None:
    raise error
  if not ok:
    raise WorkdirLocked(f"--workdir {workdir} is in use by another run (process 0 of this job "
                        "could not lock it; its log names the holder). Wait for that run, or "
                        "pass another --workdir.")
  return lock
