"""Optimizer pieces from config: scaled lr, warm-up + cosine (or poly) per step, AdamW / SGD /
LARS, weight-decay mask, clipping, and per-parameter lr factors (layer-wise decay, frozen
parameters)."""

import re

import jax
import jax.numpy as jnp
import optax

from maelite_jax.train.layer_decay import encoder_depth, layer_decay_multipliers
from maelite_jax.train.mesh import path_str

OPTIMIZERS = ("adamw", "sgd", "lars")
SCHEDULES = ("cosine", "poly")


def scaled_lr(optim_cfg, global_batch: int) -> float:
  """MAE's linear scaling rule: lr = base_lr * global_batch / 256."""
  return optim_cfg.base_lr * global_batch / optim_cfg.lr_scale_batch


def lr_schedule(optim_cfg, global_batch: int, total_steps: int, warmup_steps: int):
  """Linear warm-up from warmup_init_lr to the peak, then half-cosine to min_lr, per step.

  optim.schedule='poly' (segmentation, mmseg's policy) decays as (1 - t)^poly_power instead,
  t going 0 -> 1 over the steps after the warm-up.
  """
  peak = scaled_lr(optim_cfg, global_batch)
  warmup_steps = min(warmup_steps, total_steps)
  if optim_cfg.schedule == "poly":
    poly = optax.polynomial_schedule(peak, optim_cfg.min_lr, optim_cfg.poly_power,
                                     max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
      return poly
    warm = optax.linear_schedule(optim_cfg.warmup_init_lr, peak, warmup_steps)
    return optax.join_schedules([warm, poly], [warmup_steps])
  if warmup_steps <= 0:  # optax would add a 0-step linear piece and log about it at every start
    return _cosine(peak, optim_cfg.min_lr, max(total_steps, 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=optim_cfg.warmup_init_lr, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=optim_cfg.min_lr)


def _cosine(peak: float, end: float, decay_steps: int):
  """Half-cosine from `peak` at step 0 to `end` at `decay_steps` (then flat): what optax's
  warmup_cosine_decay_schedule is with warmup_steps=0, without its 0-step warm-up piece."""
  def schedule(count):
    t = jnp.minimum(jnp.asarray(count, jnp.float32), decay_steps) / decay_steps
    return end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * t))
  return schedule


def weight_decay_mask(params, no_decay_regex: str = "", decay_all: bool = False):
  """timm's rule: no decay on 1-D tensors (biases, norms) or paths matching no_decay_regex.

  Tokens such as cls_token / mask_token are 3-D and therefore decayed, as in the reference.
  decay_all=True decays 1-D tensors too (MoCo-v3 passes all parameters to one AdamW group).
  """
  pattern = re.compile(no_decay_regex) if no_decay_regex else None

  def decay(path, leaf):
    if leaf.ndim <= 1 and not decay_all:
      return False
    return not (pattern is not None and pattern.search(path_str(path)))

  return jax.tree_util.tree_map_with_path(decay, params)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
  """Multiplies each update by its factor: lr * m for both the Adam step and decoupled wd,
  which is exactly what a per-param-group `lr_scale` does in timm/MAE (layer-wise lr decay)."""
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

  return optax.GradientTransformation(init_fn, update_fn)


def lr_multipliers(params, *, layer_decay: float = 1.0, frozen_regex: str = ""):
  """Per-parameter lr factors, or None when all are 1: layer-wise decay (depth read from the
  encoder's blocks) times 0 for the parameters matching `frozen_regex` (never moved)."""
  out = None
  if layer_decay < 1.0:
    out = layer_decay_multipliers(params, encoder_depth(params), layer_decay)
  if frozen_regex:
    pattern = re.compile(frozen_regex)
    base = out if out is not None else jax.tree.map(lambda _: 1.0, params)
    out = jax.tree_util.tree_map_with_path(
        lambda p, m: 0.0 if pattern.search(path_str(p)) else m, base)
  return out


def build_optimizer(optim_cfg, schedule, params_for_mask, lr_multipliers=None):
  """AdamW, SGD or LARS with the config's decay mask, optional clipping and lr multipliers."""
  mask = weight_decay_mask(params_for_mask, optim_cfg.no_decay_regex, optim_cfg.decay_all)
  if optim_cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                      weight_decay=optim_cfg.weight_decay, mask=mask)
  elif optim_cfg.name == "sgd":
    opt = optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay, mask),
                      optax.sgd(schedule, momentum=optim_cfg.b1, nesterov=True))
  elif optim_cfg.name == "lars":  # MAE's linear probe: trust ratio 0.001 |w| / |u|, >= 2-D only
    opt = optax.lars(schedule, weight_decay=optim_cfg.weight_decay, weight_decay_mask=mask,
                     trust_coefficient=0.001, trust_ratio_mask=mask, momentum=optim_cfg.b1)
  else:
    raise ValueError(f"config.optim.name={optim_cfg.name!r} is unknown; use one of {OPTIMIZERS}")
  if lr_multipliers is not None:
    opt = optax.chain(opt, scale_by_tree(lr_multipliers))
  if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), opt)
  return opt
