"""Offline evaluation of a checkpoint: the config's evaluators (+ a fine-tune) (`python -m maelite_jax.commands.evaluate`; see that module for the flags)."""

from maelite_jax.commands.evaluate import main

if __name__ == "__main__":
  main()
