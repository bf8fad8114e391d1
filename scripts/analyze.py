"""Analysis figures: layer CKA, attention distance / entropy, maps, reconstructions (`python -m maelite_jax.commands.analyze`; see that module for the flags)."""

from maelite_jax.commands.analyze import main

if __name__ == "__main__":
  main()
