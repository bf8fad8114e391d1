"""Supervised fine-tuning (and transfer) of a ViT classifier as a task of the generic loop.

Per step, on the global batch and before any micro-batching: random erasing (timm 'pixel' mode,
on normalised images), then mixup/cutmix with label smoothing into soft targets; the loss is
soft-target cross-entropy. The optimizer gets layer-wise lr decay through `lr_multipliers`.
Pre-trained encoders (MAE, D-MAE, MoCo-v3, imported) are mapped on by `adapt_pretrained`.
Every evaluation measures top-1/top-5 on the eval split exactly, keeps the best params in
`<workdir>/best`, and the final one appends rows to `<workdir>/results.csv`.

With `config.linear_probe` the same task is MAE's image-level linear probe: the encoder is frozen
(no gradient, lr 0) and runs in eval mode, its pooled features go through BatchNorm without
affine (batch statistics in training, running ones in `extra`) into the head. For evaluation,
the best checkpoint and export that norm is folded into the head, a plain timm classifier.
"""

import jax
import jax.numpy as jnp
from absl import logging

from maelite_jax.evaluate import accuracy as acc_lib
from maelite_jax.evaluate import results
from maelite_jax.models import compute_options, create_model, model_kwargs
from maelite_jax.objectives import classification as cls_obj
from maelite_jax.tasks.base import Task
from maelite_jax.train import checkpoint as ckpt_lib
from maelite_jax.train.layer_decay import layer_decay_multipliers

FRESH = ("head", "fc_norm")  # never taken from a pre-trained (non-classifier) checkpoint
PROBE_NORM_EPS = 1e-6      # MAE's BatchNorm1d(affine=False, eps=1e-6) before the probe head
PROBE_NORM_MOMENTUM = 0.1  # torch's running-statistics momentum


def fold_probe_norm(params: dict, stats: dict) -> dict:
  """BatchNorm without affine then Linear is one linear map: (f - m) / s @ W + b equals
  f @ (W / s) + (b - (m / s) @ W). Returns params whose head includes the norm."""
  inv = jax.lax.rsqrt(stats["var"] + PROBE_NORM_EPS)
  kernel, bias = params["head"]["kernel"], params["head"]["bias"]
  head = {"kernel": kernel * inv[:, None], "bias": bias - (stats["mean"] * inv) @ kernel}
  return dict(params, head=head)


def classifier_from_config(model_cfg):
  """The registry ViT with a head, trainable pos_embed and the config's pooling; its meta."""
  overrides = dict(image_size=model_cfg.image_size, patch_size=model_cfg.patch_size,
                   depth=model_cfg.get("depth"), num_classes=model_cfg.num_classes,
                   global_pool=model_cfg.global_pool, trainable_pos_embed=True,
                   drop_path_rate=model_cfg.drop_path_rate, **compute_options(model_cfg))
  kwargs = model_kwargs(model_cfg.name, **overrides)
  meta_kwargs = {k: (str(jnp.dtype(v)) if k == "dtype" else v) for k, v in kwargs.items()}
  return create_model(model_cfg.name, **overrides), {"name": model_cfg.name, "kwargs": meta_kwargs}


def adapt_encoder(target: dict, loaded: dict, meta: dict) -> dict:
  """Pre-trained params -> this classifier's tree (numpy trees, shapes checked by the loop).

  The encoder is params['encoder'] (MAE, D-MAE, MoCo-v3) or the whole tree (plain ViT, imported
  weights). Blocks, patch_embed and cls_token are copied; head and fc_norm stay fresh; the final
  `norm` is dropped when the target pools by average (it has none); pos_embed is copied when the
  source has a trainable one, else the target keeps its sin-cos initialisation. Continuing from
  a fine-tuned classifier (meta objective 'classification') keeps its head too.
  """
  src = loaded["encoder"] if "encoder" in loaded else loaded
  keep_head = meta.get("objective") == "classification"
  out, missing = {}, []
  for key, value in target.items():
    if key in FRESH and not (keep_head and key in src):
      out[key] = value
    elif key == "pos_embed" and key not in src:
      out[key] = value
    elif key in src:
      out[key] = src[key]
    else:
      missing.append(key)
  if missing:
    raise ValueError(f"config.init has no {missing} for the classifier (its keys: {sorted(src)})")
  unused = sorted(set(src) - set(out))
  if unused:
    logging.info("config.init: not used by the classifier: %s", unused)
  return out


