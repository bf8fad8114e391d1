"""Linear probe on cached frozen features (the config's linear evaluator) (`python -m maelite_jax.commands.evaluate`; see that module for the flags)."""

from maelite_jax.commands.evaluate import linear

if __name__ == "__main__":
  linear()
