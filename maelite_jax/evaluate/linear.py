"""Linear probing on cached frozen features (MAE's protocol, trained in seconds).

MAE probes with BatchNorm (no affine, eps 1e-6) + a Linear layer (weights N(0, 0.01)) on the
frozen cls feature, trained with LARS. With the features computed once, the BatchNorm is the
standardisation by the training set's mean and variance: its running statistics converge to
exactly those, and its batch statistics at MAE's batch of 16384 are within noise of them. What
is left out is the per-epoch RandomResizedCrop + flip of the images (a cached feature is one
centre view), so numbers can sit slightly below a full image-level probe.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from maelite_jax.evaluate.base import register
from maelite_jax.evaluate.frozen import FrozenFeatureEvaluator
from maelite_jax.objectives.classification import topk_correct
from maelite_jax.train import optim
from maelite_jax.utils.logs import Progress

BN_EPS = 1e-6


def standardizer(train_x, eps: float = BN_EPS):
  """(mean, scale) so that (x - mean) * scale is BatchNorm-without-affine at eval."""
  mean = np.mean(train_x, axis=0, dtype=np.float64)
  var = np.var(train_x, axis=0, dtype=np.float64)
  return mean.astype(np.float32), (1.0 / np.sqrt(var + eps)).astype(np.float32)


def init_head(rng, dim: int, num_classes: int, std: float = 0.01):
  """MAE: trunc_normal(std) weights, zero bias."""
  kernel = std * jax.random.truncated_normal(rng, -2.0 / std, 2.0 / std, (dim, num_classes))
  return {"kernel": kernel.astype(jnp.float32), "bias": jnp.zeros((num_classes,), jnp.float32)}


def logits(head, x):
  return x @ head["kernel"] + head["bias"]


def train_linear_probe(train_x, train_y, num_classes: int, optim_cfg, *, epochs: float,
                       batch_size: int, seed: int = 0, warmup_epochs: float | None = None):
  """Returns (head params, (mean, scale), per-epoch mean losses). `optim_cfg` is a
  config.optim-style ConfigDict (name 'lars' for MAE, 'sgd' or 'adamw'); the lr is
  base_lr * batch / lr_scale_batch with warm-up + cosine as in the training loop."""
  n, dim = train_x.shape
  batch_size = min(batch_size, n)
  steps_per_epoch = n // batch_size
  num_epochs = max(int(round(epochs)), 1)
  total = steps_per_epoch * num_epochs
  warm = optim_cfg.warmup_epochs if warmup_epochs is None else warmup_epochs
  schedule = optim.lr_schedule(optim_cfg, batch_size, total, int(warm * steps_per_epoch))
  mean, scale = standardizer(train_x)
  x = jnp.asarray((train_x - mean) * scale)
  y = jnp.asarray(train_y, jnp.int32)
  rng_init, rng_perm = jax.random.split(jax.random.key(seed))
  head = init_head(rng_init, dim, num_classes)
  tx = optim.build_optimizer(optim_cfg, schedule, head)
  opt_state = tx.init(head)

  def loss_fn(h, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(logits(h, xb), yb).mean()

  @jax.jit
  def epoch(carry, rng):
    order = jax.random.permutation(rng, n)[:steps_per_epoch * batch_size]
    order = order.reshape(steps_per_epoch, batch_size)

    def step(c, idx):
      h, s = c
      loss, g = jax.value_and_grad(loss_fn)(h, x[idx], y[idx])
      updates, s = tx.update(g, s, h)
      return (optax.apply_updates(h, updates), s), loss

    carry, losses = jax.lax.scan(step, carry, order)
    return carry, losses.mean()

  carry, history = (head, opt_state), []
  progress = Progress("linear probe", total=num_epochs, unit="epochs")
  for e in range(num_epochs):
    carry, loss = epoch(carry, jax.random.fold_in(rng_perm, e))
    history.append(float(loss))
    progress.update(1)
  return jax.device_get(carry[0]), (mean, scale), history


def probe_accuracy(head, norm, x, y) -> dict:
  """{'top1', 'top5'} of a trained probe on features x (standardised with the train stats)."""
  mean, scale = norm
  z = logits(head, jnp.asarray((x - mean) * scale))
  y = jnp.asarray(y, jnp.int32)
  return {"top1": float(topk_correct(z, y, 1).mean()), "top5": float(topk_correct(z, y, 5).mean())}


@register("linear")
class LinearEvaluator(FrozenFeatureEvaluator):
  """MAE's linear probe on cached frozen features (train on cfg.train_split, test on
  cfg.eval_split): cfg.epochs of cfg.optim at cfg.probe_batch_size; with cfg.baseline also on a
  random encoder."""
  protocol = "linear"
  reported = {"linear_top1": "top1", "linear_top5": "top5"}

  def score(self, train_x, train_y, test_x, test_y):
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head, norm, history = train_linear_probe(
        train_x, train_y, num_classes, self.cfg.optim, epochs=self.cfg.epochs,
        batch_size=self.cfg.probe_batch_size, seed=self.run_config.seed)
    acc = probe_accuracy(head, norm, test_x, test_y)
    logging.info("%s: probe loss %.4f -> %.4f over %d epochs", self.name, history[0],
                 history[-1], len(history))
    return {"linear_top1": acc["top1"], "linear_top5": acc["top5"],
            "linear_train_loss": float(history[-1])}

  def summary(self, scalars):
    line = f"linear probe top-1 {100 * scalars['linear_top1']:.1f} %"
    if "linear_top1_random" in scalars:
      line += f" (random init {100 * scalars['linear_top1_random']:.1f} %)"
    return line
