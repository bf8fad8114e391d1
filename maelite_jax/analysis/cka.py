"""Centred kernel alignment (CKA) between layer representations, full-data and streaming.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for gram matrices K, L of the same n
examples. Two estimators:
  - full data (Kornblith et al. 2019): biased HSIC = tr(K H L H) / (n-1)^2 on all n examples;
    memory grows as n^2, fine for a few thousand examples.
  - minibatch (Nguyen et al. 2021, "Do wide and deep networks learn the same things?"): the
    unbiased HSIC_1 (Song et al. 2012) of each minibatch, averaged over minibatches, and CKA from
    the averages. Unbiased per batch means the average converges to the population value, so the
    estimate does not depend on the batch size the way averaging biased per-batch CKA would;
    memory is fixed (`MinibatchCKA`).

Gram matrices come from features flattened to (B, tokens * C). Features are mean-centred over
the batch first: every estimator here is invariant to that shift, and it keeps float32 grams
accurate. HSIC sums are accumulated in float64 numpy on the host.
"""

import jax
import jax.numpy as jnp
import numpy as np


def linear_gram(x):
  """(B, ...) features -> (B, B) linear gram of the batch-centred, flattened features."""
  x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  x = x - x.mean(axis=0, keepdims=True)
  return jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)


def rbf_from_linear(gram, threshold: float = 0.5):
  """RBF gram from a linear one: exp(-d^2 / (2 sigma^2)), sigma^2 = threshold^2 * median d^2.

  sigma is a fraction of the median pairwise distance; the median is over all squared distances
  of the batch (diagonal zeros included), as in Kornblith et al.'s code. Because sigma follows
  each layer's scale, RBF CKA stays invariant to isotropic scaling.
  """
  k = np.asarray(gram, np.float64)
  sq_norms = np.diag(k)
  sq_dist = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2 * k, 0.0)
  median = np.median(sq_dist)
  if median <= 0:
    return np.ones_like(k)
  return np.exp(-sq_dist / (2 * threshold**2 * median))


def make_gram(x, kernel: str = "linear", rbf_threshold: float = 0.5) -> np.ndarray:
  """Float64 (B, B) gram of features x with the chosen kernel ("linear" | "rbf")."""
  gram = np.asarray(linear_gram(x), np.float64)
  if kernel == "linear":
    return gram
  if kernel == "rbf":
    return rbf_from_linear(gram, rbf_threshold)
  raise ValueError(f"unknown CKA kernel {kernel!r}; use 'linear' or 'rbf'")


def center_gram(k) -> np.ndarray:
  """H K H with H = I - 11^T / n."""
  k = np.asarray(k, np.float64)
  k = k - k.mean(axis=0, keepdims=True)
  return k - k.mean(axis=1, keepdims=True)


def hsic_biased(k, l) -> float:
  """tr(K H L H) / (n-1)^2."""
  n = k.shape[0]
  return float(np.sum(center_gram(k) * center_gram(l)) / (n - 1)**2)


def _zero_diag(grams) -> np.ndarray:
  grams = np.array(grams, np.float64, copy=True)
  n = grams.shape[-1]
  if n < 4:
    raise ValueError(f"the unbiased HSIC needs at least 4 examples per batch, got {n}")
  idx = np.arange(n)
  grams[:, idx, idx] = 0.0
  return grams


def _hsic_unbiased(trace, row_dot, tot_k, tot_l, n):
  return (trace + tot_k * tot_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * row_dot) / (n * (n - 3))


def hsic_unbiased_cross(ks, ls) -> np.ndarray:
  """Unbiased HSIC_1 for every pair of grams: ks (A, n, n), ls (C, n, n) -> (A, C).

  HSIC_1 = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ = K with
  its diagonal zeroed (the diagonal would bias the estimate). Needs n >= 4.
  """
  ks, ls = _zero_diag(ks), _zero_diag(ls)
  trace = np.einsum("aij,cij->ac", ks, ls)  # grams are symmetric: tr(KL) = sum K * L
  row_k, row_l = ks.sum(axis=2), ls.sum(axis=2)
  return _hsic_unbiased(trace, row_k @ row_l.T, row_k.sum(1)[:, None], row_l.sum(1)[None, :],
                        ks.shape[-1])


