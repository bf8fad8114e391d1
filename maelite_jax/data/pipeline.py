"""The one input pipeline: sources -> per-example ops -> batches -> global, sharded jax.Arrays.

Every dataset goes through here: classification images (`data.label_type='class'`), the two
views of contrastive learning (`data.view2_ops`), and segmentation's (image, class map) pairs
(`'map'`). What differs between them is only the source (`data.sources` / `data.seg_sources`)
and the ops lists in the config (`data.ops`); epochs, seeds, resuming, sharding and the device
transfer are this module's job, once.

Training is exactly resumable: the batches are a pure function of (seed, step).
- An epoch is one pass over this process's share of the split, shuffled with a seed derived
  from (seed, epoch, process); its last partial batch is dropped (as PyTorch's drop_last), so
  step -> (epoch, step in epoch) is plain arithmetic and an epoch has
  num_examples // global_batch_size steps on any number of processes.
- Every example gets an index (position in the run, per process) before anything expensive
  happens; its augmentation uses stateless ops seeded by (seed, process, index).
- Resuming at `start_step` starts at that step's epoch and skips the examples of the earlier
  steps of that epoch before decoding, so a resume costs at most one epoch of file reads
  (nothing when `cache` is on), never the whole history.
Images leave tf.data as uint8 (what torchvision's PIL pipeline produces too) and are turned into
normalised float32 by a jitted op on the devices: 4x fewer bytes to move, no slow CPU broadcast.

Speed (docs/input-pipeline.md): when the first training op is a RandomResizedCrop and the source
holds encoded files (ImageFolder, tfds JPEG features), the crop is applied to the file itself,
so a JPEG decodes only its window (the same window from the same seed); tf.data runs on a
private pool of this host's cores with single-threaded ops. `data.service_address` moves the
decoding and augmentation to tf.data service workers on other machines; the batches stay
exactly those of the local pipeline.
"""

import collections
import itertools
import math
import os
import uuid
from typing import Iterator, Optional

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec

from maelite_jax.data import iterators
from maelite_jax.data import ops as ops_lib
from maelite_jax.data import seg_sources
from maelite_jax.data import sources
from maelite_jax.data import transforms

LABEL_TYPES = ('class', 'map')
# Seed tags of the (augmentation, shuffle) streams per label type: those of the two pipelines
# this one replaced, so that runs see exactly the batches they saw before.
_SEED_TAGS = {'class': (1, 2), 'map': (11, 12)}


def _plain(fn):
  """`fn` traced into the tf.data graph as written, without AutoGraph's source rewrite: the ops
  branch with tf.cond / tf.where, never on a tensor in Python, so the rewrite adds nothing but
  seconds of start-up per pipeline (5.4 of the 27.7 profiled seconds of a tiny run)."""
  return tf.autograph.experimental.do_not_convert(fn)


def make_source(data_cfg) -> sources.Source:
  """The source of `data.dataset` for the config's label type."""
  if data_cfg.label_type not in LABEL_TYPES:
    raise sources.config_error('label_type', f'{data_cfg.label_type!r} is unknown.',
                               f'use one of {LABEL_TYPES} (class labels or segmentation maps).')
  if data_cfg.label_type == 'map':
    return seg_sources.make_source(data_cfg)
  return sources.make_source(data_cfg)


def _splits(data_cfg) -> dict:
  return {'train_split': data_cfg.train_split, 'eval_split': data_cfg.eval_split}


def validate_data_config(data_cfg, image_size: int) -> None:
  """Raises ConfigError (key, problem, fix) for a data config that cannot work; builds every
  op once and checks the splits, but prepares no dataset."""
  for key in ('mean', 'std'):
    value = data_cfg[key]
    if len(tuple(value)) != 3 or (key == 'std' and min(value) <= 0):
      raise sources.config_error(key, f'expected 3 per-channel values (std > 0), got {value!r}.',
                                 'e.g. (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) (ImageNet, '
                                 'on [0, 1] pixels).')
  for key, low in (('shuffle_buffer', 1), ('prefetch', 0)):
    value = data_cfg[key]
    if not isinstance(value, (int, np.integer)) or value < low:
      raise sources.config_error(key, f'expected an integer >= {low}, got {value!r}.',
                                 'e.g. 10000 (shuffle_buffer) or 2 (prefetch).')
  for key in ('train_ops', 'view2_ops', 'eval_ops'):
    ops_lib.validate(data_cfg[key], image_size, f'config.data.{key}')
  if data_cfg.service_address and data_cfg.cache:
    raise sources.config_error(
        'cache', 'is on with data.service_address set: the cache would hold decoded images in '
        'this process, but with a tf.data service the workers decode.', 'set data.cache=False '
        '(or data.service_address=\'\' to decode here).')
  if not data_cfg.train_ops:
    raise sources.config_error('train_ops', 'is empty.', 'list at least the crop, e.g. '
                               '(("random_resized_crop", {...}), ("random_flip", {...})).')
  make_source(data_cfg).validate(_splits(data_cfg))


