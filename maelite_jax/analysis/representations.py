"""Per-layer representations and attention logits of a ViT encoder, for CKA and attention stats.

Representations follow MAE-Lite's run_vis_cmp_rep.py: depth + 1 per model, namely the input of
each block after that block's norm1, and the last block's output tokens through a LayerNorm. The
model's `return_tokens` gives block *outputs* (the pre-norm residual stream), so the norm1
outputs are read with flax's `capture_intermediates` instead (block i's norm1 applied to block
i-1's output, or to the embedding for block 0): exactly what the model computes, with no copy of
its layer norm. Which LayerNorm makes the last one: see `last_norm`. The cls token is dropped by
default, as in the reference.
"""

import flax.linen as nn
import jax.numpy as jnp

from maelite_jax.models.meta import CheckpointMeta
from maelite_jax.models.vit import LN_EPS, VisionTransformer

def is_mae(params) -> bool:
  """An MAE (or D-MAE) checkpoint with its decoder, which can draw reconstructions. MoCo-v3
  checkpoints also keep their ViT under params['encoder'], so that alone does not decide."""
  return "decoder_pred" in params


def layer_labels(depth: int) -> list[str]:
  """Names of the depth + 1 representations: the norm1 input of each block, then the output."""
  return [f"b{i}" for i in range(depth)] + ["out"]


LAST_NORMS = ("fc_norm", "fresh", "norm")


def last_norm(meta: CheckpointMeta, params) -> str:
  """The LayerNorm of the last representation, as MAE-Lite's run_vis_cmp_rep.py makes it.

  The reference builds its fine-tune model (global_pool=True) and takes `fc_norm` of the last
  block's output tokens: the trained fc_norm of an avg-pooled classifier ('fc_norm'), else one
  freshly initialised (weight 1, bias 0; 'fresh'): a pre-trained MAE / D-MAE encoder's trained
  final `norm` is dropped there. Its MoCo-v3 run sets global_pool=False instead
  (run_vis_cmp_rep_all.sh), so MoCo-v3 encoders (ours, or imported with MoCo-v3's position
  table) use their trained final `norm` ('norm').
  """
  enc = params.get("encoder", params)
  if "fc_norm" in enc:
    return "fc_norm"
  if "norm" in enc and (meta.objective == "mocov3" or meta.model.kwargs.get("posemb") == "mocov3"):
    return "norm"
  return "fresh"


def _capture_norm1(module, method_name) -> bool:
  return method_name == "__call__" and module.name == "norm1"


def forward(model: VisionTransformer, params, images, *, want_reps: bool = True,
            logit_layers=None, remove_cls: bool = True, last: str | None = None) -> dict:
  """One forward pass: {"reps": [depth+1 x (B, T, D)], "logits": {i: (B, H, 1+N, 1+N)}}.

  logit_layers: block indices whose attention logits to keep (None = all, () = none).
  last: the LayerNorm applied to the last block's output tokens for the last representation,
  one of LAST_NORMS (see `last_norm`); None = the trained fc_norm if params have one, else a
  fresh one (MAE-Lite's reading of a pre-trained encoder).
  """
  last = last or ("fc_norm" if "fc_norm" in params else "fresh")
  if last not in LAST_NORMS:
    raise ValueError(f"last={last!r} is not one of {LAST_NORMS}")
  logit_layers = tuple(range(model.depth)) if logit_layers is None else tuple(logit_layers)
  kwargs = dict(return_attn_logits=logit_layers)
  if want_reps:
    kwargs.update(return_tokens=(model.depth - 1,), capture_intermediates=_capture_norm1,
                  mutable=["intermediates"])
  result = model.apply({"params": params}, images, **kwargs)
  if not want_reps:
    return {"reps": [], "logits": result[1]["attn_logits"]}
  (_, aux), state = result
  inter = state["intermediates"]
  reps = [inter[f"blocks_{i}"]["norm1"]["__call__"][0] for i in range(model.depth)]
  tokens = aux["tokens"][model.depth - 1]
  norm_params = (params[last] if last != "fresh" else
                 {"scale": jnp.ones(tokens.shape[-1]), "bias": jnp.zeros(tokens.shape[-1])})
  reps.append(nn.LayerNorm(epsilon=LN_EPS, dtype=model.dtype).apply({"params": norm_params},
                                                                    tokens))
  return {"reps": [r[:, 1:] if remove_cls else r for r in reps], "logits": aux["attn_logits"]}
