"""Segmentation data: (image, label map) pairs -> jointly augmented, sharded global batches.

Datasets (`data.dataset`):
- 'scene_parse150' (tfds): label = R channel of 'annotation', 0 ("other") -> ignore, k -> k-1.
  Caveat: tfds builds it from ChallengeData2017's `annotations_instance`, whose R channel holds
  the categories of the *instance* benchmark (100 thing classes), not the 150 scene-parsing
  classes of the ADE20K mIoU benchmark; for that one use ADEChallengeData2016 as a folder (below,
  reduce_zero_label=True, 150 classes), see docs/segmentation.md.
- 'oxford_iiit_pet' (tfds): the trimap (1 pet, 2 background, 3 border) becomes 3 classes
  {0 background, 1 cat, 2 dog} (pet pixels take the image's species); border -> ignore.
- 'imagefolder': your own data as root/<split>/images/NAME.{jpg,png,...} and
  root/<split>/masks/NAME.png, masks single-channel 8-bit label maps (255 = ignore); with
  data.reduce_zero_label 0 becomes ignore and k becomes k-1 (ADE20K's own files).
- 'fashion_mnist_builtin': an offline SMOKE task, not a benchmark: foreground = pixel >
  FG_THRESHOLD (32 of 255, ~45% of pixels), labelled garment class + 1, background 0: 11 classes.

Training (per example, stateless seeds from (seed, process, index) as in `pipeline`, so runs are
exactly resumable): random rescale keeping the aspect (short side -> base_size * r, long side at
most max_ratio * base_size * r, r ~ U(scale_range); mmseg's Resize with ratio_range), pad to the
crop (image 0, mask ignore, bottom/right), random crop, horizontal flip; the image is resized
bilinear (antialiased when shrinking), the mask nearest. Eval: the long side is resized to
eval_size and the image padded to eval_size x eval_size (mask ignore), so batches have one static
shape; metrics are taken at that resolution. Padding examples of the last batches have 'mask' 0.
"""

import itertools
import os
import pathlib

import jax
import numpy as np
import tensorflow as tf

from maelite_jax.data import fashion_mnist_builtin
from maelite_jax.data import pipeline
from maelite_jax.data import sources
from maelite_jax.data import transforms

IGNORE_LABEL = 255
FG_THRESHOLD = 32

DEFAULTS = {
    'dataset': sources.BUILTIN, 'data_dir': None, 'train_split': 'train', 'eval_split': 'test',
    'image_key': 'image', 'label_key': None, 'shuffle_buffer': 10_000, 'cache': False,
    'scale_range': (0.5, 2.0), 'base_size': None, 'max_ratio': 4.0, 'hflip': True,
    'eval_size': None, 'reduce_zero_label': False, 'check_images': True,
}


def _get(data_cfg, key):
  value = data_cfg.get(key, DEFAULTS[key])
  return DEFAULTS[key] if value is None else value


def reduce_zero(mask):
  """mmseg's reduce_zero_label: 0 -> ignore, k -> k - 1, ignore stays ignore."""
  return tf.where((mask == 0) | (mask == IGNORE_LABEL), tf.constant(IGNORE_LABEL, mask.dtype),
                  mask - 1)


def builtin_pair(ex):
  """Fashion-MNIST smoke task: foreground (pixel > FG_THRESHOLD) = class + 1, else 0."""
  image = ex['image']
  fg = image[..., 0] > FG_THRESHOLD
  mask = tf.where(fg, tf.cast(ex['label'] + 1, tf.uint8), tf.constant(0, tf.uint8))
  return image, mask


def ade_pair(ex):
  return ex['image'], reduce_zero(tf.cast(ex['annotation'][..., 0], tf.uint8))


def pets_pair(ex):
  trimap = ex['segmentation_mask'][..., 0]
  pet = tf.cast(1 + ex['species'], tf.uint8)
  mask = tf.where(trimap == 1, pet, tf.where(trimap == 2, tf.constant(0, tf.uint8),
                                             tf.constant(IGNORE_LABEL, tf.uint8)))
  return ex['image'], mask


# name -> (label feature, (decoded example -> (image, mask)), class names or None)
PRESETS = {
    sources.BUILTIN: ('label', builtin_pair,
                      ('background',) + fashion_mnist_builtin.CLASS_NAMES),
    'scene_parse150': ('annotation', ade_pair, None),
    'oxford_iiit_pet': ('segmentation_mask', pets_pair, ('background', 'cat', 'dog')),
}


class SegTfdsSource(sources.TfdsSource):
  """A tfds source whose decode keeps every feature (the mask, pets' species)."""

  def decode(self, example):
    out = dict(example)
    if example[self.image_key].dtype == tf.string:
      out[self.image_key] = self.builder.info.features[self.image_key].decode_example(
          example[self.image_key])
    return out


