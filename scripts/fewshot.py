"""Ridge few-shot of a frozen encoder (the config's fewshot evaluator) (`python -m maelite_jax.commands.evaluate`; see that module for the flags)."""

from maelite_jax.commands.evaluate import fewshot

if __name__ == "__main__":
  fewshot()
