"""maelite-jax: self-supervised pre-training of lightweight ViTs (MAE-Lite) in JAX/Flax."""

__version__ = "0.3.0"