def num_examples(data_cfg, split) -> int:
  """Examples in `split` over all processes (prepares the builtin set on first use)."""
  return make_source(data_cfg).num_examples(split)


def steps_per_epoch(data_cfg, global_batch_size: int, split: Optional[str] = None) -> int:
  """Training steps in one epoch of `split` (default: train split) = examples // batch."""
  return num_examples(data_cfg, split or data_cfg.train_split) // global_batch_size


def local_batch_size(global_batch_size, mesh, data_axis='data') -> int:
  axes = data_axis if isinstance(data_axis, (tuple, list)) else (data_axis,)
  shards = math.prod(mesh.shape[a] for a in axes)
  if global_batch_size % shards or global_batch_size % jax.process_count():
    raise sources.config_error(
        'batch', f'a global batch of {global_batch_size} is not divisible by the {shards} '
        f'devices of mesh axis {data_axis!r} and the {jax.process_count()} processes.',
        f'use a multiple of {math.lcm(shards, jax.process_count())} for config.batch_size (or '
        'the evaluation batch size).')
  return global_batch_size // jax.process_count()


def derive_seed(*keys) -> int:
  """A 63-bit seed from integers (stable across runs, platforms and processes)."""
  entropy = [int(k) % (1 << 64) for k in keys]
  words = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
  return (int(words[0]) << 31) ^ int(words[1])


