"""tf.data iterators whose end never stalls the caller.

Deleting a tf.data iterator with autotuning on can block for as long as its autotune thread
still sleeps: that thread re-optimises after periods that double from 10 ms up to 60 s and,
intermittently (about a third of the trials here, TensorFlow 2.21), the deletion waits for the
current period to end instead of interrupting it. An iterator that lived a few minutes then
costs up to 60 s when it is deleted: at an epoch boundary of the training pipeline, at the end
of an evaluation pass, or when a process exits. Measured in docs/input-pipeline.md ("Iterator
deletion", docs/bench/pipeline_2026-11-30_antialias/iterator_deletion.*).

`numpy_iterator(ds)` is `ds.as_numpy_iterator()` that hands the finished (or abandoned)
iterator to one daemon thread, which deletes it there; the caller goes on at once. Nothing is
lost by deleting late: an exhausted iterator holds no elements, an abandoned one only its
buffers until the deletion completes. At interpreter exit the handed-over iterators are not
waited for (the daemon thread stops with the process).
"""

import queue
import threading
from typing import Iterator


class _Reaper:
  """One daemon thread that deletes the iterators handed to it. Everything the generators'
  `finally` needs hangs off this object, not module globals: a generator still alive at
  interpreter exit is finalised after the module's globals are gone."""

  def __init__(self):
    self._queue = queue.SimpleQueue()
    self._lock = threading.Lock()
    self._thread = threading.Thread(target=self._run, name='tf-data-iterator-reaper',
                                    daemon=True)
    self._started = False

  @staticmethod
  def delete(box: list) -> None:
    """Empties `box`, which holds the last reference to an iterator: the tf.data iterator is
    destroyed here, on the calling thread (inside this call, so that it can be timed)."""
    box.clear()

  def _run(self) -> None:
    while True:
      self.delete(self._queue.get())

  def numpy_iterator(self, ds) -> Iterator:
    """See the module's `numpy_iterator`."""
    with self._lock:  # started here, not at the first hand-over, which may come at exit
      if not self._started:
        self._thread.start()
        self._started = True
    iterator = ds.as_numpy_iterator()
    try:
      yield from iterator
    finally:
      self._queue.put([iterator])
      del iterator


_REAPER = _Reaper()

# The elements of `ds` as numpy (`ds.as_numpy_iterator()`); the tf.data iterator is deleted on
# the background thread once exhausted or when the generator is closed or collected.
numpy_iterator = _REAPER.numpy_iterator
