"""Orbax checkpoints: one layout for training runs and imported weights.

Layout: `<workdir>/checkpoints/<step>/{state, meta}`; `state` holds the train state as a dict
({"step", "params", "opt_state", "extra"}; imported weights hold only "params"), `meta` a JSON with
the model name and constructor arguments so that any tool can rebuild the model. Orbax writes
each step to a temporary folder and renames it when complete, so a crash mid-save never leaves a
half-written latest checkpoint.
"""

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

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


def save(manager: ocp.CheckpointManager, step: int, state: dict, meta: dict,
         force: bool = False) -> bool:
  """Saves when the interval says so (or force); returns whether a save started."""
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> dict:
  """Restores a full train state into the shardings given by `abstract_state`."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"]


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


def load_params(path: str) -> tuple[Any, dict]:
  """Loads (params, meta) from any checkpoint of this project, onto the host as numpy arrays."""
  ckpt_dir, step = _resolve(path)
  step_dir = os.path.join(ckpt_dir, str(step))
  meta_file = os.path.join(step_dir, "meta", "metadata")
  meta = {}
  if os.path.exists(meta_file):
    with open(meta_file) as f:
      meta = json.load(f)
  checkpointer = ocp.PyTreeCheckpointer()
  tree_meta = checkpointer.metadata(os.path.join(step_dir, "state")).item_metadata
  if "params" not in tree_meta:
    raise ValueError(f"checkpoint {step_dir} has no 'params' entry (found {list(tree_meta)})")
  # Restored as host numpy arrays: no device placement or sharding needed to read weights.
  restore_args = jax.tree.map(_np_restore_arg, tree_meta)
  restored = checkpointer.restore(
      os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(restore_args=restore_args))
  logging.info("loaded params of step %d from %s", step, step_dir)
  return restored["params"], meta


def _np_restore_arg(_):
  import numpy as np  # local: only needed here
  return ocp.RestoreArgs(restore_type=np.ndarray)


def save_params(workdir: str, params: Any, meta: dict, step: int = 0) -> str:
  """Writes params (e.g. imported from PyTorch) in the training layout; returns the step dir."""
  manager = make_manager(workdir, async_save=False, max_to_keep=None)
  save(manager, step, {"params": params}, meta, force=True)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(checkpoint_dir(workdir), str(step))
