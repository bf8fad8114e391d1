"""Semantic segmentation on a plain ViT: simple feature pyramid + semantic-FPN head.

Backbone: the repo's `VisionTransformer` (same params and names, so any encoder checkpoint
loads into `params['backbone']`); its `return_tokens` gives the outputs of the blocks in
`out_indices` (BEiT / MAE-Lite seg: blocks 3, 5, 7, 11 of 12). The cls token is dropped and the
patch tokens become a map at stride p = patch_size.

Pyramid (ViTDet's simple feature pyramid, as BEiT's / MAE-Lite's seg backbone): the four block
outputs become maps at strides p/4, p/2, p, 2p via
  level 0: 2x2 transposed conv (stride 2) -> LayerNorm -> GELU -> 2x2 transposed conv
  level 1: 2x2 transposed conv; level 2: identity; level 3: 2x2 max-pool.
With patch 16 that is the usual 4, 8, 16, 32 px; with patch 4 at 32 px (the CPU smoke task)
1, 2, 4, 8 px: strides are patch_size * (1/4, 1/2, 1, 2), always relative to the patch.
(mmseg uses SyncBN in level 0; a per-pixel LayerNorm as in ViTDet keeps the model free of batch
statistics, so nothing but params is trained or checkpointed.)

Head (mmseg's FPN neck + FPNHead, "semantic FPN"): 1x1 lateral convs to fpn_dim, top-down
nearest upsampling + add, 3x3 output convs; per level a scale head of max(1, level) blocks
(3x3 conv -> GroupNorm -> ReLU, then bilinear 2x up to the next finer level) to the finest map,
summed, dropout, a 1x1 classifier, and bilinear upsampling (half-pixel centres, i.e.
align_corners=False) to the input size. GroupNorm replaces mmseg's SyncBN for the same reason.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maelite_jax.models import posemb
from maelite_jax.models.vit import LN_EPS, VisionTransformer, gelu_exact

PYRAMID_SCALES = (0.25, 0.5, 1.0, 2.0)  # level stride = patch_size * scale

# mmseg's inits (untruncated, also quicker to compile than flax's truncated lecun_normal): FPN
# convs xavier_uniform; ConvModules kaiming normal (fan_out, relu); the classifier N(0, 0.01)
# (classifier_init_std; 0 = lecun_normal, which short runs need: from N(0, 0.01) a small model
# first sits on the class prior, predicting background everywhere, for ~100 steps); the deconvs
# torch's default U(+-1/sqrt(fan_in)), fan_in = in_channels * 2 * 2.
xavier_init = nn.initializers.xavier_uniform()
kaiming_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
deconv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=2,
                                               out_axis=3)


def default_out_indices(depth: int) -> tuple[int, ...]:
  """BEiT's (3, 5, 7, 11) for 12 blocks; otherwise the ends of the four depth quarters."""
  if depth == 12:
    return (3, 5, 7, 11)
  return tuple(max(0, round((k + 1) * depth / 4) - 1) for k in range(4))


def pyramid_strides(patch_size: int) -> tuple[float, ...]:
  """Strides (input pixels per feature pixel) of the four pyramid levels."""
  return tuple(patch_size * s for s in PYRAMID_SCALES)


def _resize(x, hw, method):
  if x.shape[1:3] == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), method=method)


def _group_norm(channels: int, dtype, name: str):
  groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=dtype, name=name)


class Deconv2x2(nn.Module):
  """2x2 transposed conv with stride 2: out[2i + a, 2j + b] = x[i, j] @ kernel[a, b] + bias.

  The windows do not overlap, so it is one matmul and a pixel shuffle; XLA:CPU's gradient of
  nn.ConvTranspose was ~30x slower. kernel (2, 2, in, out) is torch's ConvTranspose2d weight
  (in, out, 2, 2) transposed to (2, 3, 0, 1), no flip.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", deconv_init, (2, 2, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    b, h, w, _ = x.shape
    y = jnp.einsum("bhwc,xyco->bhxwyo", x.astype(self.dtype), kernel.astype(self.dtype))
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class SimpleFeaturePyramid(nn.Module):
  """Four (B, g, g, D) ViT maps -> maps at 4x, 2x, 1x, 0.5x the ViT grid."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps):
    dim = maps[0].shape[-1]
    deconv = lambda name: Deconv2x2(dim, self.dtype, name=name)
    x0 = deconv("fpn1_deconv1")(maps[0])
    x0 = gelu_exact(nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="fpn1_norm")(x0))
    x0 = deconv("fpn1_deconv2")(x0)
    x1 = deconv("fpn2_deconv")(maps[1])
    x3 = nn.max_pool(maps[3], (2, 2), strides=(2, 2), padding="VALID")
    return [x0, x1, maps[2], x3]


class FPN(nn.Module):
  """mmseg's FPN neck: lateral 1x1, top-down nearest upsample + add, 3x3 output convs."""
  dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats):
    lat = [nn.Conv(self.dim, (1, 1), dtype=self.dtype, kernel_init=xavier_init,
                   name=f"lateral_{i}")(f) for i, f in enumerate(feats)]
    for i in range(len(lat) - 1, 0, -1):
      lat[i - 1] = lat[i - 1] + _resize(lat[i], lat[i - 1].shape[1:3], "nearest")
    return [nn.Conv(self.dim, (3, 3), padding=1, dtype=self.dtype, kernel_init=xavier_init,
                    name=f"output_{i}")(x) for i, x in enumerate(lat)]


