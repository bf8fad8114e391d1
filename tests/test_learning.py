"""MAE learns on the built-in dataset: its loss curve matches the stored reference run of the
`make pretrain` recipe (shortened), and its encoder beats a random one in the k-NN monitor.

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
KNN_GAP = 0.02  # k-NN top-1 over the random encoder's at the end (recorded: 55.0 vs 50.4 %)


def learning_config():
  """mae_tiny.py:cpu (what `make pretrain` runs: ViT-Tiny, 28 px, batch 16, its lr, warm-up
  fraction and loss) cut to 300 steps, the k-NN monitor on small subsets at the end only."""
  config = mae_tiny.get_config("cpu")
  config.update_from_flattened_dict({
      "total_steps": 300, "log_every": 1, "checkpoint_every": 1000, "eval_every": 0,
      "evals.reconstruction.every": -1, "evals.linear.every": -1,
      "evals.knn.bank_split": "train[:1000]", "evals.knn.query_split": "test[:500]"})
  return config


def window_means(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  return [float(np.mean(losses[i:i + WINDOW])) for i in range(0, len(losses), WINDOW)]


def run_curve(workdir, trainer_out=None):
  trainer = build_trainer(learning_config(), workdir, devices=jax.devices()[:1])
  final = trainer.run()
  if trainer_out is not None:
    trainer_out.append(trainer)
  return window_means(workdir), final


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir, trainer = str(tmp_path_factory.mktemp("learning")), []
  curve, final = run_curve(workdir, trainer)
  return curve, final, trainer[0], workdir


@pytest.fixture(scope="module")
def run(trained):
  return trained[:2]


@pytest.fixture(scope="module")
def curve(run):
  return run[0]


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


def test_monitor_shows_the_encoder_beating_a_random_one(run):
  """The k-NN monitor of the shortened run: the pre-trained encoder's features are better than a
  random encoder's (on 1000 bank / 500 query images; the recorded run: +4.6 points; an untrained
  encoder has no gap to its random twin)."""
  _, final = run
  assert final["knn_top1"] >= final["knn_top1_random"] + KNN_GAP, final


def test_random_baseline_is_computed_once_and_cached(trained):
  """The monitor's random-init floor lives in <workdir>/baselines.json: the number the run
  reported, and what the next evaluation reads instead of recomputing it."""
  _, final, trainer, workdir = trained
  path = os.path.join(workdir, "baselines.json")
  with open(path) as f:
    stored = json.load(f)
  assert [v["scalars"]["knn_top1"] for v in stored.values()] == [final["knn_top1_random"]]
  for entry in stored.values():
    entry["scalars"]["knn_top1"] = 0.123  # a value no random encoder gives: was it read?
  with open(path, "w") as f:
    json.dump(stored, f)
  (knn,) = [ev for ev in trainer.evals.evaluators if ev.name == "knn"]
  assert knn._baseline()["knn_top1"] == 0.123


if __name__ == "__main__" and "--record" in sys.argv:
  import tempfile
  jax.config.update("jax_num_cpu_devices", 8)
  means, final = run_curve(tempfile.mkdtemp())
  print(final)
  with open(REFERENCE, "w") as f:
    json.dump({"window": WINDOW, "window_means": means, "knn_top1": final["knn_top1"],
               "knn_top1_random": final["knn_top1_random"],
               "config": "configs/mae_tiny.py:cpu + tests/test_learning.py:learning_config"},
              f, indent=1)
  print(means)
