"""Tasks adapt a pure objective to the one training loop (see `base.Task`)."""

from maelite_jax.tasks.base import Task  # noqa: F401


def build_task(config) -> "Task":
  """The task named by config.objective."""
  if config.objective == "mae":
    from maelite_jax.tasks.mae import MAETask
    return MAETask(config)
  raise ValueError(f"config.objective={config.objective!r} is unknown; available: 'mae'")
