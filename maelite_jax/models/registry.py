"""Named model variants (REFERENCE.md's table) and the factory that builds them."""

from maelite_jax.models.mae import MaskedAutoencoder
from maelite_jax.models.vit import VisionTransformer

_VIT = {
    # MAE-Lite's ViT-Tiny and ViT-Small use 12 heads (of width 16 and 32), not timm's 3 and 6.
    "vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=12, patch_size=16),
    "vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=12, patch_size=16),
    "vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
}
_MAE = {
    "mae_vit_tiny_patch16": dict(_VIT["vit_tiny_patch16"], decoder_embed_dim=96,
                                 decoder_depth=1, decoder_num_heads=3),
    # MAE-Lite's models_mae.py: a light decoder for Small too (192 wide, 1 block, 6 heads).
    "mae_vit_small_patch16": dict(_VIT["vit_small_patch16"], decoder_embed_dim=192,
                                  decoder_depth=1, decoder_num_heads=6),
    "mae_vit_base_patch16": dict(_VIT["vit_base_patch16"], decoder_embed_dim=512,
                                 decoder_depth=8, decoder_num_heads=16),
}


def list_models() -> list[str]:
  return sorted(_VIT) + sorted(_MAE)


def model_class(name: str):
  """VisionTransformer or MaskedAutoencoder, by the variant's table."""
  if name in _VIT:
    return VisionTransformer
  if name in _MAE:
    return MaskedAutoencoder
  raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def constructor_fields(name: str) -> frozenset:
  """The constructor arguments of a named variant's class."""
  return frozenset(model_class(name).__dataclass_fields__) - {"parent", "name"}


def model_kwargs(name: str, **overrides) -> dict:
  """The constructor arguments of a named variant with overrides applied (None = keep)."""
  cls = model_class(name)
  kwargs = dict((_VIT if cls is VisionTransformer else _MAE)[name])
  fields = constructor_fields(name)
  for key, value in overrides.items():
    if key not in fields:
      raise ValueError(f"{name} has no argument {key!r}; valid: {', '.join(sorted(fields))}")
    if value is not None:
      kwargs[key] = value
  return kwargs


def create_model(name: str, **overrides):
  """Builds a flax module, e.g. create_model('mae_vit_tiny_patch16', image_size=32, patch_size=4)."""
  return model_class(name)(**model_kwargs(name, **overrides))
