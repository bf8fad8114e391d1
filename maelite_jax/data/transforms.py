"""Image ops on tf tensors, each usable alone.

Conventions, so ops compose in any order:
- images are float32 in [0, 1], (H, W, C), once `to_float` has run (resizes clip back to [0, 1]
  because bicubic overshoots); `normalize` (or `to_uint8`, to normalise later) comes last;
- random ops are `op(image, seed, **params)` with `seed` a stateless seed (shape (2,) int) and
  use only `tf.random.stateless_*`/`tf.image.stateless_*`, so an example's augmentation is a
  pure function of its seed: that is what makes training exactly resumable;
- `data.ops` composes them from config lists, each op with its own seed split from one example
  seed (MoCo-v3's colour jitter, blur and solarize are more entries of such a list).
"""

import math

import tensorflow as tf

INTERPOLATIONS = ('bilinear', 'bicubic', 'random')


def to_float(image):
  """uint8 [0, 255] -> float32 [0, 1]; float images are passed through."""
  if image.dtype == tf.uint8:
    return tf.cast(image, tf.float32) / 255.0
  return tf.cast(image, tf.float32)


def to_rgb(image):
  """Grayscale -> 3 equal channels; RGBA -> RGB; RGB unchanged (works with unknown C)."""
  channels = image.shape[-1]
  if channels == 3:
    return image
  if channels == 1:
    return tf.image.grayscale_to_rgb(image)
  if channels is not None:
    return image[..., :3]
  channels = tf.shape(image)[-1]
  rgb = tf.cond(tf.equal(channels, 1), lambda: tf.tile(image, [1, 1, 3]),
                lambda: image[..., :3])
  return tf.ensure_shape(rgb, [None, None, 3])


def resize(image, size, interpolation='bicubic', seed=None, antialias=True):
  """Resize to `size` (int or (h, w)), clipped to [0, 1]. Antialiased when shrinking (as PIL
  does); when enlarging the plain kernel gives the same pixels (< 1e-3) about 4x faster.
  `antialias=False` always takes the plain kernel (what big_vision's and TensorFlow's ImageNet
  pipelines resize with): a shrinking resize then aliases, and costs about a third of the
  antialiased one (TensorFlow's antialiasing kernel is slow; docs/input-pipeline.md).
  'random' picks bilinear or bicubic with equal odds (timm's 'random'; needs a seed)."""
  if isinstance(size, int):
    size = (size, size)
  if interpolation == 'random':
    if seed is None:
      raise ValueError("interpolation='random' needs a seed.")
    coin = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(coin, lambda: resize(image, size, 'bilinear', antialias=antialias),
                   lambda: resize(image, size, 'bicubic', antialias=antialias))
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.')
  image = to_float(image)
  size = tf.convert_to_tensor(size, tf.int32)
  if not antialias:
    return tf.clip_by_value(tf.image.resize(image, size, method=interpolation), 0.0, 1.0)
  shrink = tf.reduce_any(tf.shape(image)[:2] > size)
  out = tf.cond(shrink,
                lambda: tf.image.resize(image, size, method=interpolation, antialias=True),
                lambda: tf.image.resize(image, size, method=interpolation))
  return tf.clip_by_value(out, 0.0, 1.0)


