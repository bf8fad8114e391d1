"""How far ahead does the tf.data pipeline work while its consumer pauses? (docs/input-pipeline.md)

One loader of the pipeline benchmark (ours, bilinear, plain kernel, batch 32 at 224 px, on
the benchmark's 1000 JPEGs), in this process: after a warm-up, 5 times: 15 s without a
request, then 40 batches, each timed (ms). Batches that were made during the pause come back
in a few ms; made ones take ~30 ms here. tf.data's autotuning grows the prefetch buffer
between rounds, so a fixed number of drained batches cannot cover what a paused loader made
ahead; the benchmark stops (SIGSTOP) the loaders between their turns instead.

  python buffer_depth.py
"""
import os
import tempfile
import time

from maelite_jax.bench import pipeline as bench

with tempfile.TemporaryDirectory() as root:
  bench.make_jpeg_folder(root, 1000)
  next_batch = bench._ours(dict(root=root, batch=32, image_size=224, kind='ours',
                                interpolation='bilinear', antialias=False))
  for _ in range(3):
    next_batch()
  for r in range(5):
    time.sleep(15)
    ms = []
    for _ in range(40):
      t = time.perf_counter()
      next_batch()
      ms.append(round((time.perf_counter() - t) * 1000))
    print(f'round {r}: ms per batch after 15 s idle: {ms}', flush=True)
  os._exit(0)  # do not wait for the pipeline's threads
