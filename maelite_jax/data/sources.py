"""Where examples come from: tfds datasets (the built-in Fashion-MNIST among them) and
ImageFolder directories, behind one small interface.

A source hands the pipeline *undecoded* examples for one process's share of a split, so that
resuming can skip examples before paying for decoding, and decodes them on request. Checks
that need no dataset preparation live here too (`validate`), so configs fail before any
compilation or download.
"""

import os
import pathlib
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from maelite_jax.data import fashion_mnist_builtin
from maelite_jax.data import image_check
from maelite_jax.utils.errors import ConfigError
from maelite_jax.utils.prepare_lock import prepare_lock

BUILTIN = 'fashion_mnist_builtin'
IMAGEFOLDER = 'imagefolder'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


def config_error(key: str, problem: str, fix: str) -> ConfigError:
  """One paragraph naming the config key, what is wrong and how to fix it."""
  return ConfigError(f'config.data.{key}: {problem} Fix: {fix}')


def _split_base(split: str) -> str:
  """'train[:10%]' -> 'train'; tfds slicing syntax is allowed wherever a split is named."""
  return split.split('[', 1)[0].strip()


class Source:
  """Interface: counts, one process's undecoded examples, and decoding."""

  # True when `examples(..., seed)` already yields a full permutation of the examples, so the
  # pipeline need not add a shuffle buffer.
  shuffles_fully = False

  def validate(self, splits) -> None:
    raise NotImplementedError

  def num_examples(self, split: str) -> int:
    raise NotImplementedError

  def process_counts(self, split: str, process_count: int, drop_remainder: bool) -> list:
    """Examples each process reads (the pipeline needs all of them to agree on batch counts)."""
    raise NotImplementedError

  def examples(self, split, *, process_index, process_count, drop_remainder,
               seed: Optional[int] = None) -> tf.data.Dataset:
    """Undecoded examples of this process's share; `seed` (if given) shuffles file order."""
    raise NotImplementedError

  def decode(self, example) -> dict:
    """-> {'image': uint8 (H, W, C), 'label': int32 ()}."""
    raise NotImplementedError

  def has_encoded_images(self) -> bool:
    """Whether `encoded` works: examples hold image files' bytes (JPEG, PNG, ...) that an op
    may decode itself, e.g. a JPEG crop that decodes only its window."""
    return False

  def encoded(self, example) -> dict:
    """-> {'image': the encoded file, a scalar tf.string, 'label': int32 ()}; decoding it as
    RGB (`tf.io.decode_image(..., channels=3)`) gives `decode`'s image in RGB."""
    raise NotImplementedError


