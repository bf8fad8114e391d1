"""Fault injection, round two (issue 22): the workdir lock, checksums on every load, 'skip'
escalation, labels against num_classes, run-length and weight-file mistakes, a full disk.

Each test injects one fault the issue found and checks the one-paragraph error (or the safe
behaviour) that replaces the old silent result or traceback. Every run uses tests/
test_reliability.py's tiny config and shares one persistent compilation cache, so the train
step compiles once for the module.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import helpers
from tests.test_reliability import captured_logs, poison_batches, read_rows, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  with helpers.persistent_compile_cache(str(tmp_path_factory.mktemp("jax_cache"))) as path:
    yield path


def flip_bytes(step_dir, count=16, where="ocdbt.process_0"):
  """Flips `count` bytes in the middle of every array data file of a step folder: readable,
  but not what was saved (only the checksums can tell). where='state' hits the tree's
  metadata too (the top-level d/ folder)."""
  hit = 0
  for folder, _, names in os.walk(os.path.join(step_dir, "state")):
    for name in names:
      path = os.path.join(folder, name)
      if (os.sep + "d" + os.sep in path and os.path.getsize(path) > 4 * count
          and (where == "state" or where + os.sep in path)):
        with open(path, "r+b") as f:
          f.seek(os.path.getsize(path) // 2)
          data = f.read(count)
          f.seek(-len(data), os.SEEK_CUR)
          f.write(bytes(b ^ 0xFF for b in data))
        hit += 1
  assert hit, f"no array data under {step_dir}"


TINY_MAE = {"depth": 2, "image_size": 32, "patch_size": 4}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A params-only checkpoint of the tiny MAE (what import_torch.py writes) and a copy of it
  with 16 flipped bytes per array file."""
  from maelite_jax.models import create_model
  from maelite_jax.train.checkpoint import save_params
  model = create_model("mae_vit_tiny_patch16", **TINY_MAE)
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                               np.zeros((1, 64), np.float32))["params"]
  good, bad = (str(tmp_path_factory.mktemp(n)) for n in ("good", "flipped"))
  meta = {"model": {"name": "mae_vit_tiny_patch16", "kwargs": TINY_MAE}, "objective": "mae"}
  save_params(good, jax.device_get(params), meta)
  step_dir = save_params(bad, jax.device_get(params), meta)
  flip_bytes(step_dir)
  return good, bad


# ---------------------------------------------------------------------------------------------
# Checksums on every load (issue items 2, 3): 16 flipped bytes are an error naming step and file


def _load_for(kind, path, tmp_path):
  from maelite_jax.configs import analyze, dmae_tiny, linprobe_tiny
  if kind == "export":
    from maelite_jax.commands.export_torch import export_checkpoint
    export_checkpoint(path, str(tmp_path / "out.safetensors"))
  elif kind == "init":
    from maelite_jax.run import build_trainer
    build_trainer(tiny_config(init=path), str(tmp_path / "run")).run(stop_at=1)
  elif kind == "evaluation":
    from maelite_jax.evaluate import offline
    config = linprobe_tiny.get_config("tiny")
    with config.unlocked():
      config.init = path
    offline.load(config)
  elif kind == "analysis":
    from maelite_jax.analysis import report
    config = analyze.get_config("tiny")
    with config.unlocked():
      config.models = f"m={path}"
    report.load_models(config)
  elif kind == "teacher":
    from maelite_jax.tasks import dmae
    config = dmae_tiny.get_config("tiny")
    with config.unlocked():
      config.teacher.init, config.teacher.name = path, ""
    dmae.load_teacher(config)


@pytest.mark.parametrize("kind", ["export", "init", "evaluation", "analysis", "teacher"])
def test_every_load_verifies_the_checksums(weights, tmp_path, kind):
  from maelite_jax.utils.errors import CheckpointError
  good, bad = weights
  with pytest.raises(CheckpointError, match=r"checkpoint step 0 \(.*/checkpoints/0\) is damaged: "
                     r"\d+ array\(s\) differ .*first: params/"):
    _load_for(kind, bad, tmp_path)
  if kind == "export":  # the intact copy goes through, and the file is readable by others
    from maelite_jax.commands.export_torch import export_checkpoint
    paths = export_checkpoint(good, str(tmp_path / "ok.safetensors"))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(paths["safetensors"]).st_mode & 0o777 == 0o666 & ~umask  # not 0600


