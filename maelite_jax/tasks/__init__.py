"""Tasks adapt a pure objective to the one training loop (see `base.Task`)."""

from maelite_jax.tasks.base import Task  # noqa: F401


def build_task(config) -> "Task":
  """The task named by config.objective."""
  if config.objective == "classification":
    from maelite_jax.tasks.classification import ClassificationTask
    return ClassificationTask(config)
  if config.objective == "mae":
    from maelite_jax.tasks.mae import MAETask
    return MAETask(config)
  if config.objective == "dmae":
    from maelite_jax.tasks.dmae import DMAETask
    return DMAETask(config)
  if config.objective == "mocov3":
    from maelite_jax.tasks.mocov3 import MoCoV3Task
    return MoCoV3Task(config)
  if config.objective == "segmentation":
    from maelite_jax.tasks.segmentation import SegmentationTask
    return SegmentationTask(config)
  raise ValueError(f"config.objective={config.objective!r} is unknown; available: 'mae', 'dmae', "
                   "'mocov3', 'classification', 'segmentation'")
