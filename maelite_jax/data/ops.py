"""Per-example preprocessing ops declared in configs as `(name, kwargs)` lists.

big_vision's `pp` idea in plain Python: a config lists the ops of a view in order, e.g.

  data.train_ops = (("random_resized_crop", dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                                 interpolation="bicubic", antialias=True)),
                    ("random_flip", dict(prob=0.5)))

and `compose(ops, image_size)` turns the list into one function `(features, seed) -> features`.
`features` is a dict with 'image' (float32 [0, 1], (H, W, 3)) and, for segmentation, 'label'
(uint8 (H, W) class map); ops that move pixels move the label map with them. Every op gets its
own stateless seed split from the example's seed by its position in the list, so an example's
augmentation is a pure function of (seed, position): what makes training exactly resumable.

Kwargs have no defaults here: the config is the only home of hyper-parameters, and a missing
or unknown kwarg is a config error naming the op. `image_size` (the model's input size) is given
to every op by the pipeline, never written in the list.
"""

import inspect
import math
from typing import Callable

import tensorflow as tf

from maelite_jax.data import autoaugment
from maelite_jax.data import transforms
from maelite_jax.utils.errors import ConfigError

IGNORE_LABEL = 255

# name -> factory(image_size, **kwargs) -> fn(features, seed) -> features
_FACTORIES: dict[str, Callable] = {}
# name -> factory(image_size, **kwargs) -> fn(features with 'image' = encoded bytes, seed) ->
# features: the same op with the decoding fused into it (see `compose(..., encoded=True)`).
_ENCODED_FACTORIES: dict[str, Callable] = {}


def register(name: str, encoded: Callable = None):
  """Registers an op factory; `encoded`, a factory with the same kwargs whose function takes
  the still encoded image, lets the op be the first of a list that decodes as it goes."""
  def wrap(factory):
    _FACTORIES[name] = factory
    if encoded is not None:
      _ENCODED_FACTORIES[name] = encoded
    return factory
  return wrap


def names() -> list[str]:
  return sorted(_FACTORIES)


def _interval(name, value, low, high):
  """(min, max) with low < min <= max <= high, else ValueError naming the kwarg."""
  try:
    a, b = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
  if not low < a <= b <= high:
    raise ValueError(f"{name}={value!r} is not an interval with {low} < min <= max <= {high}")
  return a, b


def _interpolation(value):
  if value not in transforms.INTERPOLATIONS:
    raise ValueError(f"interpolation={value!r} is unknown; use one of {transforms.INTERPOLATIONS}")
  return value


def _bool(name, value):
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}")
  return value


def _probability(value):
  if not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"prob={value!r} is not a probability in [0, 1]")
  return float(value)


def _on_image(fn):
  """An image-only random op (image, seed) -> image as a features op."""
  return lambda features, seed: dict(features, image=fn(features["image"], seed))


# ---------------------------------------------------------------- geometric (image)

def _random_resized_crop_encoded(image_size, *, scale, ratio, interpolation, antialias):
  """The crop below on encoded bytes: a JPEG decodes only its window (same window, same seed)."""
  scale, ratio = _interval("scale", scale, 0.0, 1.0), _interval("ratio", ratio, 0.0, math.inf)
  _interpolation(interpolation)
  _bool("antialias", antialias)
  return _on_image(lambda im, s: transforms.decode_random_resized_crop(
      im, s, image_size, scale, ratio, interpolation, antialias))


@register("random_resized_crop", encoded=_random_resized_crop_encoded)
def _random_resized_crop(image_size, *, scale, ratio, interpolation, antialias):
  """torchvision's RandomResizedCrop to image_size: area fraction in `scale`, aspect in `ratio`;
  `antialias` False resizes with the plain kernel (fast, aliasing; see transforms.resize)."""
  scale, ratio = _interval("scale", scale, 0.0, 1.0), _interval("ratio", ratio, 0.0, math.inf)
  _interpolation(interpolation)
  _bool("antialias", antialias)
  return _on_image(lambda im, s: transforms.random_resized_crop(im, s, image_size, scale, ratio,
                                                                interpolation, antialias))


@register("random_flip")
def _random_flip(image_size, *, prob):
  del image_size
  prob = _probability(prob)
  return _on_image(lambda im, s: transforms.random_flip(im, s, prob))


@register("center_crop_resize")
def _center_crop_resize(image_size, *, crop_pct, interpolation):
  """Eval view: shorter side to image_size / crop_pct, centre crop (256 -> 224 at 0.875)."""
  if not 0.0 < float(crop_pct) <= 1.0:
    raise ValueError(f"crop_pct={crop_pct!r} is not in (0, 1]; use 0.875 (resize 256, crop 224) "
                     "or 1.0 (no crop)")
  _interpolation(interpolation)
  return _on_image(lambda im, s: transforms.center_crop_resize(im, image_size, crop_pct,
                                                               interpolation))


# ---------------------------------------------------------------- photometric (image)

@register("color_jitter")
def _color_jitter(image_size, *, brightness, contrast, saturation, hue, prob):
  """RandomApply(ColorJitter(b, c, s, h), p=prob) with torchvision's definitions."""
  del image_size
  if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5:
    raise ValueError("strengths must be >= 0 and hue <= 0.5")
  prob = _probability(prob)
  return _on_image(lambda im, s: transforms.color_jitter(im, s, brightness, contrast, saturation,
                                                         hue, prob))


