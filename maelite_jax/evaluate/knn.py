"""Weighted k-NN classification on frozen features (DINO's protocol: cosine, k=20, T=0.07).

Each query's k most cosine-similar training features vote for their labels with weight
exp(similarity / T); classes are ranked by their summed votes, giving top-1 and top-5. No
training is involved, so it is cheap enough to run as a monitor during pre-training (the `knn`
evaluator of config.evals) as well as on its own (`scripts/knn.py`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maelite_jax.evaluate.base import register
from maelite_jax.evaluate.frozen import FrozenFeatureEvaluator


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_votes(train_feats, train_labels, queries, *, k: int, temperature: float,
              num_classes: int):
  """(Q, C) summed vote weights of the k nearest (cosine) training examples of each query."""
  sim = _normalize(queries) @ _normalize(train_feats).T
  top_sim, idx = jax.lax.top_k(sim, k)
  onehot = jax.nn.one_hot(train_labels[idx], num_classes)
  return jnp.sum(onehot * jnp.exp(top_sim / temperature)[..., None], axis=1)


def knn_predict_scores(train_feats, train_labels, test_feats, *, k: int = 20,
                       temperature: float = 0.07, num_classes: int | None = None,
                       chunk: int = 1024) -> np.ndarray:
  """(N_test, C) vote scores, computed in query chunks to bound memory."""
  train_labels = np.asarray(train_labels, np.int32)
  num_classes = num_classes or int(train_labels.max()) + 1
  k = min(k, len(train_feats))
  train_feats = jnp.asarray(train_feats, jnp.float32)
  out = [np.asarray(knn_votes(train_feats, train_labels, jnp.asarray(test_feats[i:i + chunk]),
                              k=k, temperature=temperature, num_classes=num_classes))
         for i in range(0, len(test_feats), chunk)]
  return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, *, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None) -> dict:
  """{'top1', 'top5'} of the weighted vote (top-5 over min(5, k) as DINO counts it)."""
  test_labels = np.asarray(test_labels)
  num_classes = num_classes or int(max(np.max(train_labels), np.max(test_labels))) + 1
  scores = knn_predict_scores(train_feats, train_labels, test_feats, k=k,
                              temperature=temperature, num_classes=num_classes)
  # Stable descending order: ties go to the lower class index, deterministically.
  ranked = np.argsort(-scores, axis=1, kind="stable")
  hits = ranked == test_labels[:, None]
  n = max(len(test_labels), 1)
  return {"top1": float(hits[:, :1].sum() / n),
          "top5": float(hits[:, :min(5, k, num_classes)].sum() / n)}


@register("knn")
class KnnEvaluator(FrozenFeatureEvaluator):
  """Weighted k-NN top-1/top-5: bank = cfg.bank_split, queries = cfg.query_split (cheap enough
  to monitor pre-training every `every` steps); with cfg.baseline also on a random encoder."""
  train_key, test_key = "bank_split", "query_split"
  reported = {"knn_top1": "top1", "knn_top5": "top5"}

  @property
  def protocol(self):
    return f"knn-k{self.cfg.k}"

  def score(self, train_x, train_y, test_x, test_y):
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=self.cfg.k,
                       temperature=self.cfg.temperature)
    return {"knn_top1": acc["top1"], "knn_top5": acc["top5"]}

  def summary(self, scalars):
    line = f"k-NN top-1 {100 * scalars['knn_top1']:.1f} %"
    if "knn_top1_random" in scalars:
      line += f" (random init {100 * scalars['knn_top1_random']:.1f} %)"
    return line