@pytest.mark.parametrize("how", ["metadata", "truncate"])
def test_an_unreadable_checkpoint_is_one_paragraph(weights, tmp_path, how):
  import shutil
  from maelite_jax.train.checkpoint import load_params
  from maelite_jax.utils.errors import CheckpointError
  path = str(tmp_path / "w")
  shutil.copytree(weights[0], path)
  step_dir = os.path.join(path, "checkpoints", "0")
  if how == "metadata":
    flip_bytes(step_dir, where="state")
  else:
    for folder, _, names in os.walk(os.path.join(step_dir, "state", "ocdbt.process_0", "d")):
      for name in names:
        with open(os.path.join(folder, name), "r+b") as f:
          f.truncate(os.path.getsize(os.path.join(folder, name)) // 2)
  with pytest.raises(CheckpointError,
                     match=r"checkpoint step 0 \(.*\) (cannot be read|is damaged)"):
    load_params(path)


def test_import_refuses_to_overwrite_a_checkpoint(weights):
  from maelite_jax.commands.import_torch import import_checkpoint
  from maelite_jax.utils.errors import CheckpointError
  with pytest.raises(CheckpointError, match=r"already holds checkpoint step 0"):
    import_checkpoint("/nonexistent.pth", "vit_tiny_patch16", weights[0])


# ---------------------------------------------------------------------------------------------
# Weight files (issue item 7 and the import/export tracebacks)


@pytest.mark.parametrize("case", ["empty_pth", "truncated_pth", "garbage_safetensors", "folder",
                                  "pickled_pth"])
def test_damaged_weight_files_are_one_paragraph(tmp_path, case):
  import argparse
  import torch
  from maelite_jax.export import io
  from maelite_jax.utils.errors import WeightFileError
  path = str(tmp_path / ("w.safetensors" if "safetensors" in case else "w.pth"))
  if case == "empty_pth":
    open(path, "wb").close()
  elif case in ("truncated_pth", "pickled_pth"):
    extra = {"args": argparse.Namespace(lr=1)} if case == "pickled_pth" else {}
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}, **extra}, path)
    if case == "truncated_pth":
      data = open(path, "rb").read()
      open(path, "wb").write(data[:len(data) // 2])
  elif case == "garbage_safetensors":
    open(path, "wb").write(np.random.default_rng(0).bytes(3000))
  elif case == "folder":
    path = str(tmp_path)
  with pytest.raises(WeightFileError) as info:
    io.read_state_dict(path)
  message = str(info.value)
  assert "\n" not in message
  if case == "pickled_pth":  # only here is --allow-pickle the answer
    assert "--allow-pickle" in message
  else:
    assert "allow-pickle" not in message and "allow_pickle" not in message
    assert {"empty_pth": "is empty (0 bytes)", "truncated_pth": "truncated or damaged",
            "garbage_safetensors": "cannot be read as a .safetensors file",
            "folder": "is a folder"}[case] in message


# ---------------------------------------------------------------------------------------------
# The workdir lock (issue item 1)


HOLDER = """
import sys, time
from maelite_jax.train.lock import WorkdirLock
WorkdirLock(sys.argv[1], "holder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], stdout=subprocess.PIPE,
                          text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_a_second_run_on_a_locked_workdir_stops_and_a_dead_holder_is_taken_over(tmp_path):
  from maelite_jax.run import build_trainer
  from maelite_jax.train.lock import WorkdirLock, WorkdirLocked
  workdir = str(tmp_path / "run")
  holder = _holder(workdir)
  try:
    trainer = build_trainer(tiny_config(), workdir)
    with pytest.raises(WorkdirLocked, match=rf"--workdir {workdir} is in use by pid {holder.pid} "
                       r"on host .* \(started .*\) running `holder`.*another --workdir"):
      trainer.run(stop_at=1)
    assert sorted(os.listdir(workdir)) == ["lock"]  # nothing written: no checkpoint, no metrics
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with captured_logs() as logs:  # the kernel dropped the flock; the record names a dead pid
    lock = WorkdirLock(workdir).acquire()
  assert lock.took_over["pid"] == holder.pid
  assert any(f"took over the lock of pid {holder.pid}" in m and "no longer exists" in m
             for m in logs), logs
  lock.release()
  assert open(os.path.join(workdir, "lock")).read() == ""  # released: no record left


def test_a_lock_record_of_another_host_counts_until_its_heartbeat_stops(tmp_path):
  from maelite_jax.train.lock import STALE_S, WorkdirLock, WorkdirLocked
  os.makedirs(tmp_path / "run")
  path = str(tmp_path / "run" / "lock")
  with open(path, "w") as f:
    json.dump({"host": "elsewhere", "pid": 1, "started": time.time()}, f)
  with pytest.raises(WorkdirLocked, match=r"pid 1 on host elsewhere.*last refreshed the lock "
                     r"\d+ s ago; if its run is gone, delete"):
    WorkdirLock(str(tmp_path / "run")).acquire()
  old = time.time() - 2 * STALE_S
  os.utime(path, (old, old))
  lock = WorkdirLock(str(tmp_path / "run")).acquire()
  assert lock.took_over["host"] == "elsewhere"
  lock.release()


def test_the_lock_is_released_when_the_run_raises(tmp_path, monkeypatch):
  from maelite_jax.run import build_trainer
  from maelite_jax.train import loop
  from maelite_jax.train.lock import WorkdirLock
  workdir = str(tmp_path / "run")
  trainer = build_trainer(tiny_config(), workdir)

  def crash(self, stop_at):
    assert json.load(open(os.path.join(workdir, "lock")))["pid"] == os.getpid()  # held inside
    raise RuntimeError("a bug")

  monkeypatch.setattr(loop.Trainer, "_run", crash)
  with pytest.raises(RuntimeError, match="a bug"):
    trainer.run()
  lock = WorkdirLock(workdir).acquire()
  assert lock.took_over is None  # released and cleared, not left for a takeover
  lock.release()


# ---------------------------------------------------------------------------------------------
# Run length (issue item 6) and non-finite steps (issue item 4)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  """A run stopped after step 2 (its checkpoint is step 2)."""
  from maelite_jax.run import build_trainer
  workdir = str(tmp_path_factory.mktemp("short"))
  build_trainer(tiny_config(), workdir).run(stop_at=2)
  return workdir


def test_a_finished_run_says_so_and_a_shorter_one_is_refused(short_run):
  from maelite_jax.run import build_trainer
  from maelite_jax.utils.errors import ConfigError
  with captured_logs() as logs:
    assert build_trainer(tiny_config(total_steps=2), short_run).run() == {}
  assert any("this run already finished at step 2" in m for m in logs), logs
  with pytest.raises(ConfigError, match=r"config.total_steps: the workdir .* holds a checkpoint "
                     r"of step 2, past this run's 1 steps"):
    build_trainer(tiny_config(total_steps=1), short_run).run()
  assert [r["step"] for r in read_rows(short_run)] == [1, 2]  # untouched


def test_a_run_too_short_for_one_step_is_refused(tmp_path):
  from maelite_jax.run import build_trainer
  from maelite_jax.utils.errors import ConfigError
  with pytest.raises(ConfigError, match=r"config.total_epochs: 0.0001 epoch\(s\) of \d+ step\(s\) "
                     r"\(a batch of 32\) is 0 training steps"):
    build_trainer(tiny_config(total_steps=0, total_epochs=1e-4), str(tmp_path))


@pytest.mark.parametrize("case", ["stop", "rollback"])
def test_nan_stop_and_rollback_errors_are_user_errors(tmp_path, monkeypatch, case):
  from maelite_jax.run import build_trainer
  from maelite_jax.utils.cli import user_error_message
  from maelite_jax.utils.errors import NonFiniteError
  if case == "stop":
    poison_batches(monkeypatch, 3)
  else:  # every batch is bad, whatever the input restarts from: rollbacks cannot help
    from maelite_jax import data as data_lib
    real = data_lib.build_train_iterator
    monkeypatch.setattr(data_lib, "build_train_iterator", lambda *a, **k: (
        dict(b, image=b["image"] * np.float32(np.nan)) for b in real(*a, **k)))
  trainer = build_trainer(tiny_config(nonfinite_policy=case), str(tmp_path))
  with pytest.raises(NonFiniteError) as info:
    trainer.run(stop_at=6)
  assert isinstance(info.value, FloatingPointError)  # still one, for callers that catch it
  assert user_error_message(info.value) == str(info.value)  # one paragraph at the entry points
  assert ("config.nonfinite_policy='stop'" if case == "stop" else "after 3 rollbacks") in str(
      info.value)


@pytest.mark.parametrize("case,bad_steps,overrides,match", [
    ("in_a_row", range(2, 40), dict(nonfinite_max_consecutive=3),
     r"step 5: 4 non-finite steps in a row \(steps 2-5; more than "
     r"config.nonfinite_max_consecutive=3\)"),
    ("fraction", (2, 3, 5), dict(nonfinite_window=4, nonfinite_max_fraction=0.5),
     r"step 5: 3 non-finite steps among the last 4 \(more than "
     r"config.nonfinite_max_fraction=0.5 of them\)"),
])
def test_skip_escalates_when_the_run_stops_learning(tmp_path, monkeypatch, case, bad_steps,
                                                     overrides, match):
  from maelite_jax import data as data_lib
  from maelite_jax.run import build_trainer
  from maelite_jax.utils.errors import NonFiniteError
  real = data_lib.build_train_iterator

  def poisoned(*args, start_step=0, **kwargs):
    for step, batch in enumerate(real(*args, start_step=start_step, **kwargs), start_step + 1):
      yield dict(batch, image=batch["image"] * np.float32(np.nan)) if step in bad_steps else batch

  monkeypatch.setattr(data_lib, "build_train_iterator", poisoned)
  trainer = build_trainer(tiny_config(nonfinite_policy="skip", **overrides), str(tmp_path))
  with pytest.raises(NonFiniteError, match=match) as info:
    trainer.run(stop_at=30)
  message = str(info.value)
  assert "config.optim.base_lr=0.005" in message and "config.model.mask_ratio=0.75" in message
  assert "the last checkpoint is step 4" in message  # saved before; step 5 never was
  assert [r["step"] for r in read_rows(str(tmp_path))] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Labels against num_classes (issue item 5) and class folders


def make_folder(root, classes=("cat", "dog"), empty=(), bad=(), n=16):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, count in (("train", n), ("test", 4)):
    for name in classes:
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            os.path.join(root, split, name, f"{i}.png"))
    for name in empty:
      os.makedirs(os.path.join(root, split, name))
    for name in bad:
      os.makedirs(os.path.join(root, split, name))
      open(os.path.join(root, split, name, "x.jpg"), "w").write("not an image")


def test_empty_or_unreadable_class_folders_are_no_classes(tmp_path, monkeypatch):
  from maelite_jax.configs import common
  from maelite_jax.data import sources
  monkeypatch.setenv("MAELITE_CACHE_DIR", str(tmp_path / "cache"))
  make_folder(str(tmp_path / "images"), empty=("a_empty",), bad=("b_bad",), n=2)
  config = common.data_config("imagefolder", data_dir=str(tmp_path / "images"),
                              eval_split="test")
  with captured_logs() as logs:
    source = sources.make_source(config)
    assert source.classes == ["cat", "dog"]
  assert sorted(set(source.files("train")[1].tolist())) == [0, 1]
  assert any("['a_empty', 'b_bad'] hold no usable image" in m for m in logs), logs


def test_labels_beyond_num_classes_stop_the_run_naming_the_label(tmp_path, monkeypatch):
  from maelite_jax.configs import finetune_tiny
  from maelite_jax.run import build_trainer
  from maelite_jax.utils.errors import ConfigError
  monkeypatch.setenv("MAELITE_CACHE_DIR", str(tmp_path / "cache"))
  make_folder(str(tmp_path / "images"))
  config = finetune_tiny.get_config("tiny")
  config.update_from_flattened_dict({
      "data.dataset": "imagefolder", "data.data_dir": str(tmp_path / "images"),
      "data.eval_split": "test", "model.num_classes": 1, "batch_size": 16, "total_steps": 4,
      "log_every": 2, "checkpoint_every": 2, "data.cache": False, "data.shuffle_buffer": 32})
  with pytest.raises(ConfigError, match=r"config.model.num_classes: the batch of step 1 has "
                     r"label 1, but the model has 1 class\(es\) \(labels 0..0\).*at least 2"):
    build_trainer(config, str(tmp_path / "run")).run()
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "1")


# ---------------------------------------------------------------------------------------------
# tfds without its data (issue: a download with minutes of retries offline)


@pytest.mark.parametrize("case", ["missing_data_dir", "offline"])
def test_an_unprepared_tfds_dataset_fails_fast(tmp_path, monkeypatch, case):
  from maelite_jax.configs import common
  from maelite_jax.data import sources
  from maelite_jax.utils.errors import ConfigError
  monkeypatch.setattr(sources, "_online", lambda *a, **k: False)
  data_dir = str(tmp_path / ("nowhere" if case == "missing_data_dir" else "empty"))
  if case == "offline":
    os.makedirs(data_dir)
  config = common.data_config("cifar10", data_dir=data_dir)
  start = time.time()
  with pytest.raises(ConfigError, match={
      "missing_data_dir": r"config.data.data_dir: the folder .*nowhere' does not exist",
      "offline": r"config.data.dataset: tfds dataset 'cifar10' is not prepared .* offline"}[case]):
    sources.make_source(config).validate({"train_split": "train"})
  assert time.time() - start < 120  # minutes of download retries otherwise (slack: CI load)


# ---------------------------------------------------------------------------------------------
# A full disk (fault injection: no small filesystem in CI)


@pytest.mark.parametrize("where", ["checkpoint_oserror", "checkpoint_text", "metrics"])
def test_a_full_disk_is_one_paragraph_naming_device_space_and_last_checkpoint(
    tmp_path, monkeypatch, where):
  from maelite_jax.run import build_trainer
  from maelite_jax.train import checkpoint as ckpt_lib
  from maelite_jax.train.metrics import MetricsLogger
  from maelite_jax.utils.cli import user_error_message
  from maelite_jax.utils.errors import DiskFullError
  workdir = str(tmp_path / "run")
  real_save, real_flush = ckpt_lib.save, MetricsLogger.flush
  full = OSError(errno.ENOSPC, "No space left on device", os.path.join(workdir, "x"))

  def save(manager, step, *args, **kwargs):
    if step >= 4 and where == "checkpoint_oserror":
      raise full
    if step >= 4 and where == "checkpoint_text":  # how tensorstore reports it from a thread
      raise ValueError("Error writing \"ocdbt.process_0/d/1234\": [Errno 28] No space left on "
                       "device [source locations='tensorstore/kvstore/file/file_key_value_store']")
    return real_save(manager, step, *args, **kwargs)

  def flush(self):
    if where == "metrics" and self._row is not None and self._row["step"] >= 4:
      raise full
    return real_flush(self)

  monkeypatch.setattr(ckpt_lib, "save", save)
  monkeypatch.setattr(MetricsLogger, "flush", flush)
  with pytest.raises(DiskFullError) as info:
    build_trainer(tiny_config(), workdir).run(stop_at=6)
  message = user_error_message(info.value)
  assert message == str(info.value) and "\n" not in message
  assert f"no space left on the device holding {workdir} (filesystem /" in message
  assert " MiB free); the last complete checkpoint is " + os.path.join(
      workdir, "checkpoints", "2") in message
