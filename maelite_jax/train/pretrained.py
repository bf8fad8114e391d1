"""Pre-trained weights into a new run (config.init): one mapping for every objective.

Any checkpoint of this project (a pre-training, fine-tuning or segmentation workdir, or PyTorch
weights converted by scripts/import_torch.py) can start any objective:
  - the same objective (continuing a fine-tune, a segmentation run): the whole tree, with a
    learned position table resampled to the new grid;
  - otherwise the source's plain ViT (under 'encoder', 'backbone' or the whole tree) goes where
    the objective keeps its encoder (`objective.encoder_key`): every encoder weight must be
    there, except the objective's fresh keys (a classifier's head and fc_norm), a final `norm`
    the source lacks (a fine-tuned avg-pool model) and `pos_embed` (taken and resampled when
    the source has a learned one, else the target keeps its sin-cos initialisation);
  - the other top-level parts of the target (MAE's decoder, D-MAE's adapters, MoCo-v3's heads,
    the segmentation neck) are taken from the source when it has them with the same shapes,
    else they keep their fresh initialisation; the log says which.
Fixed sin-cos tables are no params: a source whose table has another layout (MoCo-v3's, see
models/posemb.py) can start a model with a trainable table (initialised from the source's
layout) but not one with a fixed table of the other layout (it would see transposed positions).
The result must have exactly the target's structure and shapes, else a ConfigError says which
architecture the checkpoint holds.
"""

import re

import jax
import numpy as np
from absl import logging

from maelite_jax.models.meta import CheckpointMeta, encoder_params
from maelite_jax.models.posemb import resize_pos_table, sincos_table
from maelite_jax.train import checkpoint as ckpt_lib
from maelite_jax.train.mesh import path_str
from maelite_jax.utils.errors import ConfigError


def _shapes(tree):
  if isinstance(tree, dict):
    return {k: _shapes(v) for k, v in tree.items()}
  return (tuple(np.shape(tree)), str(np.asarray(tree).dtype))


def _pos_fit(table, like):
  return np.asarray(resize_pos_table(np.asarray(table, np.float32), like.shape[1]), like.dtype)


def map_encoder(target: dict, source: dict, fresh_keys=(), source_layout: str = "mae") -> dict:
  """A pre-trained ViT tree `source` mapped onto the ViT tree `target` (see module doc)."""
  out, missing = {}, []
  for key, value in target.items():
    if key in fresh_keys:
      out[key] = value
    elif key == "pos_embed" and key in source:
      out[key] = _pos_fit(source[key], value)
    elif key == "pos_embed":  # the target starts from MAE's table; the source's may differ
      out[key] = value if source_layout == "mae" else sincos_table(
          value.shape[-1], value.shape[1], source_layout).astype(value.dtype)
    elif key in source:
      out[key] = source[key]
    elif key == "norm":
      out[key] = value
    else:
      missing.append(key)
  if missing:
    raise ConfigError(f"config.init: the checkpoint's encoder has no {missing} (its keys: "
                      f"{sorted(source)}). Use a checkpoint of a ViT with the same blocks.")
  unused = sorted(set(source) - set(out))
  if unused:
    logging.info("config.init: not used by this model: %s", unused)
  return out


def _check_layouts(target_encoder: dict, meta: CheckpointMeta, objective) -> str:
  """The source's fixed-table layout; a ConfigError if a fixed target table cannot take it."""
  source = meta.model.kwargs.get("posemb", "mae")
  own = objective.spec.kwargs.get("posemb", "mae") if objective.spec else "mae"
  if source != own and "pos_embed" not in target_encoder:
    raise ConfigError(
        f"config.init: the checkpoint's encoder uses the {source!r} position-table layout and "
        f"this model's fixed table is {own!r}: it would see transposed positions. Fine-tune it "
        "(a trainable table takes either layout) or pre-train from a checkpoint of MAE's "
        "layout.")
  return source


