"""The one training loop; every objective (MAE, MoCo-v3, D-MAE, fine-tuning, segmentation)
plugs in as an `Objective` (tasks/), every metric as an evaluator (evaluate/, config.evals).

State is created directly in its sharding, the step is jitted with in/out shardings and donation
over the mesh (train/program.py), rng is folded with the step, checkpoints are written by orbax
(resume is automatic), metrics go to TensorBoard + metrics.jsonl, figures to PNG and TensorBoard
images, the best evaluation's params to <workdir>/best (orbax's best_fn), and the final
evaluation to <workdir>/results.csv. The loop never looks inside an objective beyond its
contract, and no objective sees the loop.
"""

import collections
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
from maelite_jax.models.meta import CheckpointMeta, vit_name
from maelite_jax.train import checkpoint as ckpt_lib
from maelite_jax.train import lock as lock_lib
from maelite_jax.train import mesh as mesh_lib
from maelite_jax.train import optim
from maelite_jax.train import pretrained
from maelite_jax.train import results as results_lib
from maelite_jax.train.metrics import MetricsLogger
from maelite_jax.train.program import StepProgram
from maelite_jax.train.schedule import schedule_lengths
from maelite_jax.train.step import TrainState
from maelite_jax.train.validate import check_checkpoint_space, validate_config
from maelite_jax.utils.errors import (ConfigError, DiskFullError, NonFiniteError, UserError,
                                      disk_full_message, is_disk_full)

# Rollbacks that end at or before the step that caused the previous one (no progress) before the
# run stops: a NaN that survives repeated lr cuts is a bad batch or a bug, not an lr problem.
MAX_ROLLBACKS_WITHOUT_PROGRESS = 3


