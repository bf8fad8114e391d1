"""Evaluators from config: one interface, chosen by `config.evals` (big_vision's idea).

  config.evals = {
      "knn": dict(type="knn", every=500, bank_split="train[:10000]", ...),
      "reconstruction": dict(type="reconstruction", every=500, num_images=8),
  }

Each entry names a `type` (a module of this package that registers an evaluator under that
name), how often it runs (`every` steps and at the end of training; 0 = only at the end; < 0 =
never, the entry is switched off) and its own keyword arguments. An evaluator is built once per run:

  Evaluator(cfg, *, name, run_config, model, mesh, workdir, features)

where `model` is what is evaluated: the run's objective during training, or a loaded checkpoint
offline (`LoadedEncoder`); evaluators use only `model.model` (the flax module), `encoder_params`
and, where they need them, `logits` / `reconstruct`. Then

  run(params, step) -> Result(scalars, images, details)

params being the objective's inference params. The loop (or scripts/evaluate.py offline) owns
what happens to results: metric writers (TensorBoard scalars and images, metrics.jsonl),
per-evaluation JSON lines, results.csv rows and best-checkpoint tracking.
"""

import dataclasses
from typing import Any

import numpy as np
from absl import logging

from maelite_jax.utils.errors import ConfigError
from maelite_jax.utils.registry import Registry

EVALUATORS = Registry("maelite_jax.evaluate", "config.evals.<name>.type",
                      skip=("base", "features", "frozen", "offline", "sweep"),
                      attribute="type_name")
register, available, get = EVALUATORS.register, EVALUATORS.available, EVALUATORS.get


@dataclasses.dataclass
class Result:
  """What one evaluation gives: scalars (logged, reported), images for TensorBoard
  ({name: uint8 (H, W, 3)}), and details written to <workdir>/<name>_eval.jsonl."""
  scalars: dict = dataclasses.field(default_factory=dict)
  images: dict = dataclasses.field(default_factory=dict)
  details: dict = dataclasses.field(default_factory=dict)


class Evaluator:
  """Base class. Subclasses set `protocol` (the results.csv label) and `reported` (the scalar
  keys that become results.csv rows, as metric names), and implement `run`."""
  type_name = ""
  protocol = ""
  reported: dict = {}          # scalar key -> metric name in results.csv
  per_variant = False          # also evaluate the objective's other inference params (EMA)

  def __init__(self, cfg, *, name: str, run_config, model, mesh, workdir: str, features):
    self.cfg, self.name, self.run_config = cfg, name, run_config
    self.model, self.mesh, self.workdir, self.features = model, mesh, workdir, features
    self.every = int(cfg.every)

  @property
  def enabled(self) -> bool:
    return self.every >= 0

  def due(self, step: int, final: bool) -> bool:
    return self.enabled and (final or (self.every > 0 and step % self.every == 0))

  def run(self, params, step: int) -> Result:
    raise NotImplementedError

  def summary(self, scalars: dict) -> str | None:
    """One human line for the end of a run (e.g. 'k-NN top-1 74.9 % (random init 61.6 %)')."""
    return None

  @property
  def dataset(self) -> str:
    return self.run_config.data.dataset

  def vis_batch(self, n: int, image_size: int, labels: bool = False) -> dict:
    """The first n eval images of this process (normalised; with their labels)."""
    import jax
    from maelite_jax import data as data_lib
    from maelite_jax.utils.arrays import local_rows, round_up
    it = data_lib.build_eval_iterator(
        self.run_config.data, image_size=image_size, mesh=self.mesh, limit=n,
        global_batch_size=round_up(n * jax.process_count(), self.mesh.size))
    batch = next(iter(it))
    out = {"image": local_rows(batch["image"])[:n]}
    if labels:
      out["label"] = local_rows(batch["label"])[:n]
    return out

  def rows(self, scalars: dict) -> list[tuple[str, str, float]]:
    """results.csv rows (pretrain label, metric, value): this model's reported scalars and,
    where measured, the random-init baseline's."""
    out = []
    for key, metric in self.reported.items():
      if key in scalars:
        out.append(("", metric, float(scalars[key])))
      if f"{key}_random" in scalars:
        out.append(("random-init", metric, float(scalars[f"{key}_random"])))
    return out


def host_params(params):
  """Params as host numpy arrays on every process (figures are drawn from them); sharded
  (FSDP) params are all-gathered first, which every process must call together."""
  import jax
  from jax.experimental import multihost_utils
  if jax.process_count() > 1 and not all(x.is_fully_replicated for x in jax.tree.leaves(params)):
    params = multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def publish_figure(path: str, latest: str) -> None:
  """Copies a step's figure to its 'latest' name (e.g. reconstruction.png) atomically."""
  import os
  import shutil
  tmp = f"{latest}.tmp.png"
  shutil.copyfile(path, tmp)
  os.replace(tmp, latest)


def _entry_kwargs(entry) -> dict:
  return {k: entry[k] for k in entry}


def build_evaluators(run_config, model, mesh, workdir: str, features) -> list[Evaluator]:
  """The evaluators of run_config.evals that are switched on (every >= 0), in config order."""
  out = []
  for name in run_config.evals:
    entry = run_config.evals[name]
    if "type" not in entry or "every" not in entry:
      raise ConfigError(f"config.evals.{name}: needs 'type' and 'every' (and the type's "
                        f"keyword arguments); got {sorted(_entry_kwargs(entry))}.")
    if entry.every < 0:
      continue
    cls = get(entry.type)
    out.append(cls(entry, name=name, run_config=run_config, model=model, mesh=mesh,
                   workdir=workdir, features=features))
  return out


class EvalSuite:
  """Runs the due evaluators on the objective's inference params; one feature cache per round
  (k-NN and the linear probe of the same step share one pass over the data)."""

  def __init__(self, evaluators: list[Evaluator], features):
    self.evaluators = evaluators
    self.features = features

  def __bool__(self):
    return bool(self.evaluators)

  def run(self, variants: dict[str, Any], step: int, final: bool) -> dict[str, Result]:
    """{evaluator name: Result}; other variants' scalars are prefixed ('ema_top1')."""
    out = {}
    try:
      for ev in self.evaluators:
        if not ev.due(step, final):
          continue
        result = ev.run(variants[""], step)
        if ev.per_variant:
          for variant, params in variants.items():
            if variant:
              extra = ev.run(params, step)
              result.scalars.update({f"{variant}_{k}": v for k, v in extra.scalars.items()})
        out[ev.name] = result
        logging.info("eval %s at step %d: %s", ev.name, step,
                     {k: round(float(v), 5) for k, v in result.scalars.items()
                      if np.ndim(v) == 0})
    finally:
      self.features.clear()
    return out
