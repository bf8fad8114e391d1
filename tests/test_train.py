"""The generic loop on MAE: sharding invariance, exact resume, accumulation, config errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maelite_jax.configs import mae_tiny
from maelite_jax.tasks.base import Objective
from maelite_jax.run import build_trainer
from maelite_jax.train.schedule import schedule_lengths
from maelite_jax.utils.errors import ConfigError
from tests.helpers import leaves, override, read_losses


def tiny_config(**overrides):
  # Adam turns a gradient of pure rounding noise (~1e-10, e.g. of a bias whose exact gradient
  # is 0) into a full +-lr step, so float reordering across devices would flip such updates.
  # A larger eps keeps Adam's behaviour on real gradients and makes the comparisons meaningful.
  defaults = {"total_steps": 4, "optim.warmup_steps": 2, "log_every": 1, "checkpoint_every": 2,
              "optim.base_lr": 5e-3, "optim.eps": 1e-6}
  return override(mae_tiny.get_config("tiny"), **{**defaults, **overrides})


@pytest.fixture(scope="module")
def run_8dev(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("dev8"))
  trainer = build_trainer(tiny_config(), workdir)
  trainer.run()
  return trainer, workdir


def test_state_is_created_sharded_over_8_devices(run_8dev):
  trainer, _ = run_8dev
  assert trainer.mesh.size == 8
  kernel = trainer.state.params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert len(kernel.sharding.device_set) == 8


def test_8_devices_equal_1_device(run_8dev, tmp_path):
  trainer8, workdir8 = run_8dev
  trainer1 = build_trainer(tiny_config(), str(tmp_path), devices=jax.devices()[:1])
  trainer1.run()
  l1, l8 = read_losses(str(tmp_path)), read_losses(workdir8)
  assert sorted(l1) == [1, 2, 3, 4]
  np.testing.assert_allclose([l1[s] for s in sorted(l1)], [l8[s] for s in sorted(l8)], rtol=1e-5)
  for a, b in zip(leaves(trainer1.state.params), leaves(trainer8.state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fsdp_sharding_equals_data_parallel(run_8dev, tmp_path):
  trainer8, workdir8 = run_8dev
  trainer = build_trainer(tiny_config(fsdp_regex=".*"), str(tmp_path))
  qkv = trainer.program.state_shardings.params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert "data" in tuple(qkv.spec)  # really sharded, not replicated
  trainer.run()
  np.testing.assert_allclose(list(read_losses(str(tmp_path)).values()),
                             list(read_losses(workdir8).values()), rtol=1e-5)
  for a, b in zip(leaves(trainer.state.params), leaves(trainer8.state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_interrupted_run_resumes_on_the_same_trajectory(run_8dev, tmp_path):
  trainer8, workdir8 = run_8dev
  workdir = str(tmp_path)
  build_trainer(tiny_config(), workdir).run(stop_at=2)  # as if preempted after step 2
  assert sorted(read_losses(workdir)) == [1, 2]
  second = build_trainer(tiny_config(), workdir)
  second.run()
  got = read_losses(workdir)
  want = read_losses(workdir8)
  np.testing.assert_allclose([got[s] for s in sorted(want)], [want[s] for s in sorted(want)],
                             rtol=1e-6)
  for a, b in zip(leaves(second.state.params), leaves(trainer8.state.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_gradient_accumulation_gives_the_same_update(run_8dev, tmp_path):
  trainer8, workdir8 = run_8dev
  trainer = build_trainer(tiny_config(micro_batch_size=8), str(tmp_path))
  assert trainer.program.accum == 4
  trainer.run()
  np.testing.assert_allclose(list(read_losses(str(tmp_path)).values()),
                             list(read_losses(workdir8).values()), rtol=1e-5)
  for a, b in zip(leaves(trainer.state.params), leaves(trainer8.state.params)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_schedule_lengths_keep_warmup_fraction():
  config = mae_tiny.get_config()
  with config.unlocked():
    config.total_steps = 1000
  assert schedule_lengths(config) == (1000, 100)  # 40 of 400 epochs


@pytest.mark.parametrize("key,value,match", [
    ("model.image_size", 30, "not a positive multiple of model.patch_size"),
    ("batch_size", 20, "not divisible by the 8 devices"),
    ("micro_batch_size", 12, "does not divide batch_size"),
    ("data.dataset", "no_such_dataset_xyz", "config.data"),
    ("init", "/nonexistent/ckpt", "does not exist"),
    ("model.attention_impl", "cudnn", "needs a CUDA GPU"),
    ("model.attention_pad", -8, "not an integer >= 0"),
    ("xla_options", "--xla_gpu_no_such_option=1", "No such compile option"),
    ("xla_options", "--xla_gpu_enable_triton_gemm=maybe", "not a valid bool"),
])
def test_bad_config_fails_before_compilation_with_a_named_key(key, value, match, tmp_path):
  with pytest.raises(ConfigError, match=match):
    build_trainer(tiny_config(**{key: value}), str(tmp_path))


def test_unknown_config_key_is_rejected():
  config = mae_tiny.get_config("tiny")
  with pytest.raises(AttributeError, match="batch_sise"):
    config.batch_sise = 3


class _LinearObjective(Objective):
  """The smallest objective make_train_step accepts: a linear map with a squared loss."""

  def loss(self, params, extra, batch, rng, step, frozen):
    return jnp.mean((batch["image"] @ params["w"]) ** 2), ({}, extra)


@pytest.mark.parametrize("accum", [1, 2])
def test_cpu_train_step_updates_the_donated_state_in_place(accum):
  # XLA:CPU's default copy insertion copies every optimizer moment each step (the non-finite
  # guard reads the old moments after the in-place update); jit_train_step's options avoid it.
  import optax
  from maelite_jax.train import mesh as mesh_lib
  from maelite_jax.train.step import TrainState, jit_train_step, make_train_step
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  params = {"w": jnp.ones((16, 8)), "b": jnp.ones((8,))}
  tx = optax.adamw(1e-3)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), {})
  sh = mesh_lib.state_shardings(state, mesh)
  step = jit_train_step(make_train_step(_LinearObjective(), tx, mesh, accum_steps=accum), mesh, sh, {})
  hlo = step.lower(state, {"image": jnp.ones((4, 16))}, {}).compile().as_text()
  assert re.findall(r"copy\(%?state_\w+", hlo) == []


def test_a_new_objective_plugs_in_with_one_class(tmp_path):
  """docs/extending.md: a new objective is one registered class (plus its loss and config);
  the loop, checkpoints, evaluators and registry need no change. Here: predict which of 4
  rotations was applied to the image, on the fine-tuning config's ViT."""
  from maelite_jax.configs import finetune_tiny
  from maelite_jax.models.meta import model_from_config
  from maelite_jax.tasks.registry import register
  from maelite_jax.train.checkpoint import load_meta

  @register("toy_rotation")
  class ToyRotation(Objective):
    encoder_key = ""

    def __init__(self, config):
      self.model, self.spec = model_from_config(config.model, trainable_pos_embed=True)

    def init(self, rng, example):
      return self.model.init(rng, example["image"][:1])["params"], {}

    def prepare_batch(self, rng, batch):
      k = jax.random.randint(rng, (batch["image"].shape[0],), 0, 4)
      rotated = jnp.stack([jnp.rot90(batch["image"], r, axes=(1, 2)) for r in range(4)])
      return dict(batch, image=jnp.take_along_axis(
          rotated, k[None, :, None, None, None], axis=0)[0], rotation=k)

    def loss(self, params, extra, batch, rng, step, frozen=None):
      logits, _ = self.model.apply({"params": params}, batch["image"])
      loss = jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]),
                                                  batch["rotation"]])
      return loss, ({"loss": loss}, extra)

  config = override(finetune_tiny.get_config("tiny"), **{
      "objective": "toy_rotation", "model.num_classes": 4, "total_steps": 3, "log_every": 1,
      "evals.accuracy.every": -1, "best_metric": "", "augment.mixup": 0.0})
  trainer = build_trainer(config, str(tmp_path), devices=jax.devices()[:1])
  assert isinstance(trainer.objective, ToyRotation)
  trainer.run()
  losses = read_losses(str(tmp_path))
  assert sorted(losses) == [1, 2, 3] and all(np.isfinite(v) for v in losses.values())
  assert load_meta(str(tmp_path))["objective"] == "toy_rotation"


