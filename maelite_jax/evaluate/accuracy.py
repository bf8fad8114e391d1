"""Top-1 / top-5 over a whole eval split, exact whatever the batch size and device count.

The eval iterator pads the last batch with mask-0 examples; counts are integer sums weighted by
the mask, reduced on the devices to replicated scalars (so every process can read them) and
added up on the host, so no example is dropped or counted twice.
"""

import jax
import jax.numpy as jnp

from maelite_jax import data as data_lib
from maelite_jax.objectives.classification import masked_counts
from maelite_jax.train import mesh as mesh_lib


def round_up(n: int, k: int) -> int:
  return (n + k - 1) // k * k


def make_count_fn(logits_fn, mesh):
  """jit(params, batch) -> replicated integer counts {'correct1', 'correct5', 'count'}."""
  def counts(params, batch):
    return masked_counts(logits_fn(params, batch["image"]), batch["label"], batch["mask"])
  return jax.jit(counts, out_shardings=mesh_lib.replicated(mesh))


def accuracy_from_batches(count_fn, params, batches) -> dict:
  """Sums counts over `batches`; returns {'top1', 'top5', 'count'}."""
  total = {"correct1": 0, "correct5": 0, "count": 0}
  for batch in batches:
    for k, v in jax.device_get(count_fn(params, batch)).items():
      total[k] += int(v)
  n = max(total["count"], 1)
  return {"top1": total["correct1"] / n, "top5": total["correct5"] / n, "count": total["count"]}


def evaluate_classifier(logits_fn, params, data_cfg, *, image_size: int, batch_size: int, mesh,
                        split: str | None = None, count_fn=None) -> dict:
  """top-1/top-5 of `logits_fn(params, images)` on a split (default: data.eval_split).

  batch_size is rounded up to a multiple of the device count. Pass a `count_fn` made once by
  `make_count_fn` to avoid re-tracing on periodic evaluations.
  """
  batches = data_lib.build_eval_iterator(
      data_cfg, image_size=image_size, global_batch_size=round_up(batch_size, mesh.size),
      mesh=mesh, split=split)
  count_fn = count_fn or make_count_fn(logits_fn, mesh)
  return accuracy_from_batches(count_fn, params, batches)


def logits_of(model):
  """logits_fn for a flax classifier (eval mode: no drop path)."""
  def fn(params, images):
    return model.apply({"params": params}, images, train=False)[0].astype(jnp.float32)
  return fn
