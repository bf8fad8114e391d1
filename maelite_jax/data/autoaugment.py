"""RandAugment as timm's `rand-m9-mstd0.5-inc1` strings describe it, in stateless tf ops.

The fine-tuning recipes of the reference (timm) draw `n` ops (with replacement) per image, each
applied with probability 0.5 at a magnitude drawn from N(m, mstd) clipped to [0, mmax]; `inc1`
selects the op set whose severity grows with the magnitude. Images are float [0, 1] (H, W, 3);
ops that PIL runs on 8-bit values (posterize, solarize, equalize) quantise to 0..255 first.
Geometric ops fill uncovered pixels with the ImageNet mean, as timm does; they resample
bilinearly (tf's projective transform has no bicubic; timm uses bicubic here).
"""

import math

import tensorflow as tf

LEVEL_DENOM = 10.0
FILL = (124 / 255, 116 / 255, 104 / 255)  # timm's img_mean: ImageNet mean in 8-bit
_GRAY = (0.299, 0.587, 0.114)  # PIL's 'L' conversion


def parse_policy(spec: str) -> dict:
  """'rand-m9-mstd0.5-inc1' -> {'magnitude': 9, 'std': .5, 'max': 10, 'layers': 2, 'inc': True}."""
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f"RandAugment spec {spec!r} must start with 'rand' (e.g. "
                     "'rand-m9-mstd0.5-inc1').")
  policy = {'magnitude': 10.0, 'std': 0.0, 'max': 10.0, 'layers': 2, 'inc': False}
  for part in parts[1:]:
    for prefix, key, cast in (('mstd', 'std', float), ('mmax', 'max', float),
                              ('inc', 'inc', lambda v: bool(int(v))), ('m', 'magnitude', float),
                              ('n', 'layers', int)):
      if part.startswith(prefix):
        policy[key] = cast(part[len(prefix):])
        break
    else:
      raise ValueError(f'RandAugment spec {spec!r}: unknown part {part!r} (known: m, n, mstd, '
                       'mmax, inc).')
  return policy


def _gray(image):
  return tf.reduce_sum(image * tf.constant(_GRAY, image.dtype), axis=-1, keepdims=True)


def _blend(degenerate, image, factor):
  """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _to_levels(image):
  return tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0)


def color(image, factor):
  return _blend(tf.tile(_gray(image), [1, 1, 3]), image, factor)


def contrast(image, factor):
  mean = tf.round(tf.reduce_mean(_gray(image)) * 255.0) / 255.0
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Blend with PIL's SMOOTH filter (3x3, centre 5, /13); border pixels stay unfiltered."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], 'VALID')[0]
  inner = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  degenerate = inner * smooth + (1.0 - inner) * image
  return _blend(degenerate, image, factor)


def auto_contrast(image, _=None):
  lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  scaled = (image - lo) / tf.maximum(hi - lo, 1e-8)
  return tf.where(hi > lo, scaled, image)


def _equalize_channel(levels):
  """PIL's ImageOps.equalize for one channel of 0..255 float levels."""
  ints = tf.cast(levels, tf.int32)
  hist = tf.math.bincount(tf.reshape(ints, [-1]), minlength=256, maxlength=256)
  last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)[:, 0]))
  step = (tf.reduce_sum(hist) - last) // 255
  lut = (tf.cumsum(hist) - hist + step // 2) // tf.maximum(step, 1)
  lut = tf.clip_by_value(lut, 0, 255)
  return tf.where(step > 0, tf.cast(tf.gather(lut, ints), tf.float32), levels)


def equalize(image, _=None):
  levels = _to_levels(image)
  return tf.stack([_equalize_channel(levels[..., c]) for c in range(3)], axis=-1) / 255.0


def invert(image, _=None):
  return 1.0 - image


def posterize(image, bits):
  """Keep the `bits` most significant bits of each 8-bit value (8 or more: unchanged)."""
  shift = tf.cast(8 - tf.clip_by_value(bits, 0, 8), tf.int32)
  levels = tf.cast(_to_levels(image), tf.int32)
  return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(levels, shift), shift),
                 tf.float32) / 255.0


def solarize(image, threshold):
  levels = _to_levels(image)
  return tf.where(levels >= tf.cast(threshold, tf.float32), 255.0 - levels, levels) / 255.0


def solarize_add(image, add, threshold=128):
  levels = _to_levels(image)
  added = tf.minimum(levels + tf.cast(add, tf.float32), 255.0)
  return tf.where(levels < threshold, added, levels) / 255.0


