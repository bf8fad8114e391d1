"""Entry points: `python -m maelite_jax.commands.<name>` or the console scripts of
pyproject.toml (maelite-pretrain, ...); scripts/<name>.py are thin wrappers of the same."""
