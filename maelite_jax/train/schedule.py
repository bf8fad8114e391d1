"""Run-length arithmetic shared by the loop, the objectives and the tools (a leaf module).

Kept apart from the loop so that an objective whose schedule depends on the run length (MoCo-v3's
momentum) can read it without importing the trainer.
"""


def schedule_lengths(config) -> tuple[int, int]:
  """(total_steps, warmup_steps) of a run.

  total_steps > 0 wins over total_epochs; warmup_steps >= 0 wins over warmup_epochs. When the
  run length is given in steps but the warm-up in epochs, the warm-up keeps its fraction of the
  run (warmup_epochs / total_epochs), so shortening a recipe keeps its shape. Epochs count full
  global batches (the last partial batch is dropped, as in the reference).
  """
  total, warmup = config.total_steps, config.optim.warmup_steps
  if total <= 0:
    from maelite_jax import data  # reads the dataset's size: only for epoch-based runs
    steps_per_epoch = max(data.num_examples(config.data, config.data.train_split)
                          // config.batch_size, 1)
    total = int(config.total_epochs * steps_per_epoch)
    if warmup < 0:
      warmup = int(config.optim.warmup_epochs * steps_per_epoch)
  elif warmup < 0:
    warmup = int(round(total * config.optim.warmup_epochs / max(config.total_epochs, 1e-9)))
  return total, min(warmup, total)


def accumulation_steps(config) -> int:
  """Micro-batches per step: batch_size / micro_batch_size (0 = the whole batch at once)."""
  if not config.micro_batch_size or config.micro_batch_size >= config.batch_size:
    return 1
  return config.batch_size // config.micro_batch_size
