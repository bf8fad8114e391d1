"""Flax models (ViT with timm's names, MAE, heads, segmentation) and how to build them by name
(`registry`) or from a config / checkpoint meta (`meta`)."""

from maelite_jax.models.registry import create_model, list_models, model_kwargs  # noqa: F401
