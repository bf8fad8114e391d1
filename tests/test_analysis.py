"""Tests for maelite_jax.analysis (CKA, attention statistics, representations) and analyze.py."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from maelite_jax.analysis import attention, cka, plots, representations
from maelite_jax.models.meta import CheckpointMeta, ModelSpec
from maelite_jax.models.registry import create_model, model_kwargs
from tests.helpers import read_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def structured(n, seed=0, dims=(20, 30), latent=3, noise=1.0):
  """Two feature sets sharing a low-dimensional latent: CKA clearly between 0 and 1."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, latent))
  x = z @ rng.normal(size=(latent, dims[0])) + noise * rng.normal(size=(n, dims[0]))
  y = np.tanh(z @ rng.normal(size=(latent, dims[1]))) + noise * rng.normal(size=(n, dims[1]))
  return x, y


def ref_hsic_unbiased(k, l):
  """Song et al. (2012) HSIC_1, written out directly (no centring of the features)."""
  n = k.shape[0]
  k, l = k.copy(), l.copy()
  np.fill_diagonal(k, 0.0)
  np.fill_diagonal(l, 0.0)
  one = np.ones(n)
  return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
          - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def ref_linear_cka(x, y):
  """Feature-space linear CKA (Kornblith et al. 2019): ||Y'X||^2 / (||X'X|| ||Y'Y||)."""
  x = x - x.mean(0)
  y = y - y.mean(0)
  return np.linalg.norm(y.T @ x)**2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


# ---------------------------------------------------------------------------------------- CKA


def test_cka_self_is_one():
  x, _ = structured(64)
  assert cka.cka(x, x) == pytest.approx(1.0, abs=1e-6)
  assert cka.cka(x, x, unbiased=True) == pytest.approx(1.0, abs=1e-6)
  assert cka.cka(x, x, kernel="rbf") == pytest.approx(1.0, abs=1e-6)
  acc = cka.MinibatchCKA(1, 1)
  for b in np.split(x, 4):
    acc.update([b], [b])
  assert acc.result()[0, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_invariant_to_rotation_and_scale(kernel):
  x, y = structured(96, seed=1)
  q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(x.shape[1],) * 2))
  base = cka.cka(x, y, kernel)
  assert 0.1 < base < 0.95
  assert cka.cka(x @ q, y, kernel) == pytest.approx(base, abs=1e-5)
  assert cka.cka(3.7 * x, 0.2 * y, kernel) == pytest.approx(base, abs=1e-5)
  acc, acc_t = cka.MinibatchCKA(1, 1, kernel), cka.MinibatchCKA(1, 1, kernel)
  for bx, by in zip(np.split(x, 3), np.split(y, 3)):
    acc.update([bx], [by])
    acc_t.update([5.0 * bx @ q], [by])
  np.testing.assert_allclose(acc_t.result(), acc.result(), atol=1e-5)


def test_cka_matches_independent_numpy():
  x, y = structured(80, seed=3)
  assert cka.cka(x, y) == pytest.approx(ref_linear_cka(x, y), abs=1e-5)
  k, l = x @ x.T, y @ y.T
  assert cka.hsic_unbiased_cross(k[None], l[None])[0, 0] == pytest.approx(
      ref_hsic_unbiased(k, l), rel=1e-9)
  # float32 grams of batch-centred features give the same unbiased HSIC (shift invariance).
  got = cka.cka(x, y, unbiased=True)
  want = ref_hsic_unbiased(k, l) / np.sqrt(ref_hsic_unbiased(k, k) * ref_hsic_unbiased(l, l))
  assert got == pytest.approx(want, abs=1e-5)


