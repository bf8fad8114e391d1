"""The part k-NN, linear probe and few-shot share: a frozen encoder's features of two splits,
and the same protocol on a randomly initialised encoder as the floor (computed once per run and
cached in <workdir>/baselines.json, so a monitor that runs every N steps pays for it once)."""

import hashlib
import json
import os

import jax
from absl import logging

from maelite_jax.evaluate import features as feat_lib
from maelite_jax.evaluate.base import Evaluator, Result

BASELINES = "baselines.json"


class FrozenFeatureEvaluator(Evaluator):
  """Subclasses implement `score(train_x, train_y, test_x, test_y) -> scalars`; keys of the
  baseline's scalars get the suffix '_random'."""
  train_key, test_key = "train_split", "eval_split"

  def __init__(self, cfg, **kw):
    super().__init__(cfg, **kw)
    self.encoder = feat_lib.encoder_of(self.model.model)
    self.pool = cfg.pool
    self.splits = cfg[self.train_key], cfg[self.test_key]
    self.batch_size = cfg.batch_size

  def _features(self, params, what):
    kw = dict(pool=self.pool, batch_size=self.batch_size, mesh=self.mesh,
              progress=f"{self.name} ({what})")
    data = self.run_config.data
    x_tr, y_tr = self.features.get(self.encoder, params, data, split=self.splits[0], **kw)
    x_te, y_te = self.features.get(self.encoder, params, data, split=self.splits[1], **kw)
    return x_tr, y_tr, x_te, y_te

  def run(self, params, step):
    enc_params = self.model.encoder_params(params)
    scalars = self.score(*self._features(enc_params, f"step {step}"))
    if self.cfg.baseline:
      scalars.update({f"{k}_random": v for k, v in self._baseline().items()})
    return Result(scalars=scalars)

  def _baseline(self) -> dict:
    """This protocol on a random encoder of the same architecture (seed config.seed)."""
    spec = dict(type=self.type_name, cfg={k: str(self.cfg[k]) for k in self.cfg if k != "every"},
                encoder=repr(self.encoder), seed=self.run_config.seed,
                data=str(self.run_config.data.dataset))
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(self.workdir, BASELINES)
    stored = {}
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
    if key in stored:
      return stored[key]["scalars"]
    params = feat_lib.random_params(self.encoder, self.run_config.seed)
    scalars = self.score(*self._features(params, "random init"))
    scalars = {k: float(v) for k, v in scalars.items()}
    if jax.process_index() == 0:
      stored[key] = {"evaluator": self.name, "scalars": scalars}
      tmp = f"{path}.tmp"
      with open(tmp, "w") as f:
        json.dump(stored, f, indent=1)
      os.replace(tmp, path)
    logging.info("%s: random-init baseline %s (cached in %s)", self.name, scalars, path)
    return scalars

  def score(self, train_x, train_y, test_x, test_y) -> dict:
    raise NotImplementedError
