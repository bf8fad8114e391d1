"""Small array helpers shared across layers (a leaf module)."""

import jax
import numpy as np


def round_up(n: int, k: int) -> int:
  """The smallest multiple of k that is >= n (batch sizes that split over k devices)."""
  return (n + k - 1) // k * k


def local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global order (no cross-host copy)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  shards = {s.index[0].start or 0: s for s in x.addressable_shards}
  return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])
