"""Everything the jitted training step needs, built once from (config, objective, mesh).

The optimizer with its lr schedule and per-parameter factors, the train state's shardings and
abstract shape, its initialisation, the frozen arrays on the mesh, and the jitted, donated step.
The training loop and the benchmark both build their step here, so the benchmark times exactly
the step that training runs (non-finite guard and lr-scale path included).
"""

import jax
import jax.numpy as jnp

from maelite_jax.train import mesh as mesh_lib
from maelite_jax.train import optim
from maelite_jax.train.pretrained import resolve_layer_decay
from maelite_jax.train.schedule import accumulation_steps
from maelite_jax.train.step import TrainState, jit_train_step, make_train_step, new_guard


def example_batch(config) -> dict:
  """One example's arrays, for shapes at init: {'image': (1, S, S, 3)}."""
  s = config.model.image_size
  return {"image": jnp.zeros((1, s, s, 3), jnp.float32)}


class StepProgram:
  """The step of one run: `init_state(rng)` and `train_step(state, batch, frozen)`."""

  def __init__(self, config, objective, mesh, *, total_steps: int, warmup_steps: int):
    self.config, self.objective, self.mesh = config, objective, mesh
    self.accum = accumulation_steps(config)
    self.schedule = optim.lr_schedule(config.optim, config.batch_size, total_steps, warmup_steps)
    example = example_batch(config)
    params_shape, _ = jax.eval_shape(lambda r: objective.init(r, example), jax.random.key(0))
    self.layer_decay = resolve_layer_decay(config.optim, config.init)
    factors = optim.lr_multipliers(params_shape, layer_decay=self.layer_decay,
                                   frozen_regex=objective.frozen_regex)
    self.optimizer = optim.build_optimizer(config.optim, self.schedule, params_shape, factors)

    def init_state(rng):
      params, extra = objective.init(rng, example)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.optimizer.init(params), extra=extra, guard=new_guard())

    abstract = jax.eval_shape(init_state, jax.random.key(0))
    self.state_shardings = mesh_lib.state_shardings(abstract, mesh, config.fsdp_regex)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_shardings)
    self._init = jax.jit(init_state, out_shardings=self.state_shardings)
    # Frozen arrays (e.g. a distillation teacher) are arguments, never part of the saved state.
    self.frozen_shardings = mesh_lib.state_shardings(objective.frozen, mesh, config.fsdp_regex)
    self.frozen = jax.device_put(objective.frozen, self.frozen_shardings)
    step_fn = make_train_step(objective, self.optimizer, mesh, accum_steps=self.accum,
                              base_rng_seed=config.seed)
    self.train_step = jit_train_step(step_fn, mesh, self.state_shardings, self.frozen_shardings,
                                     config.get("xla_options", ""))

  def init_state(self, rng=None) -> TrainState:
    """A fresh state in its shardings (rng default: key(config.seed))."""
    return self._init(jax.random.key(self.config.seed) if rng is None else rng)

  def state_bytes(self) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.abstract_state))
