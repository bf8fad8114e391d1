"""Weighted k-NN of a frozen encoder (the config's knn evaluator) (`python -m maelite_jax.commands.evaluate`; see that module for the flags)."""

from maelite_jax.commands.evaluate import knn

if __name__ == "__main__":
  knn()
