"""The on-device input pipeline: a split decoded once into accelerator memory and augmented there
by jitted JAX, with no TensorFlow and no host worker pool (`config.data.on_device=True`).

For datasets that fit in memory (the built-in Fashion-MNIST, an ImageFolder or a tfds split of a
few GB), a tiny model on a GPU outruns any host pipeline; here the host only launches one jitted
function per step. The same config describes both engines: `data.train_ops` / `view2_ops` /
`eval_ops` name the same ops with the same kwargs (RandomResizedCrop, flip, and MoCo-v3's colour
jitter, grayscale, blur and solarize are implemented here in JAX; other ops are a ConfigError).

Exactness, as in the tf.data engine:
- the order of the training examples is a permutation per epoch drawn from (seed, epoch), and
  step s takes rows [i * B, (i + 1) * B) of its epoch's permutation (the last partial batch is
  dropped), so batches are a pure function of (seed, step): resuming is exact;
- every example's augmentation key is fold_in(fold_in(key(seed), step), row): the same on 1 or N
  devices and for any micro-batching;
- images leave as normalised float32 sharded over the data axis, like the tf.data engine's.
Augmented pixels are rounded to 8 bits before normalising, as the tf.data engine (and
torchvision's uint8 pipeline) does.

Storage: uint8 (N, H, W, C), replicated on every device (the gather of a global batch then needs
no communication). The built-in set is read with numpy from the package (a few seconds); a tfds
split is read once with tfds and cached as .npz under the cache dir (MAELITE_CACHE_DIR, default
~/.cache/maelite_jax), so later runs, on machines without TensorFlow too, read the .npz; an
ImageFolder is decoded with PIL and resized to `data.on_device_canvas` (short side, then a
centre square), since images of one array must share a size.
"""

import functools
import hashlib
import math
import os
import re
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from maelite_jax.data import fashion_mnist_files
from maelite_jax.utils.errors import ConfigError
from maelite_jax.utils.prepare_lock import prepare_lock

BUILTIN = "fashion_mnist_builtin"
IMAGEFOLDER = "imagefolder"
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's convert('L') and torchvision's
# Stream tags of the (augmentation, shuffle) keys: the tf.data engine's, for familiarity.
_AUG_TAG, _SHUFFLE_TAG = 1, 2


def _error(key, problem, fix):
  return ConfigError(f"config.data.{key}: {problem} Fix: {fix}")


# ---------------------------------------------------------------- loading


def _slice(split: str, n: int) -> slice:
  """tfds slicing syntax on one split: 'train', 'train[:10000]', 'test[10%:50%]'."""
  match = re.fullmatch(r"\s*(\w+)\s*(?:\[\s*([-\d%]*)\s*:\s*([-\d%]*)\s*\])?\s*", split)
  if not match:
    raise _error("train_split", f"{split!r} is not a split the on-device engine reads.",
                 "use NAME or NAME[a:b] with integers or percentages.")

  def bound(text, default):
    if not text:
      return default
    if text.endswith("%"):
      return int(round(n * float(text[:-1]) / 100))
    return int(text)

  return slice(bound(match.group(2), 0), bound(match.group(3), n))


def _base(split: str) -> str:
  return split.split("[", 1)[0].strip()


def _cache_dir() -> str:
  return os.path.join(os.environ.get("MAELITE_CACHE_DIR", os.path.join(
      os.path.expanduser("~"), ".cache", "maelite_jax")), "on_device")


def _load_tfds(data_cfg, base: str):
  """(images, labels) of a whole tfds split, cached as .npz (read with tfds only once)."""
  key = hashlib.sha1(f"{data_cfg.dataset}|{data_cfg.data_dir}|{base}|{data_cfg.image_key}|"
                     f"{data_cfg.label_key}".encode()).hexdigest()[:12]
  path = os.path.join(_cache_dir(), f"{data_cfg.dataset}_{base}_{key}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return f["images"], f["labels"]
  try:
    import tensorflow_datasets as tfds  # only to build the cache, once
  except ImportError:
    raise _error("dataset", f"the on-device cache {path} of {data_cfg.dataset!r} does not exist "
                 "and tensorflow_datasets is not installed to build it.", "run once where "
                 "tensorflow is installed (or copy the .npz there), or use the built-in "
                 f"{BUILTIN!r}.") from None
  with prepare_lock(path):  # another process may be building this cache right now
    if os.path.exists(path):
      with np.load(path) as f:
        return f["images"], f["labels"]
    builder = tfds.builder(data_cfg.dataset, data_dir=data_cfg.data_dir)
    with prepare_lock(builder.data_dir):
      builder.download_and_prepare()
    arrays = tfds.as_numpy(builder.as_dataset(split=base, batch_size=-1))
    images, labels = arrays[data_cfg.image_key], arrays[data_cfg.label_key]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, path)
  return images, labels


