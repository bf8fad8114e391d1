"""The crash-loop test (issue 22): a run killed with SIGKILL at random moments, during start-up,
between steps and in the middle of checkpoint writes, and restarted each time by the same
command, ends with exactly the final state and loss curve of an uninterrupted run.

Also: while one attempt holds the workdir, a second run of the same command stops with the
lock's paragraph (exit 2) naming the holder's pid, and every restart after a SIGKILL takes
over the dead holder's lock with a note. The uninterrupted reference runs in this process
first and fills the persistent compilation cache that every attempt (a subprocess) reuses.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import helpers
from tests.test_reliability import read_rows, sub_env, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16
FLAGS = {"total_steps": STEPS, "checkpoint_every": 2, "keep_checkpoints": 2}
# start-up (imports, restore), between steps, and during a checkpoint write; 6 SIGKILLs
KILLS = ("startup", "write", "step", "write", "step", "write")
TMP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  with helpers.persistent_compile_cache(str(tmp_path_factory.mktemp("jax_cache"))) as path:
    yield path


def final_state(workdir):
  """Every array of the newest checkpoint's train state (step, params, opt_state, guard)."""
  path = os.path.join(workdir, "checkpoints")
  step = max(ocp.utils.checkpoint_steps(path))
  state_dir = os.path.join(path, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(state_dir).item_metadata
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=args))
  return step, jax.tree_util.tree_flatten_with_path(restored)[0]


def complete_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return ocp.utils.checkpoint_steps(path) if os.path.isdir(path) else []


def logged_steps(log_path):
  """Steps this attempt logged ('step N/16' progress lines)."""
  text = open(log_path, errors="replace").read()
  return [int(s) for s in re.findall(rf"\] step (\d+)/{STEPS} ", text)]


def _until(predicate, proc, timeout=400, poll=0.002):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      return False
    found = predicate()
    if found:
      return found
    time.sleep(poll)
  raise TimeoutError("the attempt made no progress")


def test_sigkill_at_random_moments_then_rerun_equals_one_uninterrupted_run(tmp_path, cache):
  from maelite_jax.run import build_trainer
  t0 = time.time()
  reference = str(tmp_path / "reference")
  build_trainer(tiny_config(**FLAGS), reference).run()
  t_reference = time.time() - t0

  workdir = str(tmp_path / "run")
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"), "--config",
         os.path.join(ROOT, "configs", "mae_tiny.py:tiny"), "--workdir", workdir] + [
         f"--config.{k}={v}" for k, v in {**tiny_flags(), **FLAGS}.items()]
  env = sub_env(cache)
  rng = random.Random(22)
  kills, writes_cut, victims, duplicate = [], 0, [], None
  plan = list(KILLS)
  attempt = 0
  while True:
    mode = plan[attempt] if attempt < len(plan) else None
    start = max(complete_steps(workdir), default=0)
    log_path = str(tmp_path / f"attempt{attempt}.txt")
    with open(log_path, "w") as log:
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
      if attempt == 1:  # a second run of the same command while this one holds the workdir
        _until(lambda: logged_steps(log_path), proc, poll=0.05)
        proc.send_signal(signal.SIGSTOP)
        try:
          duplicate = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                                     timeout=400)
        finally:
          proc.send_signal(signal.SIGCONT)
      if mode == "startup":
        time.sleep(rng.uniform(2.0, 8.0))
      elif mode == "step":
        target = min(start + rng.randint(1, 3), STEPS - 1)
        _until(lambda: any(s >= target for s in logged_steps(log_path)), proc)
        time.sleep(rng.uniform(0.0, 0.3))
      elif mode == "write":
        # the first save of the attempt completes (progress), the next is cut short
        target = min(start + 4, STEPS - 2)
        ckpt = os.path.join(workdir, "checkpoints")

        def writing():
          names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
          return [n for n in names if TMP.match(n) and int(TMP.match(n).group(1)) >= target]
        _until(writing, proc)
      if mode is None:
        assert proc.wait(timeout=600) == 0, open(log_path).read()[-4000:]
        break
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(mode)
        victims.append((attempt, proc.pid, "training mae_vit_tiny" in open(log_path).read()))
        ckpt = os.path.join(workdir, "checkpoints")
        if mode == "write" and any(TMP.match(n) for n in os.listdir(ckpt)):
          writes_cut += 1  # killed while orbax was writing a step (its tmp folder is left)
        elif mode == "write" and writes_cut == 0 and len(plan) < 12:
          plan.insert(attempt + 1, "write")  # the write finished first: try another one
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    attempt += 1
  elapsed = time.time() - t0
  print(f"\ncrash loop: {len(kills)} SIGKILLs ({', '.join(kills)}), {writes_cut} during a "
        f"checkpoint write, {attempt + 1} attempts; {elapsed:.0f} s in all, reference run "
        f"{t_reference:.0f} s")
  assert len(kills) >= 5 and writes_cut >= 1

  # The duplicate stopped at once with the lock's paragraph (exit 2) naming the holder.
  assert duplicate is not None and duplicate.returncode == 2, duplicate.stderr[-3000:]
  assert re.search(rf"error: --workdir {re.escape(workdir)} is in use by pid \d+ on host ",
                   duplicate.stderr), duplicate.stderr[-3000:]
  assert "Traceback" not in duplicate.stderr
  # Every restart after a SIGKILL of a run that held the lock took that lock over.
  for (i, pid, held) in victims:
    if held:
      text = open(str(tmp_path / f"attempt{i + 1}.txt")).read()
      assert f"took over the lock of pid {pid} " in text, text[-3000:]

  # The same losses, each step once, and the same final state, bit for bit.
  rows, ref_rows = read_rows(workdir), read_rows(reference)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
  step, got = final_state(workdir)
  ref_step, want = final_state(reference)
  assert step == ref_step == STEPS
  assert [p for p, _ in got] == [p for p, _ in want]
  for (path, a), (_, b) in zip(got, want):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "corrupt" in n]


def tiny_flags():
  from tests.test_reliability import TINY
  return TINY