def host_threads() -> int:
  """The cores this process may run on (its affinity mask: a container's or a job's share)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def tf_data_options(threads: Optional[int] = None, intra_op: int = 1) -> tf.data.Options:
  """Throughput settings of every tf.data pipeline here (measured in docs/input-pipeline.md):
  - deterministic: parallel maps keep the (seed, step) order, which exact resume needs;
  - a private thread pool of `threads` (default: this host's cores) for this pipeline's maps,
    so TensorFlow's global pools (and other pipelines) do not compete with it; 0 = the global
    pool (what tf.data service workers use: the client's core count is not theirs);
  - `intra_op` threads per op (1: images are processed in parallel, one per thread; an op
    splitting itself over threads only adds synchronisation);
  - autotuned parallelism and buffer sizes (the maps, prefetch use tf.data.AUTOTUNE)."""
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  options.experimental_optimization.map_parallelization = True
  threads = host_threads() if threads is None else threads
  if threads:
    options.threading.private_threadpool_size = threads
  if intra_op:
    options.threading.max_intra_op_parallelism = intra_op
  return options


def _options() -> tf.data.Options:
  return tf_data_options()


def _normalizer(mean, std, sharding):
  """uint8 global images -> normalised float32 on the devices. Broadcasting over a 3-wide
  channel axis is the slowest step of a CPU tf.data map (~1.3 ms per 224 px image); on the
  accelerator it is free, and the pixels match torchvision's uint8 -> ToTensor -> Normalize."""
  scale = np.float32(1 / 255) / np.asarray(std, np.float32)
  shift = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
  return jax.jit(lambda x: x.astype(np.float32) * scale + shift, out_shardings=sharding)


def to_device(batches, data_cfg, mesh, data_axis, global_batch_size) -> Iterator[dict]:
  """Local numpy batches -> global arrays sharded on `data_axis` with `prefetch` batches kept
  in flight (transfers and the normalising jit are asynchronous)."""
  sharding = NamedSharding(mesh, PartitionSpec(data_axis))
  normalize = _normalizer(data_cfg.mean, data_cfg.std, sharding)

  def to_global(batch):
    out = {k: jax.make_array_from_process_local_data(sharding, v,
                                                     (global_batch_size,) + v.shape[1:])
           for k, v in batch.items()}
    for key in out:
      if key.startswith('image'):  # 'image', and 'image2' in two-view mode
        out[key] = normalize(out[key])
    return out

  queue = collections.deque()
  for batch in batches:
    queue.append(to_global(batch))
    if len(queue) > max(data_cfg.prefetch - 1, 0):
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _features(example, label_type, encoded=False):
  """A decoded example as the ops' features: float [0, 1] RGB image, int32 class or uint8 map
  (`encoded`: the image is still the file's bytes, for an op that decodes it)."""
  image = example['image'] if encoded else transforms.to_float(transforms.to_rgb(
      example['image']))
  label = example['label']
  return {'image': image,
          'label': tf.cast(label, tf.uint8 if label_type == 'map' else tf.int32)}


def _finish(features, image_size, label_type, view_key='image'):
  out = {view_key: tf.ensure_shape(transforms.to_uint8(features['image']),
                                   [image_size, image_size, 3])}
  if label_type == 'map':
    out['label'] = tf.ensure_shape(features['label'], [image_size, image_size])
  return out


def decodes_in_first_op(data_cfg, source) -> bool:
  """Whether training examples go to the ops undecoded, so that the first op (RandomResizedCrop)
  decodes a JPEG's crop window only. Needs: one view (two views would decode the file twice,
  slower than decoding it once), class labels (a segmentation map must follow the image's
  geometry), no cache (cached examples are decoded once anyway), a source of encoded files."""
  return (not data_cfg.view2_ops and data_cfg.label_type == 'class' and not data_cfg.cache
          and ops_lib.decodes_first(data_cfg.train_ops) and source.has_encoded_images())


def train_transform(data_cfg, image_size, base_seed, encoded=False):
  """(index, decoded example) -> augmented uint8 example; its seed is folded from the index.
  With view2_ops the two views use seeds folded from it with 0 and 1 ('image', 'image2').
  encoded=True: the example's image is the encoded file and the first op decodes it (see
  `decodes_in_first_op`); every op gets the same seed as on the decoded image."""
  label_type = data_cfg.label_type
  views = [ops_lib.compose(data_cfg.train_ops, image_size, 'config.data.train_ops',
                           encoded=encoded)]
  if data_cfg.view2_ops:
    views.append(ops_lib.compose(data_cfg.view2_ops, image_size, 'config.data.view2_ops'))

  def fn(index, example):
    seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    features = _features(example, label_type, encoded)
    out = {'label': features['label']}
    for v, view in enumerate(views):
      view_seed = seed if len(views) == 1 else tf.random.experimental.stateless_fold_in(seed, v)
      out.update(_finish(view(features, view_seed), image_size, label_type,
                         'image' if v == 0 else f'image{v + 1}'))
    return out

  return fn


def build_train_iterator(data_cfg, *, image_size: int, global_batch_size: int,
                         mesh: jax.sharding.Mesh, seed: int, start_step: int = 0,
                         data_axis='data') -> Iterator[dict]:
  """Endless training batches as global arrays sharded P(data_axis): {'image': f32
  (B, H, W, 3) normalised, 'label': i32 (B,) or u8 (B, H, W)} (+ 'image2' with view2_ops);
  batch k of a run started at `start_step` is step start_step + k."""
  validate_data_config(data_cfg, image_size)
  local_batch = local_batch_size(global_batch_size, mesh, data_axis)
  batches = local_train_batches(data_cfg, image_size=image_size, local_batch=local_batch,
                                seed=seed, start_step=start_step,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  return to_device(batches, data_cfg, mesh, data_axis, global_batch_size)


def local_train_batches(data_cfg, *, image_size: int, local_batch: int, seed: int,
                        start_step: int = 0, process_index: int = 0, process_count: int = 1,
                        options: Optional[tf.data.Options] = None,
                        fuse_decode: Optional[bool] = None) -> Iterator[dict]:
  """This process's endless training batches as uint8/int numpy arrays (what
  `build_train_iterator` puts on the devices): it reads only its share of the split.
  `options` (default `tf_data_options()`) and `fuse_decode` (default: whenever
  `decodes_in_first_op`) exist for the benchmark and the tests; neither changes a batch."""
  source = make_source(data_cfg)
  split = data_cfg.train_split
  pi, pc = process_index, process_count
  local_count = source.process_counts(split, pc, drop_remainder=True)[pi]
  steps = local_count // local_batch
  if steps == 0:
    raise sources.config_error(
        'train_split', f'{split!r} gives each of {pc} processes {local_count} examples, fewer '
        f'than one local batch of {local_batch}.', 'lower config.batch_size or use a larger '
        'split.')
  buffer = min(data_cfg.shuffle_buffer, local_count)
  aug_tag, shuffle_tag = _SEED_TAGS[data_cfg.label_type]
  encoded = decodes_in_first_op(data_cfg, source) if fuse_decode is None else fuse_decode
  service = data_cfg.service_address
  # Traced once here rather than by every epoch's `map` (~0.5 s each on a small CPU).
  transform = train_transform(data_cfg, image_size,
                              tf.constant([derive_seed(seed, aug_tag), pi], tf.int64), encoded)
  read = source.encoded if encoded else source.decode

  @tf.function
  def prepare(index, example):
    out = transform(index, read(example))
    if service:
      out['_index'] = index  # puts the examples of the workers back in order (`_in_order`)
    return out

  shared = dict(process_index=pi, process_count=pc, drop_remainder=True)
  cached = None
  if data_cfg.cache:  # decoded once, before any shuffling; reused by every epoch
    cached = source.examples(split, **shared).map(
        _plain(source.decode), num_parallel_calls=tf.data.AUTOTUNE).cache()
    # One full pass (in C++) completes the in-memory cache now: an epoch cut short (a resume,
    # the end of the run) would otherwise leave a partial cache that tf.data discards, warning.
    cached.reduce(np.int64(0), lambda n, _: n + 1)
    prepare = tf.function(lambda index, example: transform(index, example), autograph=False)

  def epoch_examples(epoch, skip_steps):
    """The epoch's (index, undecoded example) stream, shuffled by the epoch's seed."""
    epoch_seed = derive_seed(seed, shuffle_tag, epoch, pi)
    if cached is not None:
      ds = cached.shuffle(buffer, seed=epoch_seed)
    else:
      ds = source.examples(split, seed=epoch_seed, **shared)
      if not source.shuffles_fully:
        ds = ds.shuffle(buffer, seed=epoch_seed)
    # The epoch's last partial batch is dropped before anything is decoded.
    ds = ds.enumerate(start=epoch * local_count).take(steps * local_batch)
    return ds.skip(skip_steps * local_batch)

  first_epoch, skip_steps = divmod(start_step, steps)
  if service:  # one job per epoch, endless
    for epoch in itertools.count(first_epoch):
      ds = _service_dataset(epoch_examples(epoch, skip_steps), prepare, service, local_batch,
                            pi, epoch)
      first = epoch * local_count + skip_steps * local_batch
      yield from _in_order(iterators.numpy_iterator(ds), first, local_batch, steps - skip_steps)
      skip_steps = 0
  # Several epochs per tf.data iterator: a new iterator restarts the pipeline cold (threads,
  # autotuned parallelism, buffers; ~0.4 CPU-s here), which dominated short epochs (a small
  # transfer set, the benchmark's folder). Each epoch's batches stay its own (its size is a
  # multiple of the batch), so the batches are those of one iterator per epoch. The first
  # iterator covers FIRST_ITERATOR_STEPS batches already (short epochs only; at most
  # FIRST_ITERATOR_MAX_EPOCHS epochs), so that a cold restart is rare from the start.
  epoch, count = first_epoch, min(-(-FIRST_ITERATOR_STEPS // steps), FIRST_ITERATOR_MAX_EPOCHS)
  while True:
    ds = epoch_examples(epoch, skip_steps)
    for later in range(epoch + 1, epoch + count):
      ds = ds.concatenate(epoch_examples(later, 0))
    ds = ds.map(_plain(prepare), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    yield from iterators.numpy_iterator(ds.with_options(options or _options()))
    epoch, skip_steps = epoch + count, 0
    if count * steps < ITERATOR_STEPS:  # doubling: a short run builds no epoch it does not use
      count = min(2 * count, MAX_EPOCHS_PER_ITERATOR)


# Epochs chained into one tf.data iterator (local pipeline): the first iterator covers
# FIRST_ITERATOR_STEPS batches (at most FIRST_ITERATOR_MAX_EPOCHS epochs: a short run builds
# few epochs it does not use), then the count doubles while an iterator covers fewer than
# ITERATOR_STEPS batches, at most MAX_EPOCHS_PER_ITERATOR.
FIRST_ITERATOR_STEPS = 256
FIRST_ITERATOR_MAX_EPOCHS = 16
ITERATOR_STEPS = 2048
MAX_EPOCHS_PER_ITERATOR = 64

# Examples per element that a tf.data service worker sends (one gRPC message each).
SERVICE_CHUNK = 16


def service_target(address: str) -> str:
  """'host:port' or 'grpc://host:port' -> the dispatcher target tf.data service takes."""
  return address if '://' in address else f'grpc://{address}'


def _service_dataset(ds, prepare, address, local_batch, process_index, epoch):
  """The epoch's (index, example) stream processed by tf.data service workers.

  Static sharding (ShardingPolicy.HINT): worker w of W decodes and augments the examples at
  positions w, w + W, ... of the epoch (all workers list and shuffle the same undecoded
  stream; listing is cheap), so each example is processed exactly once, by a pure function
  of (seed, index) as locally. The client receives the workers' chunks in whatever order
  they come and `_in_order` rebuilds the local pipeline's batches exactly."""
  service = tf.data.experimental.service
  ds = ds.shard(tf.data.experimental.SHARD_HINT, tf.data.experimental.SHARD_HINT)
  ds = ds.map(_plain(prepare), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(min(SERVICE_CHUNK, local_batch)).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(tf_data_options(threads=0))  # the workers' own cores
  # One job per process and epoch; a fresh name, so a restarted run never joins an old job.
  job = f'maelite-{uuid.uuid4().hex[:12]}-p{process_index}-e{epoch}'
  ds = ds.apply(service.distribute(processing_mode=service.ShardingPolicy.HINT,
                                   service=service_target(address), job_name=job,
                                   compression=None))  # uint8 pixels barely compress
  return ds.prefetch(tf.data.AUTOTUNE)


def _in_order(chunks, first: int, local_batch: int, num_batches: int) -> Iterator[dict]:
  """Batches of examples first, first + 1, ... from chunks that carry their '_index' and come
  in any order: each example is copied to its place; a batch leaves once complete."""
  pending = {}  # batch number -> [arrays, examples still missing]
  for b in range(num_batches):
    while b not in pending or pending[b][1]:
      chunk = next(chunks)
      position = chunk.pop('_index') - first
      for target in np.unique(position // local_batch).tolist():
        rows = position // local_batch == target
        if target not in pending:
          pending[target] = [{k: np.empty((local_batch,) + v.shape[1:], v.dtype)
                              for k, v in chunk.items()}, local_batch]
        arrays = pending[target][0]
        for k, v in chunk.items():
          arrays[k][position[rows] % local_batch] = v[rows]
        pending[target][1] -= int(rows.sum())
    yield pending.pop(b)[0]


def build_eval_iterator(data_cfg, *, image_size: int, global_batch_size: int,
                        mesh: jax.sharding.Mesh, split: Optional[str] = None,
                        limit: Optional[int] = None, data_axis='data') -> Iterator[dict]:
  """One pass over `split` (default eval_split) through `data.eval_ops`, no augmentation.

  Every process yields the same number of batches; padding examples have 'mask' 0 (real ones
  1; label maps all ignore), so metrics weighted by the mask count each example exactly once.
  `limit`: only the first `limit` examples of each process (figures).
  """
  validate_data_config(data_cfg, image_size)
  source = make_source(data_cfg)
  split = split or data_cfg.eval_split
  label_type = data_cfg.label_type
  local_batch = local_batch_size(global_batch_size, mesh, data_axis)
  pi, pc = jax.process_index(), jax.process_count()
  counts = source.process_counts(split, pc, drop_remainder=False)
  if limit is not None:
    counts = [min(c, limit) for c in counts]
  num_batches = -(-max(counts) // local_batch)
  view = ops_lib.compose(data_cfg.eval_ops, image_size, 'config.data.eval_ops')
  no_seed = tf.zeros([2], tf.int64)  # eval ops are deterministic

  def transform(example):
    features = view(_features(source.decode(example), label_type), no_seed)
    out = _finish(features, image_size, label_type)
    out.setdefault('label', features['label'])
    out['mask'] = tf.constant(1.0, tf.float32)
    return out

  ds = source.examples(split, process_index=pi, process_count=pc, drop_remainder=False)
  ds = ds.take(counts[pi]).map(_plain(transform), num_parallel_calls=tf.data.AUTOTUNE)
  fill = {'label': transforms.IGNORE_LABEL if label_type == 'map' else 0}
  padding = tf.data.Dataset.from_tensors({
      k: tf.fill(spec.shape, tf.constant(fill.get(k, 0), spec.dtype))
      for k, spec in ds.element_spec.items()}).repeat(num_batches * local_batch - counts[pi])
  ds = ds.concatenate(padding).batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return to_device(iterators.numpy_iterator(ds), data_cfg, mesh, data_axis, global_batch_size)