def crop_window(image_shape, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
  """torchvision's RandomResizedCrop window: up to `attempts` draws of (area fraction, log
  aspect ratio), the first that fits wins; otherwise a centre crop with the ratio clamped.
  All draws are made at once (vectorised) from the stateless seed. -> (top, left, h, w)."""
  height, width = image_shape[0], image_shape[1]
  area = tf.cast(height * width, tf.float32)
  s_area, s_ratio, s_top, s_left = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  target = area * tf.random.stateless_uniform([attempts], s_area, scale[0], scale[1])
  log_ratio = tf.random.stateless_uniform([attempts], s_ratio, math.log(ratio[0]),
                                          math.log(ratio[1]))
  aspect = tf.exp(log_ratio)
  crop_w = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  u_top = tf.random.stateless_uniform([attempts], s_top)[first]
  u_left = tf.random.stateless_uniform([attempts], s_left)[first]

  def found():
    h, w = crop_h[first], crop_w[first]
    top = tf.cast(u_top * tf.cast(height - h + 1, tf.float32), tf.int32)
    left = tf.cast(u_left * tf.cast(width - w + 1, tf.float32), tf.int32)
    return tf.minimum(top, height - h), tf.minimum(left, width - w), h, w

  def fallback():
    in_ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
    w = tf.where(in_ratio < ratio[0], width,
                 tf.where(in_ratio > ratio[1],
                          tf.cast(tf.round(tf.cast(height, tf.float32) * ratio[1]), tf.int32),
                          width))
    h = tf.where(in_ratio < ratio[0],
                 tf.cast(tf.round(tf.cast(width, tf.float32) / ratio[0]), tf.int32),
                 height)
    w, h = tf.clip_by_value(w, 1, width), tf.clip_by_value(h, 1, height)
    return (height - h) // 2, (width - w) // 2, h, w

  return tf.cond(tf.reduce_any(fits), found, fallback)


def random_resized_crop(image, seed, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        interpolation='bicubic', antialias=True):
  """Crop a random window (see `crop_window`) and resize it to (size, size) (`resize`)."""
  window_seed, interp_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  top, left, h, w = crop_window(tf.shape(image), window_seed, scale, ratio)
  crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([h, w, -1]))
  return resize(crop, size, interpolation, interp_seed, antialias)


def decode_random_resized_crop(encoded, seed, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                               interpolation='bicubic', antialias=True):
  """`random_resized_crop(decode(encoded), seed, ...)` that decodes only the window of a JPEG.

  The seed is split as `random_resized_crop` splits it and the window drawn from the image's
  (height, width) by the same `crop_window`, so the window and the interpolation coin are the
  same; a JPEG's shape comes from its header and only the window's blocks are decoded (the
  pixels equal a full decode's within libjpeg's rounding), other formats are decoded whole
  and cropped, exactly as before."""
  window_seed, interp_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  crop = decode_window(encoded, lambda shape: crop_window(shape, window_seed, scale, ratio))
  return resize(crop, size, interpolation, interp_seed, antialias)


def decode_window(encoded, window_fn):
  """The uint8 RGB window (top, left, h, w) = window_fn((height, width, ...)) of an encoded
  image. JPEG: the header gives the shape (`extract_jpeg_shape`, no decoding) and
  `decode_and_crop_jpeg` runs the inverse DCT, upsampling and colour conversion only for the
  window's blocks. Other formats (PNG, GIF, BMP, WebP): decoded whole, then sliced."""

  def jpeg():
    top, left, h, w = window_fn(tf.image.extract_jpeg_shape(encoded))
    return tf.image.decode_and_crop_jpeg(encoded, tf.stack([top, left, h, w]), channels=3)

  def other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    top, left, h, w = window_fn(tf.shape(image))
    return tf.slice(image, tf.stack([top, left, 0]), tf.stack([h, w, 3]))

  return tf.ensure_shape(tf.cond(tf.io.is_jpeg(encoded), jpeg, other), [None, None, 3])


def random_flip(image, seed, prob=0.5):
  """Horizontal flip with probability `prob`."""
  flip = tf.random.stateless_uniform([], seed) < prob
  return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)


def center_crop_resize(image, size, crop_pct=0.875, interpolation='bicubic'):
  """Eval view: resize the shorter side to size / crop_pct and centre-crop (size, size) (i.e.
  256 -> 224). Images whose shorter side is below `size` (28 px Fashion-MNIST, 32 px CIFAR)
  are upsampled with the shorter side to exactly `size` instead: a margin cut from a tiny image
  would throw away real content."""
  shape = tf.shape(image)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  short = tf.minimum(height, width)
  target = tf.where(short < size, float(size), float(math.floor(size / crop_pct)))
  # As torchvision: the short side becomes `target`, the long side is truncated.
  new_h = tf.where(height <= width, target, tf.floor(height * target / short))
  new_w = tf.where(height <= width, tf.floor(width * target / short), target)
  new_h = tf.maximum(tf.cast(new_h, tf.int32), size)
  new_w = tf.maximum(tf.cast(new_w, tf.int32), size)
  resized = resize(image, tf.stack([new_h, new_w]), interpolation)
  top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2), tf.int32)  # half to even,
  left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2), tf.int32)  # as Python round
  return tf.ensure_shape(resized[top:top + size, left:left + size], [size, size, None])


