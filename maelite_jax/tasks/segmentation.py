"""Semantic segmentation (ViT + semantic FPN) as a plug-in of the one loop.

Loss: pixel-wise cross-entropy, ignore label 255. Like mmseg's default (avg_non_ignore=False)
the sum over valid pixels is divided by *all* pixels of the batch: a constant, so splitting a
batch into micro-batches gives exactly the full-batch gradient. The backbone gets layer-wise lr
decay from the optimizer (config.optim.layer_decay; the neck and head are layer depth + 1, lr x
1). Any encoder checkpoint (MAE, D-MAE, MoCo-v3, a fine-tuned classifier, imported PyTorch
weights) loads into params['backbone'], a learned pos_embed resampled to the crop size.
Batches are (image, label map) pairs from the one pipeline (`data.label_type='map'`); mIoU is
the `segmentation` evaluator's (config.evals).
"""

import jax
import jax.numpy as jnp

from maelite_jax.models import segmentation as seg_models
from maelite_jax.models.meta import model_from_config
from maelite_jax.tasks.base import Objective
from maelite_jax.tasks.registry import register

IGNORE_LABEL = 255


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
  """(SegmentationModel, backbone ModelSpec, head arguments) from config.model; the backbone
  is the registry ViT (no head, trainable pos_embed)."""
  backbone, spec = model_from_config(model_cfg, num_classes=0, trainable_pos_embed=True)
  head = dict(num_classes=model_cfg.num_classes,
              out_indices=tuple(model_cfg.out_indices or
                                seg_models.default_out_indices(backbone.depth)),
              fpn_dim=model_cfg.fpn_dim, head_dim=model_cfg.head_dim, dropout=model_cfg.dropout,
              classifier_init_std=model_cfg.classifier_init_std)
  model = seg_models.SegmentationModel(backbone, dtype=backbone.dtype, **head)
  return model, spec, head


@register("segmentation")
class Segmentation(Objective):
  encoder_key = "backbone"

  def __init__(self, config):
    self.model, self.spec, self.head = seg_model_from_config(config.model)
    self.num_classes = config.model.num_classes
    self.avg_non_ignore = config.avg_non_ignore

  def init(self, rng, example):
    return self.model.init({"params": rng}, example["image"][:1])["params"], {}

  def loss(self, params, extra, batch, rng, step, frozen=None):
    labels = batch["label"]
    r_path, r_drop = jax.random.split(rng)
    logits = self.model.apply({"params": params}, batch["image"], train=True,
                              rngs={"droppath": r_path, "dropout": r_drop})
    loss = pixel_cross_entropy(logits, labels, IGNORE_LABEL, self.avg_non_ignore)
    valid = (labels != IGNORE_LABEL) & (labels < self.num_classes)
    hits = (jnp.argmax(logits, -1) == labels.astype(jnp.int32)) & valid
    acc = jnp.sum(hits) / jnp.maximum(jnp.sum(valid), 1)
    return loss, ({"loss": loss, "train_pixel_acc": acc}, extra)
