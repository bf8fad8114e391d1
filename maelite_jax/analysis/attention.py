"""Attention statistics per layer and head: mean attention distance and attention entropy.

Follows MAE-Lite's run_vis_attn.py: from the pre-softmax logits (B, H, 1+N, 1+N) the cls row and
column are removed and the softmax is recomputed over the N patch keys; then per query
  entropy  = -sum_k p_qk log(p_qk + 1e-6)
  distance = sum_k p_qk d_qk,  d_qk = Euclidean distance of the patch grid positions * scale
and both are averaged over queries and images, per head.

The distance unit (`scale`, per grid step): the paper's figures (the reference's numbers)
multiply grid distances by sqrt(num_tokens) = 14 at 224px / patch 16, which is not the 16-pixel
patch size, so its "pixels" are 14/16 of true pixels. That unit is the default everywhere here,
so numbers compare with the paper's; `pixels_per_patch(mode=...)` also offers "patch" (true
pixels) and "grid" (patch units).
"""

import jax
import jax.numpy as jnp
import numpy as np

ENTROPY_EPS = 1e-6
DISTANCE_MODES = ("patch", "sqrt_tokens", "grid")


def pixels_per_patch(patch_size: int, num_patches: int, mode: str = "sqrt_tokens") -> float:
  """The factor turning grid distances into the chosen unit (see the module docstring)."""
  if mode == "patch":
    return float(patch_size)
  if mode == "sqrt_tokens":
    return float(np.sqrt(num_patches))
  if mode == "grid":
    return 1.0
  raise ValueError(f"unknown distance mode {mode!r}; choose one of {', '.join(DISTANCE_MODES)}")


def grid_distances(grid_size: int, scale: float | None = None) -> np.ndarray:
  """(N, N) Euclidean distances between the row-major patch positions of a g x g grid, * scale;
  scale None: the paper's unit, sqrt(N) = g."""
  scale = float(grid_size) if scale is None else scale
  rows, cols = np.divmod(np.arange(grid_size * grid_size), grid_size)
  pos = np.stack([rows, cols], axis=1).astype(np.float64)
  return np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1)) * scale


def patch_attention(logits, num_prefix: int = 1):
  """Softmax over patch keys only: (B, H, P+N, P+N) logits -> (B, H, N, N) float32 probs."""
  logits = jnp.asarray(logits, jnp.float32)[:, :, num_prefix:, num_prefix:]
  return jax.nn.softmax(logits, axis=-1)


def stats_from_probs(probs, distances):
  """(B, H, N, N) probs -> per image and head (B, H) mean distance and mean entropy."""
  entropy = -jnp.sum(probs * jnp.log(probs + ENTROPY_EPS), axis=-1)
  distance = jnp.einsum("bhqk,qk->bhq", probs, jnp.asarray(distances, jnp.float32))
  return distance.mean(axis=-1), entropy.mean(axis=-1)


def attention_stats(logits, distances=None, num_prefix: int = 1):
  """Pre-softmax logits (B, H, P+N, P+N) -> (distance, entropy), each (B, H). jit-able.

  distances: (N, N); None = `grid_distances` of the square grid in the paper's unit."""
  if distances is None:
    grid = int(round((logits.shape[-1] - num_prefix)**0.5))
    if grid * grid != logits.shape[-1] - num_prefix:
      raise ValueError(f"{logits.shape[-1] - num_prefix} patch tokens are no square grid; pass "
                       "the distances")
    distances = grid_distances(grid)
  return stats_from_probs(patch_attention(logits, num_prefix), distances)


def attention_map(logits, query="cls", num_prefix: int = 1):
  """Where one query looks: (B, H, N) over patch keys.

  query="cls": the cls token's softmax over all tokens, patch part (what DINO-style maps show);
  query=int: that patch's softmax over patch keys (cls removed, as in the statistics).
  """
  logits = jnp.asarray(logits, jnp.float32)
  if query == "cls":
    return jax.nn.softmax(logits[:, :, 0], axis=-1)[:, :, num_prefix:]
  return patch_attention(logits, num_prefix)[:, :, int(query)]


class AttentionAccumulator:
  """Running per-(layer, head) means of distance and entropy over real (unpadded) images."""

  def __init__(self):
    self.distance_sum = None
    self.entropy_sum = None
    self.count = 0

  def update(self, distance, entropy, valid=None) -> None:
    """distance, entropy: (L, B, H) per-image values; valid: optional (B,) bool."""
    distance = np.asarray(distance, np.float64)
    entropy = np.asarray(entropy, np.float64)
    w = np.ones(distance.shape[1]) if valid is None else np.asarray(valid, np.float64)
    d, e = np.einsum("lbh,b->lh", distance, w), np.einsum("lbh,b->lh", entropy, w)
    if self.distance_sum is None:
      self.distance_sum, self.entropy_sum = d, e
    else:
      self.distance_sum += d
      self.entropy_sum += e
    self.count += int(w.sum())

  def result(self) -> dict:
    """{"distance": (L, H), "entropy": (L, H), "num_images": n}."""
    if not self.count:
      raise ValueError("AttentionAccumulator.result() called before any image")
    return {"distance": self.distance_sum / self.count, "entropy": self.entropy_sum / self.count,
            "num_images": self.count}