def _affine(image, matrix):
  """Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2); mean fill."""
  transform = tf.reshape(tf.concat([tf.cast(matrix, tf.float32), tf.zeros([2])], 0), [1, 8])
  shape = tf.shape(image)
  stacked = tf.concat([image, tf.ones_like(image[..., :1])], axis=-1)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=stacked, transforms=transform, output_shape=shape[:2], fill_value=0.0,
      interpolation='BILINEAR', fill_mode='CONSTANT')[0]
  covered = out[..., 3:]
  return out[..., :3] + (1.0 - covered) * tf.constant(FILL, tf.float32)


def rotate(image, degrees):
  theta = tf.cast(degrees, tf.float32) * math.pi / 180.0
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  c, s = tf.cos(theta), tf.sin(theta)
  return _affine(image, tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy]))


def shear_x(image, shear):
  return _affine(image, tf.stack([1.0, shear, 0.0, 0.0, 1.0, 0.0]))


def shear_y(image, shear):
  return _affine(image, tf.stack([1.0, 0.0, 0.0, shear, 1.0, 0.0]))


def translate_x(image, pct):
  pixels = pct * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0]))


def translate_y(image, pct):
  pixels = pct * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels]))


def _signed(x, sign):
  return tf.where(sign, -x, x)


def _enhance_level(inc):
  if inc:  # 1 +- 0.9 m/10
    return lambda m, sign: 1.0 + _signed(m / LEVEL_DENOM * 0.9, sign)
  return lambda m, sign: m / LEVEL_DENOM * 1.8 + 0.1


def op_table(inc: bool) -> list:
  """[(name, op, level(magnitude, negate) -> op argument)] in timm's order for the set."""
  enhance = _enhance_level(inc)
  if inc:
    bits = lambda m, _: 4 - tf.cast(m / LEVEL_DENOM * 4, tf.int32)
    thresh = lambda m, _: 256 - tf.cast(m / LEVEL_DENOM * 256, tf.int32)
  else:
    bits = lambda m, _: tf.cast(m / LEVEL_DENOM * 4, tf.int32)
    thresh = lambda m, _: tf.cast(m / LEVEL_DENOM * 256, tf.int32)
  none = lambda m, _: 0.0
  return [
      ('AutoContrast', auto_contrast, none),
      ('Equalize', equalize, none),
      ('Invert', invert, none),
      ('Rotate', rotate, lambda m, sign: _signed(m / LEVEL_DENOM * 30.0, sign)),
      ('Posterize', posterize, bits),
      ('Solarize', solarize, thresh),
      ('SolarizeAdd', solarize_add, lambda m, _: tf.cast(m / LEVEL_DENOM * 110, tf.int32)),
      ('Color', color, enhance),
      ('Contrast', contrast, enhance),
      ('Brightness', brightness, enhance),
      ('Sharpness', sharpness, enhance),
      ('ShearX', shear_x, lambda m, sign: _signed(m / LEVEL_DENOM * 0.3, sign)),
      ('ShearY', shear_y, lambda m, sign: _signed(m / LEVEL_DENOM * 0.3, sign)),
      ('TranslateXRel', translate_x, lambda m, sign: _signed(m / LEVEL_DENOM * 0.45, sign)),
      ('TranslateYRel', translate_y, lambda m, sign: _signed(m / LEVEL_DENOM * 0.45, sign)),
  ]


def sample_magnitude(seed, policy):
  """N(m, std) clipped to [0, max] (std = inf: uniform in [0, m]; std = 0: exactly m)."""
  m, std = policy['magnitude'], policy['std']
  if std == 0:
    return tf.constant(m, tf.float32)
  if math.isinf(std):
    value = tf.random.stateless_uniform([], seed, 0.0, m)
  else:
    value = m + std * tf.random.stateless_normal([], seed)
  return tf.clip_by_value(value, 0.0, policy['max'])


def rand_augment(image, seed, policy, prob=0.5):
  """Applies `policy['layers']` random ops (chosen with replacement), each with prob 0.5."""
  table = op_table(policy['inc'])
  seeds = tf.random.experimental.stateless_split(seed, policy['layers'])
  for layer in range(policy['layers']):
    s_op, s_apply, s_mag, s_sign = tf.unstack(
        tf.random.experimental.stateless_split(seeds[layer], 4))
    index = tf.random.stateless_uniform([], s_op, 0, len(table), dtype=tf.int32)
    magnitude = sample_magnitude(s_mag, policy)
    negate = tf.random.stateless_uniform([], s_sign) < 0.5
    branches = [(lambda fn=fn, level=level: tf.ensure_shape(
        fn(image, level(magnitude, negate)), image.shape)) for _, fn, level in table]
    applied = tf.switch_case(index, branches)
    image = tf.where(tf.random.stateless_uniform([], s_apply) < prob, applied, image)
  return tf.clip_by_value(image, 0.0, 1.0)
