"""Orbax checkpoints: one layout for training runs and imported weights.

Layout: `<workdir>/checkpoints/<step>/{state, meta}`; `state` holds the train state as a dict
({"step", "params", "opt_state", "extra"}; imported weights hold only "params"), `meta` a JSON with
the model name and constructor arguments so that any tool can rebuild the model. Orbax writes
each step to a temporary folder and renames it when complete, so a crash mid-save never leaves a
half-written latest checkpoint (a leftover `<step>.orbax-checkpoint-tmp*` folder is not a step).
Every checkpoint carries a per-array checksum in `meta`, verified on every load: `restore_latest`
(resume) falls back to the previous step when the newest is truncated, missing files or damaged;
`load_params` (init, teacher, evaluation, analysis, export) refuses a damaged one, naming the
step and the array. The best evaluation's params live in `<workdir>/best/checkpoints/<step>`,
kept by orbax's CheckpointManager with `best_fn` (one checkpoint, the best metric so far).
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from maelite_jax.models.meta import CheckpointMeta, encoder_from_meta
from maelite_jax.train.mesh import path_str
from maelite_jax.utils.errors import CheckpointError  # noqa: F401  (re-exported)

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def make_manager(workdir: str, *, save_interval_steps: int = 1, max_to_keep: int | None = 3,
                 async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_interval_steps, max_to_keep=max_to_keep,
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "meta"))


def make_best_manager(workdir: str, metric: str, mode: str) -> ocp.CheckpointManager:
  """<workdir>/best/checkpoints: orbax keeps the one checkpoint whose `metric` is best."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, best_fn=lambda metrics: metrics[metric], best_mode=mode,
      keep_checkpoints_without_metrics=False, enable_async_checkpointing=False, create=True)
  return ocp.CheckpointManager(checkpoint_dir(os.path.join(workdir, "best")), options=options,
                               item_names=("state", "meta"))


def best_record(workdir: str) -> dict | None:
  """{metric: value, ..., 'step': step} of the best checkpoint of a run, or None."""
  best_dir = checkpoint_dir(os.path.join(workdir, "best"))
  steps = ocp.utils.checkpoint_steps(best_dir) if os.path.isdir(best_dir) else []
  if not steps:
    return None
  step = max(steps)
  with open(os.path.join(best_dir, str(step), "metrics", "metrics")) as f:
    return dict(json.load(f), step=step)


def save(manager: ocp.CheckpointManager, step: int, state: dict, meta: dict,
         force: bool = False, metrics: dict | None = None) -> bool:
  """Saves `state` with its checksums in `meta` when the interval says so (or force);
  returns whether a save started."""
  meta = dict(meta, fingerprint=fingerprint_json(state))
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force,
      metrics=metrics)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> dict:
  """Restores a full train state into the shardings given by `abstract_state`."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"]


@jax.jit
def fingerprint(tree) -> dict:
  """One uint32 per leaf: sum of bits[i] * mix(i) modulo 2**32. Integer sums do not depend on
  reduction order, so the value is the same for any sharding and device count; it catches the
  flipped bytes that a readable (not truncated) but damaged checkpoint would silently load."""
  def leaf(x):
    x = jnp.ravel(x)
    if x.dtype == jnp.bool_:
      bits = x.astype(jnp.uint32)
    elif jnp.issubdtype(x.dtype, jnp.number) and x.dtype.itemsize <= 4:
      width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
      bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    else:
      return jnp.uint32(0)
    mix = jax.lax.iota(jnp.uint32, x.size) * jnp.uint32(2654435761) + jnp.uint32(0x9E3779B9)
    return jnp.sum(bits * mix, dtype=jnp.uint32)
  return jax.tree_util.tree_map_with_path(lambda p, x: leaf(x), tree)


def _host_leaf_fingerprint(x) -> np.uint32:
  """fingerprint() of one host array in numpy: uint32 products and sums wrap around exactly as
  XLA's do, so the value is the same."""
  x = np.ravel(np.asarray(x))
  if x.dtype == np.bool_:
    bits = x.astype(np.uint32)
  elif x.dtype.itemsize <= 4 and (np.issubdtype(x.dtype, np.number) or x.dtype.kind == "V"):
    bits = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint32)
  else:
    return np.uint32(0)
  mix = np.arange(x.size, dtype=np.uint32) * np.uint32(2654435761) + np.uint32(0x9E3779B9)
  return np.sum(bits * mix, dtype=np.uint32)


