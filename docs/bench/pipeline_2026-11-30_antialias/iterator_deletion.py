"""Does the end of a tf.data iterator stall its caller? (docs/input-pipeline.md)

Each trial (its own process): a small autotuned pipeline with this project's tf.data options;
20 elements, then `--idle` seconds without a request (as a loader whose turn has passed, or a
training step that waits), then the rest until StopIteration; the iterator ends and a new one
gives its first element. `boundary_s` is that gap as the caller sees it.
Modes: `main_thread` (the iterator is deleted by the caller, as `ds.as_numpy_iterator()`
does), `numpy_iterator` (this project's `data.iterators.numpy_iterator`: deleted on a
background thread; `reaper_delete_s` is how long that deletion took there), `autotune_off`.

  python iterator_deletion.py --trials 8 --idle 70   # all trials at once, in parallel
  python iterator_deletion.py --trials 12 --idle 70 --modes numpy_iterator
"""
import argparse
import json
import subprocess
import sys
import time


def trial(mode, idle):
  import tensorflow as tf
  from maelite_jax.data import iterators, pipeline
  timings = {}
  original = iterators._REAPER.delete

  def timed_delete(box):
    t = time.perf_counter()
    original(box)
    timings['reaper_delete_s'] = round(time.perf_counter() - t, 3)

  iterators._REAPER.delete = timed_delete

  def make():
    ds = tf.data.Dataset.range(100).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
    options = pipeline.tf_data_options()
    options.autotune.enabled = mode != 'autotune_off'
    return ds.batch(4).prefetch(tf.data.AUTOTUNE).with_options(options)

  def stream():
    while True:
      if mode == 'numpy_iterator':
        yield from iterators.numpy_iterator(make())
      else:
        yield from make().as_numpy_iterator()

  batches = stream()
  for _ in range(20):
    next(batches)
  time.sleep(idle)
  for _ in range(4):
    next(batches)
  next(batches)  # the iterator's last batch
  t = time.perf_counter()
  next(batches)  # StopIteration inside: the old iterator is deleted, a new one starts
  boundary = time.perf_counter() - t
  time.sleep(62)  # let a background deletion finish (the longest autotune period is 60 s)
  print(json.dumps(dict(mode=mode, idle_s=idle, boundary_s=round(boundary, 3), **timings)))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--trials', type=int, default=6)
  parser.add_argument('--idle', type=float, default=70)
  parser.add_argument('--mode')
  parser.add_argument('--modes', default='main_thread,numpy_iterator,autotune_off')
  args = parser.parse_args()
  if args.mode:
    return trial(args.mode, args.idle)
  procs = [subprocess.Popen([sys.executable, __file__, '--mode', mode, '--idle', str(args.idle)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
           for mode in args.modes.split(',')
           for _ in range(args.trials)]
  for p in procs:
    print(p.communicate()[0].strip(), flush=True)


if __name__ == '__main__':
  main()
