"""An antialiased resize built from TensorFlow ops (PIL's / ScaleAndTranslate's weights, taps
gathered or applied by sparse matmul), checked against tf.image.resize(antialias=True) and
timed against it and the plain kernel: one thread, CPU ms per 224 px image (60 random sizes).
Kept as the record behind docs/input-pipeline.md's "no lever inside TensorFlow's op set".

  PYTHONPATH=. python docs/bench/pipeline_2026-11-30_antialias/resize_in_tf_ops.py > resize_in_tf_ops.txt
"""
import os, time, numpy as np
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
import tensorflow as tf
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.threading.set_intra_op_parallelism_threads(1)

def _tri(x): return tf.maximum(0.0, 1.0 - tf.abs(x))
def _keys(x, a=-0.5):
  x = tf.abs(x)
  return tf.where(x <= 1.0, ((a + 2) * x - (a + 3)) * x * x + 1,
                  tf.where(x < 2.0, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))
KERNELS = {"bilinear": (_tri, 1.0), "bicubic": (_keys, 2.0)}

def resize_weights(in_size, out_size, method):
  """(indices (out, taps) int32, weights (out, taps) f32) of the antialiased 1-D resampling."""
  kernel, support = KERNELS[method]
  n = tf.cast(in_size, tf.float32)
  scale = out_size / n
  ks = tf.minimum(scale, 1.0)
  radius = support / ks
  center = (tf.range(out_size, dtype=tf.float32) + 0.5) / scale
  start = tf.maximum(tf.cast(tf.floor(center - radius + 0.5), tf.int32), 0)
  stop = tf.minimum(tf.cast(tf.floor(center + radius + 0.5), tf.int32), in_size)
  taps = tf.cast(tf.math.ceil(2 * radius), tf.int32) + 2
  j = start[:, None] + tf.range(taps)[None, :]
  valid = j < stop[:, None]
  w = kernel((tf.cast(j, tf.float32) + 0.5 - center[:, None]) * ks)
  w = tf.where(valid, w, 0.0)
  w = w / tf.reduce_sum(w, axis=1, keepdims=True)
  return tf.minimum(j, in_size - 1), w

def resample_rows(img, out_size, method):
  """img (h, c) -> (out, c) along axis 0, sparse matmul."""
  h = tf.shape(img)[0]
  idx, w = resize_weights(h, out_size, method)
  taps = tf.shape(idx)[1]
  rows = tf.repeat(tf.range(out_size), taps)
  sp = tf.sparse.SparseTensor(tf.cast(tf.stack([rows, tf.reshape(idx, [-1])], 1), tf.int64),
                              tf.reshape(w, [-1]), tf.cast(tf.stack([out_size, h]), tf.int64))
  return tf.sparse.sparse_dense_matmul(sp, img)

def resample_gather(img, out_size, method):
  h = tf.shape(img)[0]
  idx, w = resize_weights(h, out_size, method)
  g = tf.gather(img, idx)  # (out, taps, c)
  return tf.einsum("ot,otc->oc", w, g)

def aa_resize(image, size, method, fn=resample_rows):
  x = tf.cast(image, tf.float32) / 255.0
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  a = fn(tf.reshape(x, [h, w * 3]), size, method)          # (size, w*3)
  a = tf.reshape(a, [size, w, 3])
  a = tf.transpose(a, [1, 0, 2])                             # (w, size, 3)
  b = fn(tf.reshape(a, [w, size * 3]), size, method)        # (size, size*3)
  return tf.transpose(tf.reshape(b, [size, size, 3]), [1, 0, 2])

rng = np.random.default_rng(0)
for (h, w) in [(300, 260), (180, 200), (450, 380), (97, 500)]:
  img = tf.constant(rng.integers(0, 256, (h, w, 3)), tf.uint8)
  for m in ("bilinear", "bicubic"):
    ref = tf.image.resize(tf.cast(img, tf.float32) / 255, [224, 224], m, antialias=True)
    for fn in (resample_rows, resample_gather):
      ours = aa_resize(img, 224, m, fn)
      print(h, w, m, fn.__name__, float(tf.reduce_max(tf.abs(ours - ref))))
sig = [tf.TensorSpec([None, None, 3], tf.uint8)]
imgs = [tf.constant(rng.integers(0, 256, (int(a), int(b), 3)), tf.uint8) for a, b in rng.integers(150, 480, (60, 2))]
for m in ("bilinear", "bicubic"):
  fns = {"sat": tf.function(lambda x: tf.image.resize(tf.cast(x, tf.float32) / 255, [224, 224], m, antialias=True), input_signature=sig),
         "sparse": tf.function(lambda x: aa_resize(x, 224, m, resample_rows), input_signature=sig),
         "gather": tf.function(lambda x: aa_resize(x, 224, m, resample_gather), input_signature=sig),
         "plain": tf.function(lambda x: tf.image.resize(tf.cast(x, tf.float32) / 255, [224, 224], m), input_signature=sig)}
  for name, f in fns.items():
    f(imgs[0])
    best = 1e9
    for _ in range(3):
      t = time.process_time()
      for x in imgs: f(x).numpy()
      best = min(best, (time.process_time() - t) / len(imgs) * 1e3)
    print(m, name, f"{best:.2f} ms")

def aa_resize2(image, size, method):
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  iy, wy = resize_weights(h, size, method)
  ix, wx = resize_weights(w, size, method)
  g = tf.cast(tf.gather(image, iy), tf.float32)                  # (size, ty, w, 3)
  a = tf.einsum("ot,otwc->owc", wy, g)                           # (size, w, 3)
  g2 = tf.gather(a, ix, axis=1)                                  # (size, size, tx, 3)
  return tf.einsum("pt,optc->opc", wx / 255.0, g2)

def aa_resize3(image, size, method):
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  iy, wy = resize_weights(h, size, method)
  ix, wx = resize_weights(w, size, method)
  g = tf.cast(tf.gather(image, iy), tf.float32)                  # (size, ty, w, 3)
  a = tf.reduce_sum(wy[:, :, None, None] * g, axis=1)            # (size, w, 3)
  g2 = tf.gather(a, ix, axis=1)                                  # (size, size, tx, 3)
  return tf.reduce_sum((wx / 255.0)[None, :, :, None] * g2, axis=2)

for (h, w) in [(300, 260), (97, 500)]:
  img = tf.constant(rng.integers(0, 256, (h, w, 3)), tf.uint8)
  for m in ("bilinear", "bicubic"):
    ref = tf.image.resize(tf.cast(img, tf.float32) / 255, [224, 224], m, antialias=True)
    for fn in (aa_resize2, aa_resize3):
      print(h, w, m, fn.__name__, float(tf.reduce_max(tf.abs(fn(img, 224, m) - ref))))
for m in ("bilinear", "bicubic"):
  for name, fn in (("v2", aa_resize2), ("v3", aa_resize3)):
    f = tf.function(lambda x: fn(x, 224, m), input_signature=sig)
    f(imgs[0])
    best = 1e9
    for _ in range(3):
      t = time.process_time()
      for x in imgs: f(x).numpy()
      best = min(best, (time.process_time() - t) / len(imgs) * 1e3)
    print(m, name, f"{best:.2f} ms")