def map_pretrained(target: dict, loaded: dict, meta: CheckpointMeta, objective) -> dict:
  """Loaded params (numpy) in the structure of `target` (numpy) for `objective`."""
  key = objective.encoder_key
  layout = _check_layouts(target[key] if key else target, meta, objective)
  if meta.objective == objective.name and set(loaded) == set(target):
    out = dict(loaded)
    enc = out.get(key) if key else out
    tgt = target[key] if key else target
    if "pos_embed" in enc and enc["pos_embed"].shape != tgt["pos_embed"].shape:
      enc = dict(enc, pos_embed=_pos_fit(enc["pos_embed"], tgt["pos_embed"]))
      out = dict(out, **{key: enc}) if key else enc
    return out
  source = encoder_params(loaded)
  if not key:
    return map_encoder(target, source, objective.fresh_keys, layout)
  out, fresh = {}, []
  for name, value in target.items():
    if name == key:
      out[name] = map_encoder(value, source, objective.fresh_keys, layout)
    elif name in loaded and _shapes(loaded[name]) == _shapes(value):
      out[name] = loaded[name]
    else:
      out[name], fresh = value, fresh + [name]
  if fresh:
    logging.info("config.init: %s not in the checkpoint (or of other shapes): fresh "
                 "initialisation", fresh)
  return out


def load_into(path: str, target: dict, objective) -> tuple[dict, CheckpointMeta]:
  """(params for `target`, the checkpoint's meta) from checkpoint `path` (verified on load)."""
  loaded, meta_dict = ckpt_lib.load_params(path)
  meta = CheckpointMeta.from_dict(meta_dict)
  params = map_pretrained(target, loaded, meta, objective)
  if _shapes(params) != _shapes(target):
    raise ConfigError(
        f"config.init={path} does not fit model {objective.spec.name} "
        f"{dict(sorted(objective.spec.kwargs.items()))}: the checkpoint holds "
        f"{meta.model.name} {dict(sorted(meta.model.kwargs.items()))}. Use a checkpoint of the "
        "same architecture "
        "(same widths, depth, patch size) or convert one with scripts/import_torch.py.")
  return params, meta


def resolve_layer_decay(optim_cfg, init_path: str) -> float:
  """config.optim.layer_decay, or (None) the preset for where the weights come from, from
  config.optim.layer_decay_presets: the objective of config.init's checkpoint (MoCo-v3 encoders
  fine-tune with 0.75, MAE's with 0.85), '' for a checkpoint without one (imported weights),
  'scratch' without config.init (an imported MoCo-v3 encoder, recognised by its position
  table's layout, counts as 'mocov3')."""
  if optim_cfg.layer_decay is not None:
    return float(optim_cfg.layer_decay)
  source = "scratch"
  if init_path:
    meta = CheckpointMeta.from_dict(ckpt_lib.load_meta(init_path))
    # imported weights name no objective; a MoCo-v3 position table still says where they are from
    source = meta.objective or ("mocov3" if meta.model.kwargs.get("posemb") == "mocov3" else "")
  presets = dict(optim_cfg.layer_decay_presets)
  value = presets.get(source, presets[""])
  logging.info("layer decay %g (the preset for %s)", value,
               "training from scratch" if source == "scratch" else
               f"a {source} checkpoint" if source else "imported weights")
  return float(value)


def reset_params(params: dict, fresh: dict, regex: str) -> dict:
  """`params` with the leaves whose path matches `regex` taken from `fresh` (config.init_reset:
  e.g. the top blocks re-initialised before fine-tuning, the layer-wise analysis)."""
  if not regex:
    return params
  pattern = re.compile(regex)
  count = [0]

  def pick(path, loaded, new):
    if pattern.search(path_str(path)):
      count[0] += 1
      return new
    return loaded

  out = jax.tree_util.tree_map_with_path(pick, params, fresh)
  if not count[0]:
    raise ConfigError(f"config.init_reset={regex!r} matches no parameter. Fix: use a regex over "
                      "paths like 'blocks_(6|7|8|9|10|11)/' (params are named like timm's ViT).")
  logging.info("config.init_reset: %d arrays keep their fresh initialisation", count[0])
  return out
