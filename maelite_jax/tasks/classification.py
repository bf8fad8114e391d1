"""Supervised fine-tuning (and transfer) of a ViT classifier as a plug-in of the one loop.

Per step, on the global batch and before any micro-batching: random erasing (timm 'pixel' mode,
on normalised images), then mixup/cutmix with label smoothing into soft targets; the loss is
soft-target cross-entropy. Layer-wise lr decay is the optimizer's (config.optim.layer_decay);
pre-trained encoders (MAE, D-MAE, MoCo-v3, imported) are mapped into the tree by the loop
(train/pretrained.py). Accuracy is an evaluator (config.evals), like every other metric.

With `config.linear_probe` the same task is MAE's image-level linear probe: the encoder is frozen
(no gradient, lr 0) and runs in eval mode, its pooled features go through BatchNorm without
affine (batch statistics in training, running ones in `extra`) into the head. For evaluation,
the best checkpoint and export that norm is folded into the head, a plain timm classifier.
"""

import jax
import jax.numpy as jnp
import optax

from maelite_jax.models.meta import model_from_config
from maelite_jax.objectives import classification as cls_obj
from maelite_jax.tasks.base import Objective
from maelite_jax.tasks.registry import register
from maelite_jax.utils.errors import ConfigError

PROBE_NORM_EPS = 1e-6      # MAE's BatchNorm1d(affine=False, eps=1e-6) before the probe head
PROBE_NORM_MOMENTUM = 0.1  # torch's running-statistics momentum
ALL_BUT_HEAD = r"^(?!head/)"  # a linear probe trains only the head


def fold_probe_norm(params: dict, stats: dict) -> dict:
  """BatchNorm without affine then Linear is one linear map: (f - m) / s @ W + b equals
  f @ (W / s) + (b - (m / s) @ W). Returns params whose head includes the norm."""
  inv = jax.lax.rsqrt(stats["var"] + PROBE_NORM_EPS)
  kernel, bias = params["head"]["kernel"], params["head"]["bias"]
  head = {"kernel": kernel * inv[:, None], "bias": bias - (stats["mean"] * inv) @ kernel}
  return dict(params, head=head)


def classifier_from_config(model_cfg):
  """(ViT with a head and a trainable pos_embed (fine-tuning), its ModelSpec)."""
  return model_from_config(model_cfg, trainable_pos_embed=True)


