"""The fast input pipeline: a JPEG's RandomResizedCrop decodes only its window (the same window,
the same pixels within libjpeg's rounding), tf.data service workers give exactly the local
batches, and the pipeline benchmark runs end to end (smoke)."""

import io
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import stats

from maelite_jax.configs import common
from maelite_jax.data import ops
from maelite_jax.data import pipeline
from maelite_jax.data import transforms


def _photo_like(h, w, seed):
  """Smooth random content (upsampled noise): JPEG-friendly, yet every window is distinct."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (max(2, h // 5), max(2, w // 5), 3), dtype=np.uint8)
  return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def _jpeg(image, **kw):
  buf = io.BytesIO()
  image.save(buf, 'JPEG', quality=90, **kw)
  return buf.getvalue()


@pytest.fixture(scope='module')
def blobs():
  """JPEGs of odd sizes (not multiples of the 8/16 px blocks): 4:2:0 and 4:4:4 colour, gray."""
  out = {}
  for i, (h, w) in enumerate(((157, 203), (61, 90), (120, 33))):
    image = _photo_like(h, w, i)
    out[f'420_{h}x{w}'] = _jpeg(image)  # PIL's default: 4:2:0, as most ImageNet files
    out[f'444_{h}x{w}'] = _jpeg(image, subsampling=0)
    out[f'gray_{h}x{w}'] = _jpeg(image.convert('L'))
  return out


def _seed(i, j=0):
  return tf.constant([i, j], tf.int64)


def test_fused_crop_decodes_the_same_window_within_jpeg_rounding(blobs):
  # The window comes from the header's shape and the same sampler and seed, so it is the one
  # decode-then-crop takes (same size; same content: any shift would change the interior of
  # these non-repeating images). Pixels: grayscale and 4:4:4 files decode bit-identically;
  # 4:2:0 files differ only in the window's first and last columns, where libjpeg's "fancy"
  # chroma upsampling lacks the neighbours outside the decoded blocks (observed: <= 41 levels
  # there on these, <= 27 on real photos; ~0.06 % of all pixels).
  @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)])
  def fused(blob, seed):
    window = []
    crop = transforms.decode_window(
        blob, lambda shape: window.append(transforms.crop_window(shape, seed)) or window[-1])
    return crop, tf.stack(transforms.crop_window(
        tf.shape(tf.io.decode_image(blob, channels=3, expand_animations=False)), seed))

  for name, blob in blobs.items():
    full = tf.io.decode_image(blob, channels=3, expand_animations=False).numpy().astype(int)
    for s in range(12):
      crop, window = fused(tf.constant(blob), _seed(s, 7))
      crop = crop.numpy().astype(int)
      top, left, h, w = (int(v) for v in window)
      want = full[top:top + h, left:left + w]
      assert crop.shape == want.shape, name
      diff = np.abs(crop - want).max(-1)
      if name.startswith('420'):
        np.testing.assert_array_equal(diff[:, 1:-1], 0, err_msg=name)
        assert diff.max() <= 64, name
      else:
        np.testing.assert_array_equal(diff, 0, err_msg=name)


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic', 'random'])
def test_fused_op_list_equals_decode_then_ops(blobs, interpolation):
  # The config's op list, composed on the encoded file (its first op decodes) and on the decoded
  # image: every op gets the same seed, so crop window, interpolation coin and flip agree and
  # the results are equal for files that decode identically (gray, 4:4:4; PNG always).
  op_list = common.crop_flip_ops(interpolation=interpolation)
  assert ops.decodes_first(op_list)
  seed_spec = tf.TensorSpec([2], tf.int64)
  fused = tf.function(ops.compose(op_list, 24, encoded=True), input_signature=[
      {'image': tf.TensorSpec([], tf.string)}, seed_spec])
  plain = tf.function(ops.compose(op_list, 24), input_signature=[
      {'image': tf.TensorSpec([None, None, 3], tf.float32)}, seed_spec])
  png = io.BytesIO()
  _photo_like(50, 70, 9).save(png, 'PNG')
  cases = {k: v for k, v in blobs.items() if not k.startswith('420')}
  cases['png'] = png.getvalue()
  for name, blob in cases.items():
    decoded = transforms.to_float(tf.io.decode_image(blob, channels=3, expand_animations=False))
    for s in range(6):
      got = fused({'image': tf.constant(blob)}, _seed(s))['image']
      want = plain({'image': decoded}, _seed(s))['image']
      np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f'{name} seed {s}')


def test_fused_window_distribution_is_torchvisions():
  # Windows from the header's shape (what the fused path samples from) over 3000 seeds against
  # torchvision's RandomResizedCrop.get_params (the benchmark's hand copy, torch's generator):
  # area fraction, log aspect ratio and centre position, two-sample KS tests. The seeds are
  # fixed, so the test is deterministic.
  import torch
  from maelite_jax.bench.torch_loader import random_resized_crop_params
  height, width = 375, 500
  blob = _jpeg(Image.new('RGB', (width, height), (90, 120, 150)))
  shape = tf.image.extract_jpeg_shape(blob)
  windows = next(iter(tf.data.Dataset.range(3000).map(
      lambda i: tf.stack(transforms.crop_window(shape, tf.stack([i, 5])))).batch(3000))).numpy()
  generator = torch.Generator().manual_seed(0)
  torch_windows = np.array([random_resized_crop_params(width, height, (0.08, 1.0),
                                                       (3 / 4, 4 / 3), generator)
                            for _ in range(3000)])

  def features(win):
    top, left, h, w = win.T.astype(float)
    return {'area': h * w / (height * width), 'log_aspect': np.log(w / h),
            'centre_y': (top + h / 2) / height, 'centre_x': (left + w / 2) / width}

  ours, theirs = features(windows), features(torch_windows)
  for key in ours:
    assert stats.ks_2samp(ours[key], theirs[key]).pvalue > 0.001, key
  # Large areas often do not fit at extreme ratios and are drawn again: mean area ~0.43.
  assert abs(ours['area'].mean() - theirs['area'].mean()) < 0.02


# ---------------------------------------------------------------- the whole pipeline


@pytest.fixture(scope='module')
def jpeg_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('jpegs')
  for label, name in enumerate(('a', 'b')):
    folder = root / 'train' / name
    folder.mkdir(parents=True)
    for i in range(10):
      _photo_like(40 + 7 * i, 70 - 3 * i, 10 * label + i).save(folder / f'{i:02d}.jpg',
                                                              quality=90)
  return root


def _jpeg_cfg(root, **kw):
  cfg = common.data_config('imagefolder', data_dir=str(root), train_split='train',
                           eval_split='train', **kw)
  cfg.train_ops = common.crop_flip_ops(interpolation='bilinear')
  return cfg


def _batches(cfg, n, **kw):
  it = pipeline.local_train_batches(cfg, image_size=16, local_batch=8, seed=3, **kw)
  return [next(it) for _ in range(n)]


def test_pipeline_fuses_jpeg_crops_and_resumes_exactly(jpeg_folder):
  cfg = _jpeg_cfg(jpeg_folder)
  assert pipeline.decodes_in_first_op(cfg, pipeline.make_source(cfg))
  run = _batches(cfg, 4)  # 20 images, batch 8: 2 steps per epoch, steps 0-3 = epochs 0-1
  resumed = _batches(cfg, 1, start_step=3)[0]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(resumed[key], run[3][key])
  # Decode-then-crop gives the same examples, crops and flips: labels equal, pixels equal up
  # to the 4:2:0 edge columns' rounding, spread a little by the resize.
  slow = _batches(cfg, 4, fuse_decode=False)
  for got, want in zip(run, slow):
    np.testing.assert_array_equal(got['label'], want['label'])
    diff = np.abs(got['image'].astype(int) - want['image'].astype(int))
    assert diff.mean() < 1.0 and (diff <= 2).mean() > 0.9


# ---------------------------------------------------------------- tf.data service


@pytest.fixture(scope='module')
def service():
  """A dispatcher and two workers in this process, on localhost."""
  from maelite_jax.data.service import LocalCluster
  cluster = LocalCluster(num_workers=2)
  yield cluster
  cluster.stop()


def test_service_gives_exactly_the_local_batches(jpeg_folder, service):
  # Each worker processes every second example of the epoch (static sharding), the chunks come
  # back in any order and are put back by index: the batches are the local ones, exactly, across
  # an epoch boundary and after a resume (the batch order is the (seed, step) order, not a
  # multiset per step).
  cfg = _jpeg_cfg(jpeg_folder)
  remote = _jpeg_cfg(jpeg_folder, service_address=service.address)
  local = _batches(cfg, 3)
  served = _batches(remote, 3)
  resumed = _batches(remote, 1, start_step=2)
  for got, want in zip(served + resumed, local + local[2:]):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(got[key], want[key])


def test_service_rejects_the_cache(jpeg_folder):
  cfg = _jpeg_cfg(jpeg_folder, service_address='localhost:1', cache=True)
  with pytest.raises(ValueError, match='data.cache'):
    pipeline.validate_data_config(cfg, 16)


def test_service_needs_the_tf_data_engine(jpeg_folder):
  from maelite_jax import data
  from maelite_jax.utils.errors import ConfigError
  cfg = _jpeg_cfg(jpeg_folder, service_address='localhost:1', on_device=True)
  with pytest.raises(ConfigError, match='service_address'):
    data.validate_data_config(cfg, 16)


def test_in_order_rebuilds_batches_from_chunks_in_any_order():
  rng = np.random.default_rng(0)
  index = np.arange(100, 124)
  chunks = [{'_index': index[i::3][j:j + 2], 'x': index[i::3][j:j + 2] * 10}
            for i in range(3) for j in range(0, 8, 2)]
  order = rng.permutation(len(chunks))
  batches = list(pipeline._in_order(iter([chunks[k] for k in order]), 100, 6, 4))
  np.testing.assert_array_equal(np.concatenate([b['x'] for b in batches]), index * 10)


def test_finished_iterators_are_deleted_off_the_callers_thread(monkeypatch):
  # tf.data's iterator deletion can block for up to 60 s (its autotune thread's sleep;
  # data/iterators.py): the pipelines hand finished and abandoned iterators to a background
  # thread. Here the deletion blocks until released: were it on the caller's thread, the
  # first list() would hang and the thread check below would fail.
  from maelite_jax.data import iterators
  release, deleted = threading.Event(), []

  def blocking_delete(box):
    deleted.append((threading.current_thread(), type(box[0]).__name__))
    release.wait(60)

  reaper = iterators._Reaper()  # the pipelines' own one also gets other tests' iterators
  monkeypatch.setattr(reaper, 'delete', blocking_delete)
  ds = tf.data.Dataset.range(3)
  assert list(reaper.numpy_iterator(ds)) == [0, 1, 2]  # exhausted
  abandoned = reaper.numpy_iterator(ds)
  assert next(abandoned) == 0
  abandoned.close()  # a run that stops mid-epoch
  assert not release.is_set()  # both returned while the first deletion still blocks
  release.set()
  for _ in range(600):  # the second waits for the first to finish
    if len(deleted) == 2:
      break
    threading.Event().wait(0.1)
  assert [name for _, name in deleted] == ['NumpyIterator'] * 2
  assert all(thread is not threading.current_thread() for thread, _ in deleted)



def test_an_iterator_alive_at_exit_neither_errs_nor_is_waited_for():
  # A run that stops with its training iterator alive: the generator is finalised after the
  # module's globals are gone (the hand-over must not need them), and the process exits.
  import subprocess
  import sys
  code = ('import tensorflow as tf\n'
          'from maelite_jax.data import iterators\n'
          'it = iterators.numpy_iterator(tf.data.Dataset.range(10 ** 6).prefetch(2))\n'
          'print(next(it))\n')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0 and done.stdout.strip() == '0', done.stderr[-2000:]
  assert 'Exception ignored' not in done.stderr and 'Traceback' not in done.stderr, (
      done.stderr[-2000:])

# ---------------------------------------------------------------- benchmark smoke


def test_pipeline_benchmark_smoke():
  # The code of `scripts/benchmark.py --pipeline` at toy size, in this process (no process
  # starts or imports; PyTorch's loader without workers): builds the JPEGs, runs ours and the
  # PyTorch loader in turns, writes the documented fields. The real run puts each loader in
  # its own process (`_Child`), which docs/input-pipeline.md's records come from.
  from maelite_jax.bench import pipeline as bench
  rec, fast = bench.run(batch=4, image_size=32, steps=1, warmup=1, rounds=1, files=8,
                        interpolations=('bilinear',), builtin=False, in_process=True)
  assert (rec['antialias'], fast['antialias']) == (True, False)  # the same PyTorch loader
  assert fast['torch_loader_per_core'] == rec['torch_loader_per_core']
  for key in ('pipeline_images_per_s', 'cores', 'per_core', 'torch_loader_per_core',
              'torch_loader_images_per_s'):
    assert rec[key] > 0, key
  for key in ('images_per_cpu_s', 'torch_loader_images_per_cpu_s', 'per_core_over_torch'):
    assert key in rec, key  # CPU seconds: None when a toy turn used none measurable
  assert rec['per_core'] == pytest.approx(rec['pipeline_images_per_s'] / rec['cores'])
  assert rec['jpeg_files'] == 8 and 300 <= max(rec['jpeg_mean_size_px']) <= 500
  assert rec['mode'] == 'in_process' and rec['interpolation'] == 'bilinear'
  assert len(rec['batch_s']) == 1 and len(rec['batch_s'][0]) == 1  # a turn of 1 batch
  assert rec['rss_mb'] > 0
