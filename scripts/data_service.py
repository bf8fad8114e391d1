"""tf.data service dispatcher / worker (`python -m maelite_jax.commands.data_service`; see that module)."""

from maelite_jax.commands.data_service import main

if __name__ == "__main__":
  main()
