"""Named model variants (REFERENCE.md's table) and the factory that builds them."""

import jax.numpy as jnp

from maelite_jax.models.mae import MaskedAutoencoder
from maelite_jax.models.vit import VisionTransformer

_VIT = {
    # MAE-Lite's ViT-Tiny uses 12 heads of width 16, not timm's stock 3.
    "vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=12, patch_size=16),
    "vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16),
    "vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
}
_MAE = {
    "mae_vit_tiny_patch16": dict(_VIT["vit_tiny_patch16"], decoder_embed_dim=96,
                                 decoder_depth=1, decoder_num_heads=3),
    "mae_vit_small_patch16": dict(_VIT["vit_small_patch16"], decoder_embed_dim=256,
                                  decoder_depth=4, decoder_num_heads=8),
    "mae_vit_base_patch16": dict(_VIT["vit_base_patch16"], decoder_embed_dim=512,
                                 decoder_depth=8, decoder_num_heads=16),
}


def list_models() -> list[str]:
  return sorted(_VIT) + sorted(_MAE)


def model_kwargs(name: str, **overrides) -> dict:
  """The constructor arguments of a named variant with overrides applied (None = keep)."""
  table = _VIT if name in _VIT else _MAE if name in _MAE else None
  if table is None:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
  kwargs = dict(table[name])
  cls = VisionTransformer if table is _VIT else MaskedAutoencoder
  fields = set(cls.__dataclass_fields__) - {"parent", "name"}
  for key, value in overrides.items():
    if key not in fields:
      raise ValueError(f"{name} has no argument {key!r}; valid: {', '.join(sorted(fields))}")
    if value is not None:
      kwargs[key] = value
  return kwargs


def compute_options(model_cfg) -> dict:
  """A model config's speed switches, shared by every task: compute dtype, attention kernel,
  scanned blocks and remat. None changes the params; all are tested equal to the plain path."""
  return dict(dtype=jnp.dtype(model_cfg.dtype), attention_impl=model_cfg.attention_impl,
              scan_blocks=model_cfg.get("scan_blocks", False), remat=model_cfg.get("remat", False))


def create_model(name: str, **overrides):
  """Builds a flax module, e.g. create_model('mae_vit_tiny_patch16', image_size=32, patch_size=4)."""
  kwargs = model_kwargs(name, **overrides)
  cls = VisionTransformer if name in _VIT else MaskedAutoencoder
  return cls(**kwargs)