def fingerprint_json(tree) -> dict:
  """{leaf path: checksum} for the checkpoint's meta (JSON). Host (numpy) trees, such as the
  weights load_params reads for export, evaluation, analysis or an init, are summed in numpy:
  jitting fingerprint() over a few hundred leaves costs seconds of compilation per tool run."""
  if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tree)):
    sums = jax.tree.map(_host_leaf_fingerprint, tree)
  else:
    sums = jax.device_get(fingerprint(tree))
  return {path_str(p): int(v) for p, v in jax.tree_util.tree_flatten_with_path(sums)[0]}


def verify(tree: dict, meta: dict, where: str) -> None:
  """Raises CheckpointError when `tree`'s checksums differ from those saved in `meta` (only the
  leaves present in `tree` are compared: a params-only load checks the params)."""
  want = (meta or {}).get("fingerprint")
  if not want:
    return
  got = fingerprint_json(tree)
  bad = sorted(k for k in got if k in want and got[k] != want[k])
  if bad:
    step = os.path.basename(os.path.normpath(where))
    raise CheckpointError(f"checkpoint step {step} ({where}) is damaged: {len(bad)} array(s) "
                          f"differ from the checksums written at save time (first: {bad[0]}). "
                          "Use another step (or the run's previous checkpoint) or restore the "
                          "files from a copy.")


def restore_verified(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> dict:
  """restore() plus a check against the fingerprint saved in meta (when there is one)."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  verify(restored["state"], restored["meta"], os.path.join(str(manager.directory), str(step)))
  return restored["state"]


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   ) -> tuple[int, dict] | None:
  """(step, state) of the newest checkpoint that restores and verifies, or None when there is
  none. Newer unreadable ones are moved aside to `<step>.corrupt` (after a warning naming the
  folder and the error) so that the run can write that step again."""
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    step_dir = os.path.join(str(manager.directory), str(step))
    try:
      state = restore_verified(manager, step, abstract_state)
    except Exception as e:  # noqa: BLE001 - any failure means: not usable, try an older one
      logging.warning("checkpoint %s cannot be restored (%s: %s); falling back to the previous "
                      "one", step_dir, type(e).__name__, _first_line(e))
      failed.append((step_dir, e))
      continue
    if failed:
      _move_aside(manager, [d for d, _ in failed])
    return step, state
  if failed:
    step_dir, e = failed[0]
    raise CheckpointError(
        f"none of the {len(failed)} checkpoint(s) in {manager.directory} can be restored into "
        f"this run's state; the newest, {step_dir}, fails with {type(e).__name__}: "
        f"{_first_line(e)}. If the config changed since they were written (model, optimizer, "
        "image size), use a new --workdir (or start from their weights with --config.init); if "
        "the files are damaged, move the checkpoints folder aside to start afresh.")
  return None


def last_complete_checkpoint(workdir: str) -> str | None:
  """The newest finished step folder of a workdir (for messages), or None."""
  path = checkpoint_dir(workdir)
  steps = ocp.utils.checkpoint_steps(path) if os.path.isdir(path) else []
  return os.path.join(path, str(max(steps))) if steps else None


def _first_line(e: Exception, limit: int = 300) -> str:
  text = str(e).strip().splitlines()
  # tensorstore appends a dump of its spec (a bound method repr): no help to anyone
  return (text[0] if text else "").split(" See full TensorStore details")[0][:limit].rstrip(".")


def _move_aside(manager: ocp.CheckpointManager, step_dirs: list):
  """Renames damaged step folders to `<step>.corrupt[-N]` (process 0; the others wait)."""
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    for step_dir in step_dirs:
      target, n = step_dir + ".corrupt", 1
      while os.path.exists(target):
        n += 1
        target = f"{step_dir}.corrupt-{n}"
      os.rename(step_dir, target)
      logging.warning("moved the unreadable checkpoint %s aside to %s", step_dir, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("maelite_checkpoint_move_aside")
  manager.reload()


def _resolve(path: str) -> tuple[str, int]:
  """Accepts a workdir, its checkpoints/ folder or one step folder; returns (ckpt dir, step)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"checkpoint path {path} does not exist; pass a workdir, its checkpoints/ folder or a "
        "step folder such as WORKDIR/checkpoints/1000")
  if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
    path = os.path.join(path, CHECKPOINT_SUBDIR)
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(path), int(base)
  steps = ocp.utils.checkpoint_steps(path) if os.path.isdir(path) else []
  if not steps:
    raise FileNotFoundError(
        f"no finished checkpoint under {path}; a run writes them to WORKDIR/checkpoints/<step>, "
        "and scripts/import_torch.py converts PyTorch weights into this layout")
  return path, max(steps)