def hsic_unbiased_self(ks) -> np.ndarray:
  """HSIC_1(K, K) for each gram of ks (A, n, n) -> (A,)."""
  ks = _zero_diag(ks)
  rows = ks.sum(axis=2)
  tot = rows.sum(axis=1)
  return _hsic_unbiased(np.einsum("aij,aij->a", ks, ks), np.einsum("ai,ai->a", rows, rows),
                        tot, tot, ks.shape[-1])


def cka_from_grams(k, l, unbiased: bool = False) -> float:
  """CKA of two (n, n) grams on all n examples at once."""
  if unbiased:
    kl = hsic_unbiased_cross(k[None], l[None])[0, 0]
    kk, ll = hsic_unbiased_self(k[None])[0], hsic_unbiased_self(l[None])[0]
  else:
    kl, kk, ll = hsic_biased(k, l), hsic_biased(k, k), hsic_biased(l, l)
  return float(kl / np.sqrt(kk * ll))


def cka(x, y, kernel: str = "linear", rbf_threshold: float = 0.5, unbiased: bool = False) -> float:
  """Full-data CKA between features x (n, ...) and y (n, ...) of the same n examples."""
  return cka_from_grams(make_gram(x, kernel, rbf_threshold), make_gram(y, kernel, rbf_threshold),
                        unbiased)


class MinibatchCKA:
  """Streaming CKA between every layer of model A and every layer of model B.

  Holds only running sums of HSIC_1(K, L) (La x Lb), HSIC_1(K, K) and HSIC_1(L, L), so memory
  does not grow with the number of images. Feed the same images to both models per update.
  """

  def __init__(self, num_layers_a: int, num_layers_b: int, kernel: str = "linear",
               rbf_threshold: float = 0.5):
    if kernel not in ("linear", "rbf"):
      raise ValueError(f"unknown CKA kernel {kernel!r}; use 'linear' or 'rbf'")
    self.kernel, self.rbf_threshold = kernel, rbf_threshold
    self.hsic_kl = np.zeros((num_layers_a, num_layers_b))
    self.hsic_kk = np.zeros(num_layers_a)
    self.hsic_ll = np.zeros(num_layers_b)
    self.num_batches = 0
    self.num_examples = 0

  def update(self, feats_a, feats_b, valid=None) -> None:
    """feats_*: one (B, ...) array per layer; valid: optional (B,) bool of real examples."""
    self.update_grams([linear_gram(f) for f in feats_a], [linear_gram(f) for f in feats_b], valid)

  def update_grams(self, grams_a, grams_b, valid=None) -> None:
    """Same as `update` from precomputed *linear* grams (La, B, B) and (Lb, B, B)."""
    ks, ls = self._prepare(grams_a, valid), self._prepare(grams_b, valid)
    if ks.shape[-1] < 4:
      return  # too few examples for the unbiased estimator; such a tail batch is skipped
    self.hsic_kl += hsic_unbiased_cross(ks, ls)
    self.hsic_kk += hsic_unbiased_self(ks)
    self.hsic_ll += hsic_unbiased_self(ls)
    self.num_batches += 1
    self.num_examples += ks.shape[-1]

  def _prepare(self, grams, valid) -> np.ndarray:
    grams = np.stack([np.asarray(g, np.float64) for g in grams])
    if valid is not None:
      keep = np.flatnonzero(np.asarray(valid))
      grams = grams[:, keep][:, :, keep]
      # Padding rows took part in the batch mean of linear_gram; re-centre on real rows only.
      grams = np.stack([center_gram(g) for g in grams])
    if self.kernel == "rbf":
      grams = np.stack([rbf_from_linear(g, self.rbf_threshold) for g in grams])
    return grams

  def result(self) -> np.ndarray:
    """(La, Lb) CKA = mean HSIC(K, L) / sqrt(mean HSIC(K, K) * mean HSIC(L, L))."""
    if self.num_batches == 0:
      raise ValueError("MinibatchCKA.result() called before any batch with >= 4 examples")
    # The 1/num_batches factors cancel.
    return self.hsic_kl / np.sqrt(np.outer(self.hsic_kk, self.hsic_ll))
