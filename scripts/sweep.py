"""Transfer sweep over base lr x layer decay, chosen on a validation split (`python -m maelite_jax.commands.sweep`; see that module for the flags)."""

from maelite_jax.commands.sweep import main

if __name__ == "__main__":
  main()