class TfdsSource(Source):
  """Any tfds dataset with an image and a label feature; prepared on first use."""

  def __init__(self, name: str, data_dir=None, image_key='image', label_key='label'):
    self.name, self.data_dir = name, data_dir
    self.image_key, self.label_key = image_key, label_key
    self._builder = None

  @property
  def builder(self):
    if self._builder is None:
      try:
        self._builder = tfds.builder(self.name, data_dir=self.data_dir)
      except tfds.core.registered.DatasetNotFoundError:  # its message lists ~1000 names
        raise config_error(
            'dataset', f'{self.name!r} is not a registered tfds dataset (nor {IMAGEFOLDER!r}).',
            f"use {BUILTIN!r} (bundled, offline), {IMAGEFOLDER!r} with data_dir pointing at "
            "<root>/<split>/<class>/<images>, or a name from `tfds.list_builders()`, e.g. "
            "'cifar10' or 'imagenet2012'.") from None
    return self._builder

  def validate(self, splits) -> None:
    if self.name != BUILTIN:
      self._check_data_dir()  # before tfds.builder, which creates a missing data_dir
    builder = self.builder
    if self.name == BUILTIN:
      known = set(fashion_mnist_builtin.SPLITS)
    elif builder.is_prepared():
      known = set(builder.info.splits)
      features = builder.info.features
      for key, attr in ((self.image_key, 'image_key'), (self.label_key, 'label_key')):
        if key is not None and key not in features:
          raise config_error(attr, f'tfds dataset {self.name!r} has no feature {key!r} '
                             f'(it has {sorted(features)}).', f'set data.{attr} to one of them.')
    else:
      self._check_can_prepare()
      return  # Splits are only known once prepared; preparing is too slow for a check.
    for key, split in splits.items():
      if _split_base(split) not in known:
        raise config_error(key, f'split {split!r} does not exist in tfds dataset {self.name!r} '
                           f'(splits: {sorted(known)}).', f'set data.{key} to one of them.')

  def _check_data_dir(self):
    """A data_dir that does not exist holds no prepared dataset: tfds would download into a
    new folder (a typo), or retry for minutes offline."""
    if self.data_dir and not os.path.isdir(os.path.expanduser(self.data_dir)):
      raise config_error(
          'data_dir', f'the folder {self.data_dir!r} does not exist, so tfds dataset '
          f'{self.name!r} is not prepared there.', 'point data.data_dir at the folder that '
          f'holds {self.name}/ (prepared by tfds), or create it to let tfds download into it.')

  def _check_can_prepare(self):
    """A dataset that is not prepared will be downloaded: fail now, in one paragraph, when this
    machine is offline (tfds would retry for minutes)."""
    where = self.data_dir or '~/tensorflow_datasets (the tfds default)'
    if not _online():
      raise config_error(
          'dataset', f'tfds dataset {self.name!r} is not prepared in {where} and this machine '
          'is offline (no DNS answer for storage.googleapis.com): tfds would retry the download '
          'for minutes.', f'prepare it where there is network (`tfds build {self.name} '
          '--data_dir DIR`) and set data.data_dir to DIR, or use '
          f'{BUILTIN!r} (bundled) or {IMAGEFOLDER!r}.')

  def _prepare(self):
    if self.builder.is_prepared():
      return
    with prepare_lock(self.builder.data_dir):  # another process may be preparing it now
      if self.builder.is_prepared():  # it was: read its info afresh
        self._builder = None
      else:
        self.builder.download_and_prepare()

  def num_examples(self, split: str) -> int:
    self._prepare()
    return self.builder.info.splits[split].num_examples

  def _process_split(self, split, process_index, process_count, drop_remainder):
    return tfds.split_for_jax_process(split, process_index=process_index,
                                      process_count=process_count, drop_remainder=drop_remainder)

  def process_counts(self, split, process_count, drop_remainder):
    self._prepare()
    return [self.builder.info.splits[self._process_split(split, i, process_count,
                                                         drop_remainder)].num_examples
            for i in range(process_count)]

  def examples(self, split, *, process_index, process_count, drop_remainder, seed=None):
    self._prepare()
    # Ordered datasets (disable_shuffling, like the builtin one) refuse shuffle_files unless
    # the guard is off; training wants the shuffle regardless.
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False,
                                  shuffle_reshuffle_each_iteration=False,
                                  enable_ordering_guard=False)
    decoders = None
    if isinstance(self.builder.info.features[self.image_key], tfds.features.Image):
      decoders = {self.image_key: tfds.decode.SkipDecoding()}
    return self.builder.as_dataset(
        self._process_split(split, process_index, process_count, drop_remainder),
        shuffle_files=seed is not None, read_config=read_config, decoders=decoders)

  def decode(self, example):
    image = example[self.image_key]
    feature = self.builder.info.features[self.image_key]
    if image.dtype == tf.string:
      image = feature.decode_example(image)
    return {'image': image, 'label': self._label(example)}

  def _label(self, example):
    label = example[self.label_key] if self.label_key else tf.constant(0)
    return tf.cast(label, tf.int32)

  def has_encoded_images(self) -> bool:
    # Only JPEG features gain from decoding late, and only 8-bit ones decode as before with
    # decode_image(channels=3); PNG datasets (Fashion-MNIST) keep tfds's own decoder.
    feature = self.builder.info.features[self.image_key]
    return (isinstance(feature, tfds.features.Image) and feature.np_dtype == np.uint8
            and len(feature.shape) == 3 and feature.encoding_format in (None, 'jpeg'))

  def encoded(self, example):
    return {'image': example[self.image_key], 'label': self._label(example)}


