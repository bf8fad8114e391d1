"""The jitted training step: global-batch randomness, gradient accumulation, optimizer update.

The objective's `prepare_batch` (MAE's masking noise, mixup) runs on the whole global batch
before it is split into micro-batches, and micro-batch j takes the j-th contiguous slice of every
device's rows, so that it stays spread over all devices; the averaged gradients then equal one
full-batch step.
A NaN/Inf loss or gradient never reaches the params: the update is skipped inside the step and
flagged in the metrics (`nonfinite`), and the loop decides what to do (config.nonfinite_policy).
"""

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from maelite_jax.train import mesh as mesh_lib
from maelite_jax.train.mesh import DATA_AXIS

# XLA:CPU's default copy insertion copies every donated optimizer moment once per step (the
# non-finite guard reads the old moments after the update that overwrites them in place; ~350
# copies, ~45 ms of a ViT-Tiny CPU step). Its region analysis proves the order safe and drops them.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def parse_xla_options(text: str) -> dict:
  """config.xla_options ("--name=value --name2=value2", XLA_FLAGS' syntax, the '--' optional,
  or names of configs.common.XLA_OPTION_SETS) -> {name: value} for jax.jit's
  compiler_options. true/false become bools (XLA's option parser takes only Python's
  spelling); XLA parses the rest (ints, enum lists) and rejects unknown names or bad values
  when the step compiles."""
  from maelite_jax.configs.common import XLA_OPTION_SETS
  words = []
  for item in (text or "").split():  # a named set stands for its options
    words += XLA_OPTION_SETS.get(item, item).split()
  out = {}
  for item in words:
    name, eq, value = item.lstrip("-").partition("=")
    if not name or not eq:
      raise ValueError(f"{item!r} is not of the form --name=value")
    out[name] = {"true": True, "false": False}.get(value.lower(), value)
  return out


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  extra: dict
  # Non-finite guard ({'nonfinite_count', 'lr_scale'}), saved with the state so that a resumed
  # run keeps its count of skipped steps and any lr cut made by a rollback. {} = no guard state.
  guard: dict = flax.struct.field(default_factory=dict)


def new_guard() -> dict:
  return {"nonfinite_count": jnp.zeros((), jnp.int32), "lr_scale": jnp.ones((), jnp.float32)}


def _split_micro(x, k: int, mesh):
  """(B, ...) -> (k, B/k, ...): micro-batch j takes the j-th contiguous 1/k of every device's rows.

  Each device splits only its own rows, so the data sharding is kept without moving data, and
  on one device the split is a free reshape (a strided split copied the whole batch).
  """
  d = mesh.shape[DATA_AXIS]
  x = x.reshape((d, k, x.shape[0] // (d * k)) + x.shape[1:]).swapaxes(0, 1)
  x = x.reshape((k, x.shape[1] * x.shape[2]) + x.shape[3:])
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXIS)))


def make_train_step(objective, optimizer, mesh, *, accum_steps: int = 1, base_rng_seed: int = 0):
  """Returns step(state, batch, frozen) -> (state, metrics); rng = fold_in(key(seed), step)."""

  def step_fn(state: TrainState, batch, frozen=None):
    def loss_and_grad(params, extra, batch, rng, step):
      (loss, (metrics, extra)), grads = jax.value_and_grad(objective.loss, has_aux=True)(
          params, extra, batch, rng, step, frozen)
      return loss, grads, metrics, extra

    rng = jax.random.fold_in(jax.random.key(base_rng_seed), state.step)
    rng_example, rng_loss = jax.random.split(rng)
    batch = objective.prepare_batch(rng_example, batch)
    if accum_steps == 1:
      loss, grads, metrics, extra = loss_and_grad(state.params, state.extra, batch, rng_loss,
                                                  state.step)
    else:
      micro = jax.tree.map(lambda x: _split_micro(x, accum_steps, mesh), batch)

      def body(carry, xs):
        loss_acc, grads_acc, metrics_acc, extra = carry
        j, mb = xs
        loss, g, m, extra = loss_and_grad(state.params, extra, mb,
                                          jax.random.fold_in(rng_loss, j), state.step)
        add = lambda a, b: a + b / accum_steps
        return (add(loss_acc, loss), jax.tree.map(add, grads_acc, g),
                jax.tree.map(add, metrics_acc, m), extra), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      l_shape, _, m_shape, _ = jax.eval_shape(
          loss_and_grad, state.params, state.extra, jax.tree.map(lambda x: x[0], micro),
          rng_loss, state.step)
      zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
      (loss, grads, metrics, extra), _ = jax.lax.scan(
          body, (jnp.zeros(l_shape.shape, l_shape.dtype), zeros, zero_metrics, state.extra),
          (jnp.arange(accum_steps), micro))
    # Named scopes only label the ops (bench/profile.py's optimizer share); no effect on math.
    with jax.named_scope("optimizer"):
      grad_norm = optax.tree.norm(grads)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      guard = state.guard
      if "lr_scale" in guard:  # a rollback's lr cut: scaling the final update scales the lr
        updates = jax.tree.map(lambda u: u * guard["lr_scale"].astype(u.dtype), updates)
      params = optax.apply_updates(state.params, updates)
    if objective.post_update is not None:
      with jax.named_scope("post_update"):
        extra = objective.post_update(params, extra, state.step)
    with jax.named_scope("optimizer"):
      # A non-finite loss or gradient skips the whole update (params, optimizer moments and
      # count, the objective's extra state); the step still advances so the data moves on. The
      # loop applies the policy. A select, not lax.cond: on GPU a cond copies its predicate to
      # the host every step.
      keep = lambda new, old: jnp.where(finite, new, old)
      params, opt_state, extra = jax.tree.map(keep, (params, opt_state, extra),
                                              (state.params, state.opt_state, state.extra))
    bad = jnp.logical_not(finite)
    metrics = dict(metrics, grad_norm=grad_norm, nonfinite=bad.astype(jnp.float32))
    if "nonfinite_count" in guard:
      guard = dict(guard, nonfinite_count=guard["nonfinite_count"] + bad.astype(jnp.int32))
      metrics["nonfinite_total"] = guard["nonfinite_count"].astype(jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra,
                              guard=guard)
    return new_state, metrics

  return step_fn


def jit_train_step(step_fn, mesh, state_shardings, frozen_shardings, xla_options: str = ""):
  """jax.jit of a make_train_step function: sharded, state donated, CPU copy insertion tuned,
  plus the config's XLA options (config.xla_options, e.g. GPU fusion and command buffers)."""
  on_cpu = mesh.devices.flat[0].platform == "cpu"
  options = dict(CPU_COMPILER_OPTIONS if on_cpu else {}, **parse_xla_options(xla_options))
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh), frozen_shardings),
                 out_shardings=(state_shardings, mesh_lib.replicated(mesh)), donate_argnums=0,
                 compiler_options=options or None)
