"""Semantic segmentation (ViT + semantic FPN) as a task of the generic loop.

Loss: pixel-wise cross-entropy, ignore label 255. Like mmseg's default (avg_non_ignore=False)
the sum over valid pixels is divided by *all* pixels of the batch: a constant, so splitting a
batch into micro-batches gives exactly the full-batch gradient. The backbone gets layer-wise lr
decay (the neck and head are layer depth + 1: lr x 1). Any encoder checkpoint (MAE, D-MAE,
MoCo-v3, a fine-tuned classifier, imported PyTorch weights) loads into params['backbone'], a
learned pos_embed resampled to the crop size. Evaluation streams a confusion matrix over the
whole eval split (whole-image or sliding-window inference), keeps the best params in
<workdir>/best, writes per-class IoU to <workdir>/segmentation_eval.jsonl and, at the end, a row
to <workdir>/results.csv (protocol 'segment': the top1 column holds mIoU, top5 pixel accuracy).

Batches are image + label map, not image + class: the task supplies them to the generic loop
through `train_iterator` / `vis_batch`.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from maelite_jax.data import segmentation as seg_data
from maelite_jax.evaluate import results
from maelite_jax.evaluate import segmentation_metrics as seg_metrics
from maelite_jax.models import compute_options, create_model, model_kwargs
from maelite_jax.models import segmentation as seg_models
from maelite_jax.tasks.base import Task
from maelite_jax.train import checkpoint as ckpt_lib
from maelite_jax.train.layer_decay import layer_decay_multipliers
from maelite_jax.train.loop import local_rows, round_up

IGNORE_LABEL = seg_metrics.IGNORE_LABEL


def pixel_cross_entropy(logits, labels, ignore_label: int = IGNORE_LABEL,
                        avg_non_ignore: bool = False):
  """Mean cross-entropy of (B, H, W, C) logits against (B, H, W) labels; ignored pixels add 0
  and count in the denominator unless avg_non_ignore (mmseg's flag)."""
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_label) & (labels < logits.shape[-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  total = jnp.sum(jnp.where(valid, nll, 0.0))
  denom = jnp.sum(valid) if avg_non_ignore else labels.size
  return total / jnp.maximum(denom, 1)


def seg_model_from_config(model_cfg):
  """(SegmentationModel, meta) from config.model; the backbone is the registry ViT."""
  overrides = dict(image_size=model_cfg.image_size, patch_size=model_cfg.patch_size,
                   depth=model_cfg.get("depth"), embed_dim=model_cfg.get("embed_dim"),
                   num_heads=model_cfg.get("num_heads"), num_classes=0,
                   trainable_pos_embed=True, drop_path_rate=model_cfg.drop_path_rate,
                   **compute_options(model_cfg))
  kwargs = model_kwargs(model_cfg.name, **overrides)
  backbone = create_model(model_cfg.name, **overrides)
  out_indices = tuple(model_cfg.get("out_indices") or
                      seg_models.default_out_indices(backbone.depth))
  head = dict(num_classes=model_cfg.num_classes, out_indices=out_indices,
              fpn_dim=model_cfg.fpn_dim, head_dim=model_cfg.head_dim,
              dropout=model_cfg.dropout,
              classifier_init_std=model_cfg.get("classifier_init_std", 0.01))
  model = seg_models.SegmentationModel(backbone, dtype=jnp.dtype(model_cfg.dtype), **head)
  meta_kwargs = {k: (str(jnp.dtype(v)) if k == "dtype" else v) for k, v in kwargs.items()}
  return model, {"name": model_cfg.name, "kwargs": meta_kwargs, "segmentation": head}


def adapt_backbone(target: dict, loaded: dict, meta: dict) -> dict:
  """Pre-trained params -> this model's tree (numpy trees, shapes checked by the loop).

  A segmentation checkpoint (continuing) is taken whole. Otherwise the encoder is
  loaded['encoder'] (MAE, D-MAE, MoCo-v3) or the whole tree (plain ViT, fine-tuned classifier,
  imported weights): patch_embed, cls_token and blocks are copied; a learned pos_embed is
  resampled to the crop's grid, a fixed (sin-cos) one leaves the target's sin-cos init; the
  final norm (unused here) is copied when present; pyramid, neck and head stay fresh.
  """
  if meta.get("objective") == "segmentation" and "backbone" in loaded:
    pos = loaded["backbone"].get("pos_embed")
    if pos is not None and pos.shape != target["backbone"]["pos_embed"].shape:
      loaded = dict(loaded, backbone=dict(loaded["backbone"], pos_embed=np.asarray(
          seg_models.resize_pos_table(pos, target["backbone"]["pos_embed"].shape[1]))))
    return loaded
  src = loaded["encoder"] if "encoder" in loaded else loaded
  out, missing = {}, []
  for key, value in target["backbone"].items():
    if key == "pos_embed":
      out[key] = (np.asarray(seg_models.resize_pos_table(src[key], value.shape[1]))
                  if key in src else value)
    elif key in src:
      out[key] = src[key]
    elif key == "norm":
      out[key] = value
    else:
      missing.append(key)
  if missing:
    raise ValueError(f"config.init has no {missing} for the backbone (its keys: {sorted(src)})")
  unused = sorted(set(src) - set(out))
  if unused:
    logging.info("config.init: not used by the segmentation backbone: %s", unused)
  return dict(target, backbone=out)


def palette(num_classes: int) -> np.ndarray:
  """(256, 3) uint8 colours: PASCAL VOC's bit-interleaved palette, ignore (255) white."""
  colours = np.zeros((256, 3), np.uint8)
  for c in range(256):
    v, r, g, b = c, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (v & 1) << shift
      g |= ((v >> 1) & 1) << shift
      b |= ((v >> 2) & 1) << shift
      v >>= 3
    colours[c] = (r, g, b)
  colours[IGNORE_LABEL] = 255
  return colours


class SegmentationTask(Task):
  def __init__(self, config):
    self.config = config
    self.model, self.model_meta = seg_model_from_config(config.model)
    self.num_classes = config.model.num_classes
    self.eval_size = int(config.data.get("eval_size") or config.model.image_size)
    mode, crop = config.get("eval_mode", "whole"), config.model.image_size
    if mode == "slide" and self.eval_size < crop:
      raise ValueError(f"config.data.eval_size={self.eval_size} is smaller than the sliding "
                       f"window (model.image_size={crop}); raise it or use eval_mode='whole'")
    if mode == "whole" and self.eval_size % config.model.patch_size:
      raise ValueError(f"config.data.eval_size={self.eval_size} is not a multiple of the patch "
                       f"size {config.model.patch_size} (eval_mode='whole' runs the ViT on it)")
    self._update_fn = None
    self._predict = None

  # --- training -------------------------------------------------------------------------

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["image"][:1])["params"], {}

  def loss(self, params, extra, batch, rng, step, frozen=None):
    labels = batch.get("label")
    if labels is None or labels.ndim != 3:
      raise ValueError("objective 'segmentation' needs label maps (B, H, W): its batches come "
                       "from SegmentationTask.train_iterator")
    r_path, r_drop = jax.random.split(rng)
    logits = self.model.apply({"params": params}, batch["image"], train=True,
                              rngs={"droppath": r_path, "dropout": r_drop})
    loss = pixel_cross_entropy(logits, labels, IGNORE_LABEL,
                               self.config.get("avg_non_ignore", False))
    valid = seg_metrics.valid_pixels(labels, self.num_classes)
    hits = (jnp.argmax(logits, -1) == labels.astype(jnp.int32)) & valid
    acc = jnp.sum(hits) / jnp.maximum(jnp.sum(valid), 1)
    return loss, ({"loss": loss, "train_pixel_acc": acc}, extra)

  def lr_multipliers(self, params):
    decay = self.config.layer_decay
    return (None if decay >= 1.0 else
            layer_decay_multipliers(params, self.model.backbone.depth, decay))

  def adapt_pretrained(self, target, loaded, meta):
    return adapt_backbone(target, loaded, meta)

  def train_iterator(self, mesh, start_step: int):
    cfg = self.config
    return seg_data.build_train_iterator(
        cfg.data, crop_size=cfg.model.image_size, global_batch_size=cfg.batch_size, mesh=mesh,
        seed=cfg.seed, start_step=start_step)

  # --- evaluation -------------------------------------------------------------------------

  def logits_fn(self):
    cfg = self.config
    mode = cfg.get("eval_mode", "whole")
    return seg_models.make_logits_fn(self.model, self.eval_size, mode, cfg.get("eval_stride"))

  def confusion(self, params, mesh, split=None) -> np.ndarray:
    """(C, C) int64 confusion matrix of `params` over a whole split (default eval_split)."""
    if self._update_fn is None:
      logits_fn = self.logits_fn()
      self._update_fn = seg_metrics.make_update_fn(
          lambda p, x: jnp.argmax(logits_fn(p, x), axis=-1), self.num_classes, mesh)
    batches = seg_data.build_eval_iterator(
        self.config.data, eval_size=self.eval_size, mesh=mesh, split=split,
        global_batch_size=round_up(self.config.eval_batch_size, mesh.size))
    return seg_metrics.accumulate(self._update_fn, params, batches, self.num_classes)

  def evaluate(self, trainer, state, step):
    conf = self.confusion(state.params, trainer.mesh)
    res = seg_metrics.scores(conf)
    trivial = seg_metrics.scores(seg_metrics.constant_prediction_conf(conf, 0))
    scalars = {"miou": res["miou"], "pixel_acc": res["pixel_acc"],
               "miou_all_background": trivial["miou"]}
    self._write_eval(trainer.workdir, step, res, scalars)
    best = self._update_best(trainer, state.params, step, res)
    scalars["best_miou"] = best["miou"]
    if step == trainer.total_steps:
      self._record(trainer, scalars, best)
    return scalars

  def class_names(self) -> list[str]:
    names = seg_data.SegSource(self.config.data).class_names
    if names is None or len(names) != self.num_classes:
      names = [str(c) for c in range(self.num_classes)]
    return list(names)

  def _write_eval(self, workdir, step, res, scalars):
    if jax.process_index() != 0:
      return
    per_class = {n: (None if np.isnan(v) else float(v))
                 for n, v in zip(self.class_names(), res["iou"])}
    row = dict(step=int(step), **scalars, pixels=res["count"], per_class_iou=per_class)
    with open(os.path.join(workdir, "segmentation_eval.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")

  def _update_best(self, trainer, params, step, res) -> dict:
    scores = {"miou": res["miou"], "pixel_acc": res["pixel_acc"]}
    return ckpt_lib.keep_best(trainer.workdir, params, trainer.meta(), step, scores, "miou",
                              self.config.get("save_best", True))

  def _record(self, trainer, scalars, best):
    cfg = self.config
    common = dict(model=self.model_meta["name"], pretrain=cfg.init or "scratch",
                  dataset=cfg.data.dataset)
    protocol = cfg.get("protocol", "segment")
    results.append_row(trainer.workdir, protocol=protocol, top1=scalars["miou"],
                       top5=scalars["pixel_acc"], echo=False, **common)
    results.append_row(trainer.workdir, protocol=f"{protocol}-best@{best['step']}",
                       top1=best["miou"], top5=best["pixel_acc"], **common)

  # --- figures ----------------------------------------------------------------------------

  def vis_batch(self, mesh):
    """The first num_vis_images eval examples of this process (normalised images, labels)."""
    n = self.config.num_vis_images
    if not n:
      return None
    it = seg_data.build_eval_iterator(
        self.config.data, eval_size=self.eval_size, mesh=mesh, limit=n,
        global_batch_size=round_up(n * jax.process_count(), mesh.size))
    batch = next(iter(it))
    return {"image": local_rows(batch["image"])[:n], "label": local_rows(batch["label"])[:n]}

  def visualize(self, params, extra, batch, out_path):
    """PNG: one row per image: image | ground truth | prediction (ignore pixels white)."""
    from PIL import Image
    if self._predict is None:
      logits_fn = self.logits_fn()
      self._predict = jax.jit(lambda p, x: jnp.argmax(logits_fn(p, x), axis=-1))
    pred = np.asarray(self._predict(params, batch["image"]))
    mean, std = (np.asarray(self.config.data[k], np.float32) for k in ("mean", "std"))
    images = np.clip((np.asarray(batch["image"]) * std + mean) * 255, 0, 255).astype(np.uint8)
    colours = palette(self.num_classes)
    label = np.asarray(batch["label"]).astype(np.int64)
    rows = [np.concatenate([img, colours[lab], colours[p]], axis=1)
            for img, lab, p in zip(images, label, pred)]
    grid = np.concatenate(rows, axis=0)
    scale = max(1, 96 // images.shape[1])  # tiny smoke images are blown up (nearest)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(grid).save(out_path)
    return out_path
