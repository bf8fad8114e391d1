"""Input pipelines: sources -> per-example ops (from config) -> global sharded jax.Arrays.

Two engines behind the same functions, chosen by `config.data.on_device`:
- tf.data (`pipeline.py`): any dataset size, JPEG decoding, a host worker pool;
- on-device (`on_device.py`): datasets that fit in memory live on the accelerator and are
  augmented there by jitted JAX, with no TensorFlow at all.
Nothing here imports TensorFlow until the tf.data engine is used.
"""


def _engine(data_cfg):
  if data_cfg.on_device:
    from maelite_jax.data import on_device
    return on_device
  from maelite_jax.data import pipeline
  return pipeline


def build_train_iterator(data_cfg, **kwargs):
  """Endless global training batches (see the engine's function of the same name)."""
  return _engine(data_cfg).build_train_iterator(data_cfg, **kwargs)


def build_eval_iterator(data_cfg, **kwargs):
  """One pass over an evaluation split, padded, with a 'mask' of real examples."""
  return _engine(data_cfg).build_eval_iterator(data_cfg, **kwargs)


def validate_data_config(data_cfg, image_size: int) -> None:
  """ConfigError (key, problem, fix) for a data config that cannot work; prepares nothing."""
  _engine(data_cfg).validate_data_config(data_cfg, image_size)


def num_examples(data_cfg, split) -> int:
  return _engine(data_cfg).num_examples(data_cfg, split)


def steps_per_epoch(data_cfg, global_batch_size: int, split=None) -> int:
  return num_examples(data_cfg, split or data_cfg.train_split) // global_batch_size


def make_source(data_cfg):
  """The tf.data source of data.dataset (class names for segmentation figures)."""
  from maelite_jax.data import pipeline
  return pipeline.make_source(data_cfg)
