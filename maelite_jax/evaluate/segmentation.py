"""Semantic-segmentation metrics from a streamed confusion matrix, exact under any sharding, and
the `segmentation` evaluator (mIoU, pixel accuracy, per-class IoU, a figure).

conf[t, p] counts the valid pixels of true class t predicted as p. A pixel is valid when its
label is not the ignore label (255) and its example is real (the eval iterator pads the last
batches with mask-0 examples, see `data.segmentation.build_eval_iterator`), so no pixel is
dropped or counted twice whatever the batch size or device count. Counts are integers (bincount,
no float weights), reduced by XLA across the batch-sharded devices to one replicated (C, C)
matrix per batch, added up on the device between host syncs and in int64 on the host.

mIoU averages IoU = conf[c, c] / (row_c + col_c - conf[c, c]) over the classes whose union is
non-zero (present in the labels or predicted), as mmseg's nanmean does; pixel accuracy is
trace / total.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from maelite_jax.evaluate.base import (Evaluator, Result, host_params, publish_figure,
                                       register)
from maelite_jax.utils.arrays import round_up
from maelite_jax.utils.errors import ConfigError
from maelite_jax.utils.logs import Progress

IGNORE_LABEL = 255


def valid_pixels(labels, num_classes: int, example_mask=None, ignore_label: int = IGNORE_LABEL):
  """(B, H, W) bool: the pixels that count (label in [0, C), not ignored, real example)."""
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  if example_mask is not None:
    valid &= (example_mask > 0).reshape((-1,) + (1,) * (labels.ndim - 1))
  return valid


def confusion_matrix(preds, labels, num_classes: int, example_mask=None,
                     ignore_label: int = IGNORE_LABEL):
  """(C, C) int32 counts of (true, predicted) over the valid pixels of one batch.

  Invalid pixels go to an extra bin C*C that is dropped, so the counts are plain integers.
  """
  c = num_classes
  valid = valid_pixels(labels, c, example_mask, ignore_label)
  index = labels.astype(jnp.int32) * c + preds.astype(jnp.int32)
  index = jnp.where(valid, index, c * c).reshape(-1)
  return jnp.bincount(index, length=c * c + 1)[:c * c].reshape(c, c).astype(jnp.int32)


def scores(conf) -> dict:
  """{'miou', 'pixel_acc', 'iou' (C,) with NaN for absent classes, 'present' (C,) bool, 'count'}
  from a (C, C) confusion matrix (numpy, any integer dtype)."""
  conf = np.asarray(conf, np.int64)
  tp = np.diag(conf).astype(np.float64)
  union = conf.sum(0) + conf.sum(1) - np.diag(conf)
  present = union > 0
  iou = np.where(present, tp / np.maximum(union, 1), np.nan)
  total = conf.sum()
  return {"miou": float(np.nanmean(iou)) if present.any() else 0.0,
          "pixel_acc": float(tp.sum() / total) if total else 0.0,
          "iou": iou, "present": present, "count": int(total)}


def constant_prediction_conf(conf, cls: int = 0) -> np.ndarray:
  """The confusion matrix of predicting `cls` everywhere on the same pixels (the trivial
  baseline: all-background mIoU)."""
  conf = np.asarray(conf, np.int64)
  out = np.zeros_like(conf)
  out[:, cls] = conf.sum(1)
  return out


def make_update_fn(predict_fn, num_classes: int, mesh, ignore_label: int = IGNORE_LABEL):
  """jit(conf, params, batch) -> conf + this batch's counts, replicated on the mesh.

  predict_fn(params, images) -> (B, H, W) int class ids. batch: 'image', 'label' (B, H, W),
  'mask' (B,) 1 for real examples and 0 for padding.
  """
  from maelite_jax.train import mesh as mesh_lib

  def update(conf, params, batch):
    preds = predict_fn(params, batch["image"])
    return conf + confusion_matrix(preds, batch["label"], num_classes, batch["mask"],
                                   ignore_label)

  return jax.jit(update, out_shardings=mesh_lib.replicated(mesh), donate_argnums=0)


def accumulate(update_fn, params, batches, num_classes: int, flush_every: int = 64,
               progress: Progress | None = None) -> np.ndarray:
  """Sums the confusion matrix over `batches` (int64 on the host). The device keeps an int32
  running sum for `flush_every` batches, so the host reads it rarely and nothing overflows."""
  total = np.zeros((num_classes, num_classes), np.int64)
  conf = None
  for i, batch in enumerate(batches):
    if conf is None:
      conf = jnp.zeros((num_classes, num_classes), jnp.int32)
    conf = update_fn(conf, params, batch)
    if progress is not None:  # padded batches: the count may overshoot by < one batch
      progress.update(batch["mask"].shape[0])
    if (i + 1) % flush_every == 0:
      total += np.asarray(jax.device_get(conf), np.int64)
      conf = None
  if conf is not None:
    total += np.asarray(jax.device_get(conf), np.int64)
  return total


@register("segmentation")
class SegmentationEvaluator(Evaluator):
  """mIoU and pixel accuracy of a segmentation model over cfg.split ('' = data.eval_split),
  whole-image ('whole', on a cfg.image_size canvas) or sliding-window ('slide', the training
  crop every cfg.stride px) inference; per-class IoU in the details; a figure of the first
  cfg.num_images images (image | ground truth | prediction)."""
  protocol = "segment"
  reported = {"miou": "miou", "pixel_acc": "pixel_acc"}

  def __init__(self, cfg, **kw):
    super().__init__(cfg, **kw)
    from maelite_jax.models import segmentation as seg_models
    crop = self.run_config.model.image_size
    self.canvas = int(cfg.image_size or crop)
    if cfg.mode == "slide" and self.canvas < crop:
      raise ConfigError(f"config.evals.{self.name}.image_size={self.canvas} is smaller than the "
                        f"sliding window (model.image_size={crop}); raise it or use mode='whole'.")
    if cfg.mode == "whole" and self.canvas % self.run_config.model.patch_size:
      raise ConfigError(f"config.evals.{self.name}.image_size={self.canvas} is not a multiple of "
                        f"the patch size {self.run_config.model.patch_size} (mode 'whole' runs "
                        "the ViT on it).")
    logits_fn = seg_models.make_logits_fn(self.model.model, self.canvas, cfg.mode,
                                          cfg.stride or None)
    self.num_classes = self.run_config.model.num_classes
    self.predict = jax.jit(lambda p, x: jnp.argmax(logits_fn(p, x), axis=-1))
    self.update_fn = make_update_fn(lambda p, x: jnp.argmax(logits_fn(p, x), axis=-1),
                                    self.num_classes, self.mesh)

  def confusion(self, params, split=None) -> np.ndarray:
    """(C, C) int64 confusion matrix of `params` over a whole split (default cfg.split)."""
    from maelite_jax import data as data_lib
    split = split or self.cfg.split or self.run_config.data.eval_split
    batches = data_lib.build_eval_iterator(
        self.run_config.data, image_size=self.canvas, mesh=self.mesh, split=split,
        global_batch_size=round_up(self.cfg.batch_size, self.mesh.size))
    progress = Progress(f"mIoU on {split}",
                        total=data_lib.num_examples(self.run_config.data, split))
    return accumulate(self.update_fn, params, batches, self.num_classes, progress=progress)

  def class_names(self) -> list[str]:
    from maelite_jax import data as data_lib
    names = getattr(data_lib.make_source(self.run_config.data), "class_names", None)
    if names is None or len(names) != self.num_classes:
      names = [str(c) for c in range(self.num_classes)]
    return list(names)

  def run(self, params, step):
    conf = self.confusion(params)
    res = scores(conf)
    trivial = scores(constant_prediction_conf(conf, 0))
    names = self.class_names()
    per_class = {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, res["iou"])}
    scalars = {"miou": res["miou"], "pixel_acc": res["pixel_acc"],
               "miou_all_background": trivial["miou"]}
    images = {}
    if self.cfg.num_images:
      images[self.name] = self._figure(params, step, names)
    return Result(scalars=scalars, images=images,
                  details={"pixels": res["count"], "per_class_iou": per_class})

  def _figure(self, params, step, names):
    import os
    from maelite_jax.analysis import plots
    batch = self.vis_batch(self.cfg.num_images, self.canvas, labels=True)
    pred = np.asarray(self.predict(host_params(params), batch["image"]))
    images = plots.denormalize(batch["image"], self.run_config.data.mean,
                               self.run_config.data.std)
    images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    path = os.path.join(self.workdir, f"segmentation_step{step:07d}.png")
    title = (f"{self.model.name or 'segmentation'}: {os.path.basename(self.workdir.rstrip('/'))}"
             f", step {step}")
    if jax.process_index() == 0:
      plots.plot_segmentation(path, images, np.asarray(batch["label"]).astype(np.int64), pred,
                              names, title)
      publish_figure(path, os.path.join(self.workdir, "segmentation.png"))
      logging.info("wrote %s", path)
      return plots.figure_array(path)
    return None

  def summary(self, scalars):
    return (f"mIoU {100 * scalars['miou']:.2f} % (all-background {100 * scalars['miou_all_background']:.2f} %), "
            f"pixel accuracy {100 * scalars['pixel_acc']:.2f} %")
