"""Segmentation sources: (image, class map) pairs behind the same `Source` interface.

A segmentation source decodes an example into {'image': uint8 (H, W, C), 'label': uint8 (H, W)}
(255 = ignore); the one input pipeline (`data.pipeline`) then treats it like any other source and
its joint ops (`seg_rescale_crop_flip`, `seg_eval_view` in `data.ops`) move the map with the image.

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
"""

import os
import pathlib

import numpy as np
import tensorflow as tf

from maelite_jax.data import fashion_mnist_builtin
from maelite_jax.data import sources
from maelite_jax.data.transforms import IGNORE_LABEL

FG_THRESHOLD = 32


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


class SegFolderSource(sources.Source):
  """root/<split>/images/NAME.* with root/<split>/masks/NAME.png, pairs sorted by name."""

  shuffles_fully = True

  def __init__(self, root, splits, reduce_zero_label: bool):
    self.root = pathlib.Path(root) if root else None
    self.splits = dict(splits)
    self.reduce_zero_label = reduce_zero_label
    self._files = {}

  def layout(self) -> str:
    """The folder layout this source reads, with the configured split names."""
    root = str(self.root) if self.root else 'ROOT'
    names = ', '.join(sorted(set(self.splits.values())))
    return (f'{root}/<split>/images/NAME.jpg|png and {root}/<split>/masks/NAME.png (one 8-bit '
            f'label map per image, 255 = ignore) for the splits {names}; ADE20K '
            '(ADEChallengeData2016) is linked into this layout as shown in docs/segmentation.md')

  def validate(self, splits) -> None:
    if self.root is None:
      raise sources.config_error(
          'data_dir', 'is not set, and the segmentation dataset \'imagefolder\' reads a folder.',
          f'set --config.data.data_dir=ROOT holding {self.layout()}.')
    if not self.root.is_dir():
      raise sources.config_error('data_dir', f'segmentation folder {self.root} does not exist.',
                                 f'point data.data_dir at a folder holding {self.layout()}.')
    for key, split in splits.items():
      for sub in ('images', 'masks'):
        if not (self.root / split / sub).is_dir():
          present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
          raise sources.config_error(
              key, f'{self.root / split / sub} does not exist (sub-folders of data.data_dir: '
              f'{present}).', f'lay the data out as {self.layout()}, or set data.{key} to the '
              'split folder that holds images/ and masks/.')
      images, masks = self.files(split)
      if not len(images):
        raise sources.config_error(key, f'no images in {self.root / split / "images"}.',
                                   f'add image files there (layout: {self.layout()}).')
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
    return sources.strided_counts(self.num_examples(split), process_count, drop_remainder)

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
    mask = tf.io.decode_png(tf.io.read_file(example['mask_path']), channels=1)[..., 0]
    return {'image': image, 'label': reduce_zero(mask) if self.reduce_zero_label else mask}


def _check_mask_mode(path):
  """Palette PNGs decode to colours, not class ids, in TF: refuse them with the fix."""
  from PIL import Image
  with Image.open(path) as im:
    if im.mode != 'L':
      raise sources.config_error(
          'data_dir', f'mask {path} is a {im.mode!r} PNG, not an 8-bit label map.',
          'save each mask as mode "L" (one byte per pixel = class id, 255 = ignore), e.g. '
          'Image.fromarray(np.array(Image.open(p)).astype(np.uint8)).save(p) for palette PNGs.')


class SegTfdsSource(sources.TfdsSource):
  """A tfds dataset with a preset that turns its features into (image, class map)."""

  def __init__(self, name, data_dir, image_key, label_key, pair):
    super().__init__(name, data_dir, image_key, label_key)
    self.pair = pair

  def decode(self, example):
    out = dict(example)
    if example[self.image_key].dtype == tf.string:
      out[self.image_key] = self.builder.info.features[self.image_key].decode_example(
          example[self.image_key])
    image, mask = self.pair(out)
    return {'image': image, 'label': tf.cast(mask, tf.uint8)}


def make_source(data_cfg) -> sources.Source:
  """The segmentation source `data.dataset` names; `.class_names` lists its classes (or None)."""
  name = data_cfg.dataset
  if name.lower() == sources.IMAGEFOLDER:
    splits = {'train_split': data_cfg.train_split, 'eval_split': data_cfg.eval_split}
    source = SegFolderSource(data_cfg.data_dir, splits, bool(data_cfg.reduce_zero_label))
    source.class_names = None
    return source
  if name not in PRESETS:
    raise sources.config_error('dataset', f'{name!r} has no segmentation labels here.',
                               f'use one of {sorted(PRESETS)} or {sources.IMAGEFOLDER!r}.')
  label_key, pair, class_names = PRESETS[name]
  source = SegTfdsSource(name, data_cfg.data_dir, data_cfg.image_key,
                         data_cfg.label_key or label_key, pair)
  source.class_names = class_names
  return source
