"""Benchmark the training step (and input pipeline) against PyTorch (`python -m maelite_jax.commands.benchmark`; see that module for the flags)."""

from maelite_jax.commands.benchmark import main

if __name__ == "__main__":
  main()
