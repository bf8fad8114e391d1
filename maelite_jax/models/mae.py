"""Masked autoencoder (MAE) with a ViT encoder on the visible tokens and a light decoder.

Numerics follow the reference `models_mae.py`: per-sample random masking by argsort of a noise
array (which callers may pass explicitly, for cross-framework reproducibility), encoder on the
kept 25 %, decoder with a shared mask token and its own fixed sin-cos positions, and a linear
prediction of (p*p*c) pixels per patch in (h, w, p, q, c) order.

Parameters: {"encoder": <VisionTransformer tree>, "decoder_embed", "mask_token",
"decoder_blocks_{i}", "decoder_norm", "decoder_pred"}.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maelite_jax.models.posemb import sincos_2d
from maelite_jax.models.vit import (LN_EPS, Block, VisionTransformer, dense_init, on_tokens,
                                    take_tokens, token_init)


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """K, the visible patches per image: MAE's int(N * (1 - ratio))."""
  return int(num_patches * (1 - mask_ratio))


def random_masking_ids(noise, mask_ratio: float):
  """MAE's random masking from a noise array (B, N).

  Returns (ids_keep (B, K), ids_restore (B, N), mask (B, N) with 1 = removed), K = N*(1-ratio).
  """
  len_keep = num_kept(noise.shape[1], mask_ratio)
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :len_keep]
  mask = jnp.ones_like(noise).at[:, :len_keep].set(0.0)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_keep, ids_restore, mask


def masked_patch_ids(noise, mask_ratio: float):
  """(B, N - K) ids of the removed patches: the only ones MAE's loss looks at.

  The argsort is the one of `random_masking_ids` (XLA computes it once in a jitted step)."""
  return jnp.argsort(noise, axis=1)[:, num_kept(noise.shape[1], mask_ratio):]


def encoder_module(model, **overrides) -> VisionTransformer:
  """The plain ViT with the encoder arguments of `model` (an MAE or a ViT): the one place
  that maps an MAE's fields onto its encoder (D-MAE's student, feature extraction)."""
  fields = set(VisionTransformer.__dataclass_fields__) - {"parent", "name"}
  kwargs = {f: getattr(model, f) for f in fields if hasattr(model, f)}
  return VisionTransformer(**dict(kwargs, **overrides))


class MaskedAutoencoder(nn.Module):
  image_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  embed_dim: int = 192
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  decoder_embed_dim: int = 96
  decoder_depth: int = 1
  decoder_num_heads: int = 3
  mask_ratio: float = 0.75
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  attention_impl: str = "einsum"
  attention_pad: int = 0     # xla/cudnn attention: pad the tokens to a multiple (0 = as needed)
  scan_blocks: bool = False  # encoder blocks (the decoder has 1-8 blocks)
  remat: bool = False

  def setup(self):
    self.encoder = encoder_module(self)
    self.decoder_embed = nn.Dense(self.decoder_embed_dim, kernel_init=dense_init, dtype=self.dtype)
    self.mask_token = self.param("mask_token", token_init, (1, 1, self.decoder_embed_dim))
    self.decoder_blocks = [
        Block(self.decoder_num_heads, self.mlp_ratio, 0.0, self.dtype, self.attention_impl,
              self.attention_pad, name=f"decoder_blocks_{i}") for i in range(self.decoder_depth)]
    self.decoder_norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype)
    self.decoder_pred = nn.Dense(self.patch_size**2 * self.in_chans, kernel_init=dense_init,
                                 dtype=self.dtype)

  @property
  def num_patches(self) -> int:
    if self.image_size % self.patch_size:
      raise ValueError(
          f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
          "set config.model.image_size to a multiple of the patch size")
    return (self.image_size // self.patch_size)**2

  def make_noise(self, rng, batch_size: int):
    return jax.random.uniform(rng, (batch_size, self.num_patches))

  def decode(self, latent, ids_restore, pred_ids=None):
    """latent (B, 1+K, D) -> per-patch pixel predictions (B, N, p*p*c).

    pred_ids (B, M): predict only those patches (B, M, p*p*c). The decoder blocks still see
    every token; the norm and the linear head work per token, so this is the same function for
    the patches it returns, and training asks only for the masked 75 % that the loss reads.
    """
    x = on_tokens(self.decoder_embed, latent)
    b, n = ids_restore.shape
    n_mask = n + 1 - x.shape[1]
    mask_tokens = jnp.broadcast_to(self.mask_token.astype(x.dtype), (b, n_mask, x.shape[-1]))
    x_ = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
    x_ = take_tokens(x_, ids_restore)
    x = jnp.concatenate([x[:, :1], x_], axis=1)
    grid = self.image_size // self.patch_size
    x = x + jnp.asarray(sincos_2d(self.decoder_embed_dim, grid, cls_token=True))[None].astype(x.dtype)
    for blk in self.decoder_blocks:
      x, _ = blk(x)
    x = x[:, 1:]
    if pred_ids is not None:
      x = take_tokens(x, pred_ids)
    return on_tokens(self.decoder_pred, self.decoder_norm(x))

  def __call__(self, images, noise=None, *, train: bool = False,
               return_tokens: Sequence[int] = (), return_attn_logits: Sequence[int] = (),
               masked_only: bool = False):
    """Returns dict(pred (B,N,p*p*c), mask (B,N), ids_keep, ids_restore, latent, aux).

    noise: (B, N) uniform noise that decides the masking; drawn from the 'masking' rng if None.
    masked_only: pred holds only the removed patches (B, N-K, p*p*c), in the order of the
    extra output `pred_ids` (B, N-K): what the training loss needs, a quarter less head work.
    """
    if noise is None:
      noise = self.make_noise(self.make_rng("masking"), images.shape[0])
    if noise.shape != (images.shape[0], self.num_patches):
      raise ValueError(f"noise must have shape (batch, num_patches) = "
                       f"{(images.shape[0], self.num_patches)}, got {noise.shape}")
    ids_keep, ids_restore, mask = random_masking_ids(noise, self.mask_ratio)
    latent, aux = self.encoder(images, keep_ids=ids_keep, train=train, return_tokens=return_tokens,
                               return_attn_logits=return_attn_logits)
    pred_ids = masked_patch_ids(noise, self.mask_ratio) if masked_only else None
    pred = self.decode(latent, ids_restore, pred_ids)
    out = dict(pred=pred, mask=mask, ids_keep=ids_keep, ids_restore=ids_restore, latent=latent,
               aux=aux)
    if masked_only:
      out["pred_ids"] = pred_ids
    return out
