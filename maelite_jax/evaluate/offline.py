"""The evaluators of a config run offline on one checkpoint (or a random encoder).

What scripts/knn.py, linprobe.py, fewshot.py and evaluate.py call: the encoder of config.init
(any checkpoint of this project, head dropped) or, with config.init = '', a randomly
initialised encoder of config.model (the baseline); the same evaluator classes the training
loop runs as monitors; features cached on disk in <workdir>/features and shared; one
results.csv row per reported metric; one summary line per evaluator.
"""

import os

import jax
import numpy as np
from absl import logging

from maelite_jax.evaluate import base as eval_base
from maelite_jax.evaluate import features as feat_lib
from maelite_jax.models.meta import ModelSpec, vit_name
from maelite_jax.train import checkpoint as ckpt_lib
from maelite_jax.train import mesh as mesh_lib
from maelite_jax.train import metrics as metrics_lib
from maelite_jax.train import results as results_lib


class LoadedEncoder:
  """What evaluators need of a model, for a plain ViT encoder (a checkpoint's or a random one)."""
  encoder_key = ""

  def __init__(self, model, name: str):
    self.model, self.name = model, name

  def encoder_params(self, params):
    return params


def load(config):
  """(LoadedEncoder, params, model name, pretrain label, step) for config.init (step 0 for the
  random encoder)."""
  if config.init:
    model, params, meta = ckpt_lib.load_encoder(config.init, config.model.image_size)
    label = f"{meta.objective or 'imported'}:{config.init}"
    return (LoadedEncoder(model, meta.objective), params, vit_name(meta.model.name), label,
            ckpt_lib.checkpoint_step(config.init))
  m = config.model
  spec = ModelSpec(vit_name(m.name), {k: m[k] for k in ("image_size", "patch_size", "depth")
                                      if m[k] is not None})
  model = spec.build()
  return (LoadedEncoder(model, "random-init"), feat_lib.random_params(model, config.seed),
          spec.name, "random-init", 0)


def evaluate_checkpoint(config, workdir: str, names=None, mesh=None) -> dict:
  """Runs config.evals (or the entries in `names`) on config.init; returns {name: scalars}.
  Scalars and images also go to TensorBoard events in the workdir at the checkpoint's step."""
  mesh = mesh or mesh_lib.make_mesh()
  target, params, model_name, label, step = load(config)
  params = jax.device_put(params, mesh_lib.replicated(mesh))
  features = feat_lib.FeatureCache(os.path.join(workdir, "features")
                                   if config.cache_features else None)
  evaluators = [ev for ev in eval_base.build_evaluators(config, target, mesh, workdir, features)
                if names is None or ev.name in names]
  writer = metrics_lib.event_writer(workdir)
  out, rows = {}, []
  try:
    for ev in evaluators:
      result = ev.run(params, step)
      scalars = result.scalars
      out[ev.name] = scalars
      metrics_lib.write_events(writer, step, scalars, result.images)
      for pretrain, metric, value in ev.rows(scalars):
        rows.append(dict(model=model_name, pretrain=pretrain or label, protocol=ev.protocol,
                         dataset=ev.dataset, metric=metric, value=value, step=step))
      line = ev.summary(scalars)
      logging.info("%s of %s: %s", ev.name, label, line or {
          k: round(float(v), 5) for k, v in scalars.items() if np.ndim(v) == 0})
  finally:
    if writer is not None:
      writer.close()
  results_lib.append_rows(workdir, rows)
  features.clear()
  return out
