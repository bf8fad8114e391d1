"""A cheap representation monitor for self-supervised runs: weighted k-NN top-1.

Features are the encoder's pooled output (cls token after the final norm), L2-normalised; each
query votes with its k most similar bank images, weighted by exp(cosine / T) (Wu et al. 2018,
as used by DINO and MoCo-style monitors). No training, so it can run every few thousand steps.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from maelite_jax import data as data_lib


def weighted_knn_top1(bank, bank_labels, queries, query_labels, k: int = 20,
                      temperature: float = 0.07, num_classes: int | None = None) -> float:
  """Top-1 accuracy of the weighted k-NN vote (features need not be normalised)."""
  norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  bank, queries = norm(np.asarray(bank, np.float32)), norm(np.asarray(queries, np.float32))
  bank_labels, query_labels = np.asarray(bank_labels), np.asarray(query_labels)
  num_classes = num_classes or int(max(bank_labels.max(), query_labels.max())) + 1
  k = min(k, len(bank))
  correct = 0
  for start in range(0, len(queries), 1024):  # bounded memory for large banks
    sim = queries[start:start + 1024] @ bank.T
    idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sim, idx, axis=1) / temperature)
    votes = np.zeros((len(sim), num_classes), np.float64)
    np.add.at(votes, (np.arange(len(sim))[:, None], bank_labels[idx]), weights)
    correct += int(np.sum(votes.argmax(1) == query_labels[start:start + 1024]))
  return correct / max(len(queries), 1)


def extract_features(feature_fn, params, data_cfg, *, split: str, image_size: int,
                     batch_size: int, mesh):
  """(features, labels) as host numpy for one pass over `split` (eval view; padding dropped)."""
  batch_size = -(-batch_size // mesh.size) * mesh.size
  feats, labels = [], []
  for batch in data_lib.build_eval_iterator(data_cfg, image_size=image_size,
                                            global_batch_size=batch_size, mesh=mesh, split=split):
    f = feature_fn(params, batch["image"])
    f, y, m = (np.asarray(multihost_utils.process_allgather(a, tiled=True))
               for a in (f, batch["label"], batch["mask"]))
    feats.append(f[m > 0])
    labels.append(y[m > 0])
  return np.concatenate(feats), np.concatenate(labels)


def knn_top1(encoder, params, config, mesh) -> float:
  """k-NN top-1 of `encoder` (a VisionTransformer) with config.knn's bank and query splits."""
  knn = config.knn
  fn = jax.jit(lambda p, x: encoder.apply({"params": p}, x, return_features=True)[0])
  kw = dict(image_size=config.model.image_size, batch_size=knn.batch_size, mesh=mesh)
  bank, bank_y = extract_features(fn, params, config.data, split=knn.bank_split, **kw)
  query, query_y = extract_features(fn, params, config.data, split=knn.query_split, **kw)
  return weighted_knn_top1(bank, bank_y, query, query_y, knn.k, knn.temperature)
