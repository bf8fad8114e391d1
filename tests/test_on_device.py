"""The on-device data engine (data.on_device=True): the same image statistics and crop windows as
the tf.data engine, batches that are a function of (seed, step) (exact resume, 1 == 8 devices),
padded exact evaluation, MoCo-v3's two views, and a whole training run without TensorFlow."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from maelite_jax import data
from maelite_jax.configs import common, mae_tiny, mocov3_tiny
from maelite_jax.data import on_device, transforms
from maelite_jax.train import mesh as mesh_lib
from tests import helpers
from tests.helpers import override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_data(**overrides):
  cfg = mae_tiny.get_config("cpu").data
  return override(cfg, **{"on_device": True, **overrides})


@pytest.fixture(scope="module")
def mesh8():
  return mesh_lib.make_mesh()


def test_crop_windows_follow_the_tf_sampler():
  """The JAX RandomResizedCrop sampler draws windows from the same distribution as
  transforms.crop_window (torchvision's): area fraction, aspect ratio and position."""
  n, scale, ratio = 4000, (0.08, 1.0), (3 / 4, 4 / 3)
  keys = jax.random.split(jax.random.key(0), n)
  jax_windows = np.asarray(jax.jit(jax.vmap(
      lambda k: jnp_stack(on_device._crop_window(k, 28, 28, scale, ratio))))(keys))
  window = tf.function(lambda seed: tf.stack(transforms.crop_window(
      tf.constant([28, 28, 3]), seed, scale, ratio)))
  tf_windows = np.asarray([window(tf.constant([i, 7], tf.int64)) for i in range(1500)])
  for windows in (jax_windows, tf_windows):
    top, left, h, w = windows.T
    assert np.all((h >= 1) & (w >= 1) & (top + h <= 28) & (left + w <= 28))
  stats = lambda w: np.array([np.mean(w[:, 2] * w[:, 3] / 784), np.std(w[:, 2] * w[:, 3] / 784),
                              np.mean(np.log(w[:, 3] / w[:, 2])), np.mean(w[:, 0] + w[:, 2] / 2)])
  # means of 1000-4000 draws: standard errors ~0.01 (area), ~0.005 (log ratio), ~0.15 px
  # (centre): tolerances of ~3-4 standard errors
  diff = np.abs(stats(jax_windows) - stats(tf_windows))
  assert np.all(diff <= [0.03, 0.03, 0.02, 0.5]), diff
  # U(0.08, 1) areas, less the large draws whose aspect does not fit the square image
  np.testing.assert_allclose(np.mean(jax_windows[:, 2] * jax_windows[:, 3] / 784), 0.485,
                             atol=0.02)


@pytest.mark.parametrize("antialias", [True, False])
def test_window_resize_equals_the_tf_engines_inside_the_window(antialias):
  """The crop op's `antialias` (True: PIL's kernel; False: the plain one) means the same in both
  engines: the window resampled in JAX equals tf.data's crop-then-resize away from the window's
  edge (where JAX's kernel may read the pixels outside the window and TF's cannot)."""
  image = np.random.default_rng(0).uniform(size=(60, 50, 3)).astype(np.float32)
  top, left, h, w = 3, 5, 40, 45
  ours = np.asarray(on_device._resize_window(image, top, left, np.int32(h), np.int32(w), 24,
                                             "linear", antialias=antialias))
  ref = transforms.resize(tf.constant(image[top:top + h, left:left + w]), 24, "bilinear",
                          antialias=antialias).numpy()
  np.testing.assert_allclose(ours[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-5)


def jnp_stack(xs):
  import jax.numpy as jnp
  return jnp.stack(xs)


def test_same_image_statistics_as_the_tf_data_engine(mesh8):
  """Mean / std of the augmented, normalised pixels and of their per-image means agree between
  the two engines on the built-in data (the same ops, different random draws)."""
  def moments(cfg, batches=16):
    it = data.build_train_iterator(cfg, image_size=32, global_batch_size=64, mesh=mesh8, seed=0)
    x = np.concatenate([np.asarray(next(it)["image"]) for _ in range(batches)])
    per_image = x.mean(axis=(1, 2, 3))
    return np.array([x.mean(), x.std(), per_image.std()])
  on, off = moments(cpu_data()), moments(cpu_data(on_device=False, shuffle_buffer=2000))
  np.testing.assert_allclose(on, off, rtol=0.05, atol=0.03)


def test_batches_are_a_function_of_seed_and_step(mesh8):
  cfg = cpu_data()
  kw = dict(image_size=32, global_batch_size=64, seed=3)
  it = data.build_train_iterator(cfg, mesh=mesh8, **kw)
  run = [next(it) for _ in range(4)]
  resumed = next(data.build_train_iterator(cfg, mesh=mesh8, start_step=3, **kw))
  one = next(data.build_train_iterator(cfg, mesh=mesh_lib.make_mesh(jax.devices()[:1]),
                                       start_step=3, **kw))
  for key in ("image", "label"):
    np.testing.assert_array_equal(resumed[key], run[3][key])
    np.testing.assert_array_equal(one[key], run[3][key])  # 1 device == 8 devices
  assert run[3]["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert not np.array_equal(run[0]["image"], run[1]["image"])
  other = next(data.build_train_iterator(cfg, mesh=mesh8, **dict(kw, seed=4)))
  assert not np.array_equal(other["label"], run[0]["label"])


def test_epochs_are_permutations_of_the_split(mesh8):
  cfg = cpu_data(train_split="train[:256]")
  it = data.build_train_iterator(cfg, image_size=32, global_batch_size=64, mesh=mesh8, seed=0)
  first = np.concatenate([np.asarray(next(it)["label"]) for _ in range(4)])
  second = np.concatenate([np.asarray(next(it)["label"]) for _ in range(4)])
  labels = on_device.load_split(cfg, "train[:256]")[1]
  assert sorted(first) == sorted(labels) == sorted(second)  # each epoch: every example once
  assert not np.array_equal(first, second)  # reshuffled


def test_eval_is_padded_exactly_like_the_tf_data_engine(mesh8):
  cfg = cpu_data(eval_split="test[:100]")
  on = list(data.build_eval_iterator(cfg, image_size=32, global_batch_size=64, mesh=mesh8))
  off = list(data.build_eval_iterator(cpu_data(on_device=False, eval_split="test[:100]"),
                                      image_size=32, global_batch_size=64, mesh=mesh8))
  assert len(on) == len(off) == 2
  for a, b in zip(on, off):
    np.testing.assert_array_equal(a["mask"], b["mask"])
    real = np.asarray(a["mask"]) > 0
    np.testing.assert_array_equal(np.asarray(a["label"])[real], np.asarray(b["label"])[real])
    # 28 -> 32 px upsampling: the same bicubic kernel, rounded to 8 bits by both
    np.testing.assert_allclose(np.asarray(a["image"])[real], np.asarray(b["image"])[real],
                               atol=0.05)


def test_two_views_for_mocov3(mesh8):
  cfg = override(mocov3_tiny.get_config("cpu").data, on_device=True)
  batch = next(data.build_train_iterator(cfg, image_size=32, global_batch_size=16, mesh=mesh8,
                                         seed=0))
  assert set(batch) == {"image", "image2", "label"}
  v1, v2 = np.asarray(batch["image"]), np.asarray(batch["image2"])
  assert v1.shape == v2.shape == (16, 32, 32, 3)
  assert all(not np.allclose(a, b) for a, b in zip(v1, v2))
  pixels = v2 * np.array(common.IMAGENET_STD) + np.array(common.IMAGENET_MEAN)
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_unsupported_ops_are_a_config_error():
  cfg = cpu_data(train_ops=(("randaugment", {"spec": "rand-m9-mstd0.5-inc1"}),))
  with pytest.raises(ValueError, match="no on-device implementation.*on_device=False"):
    data.validate_data_config(cfg, 32)


def test_a_training_run_needs_no_tensorflow(tmp_path):
  """A whole MAE run (data, steps, checkpoints, the k-NN monitor, the figure) with tensorflow
  and tensorflow_datasets made unimportable, as on the GPU machines."""
  code = (
      helpers.NO_TENSORFLOW_PRELUDE +
      "import sys\n"
      "from maelite_jax.commands.train import main\n"
      "main()\n")
  cmd = [sys.executable, "-c", code, "--config", os.path.join(ROOT, "configs", "mae_tiny.py:tiny"),
         "--workdir", str(tmp_path), "--config.data.on_device=True", "--config.total_steps=3",
         "--config.evals.reconstruction.every=0"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TensorBoard events are off" in proc.stderr
  assert os.path.exists(tmp_path / "reconstruction.png")
  assert os.path.exists(tmp_path / "checkpoints" / "3")
