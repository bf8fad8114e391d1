"""Classification pieces as pure functions: soft targets, mixup/cutmix, random erasing, top-k.

They follow timm's numerics (the reference fine-tunes with timm): label smoothing puts
`smoothing / C` on every class and `1 - smoothing + smoothing / C` on the true one; mixup and
cutmix pair each image with the batch reversed and draw one lambda per batch ('batch' mode);
cutmix corrects lambda to the pasted area; random erasing ('pixel' mode, one box) fills a box of
the *normalised* image with N(0, 1) noise. Random draws are separate from their application so
the draws can be made once for the global batch (exact under micro-batching) and tested.
"""

import math

import jax
import jax.numpy as jnp
import optax


def smooth_targets(labels, num_classes: int, smoothing: float = 0.0):
  """(B,) int -> (B, C) soft targets with label smoothing: timm's on/off values, which are
  optax's (1 - s) * one_hot + s / C."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)


def soft_cross_entropy(logits, targets):
  """Mean over the batch of -sum(targets * log_softmax(logits)), in float32."""
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def sample_mix(rng, *, image_size: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
               prob: float = 1.0, switch_prob: float = 0.5):
  """One batch's mixup/cutmix draw: {'lam': (), 'cutmix': bool (), 'box': (4,) int}.

  box = (top, bottom, left, right) of the cutmix patch, as timm's `rand_bbox` (centre uniform
  over the image, sides int(size * sqrt(1 - lam)), clipped to the image). lam = 1 means no mix.
  """
  k_apply, k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(rng, 6)
  lam_mix = jax.random.beta(k_mix, max(mixup_alpha, 1e-8), max(mixup_alpha, 1e-8))
  lam_cut = jax.random.beta(k_cut, max(cutmix_alpha, 1e-8), max(cutmix_alpha, 1e-8))
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cut = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cut = jnp.asarray(cutmix_alpha > 0)
  enabled = (mixup_alpha > 0 or cutmix_alpha > 0) and prob > 0
  apply = jnp.logical_and(enabled, jax.random.uniform(k_apply) < prob)
  lam = jnp.where(apply, jnp.where(use_cut, lam_cut, lam_mix), 1.0).astype(jnp.float32)
  cut = jnp.floor(image_size * jnp.sqrt(1.0 - lam)).astype(jnp.int32)
  cy = jax.random.randint(k_y, (), 0, image_size)
  cx = jax.random.randint(k_x, (), 0, image_size)
  box = jnp.stack([jnp.clip(cy - cut // 2, 0, image_size), jnp.clip(cy + cut // 2, 0, image_size),
                   jnp.clip(cx - cut // 2, 0, image_size), jnp.clip(cx + cut // 2, 0, image_size)])
  return {"lam": lam, "cutmix": jnp.logical_and(apply, use_cut), "box": box}


def box_mask(box, height: int, width: int):
  """(H, W) float mask, 1 inside box = (top, bottom, left, right) (half-open)."""
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])
  return inside.astype(jnp.float32)


def apply_mix(images, labels, draw, num_classes: int, smoothing: float = 0.0):
  """Mixes images (B, H, W, C) with the reversed batch; returns (images, soft targets).

  Cutmix pastes the box from the partner and uses lam = 1 - box area / image area; mixup blends
  with lam. The targets blend the two smoothed one-hots with the same lam, so they sum to 1.
  """
  partner = images[::-1]
  h, w = images.shape[1], images.shape[2]
  mask = box_mask(draw["box"], h, w)[None, :, :, None]
  cut_images = images * (1.0 - mask) + partner * mask
  cut_lam = 1.0 - jnp.sum(mask) / (h * w)
  lam = jnp.where(draw["cutmix"], cut_lam, draw["lam"])
  mixed = jnp.where(draw["cutmix"], cut_images, images * draw["lam"] + partner * (1 - draw["lam"]))
  t = smooth_targets(labels, num_classes, smoothing)
  return mixed.astype(images.dtype), t * lam + t[::-1] * (1.0 - lam)


def sample_erasing(rng, batch_size: int, height: int, width: int, channels: int, *,
                   prob: float, scale=(0.02, 1 / 3), ratio: float = 0.3, attempts: int = 10):
  """timm RandomErasing draws per example: {'box': (B, 4), 'noise': (B, H, W, C)}.

  Up to `attempts` (area, log-aspect) draws, the first box that fits strictly inside wins;
  an example not erased (probability 1 - prob, or nothing fits) gets an empty box.
  """
  k_p, k_area, k_ratio, k_top, k_left, k_noise = jax.random.split(rng, 6)
  area = height * width * jax.random.uniform(k_area, (batch_size, attempts), minval=scale[0],
                                             maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (batch_size, attempts), minval=math.log(ratio),
                             maxval=math.log(1 / ratio))
  h = jnp.round(jnp.sqrt(area * jnp.exp(log_r))).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / jnp.exp(log_r))).astype(jnp.int32)
  fits = (h < height) & (w < width)
  first = jnp.argmax(fits, axis=1)
  pick = lambda a: jnp.take_along_axis(a, first[:, None], axis=1)[:, 0]
  h, w = pick(h), pick(w)
  top = jnp.floor(jax.random.uniform(k_top, (batch_size,)) * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(k_left, (batch_size,)) * (width - w + 1)).astype(jnp.int32)
  erase = (jax.random.uniform(k_p, (batch_size,)) < prob) & jnp.any(fits, axis=1)
  h, w = jnp.where(erase, h, 0), jnp.where(erase, w, 0)
  box = jnp.stack([top, top + h, left, left + w], axis=1)
  noise = jax.random.normal(k_noise, (batch_size, height, width, channels))
  return {"box": box, "noise": noise}


def apply_erasing(images, draw):
  """Replaces each image's box with its noise (on normalised images, as timm's 'pixel' mode)."""
  masks = jax.vmap(box_mask, in_axes=(0, None, None))(draw["box"], images.shape[1],
                                                       images.shape[2])[..., None]
  return (images * (1.0 - masks) + draw["noise"] * masks).astype(images.dtype)


def topk_correct(logits, labels, k: int):
  """(B,) 1.0 where the label is among the k highest logits (k capped at the class count)."""
  k = min(k, logits.shape[-1])
  _, idx = jax.lax.top_k(logits, k)
  return jnp.any(idx == labels[:, None], axis=-1).astype(jnp.float32)


def masked_counts(logits, labels, mask):
  """Integer counts {'correct1', 'correct5', 'count'} over rows with mask 1 (padding is 0)."""
  m = mask.astype(jnp.int32)
  return {"correct1": jnp.sum(topk_correct(logits, labels, 1).astype(jnp.int32) * m),
          "correct5": jnp.sum(topk_correct(logits, labels, 5).astype(jnp.int32) * m),
          "count": jnp.sum(m)}
