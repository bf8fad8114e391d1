"""Frozen-encoder protocols end to end: k-NN, linear probe, few-shot, from a config + workdir.

Each loads the encoder of `config.init` (empty: a randomly initialised one, the baseline),
extracts train and eval features once (cached in <workdir>/features/ and shared by the three
protocols), evaluates, appends a row to <workdir>/results.csv and returns its numbers.
"""

import hashlib
import os

import jax
import numpy as np
from absl import logging

from maelite_jax.evaluate import features as feat_lib
from maelite_jax.evaluate import fewshot as fewshot_lib
from maelite_jax.evaluate import knn as knn_lib
from maelite_jax.evaluate import linear as linear_lib
from maelite_jax.evaluate import results
from maelite_jax.train import mesh as mesh_lib


def _fingerprint(params) -> str:
  """Identifies the weights themselves, so a cache never outlives the checkpoint it came from."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    a = np.asarray(leaf)
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a.ravel()[:4096]).tobytes())
  return h.hexdigest()[:16]


class FrozenEncoder:
  """The encoder of config.init (or a random one) and its cached features per split."""

  def __init__(self, config, workdir: str, mesh=None):
    self.config, self.workdir = config, workdir
    self.mesh = mesh or mesh_lib.make_mesh()
    if config.init:
      self.encoder, self.params, meta = feat_lib.load_encoder(config.init,
                                                              config.model.image_size)
      self.model_name = (meta.get("model") or {}).get("name", "?")
      self.pretrain = f"{meta.get('objective', '?')}:{config.init}"
    else:
      self.encoder, self.params = feat_lib.random_encoder(config.model, config.seed)
      self.model_name, self.pretrain = config.model.name, "random-init"
    self._fn = feat_lib.feature_fn(self.encoder, config.pool)
    self._fp = _fingerprint(self.params)

  def features(self, split: str):
    cfg = self.config
    key = feat_lib.cache_key(weights=self._fp, split=split, pool=cfg.pool, dataset=cfg.data.dataset,
                             image_size=cfg.model.image_size,
                             crop=cfg.data.get("eval_crop_pct", None))
    name = "".join(c if c.isalnum() else "_" for c in split)
    path = (os.path.join(self.workdir, "features", f"{name}_{key}.npz")
            if cfg.cache_features else None)
    return feat_lib.cached(path, key, lambda: feat_lib.extract_features(
        self._fn, self.params, cfg.data, image_size=cfg.model.image_size,
        batch_size=cfg.feature_batch_size, mesh=self.mesh, split=split))

  def train_eval(self):
    cfg = self.config
    x_tr, y_tr = self.features(cfg.data.train_split)
    x_te, y_te = self.features(cfg.data.eval_split)
    logging.info("features: train %s, eval %s", x_tr.shape, x_te.shape)
    return x_tr, y_tr, x_te, y_te

  def record(self, protocol: str, top1: float, top5: float | None = None) -> dict:
    return results.append_row(self.workdir, model=self.model_name, pretrain=self.pretrain,
                              protocol=protocol, dataset=self.config.data.dataset, top1=top1,
                              top5=top5)


def run_knn(config, workdir: str, mesh=None) -> dict:
  fe = FrozenEncoder(config, workdir, mesh)
  x_tr, y_tr, x_te, y_te = fe.train_eval()
  acc = knn_lib.knn_accuracy(x_tr, y_tr, x_te, y_te, k=config.knn.k,
                             temperature=config.knn.temperature, num_classes=config.num_classes)
  fe.record(f"knn-k{config.knn.k}", acc["top1"], acc["top5"])
  return acc


def run_linear(config, workdir: str, mesh=None) -> dict:
  fe = FrozenEncoder(config, workdir, mesh)
  x_tr, y_tr, x_te, y_te = fe.train_eval()
  lin = config.linear
  head, norm, history = linear_lib.train_linear_probe(
      x_tr, y_tr, config.num_classes, lin.optim, epochs=lin.epochs, batch_size=lin.batch_size,
      seed=config.seed)
  acc = linear_lib.probe_accuracy(head, norm, x_te, y_te)
  acc["train_loss"] = history[-1]
  logging.info("linear probe: loss %.4f -> %.4f over %d epochs", history[0], history[-1],
               len(history))
  fe.record("linear", acc["top1"], acc["top5"])
  return acc


def run_fewshot(config, workdir: str, mesh=None) -> dict:
  fe = FrozenEncoder(config, workdir, mesh)
  x_tr, y_tr, x_te, y_te = fe.train_eval()
  fs = config.fewshot
  out = fewshot_lib.fewshot_accuracy(x_tr, y_tr, x_te, y_te, shots=tuple(fs.shots),
                                     seeds=fs.seeds, l2_reg=fs.l2_reg,
                                     num_classes=config.num_classes)
  for shots, r in out.items():
    fe.record(f"fewshot-{shots}shot", r["mean"])
  return out


PROTOCOLS = {"knn": run_knn, "linear": run_linear, "fewshot": run_fewshot}