def _read_meta(step_dir: str) -> dict:
  meta_file = os.path.join(step_dir, "meta", "metadata")
  if not os.path.exists(meta_file):
    return {}
  with open(meta_file) as f:
    return json.load(f)


def checkpoint_step(path: str) -> int:
  """The step of the checkpoint a path names (a workdir's latest, or the step folder's)."""
  return _resolve(path)[1]


def load_meta(path: str) -> dict:
  """Only the meta JSON (model name and arguments) of a checkpoint: cheap config checks."""
  ckpt_dir, step = _resolve(path)
  return _read_meta(os.path.join(ckpt_dir, str(step)))


def load_params(path: str) -> tuple[Any, dict]:
  """Loads (params, meta) from any checkpoint of this project, onto the host as numpy arrays."""
  ckpt_dir, step = _resolve(path)
  step_dir = os.path.join(ckpt_dir, str(step))
  meta = _read_meta(step_dir)
  checkpointer = ocp.PyTreeCheckpointer()
  # The item's own metadata, read by its handler: `checkpointer.metadata()` would look for the
  # step-level _CHECKPOINT_METADATA inside state/ (it lives one level up) and warn about it.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree_meta = handler.metadata(epath.Path(step_dir) / "state")
  except Exception as e:  # noqa: BLE001 - unreadable metadata: damaged or not ours
    tree_meta, error = None, e
  else:
    error = None
  finally:
    handler.close()
  if tree_meta is None:
    raise CheckpointError(
        f"checkpoint step {step} ({step_dir}) cannot be read: its array metadata is missing or "
        f"damaged ({_first_line(error) if error else 'no tree metadata'}). Use another step or "
        "restore the files from a copy.")
  if "params" not in tree_meta:
    raise CheckpointError(f"checkpoint {step_dir} has no 'params' entry (found "
                          f"{list(tree_meta)}): it was not written by this project.")
  # Restored as host numpy arrays: no device placement or sharding needed to read weights.
  restore_args = jax.tree.map(_np_restore_arg, tree_meta)
  try:
    restored = checkpointer.restore(
        os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:  # noqa: BLE001 - truncated or missing array files
    raise CheckpointError(
        f"checkpoint step {step} ({step_dir}) cannot be read ({type(e).__name__}: "
        f"{_first_line(e)}): it is truncated or damaged. Use another step or restore the files "
        "from a copy.") from e
  verify({"params": restored["params"]}, meta, step_dir)
  logging.info("loaded params of step %d from %s", step, step_dir)
  return restored["params"], meta


def _np_restore_arg(_):
  return ocp.RestoreArgs(restore_type=np.ndarray)


def save_params(workdir: str, params: Any, meta: dict, step: int = 0) -> str:
  """Writes params (e.g. imported from PyTorch) in the training layout; returns the step dir."""
  step_dir = os.path.join(checkpoint_dir(workdir), str(step))
  if os.path.exists(step_dir):
    raise CheckpointError(f"{step_dir} already exists: writing step {step} there would replace "
                          "a checkpoint. Choose another output folder (or another step), or "
                          "delete that one first.")
  manager = make_manager(workdir, async_save=False, max_to_keep=None)
  save(manager, step, {"params": params}, meta, force=True)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(checkpoint_dir(workdir), str(step))


def load_encoder(path: str, image_size: int | None = None):
  """(head-less ViT encoder, its params (numpy), CheckpointMeta) of any checkpoint: MAE / D-MAE
  / MoCo-v3 pre-training, a fine-tuned classifier (an avg-pool one keeps its fc_norm), a
  segmentation backbone, or imported PyTorch weights. image_size overrides the model's."""
  params, meta = load_params(path)
  meta = CheckpointMeta.from_dict(meta)
  model, params = encoder_from_meta(meta, params, image_size, drop_head=True)
  return model, params, meta
