"""Export a checkpoint to PyTorch (timm ViT or reference MAE) (`python -m maelite_jax.commands.export_torch`; see that module for the flags)."""

from maelite_jax.commands.export_torch import main

if __name__ == "__main__":
  main()
