"""The user-error types every layer raises and every entry point reports as one paragraph.

A leaf module (imports nothing of the package), so models, data, tasks and the loop can all
raise them without importing each other. A `UserError` is something the user can fix (a config
value, a damaged file, a full disk); its message names the problem and the fix, and the entry
points print it without a traceback (exit status 2). Anything else is a bug.
"""


class UserError(Exception):
  """A problem the user can fix; the message says what and how."""


class ConfigError(UserError, ValueError):
  """A setting that cannot work; the message names the key (or file), the problem and the fix."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be used (damaged, missing, of another model)."""