def normalize(image, mean, std):
  """(image - mean) / std per channel, on [0, 1] pixels (ImageNet mean/std by convention)."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (to_float(image) - mean) / std


def to_uint8(image):
  """[0, 1] float -> uint8, rounding as PIL/torchvision do when an augmented image is saved
  back to 8 bits; shipping uint8 to the devices moves 4x fewer bytes than float32."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


# ---------------------------------------------------------------- photometric ops (MoCo-v3/BYOL)
# Deterministic `adjust_*` ops take their factors; the random ones draw them from the seed and
# act with probability `prob`, so `prob=0` is exactly the identity.

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2: PIL's convert('L') and torchvision's


def rgb_to_gray(image):
  """(H, W, 3) -> (H, W, 1) luma with PIL's weights (tf's differ in the 4th digit)."""
  return tf.reduce_sum(image * tf.constant(GRAY_WEIGHTS, image.dtype), axis=-1, keepdims=True)


def _blend(image, other, factor):
  """torchvision's blend: factor * image + (1 - factor) * other, clipped to [0, 1]."""
  return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image, factor):
  """Multiplies by `factor` (torchvision's brightness, not tf's additive delta)."""
  return _blend(image, tf.zeros_like(image), factor)


def adjust_contrast(image, factor):
  """Blends with the mean gray level of the whole image (tf's uses per-channel means)."""
  return _blend(image, tf.reduce_mean(rgb_to_gray(image)), factor)


def adjust_saturation(image, factor):
  """Blends with the grayscale image (tf's works in HSV space instead)."""
  return _blend(image, rgb_to_gray(image), factor)


def adjust_hue(image, delta):
  """Rotates hue by `delta` in [-0.5, 0.5] turns (HSV round trip, as torchvision's)."""
  return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def _coin(seed, prob):
  return tf.random.stateless_uniform([], seed) < prob


def color_jitter(image, seed, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, prob=0.8):
  """RandomApply([ColorJitter(b, c, s, h)], p=prob): factors uniform in [max(0, 1 - x), 1 + x]
  (hue: [-h, h]) and the non-zero ones applied in a random order, as torchvision does."""
  s_coin, s_factors, s_order = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  u = tf.random.stateless_uniform([4], s_factors)
  strengths = (brightness, contrast, saturation)
  factors = [max(0.0, 1.0 - x) + u[i] * (1.0 + x - max(0.0, 1.0 - x))
             for i, x in enumerate(strengths)] + [hue * (2.0 * u[3] - 1.0)]
  fns = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
  active = [i for i, x in enumerate(strengths + (hue,)) if x > 0]
  if not active or prob <= 0:
    return image
  order = tf.argsort(tf.random.stateless_uniform([len(active)], s_order))

  def jitter():
    out = image
    for pos in range(len(active)):
      branches = [lambda x=out, i=i: fns[i](x, factors[i]) for i in active]
      out = tf.switch_case(order[pos], branches)
    return out

  return tf.cond(_coin(s_coin, prob), jitter, lambda: image)


def random_grayscale(image, seed, prob=0.2):
  """RandomGrayscale: luma copied to all 3 channels with probability `prob`."""
  if prob <= 0:
    return image
  gray = lambda: tf.tile(rgb_to_gray(image), [1, 1, 3])
  return tf.cond(_coin(seed, prob), gray, lambda: image)


def gaussian_blur(image, sigma, radius: int):
  """Separable Gaussian blur with a (2 radius + 1) kernel, reflect padding (torchvision's)."""
  radius = int(radius)
  shape = image.shape
  if shape[0] is not None and shape[1] is not None:
    radius = min(radius, shape[0] - 1, shape[1] - 1)  # reflect padding needs pad < size
  if radius < 1:
    return image
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-0.5 * tf.square(x / sigma))
  kernel /= tf.reduce_sum(kernel)
  # Channels become the batch of a 1-channel conv: works whatever C is (even if unknown).
  out = tf.transpose(image, [2, 0, 1])[..., None]
  out = tf.pad(out, [[0, 0], [radius, radius], [radius, radius], [0, 0]], 'REFLECT')
  out = tf.nn.conv2d(out, tf.reshape(kernel, [-1, 1, 1, 1]), 1, 'VALID')
  out = tf.nn.conv2d(out, tf.reshape(kernel, [1, -1, 1, 1]), 1, 'VALID')
  return tf.clip_by_value(tf.transpose(out[..., 0], [1, 2, 0]), 0.0, 1.0)


