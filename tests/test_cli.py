"""The pre-training command line end to end: what a workdir holds, and clean config errors."""

import glob
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from tests.helpers import noise_lines, read_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What a user's shell has: the tests' own TF_CPP_MIN_LOG_LEVEL (conftest.py) would hide
# TensorFlow's warnings, which the noise checks below must see.
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def pretrain(workdir, *overrides):
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"),
         "--config", os.path.join(ROOT, "configs", "mae_tiny.py:tiny"), "--workdir", workdir,
         *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("cli"))
  proc = pretrain(path, "--config.total_steps=4", "--config.checkpoint_every=2",
                  "--config.log_every=2", "--config.evals.reconstruction.every=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return path, proc.stderr


def test_workdir_holds_checkpoints_metrics_events_and_figure(workdir):
  path, log = workdir
  assert sorted(os.listdir(os.path.join(path, "checkpoints"))) == ["2", "4"]
  rows = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 4]
  assert all(r["loss"] > 0 for r in rows)
  assert glob.glob(os.path.join(path, "events.out.tfevents.*"))
  assert json.load(open(os.path.join(path, "config.json")))["total_steps"] == 4
  with Image.open(os.path.join(path, "reconstruction.png")) as im:
    assert im.format == "PNG" and im.size[0] > 300
  assert "img/s" in log and "ETA" in log  # the progress line
  assert noise_lines(log) == []  # no library chatter, no cache / metadata warnings
  assert log.count("covers more than half of this 4-step run") == 1  # 5 warm-up steps of 4
  # TensorBoard: the training scalars, the hidden-patch error and the figure itself
  events = read_events(path)
  assert set(events["scalars"]["loss"]) == {1, 2, 4}
  assert list(events["scalars"]["recon_hidden_error"]) == [4]
  with Image.open(os.path.join(path, "reconstruction.png")) as im:
    assert events["images"]["reconstruction"] == {4: im.size}


def test_rerun_of_a_finished_run_resumes_and_does_nothing(workdir):
  path, _ = workdir
  proc = pretrain(path, "--config.total_steps=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from" in proc.stderr
  rows = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 4]


@pytest.mark.parametrize("flag,message", [
    ("--config.batch_sise=8", "config has no key 'batch_sise' (did you mean config.batch_size?"),
    ("--config.model.image_size=30", "config.model.image_size: 30 is not a positive multiple"),
])
def test_bad_overrides_give_one_clear_message(tmp_path, flag, message):
  proc = pretrain(str(tmp_path), flag)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_evaluate_runs_every_protocol_from_a_pretraining_workdir(workdir, tmp_path):
  """scripts/evaluate.py: fine-tune + k-NN + linear of the CLI's MAE run and of a random
  encoder, every row collected into one results.csv and printed."""
  path, _ = workdir
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"),
         "--config", os.path.join(ROOT, "configs", "linprobe_tiny.py:tiny"),
         "--finetune_config", os.path.join(ROOT, "configs", "finetune_tiny.py:tiny"),
         f"--config.init={path}", "--workdir", str(tmp_path), "--config.evals.fewshot.every=-1",
         "--config.evals.knn.baseline=True", "--config.evals.linear.baseline=True"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  from maelite_jax.train import results
  rows = [r for r in results.read_rows(str(tmp_path)) if r["metric"] == "top1"]
  # finetune + finetune-best of the MAE run; linear + knn of it and of a random encoder
  assert sorted(r["protocol"] for r in rows) == [
      "finetune", "finetune-best", "knn-k20", "knn-k20", "linear", "linear"]
  assert sum(r["pretrain"] == "random-init" for r in rows) == 2
  assert all(0.0 <= float(r["value"]) <= 100.0 for r in rows)
  # one naming across protocols (issue 24, item 8): the fine-tune and the frozen protocols name
  # the same model and the same pre-training; the metric has its own column
  every = results.read_rows(str(tmp_path))
  assert {r["model"] for r in every} == {"vit_tiny_patch16"}
  assert {r["pretrain"] for r in every} == {f"mae:{path}", "random-init"}
  assert {r["metric"] for r in every} == {"top1", "top5"}
  assert "knn-k20" in proc.stdout and "finetune" in proc.stdout  # the printed table
  # every row names the checkpoint's step; the offline protocols' scalars are in TensorBoard
  assert {r["step"] for r in rows} == {"4", "30"}  # the MAE checkpoint; the fine-tune's end
  events = read_events(str(tmp_path))
  assert {"knn_top1", "knn_top1_random", "linear_top1", "linear_top1_random"} <= set(
      events["scalars"])
  assert list(events["scalars"]["knn_top1"]) == [4]
  assert "top1" in read_events(str(tmp_path / "finetune"))["scalars"]
  assert proc.stdout.count("protocol") == 1  # the table is printed once
  assert noise_lines(proc.stderr) == []
