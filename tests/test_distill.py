"""D-MAE: the distillation loss, the frozen teacher on the student's tokens, the loop, D2."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from maelite_jax.configs import dmae_tiny
from maelite_jax.models.meta import CheckpointMeta, encoder_from_meta
from maelite_jax.models import create_model
from maelite_jax.objectives import distill
from maelite_jax.objectives.mae import mae_forward_loss
from maelite_jax.run import build_trainer
from maelite_jax.tasks.registry import build as build_task
from maelite_jax.tasks.dmae import encode
from maelite_jax.train.checkpoint import load_params, save_params
from maelite_jax.utils.errors import ConfigError
from tests.helpers import override

SMALL = dict(depth=2, image_size=32, patch_size=4)
# The teacher's widths (80, 5 heads) occur nowhere in the student, so any array of a teacher
# weight's shape in the gradient computation could only be a gradient of the teacher.
TEACHER = dict(SMALL, embed_dim=80, num_heads=5)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """An MAE checkpoint (encoder + decoder), as a pre-training run writes it."""
  model = create_model("mae_vit_tiny_patch16", **TEACHER)
  params = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 64)))
  path = str(tmp_path_factory.mktemp("teacher"))
  save_params(path, jax.device_get(params["params"]),
              {"model": {"name": "mae_vit_tiny_patch16", "kwargs": TEACHER}})
  return path


def dmae_config(teacher, **overrides):
  config = dmae_tiny.get_config("tiny")
  with config.unlocked():
    config.teacher.init = teacher
    config.total_steps = 10
    config.optim.warmup_steps = 2
    config.optim.base_lr = 5e-3
    config.optim.eps = 1e-6  # see tests/test_train.py: keeps 8 vs 1 device comparisons exact
    config.log_every = 1
    config.checkpoint_every = 100
    config.distill.hidden_student_layers = (1, -1)
    config.distill.hidden_teacher_layers = (1, -1)
  return override(config, **overrides)


def example(task, batch_size=4, seed=0):
  images = jax.random.normal(jax.random.key(seed), (batch_size, 32, 32, 3))
  batch = task.prepare_batch(jax.random.key(seed + 1), {"image": images})
  return batch


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f) if "mae_loss" in r}


# ---------------------------------------------------------------- the pure loss

def test_distillation_loss_matches_numpy():
  rng = np.random.default_rng(0)
  s_logits = rng.normal(size=(2, 12, 17, 17)).astype(np.float32)
  t_logits = rng.normal(size=(2, 5, 17, 17)).astype(np.float32)
  head_kernel = rng.normal(size=(12, 5)).astype(np.float32)
  s_tokens = rng.normal(size=(2, 17, 192)).astype(np.float32)
  t_tokens = rng.normal(size=(2, 17, 80)).astype(np.float32)
  tok_kernel = rng.normal(size=(192, 80)).astype(np.float32) * 0.1
  # Independent: the 1x1 conv over heads written as an explicit loop, MSE by hand.
  mixed = np.zeros_like(t_logits, dtype=np.float64)
  for g in range(5):
    for h in range(12):
      mixed[:, g] += head_kernel[h, g] * s_logits[:, h]
  want_attn = np.mean((mixed - t_logits)**2)
  want_hidden = np.mean((s_tokens.astype(np.float64) @ tok_kernel - t_tokens)**2)
  want_same_heads = np.mean((s_logits[:, :5] - t_logits)**2)
  np.testing.assert_allclose(distill.attn_distill_loss(s_logits, t_logits, head_kernel),
                             want_attn, rtol=1e-5)
  np.testing.assert_allclose(distill.hidden_distill_loss(s_tokens, t_tokens, tok_kernel),
                             want_hidden, rtol=1e-5)
  np.testing.assert_allclose(distill.attn_distill_loss(s_logits[:, :5], t_logits),
                             want_same_heads, rtol=1e-5)
  total, metrics = distill.dmae_total_loss(
      jnp.float32(0.5), attn=[(s_logits, t_logits, head_kernel)] * 2,
      hidden=[(s_tokens, t_tokens, tok_kernel)], attn_alpha=0.3, hidden_alpha=2.0)
  np.testing.assert_allclose(metrics["attn_distill_loss"], 2 * want_attn, rtol=1e-5)
  np.testing.assert_allclose(metrics["hidden_distill_loss"], want_hidden, rtol=1e-5)
  np.testing.assert_allclose(total, 0.5 + 0.3 * 2 * want_attn + 2.0 * want_hidden, rtol=1e-5)
  assert metrics["loss"] is total and metrics["mae_loss"] == 0.5


# ---------------------------------------------------------------- task level

@pytest.fixture(scope="module")
def task_and_params(teacher_dir):
  task = build_task(dmae_config(teacher_dir))
  params, _ = task.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
  return task, params


def test_adapters_live_in_student_params(task_and_params):
  task, params = task_and_params
  shapes = jax.tree.map(lambda x: x.shape, params["distill_adapters"])
  assert shapes == {"attn_s2_t2": {"kernel": (12, 5)}, "hidden_s1_t1": {"kernel": (192, 80)},
                    "hidden_s2_t2": {"kernel": (192, 80)}}
  assert "decoder_embed" not in task.frozen["teacher"]  # an MAE checkpoint gives its encoder


def test_teacher_sees_the_students_tokens(task_and_params, tmp_path):
  """A teacher that is a copy of the student's encoder gives the very same logits and tokens."""
  _, params = task_and_params
  save_params(str(tmp_path), jax.device_get(params["encoder"]),
              {"model": {"name": "vit_tiny_patch16", "kwargs": SMALL}})
  task = build_task(dmae_config(str(tmp_path), **{
      "distill.attn_adapter": False, "distill.hidden_adapter": False,
      "distill.attn_student_layers": (1, 2), "distill.attn_teacher_layers": (1, 2),
      "distill.hidden_student_layers": (0, 1, 2), "distill.hidden_teacher_layers": (0, 1, 2)}))
  params = {k: v for k, v in params.items() if k != "distill_adapters"}
  batch = example(task)

  @jax.jit
  def run(params, frozen, batch):
    student = task.student_forward(params, batch["image"], batch["noise"], train=True,
                                   rng=jax.random.key(0))
    teacher = task.teacher_forward(frozen["teacher"], batch["image"], student["ids_keep"])
    loss, (metrics, _) = task.loss(params, {}, batch, jax.random.key(0), 0, frozen)
    return student, teacher, metrics

  student, teacher, metrics = run(params, task.frozen, batch)
  for kind, layers in (("attn", (1, 2)), ("hidden", (0, 1, 2))):
    for i in layers:
      np.testing.assert_allclose(student[kind][i], teacher[kind][i], atol=1e-5, rtol=1e-5)
  assert metrics["attn_distill_loss"] < 1e-10 and metrics["hidden_distill_loss"] < 1e-10
  # The student's MAE part is exactly the MAE objective on the same noise.
  want, _ = mae_forward_loss(task.model, params, batch["image"], batch["noise"])
  np.testing.assert_allclose(metrics["mae_loss"], want, rtol=1e-5)


