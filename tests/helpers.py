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