@register("random_grayscale")
def _random_grayscale(image_size, *, prob):
  del image_size
  prob = _probability(prob)
  return _on_image(lambda im, s: transforms.random_grayscale(im, s, prob))


@register("random_gaussian_blur")
def _random_gaussian_blur(image_size, *, sigma, prob):
  """sigma ~ U(sigma) in pixels of the output image, with probability prob."""
  del image_size
  sigma, prob = _interval("sigma", sigma, 0.0, math.inf), _probability(prob)
  return _on_image(lambda im, s: transforms.random_gaussian_blur(im, s, sigma, prob))


@register("random_solarize")
def _random_solarize(image_size, *, threshold, prob):
  del image_size
  prob = _probability(prob)
  return _on_image(lambda im, s: transforms.random_solarize(im, s, threshold, prob))


@register("randaugment")
def _randaugment(image_size, *, spec):
  """timm's RandAugment from its string, e.g. 'rand-m9-mstd0.5-inc1'."""
  del image_size
  policy = autoaugment.parse_policy(spec)
  return _on_image(lambda im, s: autoaugment.rand_augment(im, s, policy))


# ---------------------------------------------------------------- joint (image + label map)

@register("seg_rescale_crop_flip")
def _seg_rescale_crop_flip(image_size, *, base_size, scale_range, max_ratio, hflip):
  """mmseg's training view: random rescale (short side base_size * r, r ~ U(scale_range), long
  side <= max_ratio * base_size * r), pad to the crop (image 0, label ignore), random crop of
  image_size, optional horizontal flip; image bilinear, label map nearest."""
  kw = dict(crop_size=image_size, base_size=int(base_size or image_size),
            scale_range=tuple(scale_range), max_ratio=float(max_ratio), hflip=bool(hflip))

  def fn(features, seed):
    image, label = transforms.joint_augment(features["image"], features["label"], seed, **kw)
    return dict(features, image=image, label=label)
  return fn


@register("seg_eval_view")
def _seg_eval_view(image_size):
  """Long side -> image_size (the evaluation canvas), padded to a square (label: ignore)."""

  def fn(features, seed):
    del seed
    image, label = transforms.eval_view(features["image"], features["label"], image_size)
    return dict(features, image=image, label=label)
  return fn


# ---------------------------------------------------------------- composition

def build(name: str, kwargs: dict, image_size: int, where: str = "data ops",
          encoded: bool = False):
  """One op function (with `encoded`, its variant on encoded bytes); a misspelt name or kwarg
  is a ConfigError naming it and the fix."""
  if name not in _FACTORIES:
    raise ConfigError(f"{where}: unknown op {name!r}. Fix: use one of: {', '.join(names())}.")
  factory = (_ENCODED_FACTORIES if encoded else _FACTORIES)[name]
  params = inspect.signature(_FACTORIES[name]).parameters
  wanted = [p for p, v in params.items() if v.kind == v.KEYWORD_ONLY]
  kwargs = dict(kwargs or {})
  missing = [k for k in wanted if k not in kwargs]
  unknown = [k for k in kwargs if k not in wanted]
  if missing or unknown:
    raise ConfigError(f"{where}: op {name!r} takes exactly the kwargs {wanted}; "
                      f"missing {missing}, unknown {unknown}. Fix: write every kwarg in the "
                      "config (ops have no defaults).")
  try:
    return factory(image_size, **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: op {name!r} with {kwargs}: {e}. Fix: correct that kwarg in "
                      "the config.") from None


def decodes_first(ops) -> bool:
  """Whether the first op of `ops` can take the encoded image and decode it itself (a JPEG's
  RandomResizedCrop decodes only its window): `compose(ops, ..., encoded=True)` works."""
  pairs = _as_pairs(ops, "ops")
  return bool(pairs) and pairs[0][0] in _ENCODED_FACTORIES


def compose(ops, image_size: int, where: str = "data ops", encoded: bool = False):
  """(features, seed) -> features applying `ops` in order, op i seeded by split(seed)[i].

  encoded=True: features['image'] is the encoded file (a scalar string) and the first op, one
  for which `decodes_first` holds, decodes it; the seeds are split exactly as without, so every
  op draws the same numbers as on the decoded image."""
  pairs = _as_pairs(ops, where)
  if encoded and not decodes_first(pairs):
    raise ValueError(f"{where}: the first op cannot decode ({pairs[:1]}); compose it on "
                     "decoded images.")
  fns = [build(name, kwargs, image_size, f"{where}[{i}]", encoded=encoded and i == 0)
         for i, (name, kwargs) in enumerate(pairs)]

  def apply(features, seed):
    seeds = tf.random.experimental.stateless_split(seed, max(len(fns), 1))
    for i, fn in enumerate(fns):
      features = fn(features, seeds[i])
    return features

  return apply


def _as_pairs(ops, where):
  pairs = []
  for i, entry in enumerate(ops or ()):
    if (not isinstance(entry, (tuple, list)) or len(entry) != 2
        or not isinstance(entry[0], str) or not isinstance(entry[1], dict)):
      raise ConfigError(f"{where}[{i}]: expected an (op name, kwargs dict) pair, got {entry!r}. "
                        "Fix: write ops as ((\"random_flip\", {\"prob\": 0.5}), ...).")
    pairs.append((entry[0], entry[1]))
  return pairs


def validate(ops, image_size: int, where: str) -> None:
  """Builds every op once (no TensorFlow execution): fails early on a bad list."""
  compose(ops, image_size, where)
