"""The one generic training loop; every objective (MAE, MoCo-v3, D-MAE) plugs in as a Task.

State is created directly in its sharding, the step is jitted with in/out shardings and donation
over the mesh, rng is folded with the step, checkpoints are written by orbax (resume is
automatic), metrics go to TensorBoard + metrics.jsonl, and figures to PNG in the workdir.
"""

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from maelite_jax import data as data_lib
from maelite_jax import tasks as tasks_lib
from maelite_jax.train import checkpoint as ckpt_lib
from maelite_jax.train import mesh as mesh_lib
from maelite_jax.train import optim
from maelite_jax.train.metrics import MetricsLogger
from maelite_jax.train.step import TrainState, jit_train_step, make_train_step, new_guard
from maelite_jax.train.validate import check_checkpoint_space, validate_config

# Rollbacks that end at or before the step that caused the previous one (no progress) before the
# run stops: a NaN that survives repeated lr cuts is a bad batch or a bug, not an lr problem.
MAX_ROLLBACKS_WITHOUT_PROGRESS = 3


def schedule_lengths(config) -> tuple[int, int]:
  """(total_steps, warmup_steps).

  total_steps > 0 wins over total_epochs; warmup_steps >= 0 wins over warmup_epochs. When the
  run length is given in steps but the warm-up in epochs, the warm-up keeps its fraction of the
  run (warmup_epochs / total_epochs), so shortening a recipe keeps its shape. Epochs count full
  global batches (the last partial batch is dropped, as in the reference).
  """
  total, warmup = config.total_steps, config.optim.warmup_steps
  if total <= 0:
    steps_per_epoch = max(data_lib.num_examples(config.data, config.data.train_split)
                          // config.batch_size, 1)
    total = int(config.total_epochs * steps_per_epoch)
    if warmup < 0:
      warmup = int(config.optim.warmup_epochs * steps_per_epoch)
  elif warmup < 0:
    warmup = int(round(total * config.optim.warmup_epochs / max(config.total_epochs, 1e-9)))
  return total, min(warmup, total)


def accumulation_steps(config, num_devices: int) -> int:
  """Micro-batches per step: batch_size / micro_batch_size (0 = the whole batch at once)."""
  if not config.micro_batch_size or config.micro_batch_size >= config.batch_size:
    return 1
  return config.batch_size // config.micro_batch_size


class Trainer:
  """Holds everything built from a config; `run()` trains to total_steps (resuming if possible)."""

  def __init__(self, config, workdir: str, devices=None):
    validate_config(config, num_devices=len(devices or jax.devices()), workdir=workdir)
    self.config = config
    self.workdir = workdir
    os.makedirs(workdir, exist_ok=True)
    self.mesh = mesh_lib.make_mesh(devices)
    self.task = tasks_lib.build_task(config)
    self.total_steps, self.warmup_steps = schedule_lengths(config)
    self.accum = accumulation_steps(config, self.mesh.size)
    self.schedule = optim.lr_schedule(config.optim, config.batch_size, self.total_steps,
                                      self.warmup_steps)
    self.nonfinite_policy = config.get("nonfinite_policy", "skip")
    self.lr_scale = 1.0  # the rollback policy's lr cut; the saved state holds it (guard)
    self._build_state()
    check_checkpoint_space(workdir, sum(x.size * x.dtype.itemsize
                                        for x in jax.tree.leaves(self.abstract_state)))

  def _example_batch(self):
    s = self.config.model.image_size
    return {"image": jnp.zeros((1, s, s, 3), jnp.float32)}

  def _build_state(self):
    params_shape, _ = jax.eval_shape(lambda r: self.task.init(r, self._example_batch()),
                                     jax.random.key(0))
    self.optimizer = optim.build_optimizer(self.config.optim, self.schedule, params_shape,
                                           self.task.lr_multipliers(params_shape))

    def init_state(rng):
      params, extra = self.task.init(rng, self._example_batch())
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.optimizer.init(params), extra=extra, guard=new_guard())

    self._init_state = init_state
    abstract = jax.eval_shape(init_state, jax.random.key(0))
    self.state_shardings = mesh_lib.state_shardings(abstract, self.mesh, self.config.fsdp_regex)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_shardings)
    step_fn = make_train_step(self.task, self.optimizer, self.mesh, accum_steps=self.accum,
                              base_rng_seed=self.config.seed)
    # Frozen arrays (e.g. a distillation teacher) are arguments, never part of the saved state.
    frozen = self.task.frozen()
    self.frozen_shardings = mesh_lib.state_shardings(frozen, self.mesh, self.config.fsdp_regex)
    self.frozen = jax.device_put(frozen, self.frozen_shardings)
    self.train_step = jit_train_step(step_fn, self.mesh, self.state_shardings,
                                     self.frozen_shardings)

  def meta(self) -> dict:
    return {"model": self.task.model_meta, "objective": self.config.objective,
            "config": json.loads(self.config.to_json_best_effort())}

  def initial_state(self, manager):
    """Latest readable checkpoint in the workdir (damaged newer ones are moved aside with a
    warning), else config.init's params, else a fresh init."""
    found = ckpt_lib.restore_latest(manager, self._as_dict(self.abstract_state))
    if found is not None:
      step, restored = found
      logging.info("resuming from %s/%d", ckpt_lib.checkpoint_dir(self.workdir), step)
      return TrainState(**restored)
    state = jax.jit(self._init_state, out_shardings=self.state_shardings)(
        jax.random.key(self.config.seed))
    if self.config.init:
      state = self._load_init(state)
    return state

  def _load_init(self, state):
    loaded, meta = ckpt_lib.load_params(self.config.init)
    target = jax.tree.map(np.asarray, jax.device_get(state.params))
    loaded = self.task.adapt_pretrained(target, loaded, meta)
    want = jax.tree.map(lambda x: (x.shape, str(x.dtype)), target)
    got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), loaded)
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
      raise ValueError(
          f"config.init={self.config.init} does not fit model {self.task.model_meta['name']}: "
          f"the checkpoint was written for {meta.get('model')}; use a checkpoint of the same "
          "architecture (same image/patch size) or convert it with scripts/import_torch.py")
    params = jax.device_put(loaded, self.state_shardings.params)
    return state.replace(params=params)

  @staticmethod
  def _as_dict(state):
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "extra": state.extra, "guard": state.guard}

  def _save(self, manager, step, state):
    tree = self._as_dict(state)
    meta = dict(self.meta(), fingerprint=ckpt_lib.fingerprint_json(tree))
    ckpt_lib.save(manager, step, tree, meta, force=True)

  def _train_iter(self, start_step: int):
    cfg = self.config
    own = self.task.train_iterator(self.mesh, start_step)
    if own is not None:
      return own
    return data_lib.build_train_iterator(
        cfg.data, image_size=cfg.model.image_size, global_batch_size=cfg.batch_size,
        mesh=self.mesh, seed=cfg.seed, start_step=start_step)

  def run(self, stop_at: int | None = None) -> dict:
    """Trains until total_steps (or stops, checkpointed, after step `stop_at`, as a preemption
    would); returns the last logged metrics."""
    cfg = self.config
    manager = ckpt_lib.make_manager(self.workdir, save_interval_steps=cfg.checkpoint_every,
                                    max_to_keep=cfg.keep_checkpoints)
    state = self.initial_state(manager)
    start = int(jax.device_get(state.step))
    self.lr_scale = float(jax.device_get(state.guard.get("lr_scale", 1.0)))
    if jax.process_index() == 0:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(cfg.to_json_best_effort(indent=2))
    logger = MetricsLogger(self.workdir, self.total_steps, cfg.batch_size)
    logging.info("training %s: steps %d -> %d, global batch %d on %d devices, %d micro-batch(es) "
                 "of %d, warm-up %d steps, peak lr %.3g", self.task.model_meta["name"], start,
                 self.total_steps, cfg.batch_size, self.mesh.size, self.accum,
                 cfg.batch_size // self.accum, self.warmup_steps,
                 optim.scaled_lr(cfg.optim, cfg.batch_size))
    if self.lr_scale != 1.0:
      logging.warning("lr is scaled by %g (earlier non-finite rollbacks)", self.lr_scale)
    vis_batch = self._vis_batch()
    stop = _StopFlag(multi_process=jax.process_count() > 1)
    try:
      last, step, state = self._loop(state, start, manager, logger, stop, vis_batch, stop_at)
    finally:
      stop.restore()
      manager.wait_until_finished()
      manager.close()
    if step == self.total_steps:
      last.update(self._evaluate(state, vis_batch, step, logger))
    logger.close()
    self.state = state
    return last

  def _loop(self, state, start, manager, logger, stop, vis_batch, stop_at):
    cfg = self.config
    last = {}
    logger.start(start)
    t_compile = time.perf_counter()
    train_iter = self._train_iter(start)
    multi_process = jax.process_count() > 1
    self._skipped_seen = int(jax.device_get(state.guard.get("nonfinite_count", 0)))
    self._last_failure, self._repeats = -1, 0
    step = start
    while step < self.total_steps:
      step += 1
      if step == stop_at:
        stop.requested = True
      # SIGTERM on any host reaches every host through JAX's preemption service, which picks
      # one step for all of them (hosts must agree: the checkpoint save is collective).
      if multi_process and multihost_utils.reached_preemption_sync_point(step):
        stop.requested = True
      batch = next(train_iter)
      state, metrics = self.train_step(state, batch, self.frozen)
      if step == start + 1:
        jax.block_until_ready(metrics)
        logging.info("first step (compile + run) took %.1f s", time.perf_counter() - t_compile)
        logger.start(step)
      # 'skip' needs no host sync (the step already dropped the update; the count is logged);
      # the other policies read one scalar per step so that no later step or save happens.
      if self.nonfinite_policy != "skip" and jax.device_get(metrics["nonfinite"]):
        state = self._on_nonfinite(state, step, manager)
        step = int(jax.device_get(state.step))
        train_iter = self._train_iter(step)
        logger.start(step)
        continue
      if (step % cfg.log_every == 0 or step in (start + 1, self.total_steps)
          or stop.requested):
        scalars = dict(jax.device_get(metrics), lr=self.schedule(step - 1) * self.lr_scale)
        last = logger.write(step, scalars)
        self._report_skipped(step, last)
      if step % cfg.checkpoint_every == 0 or step == self.total_steps or stop.requested:
        self._save(manager, step, state)
      if cfg.eval_every and step % cfg.eval_every == 0 and step != self.total_steps:
        self._evaluate(state, vis_batch, step, logger)
      if stop.requested:
        logging.warning("stop requested by signal: checkpoint saved at step %d; rerun the same "
                        "command to resume", step)
        break
    return last, step, state

  def _report_skipped(self, step, scalars):
    total = int(scalars.get("nonfinite_total", 0))
    if total > self._skipped_seen:
      logging.warning("step %d: %d update(s) with a non-finite loss or gradient skipped (%d in "
                      "this run so far; config.nonfinite_policy='skip')", step,
                      total - self._skipped_seen, total)
      self._skipped_seen = total

  def _on_nonfinite(self, state, step, manager):
    """'stop': a clear error, no checkpoint of this step. 'rollback': the last good checkpoint
    (or the initial state) with the lr scaled by config.nonfinite_lr_factor, saved with it."""
    manager.wait_until_finished()
    latest = manager.latest_step()
    ckpt_dir = ckpt_lib.checkpoint_dir(self.workdir)
    where = ("no checkpoint was written yet" if latest is None else
             f"the last good checkpoint is step {latest} in {ckpt_dir}")
    if self.nonfinite_policy == "stop":
      raise FloatingPointError(
          f"non-finite loss or gradients at step {step} (config.nonfinite_policy='stop'); the "
          f"update was not applied and nothing after step {latest or 0} was saved: {where}. "
          "Lower config.optim.base_lr, set config.optim.grad_clip, or set "
          "config.nonfinite_policy to 'skip' or 'rollback'.")
    self._repeats = self._repeats + 1 if step <= self._last_failure else 1
    self._last_failure = max(step, self._last_failure)
    if self._repeats > MAX_ROLLBACKS_WITHOUT_PROGRESS:
      raise FloatingPointError(
          f"non-finite loss or gradients at step {step} again after "
          f"{MAX_ROLLBACKS_WITHOUT_PROGRESS} rollbacks (lr scale now {self.lr_scale:g}): likely a "
          f"bad batch or a bug, not the lr; {where}. Try config.nonfinite_policy='skip'.")
    count = int(jax.device_get(state.guard["nonfinite_count"]))
    self._skipped_seen = count  # reported here, not as a 'skip'
    del state
    self.lr_scale *= self.config.nonfinite_lr_factor
    restored = self.initial_state(manager)
    guard = jax.tree.map(
        lambda v, sh: jax.make_array_from_callback((), sh, lambda _: v),
        {"nonfinite_count": np.int32(count), "lr_scale": np.float32(self.lr_scale)},
        self.state_shardings.guard)
    state = restored.replace(guard=guard)
    logging.warning("non-finite loss or gradients at step %d: rolled back to step %d (%s) with "
                    "the lr scaled by %g (now %g x the schedule)", step,
                    int(jax.device_get(state.step)), where, self.config.nonfinite_lr_factor,
                    self.lr_scale)
    return state

  def _vis_batch(self):
    n = self.config.num_vis_images
    if not n:
      return None
    own = self.task.vis_batch(self.mesh)
    if own is not None:
      return own
    # Each process gets >= n rows of its own, so no process needs another's data.
    it = data_lib.build_eval_iterator(
        self.config.data, image_size=self.config.model.image_size,
        global_batch_size=round_up(n * jax.process_count(), self.mesh.size), mesh=self.mesh)
    batch = next(iter(it))
    return {"image": local_rows(batch["image"])[:n]}

  def _evaluate(self, state, vis_batch, step, logger) -> dict:
    """The task's evaluation (e.g. k-NN accuracy, top-1) and figures; returns its scalars."""
    scalars = self.task.evaluate(self, state, step) or {}
    if scalars:
      logger.write(step, scalars, progress=False)
      logging.info("eval at step %d: %s", step, {k: round(float(v), 5) for k, v in scalars.items()})
    self._visualize(state, vis_batch, step)
    return scalars

  def _visualize(self, state, vis_batch, step):
    if vis_batch is None:
      return
    params = state.params
    if jax.process_count() > 1 and not all(x.is_fully_replicated for x in jax.tree.leaves(params)):
      params = multihost_utils.process_allgather(params, tiled=True)  # collective: all hosts
    if jax.process_index() != 0:
      return
    params = jax.device_get(params)
    path = self.task.visualize(params, state.extra, vis_batch,
                               os.path.join(self.workdir, f"reconstruction_step{step:07d}.png"))
    if path:
      import shutil
      shutil.copyfile(path, os.path.join(self.workdir, "reconstruction.png"))
      logging.info("wrote %s", path)