class ClassificationTask(Task):
  def __init__(self, config):
    self.config = config
    self.model, self.model_meta = classifier_from_config(config.model)
    self.num_classes = config.model.num_classes
    self.aug = config.augment
    self.ema_decay = config.get("ema_decay", 0.0)
    self.linear_probe = config.get("linear_probe", False)
    if self.linear_probe and (self.ema_decay or config.model.drop_path_rate):
      raise ValueError("config.linear_probe trains only the head: set ema_decay=0 and "
                       "model.drop_path_rate=0")
    self._count_fn = None

  def init(self, rng, batch):
    r_model, r_head = jax.random.split(rng)
    params = self.model.init({"params": r_model}, batch["image"][:1])["params"]
    std = self.config.model.head_init_std
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

  def per_example_random(self, rng, batch):
    images, labels = batch["image"], batch["label"]
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
    return {"image": images, "target": target}

  def loss(self, params, extra, batch, rng, step, frozen=None):
    if self.linear_probe:
      return self._probe_loss(params, extra, batch)
    logits, _ = self.model.apply({"params": params}, batch["image"], train=True,
                                 rngs={"droppath": rng})
    loss = cls_obj.soft_cross_entropy(logits, batch["target"])
    top1 = jnp.mean(cls_obj.topk_correct(logits, batch["label"], 1))
    return loss, ({"loss": loss, "train_top1": top1}, extra)

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
    return loss, ({"loss": loss, "train_top1": top1}, dict(extra, probe_norm=stats))

  def inference_params(self, params, extra):
    """The params evaluated, saved as best and exported (the probe's norm folded in)."""
    return fold_probe_norm(params, extra["probe_norm"]) if self.linear_probe else params

  def lr_multipliers(self, params):
    if self.linear_probe:  # only the head trains; lr 0 also stops weight decay elsewhere
      return {k: jax.tree.map(lambda _: 1.0 if k == "head" else 0.0, v) for k, v in params.items()}
    decay = self.config.layer_decay
    return None if decay >= 1.0 else layer_decay_multipliers(params, self.model.depth, decay)

  def after_update(self, params, extra, step):
    """EMA of the weights (timm ModelEmaV2); the first update copies the (loaded) weights."""
    if not self.ema_decay:
      return extra
    d = jnp.where(step == 0, 0.0, self.ema_decay)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, extra["ema"], params)
    return dict(extra, ema=ema)

  def adapt_pretrained(self, target, loaded, meta):
    return adapt_encoder(target, loaded, meta)

  # --- evaluation -------------------------------------------------------------------------

  def _accuracy(self, trainer, params):
    if self._count_fn is None:
      self._count_fn = acc_lib.make_count_fn(acc_lib.logits_of(self.model), trainer.mesh)
    return acc_lib.evaluate_classifier(
        None, params, self.config.data, image_size=self.config.model.image_size,
        batch_size=self.config.eval_batch_size, mesh=trainer.mesh, count_fn=self._count_fn)

  def evaluate(self, trainer, state, step):
    params = self.inference_params(state.params, state.extra)
    res = self._accuracy(trainer, params)
    scalars = {"top1": res["top1"], "top5": res["top5"]}
    if self.ema_decay:
      ema = self._accuracy(trainer, state.extra["ema"])
      scalars.update(ema_top1=ema["top1"], ema_top5=ema["top5"])
    best = self._update_best(trainer, params, step, res)
    scalars["best_top1"] = best["top1"]
    if step == trainer.total_steps:
      self._record(trainer, scalars, best)
    return scalars

  def _update_best(self, trainer, params, step, res) -> dict:
    scores = {"top1": res["top1"], "top5": res["top5"]}
    return ckpt_lib.keep_best(trainer.workdir, params, trainer.meta(), step, scores, "top1",
                              self.config.get("save_best", True))

  def _record(self, trainer, scalars, best):
    cfg = self.config
    common = dict(model=self.model_meta["name"], pretrain=cfg.init or "scratch",
                  dataset=cfg.data.dataset)
    protocol = cfg.get("protocol", "finetune")
    results.append_row(trainer.workdir, protocol=protocol, top1=scalars["top1"],
                       top5=scalars["top5"], echo=False, **common)
    if self.ema_decay:
      results.append_row(trainer.workdir, protocol=protocol + "-ema", top1=scalars["ema_top1"],
                         top5=scalars["ema_top5"], echo=False, **common)
    results.append_row(trainer.workdir, protocol=f"{protocol}-best@{best['step']}",
                       top1=best["top1"], top5=best["top5"], **common)