def test_minibatch_streaming_equals_all_batches_at_once():
  """Every layer pair; batches fed one by one = the per-batch formula over all batches at once."""
  rng = np.random.default_rng(4)
  xs = [structured(120, seed=s)[0] for s in range(3)]  # model A: 3 layers
  ys = [structured(120, seed=s)[1] for s in (0, 7)]     # model B: 2 layers
  xs[1] = xs[1] + 0.1 * rng.normal(size=xs[1].shape)
  acc = cka.MinibatchCKA(3, 2)
  batches = np.split(np.arange(120), 5)
  for idx in batches:
    acc.update([x[idx] for x in xs], [y[idx] for y in ys])
  want = np.zeros((3, 2))
  for a, x in enumerate(xs):
    for b, y in enumerate(ys):
      kl = np.mean([ref_hsic_unbiased(x[i] @ x[i].T, y[i] @ y[i].T) for i in batches])
      kk = np.mean([ref_hsic_unbiased(x[i] @ x[i].T, x[i] @ x[i].T) for i in batches])
      ll = np.mean([ref_hsic_unbiased(y[i] @ y[i].T, y[i] @ y[i].T) for i in batches])
      want[a, b] = kl / np.sqrt(kk * ll)
  np.testing.assert_allclose(acc.result(), want, atol=1e-5)
  assert acc.num_batches == 5 and acc.num_examples == 120


def test_minibatch_padding_is_ignored():
  x, y = structured(24, seed=5)
  acc, padded = cka.MinibatchCKA(1, 1), cka.MinibatchCKA(1, 1)
  for i in range(3):
    bx, by = x[8 * i:8 * i + 8], y[8 * i:8 * i + 8]
    acc.update([bx], [by])
    pad = np.full((4, x.shape[1]), 9.0), np.full((4, y.shape[1]), -3.0)
    valid = np.r_[np.ones(8, bool), np.zeros(4, bool)]
    padded.update([np.r_[bx, pad[0]]], [np.r_[by, pad[1]]], valid)
  np.testing.assert_allclose(padded.result(), acc.result(), atol=1e-6)


def test_minibatch_approaches_full_data_cka():
  n = 1024
  x, y = structured(n, seed=6)
  full = ref_linear_cka(x, y)
  assert 0.2 < full < 0.9

  def err(bs):
    errs = []
    for s in range(4):
      perm = np.random.default_rng(s).permutation(n)
      acc = cka.MinibatchCKA(1, 1)
      for idx in np.split(perm, n // bs):
        acc.update([x[idx]], [y[idx]])
      errs.append(abs(acc.result()[0, 0] - full))
    return np.mean(errs)

  e8, e64, e512 = err(8), err(64), err(512)
  assert e8 > e64 > e512
  assert e512 < 0.01


# ---------------------------------------------------------------------------------- attention


def mean_pair_distance(g):
  """Mean Euclidean distance between all ordered pairs of cells of a g x g grid, by brute force."""
  cells = [(r, c) for r in range(g) for c in range(g)]
  return np.mean([np.hypot(r1 - r2, c1 - c2) for r1, c1 in cells for r2, c2 in cells])


def test_uniform_and_identity_attention():
  g, heads = 4, 3
  n = g * g
  dist = attention.grid_distances(g, scale=16.0)
  uniform = np.zeros((2, heads, 1 + n, 1 + n), np.float32)
  uniform[:, :, 0, :] = 50.0  # cls row/column are removed before the softmax
  uniform[:, :, :, 0] = 50.0
  d, e = attention.attention_stats(uniform, dist)
  np.testing.assert_allclose(d, 16.0 * mean_pair_distance(g), rtol=1e-5)
  np.testing.assert_allclose(e, np.log(n), rtol=1e-3)
  identity = np.where(np.eye(1 + n, dtype=bool), 0.0, -1e4).astype(np.float32)
  identity = np.broadcast_to(identity, (2, heads, 1 + n, 1 + n))
  d, e = attention.attention_stats(identity, dist)
  np.testing.assert_allclose(d, 0.0, atol=1e-6)
  np.testing.assert_allclose(e, 0.0, atol=1e-4)


def test_distance_units_and_accumulator():
  assert attention.pixels_per_patch(16, 196, "patch") == 16.0
  assert attention.pixels_per_patch(16, 196, "sqrt_tokens") == 14.0
  assert attention.pixels_per_patch(16, 196, "grid") == 1.0
  with pytest.raises(ValueError):
    attention.pixels_per_patch(16, 196, "inches")
  acc = attention.AttentionAccumulator()
  acc.update(np.ones((2, 3, 4)), np.full((2, 3, 4), 2.0), valid=np.array([1, 1, 0], bool))
  acc.update(np.full((2, 1, 4), 4.0), np.zeros((2, 1, 4)))
  out = acc.result()
  np.testing.assert_allclose(out["distance"], 2.0)
  np.testing.assert_allclose(out["entropy"], 4.0 / 3.0)
  assert out["num_images"] == 3


def test_default_distance_unit_is_the_papers_grid_times_sqrt_tokens():
  """The paper's figures: grid distance x sqrt(N) (x14 at 224/16), by default everywhere."""
  from configs import analyze as analyze_config
  g = 8
  logits = np.random.default_rng(3).normal(size=(2, 3, 1 + g * g, 1 + g * g)).astype(np.float32)
  rows, cols = np.divmod(np.arange(g * g), g)
  grid = np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None])
  z = logits[:, :, 1:, 1:].astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = np.einsum("bhqk,qk->bhq", p, grid * np.sqrt(g * g)).mean(-1)
  np.testing.assert_allclose(attention.attention_stats(logits)[0], want, rtol=1e-5)
  np.testing.assert_allclose(attention.grid_distances(g), grid * g, rtol=1e-12)
  assert attention.pixels_per_patch(16, 196) == 14.0
  config = analyze_config.get_config()
  assert config.attention.distance_unit == "sqrt_tokens"
  from maelite_jax.train import mesh as mesh_lib
  _, scale = _load_script().make_batch_fn(tiny_vit(), config, mesh_lib.make_mesh())
  assert scale == 8.0  # 64 patches of 4 px: sqrt(N), not the patch size