def _load_folder(data_cfg, base: str):
  """(images, labels) of root/<split>/<class>/*: PIL-decoded, short side to the canvas, centre
  square; classes are the sorted class folders of the train and eval splits together."""
  from PIL import Image
  root, size = data_cfg.data_dir, int(data_cfg.on_device_canvas)
  if not root or not os.path.isdir(os.path.join(root, base)):
    raise _error("data_dir", f"the image folder {root}/{base} does not exist.",
                 "point data.data_dir at a folder holding <split>/<class>/<images>.")
  if size <= 0:
    raise _error("on_device_canvas", f"{size} is not a positive image side.",
                 "an ImageFolder on the device needs one size for all images, e.g. 2x the "
                 "model's image size.")
  classes = sorted({c for s in (_base(data_cfg.train_split), _base(data_cfg.eval_split))
                    if os.path.isdir(os.path.join(root, s))
                    for c in os.listdir(os.path.join(root, s))
                    if os.path.isdir(os.path.join(root, s, c))})
  images, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(root, base, name)
    for file in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
      try:
        with Image.open(os.path.join(folder, file)) as im:
          im = im.convert("RGB")
          scale = size / min(im.size)
          im = im.resize((max(size, round(im.size[0] * scale)),
                          max(size, round(im.size[1] * scale))), Image.BICUBIC)
          left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
          images.append(np.asarray(im.crop((left, top, left + size, top + size))))
          labels.append(label)
      except OSError:
        continue  # unreadable or not an image: skipped, as the tf.data engine's check does
  return np.stack(images), np.asarray(labels, np.int32)


