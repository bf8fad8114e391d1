"""The user-error types every layer raises and every entry point reports as one paragraph.

A leaf module (imports nothing of the package, only the standard library), so models, data,
tasks and the loop can all raise them without importing each other. A `UserError` is something
the user can fix (a config value, a damaged file, a full disk); its message names the problem
and the fix, and the entry points print it without a traceback (exit status 2). Anything else is
a bug.
"""

import errno
import os
import shutil


class UserError(Exception):
  """A problem the user can fix; the message says what and how."""


class ConfigError(UserError, ValueError):
  """A setting that cannot work; the message names the key (or file), the problem and the fix."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be used (damaged, missing, of another model)."""


class WeightFileError(UserError, ValueError):
  """A weight file (PyTorch .pth / .safetensors) that cannot be read as the model asked for."""


class MissingWeightsError(WeightFileError, KeyError):
  """A weight file that lacks weights of the model (a KeyError too, for callers that look)."""
  __str__ = Exception.__str__  # KeyError's would quote the whole paragraph


class NonFiniteError(UserError, FloatingPointError):
  """A run that stopped on non-finite losses or gradients (config.nonfinite_policy); the
  message names the step, the count, the last good checkpoint and the likely causes."""


class DiskFullError(UserError, OSError):
  """No space left: the message names the device, the free space and the last checkpoint."""
  __str__ = Exception.__str__


def _chain(e: BaseException):
  """e, its cause and context, ... (an ENOSPC may come wrapped by orbax or tensorstore)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def is_disk_full(e: BaseException) -> bool:
  """An OSError with ENOSPC/EDQUOT anywhere in the chain, or the kernel's words in a message
  (tensorstore and orbax's async threads report it as text)."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(x)
    if "No space left on device" in text or "Disk quota exceeded" in text:
      return True
  return False


def failed_path(e: BaseException) -> str | None:
  """The file an OSError in the chain names, if any."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.filename:
      return str(x.filename)
  return None


def disk_full_message(where: str, last_checkpoint: str | None = None) -> str:
  """One paragraph: the device holding `where`, its free space and the last good checkpoint."""
  probe = os.path.abspath(where or ".")
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  free = shutil.disk_usage(probe).free / 2**20
  device = os.stat(probe).st_dev
  mount = probe
  while not os.path.ismount(mount):
    mount = os.path.dirname(mount)
  last = (f"the last complete checkpoint is {last_checkpoint}" if last_checkpoint else
          "no complete checkpoint was written yet")
  return (f"no space left on the device holding {where} (filesystem {mount}, device "
          f"{os.major(device)}:{os.minor(device)}, {free:.0f} MiB free); {last}. Free space or "
          "move the workdir, then rerun the same command: it resumes from the last complete "
          "checkpoint (incomplete ones are ignored).")
