"""Model registry: `create_model(name, **overrides)` builds any ViT / MAE variant by name."""

from maelite_jax.models.registry import (compute_options, create_model, list_models,  # noqa: F401
                                         model_kwargs)
