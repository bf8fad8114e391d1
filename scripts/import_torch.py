"""Import PyTorch weights (MAE-Lite, MAE, MoCo-v3, timm) as a checkpoint (`python -m maelite_jax.commands.import_torch`; see that module for the flags)."""

from maelite_jax.commands.import_torch import main

if __name__ == "__main__":
  main()
