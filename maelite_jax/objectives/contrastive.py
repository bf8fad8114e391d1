"""MoCo-v3's objective as pure functions: InfoNCE, the momentum schedule, the EMA, monitors.

All functions act on *global* arrays: under `jax.jit` over a data mesh, q k^T spans the whole
global batch, which is what MoCo-v3 gets by all-gathering the keys (labels = own index then
means the same image's other view, wherever it lives).
"""

import jax
import jax.numpy as jnp


def l2_normalize(x, eps: float = 1e-12):
  """torch's F.normalize: x / max(||x||, eps) along the last axis."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps)


def info_nce(q, k, temperature: float):
  """Cross-entropy of logits q k^T / T against labels = own index, times 2T (MoCo-v3's scale,
  which keeps gradient magnitudes independent of T). q, k: (B, C); returns a scalar."""
  q = l2_normalize(q.astype(jnp.float32))
  k = l2_normalize(k.astype(jnp.float32))
  logits = q @ k.T / temperature
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.diagonal(log_probs)) * (2.0 * temperature)


def symmetric_info_nce(q1, q2, k1, k2, temperature: float):
  """MoCo-v3's loss: each view's query against the other view's key, summed."""
  return info_nce(q1, k2, temperature) + info_nce(q2, k1, temperature)


def contrastive_accuracy(q, k):
  """Fraction of queries whose most similar key is their own (a cheap training monitor)."""
  sim = l2_normalize(q) @ l2_normalize(k).T
  return jnp.mean(jnp.argmax(sim, axis=-1) == jnp.arange(q.shape[0]))


def momentum_at(step, total_steps: int, m0: float):
  """Cosine schedule from m0 (step 0) to 1 (step total): 1 - (1 - m0) (cos(pi t / T) + 1) / 2."""
  t = jnp.asarray(step, jnp.float32) / max(total_steps, 1)
  return 1.0 - (1.0 - m0) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0


def ema_update(target, online, momentum):
  """target <- m * target + (1 - m) * online, leaf by leaf (MoCo-v3's momentum update)."""
  return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


def alignment(z1, z2):
  """Wang & Isola's alignment: mean ||z1_i - z2_i||^2 of L2-normalised positive pairs."""
  d = l2_normalize(z1) - l2_normalize(z2)
  return jnp.mean(jnp.sum(d * d, axis=-1))


def uniformity(z, t: float = 2.0):
  """Wang & Isola's uniformity: log mean_{i != j} exp(-t ||z_i - z_j||^2) (lower = more uniform)."""
  z = l2_normalize(z)
  sq = jnp.maximum(2.0 - 2.0 * z @ z.T, 0.0)  # ||a - b||^2 of unit vectors
  n = z.shape[0]
  off = ~jnp.eye(n, dtype=bool)
  logits = jnp.where(off, -t * sq, -jnp.inf)
  return jax.nn.logsumexp(logits) - jnp.log(n * (n - 1.0))
