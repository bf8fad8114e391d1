"""Tests for maelite_jax.data: sources, transforms and the sharded, resumable pipelines."""

import shutil

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from maelite_jax import data
from maelite_jax.configs import common
from maelite_jax.data import fashion_mnist_files
from maelite_jax.data import sources
from maelite_jax.data import transforms

MEAN = np.array(common.IMAGENET_MEAN, np.float32)
STD = np.array(common.IMAGENET_STD, np.float32)


@pytest.fixture(scope='module')
def mesh():
  return jax.sharding.Mesh(np.array(jax.devices()), ('data',))


@pytest.fixture(scope='session')
def builtin_dir(tmp_path_factory):
  """The bundled Fashion-MNIST prepared once per session (~15-30 s on 2 busy cores)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder(sources.BUILTIN, data_dir=data_dir).download_and_prepare()
  return data_dir


def _write_folder(root, split, per_class):
  """PNG/JPEG images of mixed sizes and modes; pixel value encodes the class for checks."""
  rng = np.random.default_rng(len(split))
  for label, name in enumerate(('cat', 'dog')):
    folder = root / split / name
    folder.mkdir(parents=True)
    for i in range(per_class):
      h, w = 20 + 3 * i, 30 - i
      pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      image = Image.fromarray(pixels)
      if i % 3 == 1:
        image = image.convert('L')
      elif i % 3 == 2:
        image = image.convert('RGBA')
      ext = 'jpg' if i == per_class - 1 else 'png'
      (image.convert('RGB') if ext == 'jpg' else image).save(folder / f'{name}_{i:02d}.{ext}')
  (root / split / 'cat' / 'notes.txt').write_text('not an image')


@pytest.fixture(scope='session')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagefolder')
  _write_folder(root, 'train', 10)  # 20 images
  _write_folder(root, 'test', 5)  # 10 images
  return root


def _cfg(crop_scale=None, interpolation='bicubic', eval_crop_pct=None, **kw):
  """A full data config (the project's keys) with the test's changes."""
  cfg = common.data_config(**kw)
  cfg.train_ops = common.crop_flip_ops(scale=crop_scale or (0.08, 1.0),
                                       interpolation=interpolation)
  if eval_crop_pct is not None:
    cfg.eval_ops = common.eval_ops(crop_pct=eval_crop_pct)
  return cfg


def _folder_cfg(root, **kw):
  return _cfg(**{'dataset': 'imagefolder', 'data_dir': str(root), 'train_split': 'train',
                 'eval_split': 'test', **kw})


def _unnormalise(images):
  return np.asarray(images) * STD + MEAN


def _check_sharded(array, mesh):
  assert isinstance(array.sharding, NamedSharding)
  assert array.sharding.spec == PartitionSpec('data')
  assert len(array.addressable_shards) == mesh.devices.size == jax.device_count()


# ---------------------------------------------------------------- built-in dataset


def test_builtin_counts_and_classes(builtin_dir):
  cfg = _cfg(data_dir=builtin_dir)
  assert data.num_examples(cfg, 'train') == 60_000
  assert data.num_examples(cfg, 'test') == 10_000
  assert data.steps_per_epoch(cfg, 1000) == 60
  builder = tfds.builder('fashion_mnist_builtin', data_dir=builtin_dir)
  assert builder.info.features['label'].num_classes == 10
  test = tfds.as_numpy(builder.as_dataset('test', batch_size=-1))
  assert sorted(np.unique(test['label'])) == list(range(10))
  # Records keep the order of the bundled IDX files and decode to the same pixels.
  images, labels, _ = fashion_mnist_files.SPLITS['test']
  read = lambda name: fashion_mnist_files.read_idx(fashion_mnist_files.DATA_DIR / name)
  np.testing.assert_array_equal(test['image'][..., 0], read(images))
  np.testing.assert_array_equal(test['label'], read(labels))


def test_builtin_train_batch(builtin_dir, mesh):
  cfg = _cfg(data_dir=builtin_dir, shuffle_buffer=512, cache=False)
  it = data.build_train_iterator(cfg, image_size=32, global_batch_size=16, mesh=mesh, seed=0)
  batch = next(it)
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (16, 32, 32, 3) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
  for array in batch.values():
    _check_sharded(array, mesh)
  pixels = _unnormalise(batch['image'])
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert pixels.max() > 0.5  # not all black
  np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-5)  # gray -> RGB
  assert 0 <= batch['label'].min() and batch['label'].max() < 10


def test_builtin_eval_slice(builtin_dir, mesh):
  cfg = _cfg(data_dir=builtin_dir, eval_split='test[:100]')
  batches = list(data.build_eval_iterator(cfg, image_size=32, global_batch_size=64, mesh=mesh))
  assert len(batches) == 2
  mask = np.concatenate([np.asarray(b['mask']) for b in batches])
  assert mask.sum() == 100 and mask[:100].all()
  pixels = _unnormalise(batches[0]['image'])
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_process_shares_tfds(builtin_dir):
  source = sources.make_source(_cfg(data_dir=builtin_dir))
  assert sum(source.process_counts('test', 3, drop_remainder=False)) == 10_000
  assert source.process_counts('test', 3, drop_remainder=True) == [3333] * 3


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_train(folder, mesh):
  cfg = _folder_cfg(folder, shuffle_buffer=100)
  assert data.num_examples(cfg, 'train') == 20
  it = data.build_train_iterator(cfg, image_size=16, global_batch_size=8, mesh=mesh, seed=1)
  labels = []
  for _ in range(4):
    batch = next(it)
    assert batch['image'].shape == (8, 16, 16, 3)
    _check_sharded(batch['image'], mesh)
    pixels = _unnormalise(batch['image'])
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    labels.append(np.asarray(batch['label']))
  assert set(np.concatenate(labels)) == {0, 1}


def test_imagefolder_eval_padding(folder, mesh):
  cfg = _folder_cfg(folder)
  batches = list(data.build_eval_iterator(cfg, image_size=16, global_batch_size=8, mesh=mesh))
  assert len(batches) == 2
  mask = np.concatenate([np.asarray(b['mask']) for b in batches])
  labels = np.concatenate([np.asarray(b['label']) for b in batches])
  images = np.concatenate([np.asarray(b['image']) for b in batches])
  _check_sharded(batches[0]['mask'], mesh)
  assert mask.dtype == np.float32 and mask.sum() == 10
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 6)
  np.testing.assert_array_equal(labels[:10], [0] * 5 + [1] * 5)  # sorted classes, one pass
  np.testing.assert_allclose(_unnormalise(images[10:]), 0, atol=1e-6)  # black padding


def test_imagefolder_process_shares(folder):
  source = sources.make_source(_folder_cfg(folder))
  seen = []
  for i in range(3):
    ds = source.examples('test', process_index=i, process_count=3, drop_remainder=False)
    seen += [ex['path'] for ex in ds.as_numpy_iterator()]
  assert len(seen) == len(set(seen)) == 10
  assert source.process_counts('train', 3, drop_remainder=True) == [6, 6, 6]


@pytest.fixture(scope='module')
def flat_jpegs(tmp_path_factory):
  """24 JPEGs of one gray level each (8, 18, ..., 238): any crop of file k shows level k."""
  root = tmp_path_factory.mktemp('flat_jpegs')
  for k in range(24):
    folder = root / 'train' / f'c{k % 2}'
    folder.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (30 + k, 40 - k), (8 + 10 * k,) * 3).save(folder / f'{k:02d}.jpg',
                                                               quality=90)
  return root


@pytest.fixture(scope='module')
def data_service():
  from maelite_jax.data.service import LocalCluster
  cluster = LocalCluster(num_workers=2)
  yield cluster
  cluster.stop()


def _levels_read(cfg, process_index, process_count):
  """The files (by gray level) in one epoch of this process's training batches."""
  from maelite_jax.data import pipeline
  count = pipeline.make_source(cfg).process_counts('train', process_count, True)[process_index]
  it = pipeline.local_train_batches(cfg, image_size=8, local_batch=2, seed=0,
                                    process_index=process_index, process_count=process_count)
  images = np.concatenate([next(it)['image'] for _ in range(count // 2)])
  levels = np.round((images.reshape(len(images), -1).mean(1) - 8) / 10).astype(int)
  return sorted(levels.tolist())


@pytest.mark.parametrize('served', [False, True])
def test_jpeg_path_reads_only_its_process_share(flat_jpegs, data_service, served):
  # With N processes each one's epoch holds exactly its strided share of the files: the fused
  # JPEG decode-and-crop path, locally and through tf.data service workers.
  from maelite_jax.data import pipeline
  cfg = _folder_cfg(flat_jpegs, service_address=data_service.address if served else '')
  assert pipeline.decodes_in_first_op(cfg, pipeline.make_source(cfg))
  paths, _ = sources.make_source(cfg).files('train')
  level_of = {p: int(p.rsplit('/', 1)[1][:2]) for p in paths}
  seen = []
  for i in range(3):
    share = [level_of[p] for p in paths[i::3][:8]]  # 24 files: 8 each
    got = _levels_read(cfg, i, 3)
    assert got == sorted(share), i
    seen += got
  assert sorted(seen) == list(range(24))


# ---------------------------------------------------------------- determinism and resume


def _take(it, n):
  return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]


@pytest.mark.parametrize('cache', [False, True])
def test_resume_is_exact(folder, mesh, cache):
  """20 images, batch 8 -> 2 steps per epoch, so step 3 is mid-way through epoch 1."""
  cfg = _folder_cfg(folder, cache=cache)
  kw = dict(image_size=16, global_batch_size=8, mesh=mesh)
  run = _take(data.build_train_iterator(cfg, seed=3, **kw), 4)
  resumed = _take(data.build_train_iterator(cfg, seed=3, start_step=3, **kw), 1)[0]
  np.testing.assert_array_equal(resumed['image'], run[3]['image'])
  np.testing.assert_array_equal(resumed['label'], run[3]['label'])
  other = _take(data.build_train_iterator(cfg, seed=4, **kw), 1)[0]
  assert not np.array_equal(other['image'], run[0]['image'])
  assert not np.array_equal(run[0]['image'], run[2]['image'])  # epochs reshuffle/augment anew


@pytest.mark.parametrize('cache, first_steps', [(False, 1), (True, 1), (False, 256)])
def test_epochs_chained_in_one_iterator_give_each_epochs_batches(folder, cache, first_steps,
                                                                   monkeypatch):
  """The local pipeline chains several epochs per tf.data iterator (no cold restart at every
  short epoch; first_steps=1: 1, 2, 4, ... epochs, so that the test crosses iterators; the
  default: 16 epochs at first): 7 epochs in a row equal each epoch started alone (start_step at
  its first step), mid-chunk resumes included."""
  from maelite_jax.data import pipeline
  monkeypatch.setattr(pipeline, 'FIRST_ITERATOR_STEPS', first_steps)
  cfg = _folder_cfg(folder, cache=cache)  # 20 images, batch 8: 2 steps per epoch
  kw = dict(image_size=16, local_batch=8, seed=3)
  run = _take(pipeline.local_train_batches(cfg, **kw), 14)
  for step in (2, 4, 7, 10, 13):  # epochs 1-6; 7 and 13: mid-epoch, mid-chunk
    alone = _take(pipeline.local_train_batches(cfg, start_step=step, **kw), 1)[0]
    np.testing.assert_array_equal(alone['image'], run[step]['image'])
    np.testing.assert_array_equal(alone['label'], run[step]['label'])


def test_builtin_resume_is_exact(builtin_dir, mesh):
  cfg = _cfg(data_dir=builtin_dir, shuffle_buffer=256, cache=False)
  kw = dict(image_size=32, global_batch_size=16, mesh=mesh, seed=0)
  run = _take(data.build_train_iterator(cfg, **kw), 4)
  resumed = _take(data.build_train_iterator(cfg, start_step=3, **kw), 1)[0]
  np.testing.assert_array_equal(resumed['image'], run[3]['image'])
  np.testing.assert_array_equal(resumed['label'], run[3]['label'])


def test_cache_serves_later_epochs(folder, tmp_path, mesh):
  root = tmp_path / 'copy'
  shutil.copytree(folder, root)
  cfg = _folder_cfg(root, cache=True, prefetch=1)
  it = data.build_train_iterator(cfg, image_size=16, global_batch_size=8, mesh=mesh, seed=0)
  _take(it, 2)  # epoch 0 (2 steps) decodes and caches every image
  shutil.rmtree(root / 'train')
  assert len(_take(it, 4)) == 4  # epochs 1-2 come from memory


# ---------------------------------------------------------------- config errors


def test_validate_accepts_good_configs(folder, builtin_dir):
  data.validate_data_config(_cfg(data_dir=builtin_dir), 32)
  data.validate_data_config(_folder_cfg(folder, crop_scale=(0.2, 1.0)), 32)


@pytest.mark.parametrize('cfg_kw, key, words', [
    (dict(dataset='no_such_dataset_xyz'), 'data.dataset', 'not a registered tfds'),
    (dict(eval_split='validation'), 'data.eval_split', "'validation' does not exist"),
    (dict(crop_scale=(0.5, 0.2)), 'data.train_ops', 'interval'),
    (dict(std=(1.0, 1.0)), 'data.std', '3 per-channel'),
    (dict(interpolation='nearest'), 'data.train_ops', 'unknown'),
])
def test_validate_rejects(cfg_kw, key, words):
  with pytest.raises(ValueError, match='Fix:') as info:
    data.validate_data_config(_cfg(**cfg_kw), 32)
  assert key in str(info.value) and words in str(info.value)


def test_validate_rejects_folders(folder, tmp_path):
  def error(cfg):
    with pytest.raises(ValueError) as info:
      data.validate_data_config(cfg, 32)
    return str(info.value)

  assert 'does not exist' in error(_folder_cfg(tmp_path / 'missing'))
  assert 'data.data_dir' in error(_cfg(dataset='imagefolder'))
  message = error(_folder_cfg(folder, eval_split='val'))
  assert 'data.eval_split' in message and "['test', 'train']" in message
  (tmp_path / 'train' / 'empty_class').mkdir(parents=True)
  (tmp_path / 'test').mkdir()
  assert 'no image files' in error(_folder_cfg(tmp_path))
  assert 'no class sub-folders' in error(_folder_cfg(tmp_path, train_split='test'))


def test_batch_size_must_divide(folder, mesh):
  if jax.device_count() == 1:
    pytest.skip('needs several devices')
  with pytest.raises(ValueError, match='divisible'):
    data.build_train_iterator(_folder_cfg(folder), image_size=16, global_batch_size=3,
                              mesh=mesh, seed=0)


# ---------------------------------------------------------------- transforms


def _image(h, w, c=3, seed=0):
  return tf.constant(np.random.default_rng(seed).random((h, w, c)), tf.float32)


def test_random_resized_crop_is_a_function_of_the_seed():
  image = _image(40, 60)
  seed = tf.constant([1, 2], tf.int64)
  a = transforms.random_resized_crop(image, seed, 24)
  b = transforms.random_resized_crop(image, seed, 24)
  c = transforms.random_resized_crop(image, tf.constant([1, 3], tf.int64), 24)
  assert a.shape == (24, 24, 3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert 0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 1
  rand = transforms.random_resized_crop(image, seed, 24, interpolation='random')
  assert rand.shape == (24, 24, 3)


def test_full_window_crop_is_identity():
  image = _image(24, 24)
  out = transforms.random_resized_crop(image, tf.constant([5, 6], tf.int64), 24,
                                       scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(out, image, atol=1e-5)
  np.testing.assert_array_equal(transforms.to_uint8(tf.constant([0.0, 0.5, 1.2])), [0, 128, 255])


def test_crop_window_bounds_and_fallback():
  for s in range(50):
    top, left, h, w = (int(v) for v in transforms.crop_window(
        tf.constant([30, 50, 3]), tf.constant([s, 7], tf.int64)))
    assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 and w > 0
    assert 0.08 * 1500 * 0.7 <= h * w <= 1500
  # A 4x100 strip cannot hold a 3/4..4/3 window of >= 90% area: centre crop, ratio clamped.
  window = transforms.crop_window(tf.constant([4, 100, 3]), tf.constant([0, 0], tf.int64),
                                  scale=(0.9, 1.0))
  assert [int(v) for v in window] == [0, 47, 4, 5]


def test_flip_normalize_rgb():
  image = _image(5, 7)
  flips = [bool(np.array_equal(transforms.random_flip(image, tf.constant([i, 0], tf.int64)),
                               image[:, ::-1])) for i in range(40)]
  assert 5 < sum(flips) < 35
  out = transforms.normalize(image, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
  np.testing.assert_allclose(out[..., 0], (image[..., 0] - 0.5) / 0.25, rtol=1e-6)
  assert transforms.to_rgb(_image(4, 4, 1)).shape == (4, 4, 3)
  assert transforms.to_rgb(_image(4, 4, 4)).shape == (4, 4, 3)
  unknown = tf.function(transforms.to_rgb,
                        input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
  np.testing.assert_array_equal(unknown(_image(4, 4, 1))[..., 2], _image(4, 4, 1)[..., 0])


def test_center_crop_resize():
  assert transforms.center_crop_resize(_image(300, 400), 224).shape == (224, 224, 3)
  assert transforms.center_crop_resize(_image(28, 28, 1), 32).shape == (32, 32, 1)
  # A constant image stays constant whatever is resized or cropped.
  flat = tf.fill([50, 70, 3], 0.25)
  np.testing.assert_allclose(transforms.center_crop_resize(flat, 32), 0.25, atol=1e-5)


class _FakeBuilder:
  """tfds builder stand-in: prepared or not, counting download_and_prepare calls."""

  def __init__(self, data_dir):
    self.data_dir, self.prepared, self.prepares = data_dir, False, 0

  def is_prepared(self):
    return self.prepared

  def download_and_prepare(self):
    self.prepares += 1
    self.prepared = True


def test_preparing_waits_for_another_preparer_and_does_not_prepare_twice(tmp_path):
  """Two processes preparing one tfds dataset (two runs started together, `pytest -n 2`):
  the second waits for the first's lock, then reads the prepared dataset afresh instead of
  preparing it again (tfds' final rename would fail)."""
  import threading
  from maelite_jax.utils.prepare_lock import prepare_lock
  source = sources.TfdsSource("some_dataset")
  fake = source._builder = _FakeBuilder(str(tmp_path / "some_dataset" / "1.0.0"))
  with prepare_lock(fake.data_dir):  # the other process, preparing
    waiter = threading.Thread(target=source._prepare)
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive()  # blocked on the lock
    fake.prepared = True  # the other process finishes
  waiter.join(timeout=10.0)
  assert not waiter.is_alive()
  assert fake.prepares == 0 and source._builder is None  # re-read, not prepared again

  source._builder = alone = _FakeBuilder(str(tmp_path / "other" / "1.0.0"))
  source._prepare()
  assert alone.prepares == 1


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_crop_resize_kernel_equals_torchs(interpolation, antialias):
  """The crop's resize, shrinking 97x83 -> 32, equals an independent implementation with the
  same antialias setting: True is PIL's kernel (what the reference's torchvision crop does;
  torch's antialiased F.interpolate reproduces PIL), False the plain kernel of the
  `antialias=False` data option (big_vision's resize; torch's plain bicubic uses Keys' a=-0.75
  where TF, JAX and PIL use a=-0.5, so JAX is the reference there)."""
  import torch
  image = np.random.default_rng(0).uniform(size=(97, 83, 3)).astype(np.float32)
  ours = transforms.resize(tf.constant(image), 32, interpolation, antialias=antialias).numpy()
  if interpolation == "bicubic" and not antialias:
    ref = np.clip(jax.image.resize(image, (32, 32, 3), "cubic", antialias=False), 0, 1)
  else:
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None], size=(32, 32), mode=interpolation,
        align_corners=False, antialias=antialias)[0].permute(1, 2, 0).clamp(0, 1).numpy()
  np.testing.assert_allclose(ours, ref, atol=2e-5 if interpolation == "bilinear" else 2e-3)


def test_crop_op_passes_antialias_on():
  """The config's `antialias` reaches the resize: the same window and seed, shrunk with and
  without antialiasing, give transforms' two results (and they differ)."""
  from maelite_jax.data import ops
  image = tf.constant(np.random.default_rng(1).uniform(size=(120, 100, 3)), tf.float32)
  seed = tf.constant([3, 4], tf.int64)
  out = {}
  for antialias in (True, False):
    fn = ops.compose((("random_resized_crop", dict(scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3),
                                                   interpolation="bilinear",
                                                   antialias=antialias)),), 24)
    out[antialias] = fn(dict(image=image), seed)["image"].numpy()
    np.testing.assert_array_equal(out[antialias], transforms.random_resized_crop(
        image, tf.random.experimental.stateless_split(seed, 1)[0], 24, (0.9, 1.0),
        interpolation="bilinear", antialias=antialias).numpy())
  assert np.abs(out[True] - out[False]).max() > 0.05
