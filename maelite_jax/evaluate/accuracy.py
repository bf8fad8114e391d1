"""Top-1 / top-5 of a classifier over a whole eval split, exact whatever the batch size and
device count (the `accuracy` evaluator: fine-tuning, transfer, the image-level linear probe).

The eval iterator pads the last batch with mask-0 examples; counts are integer sums weighted by
the mask, reduced on the devices to replicated scalars (so every process can read them) and
added up on the host, so no example is dropped or counted twice.
"""

import jax

from maelite_jax import data as data_lib
from maelite_jax.evaluate.base import Evaluator, Result, register
from maelite_jax.objectives.classification import masked_counts
from maelite_jax.train import mesh as mesh_lib
from maelite_jax.utils.arrays import round_up
from maelite_jax.utils.logs import Progress


def make_count_fn(logits_fn, mesh):
  """jit(params, batch) -> replicated integer counts {'correct1', 'correct5', 'count'}."""
  def counts(params, batch):
    return masked_counts(logits_fn(params, batch["image"]), batch["label"], batch["mask"])
  return jax.jit(counts, out_shardings=mesh_lib.replicated(mesh))


def accuracy_from_batches(count_fn, params, batches, progress: Progress | None = None) -> dict:
  """Sums counts over `batches`; returns {'top1', 'top5', 'count'}."""
  total = {"correct1": 0, "correct5": 0, "count": 0}
  for batch in batches:
    counts = jax.device_get(count_fn(params, batch))
    for k, v in counts.items():
      total[k] += int(v)
    if progress is not None:
      progress.update(int(counts["count"]))
  n = max(total["count"], 1)
  return {"top1": total["correct1"] / n, "top5": total["correct5"] / n, "count": total["count"]}


def evaluate_classifier(count_fn, params, data_cfg, *, image_size: int, batch_size: int, mesh,
                        split: str | None = None) -> dict:
  """top-1/top-5 of `count_fn` (from make_count_fn) on a split (default: data.eval_split);
  batch_size is rounded up to a multiple of the device count."""
  batches = data_lib.build_eval_iterator(
      data_cfg, image_size=image_size, global_batch_size=round_up(batch_size, mesh.size),
      mesh=mesh, split=split)
  split = split or data_cfg.eval_split
  progress = Progress(f"accuracy on {split}", total=data_lib.num_examples(data_cfg, split))
  return accuracy_from_batches(count_fn, params, batches, progress)


@register("accuracy")
class AccuracyEvaluator(Evaluator):
  """The classifier's top-1 / top-5 on cfg.split ('' = data.eval_split); also for the
  objective's other inference params (an EMA: 'ema_top1')."""
  reported = {"top1": "top1", "top5": "top5"}
  per_variant = True

  def __init__(self, cfg, **kw):
    super().__init__(cfg, **kw)
    self.count_fn = make_count_fn(self.model.logits, self.mesh)

  @property
  def protocol(self):
    return self.run_config.protocol

  def run(self, params, step):
    res = evaluate_classifier(self.count_fn, params, self.run_config.data,
                              image_size=self.run_config.model.image_size,
                              batch_size=self.cfg.batch_size, mesh=self.mesh,
                              split=self.cfg.split or None)
    return Result(scalars={"top1": res["top1"], "top5": res["top5"]})

  def summary(self, scalars):
    return f"top-1 {100 * scalars['top1']:.2f} %, top-5 {100 * scalars['top5']:.2f} %"
