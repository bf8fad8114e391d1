"""Per-layer representations and attention logits of a ViT encoder, for CKA and attention stats.

Representations follow MAE-Lite's run_vis_cmp_rep.py: depth + 1 per model, namely the input of
each block after that block's norm1, and the final normed output. The model's `return_tokens`
gives block *outputs* (the pre-norm residual stream), so the norm1 outputs are read with flax's
`capture_intermediates` instead (block i's norm1 applied to block i-1's output, or to the
embedding for block 0): exactly what the model computes, with no copy of its layer norm. The last
one is the final `norm` output; models without `norm` (fine-tuned with average pooling and
fc_norm) give the raw last block output there. The cls token is dropped by default, as in the
reference.
"""

from maelite_jax.models.vit import VisionTransformer


def is_mae(params) -> bool:
  """An MAE (or D-MAE) checkpoint with its decoder, which can draw reconstructions. MoCo-v3
  checkpoints also keep their ViT under params['encoder'], so that alone does not decide."""
  return "decoder_pred" in params


def layer_labels(depth: int) -> list[str]:
  """Names of the depth + 1 representations: the norm1 input of each block, then the output."""
  return [f"b{i}" for i in range(depth)] + ["out"]


def _capture_norms(module, method_name) -> bool:
  return method_name == "__call__" and module.name in ("norm1", "norm")


def forward(model: VisionTransformer, params, images, *, want_reps: bool = True,
            logit_layers=None, remove_cls: bool = True) -> dict:
  """One forward pass: {"reps": [depth+1 x (B, T, D)], "logits": {i: (B, H, 1+N, 1+N)}}.

  logit_layers: block indices whose attention logits to keep (None = all, () = none).
  """
  logit_layers = tuple(range(model.depth)) if logit_layers is None else tuple(logit_layers)
  kwargs = dict(return_attn_logits=logit_layers)
  if want_reps:
    kwargs.update(return_tokens=(model.depth - 1,), capture_intermediates=_capture_norms,
                  mutable=["intermediates"])
  result = model.apply({"params": params}, images, **kwargs)
  if not want_reps:
    return {"reps": [], "logits": result[1]["attn_logits"]}
  (_, aux), state = result
  inter = state["intermediates"]
  reps = [inter[f"blocks_{i}"]["norm1"]["__call__"][0] for i in range(model.depth)]
  reps.append(inter["norm"]["__call__"][0] if "norm" in inter else aux["tokens"][model.depth - 1])
  return {"reps": [r[:, 1:] if remove_cls else r for r in reps], "logits": aux["attn_logits"]}
