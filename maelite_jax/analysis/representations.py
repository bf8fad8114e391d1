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

import jax.numpy as jnp

from maelite_jax.models.registry import create_model, list_models
from maelite_jax.models.vit import VisionTransformer

VIT_FIELDS = frozenset(VisionTransformer.__dataclass_fields__) - {"parent", "name"}


def is_mae(meta: dict, params) -> bool:
  """An MAE (or D-MAE) checkpoint with its decoder, which can draw reconstructions. MoCo-v3
  checkpoints also keep their ViT under params['encoder'], so that alone does not decide."""
  return "decoder_pred" in params


def encoder_from_checkpoint(params, meta: dict, image_size: int | None = None):
  """(VisionTransformer, its params) from a checkpoint's (params, meta) of load_params.

  MAE checkpoints give their encoder: params["encoder"] and the ViT arguments that apply.
  `image_size` overrides the checkpoint's (fixed sin-cos positions are recomputed for it).
  """
  model_meta = meta.get("model") or {}
  name, kwargs = model_meta.get("name"), dict(model_meta.get("kwargs") or {})
  if not name:
    raise ValueError("checkpoint meta has no model name; it must come from scripts/pretrain.py, "
                     "a fine-tuning run or scripts/import_torch.py (which record meta['model'])")
  if "encoder" in params:
    params = params["encoder"]
  vit_kwargs = {k: v for k, v in kwargs.items() if k in VIT_FIELDS}
  if isinstance(vit_kwargs.get("dtype"), str):
    vit_kwargs["dtype"] = jnp.dtype(vit_kwargs["dtype"])
  if image_size:
    vit_kwargs["image_size"] = int(image_size)
  vit_name = name[len("mae_"):] if name.startswith("mae_") else name
  if vit_name in list_models():
    return create_model(vit_name, **vit_kwargs), params
  return VisionTransformer(**vit_kwargs), params


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
