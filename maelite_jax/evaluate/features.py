"""Frozen-encoder features over a whole split: shared by k-NN, linear probing and few-shot.

Features come out in dataset order with the eval iterator's padding removed (exact for any
batch size / device count), gathered as replicated arrays so every process holds them all, and
can be cached to an .npz keyed by what produced them (checkpoint, split, pooling, image size).
"""

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from maelite_jax import data as data_lib
from maelite_jax.evaluate.accuracy import round_up
from maelite_jax.models import create_model
from maelite_jax.models.vit import VisionTransformer
from maelite_jax.train import mesh as mesh_lib

POOLS = ("token", "avg")


def encoder_like(model, **overrides) -> VisionTransformer:
  """A plain ViT encoder (no head) with the architecture of `model` (a ViT or an MAE)."""
  fields = ("image_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
            "mlp_ratio", "dtype", "attention_impl")
  kwargs = {f: getattr(model, f) for f in fields if hasattr(model, f)}
  kwargs["trainable_pos_embed"] = getattr(model, "trainable_pos_embed", False)
  kwargs.update(overrides)
  return VisionTransformer(**kwargs)


def load_encoder(path: str, image_size: int | None = None):
  """(encoder, params, meta) from any checkpoint: MAE / D-MAE / MoCo-v3 pre-training, a
  fine-tuned classifier, or imported PyTorch weights. The encoder has no head; a fine-tuned
  avg-pool model (no final `norm`) keeps its fc_norm and pools with it."""
  from maelite_jax.analysis.representations import encoder_from_checkpoint
  from maelite_jax.train.checkpoint import load_params
  loaded, meta = load_params(path)
  model, params = encoder_from_checkpoint(loaded, meta, image_size)
  params = {k: v for k, v in params.items() if k != "head"}
  pool = "avg" if "norm" not in params and "fc_norm" in params else "token"
  if pool == "token":
    params.pop("fc_norm", None)
  model = encoder_like(model, trainable_pos_embed="pos_embed" in params, global_pool=pool)
  return model, params, meta


def random_encoder(model_cfg, seed: int = 0):
  """(encoder, params) of a randomly initialised ViT: the baseline every protocol is run on."""
  return _random_encoder(model_cfg.name.removeprefix("mae_"), model_cfg.image_size,
                         model_cfg.patch_size, model_cfg.get("depth"), seed)


@functools.lru_cache(maxsize=4)
def _random_encoder(name, image_size, patch_size, depth, seed):
  model = create_model(name, image_size=image_size, patch_size=patch_size, depth=depth)
  x = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(seed), x)["params"]
  return model, jax.device_get(params)


def feature_fn(encoder: VisionTransformer, pool: str = "token"):
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
                     split: str | None = None):
  """(features (N, D) float32, labels (N,) int32) of every example of `split`, in order."""
  batch_size = round_up(batch_size, mesh.size)
  step = jax.jit(lambda p, b: (fn(p, b["image"]), b["label"], b["mask"]),
                 out_shardings=mesh_lib.replicated(mesh))
  feats, labels = [], []
  for batch in data_lib.build_eval_iterator(data_cfg, image_size=image_size,
                                            global_batch_size=batch_size, mesh=mesh, split=split):
    f, y, m = jax.device_get(step(params, batch))
    keep = np.asarray(m) > 0
    feats.append(np.asarray(f)[keep])
    labels.append(np.asarray(y)[keep])
  return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int32)


def cache_key(**fields) -> str:
  """A short stable hash of what determines the features (checkpoint step, split, pool...)."""
  blob = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached(path: str | None, key: str, compute):
  """compute() -> (features, labels), stored in `path` (.npz) and reused while `key` matches."""
  if path and os.path.exists(path):
    with np.load(path) as f:
      if str(f["key"]) == key:
        logging.info("features from cache %s", path)
        return f["features"], f["labels"]
  feats, labels = compute()
  if path and jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, features=feats, labels=labels, key=np.asarray(key))
    os.replace(tmp, path)
  return feats, labels