class Trainer:
  """Holds everything built from a config; `run()` trains to total_steps, resuming from the
  workdir's latest checkpoint when there is one.

  build_objective(config) -> the Objective to train (e.g. tasks.registry.build), called once
  the config is validated; make_evaluators(mesh, objective) -> an EvalSuite (evaluate.base) or
  None: the run's evaluators (maelite_jax/run.py builds both from the config).
  """

  def __init__(self, config, workdir: str, build_objective, make_evaluators=None, devices=None):
    validate_config(config, num_devices=len(devices or jax.devices()), workdir=workdir)
    self.config = config
    self.workdir = workdir
    self.objective = objective = build_objective(config)
    os.makedirs(workdir, exist_ok=True)
    self.mesh = mesh_lib.make_mesh(devices)
    self.total_steps, self.warmup_steps = schedule_lengths(config)
    if self.total_steps < 1:  # validate_config saw total_epochs > 0: too few for one step
      per_epoch = data_lib.steps_per_epoch(config.data, config.batch_size)
      raise ConfigError(
          f"config.total_epochs: {config.total_epochs:g} epoch(s) of {per_epoch} step(s) (a "
          f"batch of {config.batch_size}) is {self.total_steps} training steps. Use more epochs "
          "or give the run length in steps (--config.total_steps=N).")
    self.program = StepProgram(config, objective, self.mesh, total_steps=self.total_steps,
                               warmup_steps=self.warmup_steps)
    self.schedule = self.program.schedule
    self.evals = make_evaluators(self.mesh, objective) if make_evaluators else None
    self.nonfinite_policy = config.nonfinite_policy
    self.lr_scale = 1.0  # the rollback policy's lr cut; the saved state holds it (guard)
    self.best_metric = config.best_metric
    if self.warmup_steps > self.total_steps / 2:
      logging.warning("the warm-up (%d steps) covers more than half of this %d-step run: the lr "
                      "peaks late and barely decays; give the warm-up in epochs (it keeps its "
                      "fraction of a shortened run) or lower config.optim.warmup_steps",
                      self.warmup_steps, self.total_steps)
    check_checkpoint_space(workdir, self.program.state_bytes())

  def meta(self) -> dict:
    return CheckpointMeta(model=self.objective.spec, objective=self.objective.name,
                          config=json.loads(self.config.to_json_best_effort()),
                          head=self.objective.head).to_dict()

  # ---------------------------------------------------------------- state

  def initial_state(self, manager):
    """Latest readable checkpoint in the workdir (damaged newer ones are moved aside with a
    warning), else config.init's params, else a fresh init."""
    found = ckpt_lib.restore_latest(manager, self._as_dict(self.program.abstract_state))
    if found is not None:
      step, restored = found
      logging.info("resuming from %s/%d", ckpt_lib.checkpoint_dir(self.workdir), step)
      return TrainState(**restored)
    state = self.program.init_state()
    if self.config.init:
      target = jax.tree.map(np.asarray, jax.device_get(state.params))
      params, _ = pretrained.load_into(self.config.init, target, self.objective)
      params = pretrained.reset_params(params, target, self.config.init_reset)
      state = state.replace(params=jax.device_put(params, self.program.state_shardings.params))
    return state

  @staticmethod
  def _as_dict(state):
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "extra": state.extra, "guard": state.guard}

  def _save(self, manager, step, state):
    ckpt_lib.save(manager, step, self._as_dict(state), self.meta(), force=True)

  def _train_iter(self, start_step: int):
    cfg = self.config
    return data_lib.build_train_iterator(
        cfg.data, image_size=cfg.model.image_size, global_batch_size=cfg.batch_size,
        mesh=self.mesh, seed=cfg.seed, start_step=start_step)

  # ---------------------------------------------------------------- the loop

  def run(self, stop_at: int | None = None) -> dict:
    """Trains until total_steps (or stops, checkpointed, after step `stop_at`, as a preemption
    would); returns the last logged metrics and the final evaluation's scalars.

    The workdir is locked for the whole run (train/lock.py): a second run on it stops with a
    paragraph naming this one. A full disk becomes one paragraph naming the device, its free
    space and the last complete checkpoint."""
    lock = lock_lib.lock_workdir(self.workdir)
    try:
      return self._run(stop_at)
    except Exception as e:
      if is_disk_full(e) and not isinstance(e, UserError):
        last = ckpt_lib.last_complete_checkpoint(self.workdir)
        raise DiskFullError(disk_full_message(self.workdir, last)) from e
      raise
    finally:
      lock.release()

  def _run(self, stop_at):
    cfg = self.config
    manager = ckpt_lib.make_manager(self.workdir, save_interval_steps=cfg.checkpoint_every,
                                    max_to_keep=cfg.keep_checkpoints)
    self.best_manager = (ckpt_lib.make_best_manager(self.workdir, self.best_metric,
                                                    cfg.best_mode)
                         if self.best_metric else None)
    state = self.initial_state(manager)
    start = int(jax.device_get(state.step))
    if start >= self.total_steps:
      manager.close()
      self.step, self.preempted, self.state = start, False, state
      if start > self.total_steps:
        raise ConfigError(
            f"config.total_steps: the workdir {self.workdir} holds a checkpoint of step {start}, "
            f"past this run's {self.total_steps} steps. Use a new --workdir, or a total_steps "
            f">= {start} to continue training.")
      logging.warning("this run already finished at step %d (its total_steps); nothing to do. "
                      "Use a new --workdir to train again, or raise --config.total_steps to "
                      "continue.", start)
      return {}
    self.lr_scale = float(jax.device_get(state.guard.get("lr_scale", 1.0)))
    if jax.process_index() == 0:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(cfg.to_json_best_effort(indent=2))
    logger = MetricsLogger(self.workdir, self.total_steps, cfg.batch_size, cfg.log_every)
    logging.info("training %s (%s, compute dtype %s): steps %d -> %d, global batch %d on %d "
                 "devices, %d micro-batch(es) of %d, warm-up %d steps, peak lr %.3g, layer "
                 "decay %g", self.objective.spec.name, self.objective.name,
                 jnp.dtype(self.objective.model.dtype).name, start, self.total_steps, cfg.batch_size,
                 self.mesh.size, self.program.accum, cfg.batch_size // self.program.accum,
                 self.warmup_steps, optim.scaled_lr(cfg.optim, cfg.batch_size),
                 self.program.layer_decay)
    if self.lr_scale != 1.0:
      logging.warning("lr is scaled by %g (earlier non-finite rollbacks)", self.lr_scale)
    stop = _StopFlag(multi_process=jax.process_count() > 1)
    try:
      last, step, state = self._loop(state, start, manager, logger, stop, stop_at)
    finally:
      stop.restore()
      manager.wait_until_finished()
      manager.close()
    self.step = step
    self.preempted = step < self.total_steps
    if step == self.total_steps:
      with logger.timed("eval"):
        last.update(self._evaluate(state, step, logger, final=True))
    logger.close()
    if self.best_manager is not None:
      self.best_manager.close()
    self.state = state
    return last

  def _loop(self, state, start, manager, logger, stop, stop_at):
    cfg = self.config
    last = {}
    logger.start(start)
    t_compile = time.perf_counter()
    train_iter = self._train_iter(start)
    multi_process = jax.process_count() > 1
    self._skipped_seen = int(jax.device_get(state.guard.get("nonfinite_count", 0)))
    self._last_failure, self._repeats = -1, 0
    # Per-step values read back at log and checkpoint steps, not every step (no host sync):
    # 'skip''s non-finite flags (escalation) and the objective's checked metrics (labels).
    self._pending = []
    self._streak = 0  # non-finite steps in a row under 'skip'
    self._window = collections.deque(maxlen=min(cfg.nonfinite_window, self.total_steps))
    checked = tuple(self._checked_metrics) + (
        ("nonfinite",) if self.nonfinite_policy == "skip" else ())
    train_step, frozen = self.program.train_step, self.program.frozen
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
      state, metrics = train_step(state, batch, frozen)
      if checked:
        self._pending.append((step, {k: metrics[k] for k in checked}))
      if step == start + 1:
        jax.block_until_ready(metrics)
        logging.info("first step (compile + run) took %.1f s", time.perf_counter() - t_compile)
        logger.reset_timer(step)
      # 'skip' needs no host sync (the step already dropped the update; the count is logged);
      # the other policies read one scalar per step so that no later step or save happens.
      if self.nonfinite_policy != "skip" and jax.device_get(metrics["nonfinite"]):
        state = self._on_nonfinite(state, step, manager)
        self._pending = []  # values of steps that are being redone
        step = int(jax.device_get(state.step))
        train_iter = self._train_iter(step)
        logger.start(step)
        continue
      logger.tick(step)
      final = step == self.total_steps
      eval_now = bool(self.evals) and not stop.requested and (final or any(
          ev.due(step, False) for ev in self.evals.evaluators))
      save_now = step % cfg.checkpoint_every == 0 or final or stop.requested
      log_now = step % cfg.log_every == 0 or step == start + 1 or final or stop.requested
      if log_now or save_now:
        self._read_checks(step, manager)
      if log_now:
        scalars = {k: v for k, v in jax.device_get(metrics).items()
                   if k not in self._checked_metrics}
        scalars["lr"] = self.schedule(step - 1) * self.lr_scale
        last = logger.write(step, scalars)
        self._report_skipped(step, last)
        if not eval_now:  # else the step's evaluations join its metrics.jsonl row
          logger.flush()
      if save_now:
        self._save(manager, step, state)
      if eval_now and not final:  # the final evaluation runs after the loop
        with logger.timed("eval"):
          self._evaluate(state, step, logger, final=False)
        logger.flush()
      if stop.requested:
        logging.warning("stop requested by signal: checkpoint saved at step %d; rerun the same "
                        "command to resume", step)
        break
    return last, step, state

  # ---------------------------------------------------------------- evaluation

  def _evaluate(self, state, step, logger, final: bool) -> dict:
    """The due evaluators on the objective's inference params: scalars to the writers, images
    to TensorBoard, details to <name>_eval.jsonl, the best checkpoint, and (final) results.csv
    rows and one summary line per evaluator. Returns the scalars."""
    if not self.evals:
      return {}
    variants = self.objective.inference_params(state.params, state.extra)
    results = self.evals.run(variants, step, final)
    scalars = {}
    for name, res in results.items():
      scalars.update(res.scalars)
      logger.write_images(step, res.images)
      if res.details:
        self._write_details(name, step, res)
    if self.best_metric and self.best_metric in scalars:
      scalars[f"best_{self.best_metric}"] = self._update_best(step, variants[""], scalars)
    if scalars:
      logger.write(step, scalars, progress=False)
    if final:
      self._report(results, scalars)
    return scalars

  def _write_details(self, name, step, res):
    if jax.process_index() != 0:
      return
    row = dict(step=int(step), **{k: float(v) for k, v in res.scalars.items()}, **res.details)
    with open(os.path.join(self.workdir, f"{name}_eval.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")

  def _update_best(self, step, params, scalars) -> float:
    """orbax keeps <workdir>/best at the best `best_metric` so far; returns that value."""
    metrics = {k: float(v) for k, v in scalars.items() if np.ndim(v) == 0}
    ckpt_lib.save(self.best_manager, step, {"params": params}, self.meta(), force=True,
                  metrics=metrics)
    self.best_manager.wait_until_finished()
    best = ckpt_lib.best_record(self.workdir) or metrics
    return float(best[self.best_metric])

  def pretrain_label(self) -> str:
    """Where the evaluated weights come from, for results.csv: '<objective>:<path>' of the
    pre-trained checkpoint a fine-tune started from ('scratch' without one), or of this run
    itself for a pre-training run."""
    if self.objective.encoder_key == "encoder":  # a pre-training objective: this run
      return f"{self.objective.name}:{self.workdir}"
    if not self.config.init:
      return "scratch"
    objective = CheckpointMeta.from_dict(ckpt_lib.load_meta(self.config.init)).objective
    return f"{objective or 'imported'}:{self.config.init}"

  def _report(self, results, scalars):
    """results.csv rows of the final evaluation (and of the best checkpoint) + summary lines."""
    rows, model = [], vit_name(self.objective.spec.name)
    pretrain = self.pretrain_label()
    best = ckpt_lib.best_record(self.workdir) if self.best_metric else None
    for ev in self.evals.evaluators:
      if ev.name not in results:
        continue
      for label, metric, value in ev.rows(results[ev.name].scalars):
        rows.append(dict(model=model, pretrain=label or pretrain, protocol=ev.protocol,
                         dataset=ev.dataset, metric=metric, value=value,
                         step=self.total_steps))
      if best and self.best_metric in ev.reported:
        for key, metric in ev.reported.items():
          if key in best:
            rows.append(dict(model=model, pretrain=pretrain, protocol=f"{ev.protocol}-best",
                             dataset=ev.dataset, metric=metric, value=best[key],
                             step=best["step"]))
      line = ev.summary(results[ev.name].scalars)
      if line:
        logging.info("%s (step %d): %s", ev.name, self.total_steps, line)
    if rows:
      results_lib.append_rows(self.workdir, rows)

  # ---------------------------------------------------------------- non-finite steps

  def _report_skipped(self, step, scalars):
    total = int(scalars.get("nonfinite_total", 0))
    if total > self._skipped_seen:
      logging.warning("step %d: %d update(s) with a non-finite loss or gradient skipped (%d in "
                      "this run so far; config.nonfinite_policy='skip')", step,
                      total - self._skipped_seen, total)
      self._skipped_seen = total

  def _read_checks(self, step, manager):
    """Reads the pending per-step values back (one transfer) and applies the objective's
    checks and 'skip''s escalation, step by step."""
    if not self._pending:
      return
    steps = [s for s, _ in self._pending]
    values = jax.device_get([v for _, v in self._pending])
    self._pending = []
    for s, v in zip(steps, values):
      if self._checked_metrics:
        self.objective.check_step(s, {k: v[k] for k in self._checked_metrics})
      if "nonfinite" not in v:
        continue
      bad = bool(v["nonfinite"])
      self._streak = self._streak + 1 if bad else 0
      self._window.append(bad)
      cfg = self.config
      limit = cfg.nonfinite_max_fraction * self._window.maxlen
      if self._streak > cfg.nonfinite_max_consecutive:
        raise self._escalation(s, manager, f"{self._streak} non-finite steps in a row (steps "
                               f"{s - self._streak + 1}-{s}; more than config."
                               f"nonfinite_max_consecutive={cfg.nonfinite_max_consecutive})")
      if sum(self._window) > limit:
        raise self._escalation(s, manager, f"{sum(self._window)} non-finite steps among the "
                               f"last {self._window.maxlen} (more than config."
                               f"nonfinite_max_fraction={cfg.nonfinite_max_fraction:g} of them)")

  @property
  def _checked_metrics(self) -> tuple:
    return tuple(getattr(self.objective, "checked_metrics", ()))

  def _escalation(self, step, manager, what: str) -> NonFiniteError:
    """'skip' gives up: the run is not learning. Names the step, the count and the causes."""
    cfg = self.config
    manager.wait_until_finished()
    latest = manager.latest_step()
    where = ("no checkpoint was written yet" if latest is None else
             f"the last checkpoint is step {latest} in {ckpt_lib.checkpoint_dir(self.workdir)}, "
             "and a rerun resumes from it")
    peak = optim.scaled_lr(cfg.optim, cfg.batch_size) * self.lr_scale
    mask = (f", the mask ratio (config.model.mask_ratio={cfg.model.mask_ratio:g}: at least one "
            "patch must be masked and one kept)" if "mask_ratio" in cfg.model else "")
    return NonFiniteError(
        f"step {step}: {what} with config.nonfinite_policy='skip'; their updates were dropped, "
        f"so the run is not learning. Likely causes: the learning rate (config.optim.base_lr="
        f"{cfg.optim.base_lr:g}, peak lr {peak:.3g}; lower it or set config.optim.grad_clip)"
        f"{mask}, or the data (NaN/Inf or constant images, labels). Stopped; {where}.")

  def _on_nonfinite(self, state, step, manager):
    """'stop': a clear error, no checkpoint of this step. 'rollback': the last good checkpoint
    (or the initial state) with the lr scaled by config.nonfinite_lr_factor, saved with it."""
    manager.wait_until_finished()
    latest = manager.latest_step()
    ckpt_dir = ckpt_lib.checkpoint_dir(self.workdir)
    where = ("no checkpoint was written yet" if latest is None else
             f"the last good checkpoint is step {latest} in {ckpt_dir}")
    if self.nonfinite_policy == "stop":
      raise NonFiniteError(
          f"non-finite loss or gradients at step {step} (config.nonfinite_policy='stop'); the "
          f"update was not applied and nothing after step {latest or 0} was saved: {where}. "
          "Lower config.optim.base_lr, set config.optim.grad_clip, or set "
          "config.nonfinite_policy to 'skip' or 'rollback'.")
    self._repeats = self._repeats + 1 if step <= self._last_failure else 1
    self._last_failure = max(step, self._last_failure)
    if self._repeats > MAX_ROLLBACKS_WITHOUT_PROGRESS:
      raise NonFiniteError(
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
        self.program.state_shardings.guard)
    state = restored.replace(guard=guard)
    logging.warning("non-finite loss or gradients at step %d: rolled back to step %d (%s) with "
                    "the lr scaled by %g (now %g x the schedule)", step,
                    int(jax.device_get(state.step)), where, self.config.nonfinite_lr_factor,
                    self.lr_scale)
    return state


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
