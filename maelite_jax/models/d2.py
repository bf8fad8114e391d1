"""D2-MAE's extra distillation block: a ViT block cut after its attention logits.

In D2-MAE (MAE-Lite's mae_lite_distill_d2_exp.py) the student gets one more block whose only job
is to produce attention logits for distillation; its output projection, norm2 and MLP do not
exist. It lives outside the encoder tree (params['distill_block']), so the encoder that is kept
for downstream use is a plain ViT. Names follow timm's block (norm1, attn/qkv).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from maelite_jax.models.vit import LN_EPS, dense_init


class _QKLogits(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, dtype=self.dtype, kernel_init=dense_init, name="qkv")(x)
    qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    # v is computed by the fused projection but unused, as in the reference's cut block.
    return jnp.einsum("bhqd,bhkd->bhqk", qkv[0] * head_dim**-0.5, qkv[1])


class AttentionLogitsBlock(nn.Module):
  """(B, T, D) residual stream -> (B, H, T, T) pre-softmax logits of norm1(x)."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    return _QKLogits(self.num_heads, self.dtype, name="attn")(y)
