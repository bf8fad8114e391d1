"""The MAE objective as pure functions: patchify, the masked per-patch MSE, and the loss of a model.

Formulas of the reference `models_mae.py`: target = patchified image in (h, w, p, q, c) order;
with norm_pix_loss each target patch is normalised by its own mean and *unbiased* variance
(torch's default) plus 1e-6; the per-patch MSE is averaged over masked patches only.
"""

import jax
import jax.numpy as jnp

# One patchify for the patch embedding and the target, so XLA computes the transpose once.
from maelite_jax.models.vit import patchify, take_tokens  # noqa: F401  (patchify re-exported)


def unpatchify(patches, patch_size: int, channels: int = 3):
  """(B, N, p*p*C) -> (B, H, W, C); the inverse of `patchify` for square grids."""
  b, n, _ = patches.shape
  g = int(round(n**0.5))
  x = patches.reshape(b, g, g, patch_size, patch_size, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, g * patch_size, g * patch_size, channels)


def normalize_patches(target, eps: float = 1e-6):
  """Per-patch (x - mean) / sqrt(unbiased var + eps); returns (normalised, mean, std)."""
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True, ddof=1)
  std = jnp.sqrt(var + eps)
  return (target - mean) / std, mean, std


def mae_loss(pred, target, mask, norm_pix_loss: bool = True):
  """Mean over masked patches of the per-patch MSE. pred/target (B, N, P), mask (B, N) 1=masked."""
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  if norm_pix_loss:
    target, _, _ = normalize_patches(target)
  per_patch = jnp.mean((pred - target)**2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


def masked_patch_loss(pred, images, pred_ids, patch_size: int, norm_pix_loss: bool = True):
  """`mae_loss` when pred (B, M, P) holds only the masked patches, `pred_ids` (B, M).

  The same value as the full form: only these patches have mask 1 there. The targets are
  gathered before the normalisation, so a quarter of the patches is never normalised.
  """
  target = take_tokens(patchify(images, patch_size), pred_ids)
  return mae_loss(pred, target, jnp.ones(pred.shape[:2], jnp.float32), norm_pix_loss)


def mae_forward_loss(model, params, images, noise, *, norm_pix_loss: bool = True,
                     train: bool = True, rngs=None, **model_kwargs):
  """Runs the MAE model and its loss; returns (loss, outputs dict of the model).

  The model predicts the masked patches only (`masked_only`); out["pred"] is (B, N-K, P).
  """
  out = model.apply({"params": params}, images, noise, train=train, rngs=rngs or {},
                    masked_only=True, **model_kwargs)
  loss = masked_patch_loss(out["pred"], images, out["pred_ids"], model.patch_size, norm_pix_loss)
  return loss, out


def masking_noise(rng, batch_size: int, num_patches: int):
  """The uniform noise whose argsort decides the masking (drawn for the whole global batch)."""
  return jax.random.uniform(rng, (batch_size, num_patches), jnp.float32)
