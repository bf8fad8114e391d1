"""Frozen-encoder features over a whole split: shared by k-NN, linear probing and few-shot.

Features come out in dataset order with the eval iterator's padding removed (exact for any
batch size / device count), gathered as replicated arrays so every process holds them all.
`FeatureCache` keeps them for one evaluation round (in memory: the k-NN and linear evaluators of
one step share one pass) and, offline, on disk as .npz keyed by what produced them.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from maelite_jax import data as data_lib
from maelite_jax.models.mae import encoder_module
from maelite_jax.train import mesh as mesh_lib
from maelite_jax.utils.arrays import round_up
from maelite_jax.utils.logs import Progress

POOLS = ("token", "avg")


def encoder_of(model):
  """The head-less ViT inside a model (an MAE, a ViT classifier, a segmentation model)."""
  vit = getattr(model, "backbone", model)
  return encoder_module(vit, num_classes=0)


def random_params(encoder, seed: int = 0):
  """Freshly initialised params of `encoder` (host numpy): the baseline every protocol is run on."""
  x = jnp.zeros((1, encoder.image_size, encoder.image_size, 3), jnp.float32)
  return jax.device_get(jax.jit(encoder.init)(jax.random.key(seed), x)["params"])


def feature_fn(encoder, pool: str = "token"):
  """fn(params, images) -> (B, D) float32: the cls token after the final norm ('token', MAE's
  linear probe and DINO's k-NN) or the mean of the normed patch tokens ('avg'). An encoder
  built with global_pool='avg' (a fine-tuned model) pools with its own fc_norm."""
  if pool not in POOLS:
    raise ValueError(f"feature pool {pool!r} is unknown; use one of {POOLS}")

  def fn(params, images):
    if encoder.global_pool == "avg":
      feats = encoder.apply({"params": params}, images, return_features=True)[0]
    else:
      tokens = encoder.apply({"params": params}, images)[0]
      feats = tokens[:, 0] if pool == "token" else tokens[:, 1:].mean(axis=1)
    return feats.astype(jnp.float32)

  return fn


def extract_features(fn, params, data_cfg, *, image_size: int, batch_size: int, mesh,
                     split: str | None = None, progress: str = ""):
  """(features (N, D) float32, labels (N,) int32) of every example of `split`, in order."""
  batch_size = round_up(batch_size, mesh.size)
  step = jax.jit(lambda p, b: (fn(p, b["image"]), b["label"], b["mask"]),
                 out_shardings=mesh_lib.replicated(mesh))
  feats, labels = [], []
  split_name = split or data_cfg.eval_split
  meter = Progress(f"{progress or 'features'}: features of {split_name}",
                   total=data_lib.num_examples(data_cfg, split_name))
  for batch in data_lib.build_eval_iterator(data_cfg, image_size=image_size,
                                            global_batch_size=batch_size, mesh=mesh, split=split):
    f, y, m = jax.device_get(step(params, batch))
    keep = np.asarray(m) > 0
    feats.append(np.asarray(f)[keep])
    labels.append(np.asarray(y)[keep])
    meter.update(int(keep.sum()))
  out = np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int32)
  if progress:
    logging.info("%s: features of %d images of %s", progress, len(out[1]),
                 split or data_cfg.eval_split)
  return out


def weights_id(params) -> str:
  """Identifies the weights themselves, so a cache never outlives the checkpoint it came from."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    a = np.asarray(jax.device_get(leaf))
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a.ravel()[:4096]).tobytes())
  return h.hexdigest()[:16]


class FeatureCache:
  """Features per (weights, split, pool, data) for one round; optionally also on disk."""

  def __init__(self, directory: str | None = None):
    self.directory = directory
    self._memory = {}

  def clear(self):
    self._memory.clear()

  def get(self, encoder, params, data_cfg, *, split: str, pool: str, batch_size: int, mesh,
          progress: str = ""):
    key = hashlib.sha256(json.dumps(dict(
        weights=weights_id(params), split=split, pool=pool, dataset=data_cfg.dataset,
        image_size=encoder.image_size, ops=str(data_cfg.eval_ops)), sort_keys=True).encode()
        ).hexdigest()[:16]
    if key in self._memory:
      return self._memory[key]
    path = None
    if self.directory:
      name = "".join(c if c.isalnum() else "_" for c in split)
      path = os.path.join(self.directory, f"{name}_{key}.npz")
      if os.path.exists(path):
        with np.load(path) as f:
          logging.info("features from cache %s", path)
          self._memory[key] = (f["features"], f["labels"])
          return self._memory[key]
    out = extract_features(feature_fn(encoder, pool), params, data_cfg,
                           image_size=encoder.image_size, batch_size=batch_size, mesh=mesh,
                           split=split, progress=progress)
    if path and jax.process_index() == 0:
      os.makedirs(self.directory, exist_ok=True)
      tmp = path + ".tmp.npz"
      np.savez(tmp, features=out[0], labels=out[1])
      os.replace(tmp, path)
    self._memory[key] = out
    return out