class ImageFolderSource(Source):
  """`root/<split>/<class>/**/<image>`; classes are the sorted union of the class folders of
  all configured splits, so train and eval agree on labels even if a class is missing."""

  shuffles_fully = True

  def __init__(self, root, splits, check_images: bool = True):
    self.root = pathlib.Path(root) if root else None
    self.splits = dict(splits)  # config key -> split name, for messages and classes
    self.check_images = check_images  # drop files TF cannot decode (see image_check)
    self._files = {}
    self._usable_cache = {}
    self._classes = None
    self.reports = {}  # split -> counts of skipped / tiny / ignored files

  def _split_dir(self, split):
    return self.root / split

  def validate(self, splits) -> None:
    if self.root is None:
      raise config_error('data_dir', f'dataset {IMAGEFOLDER!r} needs a root folder, got None.',
                         'set data.data_dir to a folder holding <split>/<class>/<image files>.')
    if not self.root.is_dir():
      raise config_error('data_dir', f'the image folder {str(self.root)!r} does not exist.',
                         'point data.data_dir at a folder holding <split>/<class>/<images>.')
    for key, split in splits.items():
      split_dir = self._split_dir(split)
      if not split_dir.is_dir():
        present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        raise config_error(key, f'split folder {str(split_dir)!r} does not exist (sub-folders '
                           f'of data.data_dir: {present}).', f'set data.{key} to one of them.')
      if not self._class_dirs(split):
        raise config_error(key, f'{str(split_dir)!r} has no class sub-folders.',
                           'put images under <split>/<class_name>/ (one folder per class).')
      if not any(_is_image(n) for d in self._class_dirs(split) for _, _, ns in os.walk(d)
                 for n in ns):
        raise config_error(key, f'no image files ({", ".join(IMAGE_EXTENSIONS)}) under '
                           f'{str(split_dir)!r}.', 'add images or fix data.data_dir.')

  def _class_dirs(self, split):
    split_dir = self._split_dir(split)
    return sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []

  def _usable(self, split):
    """(paths, class folder names) of the usable images of a split in a fixed (sorted) order,
    listed and checked once; unreadable files are left out here, never inside tf.data (see
    image_check)."""
    if split not in self._usable_cache:
      paths, names, ignored = [], [], 0
      for class_dir in self._class_dirs(split):
        found = []
        for dirpath, _, files in os.walk(class_dir):
          found += [os.path.join(dirpath, n) for n in files if _is_image(n)]
          ignored += sum(1 for n in files if not _is_image(n) and not n.startswith('.'))
        paths += sorted(found)
        names += [class_dir.name] * len(found)
      paths, names = np.array(paths, dtype=object), np.array(names, dtype=object)
      if self.check_images:
        keep, self.reports[split] = image_check.usable_files(
            str(self._split_dir(split)), list(paths), ignored, label=split)
        keep = np.array(keep, bool)
        paths, names = paths[keep], names[keep]
      self._usable_cache[split] = (paths, names)
    return self._usable_cache[split]

  @property
  def classes(self) -> list:
    """Class folders with at least one usable image in some split: an empty or all-unreadable
    folder is no class (it would shift every later label and add an output never trained)."""
    if self._classes is None:
      folders, names = set(), set()
      for split in self.splits.values():
        folders.update(p.name for p in self._class_dirs(split))
        names.update(self._usable(split)[1].tolist())
      if folders - names:
        logging.warning('image folder %s: class folder(s) %s hold no usable image in %s; they '
                        'are not counted as classes', self.root, sorted(folders - names),
                        sorted(set(self.splits.values())))
      self._classes = sorted(names)
    return self._classes

  def files(self, split):
    """(paths, labels) of the usable images of a split (see _usable)."""
    if split not in self._files:
      index = {name: i for i, name in enumerate(self.classes)}
      paths, names = self._usable(split)
      self._files[split] = (paths, np.array([index[n] for n in names], np.int32))
    return self._files[split]

  def num_examples(self, split):
    return len(self.files(split)[0])

  def process_counts(self, split, process_count, drop_remainder):
    return strided_counts(self.num_examples(split), process_count, drop_remainder)

  def examples(self, split, *, process_index, process_count, drop_remainder, seed=None):
    paths, labels = self.files(split)
    paths, labels = paths[process_index::process_count], labels[process_index::process_count]
    count = self.process_counts(split, process_count, drop_remainder)[process_index]
    if seed is not None:
      order = np.random.default_rng(seed).permutation(len(paths))
      paths, labels = paths[order], labels[order]
    paths, labels = paths[:count], labels[:count]
    return tf.data.Dataset.from_tensor_slices(
        {'path': tf.constant(list(paths), tf.string), 'label': labels})

  def decode(self, example):
    image = tf.io.decode_image(tf.io.read_file(example['path']), channels=3,
                               expand_animations=False)
    return {'image': image, 'label': example['label']}

  def has_encoded_images(self) -> bool:
    return True

  def encoded(self, example):
    return {'image': tf.io.read_file(example['path']), 'label': example['label']}


def strided_counts(n: int, process_count: int, drop_remainder: bool) -> list:
  """Examples per process when process i reads examples i, i + P, i + 2P, ... of n."""
  if drop_remainder:
    return [n // process_count] * process_count
  return [len(range(i, n, process_count)) for i in range(process_count)]


def _online(host: str = 'storage.googleapis.com', timeout: float = 5.0) -> bool:
  """Whether `host` resolves within `timeout` s (tfds's own mirror; a name lookup is what an
  offline machine fails first)."""
  import concurrent.futures
  import socket
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout)
    return True
  except Exception:  # noqa: BLE001 - gaierror, timeout: no network
    return False
  finally:
    pool.shutdown(wait=False)


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def make_source(data_cfg) -> Source:
  """The (image, class label) source a data config names (no I/O beyond construction)."""
  name = data_cfg.dataset
  if not isinstance(name, str) or not name:
    raise config_error('dataset', f'expected a dataset name, got {name!r}.',
                       f'use {BUILTIN!r}, {IMAGEFOLDER!r} or a tfds name.')
  if name.lower() == IMAGEFOLDER:
    splits = {'train_split': data_cfg.train_split, 'eval_split': data_cfg.eval_split}
    return ImageFolderSource(data_cfg.data_dir, splits, check_images=data_cfg.check_images)
  return TfdsSource(name, data_cfg.data_dir, data_cfg.image_key, data_cfg.label_key)
