"""Input pipelines: sources -> per-example ops (from config) -> global sharded jax.Arrays.

Importing this package registers the bundled `fashion_mnist_builtin` tfds dataset.
"""

from maelite_jax.data import fashion_mnist_builtin  # noqa: F401  (registers the tfds builder)
from maelite_jax.data.pipeline import build_eval_iterator
from maelite_jax.data.pipeline import build_train_iterator
from maelite_jax.data.pipeline import make_source
from maelite_jax.data.pipeline import num_examples
from maelite_jax.data.pipeline import steps_per_epoch
from maelite_jax.data.pipeline import validate_data_config

__all__ = [
    'build_eval_iterator', 'build_train_iterator', 'make_source', 'num_examples',
    'steps_per_epoch', 'validate_data_config',
]
