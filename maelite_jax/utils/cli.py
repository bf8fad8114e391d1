"""Command-line glue shared by the scripts: a clean one-paragraph error for bad overrides."""

import sys

from absl import app

_STARTED = {"main": False}


def run(main):
  """app.run(main), turning an error raised while parsing `--config.*` overrides (unknown key,
  wrong type) into a short message instead of a traceback."""
  def wrapped(argv):
    _STARTED["main"] = True
    return main(argv)

  try:
    app.run(wrapped)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if _STARTED["main"]:
      raise
    msg = str(e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
    sys.exit(f"config error: {msg}\nCheck the key names and types of your --config.* flags "
             "against the config file (unknown keys and wrong types are rejected).")