def round_up(n, k):
  return (n + k - 1) // k * k


def local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global order (no cross-host copy)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  shards = {s.index[0].start or 0: s for s in x.addressable_shards}
  return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


class _StopFlag:
  """SIGTERM/SIGINT set a flag so the loop finishes the step, checkpoints and exits cleanly.

  A second signal while finishing aborts at once: the previous handler is put back and the
  signal re-raised (SIGINT -> KeyboardInterrupt, SIGTERM -> killed), so only the checkpoint
  being written is lost (orbax's tmp folder, ignored on restart). With several processes
  SIGTERM is left to JAX's preemption service (all hosts must stop after the same step, see
  `_loop`) and SIGINT keeps its default (abort): one host cannot stop alone.
  """

  def __init__(self, multi_process: bool = False):
    self.requested = False
    self._old = {}
    for sig in (() if multi_process else (signal.SIGTERM, signal.SIGINT)):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. some test runners)
        pass

  def _handle(self, signum, frame):
    if self.requested:
      logging.warning("second signal %d: aborting now; the last finished checkpoint is kept",
                      signum)
      self.restore()
      signal.raise_signal(signum)
      return
    logging.warning("received signal %d: finishing the step and checkpointing (send it again "
                    "to abort at once)", signum)
    self.requested = True

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  return Trainer(config, workdir, devices).run()
