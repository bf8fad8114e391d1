"""The paper's comparisons at small scale in one command (`python -m maelite_jax.commands.reproduce`; see that module for the flags)."""

from maelite_jax.commands.reproduce import main

if __name__ == "__main__":
  main()