def load_split(data_cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 (N, H, W, C), int32 (N,)) of a split, on the host, without TensorFlow when possible."""
  base = _base(split)
  if data_cfg.dataset == BUILTIN:
    if base not in fashion_mnist_files.SPLITS:
      raise _error("train_split", f"{split!r}: the built-in set has the splits "
                   f"{sorted(fashion_mnist_files.SPLITS)}.", "use one of them.")
    images, labels = fashion_mnist_files.load_split(base)
  elif data_cfg.dataset == IMAGEFOLDER:
    images, labels = _load_folder(data_cfg, base)
  else:
    images, labels = _load_tfds(data_cfg, base)
  if images.ndim == 3:
    images = images[..., None]
  part = _slice(split, len(images))
  return np.ascontiguousarray(images[part]), np.asarray(labels[part], np.int32)


def num_examples(data_cfg, split: str) -> int:
  if data_cfg.dataset == BUILTIN and _base(split) in fashion_mnist_files.SPLITS:
    n = fashion_mnist_files.SPLITS[_base(split)][2]
    part = _slice(split, n)
    return len(range(n)[part])
  return len(load_split(data_cfg, split)[1])


# ---------------------------------------------------------------- ops in JAX
# An op is built from its config kwargs: fn(image float32 (H, W, 3) in [0, 1], key) -> image.
# They follow transforms.py (the tf.data engine's ops) formula for formula.


def _crop_window(key, height, width, scale, ratio, attempts=10):
  """torchvision's RandomResizedCrop window (as transforms.crop_window): the first of
  `attempts` (area, log-ratio) draws that fits, else a centre crop with the ratio clamped."""
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = float(height * width)
  target = area * jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  crop_w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  crop_h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = jnp.argmax(fits)
  h, w = crop_h[first], crop_w[first]
  top = jnp.minimum((jax.random.uniform(k_top, (attempts,))[first] * (height - h + 1))
                    .astype(jnp.int32), height - h)
  left = jnp.minimum((jax.random.uniform(k_left, (attempts,))[first] * (width - w + 1))
                     .astype(jnp.int32), width - w)
  in_ratio = width / height
  fw = width if in_ratio < ratio[0] else (
      round(height * ratio[1]) if in_ratio > ratio[1] else width)
  fh = round(width / ratio[0]) if in_ratio < ratio[0] else height
  fw, fh = min(max(fw, 1), width), min(max(fh, 1), height)
  ok = jnp.any(fits)
  return (jnp.where(ok, top, (height - fh) // 2), jnp.where(ok, left, (width - fw) // 2),
          jnp.where(ok, h, fh), jnp.where(ok, w, fw))


def _resize_window(image, top, left, h, w, size, method, antialias=True):
  """The window (top, left, h, w) of `image` resampled to (size, size), clipped to [0, 1];
  antialiased when it shrinks (tf.image.resize(antialias=True) and PIL do the same), unless
  `antialias` is False (the plain kernel: transforms.resize's fast option)."""
  sy, sx = size / h.astype(jnp.float32), size / w.astype(jnp.float32)
  out = jax.image.scale_and_translate(
      image, (size, size, image.shape[-1]), (0, 1), jnp.stack([sy, sx]),
      jnp.stack([-top * sy, -left * sx]), method=method, antialias=antialias)
  return jnp.clip(out, 0.0, 1.0)


_METHODS = {"bilinear": "linear", "bicubic": "cubic"}


def _random_resized_crop(size, *, scale, ratio, interpolation, antialias):
  if interpolation not in (*_METHODS, "random"):
    raise ValueError(f"interpolation={interpolation!r} is unknown")
  if not isinstance(antialias, bool):
    raise ValueError(f"antialias must be True or False, got {antialias!r}")
  scale, ratio = tuple(map(float, scale)), tuple(map(float, ratio))

  def fn(image, key):
    k_window, k_interp = jax.random.split(key)
    top, left, h, w = _crop_window(k_window, image.shape[0], image.shape[1], scale, ratio)
    resize = functools.partial(_resize_window, image, top, left, h, w, size,
                               antialias=antialias)
    if interpolation != "random":
      return resize(_METHODS[interpolation])
    return jnp.where(jax.random.uniform(k_interp) < 0.5, resize("linear"), resize("cubic"))
  return fn


def _center_crop_resize(size, *, crop_pct, interpolation):
  """transforms.center_crop_resize: short side to size / crop_pct (or to size when the image is
  smaller), centre crop (size, size)."""
  method = _METHODS[interpolation]

  def fn(image, key):
    del key
    height, width = image.shape[0], image.shape[1]
    short = min(height, width)
    target = float(size) if short < size else float(math.floor(size / crop_pct))
    new_h = max(int(target if height <= width else math.floor(height * target / short)), size)
    new_w = max(int(math.floor(width * target / short) if height <= width else target), size)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    sy, sx = new_h / height, new_w / width
    out = jax.image.scale_and_translate(
        image, (size, size, image.shape[-1]), (0, 1), jnp.array([sy, sx], jnp.float32),
        jnp.array([-top, -left], jnp.float32), method=method, antialias=True)
    return jnp.clip(out, 0.0, 1.0)
  return fn


def _coin(key, prob):
  return jax.random.uniform(key) < prob


def _random_flip(size, *, prob):
  del size
  return lambda image, key: jnp.where(_coin(key, prob), image[:, ::-1], image)


def _gray(image):
  return jnp.sum(image * jnp.asarray(GRAY_WEIGHTS, image.dtype), axis=-1, keepdims=True)


def _blend(image, other, factor):
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def _rgb_to_hsv(rgb):
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, -1)
  delta = value - jnp.min(rgb, -1)
  safe = jnp.where(delta > 0, delta, 1.0)
  hue = jnp.where(value == r, (g - b) / safe, jnp.where(value == g, 2.0 + (b - r) / safe,
                                                         4.0 + (r - g) / safe)) / 6.0
  hue = jnp.where(delta > 0, hue % 1.0, 0.0)
  return hue, jnp.where(value > 0, delta / jnp.where(value > 0, value, 1.0), 0.0), value


def _hsv_to_rgb(h, s, v):
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  i = i.astype(jnp.int32) % 6
  pick = lambda *xs: jnp.select([i == k for k in range(6)], xs)
  return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], -1)


def _adjust_hue(image, delta):
  h, s, v = _rgb_to_hsv(image)
  return jnp.clip(_hsv_to_rgb((h + delta) % 1.0, s, v), 0.0, 1.0)


def _color_jitter(size, *, brightness, contrast, saturation, hue, prob):
  """transforms.color_jitter: torchvision's factors, the non-zero ones in a random order."""
  del size
  strengths = (brightness, contrast, saturation, hue)
  active = [i for i, x in enumerate(strengths) if x > 0]
  fns = (lambda x, f: _blend(x, jnp.zeros_like(x), f),
         lambda x, f: _blend(x, jnp.mean(_gray(x)), f),
         lambda x, f: _blend(x, _gray(x), f),
         _adjust_hue)

  def fn(image, key):
    if not active or prob <= 0:
      return image
    k_coin, k_factors, k_order = jax.random.split(key, 3)
    u = jax.random.uniform(k_factors, (4,))
    factors = [max(0.0, 1.0 - x) + u[i] * (1.0 + x - max(0.0, 1.0 - x))
               for i, x in enumerate(strengths[:3])] + [hue * (2.0 * u[3] - 1.0)]
    order = jnp.argsort(jax.random.uniform(k_order, (len(active),)))
    out = image
    for pos in range(len(active)):
      out = jax.lax.switch(order[pos], [lambda x, i=i: fns[i](x, factors[i]) for i in active],
                           out)
    return jnp.where(_coin(k_coin, prob), out, image)
  return fn


