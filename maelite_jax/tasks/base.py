"""The contract between an objective and the generic training loop.

The loop owns sharding, the optimizer, gradient accumulation, checkpoints and logging; a task
says how to initialise its params (and non-trained `extra` state such as BatchNorm statistics,
EMA weights or a frozen teacher), how to compute the loss, and how to draw the per-example random
arrays (e.g. MAE masking noise) for the *global* batch, so that splitting a batch into
micro-batches gives exactly the same update.
"""

from typing import Any


class Task:
  """Base class; subclasses implement the methods below."""
  model: Any
  model_meta: dict

  def init(self, rng, batch) -> tuple[Any, dict]:
    """Returns (params, extra). `batch` holds abstract or real example arrays."""
    raise NotImplementedError

  def per_example_random(self, rng, batch) -> dict:
    """Random arrays with a leading batch axis, added to the batch before micro-batching."""
    return {}

  def loss(self, params, extra, batch, rng, step, frozen=None) -> tuple[Any, tuple[dict, dict]]:
    """Returns (loss, (metrics, new_extra)). Pure; differentiated w.r.t. params only.

    `frozen` is the pytree from `frozen()` (e.g. teacher params), passed into the jitted step
    as an argument, sharded like params, never updated or checkpointed.
    """
    raise NotImplementedError

  def train_iterator(self, mesh, start_step: int):
    """Global training batches for a task with its own data (segmentation: image + label map);
    None = the loop's image pipeline."""
    return None

  def vis_batch(self, mesh) -> dict | None:
    """The batch `visualize` draws, for a task with its own data; None = the loop's."""
    return None

  def frozen(self) -> Any:
    """Arrays the loss reads but never trains or saves (a distillation teacher); default none."""
    return None

  def lr_multipliers(self, params) -> Any:
    """A tree of per-param lr factors (e.g. layer-wise lr decay), or None for all 1."""
    return None

  def adapt_pretrained(self, target: Any, loaded: Any, meta: dict) -> Any:
    """Maps params loaded via config.init onto this task's params (numpy trees).

    Default: an encoder-only checkpoint goes into the model's `encoder`, an MAE checkpoint's
    `encoder` into a plain ViT; everything else must match exactly (checked by the loop).
    """
    if "encoder" in target and "encoder" not in loaded:
      return dict(target, encoder=loaded)
    if "encoder" in loaded and "encoder" not in target:
      return loaded["encoder"]
    return loaded

  def evaluate(self, trainer, state, step) -> dict | None:
    """Periodic evaluation (every config.eval_every steps and at the end); returns scalars."""
    return None

  def after_update(self, params, extra, step) -> dict:
    """Updates `extra` after the optimizer step (e.g. an EMA); default keeps it."""
    return extra

  def visualize(self, params, extra, batch, out_path: str) -> str | None:
    """Writes a figure for humans (PNG) from one batch; returns its path or None."""
    return None
