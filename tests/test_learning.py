"""MAE learns on the built-in dataset, and its loss curve matches the stored reference run.

The reference curve (tests/data/mae_learning_curve.json) was recorded with this exact config.
Update it only on purpose, with the reason in the commit message: run
`python -m tests.test_learning --record`.
"""

import json
import os
import sys

import jax
import numpy as np
import pytest

from maelite_jax.configs import mae_tiny
from maelite_jax.run import build_trainer

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                         "mae_learning_curve.json")
WINDOW = 20
TOLERANCE = 0.05  # a window's mean loss may exceed the reference by at most 5 % (+0.01)


def learning_config():
  config = mae_tiny.get_config("tiny")
  with config.unlocked():
    config.batch_size = 64
    config.total_steps = 160
    config.optim.base_lr = 2e-3
    config.optim.warmup_steps = 10
    config.log_every = 1
    config.checkpoint_every = 1000
    config.num_vis_images = 0
  return config


def window_means(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["loss"] for r in map(json.loads, f)]
  return [float(np.mean(losses[i:i + WINDOW])) for i in range(0, len(losses), WINDOW)]


def run_curve(workdir):
  build_trainer(learning_config(), workdir, devices=jax.devices()[:1]).run()
  return window_means(workdir)


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
  return run_curve(str(tmp_path_factory.mktemp("learning")))


def test_loss_goes_down_clearly(curve):
  assert curve[-1] < 0.75 * curve[0], curve


def test_loss_curve_matches_reference(curve):
  with open(REFERENCE) as f:
    ref = json.load(f)["window_means"]
  assert len(curve) == len(ref)
  for i, (got, want) in enumerate(zip(curve, ref)):
    assert got <= want * (1 + TOLERANCE) + 0.01, f"window {i}: {got:.4f} vs reference {want:.4f}"
  # Much better than the reference is suspicious too (e.g. a loss on fewer patches).
  assert curve[-1] >= 0.8 * ref[-1], (curve[-1], ref[-1])


if __name__ == "__main__" and "--record" in sys.argv:
  import tempfile
  jax.config.update("jax_num_cpu_devices", 8)
  means = run_curve(tempfile.mkdtemp())
  with open(REFERENCE, "w") as f:
    json.dump({"window": WINDOW, "window_means": means,
               "config": "configs/mae_tiny.py:tiny + tests/test_learning.py:learning_config"},
              f, indent=1)
  print(means)