@register("classification")
class Classification(Objective):
  """A ViT classifier: fine-tuning, transfer, or (config.linear_probe) MAE's image-level probe.

  params = the ViT tree with 'head' (and 'fc_norm' with average pooling); a pre-trained encoder
  (config.init) loads into it, head and fc_norm staying fresh.
  """
  encoder_key = ""
  fresh_keys = ("head", "fc_norm")
  # The global batch's smallest and largest label, checked against num_classes as data arrive
  # (an out-of-range label has an all-zero one-hot target: loss 0, no gradient, no error).
  checked_metrics = ("label_min", "label_max")

  def __init__(self, config):
    self.model, self.spec = classifier_from_config(config.model)
    self.num_classes = config.model.num_classes
    self.head_init_std = config.model.head_init_std
    self.aug = config.augment
    self.ema_decay = config.ema_decay
    self.linear_probe = config.linear_probe
    if self.linear_probe and (self.ema_decay or config.model.drop_path_rate):
      raise ConfigError("config.linear_probe trains only the head: set config.ema_decay=0 and "
                        "config.model.drop_path_rate=0.")
    if self.linear_probe:
      self.frozen_regex = ALL_BUT_HEAD
    if self.ema_decay:
      self.post_update = self._ema_update

  def init(self, rng, example):
    r_model, r_head = jax.random.split(rng)
    params = self.model.init({"params": r_model}, example["image"][:1])["params"]
    std = self.head_init_std
    if std > 0:  # MAE: trunc_normal(std=2e-5) on the head weight
      kernel = params["head"]["kernel"]
      params["head"] = dict(params["head"], kernel=std * jax.random.truncated_normal(
          r_head, -2.0 / std, 2.0 / std, kernel.shape, kernel.dtype))
    extra = {"ema": params} if self.ema_decay > 0 else {}
    if self.linear_probe:
      dim = params["head"]["kernel"].shape[0]
      extra["probe_norm"] = {"mean": jnp.zeros((dim,), jnp.float32),
                             "var": jnp.ones((dim,), jnp.float32)}
    return params, extra

  def prepare_batch(self, rng, batch):
    """Random erasing, then mixup/cutmix into soft targets, drawn for the global batch (the
    mixing partner of an image is another row of the whole batch)."""
    images, labels = batch["image"], batch["label"]
    # Broadcast to every row so that each micro-batch carries the global batch's range.
    label_range = jnp.broadcast_to(jnp.stack([labels.min(), labels.max()]).astype(jnp.float32),
                                   (labels.shape[0], 2))
    r_erase, r_mix = jax.random.split(rng)
    if self.aug.reprob > 0:
      b, h, w, c = images.shape
      images = cls_obj.apply_erasing(images, cls_obj.sample_erasing(r_erase, b, h, w, c,
                                                                     prob=self.aug.reprob))
    if self.aug.mixup > 0 or self.aug.cutmix > 0:
      draw = cls_obj.sample_mix(r_mix, image_size=images.shape[1], mixup_alpha=self.aug.mixup,
                                cutmix_alpha=self.aug.cutmix, prob=self.aug.mix_prob,
                                switch_prob=self.aug.switch_prob)
      images, target = cls_obj.apply_mix(images, labels, draw, self.num_classes,
                                         self.aug.label_smoothing)
    else:
      target = cls_obj.smooth_targets(labels, self.num_classes, self.aug.label_smoothing)
    return dict(batch, image=images, target=target, label_range=label_range)

  def _label_metrics(self, batch) -> dict:
    return {"label_min": batch["label_range"][0, 0], "label_max": batch["label_range"][0, 1]}

  def check_step(self, step, values):
    low, high = round(float(values["label_min"])), round(float(values["label_max"]))
    n = self.num_classes
    if low < 0 or high >= n:
      bad = high if high >= n else low
      raise ConfigError(
          f"config.model.num_classes: the batch of step {step} has label {bad}, but the model "
          f"has {n} class(es) (labels 0..{n - 1}); such a label trains nothing (its one-hot "
          f"target is all zeros: loss 0, no gradient). Set --config.model.num_classes to the "
          f"number of classes of the data (at least {max(high + 1, n)}), or check "
          "config.data.label_key and the data's labels.")

  def loss(self, params, extra, batch, rng, step, frozen=None):
    if self.linear_probe:
      return self._probe_loss(params, extra, batch)
    logits, _ = self.model.apply({"params": params}, batch["image"], train=True,
                                 rngs={"droppath": rng})
    loss = cls_obj.soft_cross_entropy(logits, batch["target"])
    top1 = jnp.mean(cls_obj.topk_correct(logits, batch["label"], 1))
    return loss, ({"loss": loss, "train_top1": top1, **self._label_metrics(batch)}, extra)

  def _probe_loss(self, params, extra, batch):
    """Frozen encoder (eval mode) -> BatchNorm(no affine, batch stats) -> head; updates the
    running statistics in extra like torch (momentum 0.1, unbiased variance)."""
    encoder = jax.lax.stop_gradient({k: v for k, v in params.items() if k != "head"})
    feats, _ = self.model.apply({"params": encoder}, batch["image"], train=False,
                                return_features=True)
    feats = feats.astype(jnp.float32)
    mean, var = feats.mean(axis=0), feats.var(axis=0)
    head = params["head"]
    logits = ((feats - mean) * jax.lax.rsqrt(var + PROBE_NORM_EPS)) @ head["kernel"] + head["bias"]
    loss = cls_obj.soft_cross_entropy(logits, batch["target"])
    top1 = jnp.mean(cls_obj.topk_correct(logits, batch["label"], 1))
    n, m, old = feats.shape[0], PROBE_NORM_MOMENTUM, extra["probe_norm"]
    stats = {"mean": (1 - m) * old["mean"] + m * mean,
             "var": (1 - m) * old["var"] + m * var * n / max(n - 1, 1)}
    return loss, ({"loss": loss, "train_top1": top1, **self._label_metrics(batch)},
                  dict(extra, probe_norm=stats))

  def inference_params(self, params, extra):
    """The params evaluated, kept as best and exported: the probe's norm folded into the head;
    with an EMA also the EMA weights ('ema')."""
    main = fold_probe_norm(params, extra["probe_norm"]) if self.linear_probe else params
    return {"": main, "ema": extra["ema"]} if self.ema_decay else {"": main}

  def _ema_update(self, params, extra, step):
    """EMA of the weights (timm ModelEmaV2); the first update copies the (loaded) weights."""
    decay = jnp.where(step == 0, 0.0, self.ema_decay)
    return dict(extra, ema=optax.incremental_update(params, extra["ema"], 1.0 - decay))

  def logits(self, params, images):
    """float32 logits in eval mode (what the accuracy evaluator ranks)."""
    return self.model.apply({"params": params}, images, train=False)[0].astype(jnp.float32)

