"""The jitted training step: per-example randomness, gradient accumulation, optimizer update.

Per-example random arrays (e.g. MAE masking noise) are drawn for the whole global batch before
it is split into micro-batches, and micro-batch j takes rows j, j+k, j+2k, ... so that every
micro-batch stays spread over all devices; the averaged gradients then equal one full-batch step.
"""

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from maelite_jax.train.mesh import DATA_AXIS


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  extra: dict


def _split_micro(x, k: int, mesh):
  """(B, ...) -> (k, B/k, ...) with micro-batch j = rows j::k (keeps the data sharding)."""
  x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXIS)))


def make_train_step(task, optimizer, mesh, *, accum_steps: int = 1, base_rng_seed: int = 0):
  """Returns step(state, batch) -> (state, metrics); rng = fold_in(key(seed), step)."""

  def step_fn(state: TrainState, batch, frozen=None):
    def loss_and_grad(params, extra, batch, rng, step):
      (_, (metrics, extra)), grads = jax.value_and_grad(task.loss, has_aux=True)(
          params, extra, batch, rng, step, frozen)
      return grads, metrics, extra

    rng = jax.random.fold_in(jax.random.key(base_rng_seed), state.step)
    rng_example, rng_loss = jax.random.split(rng)
    batch = dict(batch, **task.per_example_random(rng_example, batch))
    if accum_steps == 1:
      grads, metrics, extra = loss_and_grad(state.params, state.extra, batch, rng_loss, state.step)
    else:
      micro = jax.tree.map(lambda x: _split_micro(x, accum_steps, mesh), batch)

      def body(carry, xs):
        grads_acc, metrics_acc, extra = carry
        j, mb = xs
        g, m, extra = loss_and_grad(state.params, extra, mb, jax.random.fold_in(rng_loss, j),
                                    state.step)
        add = lambda a, b: a + b / accum_steps
        return (jax.tree.map(add, grads_acc, g), jax.tree.map(add, metrics_acc, m), extra), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      _, m_shape, _ = jax.eval_shape(loss_and_grad, state.params, state.extra,
                                     jax.tree.map(lambda x: x[0], micro), rng_loss, state.step)
      zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
      (grads, metrics, extra), _ = jax.lax.scan(
          body, (zeros, zero_metrics, state.extra), (jnp.arange(accum_steps), micro))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = task.after_update(params, extra, state.step)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra)
    return new_state, metrics

  return step_fn