class FPNHead(nn.Module):
  """mmseg's FPNHead: per-level scale heads brought to the finest level, summed, classified."""
  num_classes: int
  dim: int = 128
  dropout: float = 0.1
  classifier_init_std: float = 0.01
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats, train: bool = False):
    sizes = [f.shape[1:3] for f in feats]
    out = 0.0
    for i, x in enumerate(feats):
      for k in range(max(1, i)):
        x = nn.Conv(self.dim, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                    kernel_init=kaiming_init, name=f"scale_{i}_conv_{k}")(x)
        x = nn.relu(_group_norm(self.dim, self.dtype, f"scale_{i}_norm_{k}")(x))
        if i > 0:  # one 2x step towards the finest level (exact sizes: odd grids work too)
          x = _resize(x, sizes[i - 1 - k], "bilinear")
      out = out + x
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    std = self.classifier_init_std
    init = nn.initializers.normal(std) if std > 0 else nn.initializers.lecun_normal()
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=init,
                   name="classifier")(out)


class SegmentationModel(nn.Module):
  """ViT backbone -> pyramid -> semantic FPN; (B, H, W, 3) -> float32 logits (B, H, W, C)."""
  backbone: VisionTransformer
  num_classes: int
  out_indices: Sequence[int] = (3, 5, 7, 11)
  fpn_dim: int = 256
  head_dim: int = 128
  dropout: float = 0.1
  classifier_init_std: float = 0.01
  dtype: Any = jnp.float32

  @property
  def image_size(self) -> int:
    return self.backbone.image_size

  @nn.compact
  def __call__(self, images, train: bool = False, return_pyramid: bool = False):
    """Logits at the input size; with return_pyramid also the four pyramid maps."""
    if len(self.out_indices) != 4:
      raise ValueError(f"out_indices needs 4 block indices, got {self.out_indices}")
    _, aux = self.backbone(images, train=train, return_tokens=tuple(self.out_indices))
    g = self.backbone.grid_size
    maps = []
    for i in self.out_indices:
      tokens = aux["tokens"][i % self.backbone.depth][:, 1:]  # drop cls
      maps.append(tokens.reshape(tokens.shape[0], g, g, tokens.shape[-1]))
    pyramid = SimpleFeaturePyramid(self.dtype, name="pyramid")(maps)
    feats = FPN(self.fpn_dim, self.dtype, name="neck")(pyramid)
    logits = FPNHead(self.num_classes, self.head_dim, self.dropout, self.classifier_init_std,
                     self.dtype, name="decode_head")(feats, train)
    logits = _resize(logits.astype(jnp.float32), images.shape[1:3], "bilinear")
    return (logits, pyramid) if return_pyramid else logits


def with_image_size(model: SegmentationModel, image_size: int) -> SegmentationModel:
  """The same model for another (square) input size; pair with `resize_params`."""
  return model.clone(backbone=model.backbone.clone(image_size=image_size))


def resize_params(params: dict, model: SegmentationModel, image_size: int) -> dict:
  """params of `model` made fit for `with_image_size(model, image_size)`: a trainable pos_embed
  is resampled (fixed sin-cos tables are recomputed by the model and need nothing)."""
  backbone = params["backbone"]
  if "pos_embed" not in backbone or image_size == model.image_size:
    return params
  tokens = (image_size // model.backbone.patch_size)**2 + 1
  return dict(params, backbone=dict(backbone, pos_embed=posemb.resize_pos_table(backbone["pos_embed"],
                                                                         tokens)))


# ------------------------------------------------------------------ inference


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """mmseg's slide grid along one axis: starts every `stride`, the last window flush with the
  end, so every pixel is covered (size >= window)."""
  if size < window:
    raise ValueError(f"sliding window {window} is larger than the image ({size})")
  n = max(-(-(size - window) // stride), 0) + 1
  return sorted({min(i * stride, size - window) for i in range(n)})


def slide_logits(logits_fn, images, window: int, stride: int):
  """Averaged logits of square windows (window = the training crop) over (B, H, W, 3) images.

  The windows run one after another in a lax.scan (one copy of the model in the graph, one
  window's logits alive at a time) and are added into the full-size logits; each pixel's result
  is the mean over the windows that cover it, as mmseg's slide inference.
  """
  b, h, w, c = images.shape
  ys, xs = window_starts(h, window, stride), window_starts(w, window, stride)
  starts = np.array([(y, x) for y in ys for x in xs], np.int32)
  shape = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((b, window, window, c), images.dtype))
  size = (b, window, window, shape.shape[-1])

  def add_window(total, yx):
    at = (0, yx[0], yx[1], 0)
    out = logits_fn(jax.lax.dynamic_slice(images, at, (b, window, window, c)))
    return jax.lax.dynamic_update_slice(
        total, jax.lax.dynamic_slice(total, at, size) + out, at), None

  total, _ = jax.lax.scan(add_window, jnp.zeros((b, h, w, size[-1]), shape.dtype),
                          jnp.asarray(starts))
  count = np.zeros((1, h, w, 1), np.float32)
  for y, x in starts:
    count[:, y:y + window, x:x + window] += 1
  return total / jnp.asarray(count)


def make_logits_fn(model: SegmentationModel, image_size: int, mode: str = "whole",
                   stride: int | None = None):
  """fn(params, images (B, S, S, 3)) -> float32 logits (B, S, S, C), eval mode.

  'whole': one pass at S (a trainable pos_embed is resampled to S inside); 'slide': windows of the
  model's training size every `stride` pixels (default 2/3 of the window), averaged.
  """
  if mode == "whole":
    sized = with_image_size(model, image_size)
    return lambda params, images: sized.apply(
        {"params": resize_params(params, model, image_size)}, images, train=False)
  if mode == "slide":
    window = model.image_size
    step = stride or max(1, (2 * window) // 3)
    return lambda params, images: slide_logits(
        lambda x: model.apply({"params": params}, x, train=False), images, window, step)
  raise ValueError(f"eval mode {mode!r} is unknown; use 'whole' or 'slide'")
