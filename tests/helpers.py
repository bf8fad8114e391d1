"""Small helpers shared by the training tests."""

import contextlib
import json
import os

import jax
import numpy as np


# Python source that makes tensorflow and tensorflow_datasets unimportable, as on the GPU
# machines: the start of a `python -c` program that must run without them.
NO_TENSORFLOW_PRELUDE = (
    "import builtins\n"
    "real = builtins.__import__\n"
    "def guard(name, *a, **k):\n"
    "  if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):\n"
    "    raise ModuleNotFoundError(name)\n"
    "  return real(name, *a, **k)\n"
    "builtins.__import__ = guard\n")


@contextlib.contextmanager
def persistent_compile_cache(path: str):
  """JAX's persistent compilation cache in `path` for every program (no size or time floor),
  for the block: subprocesses started with its directory in their environment reuse what this
  process compiled. JAX's settings and cache state are restored afterwards."""
  from jax._src import compilation_cache
  values = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0.0,
            "jax_persistent_cache_min_entry_size_bytes": 0}
  old = {k: jax.config.values[k] for k in values}
  for k, v in values.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()
  try:
    yield path
  finally:
    for k, v in old.items():
      jax.config.update(k, v)
    compilation_cache.reset_cache()


def override(config, **overrides):
  """Returns `config` with dotted-key overrides applied ('optim.base_lr' = 1e-3, ...)."""
  config.update_from_flattened_dict(overrides)
  return config


def read_losses(workdir, key="loss"):
  """{step: value} of one metric from a run's metrics.jsonl (eval rows without it skipped)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r[key] for r in rows if key in r}


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def read_events(workdir):
  """What TensorBoard would show of a workdir (its own event files, not sub-folders):
  {'scalars': {tag: {step: value}}, 'images': {tag: {step: (width, height)}}}, read back with
  TensorFlow's event reader."""
  import glob
  import tensorflow as tf
  out = {"scalars": {}, "images": {}}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin == "images":
          width, height = (int(x) for x in tf.make_ndarray(value.tensor)[:2])
          out["images"].setdefault(value.tag, {})[event.step] = (width, height)
        elif plugin == "scalars" or value.HasField("simple_value"):
          number = (value.simple_value if value.HasField("simple_value")
                    else float(tf.make_ndarray(value.tensor)))
          out["scalars"].setdefault(value.tag, {})[event.step] = number
  return out


# Console lines a user must never see (issue 24, item 6): TensorFlow's partial-cache warning
# (the pipeline completes its cache), orbax's missing step metadata warning (load_params reads
# the item's metadata through its handler).
NOISE = ("did not fully read the dataset being cached", "Metadata file does not exist")
_ABSL_LINE = r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([\w.-]+):\d+\] "


def _own_log_files():
  """Basenames of the files whose INFO lines are ours to print: the package, the scripts, and
  clu's progress report (platform/local.py)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  names = {"local.py"}
  for folder in ("maelite_jax", "scripts"):
    for _, _, files in os.walk(os.path.join(root, folder)):
      names.update(f for f in files if f.endswith(".py"))
  return names


def noise_lines(text: str) -> list[str]:
  """The lines of a command's output that are library chatter or known noise: the NOISE
  messages, and absl INFO lines logged from Python files outside this project (orbax, etils,
  tfds, clu's writers, jax's backend probing)."""
  import re
  own = _own_log_files()
  out = []
  for line in text.splitlines():
    if any(n in line for n in NOISE):
      out.append(line)
      continue
    m = re.match(_ABSL_LINE, line)
    if m and m.group(1) == "I" and m.group(2).endswith(".py") and m.group(2) not in own:
      out.append(line)
  return out
