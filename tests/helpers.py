"""Small helpers shared by the training tests."""

import json
import os

import jax
import numpy as np


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