def _random_grayscale(size, *, prob):
  del size
  return lambda image, key: jnp.where(_coin(key, prob), jnp.tile(_gray(image), (1, 1, 3)), image)


def _random_gaussian_blur(size, *, sigma, prob):
  """transforms.random_gaussian_blur: separable kernel of radius ceil(3 sigma_max), reflect."""
  del size
  lo, hi = float(sigma[0]), float(sigma[1])
  radius = math.ceil(3 * hi)

  def fn(image, key):
    r = min(radius, image.shape[0] - 1, image.shape[1] - 1)
    if r < 1:
      return image
    k_coin, k_sigma = jax.random.split(key)
    s = jax.random.uniform(k_sigma, minval=lo, maxval=hi)
    x = jnp.arange(-r, r + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * jnp.square(x / s))
    kernel = kernel / jnp.sum(kernel)
    padded = jnp.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(kernel[i] * padded[i:i + image.shape[0]] for i in range(2 * r + 1))
    out = sum(kernel[i] * rows[:, i:i + image.shape[1]] for i in range(2 * r + 1))
    return jnp.where(_coin(k_coin, prob), jnp.clip(out, 0.0, 1.0), image)
  return fn


def _random_solarize(size, *, threshold, prob):
  del size
  return lambda image, key: jnp.where(_coin(key, prob),
                                      jnp.where(image >= threshold, 1.0 - image, image), image)


OPS = {
    "random_resized_crop": _random_resized_crop,
    "center_crop_resize": _center_crop_resize,
    "random_flip": _random_flip,
    "color_jitter": _color_jitter,
    "random_grayscale": _random_grayscale,
    "random_gaussian_blur": _random_gaussian_blur,
    "random_solarize": _random_solarize,
}


def compose(ops, image_size: int, where: str):
  """fn(image, key) applying `ops`, op i with fold_in(key, i); unknown ops are a ConfigError."""
  fns = []
  for i, (name, kwargs) in enumerate(ops or ()):
    if name not in OPS:
      raise ConfigError(f"{where}[{i}]: op {name!r} has no on-device implementation. Fix: use "
                        f"one of {sorted(OPS)} or set config.data.on_device=False (tf.data).")
    try:
      fns.append(OPS[name](image_size, **kwargs))
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{where}[{i}]: op {name!r} with {kwargs}: {e}. Fix: correct that "
                        "kwarg in the config.") from None

  def apply(image, key):
    for i, fn in enumerate(fns):
      image = fn(image, jax.random.fold_in(key, i))
    return image
  return apply


# ---------------------------------------------------------------- the engine


def validate_data_config(data_cfg, image_size: int) -> None:
  if data_cfg.label_type != "class":
    raise _error("on_device", "segmentation maps are not supported on the device.",
                 "set config.data.on_device=False.")
  if data_cfg.get("service_address"):
    raise _error("service_address", "is set, but the on-device engine (data.on_device=True) "
                 "has no host pipeline for tf.data service workers to run.",
                 "set config.data.service_address='' or config.data.on_device=False.")
  for key in ("train_ops", "view2_ops", "eval_ops"):
    compose(data_cfg[key], image_size, f"config.data.{key}")
  for key in ("mean", "std"):
    if len(tuple(data_cfg[key])) != 3:
      raise _error(key, f"expected 3 per-channel values, got {data_cfg[key]!r}.",
                   "e.g. ImageNet's.")


class _Split:
  """A split on the devices (uint8, replicated) with its labels, built once per process."""
  _cache: dict = {}

  @classmethod
  def get(cls, data_cfg, split: str, mesh):
    key = (data_cfg.dataset, data_cfg.data_dir, split, data_cfg.on_device_canvas, id(mesh))
    if key not in cls._cache:
      images, labels = load_split(data_cfg, split)
      replicated = NamedSharding(mesh, PartitionSpec())
      logging.info("on-device data: %s %s, %s uint8 (%.1f MB per device)", data_cfg.dataset,
                   split, images.shape, images.nbytes / 2**20)
      cls._cache.clear()  # one split at a time: evaluation's splits replace training's
      cls._cache[key] = (jax.device_put(images, replicated), jax.device_put(labels, replicated))
    return cls._cache[key]