def _all_shapes(jaxpr, out, skip=("stop_gradient",)):
  """Output shapes of every equation (nested jaxprs included) except `skip` primitives."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name not in skip:
      out.update(tuple(v.aval.shape) for v in eqn.outvars)
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          _all_shapes(sub, out, skip)
  return out


def test_no_gradient_is_computed_for_the_teacher(task_and_params):
  task, params = task_and_params
  frozen = task.frozen
  batch = example(task)
  teacher_shapes = {x.shape for x in jax.tree.leaves(frozen) if x.ndim >= 2 and 1 not in x.shape}
  assert (80, 240) in teacher_shapes and (320, 80) in teacher_shapes

  def grads(params, frozen):  # what the train step differentiates
    return jax.grad(lambda p: task.loss(p, {}, batch, jax.random.key(0), 0, frozen)[0])(params)

  jaxpr = jax.make_jaxpr(grads)(params, frozen).jaxpr
  # The teacher's arrays enter only through stop_gradient ...
  teacher_vars = {id(v) for v in jaxpr.invars[len(jax.tree.leaves(params)):]}
  assert len(teacher_vars) == len(jax.tree.leaves(frozen))
  users = {eqn.primitive.name for eqn in jaxpr.eqns
           if any(id(v) in teacher_vars for v in eqn.invars)}
  assert users == {"stop_gradient"}, users
  # ... and nothing else computes an array of a teacher weight's shape: no teacher cotangents.
  shapes = _all_shapes(jaxpr, set())
  assert not shapes & teacher_shapes, shapes & teacher_shapes
  # The check can see teacher gradients: differentiating the teacher's logits w.r.t. its
  # params (what a missing stop_gradient would add) does produce those shapes.
  ids = jnp.tile(jnp.arange(16)[None], (4, 1))

  def teacher_grads(tp):
    return jax.grad(lambda t: encode(task.teacher, t, batch["image"], ids,
                                     attn=[1])[1]["attn_logits"][1].sum())(tp)

  control = _all_shapes(jax.make_jaxpr(teacher_grads)(frozen["teacher"]).jaxpr, set())
  assert {(80, 240), (4, 4, 3, 80)} <= control


def test_d2_block_is_only_trained_by_distillation(teacher_dir):
  task = build_task(dmae_config(teacher_dir, **{"distill.d2": True,
                                                "distill.hidden_student_layers": (),
                                                "distill.hidden_teacher_layers": ()}))
  params, _ = task.init(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})
  assert task.attn_pairs == ((3, 2),)  # -1 names the extra block
  assert sorted(k for k in params["encoder"] if k.startswith("blocks_")) == ["blocks_0", "blocks_1"]
  assert set(params["distill_block"]) == {"norm1", "attn"}
  assert set(params["distill_block"]["attn"]) == {"qkv"}  # no proj, norm2 or MLP
  batch = example(task)

  def loss_terms(p):
    return task.loss(p, {}, batch, jax.random.key(0), 0, task.frozen)[1][0]

  g_mae, g_attn = jax.jit(lambda p: (jax.grad(lambda q: loss_terms(q)["mae_loss"])(p),
                                      jax.grad(lambda q: loss_terms(q)["attn_distill_loss"])(p)))(
                                          params)
  norm = lambda t: float(sum(jnp.sum(x**2) for x in jax.tree.leaves(t)))
  # The decoder reads after block 1 (d2_decode_layer=1 in :tiny): block 2 and the extra block
  # learn from distillation only; the decoder only from the pixels.
  assert norm(g_mae["encoder"]["blocks_1"]) == 0 and norm(g_mae["distill_block"]) == 0
  assert norm(g_mae["encoder"]["norm"]) > 0 and norm(g_mae["encoder"]["blocks_0"]) > 0
  assert norm(g_attn["encoder"]["blocks_1"]) > 0 and norm(g_attn["distill_block"]) > 0
  assert norm(g_attn["decoder_pred"]) == 0


# ---------------------------------------------------------------- the loop

@pytest.fixture(scope="module")
def run_8dev(teacher_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("dmae8"))
  trainer = build_trainer(dmae_config(teacher_dir), workdir)
  trainer.run()
  return trainer, workdir


def test_short_run_lowers_the_loss_and_logs_every_term(run_8dev):
  _, workdir = run_8dev
  metrics = read_metrics(workdir)
  assert sorted(metrics) == list(range(1, 11))
  first, last = metrics[1], metrics[10]
  for key in ("loss", "mae_loss", "attn_distill_loss", "hidden_distill_loss"):
    assert np.isfinite(first[key]) and np.isfinite(last[key])
  assert last["loss"] < 0.8 * first["loss"], (first, last)
  np.testing.assert_allclose(
      last["loss"], last["mae_loss"] + last["attn_distill_loss"] + last["hidden_distill_loss"],
      rtol=1e-5)


def test_teacher_is_frozen_and_not_checkpointed(run_8dev, teacher_dir):
  trainer, workdir = run_8dev
  loaded, _ = load_params(teacher_dir)
  for a, b in zip(jax.tree.leaves(loaded["encoder"]), jax.tree.leaves(trainer.program.frozen["teacher"])):
    np.testing.assert_array_equal(a, np.asarray(jax.device_get(b)))  # bit-identical
  params, meta = load_params(workdir)
  assert set(params) == set(trainer.state.params)
  assert "distill_adapters" in params and not any("teacher" in k for k in params)
  assert meta["config"]["teacher"]["init"] == teacher_dir  # only the path is recorded
  # Nothing of the teacher's shape anywhere in the saved state (params, Adam moments, extra).
  step_dir = os.path.join(workdir, "checkpoints", "10", "state")
  saved = ocp.PyTreeCheckpointer().metadata(step_dir).item_metadata
  saved_shapes = {tuple(m.shape) for m in jax.tree.leaves(saved) if hasattr(m, "shape")}
  assert (80, 240) not in saved_shapes and (4, 4, 3, 80) not in saved_shapes
  # Downstream tools still read the encoder as a plain ViT.
  model, enc = encoder_from_meta(CheckpointMeta.from_dict(meta), params)
  out, _ = model.apply({"params": enc}, jnp.zeros((1, 32, 32, 3)))
  assert out.shape == (1, 65, 192)


def test_8_devices_equal_1_device(run_8dev, teacher_dir, tmp_path):
  _, workdir8 = run_8dev
  build_trainer(dmae_config(teacher_dir), str(tmp_path), devices=jax.devices()[:1]).run(stop_at=3)
  got, want = read_metrics(str(tmp_path)), read_metrics(workdir8)
  assert sorted(got) == [1, 2, 3]
  for step in (1, 2, 3):
    for key in ("loss", "mae_loss", "attn_distill_loss", "hidden_distill_loss"):
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-5, err_msg=key)


# ---------------------------------------------------------------- configs

def test_default_config_is_the_paper_recipe():
  config = dmae_tiny.get_config()
  assert config.objective == "dmae" and config.total_epochs == 400
  assert config.teacher.name == "vit_base_patch16" and config.distill.attn_alpha == 1.0
  assert config.distill.attn_adapter and not config.distill.hidden_student_layers
  assert not config.distill.d2
  cpu = dmae_tiny.get_config("cpu")
  assert cpu.teacher.init == "runs/mae_tiny_cpu" and cpu.teacher.name == "vit_tiny_patch16"


@pytest.mark.parametrize("key,value,match", [
    ("teacher.init", "/nonexistent/teacher", "teacher.init.*does not exist"),
    ("teacher.name", "vit_base_patch16", "holds vit_tiny_patch16, not vit_base_patch16"),
    ("model.patch_size", 8, "patch size 4 differs"),
    ("distill.attn_adapter", False, "12 heads and the teacher 5"),
    ("distill.attn_teacher_layers", (3,), "layer 3 is outside 1..2"),
    ("distill.hidden_teacher_layers", (1,), "2 student layers but 1 teacher"),
])
def test_bad_dmae_config_fails_with_a_named_key(teacher_dir, tmp_path, key, value, match):
  with pytest.raises(ConfigError, match=match):
    build_trainer(dmae_config(teacher_dir, **{key: value}), str(tmp_path))
