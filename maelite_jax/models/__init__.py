"""Model registry: `create_model(name, **overrides)` builds any ViT / MAE variant by name."""

from maelite_jax.models.registry import create_model, list_models, model_kwargs  # noqa: F401
