"""Semantic segmentation: metrics against numpy, joint augmentation alignment, the feature
pyramid, sliding windows, checkpoint mapping, exact sharded eval, and a short smoke run that
clearly beats the all-background mIoU. Tiny models only (embed 32, depth 4, 32 px, patch 4)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from maelite_jax import data as data_lib
from maelite_jax.analysis import plots
from maelite_jax.configs import seg_tiny
from maelite_jax.data import seg_sources, transforms
from maelite_jax.evaluate import segmentation as sm
from maelite_jax.models import segmentation as seg_models
from maelite_jax.models.meta import CheckpointMeta, ModelSpec
from maelite_jax.run import build_trainer
from maelite_jax.tasks.segmentation import Segmentation, pixel_cross_entropy
from maelite_jax.train import checkpoint, optim, pretrained, results
from maelite_jax.train import mesh as mesh_lib
from tests.helpers import override, read_events

TINY = {"model.embed_dim": 32, "model.depth": 4, "model.num_heads": 2}


def seg_config(**overrides):
  return override(seg_tiny.get_config("tiny"), **dict(TINY, **overrides))


def reference_scores(pred, label, num_classes, ignore=255):
  """Independent numpy mIoU / pixel accuracy: per-class sets of pixels."""
  valid = label != ignore
  ious = []
  for c in range(num_classes):
    inter = np.sum(valid & (pred == c) & (label == c))
    union = np.sum(valid & ((pred == c) | (label == c)))
    if union:
      ious.append(inter / union)
  return np.mean(ious), np.sum(valid & (pred == label)) / np.sum(valid), len(ious)


def test_miou_matches_numpy_with_ignore_absent_classes_and_padding():
  rng = np.random.default_rng(0)
  c = 6
  label = rng.integers(0, 4, (5, 7, 9))  # classes 4, 5 never in the labels
  label[rng.random(label.shape) < 0.2] = 255
  pred = rng.integers(0, 5, label.shape)  # class 4 predicted (union > 0), class 5 absent
  example_mask = np.array([1, 1, 0, 1, 1], np.float32)  # example 2 is padding
  conf = jax.jit(sm.confusion_matrix, static_argnums=2)(pred, label.astype(np.uint8), c,
                                                       example_mask)
  res = sm.scores(np.asarray(conf))
  keep = example_mask > 0
  miou, acc, present = reference_scores(pred[keep], label[keep], c)
  assert res["miou"] == pytest.approx(miou, abs=1e-12)
  assert res["pixel_acc"] == pytest.approx(acc, abs=1e-12)
  assert res["count"] == np.sum(label[keep] != 255) and present == 5
  assert np.isnan(res["iou"][5]) and res["iou"][4] == 0.0
  # The trivial baseline: class 0 everywhere on the same pixels.
  base = sm.scores(sm.constant_prediction_conf(conf, 0))
  zeros = np.zeros_like(pred[keep])
  assert base["miou"] == pytest.approx(reference_scores(zeros, label[keep], c)[0], abs=1e-12)


def test_pixel_cross_entropy_ignores_pixels_and_divides_by_all():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  label = rng.integers(0, 5, (2, 3, 4))
  label[0, 0] = 255
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  valid = label != 255
  nll = -np.take_along_axis(logp, np.where(valid, label, 0)[..., None], -1)[..., 0] * valid
  got = pixel_cross_entropy(logits, label)
  assert float(got) == pytest.approx(nll.sum() / label.size, rel=1e-5)
  got = pixel_cross_entropy(logits, label, avg_non_ignore=True)
  assert float(got) == pytest.approx(nll.sum() / valid.sum(), rel=1e-5)


def test_joint_augmentation_keeps_image_and_mask_aligned():
  """Mask = threshold of the red channel; after augmenting both, the threshold of the augmented
  image gives the augmented mask again (away from resampling borders and padding)."""
  rng = np.random.default_rng(2)
  blocks = rng.random((6, 5)) > 0.5  # big asymmetric blocks: flips and crops show up
  red = np.kron(blocks, np.ones((8, 8)))  # (48, 40)
  image = np.stack([red, rng.random(red.shape) * 0.3, np.zeros_like(red)], -1)
  mask = np.where(red > 0.5, 1, 0).astype(np.uint8)
  agree = []
  for s in range(12):
    img, msk = transforms.joint_augment(tf.constant(image, tf.float32), tf.constant(mask),
                                      tf.constant([s, 7], tf.int64), crop_size=32, base_size=32,
                                      scale_range=(0.5, 2.0))
    img, msk = img.numpy(), msk.numpy().astype(int)
    assert img.shape == (32, 32, 3) and msk.shape == (32, 32)
    again = (img[..., 0] > 0.5).astype(int)
    pad = msk == 255
    assert np.all(img[pad] == 0)  # padding: image 0, mask ignore
    # Interior pixels: the mask is constant over their 3x3 neighbourhood.
    m = np.pad(np.where(pad, -1, msk), 1, mode="edge")
    same = np.ones_like(msk, bool)
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        same &= m[1 + dy:33 + dy, 1 + dx:33 + dx] == msk
    inner = same & ~pad
    assert inner.sum() > 100
    agree.append(np.mean(again[inner] == msk[inner]))
  assert min(agree) > 0.99, agree


def test_label_mappings_of_the_datasets():
  ann = np.zeros((2, 3, 3), np.uint8)
  ann[..., 0] = [[0, 1, 150], [2, 0, 255]]
  _, mask = seg_sources.ade_pair({"image": tf.zeros((2, 3, 3), tf.uint8), "annotation": ann})
  np.testing.assert_array_equal(mask, [[255, 0, 149], [1, 255, 255]])
  trimap = np.array([[1, 2], [3, 1]], np.uint8)[..., None]
  for species, pet in ((0, 1), (1, 2)):  # cat -> 1, dog -> 2
    _, mask = seg_sources.pets_pair({"image": tf.zeros((2, 2, 3), tf.uint8), "species": species,
                                  "segmentation_mask": trimap})
    np.testing.assert_array_equal(mask, [[pet, 0], [255, pet]])
  image = np.array([[0, 32], [33, 255]], np.uint8)[..., None]
  _, mask = seg_sources.builtin_pair({"image": image, "label": tf.constant(4)})
  np.testing.assert_array_equal(mask, [[0, 0], [5, 5]])  # > FG_THRESHOLD = 32 -> class + 1
  np.testing.assert_array_equal(seg_sources.reduce_zero(tf.constant([0, 1, 5, 255], tf.uint8)),
                                [255, 0, 4, 255])


def test_folder_dataset_pairs_images_with_label_maps(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(4)
  for sub in ("images", "masks"):
    (tmp_path / "train" / sub).mkdir(parents=True)
  for i, (h, w) in enumerate([(20, 30), (30, 20), (24, 24)]):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        tmp_path / "train" / "images" / f"im{i}.jpg")
    Image.fromarray(np.full((h, w), i, np.uint8)).save(tmp_path / "train" / "masks" / f"im{i}.png")
  data = seg_tiny.seg_data("imagefolder", data_dir=str(tmp_path), train_split="train",
                           eval_split="train", reduce_zero_label=True)
  one = mesh_lib.make_mesh(jax.devices()[:1])
  (batch,) = list(data_lib.build_eval_iterator(data, image_size=16, global_batch_size=4,
                                               mesh=one))
  label, mask = np.asarray(batch["label"]), np.asarray(batch["mask"])
  np.testing.assert_array_equal(mask, [1, 1, 1, 0])
  assert np.all(label[0] == 255)  # class 0 -> ignore (reduce_zero_label)
  assert set(np.unique(label[1])) == {0, 255} and np.all(label[1][:, :11] == 0)  # 20 -> 11 px
  assert np.all(label[2] == 1) and np.all(label[3] == 255)  # square: no padding; padding row
  train = next(data_lib.build_train_iterator(data, image_size=16, global_batch_size=2, mesh=one,
                                             seed=0))
  assert train["image"].shape == (2, 16, 16, 3) and train["label"].dtype == np.uint8
  Image.fromarray(np.zeros((20, 30), np.uint8)).convert("P").save(
      tmp_path / "train" / "masks" / "im0.png")
  with pytest.raises(ValueError, match="not an 8-bit label map"):
    data_lib.validate_data_config(data, 16)


@pytest.mark.parametrize("state", ["unset", "missing", "no_masks", "empty"])
def test_missing_ade20k_folder_error_describes_images_and_masks(tmp_path, state):
  """The ADE20K recipe on a folder that is not there (or half there): the error names the
  segmentation layout (<split>/images + <split>/masks), never the classification one
  (<split>/<class>), through the same check the command line runs before compiling."""
  from maelite_jax.train.validate import validate_config
  from maelite_jax.utils.errors import ConfigError
  root = tmp_path / "ade"
  if state in ("no_masks", "empty"):
    for split in ("training", "validation"):
      (root / split / "images").mkdir(parents=True)
      if state == "empty":
        (root / split / "masks").mkdir(parents=True)
  config = seg_tiny.get_config("ade20k")
  if state != "unset":
    config = override(config, **{"data.data_dir": str(root)})
  with pytest.raises(ConfigError) as e:
    validate_config(config, num_devices=1, workdir=str(tmp_path / "run"))
  message = str(e.value)
  assert "images" in message and "masks" in message and "<class>" not in message, message
  assert "training" in message and "docs/segmentation.md" in message, message
  assert message.startswith({"unset": "config.data.data_dir", "missing": "config.data.data_dir",
                             "no_masks": "config.data.train_split",
                             "empty": "config.data.train_split"}[state]), message


@pytest.mark.parametrize("size,patch", [(32, 4), (40, 4), (64, 16), (48, 8), (96, 8)])
def test_feature_pyramid_shapes_and_strides(size, patch):
  task = Segmentation(seg_config(**{"model.image_size": size, "model.patch_size": patch,
                                        "model.num_classes": 5, "model.remat": size == 96}))
  x = jnp.zeros((2, size, size, 3))
  (logits, pyramid), _ = jax.eval_shape(
      lambda: task.model.init_with_output(jax.random.key(0), x, return_pyramid=True))
  assert logits.shape == (2, size, size, 5)
  strides = seg_models.pyramid_strides(patch)
  assert strides == (patch / 4, patch / 2, patch, 2 * patch)
  for level, stride in zip(pyramid, strides):
    assert level.shape == (2, int(size // stride), int(size // stride), 32)


def test_deconv_is_torch_conv_transpose():
  x = np.random.default_rng(3).normal(size=(2, 3, 4, 5)).astype(np.float32)
  layer = seg_models.Deconv2x2(7)
  params = layer.init(jax.random.key(0), x)
  y, k = np.asarray(layer.apply(params, x)), np.asarray(params["params"]["kernel"])
  assert y.shape == (2, 6, 8, 7)
  for a in (0, 1):
    for b in (0, 1):
      np.testing.assert_allclose(y[:, a::2, b::2], x @ k[a, b], atol=1e-5)


def test_sliding_window_averages_every_covering_window():
  assert seg_models.window_starts(683, 512, 341) == [0, 171]
  assert seg_models.window_starts(64, 32, 32) == [0, 32]
  assert seg_models.window_starts(32, 32, 21) == [0]
  # Each window's 'logits' are its local pixel coordinates: the average is checkable in numpy.
  local = np.stack(np.meshgrid(np.arange(16), np.arange(16), indexing="ij"), -1)
  fn = lambda x: jnp.broadcast_to(jnp.asarray(local, jnp.float32), x.shape[:3] + (2,)) + x[..., :1]
  images = np.zeros((2, 40, 40, 3), np.float32)
  out = np.asarray(seg_models.slide_logits(fn, images, 16, 10))
  total, count = np.zeros((40, 40, 2)), np.zeros((40, 40, 1))
  for y in (0, 10, 20, 24):
    for x in (0, 10, 20, 24):
      total[y:y + 16, x:x + 16] += local
      count[y:y + 16, x:x + 16] += 1
  np.testing.assert_allclose(out[1], total / count, atol=1e-5)


def test_adapt_pretrained_maps_any_encoder_and_resizes_pos_embed():
  config = seg_config()
  task = Segmentation(config)
  shapes = jax.eval_shape(task.init, jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 3))})[0]
  target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  encoder = jax.tree.map(lambda a: a + 1.0, target["backbone"])
  mae = {"encoder": {k: v for k, v in encoder.items() if k != "pos_embed"}, "decoder_x": 0}
  out = pretrained.map_pretrained(
      target, mae, CheckpointMeta(ModelSpec("mae_vit_tiny_patch16"), objective="mae"), task)
  np.testing.assert_array_equal(out["backbone"]["blocks_3"]["attn"]["qkv"]["kernel"], 1.0)
  np.testing.assert_array_equal(out["backbone"]["pos_embed"], 0.0)  # fixed sin-cos: target's
  np.testing.assert_array_equal(out["decode_head"]["classifier"]["kernel"], 0.0)  # fresh head
  # A fine-tuned classifier at 48 px (learned 6x6 table, fc_norm, head, no norm) -> 8x8 grid.
  clf = {k: v for k, v in encoder.items() if k != "norm"}
  clf.update(pos_embed=np.ones((1, 37, 32), np.float32), head={"kernel": 0}, fc_norm={})
  out = pretrained.map_pretrained(
      target, clf, CheckpointMeta(ModelSpec("vit_tiny_patch16"), objective="classification"),
      task)
  assert out["backbone"]["pos_embed"].shape == (1, 65, 32)
  np.testing.assert_allclose(out["backbone"]["pos_embed"], 1.0, atol=1e-5)
  assert set(out) == set(target)
  # Layer-wise lr decay: embeddings lowest, blocks in between, neck and head at 1.
  decay, depth = config.optim.layer_decay, 4
  mult = optim.lr_multipliers(shapes, layer_decay=decay)
  assert mult["backbone"]["patch_embed"]["proj"]["kernel"] == pytest.approx(decay**(depth + 1))
  assert mult["backbone"]["blocks_3"]["mlp"]["fc1"]["kernel"] == pytest.approx(decay)
  assert mult["decode_head"]["classifier"]["kernel"] == 1.0
  assert mult["pyramid"]["fpn1_deconv1"]["kernel"] == 1.0


def test_poly_schedule_and_configs():
  cfg = override(seg_tiny.get_config("ade20k").optim, warmup_init_lr=0.0)
  sched = optim.lr_schedule(cfg, 16, total_steps=1100, warmup_steps=100)
  assert float(sched(50)) == pytest.approx(0.5e-4)
  assert float(sched(100)) == pytest.approx(1e-4)
  assert float(sched(600)) == pytest.approx(0.5e-4)  # linear (power 1) half-way down
  assert float(sched(1100)) == pytest.approx(0.0, abs=1e-12)
  ade = seg_tiny.get_config("ade20k")
  assert (ade.model.image_size, ade.batch_size, ade.total_steps) == (512, 16, 160_000)
  assert seg_tiny.get_config("").to_dict() == ade.to_dict()
  assert seg_tiny.get_config("pets").model.num_classes == 3
  assert seg_tiny.get_config("cpu").model.num_classes == 11


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("seg"))
  # 60 steps of 32 crops at a high lr; 16 visualised images (that compiled predict is reused).
  config = seg_config(**{"total_steps": 60, "batch_size": 32, "optim.base_lr": 3e-3,
                         "optim.lr_scale_batch": 32, "optim.warmup_steps": 5,
                         "optim.layer_decay": 0.8, "eval_every": 30, "checkpoint_every": 60,
                         "log_every": 30, "data.eval_split": "test[:256]",
                         "evals.segmentation.batch_size": 128,
                         "evals.segmentation.num_images": 16})
  trainer = build_trainer(config, workdir)
  final = trainer.run()
  return trainer, workdir, final


def test_short_run_beats_all_background(short_run):
  trainer, workdir, final = short_run
  assert trainer.mesh.size == 8
  base = final["miou_all_background"]
  assert 0.02 < base < 0.1, final  # ~0.55 IoU for background / 11 classes present
  assert final["miou"] > 2.5 * base, final  # ~0.18 after 60 steps
  with open(os.path.join(workdir, "segmentation_eval.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [30, 60]
  assert set(rows[-1]["per_class_iou"]) == {"background", *seg_sources.PRESETS[
      "fashion_mnist_builtin"][2][1:]}
  assert rows[-1]["miou"] == pytest.approx(final["miou"])
  assert checkpoint.best_record(workdir)["miou"] == pytest.approx(final["best_miou"])
  csv = [r for r in results.read_rows(workdir) if r["metric"] == "miou"]
  assert [r["protocol"] for r in csv][0] == "segment"
  assert csv[0]["value"] == f"{100 * final['miou']:.2f}"
  assert os.path.exists(os.path.join(workdir, "segmentation.png"))  # image | truth | pred
  # ... and the same figure in TensorBoard at every evaluation, next to the scalars
  events = read_events(workdir)
  figure = plots.segmentation_size(trainer.config.evals.segmentation.num_images)
  assert events["images"]["segmentation"] == {30: figure, 60: figure}
  assert events["scalars"]["miou"][60] == pytest.approx(final["miou"])


def test_sharded_eval_is_exact_on_an_uneven_split(short_run):
  """77 examples: one padded batch of 128 over 8 devices (the periodic evaluation's compiled
  function) against numpy on the real rows of 1-device batches of 16 (other padding)."""
  trainer, _, _ = short_run
  evaluator, params = trainer.evals.evaluators[0], jax.device_get(trainer.state.params)
  data = override(trainer.config.data.copy_and_resolve_references(), eval_split="test[:77]")
  batches = list(data_lib.build_eval_iterator(data, image_size=32, global_batch_size=128,
                                              mesh=trainer.mesh))
  conf = sm.accumulate(evaluator.update_fn, trainer.state.params, batches, 11)
  assert len(batches) == 1 and np.asarray(batches[0]["mask"]).sum() == 77
  one = mesh_lib.make_mesh(jax.devices()[:1])
  ref = list(data_lib.build_eval_iterator(data, image_size=32, global_batch_size=16, mesh=one))
  assert len(ref) == 5
  real = [np.asarray(b["mask"]) > 0 for b in ref]
  # Predicted by the unsharded predict that the figure compiled for its 16 images.
  preds = np.concatenate([np.asarray(evaluator.predict(params, np.asarray(b["image"])))[m]
                          for b, m in zip(ref, real)])
  labels = np.concatenate([np.asarray(b["label"])[m] for b, m in zip(ref, real)])
  assert len(labels) == 77
  valid = labels != 255
  ref_conf = np.bincount(labels[valid].astype(int) * 11 + preds[valid], minlength=121)
  np.testing.assert_array_equal(conf, ref_conf.reshape(11, 11))
  miou, acc, _ = reference_scores(preds, labels, 11)
  res = sm.scores(conf)
  assert res["count"] == valid.sum() and 0 < res["miou"] < 1
  assert res["miou"] == pytest.approx(miou, abs=1e-12)
  assert res["pixel_acc"] == pytest.approx(acc, abs=1e-12)