def _normalizer(data_cfg):
  scale = np.float32(1 / 255) / np.asarray(data_cfg.std, np.float32)
  shift = -np.asarray(data_cfg.mean, np.float32) / np.asarray(data_cfg.std, np.float32)
  return lambda x: x * 255.0 * scale + shift


def _augmenter(data_cfg, image_size, mesh):
  """jit(images_u8 (N, H, W, C), labels, rows (B,), key) -> global batch, sharded."""
  views = [compose(data_cfg.train_ops, image_size, "config.data.train_ops")]
  if data_cfg.view2_ops:
    views.append(compose(data_cfg.view2_ops, image_size, "config.data.view2_ops"))
  normalize = _normalizer(data_cfg)
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))

  def one(image_u8, key):
    image = image_u8.astype(jnp.float32) / 255.0
    if image.shape[-1] == 1:
      image = jnp.tile(image, (1, 1, 3))
    out = []
    for v, view in enumerate(views):
      x = view(image, key if len(views) == 1 else jax.random.fold_in(key, v))
      out.append(normalize(jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0))
    return out

  def batch_fn(images, labels, rows, key):
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows.shape[0]))
    views_out = jax.vmap(one)(images[rows], keys)
    out = {"label": labels[rows]}
    for v, x in enumerate(views_out):
      out["image" if v == 0 else f"image{v + 1}"] = x
    return out

  return jax.jit(batch_fn, out_shardings=batch_sharding)


def build_train_iterator(data_cfg, *, image_size: int, global_batch_size: int, mesh, seed: int,
                         start_step: int = 0, data_axis="data") -> Iterator[dict]:
  """Endless global training batches {'image' (+ 'image2'), 'label'}; batch k of a run started
  at `start_step` is step start_step + k (see the module docstring)."""
  del data_axis
  validate_data_config(data_cfg, image_size)
  if global_batch_size % mesh.size:
    raise _error("batch", f"a global batch of {global_batch_size} is not divisible by the "
                 f"{mesh.size} devices.", f"use a multiple of {mesh.size} for config.batch_size.")
  images, labels = _Split.get(data_cfg, data_cfg.train_split, mesh)
  n = images.shape[0]
  steps = n // global_batch_size
  if steps == 0:
    raise _error("train_split", f"{data_cfg.train_split!r} has {n} examples, fewer than one "
                 f"global batch of {global_batch_size}.", "lower config.batch_size.")
  augment = _augmenter(data_cfg, image_size, mesh)
  base = jax.random.key(seed)
  aug_key, shuffle_key = jax.random.fold_in(base, _AUG_TAG), jax.random.fold_in(base, _SHUFFLE_TAG)
  permutation = jax.jit(lambda k: jax.random.permutation(k, n))

  def batches():
    step = start_step
    epoch, order = None, None
    while True:
      e, i = divmod(step, steps)
      if e != epoch:
        epoch, order = e, permutation(jax.random.fold_in(shuffle_key, e))
      rows = order[i * global_batch_size:(i + 1) * global_batch_size]
      yield augment(images, labels, rows, jax.random.fold_in(aug_key, step))
      step += 1

  return batches()


def build_eval_iterator(data_cfg, *, image_size: int, global_batch_size: int, mesh, split=None,
                        limit=None, data_axis="data") -> Iterator[dict]:
  """One pass over `split` (default eval_split) through data.eval_ops, in order, padded to full
  batches with 'mask' 0 (real examples 1), like the tf.data engine's."""
  del data_axis
  validate_data_config(data_cfg, image_size)
  split = split or data_cfg.eval_split
  images, labels = _Split.get(data_cfg, split, mesh)
  n = images.shape[0] if limit is None else min(limit, images.shape[0])
  view = compose(data_cfg.eval_ops, image_size, "config.data.eval_ops")
  normalize = _normalizer(data_cfg)
  sharding = NamedSharding(mesh, PartitionSpec("data"))

  def one(image_u8):
    image = image_u8.astype(jnp.float32) / 255.0
    if image.shape[-1] == 1:
      image = jnp.tile(image, (1, 1, 3))
    x = view(image, jax.random.key(0))
    return normalize(jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0)

  @jax.jit
  def batch_fn(images, labels, start):
    rows = start + jnp.arange(global_batch_size)
    real = rows < n
    rows = jnp.where(real, rows, 0)
    out = {"image": jax.vmap(one)(images[rows]),
           "label": jnp.where(real, labels[rows], 0), "mask": real.astype(jnp.float32)}
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), out)

  for start in range(0, n, global_batch_size):
    yield batch_fn(images, labels, start)