class SegFolderSource(sources.Source):
  """root/<split>/images/NAME.* with root/<split>/masks/NAME.png, pairs sorted by name."""

  shuffles_fully = True

  def __init__(self, root, splits):
    self.root = pathlib.Path(root) if root else None
    self.splits = dict(splits)
    self._files = {}

  def validate(self, splits) -> None:
    if self.root is None or not self.root.is_dir():
      raise sources.config_error('data_dir', f'segmentation folder {self.root} does not exist.',
                                 'point data.data_dir at root/<split>/{images,masks}.')
    for key, split in splits.items():
      for sub in ('images', 'masks'):
        if not (self.root / split / sub).is_dir():
          raise sources.config_error(key, f'{self.root / split / sub} does not exist.',
                                     'use root/<split>/images and root/<split>/masks.')
      images, masks = self.files(split)
      if not len(images):
        raise sources.config_error(key, f'no images in {self.root / split / "images"}.',
                                   'add image files or fix data.data_dir.')
      _check_mask_mode(masks[0])

  def files(self, split):
    if split not in self._files:
      image_dir, mask_dir = self.root / split / 'images', self.root / split / 'masks'
      names = sorted(n for n in os.listdir(image_dir)
                     if n.lower().endswith(sources.IMAGE_EXTENSIONS))
      masks = [mask_dir / (os.path.splitext(n)[0] + '.png') for n in names]
      missing = [str(m) for m in masks if not m.exists()]
      if missing:
        raise sources.config_error('data_dir', f'{len(missing)} image(s) have no mask, e.g. '
                                   f'{missing[:3]}.', 'give every image a NAME.png mask.')
      self._files[split] = (np.array([str(image_dir / n) for n in names], dtype=object),
                            np.array([str(m) for m in masks], dtype=object))
    return self._files[split]

  def num_examples(self, split):
    return len(self.files(split)[0])

  def process_counts(self, split, process_count, drop_remainder):
    n = self.num_examples(split)
    if drop_remainder:
      return [n // process_count] * process_count
    return [len(range(i, n, process_count)) for i in range(process_count)]

  def examples(self, split, *, process_index, process_count, drop_remainder, seed=None):
    images, masks = (a[process_index::process_count] for a in self.files(split))
    count = self.process_counts(split, process_count, drop_remainder)[process_index]
    if seed is not None:
      order = np.random.default_rng(seed).permutation(len(images))
      images, masks = images[order], masks[order]
    return tf.data.Dataset.from_tensor_slices({'path': list(images[:count]),
                                               'mask_path': list(masks[:count])})

  def decode(self, example):
    image = tf.io.decode_image(tf.io.read_file(example['path']), channels=3,
                               expand_animations=False)
    mask = tf.io.decode_png(tf.io.read_file(example['mask_path']), channels=1)
    return {'image': image, 'mask': mask}


def _check_mask_mode(path):
  """Palette PNGs decode to colours, not class ids, in TF: refuse them with the fix."""
  from PIL import Image
  with Image.open(path) as im:
    if im.mode != 'L':
      raise sources.config_error(
          'data_dir', f'mask {path} is a {im.mode!r} PNG, not an 8-bit label map.',
          'save each mask as mode "L" (one byte per pixel = class id, 255 = ignore), e.g. '
          'Image.fromarray(np.array(Image.open(p)).astype(np.uint8)).save(p) for palette PNGs.')


class SegSource:
  """A base source plus `pair(decoded) -> (uint8 image (H, W, C), uint8 mask (H, W))`."""

  def __init__(self, data_cfg):
    name = _get(data_cfg, 'dataset')
    self.name = name
    if name.lower() == sources.IMAGEFOLDER:
      splits = {'train_split': _get(data_cfg, 'train_split'),
                'eval_split': _get(data_cfg, 'eval_split')}
      self.base = SegFolderSource(data_cfg.get('data_dir'), splits)
      reduce = bool(_get(data_cfg, 'reduce_zero_label'))
      self.pair = lambda ex: (ex['image'], reduce_zero(ex['mask'][..., 0]) if reduce
                              else ex['mask'][..., 0])
      self.class_names = None
      return
    if name not in PRESETS:
      raise sources.config_error('dataset', f'{name!r} has no segmentation labels here.',
                                 f'use one of {sorted(PRESETS)} or {sources.IMAGEFOLDER!r}.')
    label_key, self.pair, self.class_names = PRESETS[name]
    self.base = SegTfdsSource(name, data_cfg.get('data_dir'), _get(data_cfg, 'image_key'),
                              _get(data_cfg, 'label_key') or label_key)

  def validate(self, data_cfg):
    self.base.validate({'train_split': _get(data_cfg, 'train_split'),
                        'eval_split': _get(data_cfg, 'eval_split')})


# ---------------------------------------------------------------- joint transforms


def resize_pair(image, mask, size):
  """Image bilinear (float [0, 1]), mask nearest: both sample at half-pixel centres, aligned."""
  image = transforms.resize(image, size, 'bilinear')
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


def _float_pair(source, example):
  image, mask = source.pair(example)
  return transforms.to_float(transforms.to_rgb(image)), tf.cast(mask, tf.uint8)


# ---------------------------------------------------------------- iterators


def build_train_iterator(data_cfg, *, crop_size: int, global_batch_size: int, mesh, seed: int,
                         start_step: int = 0, data_axis='data'):
  """Endless {'image': f32 (B, crop, crop, 3) normalised, 'label': uint8 (B, crop, crop)}
  global batches; batch k of a run started at `start_step` is step start_step + k."""
  source = SegSource(data_cfg)
  source.validate(data_cfg)
  base = source.base
  split = _get(data_cfg, 'train_split')
  local_batch = pipeline._local_batch_size(global_batch_size, mesh, data_axis)
  pi, pc = jax.process_index(), jax.process_count()
  local_count = base.process_counts(split, pc, drop_remainder=True)[pi]
  steps = local_count // local_batch
  if steps == 0:
    raise ValueError(f'split {split!r} gives each of {pc} processes {local_count} examples, '
                     f'fewer than one local batch of {local_batch}; lower batch_size.')
  buffer = min(_get(data_cfg, 'shuffle_buffer'), local_count)
  base_seed = tf.constant([pipeline._derive_seed(seed, 11), pi], tf.int64)
  aug = dict(crop_size=crop_size, base_size=int(_get(data_cfg, 'base_size') or crop_size),
             scale_range=tuple(_get(data_cfg, 'scale_range')),
             max_ratio=float(_get(data_cfg, 'max_ratio')), hflip=bool(_get(data_cfg, 'hflip')))

  @tf.function
  def transform(index, example):
    image, mask = _float_pair(source, example)
    image, mask = joint_augment(image, mask, tf.random.experimental.stateless_fold_in(
        base_seed, index), **aug)
    return {'image': transforms.to_uint8(image), 'label': mask}

  decode = tf.function(lambda index, example: (index, base.decode(example)))
  shared = dict(process_index=pi, process_count=pc, drop_remainder=True)
  cached = None
  if _get(data_cfg, 'cache'):
    cached = base.examples(split, **shared).map(
        base.decode, num_parallel_calls=tf.data.AUTOTUNE).cache()

  def epoch_dataset(epoch, skip_steps):
    epoch_seed = pipeline._derive_seed(seed, 12, epoch, pi)
    if cached is not None:
      ds = cached.shuffle(buffer, seed=epoch_seed)
    else:
      ds = base.examples(split, seed=epoch_seed, **shared)
      if not base.shuffles_fully:
        ds = ds.shuffle(buffer, seed=epoch_seed)
    ds = ds.enumerate(start=epoch * local_count).skip(skip_steps * local_batch)
    if cached is None:
      ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(pipeline._options())

  def local_batches():
    first_epoch, skip_steps = divmod(start_step, steps)
    for epoch in itertools.count(first_epoch):
      yield from epoch_dataset(epoch, skip_steps).as_numpy_iterator()
      skip_steps = 0

  return pipeline._to_device(local_batches(), data_cfg, mesh, data_axis, global_batch_size)


def build_eval_iterator(data_cfg, *, eval_size: int, global_batch_size: int, mesh, split=None,
                        data_axis='data', limit: int | None = None):
  """One pass over `split` (default eval_split): {'image', 'label' (B, S, S) uint8, 'mask' (B,)}
  with S = eval_size; the padding examples that fill the last batches have mask 0 (and labels
  all ignore), and every process yields the same number of batches. `limit`: only the first
  `limit` examples of each process (visualisation)."""
  source = SegSource(data_cfg)
  source.validate(data_cfg)
  base = source.base
  split = split or _get(data_cfg, 'eval_split')
  local_batch = pipeline._local_batch_size(global_batch_size, mesh, data_axis)
  pi, pc = jax.process_index(), jax.process_count()
  counts = base.process_counts(split, pc, drop_remainder=False)
  if limit is not None:
    counts = [min(c, limit) for c in counts]
  num_batches = -(-max(counts) // local_batch)

  def transform(example):
    image, mask = eval_view(*_float_pair(source, base.decode(example)), eval_size)
    return {'image': transforms.to_uint8(image), 'label': mask,
            'mask': tf.constant(1.0, tf.float32)}

  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([eval_size, eval_size, 3], tf.uint8),
      'label': tf.fill([eval_size, eval_size], tf.constant(IGNORE_LABEL, tf.uint8)),
      'mask': tf.constant(0.0, tf.float32),
  }).repeat(num_batches * local_batch - counts[pi])
  ds = base.examples(split, process_index=pi, process_count=pc, drop_remainder=False)
  ds = ds.take(counts[pi]).map(transform, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.concatenate(padding).batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(pipeline._options())
  return pipeline._to_device(ds.as_numpy_iterator(), data_cfg, mesh, data_axis,
                             global_batch_size)