def test_xla_options_reach_the_train_step_compilation():
  # config.xla_options goes to XLA with the train step (not only to validation): a value XLA
  # rejects, put past validation, fails the step's compilation naming the option. GPU options
  # parse on every backend (and do nothing on CPU), so the check is the same everywhere.
  from maelite_jax.tasks import registry
  from maelite_jax.train import mesh as mesh_lib
  from maelite_jax.train.program import StepProgram
  from maelite_jax.train.step import parse_xla_options
  assert parse_xla_options("--xla_gpu_enable_triton_gemm=false xla_gpu_autotune_level=4 "
                           "--xla_gpu_enable_command_buffer=") == {
      "xla_gpu_enable_triton_gemm": False, "xla_gpu_autotune_level": "4",
      "xla_gpu_enable_command_buffer": ""}
  assert parse_xla_options("gpu --xla_gpu_autotune_level=2") == {
      "xla_gpu_triton_gemm_any": True, "xla_gpu_enable_latency_hiding_scheduler": True,
      "xla_gpu_autotune_level": "2"}
  config = tiny_config(xla_options="--xla_gpu_enable_triton_gemm=maybe")
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  program = StepProgram(config, registry.build(config), mesh, total_steps=4, warmup_steps=1)
  state = program.abstract_state
  s = config.model.image_size
  batch = {"image": jax.ShapeDtypeStruct((config.batch_size, s, s, 3), jnp.float32,
                                         sharding=mesh_lib.batch_sharding(mesh)),
           "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                         sharding=mesh_lib.batch_sharding(mesh))}
  lowered = program.train_step.lower(state, batch, program.frozen)
  with pytest.raises(Exception, match="xla_gpu_enable_triton_gemm"):
    lowered.compile()
