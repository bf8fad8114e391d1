"""Evaluation pieces against independent numpy: mixing, erasing, layer decay, RandAugment,
exact padded accuracy on 8 vs 1 devices, k-NN, ridge few-shot, linear probe, results.csv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from maelite_jax.configs import finetune_tiny, linprobe_tiny
from maelite_jax.data import autoaugment
from maelite_jax.data import ops as ops_lib
from maelite_jax.evaluate import accuracy, fewshot, knn, linear, offline
from maelite_jax.objectives import classification as cls
from maelite_jax.train import results
from maelite_jax.tasks.classification import classifier_from_config
from maelite_jax.train.layer_decay import layer_decay_multipliers
from maelite_jax.train.mesh import make_mesh, path_str


# --- mixup / cutmix / smoothing / erasing ---------------------------------------------------

def np_onehot(y, c, s):
  return np.eye(c)[y] * (1 - s) + s / c


def test_mixup_and_cutmix_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
  y = np.array([0, 3, 1, 4])
  draw = {"lam": jnp.float32(0.3), "cutmix": jnp.bool_(False), "box": jnp.array([0, 0, 0, 0])}
  xm, t = cls.apply_mix(jnp.asarray(x), jnp.asarray(y), draw, 5, smoothing=0.1)
  np.testing.assert_allclose(xm, 0.3 * x + 0.7 * x[::-1], rtol=1e-6)
  np.testing.assert_allclose(t, 0.3 * np_onehot(y, 5, .1) + 0.7 * np_onehot(y[::-1], 5, .1),
                             rtol=1e-6)
  draw = {"lam": jnp.float32(0.9), "cutmix": jnp.bool_(True), "box": jnp.array([1, 4, 2, 4])}
  xc, t = cls.apply_mix(jnp.asarray(x), jnp.asarray(y), draw, 5, smoothing=0.0)
  want = x.copy()
  want[:, 1:4, 2:4] = x[::-1][:, 1:4, 2:4]
  lam = 1 - 6 / 36  # the pasted area decides lambda, not the draw
  np.testing.assert_allclose(xc, want)
  np.testing.assert_allclose(t, lam * np.eye(5)[y] + (1 - lam) * np.eye(5)[y[::-1]], rtol=1e-6)
  np.testing.assert_allclose(np.sum(t, axis=1), 1.0, rtol=1e-6)


def test_sample_mix_draws():
  keys = jax.random.split(jax.random.key(0), 200)
  draw = jax.jit(jax.vmap(lambda k: cls.sample_mix(k, image_size=32, mixup_alpha=0.8,
                                                   cutmix_alpha=1.0)))(keys)
  lam, cut, box = map(np.asarray, (draw["lam"], draw["cutmix"], draw["box"]))
  assert np.all((lam >= 0) & (lam <= 1))
  assert 0.35 < cut.mean() < 0.65  # switch_prob 0.5
  assert np.all((box >= 0) & (box <= 32)) and np.all(box[:, 1] >= box[:, 0])
  off = jax.jit(jax.vmap(lambda k: cls.sample_mix(k, image_size=32, mixup_alpha=0.2,
                                                  prob=0.0)))(keys)
  assert np.all(np.asarray(off["lam"]) == 1.0) and not np.any(np.asarray(off["cutmix"]))


def test_random_erasing_boxes():
  sample = jax.jit(cls.sample_erasing, static_argnums=(1, 2, 3, 4), static_argnames="prob")
  d = sample(jax.random.key(1), 64, 32, 32, 3, prob=1.0)
  box = np.asarray(d["box"])
  area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
  assert np.all(box >= 0) and np.all(box[:, 1] <= 32) and np.all(box[:, 3] <= 32)
  assert np.all(area > 0) and np.all(area <= 0.4 * 32 * 32)
  x = jnp.ones((64, 32, 32, 3))
  apply = jax.jit(cls.apply_erasing)
  erased = np.asarray(apply(x, d))
  np.testing.assert_array_equal((erased != 1).any(-1).sum((1, 2)), area)
  none = sample(jax.random.key(1), 64, 32, 32, 3, prob=0.0)
  np.testing.assert_array_equal(apply(x, none), x)


def test_smoothed_targets_and_loss():
  t = np.asarray(cls.smooth_targets(jnp.array([2, 0]), 4, 0.1))
  np.testing.assert_allclose(t, np_onehot(np.array([2, 0]), 4, 0.1), rtol=1e-6)
  logits = np.random.default_rng(0).normal(size=(2, 4))
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(cls.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(t)),
                             -(t * logp).sum(1).mean(), rtol=1e-5)


# --- layer decay ----------------------------------------------------------------------------

def test_layer_decay_multipliers_per_param():
  config = finetune_tiny.get_config("tiny")
  model, _ = classifier_from_config(config.model)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  mult = layer_decay_multipliers(params, depth=2, decay=0.5)
  flat = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(mult)}
  want = {"patch_embed/proj/kernel": 0.125, "cls_token": 0.125, "pos_embed": 0.125,
          "blocks_0/attn/qkv/kernel": 0.25, "blocks_0/norm1/scale": 0.25,
          "blocks_1/mlp/fc2/bias": 0.5, "fc_norm/scale": 1.0, "head/kernel": 1.0,
          "head/bias": 1.0}
  for name, value in want.items():
    assert flat[name] == value, name
  assert set(flat.values()) == {0.125, 0.25, 0.5, 1.0}
  ones = layer_decay_multipliers(params, depth=2, decay=1.0)
  assert set(jax.tree.leaves(ones)) == {1.0}


# --- RandAugment ----------------------------------------------------------------------------

def test_randaugment_ops_keep_shape_and_range():
  image = tf.random.stateless_uniform([20, 24, 3], [1, 2])
  for inc in (True, False):
    for name, fn, level in autoaugment.op_table(inc):
      for m in (0.0, 10.0):
        out = fn(image, level(tf.constant(m), tf.constant(True)))
        assert out.shape == image.shape, name
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0, name
  policy = autoaugment.parse_policy("rand-m9-mstd0.5-inc1")
  assert policy == {"magnitude": 9.0, "std": 0.5, "max": 10.0, "layers": 2, "inc": True}
  a = autoaugment.rand_augment(image, tf.constant([3, 4], tf.int64), policy)
  b = autoaugment.rand_augment(image, tf.constant([3, 4], tf.int64), policy)
  np.testing.assert_array_equal(a, b)  # a pure function of its seed
  with pytest.raises(ValueError, match="randaugment"):
    ops_lib.build("randaugment", {"spec": "rand-x9"}, 32)


def test_randaugment_solarize_posterize_values():
  levels = tf.constant(np.arange(0, 256, 17, dtype=np.float32).reshape(1, -1, 1) / 255.0)
  img = tf.tile(levels, [1, 1, 3])
  q = np.round(img.numpy() * 255)
  np.testing.assert_allclose(np.round(autoaugment.solarize(img, 128).numpy() * 255),
                             np.where(q >= 128, 255 - q, q))
  np.testing.assert_allclose(np.round(autoaugment.posterize(img, 2).numpy() * 255),
                             q.astype(np.int32) & 0b11000000)


# --- exact accuracy under padding ------------------------------------------------------------

@pytest.fixture(scope="module")
def random_classifier():
  config = finetune_tiny.get_config("tiny")
  model, _ = classifier_from_config(config.model)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
  return config, model, params


def test_padded_eval_exact_on_8_and_1_devices(random_classifier):
  config, model, params = random_classifier
  split = "test[:10]"  # 10 examples: not divisible by the batch (8) or the 8 devices
  fn = lambda p, x: model.apply({"params": p}, x, train=False)[0]
  got = {}
  for n in (8, 1):
    mesh = make_mesh(jax.devices()[:n])
    got[n] = accuracy.evaluate_classifier(accuracy.make_count_fn(fn, mesh), params, config.data,
                                          image_size=32, batch_size=8, mesh=mesh, split=split)
  # Reference: one unpadded numpy pass over the same 10 images.
  from maelite_jax import data as data_lib
  batch = next(iter(data_lib.build_eval_iterator(config.data, image_size=32, global_batch_size=10,
                                                 mesh=make_mesh(jax.devices()[:1]), split=split)))
  logits = np.asarray(fn(params, batch["image"]))
  labels = np.asarray(batch["label"])
  ranked = np.argsort(-logits, axis=1)
  top1 = np.mean(ranked[:, 0] == labels)
  top5 = np.mean((ranked[:, :5] == labels[:, None]).any(1))
  assert 0 < top5 < 1 or 0 < top1  # a non-trivial check
  for n, res in got.items():
    assert res["count"] == 10, n
    assert res["top1"] == pytest.approx(top1, abs=1e-12), n
    assert res["top5"] == pytest.approx(top5, abs=1e-12), n


# --- k-NN / few-shot / linear ---------------------------------------------------------------

def np_knn(train, ytr, test, k, t, c):
  norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  sim = norm(test) @ norm(train).T
  out = []
  for row in sim:
    nn = np.argsort(-row)[:k]
    votes = np.zeros(c)
    for i in nn:
      votes[ytr[i]] += np.exp(row[i] / t)
    out.append(votes)
  return np.array(out)


def test_knn_matches_numpy():
  rng = np.random.default_rng(0)
  xtr, ytr = rng.normal(size=(200, 16)), rng.integers(0, 7, 200)
  xte, yte = rng.normal(size=(50, 16)), rng.integers(0, 7, 50)
  scores = knn.knn_predict_scores(xtr.astype(np.float32), ytr, xte.astype(np.float32), k=20,
                                  temperature=0.07, num_classes=7, chunk=16)
  want = np_knn(xtr, ytr, xte, 20, 0.07, 7)
  np.testing.assert_allclose(scores, want, rtol=2e-3)
  acc = knn.knn_accuracy(xtr, ytr, xte, yte, k=20, num_classes=7)
  ranked = np.argsort(-want, axis=1, kind="stable")
  assert acc["top1"] == pytest.approx(np.mean(ranked[:, 0] == yte))
  assert acc["top5"] == pytest.approx(np.mean((ranked[:, :5] == yte[:, None]).any(1)))


def test_knn_separable_is_perfect():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(5, 8)) * 10
  ytr, yte = np.repeat(np.arange(5), 30), np.repeat(np.arange(5), 10)
  xtr = centres[ytr] + rng.normal(size=(150, 8))
  xte = centres[yte] + rng.normal(size=(50, 8))
  assert knn.knn_accuracy(xtr, ytr, xte, yte)["top1"] == 1.0


@pytest.mark.parametrize("n", [40, 6])  # N >= D and N < D use different systems
def test_ridge_matches_lstsq(n):
  rng = np.random.default_rng(n)
  x, y = rng.normal(size=(n, 10)), rng.integers(0, 3, n)
  l2 = 3.0
  w, mean, std = fewshot.ridge_fit(x, y, 3, l2)
  z = np.concatenate([(x - mean) / std, np.full((n, 1), fewshot.BIAS_CONSTANT)], 1)
  t = 2 * np.eye(3)[y] - 1
  # Ridge = least squares on the system augmented with sqrt(l2) I.
  a = np.concatenate([z, np.sqrt(l2) * np.eye(11)])
  b = np.concatenate([t, np.zeros((11, 3))])
  np.testing.assert_allclose(w, np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-6, atol=1e-9)


def test_fewshot_samples_and_separable():
  rng = np.random.default_rng(2)
  centres = rng.normal(size=(4, 6)) * 5
  ytr, yte = np.repeat(np.arange(4), 20), np.repeat(np.arange(4), 5)
  xtr, xte = centres[ytr] + rng.normal(size=(80, 6)), centres[yte] + rng.normal(size=(20, 6))
  idx = fewshot.sample_shots(ytr, 3, 4, seed=0)
  assert np.bincount(ytr[idx], minlength=4).tolist() == [3, 3, 3, 3]
  out = fewshot.fewshot_accuracy(xtr, ytr, xte, yte, shots=(5,), seeds=2, l2_reg=1.0)
  assert out[5]["mean"] == 1.0 and len(out[5]["per_seed"]) == 2


def test_linear_probe_with_lars_separates_blobs():
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(3, 12)) * 3
  y = np.repeat(np.arange(3), 100)
  x = (centres[y] + rng.normal(size=(300, 12))).astype(np.float32)
  optim_cfg = linprobe_tiny.get_config("tiny").evals.linear.optim
  head, norm, hist = linear.train_linear_probe(x, y, 3, optim_cfg, epochs=20, batch_size=64)
  assert hist[-1] < hist[0]
  assert linear.probe_accuracy(head, norm, x, y)["top1"] > 0.97


# --- protocols end to end + results table ----------------------------------------------------

def test_protocols_share_cached_features(tmp_path):
  config = linprobe_tiny.get_config("tiny")
  mesh = make_mesh(jax.devices()[:1])
  run = lambda name: offline.evaluate_checkpoint(config, str(tmp_path), [name], mesh)[name]
  acc = run("knn")
  assert acc["knn_top1"] > 0.3  # even random ViT features beat chance (0.1) with k-NN
  files = list((tmp_path / "features").iterdir())
  assert len(files) == 2  # train and eval features, reused below
  lin, fs = run("linear"), run("fewshot")
  assert lin["linear_top1"] > 0.3 and set(fs) == {"fewshot_1shot", "fewshot_5shot"}
  assert len(list((tmp_path / "features").iterdir())) == 2
  rows = [r for r in results.read_rows(str(tmp_path)) if r["metric"].startswith("top1")]
  assert [(r["protocol"], r["metric"]) for r in rows] == [
      ("knn-k20", "top1"), ("linear", "top1"), ("fewshot", "top1@1shot"),
      ("fewshot", "top1@5shot")]
  assert all(r["pretrain"] == "random-init" and r["dataset"] == "fashion_mnist_builtin"
             for r in rows)


def test_results_csv_rows(tmp_path):
  results.append_rows(str(tmp_path), [
      dict(model="vit", pretrain="mae:x", protocol="linear", dataset="d", metric="top1",
           value=0.5),
      dict(model="vit", protocol="knn", dataset="d", metric="top1", value=0.25, step=7)])
  rows = results.read_rows(str(tmp_path))
  assert [(r["protocol"], r["metric"], r["value"], r["pretrain"], r["step"]) for r in rows] == [
      ("linear", "top1", "50.00", "mae:x", ""), ("knn", "top1", "25.00", "scratch", "7")]
  table = results.format_table(rows)
  assert table.splitlines()[0].split()[:6] == ["model", "pretrain", "protocol", "dataset",
                                              "metric", "value"]
  assert len(table.splitlines()) == 4