def test_cls_attention_map_sums_with_cls_to_one():
  logits = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32)
  m = np.asarray(attention.attention_map(logits, "cls"))
  assert m.shape == (2, 3, 4) and np.all(m.sum(-1) < 1.0)
  np.testing.assert_allclose(np.asarray(attention.attention_map(logits, 2)).sum(-1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------- representations


def random_params(model, *args, seed=0):
  """Random weights of the right shapes via eval_shape (eager flax init is slow on busy CPUs)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  leaves, tree = jax.tree.flatten_with_path(shapes)
  rng = np.random.default_rng(seed)
  values = [np.ones(s.shape, np.float32) if path[-1].key == "scale" else
            (0.2 * rng.normal(size=s.shape)).astype(np.float32) for path, s in leaves]
  return jax.tree.unflatten(tree, values)


def tiny_vit(depth=2):
  return create_model("vit_tiny_patch16", image_size=32, patch_size=4, depth=depth, embed_dim=32,
                      num_heads=4)


def _layer_norm(x, scale=1.0, bias=0.0):
  """LayerNorm over the last axis in numpy, eps 1e-6 (the reference's fc_norm)."""
  x = np.asarray(x, np.float64)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def _with_norm(params, key, seed):
  rng = np.random.default_rng(seed)
  dim = params[key]["scale"].shape[0]
  return dict(params, **{key: {"scale": (1.0 + 0.5 * rng.normal(size=dim)).astype(np.float32),
                               "bias": rng.normal(size=dim).astype(np.float32)}})


def test_representations_are_norm1_inputs_and_a_fresh_norm_of_the_last_block():
  """MAE-Lite's 13th representation of a pre-trained encoder is fc_norm of the last block's
  tokens in a global_pool=True fine-tune model: freshly initialised, not the trained `norm`."""
  import flax.linen as nn
  model = tiny_vit()
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  params = random_params(model, x)
  a, b = _with_norm(params, "norm", 2), _with_norm(params, "norm", 3)
  out = representations.forward(model, a, x)
  assert len(out["reps"]) == 3 and out["reps"][0].shape == (2, 64, 32)
  assert out["logits"][1].shape == (2, 4, 65, 65)
  np.testing.assert_allclose(out["reps"][2], representations.forward(model, b, x)["reps"][2],
                             atol=1e-6)
  final, aux = model.apply({"params": a}, x, return_tokens=(0, 1))
  np.testing.assert_allclose(out["reps"][2], _layer_norm(aux["tokens"][1])[:, 1:], atol=1e-4)
  ln = nn.LayerNorm(epsilon=1e-6).apply({"params": a["blocks_1"]["norm1"]}, aux["tokens"][0])
  np.testing.assert_allclose(out["reps"][1], ln[:, 1:], atol=1e-5)
  assert representations.layer_labels(2) == ["b0", "b1", "out"]
  # MAE-Lite runs MoCo-v3 with global_pool=False: the trained final norm.
  meta = lambda name, objective="", **kw: CheckpointMeta(ModelSpec(name, kw), objective)
  for m in (meta("vit_tiny_patch16", "mocov3"), meta("vit_tiny_patch16", posemb="mocov3")):
    assert representations.last_norm(m, {"encoder": a}) == "norm"
  assert representations.last_norm(meta("mae_vit_tiny_patch16", "mae"), {"encoder": a}) == "fresh"
  normed = representations.forward(model, a, x, last="norm")["reps"][2]
  np.testing.assert_allclose(normed, final[:, 1:], atol=1e-5)


def test_last_representation_of_an_avg_pooled_classifier_uses_its_trained_fc_norm():
  model = create_model("vit_tiny_patch16", image_size=32, patch_size=4, depth=2, embed_dim=32,
                       num_heads=4, num_classes=5, global_pool="avg")
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  params = _with_norm(random_params(model, x), "fc_norm", 4)
  assert "norm" not in params
  out = representations.forward(model, params, x)
  _, aux = model.apply({"params": params}, x, return_tokens=(1,))
  want = _layer_norm(aux["tokens"][1], params["fc_norm"]["scale"], params["fc_norm"]["bias"])
  np.testing.assert_allclose(out["reps"][2], want[:, 1:], atol=1e-4)
  assert representations.last_norm(
      CheckpointMeta(ModelSpec("vit_tiny_patch16"), "classification"), params) == "fc_norm"


# ------------------------------------------------------------------------------------- script


def _load_script():
  """What scripts/analyze.py runs."""
  from maelite_jax.analysis import report
  return report


def _save_checkpoint(path, name, seed, step=0):
  from maelite_jax.train.checkpoint import save_params
  kw = dict(image_size=32, patch_size=4, depth=2, embed_dim=32, num_heads=4)
  if name.startswith("mae_"):
    kw.update(decoder_embed_dim=16, decoder_num_heads=2)
  model = create_model(name, **kw)
  x = np.zeros((1, 32, 32, 3), np.float32)
  args = (x, np.zeros((1, 64), np.float32)) if name.startswith("mae_") else (x,)
  params = random_params(model, *args, seed=seed)
  meta = {"model": {"name": name, "kwargs": model_kwargs(name, **kw)},
          "objective": "mae" if name.startswith("mae_") else ""}
  save_params(str(path), params, meta, step=step)


def test_parse_models():
  analyze = _load_script()
  assert analyze.parse_models("a=/r/x, /runs/mae_cpu/checkpoints/400") == [
      ("a", "/r/x"), ("mae_cpu", "/runs/mae_cpu/checkpoints/400")]
  with pytest.raises(ValueError):
    analyze.parse_models("/r/x,/s/x")
  with pytest.raises(ValueError):
    analyze.parse_models("")


def test_script_writes_figures_and_json(tmp_path):
  from maelite_jax.configs import analyze as analyze_config
  analyze = _load_script()
  _save_checkpoint(tmp_path / "mae", "mae_vit_tiny_patch16", 0)
  _save_checkpoint(tmp_path / "vit", "vit_tiny_patch16", 1, step=1)
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for cls in ("a", "b"):
      (tmp_path / "images" / split / cls).mkdir(parents=True)
      for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / "images" / split / cls / f"{i}.png")
  config = analyze_config.get_config("tiny")
  config.models = f"mae={tmp_path / 'mae'},{tmp_path / 'vit'}"
  config.data.dataset = "imagefolder"
  config.data.data_dir = str(tmp_path / "images")
  config.num_images = 10  # one full batch of 8 and a partial one
  out = tmp_path / "out"
  result = analyze.run(config, str(out))

  assert result["num_images"] == 10
  with open(out / "analysis.json") as f:
    saved = json.load(f)
  pairs = {(p["a"], p["b"]): np.asarray(p["matrix"]) for p in saved["cka"]["pairs"]}
  assert set(pairs) == {("mae", "mae"), ("mae", "vit"), ("vit", "vit")}
  np.testing.assert_allclose(np.diag(pairs[("mae", "mae")]), 1.0, atol=1e-5)
  assert pairs[("mae", "vit")].shape == (3, 3)
  assert np.asarray(saved["attention"]["vit"]["distance"]).shape == (2, 4)
  sizes = {
      "cka_mae_vs_mae.png": plots.cka_size(), "cka_mae_vs_vit.png": plots.cka_size(),
      "cka_vit_vs_vit.png": plots.cka_size(),
      "attention_distance.png": plots.head_stats_size(2), "attention_entropy.png":
      plots.head_stats_size(2), "attn_maps_mae_block0.png": plots.attention_maps_size(2, 2),
      "attn_maps_vit_block1.png": plots.attention_maps_size(2, 2), "recon_mae.png": None}
  assert set(sizes) <= set(saved["figures"]) and "recon_vit.png" not in saved["figures"]
  for name, size in sizes.items():
    with Image.open(out / name) as im:
      im.verify()
    with Image.open(out / name) as im:
      assert im.format == "PNG"
      if size is not None:
        assert im.size == size, name
  assert plots.cka_size() == (550, 500)
  # TensorBoard: every figure as an image (its PNG's size), summary scalars, at the newest step
  events = read_events(str(out))
  assert set(events["images"]) == {os.path.splitext(f)[0] for f in saved["figures"]}
  for name, size in sizes.items():
    shown = events["images"][os.path.splitext(name)[0]]
    assert list(shown) == [1] and (size is None or shown[1] == size), name
  assert {"attention_distance/mae", "attention_entropy/vit", "cka_last/mae_vs_vit",
          "cka_same_depth/mae_vs_vit"} <= set(events["scalars"])
  assert events["scalars"]["cka_same_depth/mae_vs_mae"][1] == pytest.approx(1.0, abs=1e-5)
  # titles (also in each PNG's metadata) say which model, objective and checkpoint step
  titles = {n: Image.open(out / n).text["Title"] for n in sizes}
  assert titles["cka_mae_vs_vit.png"] == (
      "linear CKA (10 images): mae (MAE, step 0) vs vit (imported, step 1)")
  assert titles["attn_maps_vit_block1.png"] == "vit (imported, step 1): block 1, query cls"
  assert titles["recon_mae.png"].startswith("mae (MAE, step 0): reconstructions (mean hidden")
  assert titles["attention_distance.png"].startswith("attention distance per head")


def test_reconstruction_figure_names_objective_run_and_step(tmp_path):
  """The training monitor's figure (reconstruction evaluator) for D-MAE says D-MAE, the run and
  the step, has reconstruction_size pixels, and marks hidden patches (blue in the input) apart
  from visible ones (grey in the error panel, which never scores them)."""
  import types
  from maelite_jax.analysis.reconstruction import reconstruction_panels, reconstruction_size
  from maelite_jax.configs import mae_tiny
  from maelite_jax.evaluate.reconstruction import ReconstructionEvaluator
  from maelite_jax.objectives import mae as mae_obj
  from maelite_jax.train import mesh as mesh_lib
  config = mae_tiny.get_config("tiny")
  mae = create_model("mae_vit_tiny_patch16", image_size=32, patch_size=4, depth=1)
  x = np.zeros((1, 32, 32, 3), np.float32)
  params = random_params(mae, x, np.zeros((1, 64), np.float32), seed=0)

  def reconstruct(p, images, noise):
    out = mae.apply({"params": p}, images, noise)
    return out["pred"], out["mask"]

  objective = types.SimpleNamespace(name="dmae", model=mae, reconstruct=reconstruct,
                                    norm_pix_loss=True)
  workdir = tmp_path / "dmae_run"
  workdir.mkdir()
  ev = ReconstructionEvaluator(config.evals.reconstruction, name="reconstruction",
                               run_config=config, model=objective,
                               mesh=mesh_lib.make_mesh(jax.devices()[:1]), workdir=str(workdir),
                               features=None)
  result = ev.run(params, 7)
  with Image.open(workdir / "reconstruction_step0000007.png") as im:
    assert im.size == reconstruction_size(config.evals.reconstruction.num_images)
    assert im.text["Title"].startswith("D-MAE dmae_run, step 7 (mean hidden-patch error")
  assert result.images["reconstruction"].shape == (*reversed(im.size), 3)
  assert result.scalars["recon_hidden_error"] > 0
  images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  noise = mae_obj.masking_noise(jax.random.key(0), 2, 64)
  pred, mask = reconstruct(params, images, noise)
  panels = reconstruction_panels(images, pred, mask, 4, True, (0.5,) * 3, (0.25,) * 3)
  hidden = np.asarray(mask).reshape(2, 8, 8) > 0
  assert np.all(np.isnan(panels["error"][~hidden])) and np.all(panels["error"][hidden] >= 0)
  first_hidden = np.argwhere(hidden[0])[0] * 4
  np.testing.assert_allclose(panels["masked"][0, first_hidden[0], first_hidden[1]],
                             (0.62, 0.78, 0.95))  # blue, not Fashion-MNIST's black background


def test_segmentation_figure_has_titles_legend_and_size(tmp_path):
  names = ["background", "shirt", "shoe"]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, (3, 32, 32))
  labels[0, :4] = 255  # ignored pixels
  preds = rng.integers(0, 2, (3, 32, 32))
  path = plots.plot_segmentation(str(tmp_path / "seg.png"), images, labels, preds, names,
                                 "segmentation: run, step 5")
  with Image.open(path) as im:
    assert im.size == plots.segmentation_size(3) == (760, 690)
    assert im.text["Title"] == "segmentation: run, step 5"
    legend = np.asarray(im.convert("RGB"))[:, 600:]  # the fourth column: the class legend
  colours = plots.palette()
  for c in (1, 2):  # a swatch of each class present, in its colour
    assert np.all(legend == colours[c], axis=-1).sum() > 20, c
  assert plots.legend_entries(labels, preds, names) == [
      (tuple(colours[0]), "background"), (tuple(colours[1]), "shirt"),
      (tuple(colours[2]), "shoe"), ((255, 255, 255), "ignored")]


def test_only_checkpoints_with_a_decoder_count_as_mae():
  """MoCo-v3 keeps its ViT under params['encoder'] too; only a decoder makes reconstructions."""
  from maelite_jax.analysis.representations import is_mae
  assert is_mae({"encoder": {}, "decoder_pred": {}})
  assert not is_mae({"encoder": {}, "projector": {}, "predictor": {}})  # MoCo-v3
  assert not is_mae({"blocks_0": {}})
