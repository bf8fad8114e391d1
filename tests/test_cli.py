"""The pre-training command line end to end: what a workdir holds, and clean config errors."""

import glob
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pretrain(workdir, *overrides):
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"),
         "--config", os.path.join(ROOT, "configs", "mae_tiny.py:tiny"), "--workdir", workdir,
         *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("cli"))
  proc = pretrain(path, "--config.total_steps=4", "--config.checkpoint_every=2",
                  "--config.log_every=2", "--config.num_vis_images=4")
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


def test_rerun_of_a_finished_run_resumes_and_does_nothing(workdir):
  path, _ = workdir
  proc = pretrain(path, "--config.total_steps=4", "--config.num_vis_images=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from" in proc.stderr
  rows = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 4]


@pytest.mark.parametrize("flag,message", [
    ("--config.batch_sise=8", 'Did you mean "batch_size"'),
    ("--config.model.image_size=30", "config.model.image_size: 30 is not a positive multiple"),
])
def test_bad_overrides_give_one_clear_message(tmp_path, flag, message):
  proc = pretrain(str(tmp_path), flag)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
