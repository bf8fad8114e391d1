"""D-MAE's distillation terms as pure functions (MAE-Lite's mae_lite_distill_exp.py numerics).

Attention distillation compares pre-softmax attention logits (q k^T / sqrt(head_dim)) of the
visible tokens + cls, (B, H, 1+K, 1+K); a 1x1 convolution over the head axis without bias maps
the student's heads to the teacher's (here an (H_s, H_t) matrix). Hidden-state distillation maps
student tokens (cls included) to the teacher's width with a bias-free linear layer. Both are
torch's MSELoss (mean over every element) and are summed over the chosen layer pairs; the total is
MAE loss + alpha_attn * attn + alpha_hidden * hidden. Everything is computed in float32.
"""

from typing import Sequence

import jax.numpy as jnp

from maelite_jax.models.vit import on_tokens


def mse(a, b):
  """Mean squared error over all elements (torch.nn.MSELoss with reduction='mean')."""
  return jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32))**2)


def adapt_heads(logits, kernel=None):
  """(B, H_s, T, T) x (H_s, H_t) -> (B, H_t, T, T): the 1x1 conv over heads; None = identity."""
  if kernel is None:
    return logits
  return jnp.einsum("bhqk,hg->bgqk", logits.astype(jnp.float32), kernel.astype(jnp.float32))


def adapt_tokens(tokens, kernel=None):
  """(B, T, D_s) x (D_s, D_t) -> (B, T, D_t): the bias-free linear adapter; None = identity."""
  if kernel is None:
    return tokens
  return on_tokens(lambda t: t @ kernel.astype(jnp.float32), tokens.astype(jnp.float32))


def attn_distill_loss(student_logits, teacher_logits, kernel=None):
  """MSE(adapter(student logits), teacher logits) for one layer pair."""
  return mse(adapt_heads(student_logits, kernel), teacher_logits)


def hidden_distill_loss(student_tokens, teacher_tokens, kernel=None):
  """MSE(Linear(student tokens), teacher tokens) for one layer pair (cls token included)."""
  return mse(adapt_tokens(student_tokens, kernel), teacher_tokens)


def dmae_total_loss(mae_loss, *, attn: Sequence[tuple] = (), hidden: Sequence[tuple] = (),
                    attn_alpha: float = 1.0, hidden_alpha: float = 1.0):
  """MAE loss plus the weighted distillation terms; returns (total, metrics).

  attn / hidden: one (student, teacher, adapter kernel or None) triple per layer pair. Each term
  is logged unweighted (summed over its pairs, as the reference logs it) next to the total.
  """
  metrics = {"mae_loss": mae_loss}
  total = mae_loss
  for name, pairs, alpha, fn in (("attn", attn, attn_alpha, attn_distill_loss),
                                 ("hidden", hidden, hidden_alpha, hidden_distill_loss)):
    if not pairs:
      continue
    term = sum(fn(s, t, k) for s, t, k in pairs)
    metrics[f"{name}_distill_loss"] = term
    total = total + alpha * term
  metrics["loss"] = total
  return total, metrics
