"""Pre-training (MAE, MoCo-v3, D-MAE): the one training loop (`python -m maelite_jax.commands.train`; see that module for the flags)."""

from maelite_jax.commands.train import main

if __name__ == "__main__":
  main()
