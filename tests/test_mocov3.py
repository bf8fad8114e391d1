"""MoCo-v3: the loss against numpy, momentum schedule and EMA, heads with global BatchNorm, the
two-view augmentation ops, and the task in the generic loop (8 devices = 1 device, resume,
learning, k-NN monitor, the checkpoint read back as an encoder)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec as P

from maelite_jax import data
from maelite_jax.configs import common, mocov3_tiny
from maelite_jax.data import transforms
from maelite_jax.models import heads
from maelite_jax.objectives import contrastive as cl
from maelite_jax.run import build_trainer
from maelite_jax.tasks.mocov3 import moco_vit_init
from maelite_jax.tasks.registry import build as build_task
from maelite_jax.train import mesh as mesh_lib
from maelite_jax.train import optim
from maelite_jax.utils.errors import ConfigError
from tests.helpers import override

STEPS = 30  # the learning run; the 8-vs-1 comparison stops after COMPARE steps
COMPARE = 3


def tiny_config(**overrides):
  config = mocov3_tiny.get_config("tiny")
  with config.unlocked():
    config.total_steps = STEPS
    config.optim.warmup_steps = 3
    config.optim.base_lr = 5e-3
    config.log_every = 1
    config.checkpoint_every = 1000
    config.data.shuffle_buffer = 512
    config.data.cache = False
    for key in ("train_ops", "view2_ops"):  # an easier pretext task: the loss falls in 30 steps
      (crop, kw), *rest = config.data[key]
      config.data[key] = ((crop, dict(kw, scale=(0.3, 1.0))), *rest)
    config.model.patch_size = 8  # 16 tokens: 4x cheaper than patch 4 on 2 busy CPU cores
    # The encoder's final-norm bias has an exact gradient of 0 (a BatchNorm follows a bias-free
    # Linear), so Adam would turn its rounding noise into +-lr steps that differ between device
    # counts; a larger eps keeps real gradients' behaviour and makes the comparison meaningful.
    config.optim.eps = 1e-4
  return override(config, **overrides)


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f) if "loss" in r}


# ---------------------------------------------------------------- objective


def _numpy_info_nce(q, k, t):
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  k = k / np.linalg.norm(k, axis=1, keepdims=True)
  logits = q.astype(np.float64) @ k.T.astype(np.float64) / t
  top = logits.max(axis=1, keepdims=True)
  log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
  ce = np.mean(log_z - np.diag(logits))
  return ce * 2 * t


def test_info_nce_matches_numpy():
  rng = np.random.default_rng(0)
  q1, q2, k1, k2 = (rng.normal(size=(12, 7)).astype(np.float32) * 3 for _ in range(4))
  want = _numpy_info_nce(q1, k2, 0.2) + _numpy_info_nce(q2, k1, 0.2)
  got = cl.symmetric_info_nce(*map(jnp.asarray, (q1, q2, k1, k2)), 0.2)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Identical, well separated pairs give a loss near 0; shuffled keys a large one.
  eye = jnp.eye(12, 7 + 5)
  assert float(cl.info_nce(eye, eye, 0.05)) < 1e-3
  assert float(cl.contrastive_accuracy(eye, eye)) == 1.0


def test_momentum_schedule_values():
  m = lambda step: float(cl.momentum_at(step, 100, 0.99))
  assert m(0) == pytest.approx(0.99)
  assert m(25) == pytest.approx(1 - 0.01 * (np.cos(np.pi / 4) + 1) / 2, abs=1e-7)
  assert m(50) == pytest.approx(0.995)
  assert m(100) == pytest.approx(1.0)
  assert all(m(s) <= m(s + 1) for s in range(100))


def test_ema_update():
  tree = {"a": jnp.ones(3), "b": {"c": jnp.full((2, 2), 4.0)}}
  online = jax.tree.map(lambda x: x + 2.0, tree)
  out = cl.ema_update(tree, online, 0.9)
  np.testing.assert_allclose(out["a"], 1.2, rtol=1e-6)
  np.testing.assert_allclose(out["b"]["c"], 4.2, rtol=1e-6)


def test_after_update_uses_the_next_steps_momentum(run_1dev):
  """The task's EMA after step t uses m(t + 1): what MoCo-v3 applies before step t + 1's keys."""
  snapshot, _, _ = run_1dev
  task = build_task(tiny_config(total_steps=10))
  params, extra = snapshot["params"], snapshot["extra"]
  new = task.post_update(params, extra, 4)
  m = 1 - 0.01 * (np.cos(np.pi * 5 / 10) + 1) / 2
  for name in ("encoder", "projector"):
    for old, p, got in zip(jax.tree.leaves(extra["momentum"][name]),
                           jax.tree.leaves(params[name]), jax.tree.leaves(new["momentum"][name])):
      np.testing.assert_allclose(got, m * old + (1 - m) * p, rtol=1e-6, atol=1e-7)
  assert new["batch_stats"] is extra["batch_stats"]


# ---------------------------------------------------------------- heads


def test_heads_structure_and_global_batch_norm():
  proj = heads.projection_mlp(16, 8)
  x = jax.random.normal(jax.random.key(0), (32, 12)) * 3 + 1
  variables = proj.init(jax.random.key(1), x, train=False)
  p = variables["params"]
  assert sorted(p) == ["bn0", "bn1", "fc0", "fc1", "fc2"]  # bn2 has no affine params
  assert all("bias" not in p[f"fc{i}"] for i in range(3))
  assert sorted(variables["batch_stats"]) == ["bn0", "bn1", "bn2"]
  pred = heads.prediction_mlp(16, 8, last_bn=False).init(jax.random.key(2), x[:, :8], train=False)
  assert sorted(pred["params"]) == ["bn0", "fc0", "fc1"]

  def apply(x):
    return proj.apply(variables, x, train=True, mutable=["batch_stats"])

  out, stats = apply(x)  # eager, on one device
  np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)  # last BN: zero mean, unit variance
  np.testing.assert_allclose(out.var(0), 1, atol=1e-3)
  # Sharded over 8 devices the statistics are still those of the whole (global) batch.
  mesh = mesh_lib.make_mesh()
  x8 = jax.device_put(x, NamedSharding(mesh, P("data")))
  out8, stats8 = jax.jit(apply)(x8)
  assert len(out8.sharding.device_set) == jax.device_count()
  np.testing.assert_allclose(out8, out, atol=1e-5)
  for a, b in zip(jax.tree.leaves(stats8), jax.tree.leaves(stats)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_freeze_patch_embed_keeps_it_fixed():
  config = tiny_config(**{"model.freeze_patch_embed": True})
  task = build_task(config)
  w = lambda *shape: jnp.full(shape, 0.5)
  params = {"encoder": {"patch_embed": {"proj": {"kernel": w(2, 2, 3, 4), "bias": w(4)}},
                        "norm": {"bias": w(4), "scale": w(4)}},
            "projector": {"fc0": {"kernel": w(4, 3)}}}
  mult = optim.lr_multipliers(params, frozen_regex=task.frozen_regex)
  assert jax.tree.leaves(mult["encoder"]["patch_embed"]) == [0.0, 0.0]
  assert set(jax.tree.leaves(mult["encoder"]["norm"])) == {1.0}
  assert optim.lr_multipliers(params, frozen_regex=build_task(tiny_config()).frozen_regex) is None
  grads = jax.tree.map(jnp.ones_like, params)
  opt = optim.build_optimizer(config.optim, lambda _: 1e-2, params, mult)
  updates, _ = opt.update(grads, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(new["encoder"]["patch_embed"]),
                  jax.tree.leaves(params["encoder"]["patch_embed"])):
    np.testing.assert_array_equal(a, b)  # no Adam step and no weight decay
  assert not np.allclose(new["encoder"]["norm"]["bias"], params["encoder"]["norm"]["bias"])


def test_moco_init_and_decay_mask(run_1dev):
  enc = {"cls_token": jnp.ones((1, 1, 8)), "norm": {"bias": jnp.ones(8)},
         **{f"blocks_{i}": {"attn": {"qkv": {"kernel": jnp.zeros((8, 24)), "bias": jnp.ones(24)}}}
            for i in range(2)}}
  out = moco_vit_init(enc, jax.random.key(0), 1e-6)
  assert 0 < float(jnp.abs(out["cls_token"]).max()) < 1e-5
  qkv = [out[f"blocks_{i}"]["attn"]["qkv"]["kernel"] for i in range(2)]
  limit = (6 / (8 + 8))**0.5  # xavier of each (D, D) matrix, wider than the fused (D, 3D) one
  assert all(limit * 0.7 < float(jnp.abs(k).max()) <= limit for k in qkv)
  assert not np.allclose(qkv[0], qkv[1])
  np.testing.assert_array_equal(out["blocks_0"]["attn"]["qkv"]["bias"], 1.0)
  params = run_1dev[0]["params"]
  mask = optim.weight_decay_mask(params, decay_all=True)
  assert all(jax.tree.leaves(mask))  # MoCo-v3 decays every parameter, biases and norms too
  assert not optim.weight_decay_mask(params)["encoder"]["norm"]["bias"]


# ---------------------------------------------------------------- augmentation ops


def _image(h=20, w=24, seed=0):
  return tf.constant(np.random.default_rng(seed).random((h, w, 3)), tf.float32)


SEED = tf.constant([3, 4], tf.int64)
OPS = {
    "color_jitter": dict(prob=1.0),
    "random_grayscale": dict(prob=1.0),
    "random_gaussian_blur": dict(prob=1.0),
    "random_solarize": dict(prob=1.0),
    "random_flip": dict(prob=1.0),
}


RANDOM_OPS = {"color_jitter": transforms.color_jitter,
              "random_grayscale": transforms.random_grayscale,
              "random_gaussian_blur": transforms.random_gaussian_blur,
              "random_solarize": transforms.random_solarize, "random_flip": transforms.random_flip}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_range_shape_and_p0_identity(name):
  fn = RANDOM_OPS[name]
  image = _image()
  out = fn(image, SEED, **OPS[name])
  assert out.shape == image.shape and out.dtype == tf.float32
  assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
  assert not np.allclose(out, image)
  np.testing.assert_array_equal(fn(image, SEED, **dict(OPS[name], prob=0.0)), image)
  np.testing.assert_array_equal(out, fn(image, SEED, **OPS[name]))  # a function of the seed


def test_color_jitter_draws_torchvision_factors():
  image = _image()
  ratios = []
  for s in range(20):
    out = transforms.color_jitter(image, tf.constant([s, 1], tf.int64), brightness=0.4,
                                  contrast=0, saturation=0, hue=0, prob=1.0).numpy()
    keep = image.numpy() < 0.5  # unclipped pixels: out = factor * image
    ratio = out[keep] / np.maximum(image.numpy()[keep], 1e-6)
    np.testing.assert_allclose(ratio[image.numpy()[keep] > 0.05], ratio.max(), rtol=1e-4)
    ratios.append(ratio.max())
  assert 0.6 <= min(ratios) < 0.9 and 1.1 < max(ratios) <= 1.4
  gray = tf.tile(_image(6, 6)[..., :1], [1, 1, 3])  # saturation/hue leave gray images gray
  out = transforms.color_jitter(gray, SEED, brightness=0, contrast=0, saturation=0.9, hue=0.3,
                                prob=1.0)
  np.testing.assert_allclose(out, gray, atol=1e-5)


def test_grayscale_blur_solarize_values():
  image = _image()
  gray = transforms.random_grayscale(image, SEED, prob=1.0).numpy()
  want = image.numpy() @ np.array([0.299, 0.587, 0.114], np.float32)
  for c in range(3):
    np.testing.assert_allclose(gray[..., c], want, rtol=1e-5)
  flat = tf.fill([10, 12, 3], 0.3)
  np.testing.assert_allclose(transforms.gaussian_blur(flat, 1.5, 5), 0.3, atol=1e-6)
  blurred = transforms.random_gaussian_blur(image, SEED, sigma=(1.0, 2.0), prob=1.0)
  assert float(tf.math.reduce_std(blurred)) < 0.6 * float(tf.math.reduce_std(image))
  small = transforms.random_gaussian_blur(_image(4, 4), SEED, sigma=(1.0, 2.0), prob=1.0)
  assert small.shape == (4, 4, 3)  # the kernel shrinks to fit a tiny image
  sol = transforms.solarize(tf.constant([0.0, 0.25, 0.5, 0.75, 1.0]))
  np.testing.assert_allclose(sol, [0.0, 0.25, 0.5, 0.25, 0.0])


def test_view_ops_follow_the_config():
  cfg = mocov3_tiny.get_config("tiny").data
  views = (cfg.train_ops, cfg.view2_ops)
  names = lambda v: [op for op, _ in views[v]]
  assert names(0) == ["random_resized_crop", "color_jitter", "random_gaussian_blur",
                      "random_grayscale", "random_flip"]
  assert names(1) == names(0) + ["random_solarize"]
  blur = lambda v: dict(views[v])["random_gaussian_blur"]["prob"]
  assert (blur(0), blur(1)) == (1.0, 0.1)
  # The default (MAE) data config keeps exactly the single-view ops it had.
  default = common.data_config()
  assert [op for op, _ in default.train_ops] == ["random_resized_crop", "random_flip"]
  assert default.view2_ops == ()
  bad = cfg.copy_and_resolve_references()
  bad.view2_ops = bad.view2_ops[:-1] + (("random_solarize", dict(threshold=0.5, prob=1.5)),)
  with pytest.raises(ValueError, match="random_solarize"):
    data.validate_data_config(bad, 32)
  with pytest.raises(ConfigError, match="data.view2_ops"):
    build_task(tiny_config(**{"data.view2_ops": ()}))


def test_two_views_differ_and_are_reproducible():
  cfg = tiny_config().data
  mesh = mesh_lib.make_mesh()
  kw = dict(image_size=32, global_batch_size=16, mesh=mesh, seed=0)
  it = data.build_train_iterator(cfg, **kw)
  first, second = next(it), next(it)
  assert set(first) == {"image", "image2", "label"}
  assert first["image2"].shape == first["image"].shape == (16, 32, 32, 3)
  assert first["image2"].sharding.spec == P("data")
  v1, v2 = np.asarray(first["image"]), np.asarray(first["image2"])
  assert all(not np.allclose(a, b) for a, b in zip(v1, v2))
  pixels = v2 * np.array(common.IMAGENET_STD) + np.array(common.IMAGENET_MEAN)
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  resumed = next(data.build_train_iterator(cfg, start_step=1, **kw))
  for key in ("image", "image2", "label"):
    np.testing.assert_array_equal(resumed[key], second[key])


# ---------------------------------------------------------------- the task in the loop


@pytest.fixture(scope="module")
def run_1dev(tmp_path_factory):
  """One device: stops after COMPARE steps (snapshot), then resumes to STEPS."""
  workdir = str(tmp_path_factory.mktemp("moco1"))
  trainer = build_trainer(tiny_config(), workdir, devices=jax.devices()[:1])
  trainer.run(stop_at=COMPARE)
  snapshot = host({"params": trainer.state.params, "extra": trainer.state.extra})
  final = trainer.run()
  return snapshot, final, workdir


def test_8_devices_equal_1_device(run_1dev, tmp_path):
  snapshot, _, workdir1 = run_1dev
  trainer = build_trainer(tiny_config(), str(tmp_path))
  assert trainer.mesh.size == 8
  trainer.run(stop_at=COMPARE)
  l1, l8 = read_metrics(workdir1), read_metrics(str(tmp_path))
  assert sorted(l8) == list(range(1, COMPARE + 1))
  for s in l8:
    np.testing.assert_allclose(l8[s]["loss"], l1[s]["loss"], rtol=1e-5)
    np.testing.assert_allclose(l8[s]["momentum"], l1[s]["momentum"], rtol=1e-7)
  got = host({"params": trainer.state.params, "extra": trainer.state.extra})
  assert sorted(got["extra"]) == ["batch_stats", "momentum", "momentum_batch_stats"]
  for part in ("params", "extra"):  # params, BN statistics and the EMA encoder
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got[part])[0],
                            jax.tree.leaves(snapshot[part])):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_short_run_lowers_the_loss_and_monitors(run_1dev):
  _, final, workdir = run_1dev
  metrics = read_metrics(workdir)
  assert sorted(metrics) == list(range(1, STEPS + 1))  # resumed without a gap
  losses = [metrics[s]["loss"] for s in sorted(metrics)]
  assert np.mean(losses[-8:]) < np.mean(losses[:5]) - 0.2, losses
  assert metrics[1]["momentum"] == pytest.approx(0.99)
  assert metrics[STEPS]["momentum"] > 0.9999
  assert 0.0 <= final["knn_top1"] <= final["knn_top5"] <= 1.0  # the monitor ran at the end


def test_checkpoint_reads_back_as_an_encoder(run_1dev):
  from maelite_jax.models.meta import CheckpointMeta, encoder_from_meta
  from maelite_jax.train.checkpoint import load_params
  _, _, workdir = run_1dev
  params, meta = load_params(workdir)
  assert sorted(params) == ["encoder", "predictor", "projector"]
  model, enc = encoder_from_meta(CheckpointMeta.from_dict(meta), params)
  assert meta["model"]["name"] == "vit_tiny_patch16" and model.depth == 2
  feats, _ = model.apply({"params": enc}, jnp.zeros((2, 32, 32, 3)), return_features=True)
  assert feats.shape == (2, 192)
