"""A run from a config: the objective (config.objective), its evaluators (config.evals) and the
one loop, put together. What every training entry point calls (pretrain, finetune, segment,
sweeps, the reproduction study)."""

from maelite_jax.evaluate import base as eval_base
from maelite_jax.evaluate.features import FeatureCache
from maelite_jax.tasks import registry
from maelite_jax.train.loop import Trainer


def evaluator_factory(config, workdir: str):
  """make_evaluators(mesh, objective) for the Trainer: config.evals on the run's mesh."""
  def make(mesh, objective):
    features = FeatureCache()
    return eval_base.EvalSuite(
        eval_base.build_evaluators(config, objective, mesh, workdir, features), features)
  return make


def build_trainer(config, workdir: str, devices=None) -> Trainer:
  return Trainer(config, workdir, registry.build, evaluator_factory(config, workdir), devices)


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  """Trains (resuming when the workdir has checkpoints) and returns the final metrics."""
  return build_trainer(config, workdir, devices).run()
