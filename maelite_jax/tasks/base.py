"""The objective contract: what a pre-training or fine-tuning method plugs into the one loop.

Think scenic's BaseModel, narrower. An objective is a class registered under a name
(`config.objective`, see `tasks.registry`) and built from the config alone. It never receives
the trainer, the mesh, the data pipeline or the workdir: the loop owns sharding, the optimizer,
gradient accumulation, checkpoints, logging and evaluation.

What it implements:
  init(rng, example) -> (params, extra)
      `extra` is state that is saved but not trained: BatchNorm statistics, an EMA / momentum
      encoder. `example` holds one example's arrays ({'image': (1, H, W, 3)}).
  loss(params, extra, batch, rng, step, frozen) -> (loss, (metrics, extra))
      Pure; differentiated w.r.t. params only. Runs per micro-batch.
and optionally:
  post_update(params, extra, step) -> extra
      After the optimizer update: an EMA (MoCo-v3's momentum encoder, fine-tuning's EMA).
  prepare_batch(rng, batch) -> batch
      Once per step on the *global* batch, before it is split into micro-batches: MAE's masking
      noise, mixup/cutmix and random erasing. Drawing them for the whole batch is what makes
      gradient accumulation give exactly the full-batch update.
  inference_params(params, extra) -> {variant: params}
      What evaluators and the best checkpoint see ('' = the main one; e.g. 'ema' as well, or
      the linear probe with its BatchNorm folded into the head).

What it declares as data:
  model        the flax module that `init` builds (used by evaluators: logits, features)
  spec         its ModelSpec (name + constructor arguments), written into checkpoint meta
  encoder_key  where the plain ViT lives in params: 'encoder', 'backbone' or '' (the whole
               tree); pre-trained weights (config.init) are mapped there
  fresh_keys   keys of the encoder tree never taken from another objective's checkpoint
               (a classifier's head and fc_norm)
  frozen       arrays the loss reads but never trains or saves (a distillation teacher) or None;
               the loop places them on the mesh and passes them into the jitted step
  frozen_regex parameter paths the optimizer never moves (lr 0, no weight decay)
  head         extra model arguments for the checkpoint meta (a segmentation head) or None
  checked_metrics  names of per-step metrics the loop reads back at log and checkpoint steps
               (no per-step host sync) and hands to `check_step(step, {name: value})`, which
               raises a UserError for data the objective cannot learn from (a classifier's
               labels >= num_classes); they are not logged
"""

from typing import Any

from maelite_jax.models.meta import ModelSpec


class Objective:
  """Base class with the optional hooks' defaults; see the module docstring."""
  name: str = ""
  model: Any = None
  spec: ModelSpec | None = None
  encoder_key: str = "encoder"
  fresh_keys: tuple[str, ...] = ()
  frozen: Any = None
  frozen_regex: str = ""
  head: dict | None = None
  checked_metrics: tuple[str, ...] = ()

  def init(self, rng, example) -> tuple[Any, dict]:
    raise NotImplementedError

  def loss(self, params, extra, batch, rng, step, frozen=None):
    raise NotImplementedError

  post_update = None  # (params, extra, step) -> extra, or None when there is nothing to update

  def prepare_batch(self, rng, batch) -> dict:
    del rng
    return batch

  def inference_params(self, params, extra) -> dict:
    del extra
    return {"": params}

  def check_step(self, step: int, values: dict) -> None:
    """Raises a UserError when one step's `checked_metrics` show unusable data."""
    del step, values

  def encoder_params(self, params):
    """The plain ViT tree inside this objective's params."""
    return params[self.encoder_key] if self.encoder_key else params
