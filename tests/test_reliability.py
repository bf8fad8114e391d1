"""Fault injection (issue 9): preemption, damaged checkpoints, NaN/Inf policies, bad images,
config errors, and a 2-process run. All CPU.

Every run here uses the same tiny model, batch and device count, and the module shares one
persistent compilation cache (also with its subprocesses), so the train step compiles once.
"""

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny run of every test here; also given to subprocesses as --config.KEY=VALUE flags.
# total_steps is part of the compiled lr schedule: runs share one length and stop early
# (run(stop_at=N), as a preemption would) so that they share one compiled step.
TINY = {
    "total_steps": 400, "log_every": 1, "checkpoint_every": 2, "optim.warmup_steps": 2, "optim.base_lr": 5e-3,
    # See tests/test_train.py: a larger Adam eps keeps cross-device comparisons meaningful.
    "optim.eps": 1e-6, "data.shuffle_buffer": 256,
}


def tiny_config(**overrides):
  from maelite_jax.configs import mae_tiny
  config = mae_tiny.get_config("tiny")
  with config.unlocked():
    for key, value in {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def config_flags(**overrides):
  return [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


def read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def ckpt_steps(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


class _Records(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_logs():
  """absl's warnings as a list of strings (works in module fixtures, unlike caplog)."""
  handler, logger = _Records(), logging.getLogger("absl")
  logger.addHandler(handler)
  try:
    yield handler.messages
  finally:
    logger.removeHandler(handler)


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  with helpers.persistent_compile_cache(str(tmp_path_factory.mktemp("jax_cache"))) as path:
    yield path


def sub_env(cache, **extra):
  """Subprocesses see the same 8 CPU devices and compilation cache as this process."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "8",
          "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_COMPILATION_CACHE_DIR": cache,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **extra}


# ---------------------------------------------------------------------------------------------
# Preemption


def _wait_for_step(proc, workdir, step, timeout=400):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, "the run ended before it was signalled"
    if os.path.exists(path) and read_rows(workdir) and read_rows(workdir)[-1]["step"] >= step:
      return
    time.sleep(0.2)
  raise TimeoutError(f"no step {step} in {path} after {timeout} s")


def _preempted_run(workdir, cache, at_least_step):
  """Starts scripts/pretrain.py, sends SIGTERM once it logged `at_least_step`; returns its log."""
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"),
         "--config", os.path.join(ROOT, "configs", "mae_tiny.py:tiny"), "--workdir", workdir,
         *config_flags()]
  log_path = os.path.join(os.path.dirname(workdir), f"log{at_least_step}.txt")
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=sub_env(cache),
                            cwd=ROOT)
    try:
      _wait_for_step(proc, workdir, at_least_step)
      proc.send_signal(signal.SIGTERM)
      rc = proc.wait(timeout=300)
    finally:
      if proc.poll() is None:
        proc.kill()
  text = open(log_path).read()
  assert rc == 75, text[-3000:]  # preempted: checkpoint written, rerun to resume
  return text


def test_sigterm_checkpoints_and_the_same_command_resumes_the_same_trajectory(tmp_path,
                                                                               compile_cache):
  from maelite_jax.run import build_trainer
  workdir = str(tmp_path / "run")
  log1 = _preempted_run(workdir, compile_cache, 2)
  stopped = read_rows(workdir)[-1]["step"]
  assert ckpt_steps(workdir) == [str(stopped)]  # the step reached, nothing later
  assert f"checkpoint saved at step {stopped}" in log1

  log2 = _preempted_run(workdir, compile_cache, stopped + 2)
  assert f"resuming from {os.path.join(workdir, 'checkpoints')}/{stopped}" in log2
  rows = read_rows(workdir)
  last = rows[-1]["step"]
  assert [r["step"] for r in rows] == list(range(1, last + 1))  # no gap, no repeat

  # The same config, uninterrupted, in this process (same 8 devices): the same losses.
  reference = str(tmp_path / "reference")
  build_trainer(tiny_config(), reference).run(stop_at=last)
  np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in read_rows(reference)],
                             rtol=1e-6)


def test_a_second_signal_aborts_at_once():
  from maelite_jax.train.loop import _StopFlag
  # Python's own Ctrl-C handler as the one to come back to, whatever the launcher left (a
  # background job or nohup starts Python with SIGINT ignored, and then nothing would raise).
  launcher_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    flag = _StopFlag()
    try:
      signal.raise_signal(signal.SIGINT)
      assert flag.requested  # first: finish the step, checkpoint, exit cleanly
      with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)  # second: the previous handler runs now
    finally:
      flag.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, launcher_handler)


# ---------------------------------------------------------------------------------------------
# Non-finite loss / gradients


def poison_batches(monkeypatch, bad_step, first_iterator_only=True):
  """Makes the images of step `bad_step` NaN (in the first iterator only: a rollback that
  rebuilds the input sees clean data, as after a transient fault); returns the start steps of
  the iterators built."""
  from maelite_jax import data as data_lib
  real, starts = data_lib.build_train_iterator, []

  def poisoned(*args, start_step=0, **kwargs):
    first = not starts
    starts.append(start_step)
    for step, batch in enumerate(real(*args, start_step=start_step, **kwargs), start_step + 1):
      if step == bad_step and (first or not first_iterator_only):
        batch = dict(batch, image=batch["image"] * np.float32(np.nan))
      yield batch

  monkeypatch.setattr(data_lib, "build_train_iterator", poisoned)
  return starts


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory):
  """A 4-step run (checkpoints at 2 and 4) whose step 3 has NaN images; policy 'skip'."""
  from maelite_jax.run import build_trainer
  workdir = str(tmp_path_factory.mktemp("skip"))
  with pytest.MonkeyPatch.context() as mp, captured_logs() as logs:
    poison_batches(mp, 3)
    trainer = build_trainer(tiny_config(nonfinite_policy="skip"), workdir)
    trainer.run(stop_at=4)
  return trainer, workdir, logs


def test_skip_policy_drops_the_update_counts_it_and_goes_on(skip_run):
  trainer, workdir, logs = skip_run
  rows = {r["step"]: r for r in read_rows(workdir)}
  assert rows[3]["loss"] is None and rows[3]["nonfinite"] == 1  # NaN is written as null
  assert np.isfinite(rows[4]["loss"]) and rows[4]["nonfinite"] == 0
  assert rows[4]["nonfinite_total"] == 1
  assert any("1 update(s) with a non-finite loss or gradient skipped" in m for m in logs)
  state = jax.device_get(trainer.state)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  assert int(state.guard["nonfinite_count"]) == 1
  counts = [int(x) for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
            if "count" in jax.tree_util.keystr(p)]
  assert counts and set(counts) == {3}  # 4 steps, the optimizer saw 3 updates
  assert ckpt_steps(workdir) == ["2", "4"]


def test_rollback_policy_restores_the_last_checkpoint_with_a_lower_lr(tmp_path, monkeypatch):
  from maelite_jax.train import checkpoint as ckpt_lib
  from maelite_jax.run import build_trainer
  starts = poison_batches(monkeypatch, 3)
  config = tiny_config(nonfinite_policy="rollback", nonfinite_lr_factor=0.5)
  trainer = build_trainer(config, str(tmp_path))
  with captured_logs() as logs:
    trainer.run(stop_at=4)
  assert starts == [0, 2]  # the input restarted at the checkpoint's step
  assert any("non-finite loss or gradients at step 3: rolled back to step 2" in m
             and "scaled by 0.5" in m for m in logs), logs
  rows = read_rows(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
  for r in rows:  # the lr cut is part of the schedule from the rollback on
    want = trainer.schedule(r["step"] - 1) * (0.5 if r["step"] > 2 else 1.0)
    assert r["lr"] == pytest.approx(float(want), rel=1e-6)
  assert float(jax.device_get(trainer.state.guard["lr_scale"])) == 0.5
  # ...and of the saved state: a restart continues with the lower lr.
  manager = ckpt_lib.make_manager(str(tmp_path))
  restored = build_trainer(config, str(tmp_path)).initial_state(manager)
  manager.close()
  assert int(restored.step) == 4 and float(restored.guard["lr_scale"]) == 0.5


def test_stop_policy_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  from maelite_jax.run import build_trainer
  poison_batches(monkeypatch, 3)
  trainer = build_trainer(tiny_config(nonfinite_policy="stop"), str(tmp_path))
  with pytest.raises(FloatingPointError, match=r"at step 3 .*last good checkpoint is step 2"):
    trainer.run(stop_at=4)
  assert ckpt_steps(str(tmp_path)) == ["2"]
  assert [r["step"] for r in read_rows(str(tmp_path))] == [1, 2]


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints


def damage(state_dir, how):
  """Damages the largest file of an orbax `state` folder (the array data)."""
  files = [os.path.join(d, n) for d, _, ns in os.walk(state_dir) for n in ns]
  target = max(files, key=os.path.getsize)
  if how == "truncate":
    with open(target, "r+b") as f:
      f.truncate(os.path.getsize(target) // 2)
  elif how == "delete":
    os.remove(target)
  elif how == "flip":  # readable, but not what was saved: only the checksum can tell
    with open(target, "r+b") as f:
      f.seek(os.path.getsize(target) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0x01]))


def restart(workdir, **overrides):
  """initial_state of a fresh Trainer on `workdir` (what a rerun would resume from)."""
  from maelite_jax.train import checkpoint as ckpt_lib
  from maelite_jax.run import build_trainer
  trainer = build_trainer(tiny_config(**overrides), workdir)
  manager = ckpt_lib.make_manager(workdir)
  try:
    with captured_logs() as logs:
      state = trainer.initial_state(manager)
  finally:
    manager.close()
  return trainer, state, logs


@pytest.mark.parametrize("how", ["truncate", "delete", "flip"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(skip_run, tmp_path, how):
  workdir = str(tmp_path / "run")
  shutil.copytree(skip_run[1], workdir)
  step_dir = os.path.join(workdir, "checkpoints", "4")
  damage(os.path.join(step_dir, "state"), how)
  trainer, state, logs = restart(workdir)
  assert int(state.step) == 2
  assert any(f"checkpoint {step_dir} cannot be restored" in m for m in logs), logs
  assert ckpt_steps(workdir) == ["2", "4.corrupt"]  # moved aside, kept for inspection
  if how == "truncate":  # and the run goes on from there, writing step 4 anew
    trainer.run(stop_at=4)
    assert ckpt_steps(workdir) == ["2", "4", "4.corrupt"]


def test_no_readable_checkpoint_is_a_clear_error_and_moves_nothing(skip_run, tmp_path):
  from maelite_jax.train.checkpoint import CheckpointError
  workdir = str(tmp_path / "run")
  shutil.copytree(skip_run[1], workdir)
  for step in ("2", "4"):
    damage(os.path.join(workdir, "checkpoints", step, "state"), "delete")
  with pytest.raises(CheckpointError, match="none of the 2 checkpoint.*new --workdir"):
    restart(workdir)
  assert ckpt_steps(workdir) == ["2", "4"]


def test_a_save_interrupted_by_a_crash_is_ignored(skip_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(skip_run[1], workdir)
  tmp = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1234", "state")
  os.makedirs(tmp)
  with open(os.path.join(tmp, "half_written"), "w") as f:
    f.write("x")
  _, state, logs = restart(workdir)
  assert int(state.step) == 4
  assert not any("cannot be restored" in m for m in logs)


# ---------------------------------------------------------------------------------------------
# Bad images


def make_bad_folder(root):
  from PIL import Image
  rng = np.random.default_rng(0)
  img = lambda h=24, w=28: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
  for split, n in (("train", 20), ("test", 4)):
    for cls in ("cat", "dog"):
      os.makedirs(os.path.join(root, split, cls))
      for i in range(n):
        img().save(os.path.join(root, split, cls, f"{i}.jpg"))
  d = os.path.join(root, "train", "cat")
  img().convert("L").save(os.path.join(d, "gray.jpg"))
  img().convert("CMYK").save(os.path.join(d, "cmyk.jpg"))
  img().convert("RGBA").save(os.path.join(d, "rgba.png"))
  img().convert("P").save(os.path.join(d, "palette.png"))
  Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(
      os.path.join(d, "gray16.png"))
  img(3, 3).save(os.path.join(d, "tiny.png"))
  img(1, 1).save(os.path.join(d, "one_pixel.jpg"))
  data = open(os.path.join(d, "0.jpg"), "rb").read()
  open(os.path.join(d, "truncated.jpg"), "wb").write(data[:len(data) // 2])
  open(os.path.join(d, "empty.png"), "wb").close()
  open(os.path.join(d, "notes.jpg"), "w").write("not an image")
  open(os.path.join(d, "README.txt"), "w").write("not an image either")


def test_folder_with_bad_images_trains_and_reports_them(tmp_path, monkeypatch):
  from maelite_jax.data import sources
  from maelite_jax.run import build_trainer
  monkeypatch.setenv("MAELITE_CACHE_DIR", str(tmp_path / "cache"))
  root = str(tmp_path / "images")
  make_bad_folder(root)
  config = tiny_config(data__dataset="imagefolder", data__data_dir=root, data__cache=False,
                       data__shuffle_buffer=64)
  with captured_logs() as logs:
    build_trainer(config, str(tmp_path / "run")).run(stop_at=2)
  assert any("3 of 50 image files skipped as unreadable" in m and "truncated.jpg" in m
             and "1 non-image files ignored" in m and "2 tiny images" in m for m in logs), logs
  rows = read_rows(str(tmp_path / "run"))
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  source = sources.make_source(config.data)
  assert source.num_examples("train") == 47  # 40 + 7 odd but usable (cached verdicts)
  assert source.reports["train"] == dict(usable=47, skipped=3, tiny=2, ignored=1,
                                         examples=source.reports["train"]["examples"])
  assert os.listdir(tmp_path / "cache" / "image_check")


# ---------------------------------------------------------------------------------------------
# Config errors


class _Usage:
  def __init__(self, free):
    self.total, self.used, self.free = 10 * free, 9 * free, free


@pytest.mark.parametrize("case,match", [
    ("unwritable", "cannot write to /proc"),
    ("under_a_file", "is a file, not a folder"),
    ("low_disk", "only 10 MiB free on that disk"),
    ("missing_data_dir", "data_dir.*does not exist"),
    ("policy", "config.nonfinite_policy: 'rolback' is unknown"),
])
def test_config_errors_say_what_to_change(case, match, tmp_path, monkeypatch):
  from maelite_jax.train import validate
  from maelite_jax.run import build_trainer
  workdir, overrides = str(tmp_path / "run"), {}
  if case == "unwritable":
    workdir = "/proc/maelite_workdir/run"  # not writable even for root
  elif case == "under_a_file":
    open(tmp_path / "file", "w").close()
    workdir = str(tmp_path / "file" / "run")
  elif case == "low_disk":
    monkeypatch.setattr(validate.shutil, "disk_usage", lambda p: _Usage(10 * 2**20))
  elif case == "missing_data_dir":
    overrides = dict(data__dataset="imagefolder", data__data_dir=str(tmp_path / "nowhere"))
  elif case == "policy":
    overrides = dict(nonfinite_policy="rolback")
  with pytest.raises(validate.ConfigError, match=match):
    build_trainer(tiny_config(**overrides), workdir)


def test_checkpoint_space_is_checked_against_the_state_size(tmp_path, monkeypatch):
  from maelite_jax.train import validate
  monkeypatch.setattr(validate.shutil, "disk_usage", lambda p: _Usage(2**30))
  validate.check_checkpoint_space(str(tmp_path), 100 * 2**20)  # 1 GiB free is plenty
  with pytest.raises(validate.ConfigError, match="2048 MiB train state need about 2592 MiB"):
    validate.check_checkpoint_space(str(tmp_path), 2**31)


def test_wrong_type_on_the_command_line_is_one_clear_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"), "--config",
       os.path.join(ROOT, "configs", "mae_tiny.py:tiny"), "--workdir", str(tmp_path),
       "--config.batch_size=abc"], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode != 0
  assert "--config.batch_size=abc: invalid literal for int()" in proc.stderr
  assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Multi-host


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_checkpoint_resume_and_stop_together_like_one(
    tmp_path, compile_cache, monkeypatch):
  from jax.sharding import NamedSharding, PartitionSpec
  from maelite_jax import data as data_lib
  from maelite_jax.train import checkpoint as ckpt_lib
  from maelite_jax.run import build_trainer
  workdir, out = str(tmp_path / "run"), str(tmp_path / "out")
  os.makedirs(out)
  env = sub_env(compile_cache, JAX_NUM_CPU_DEVICES="4")
  port, procs, logs = _free_port(), [], []
  try:
    for i in range(2):
      logs.append(os.path.join(out, f"log{i}.txt"))
      with open(logs[i], "w") as log:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.multihost_worker", str(i), "2", str(port), workdir,
             out], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    _wait_for_step(procs[1], workdir, 3, timeout=540)
    procs[1].send_signal(signal.SIGTERM)  # preempt one host: both must stop after one step
    for p in procs:
      p.wait(timeout=300)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [open(path).read() for path in logs]
  for p, text in zip(procs, texts):
    assert p.returncode == 0, text[-4000:]
  info = [json.load(open(os.path.join(out, f"proc{i}.json"))) for i in range(2)]
  assert [(d["process_index"], d["process_count"], d["devices"]) for d in info] == [
      (0, 2, 8), (1, 2, 8)]
  assert "resuming from" in texts[0] and "resuming from" in texts[1]
  last = info[0]["final"]
  assert info[1]["final"] == last and 3 < last < 50
  for text in texts:
    assert f"checkpoint saved at step {last}" in text

  # One writer: each step once in metrics.jsonl, one figure, one coherent checkpoint per save.
  assert [r["step"] for r in read_rows(workdir)] == list(range(1, last + 1))
  assert os.path.exists(os.path.join(workdir, "reconstruction.png"))
  assert "reconstruction_step" in texts[0] and "reconstruction_step" not in texts[1]
  assert ckpt_steps(workdir)[-1] == str(last)

  # Each process fed its own rows of every global batch, with different images.
  rows = [np.load(os.path.join(out, f"rows{i}.npz")) for i in range(2)]
  for step in range(1, last + 1):
    starts = [set(r[f"start{step}"].tolist()) for r in rows]
    assert not starts[0] & starts[1] and sorted(starts[0] | starts[1]) == list(range(0, 32, 4))
    assert not np.allclose(rows[0][f"image{step}"], rows[1][f"image{step}"])

  # One process on the same 8 devices fed the same global batches: the same losses, weights.
  def replay(*args, mesh, start_step=0, **kwargs):
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    for step in range(start_step + 1, last + 1):
      images = np.zeros((32, 32, 32, 3), np.float32)
      for r in rows:
        chunks = np.split(r[f"image{step}"], len(r[f"start{step}"]))
        for start, chunk in zip(r[f"start{step}"], chunks):
          images[start:start + len(chunk)] = chunk
      yield {"image": jax.device_put(images, sharding),
             "label": jax.device_put(np.zeros(32, np.int32), sharding)}

  monkeypatch.setattr(data_lib, "build_train_iterator", replay)
  single = build_trainer(tiny_config(), str(tmp_path / "single"))
  single.run(stop_at=last)
  np.testing.assert_allclose([r["loss"] for r in read_rows(workdir)],
                             [r["loss"] for r in read_rows(str(tmp_path / "single"))], rtol=1e-5)
  params, _ = ckpt_lib.load_params(workdir)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(single.state.params))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_checkpoint_checksum_does_not_depend_on_the_sharding():
  from jax.sharding import NamedSharding, PartitionSpec
  from maelite_jax.train.checkpoint import fingerprint_json
  from maelite_jax.train.mesh import make_mesh
  x = np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)
  sharded = jax.device_put(x, NamedSharding(make_mesh(), PartitionSpec("data")))
  assert fingerprint_json({"x": sharded}) == fingerprint_json({"x": x})
  assert fingerprint_json({"x": x}) != fingerprint_json({"x": x[::-1]})