def random_gaussian_blur(image, seed, sigma=(0.1, 2.0), prob=1.0):
  """SimCLR/MoCo-v3 blur: sigma ~ U(sigma) in pixels with probability `prob`; the kernel covers
  +-3 sigma_max (PIL's radius=sigma is the same Gaussian, approximated by box blurs)."""
  if prob <= 0:
    return image
  s_coin, s_sigma = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  value = tf.random.stateless_uniform([], s_sigma, sigma[0], sigma[1])
  radius = math.ceil(3 * sigma[1])
  return tf.cond(_coin(s_coin, prob), lambda: gaussian_blur(image, value, radius),
                 lambda: image)


def solarize(image, threshold=128 / 255):
  """PIL's ImageOps.solarize: pixels >= threshold are inverted."""
  return tf.where(image >= threshold, 1.0 - image, image)


def random_solarize(image, seed, threshold=128 / 255, prob=0.2):
  if prob <= 0:
    return image
  return tf.cond(_coin(seed, prob), lambda: solarize(image, threshold), lambda: image)


# ---------------------------------------------------------------- joint ops (image + label map)
# Segmentation: the image (float [0, 1]) and its uint8 class map move together; the image is
# resized bilinear (antialiased when shrinking), the map nearest; padding is 0 / IGNORE_LABEL.

IGNORE_LABEL = 255


def resize_pair(image, mask, size):
  """Image bilinear (float [0, 1]), mask nearest: both sample at half-pixel centres, aligned."""
  image = resize(image, size, 'bilinear')
  mask = tf.image.resize(mask[..., None], size, method='nearest')[..., 0]
  return image, mask


def pad_pair(image, mask, height, width):
  """Pads bottom/right up to (height, width): image with 0, mask with the ignore label."""
  ph = tf.maximum(height - tf.shape(image)[0], 0)
  pw = tf.maximum(width - tf.shape(image)[1], 0)
  image = tf.pad(image, [[0, ph], [0, pw], [0, 0]])
  mask = tf.pad(mask, [[0, ph], [0, pw]], constant_values=IGNORE_LABEL)
  return image, mask


def joint_augment(image, mask, seed, *, crop_size: int, base_size: int,
                  scale_range=(0.5, 2.0), max_ratio: float = 4.0, hflip: bool = True):
  """(float image (H, W, 3), uint8 mask (H, W)) -> both (crop, crop), the same geometry."""
  s_scale, s_top, s_left, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  r = tf.random.stateless_uniform([], s_scale, scale_range[0], scale_range[1])
  factor = tf.minimum(max_ratio * base_size * r / tf.reduce_max(shape),
                      base_size * r / tf.reduce_min(shape))
  size = tf.maximum(tf.cast(tf.round(shape * factor), tf.int32), 1)
  image, mask = resize_pair(image, mask, size)
  image, mask = pad_pair(image, mask, crop_size, crop_size)
  hw = tf.shape(mask)

  def offset(s, n):
    u = tf.random.stateless_uniform([], s)
    return tf.minimum(tf.cast(u * tf.cast(n - crop_size + 1, tf.float32), tf.int32),
                      n - crop_size)

  top, left = offset(s_top, hw[0]), offset(s_left, hw[1])
  image = image[top:top + crop_size, left:left + crop_size]
  mask = mask[top:top + crop_size, left:left + crop_size]
  if hflip:
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    image, mask = tf.cond(flip, lambda: (image[:, ::-1], mask[:, ::-1]), lambda: (image, mask))
  return (tf.ensure_shape(image, [crop_size, crop_size, 3]),
          tf.ensure_shape(mask, [crop_size, crop_size]))


def eval_view(image, mask, eval_size: int):
  """Long side -> eval_size (aspect kept), padded to eval_size x eval_size (mask: ignore)."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  size = tf.maximum(tf.cast(tf.round(shape * eval_size / tf.reduce_max(shape)), tf.int32), 1)
  image, mask = resize_pair(image, mask, tf.minimum(size, eval_size))
  image, mask = pad_pair(image, mask, eval_size, eval_size)
  return (tf.ensure_shape(image, [eval_size, eval_size, 3]),
          tf.ensure_shape(mask, [eval_size, eval_size]))
