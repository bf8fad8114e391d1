"""Device mesh and sharding rules: data parallel by default, FSDP of chosen params by regex.

There is one mesh axis, 'data'. The batch is split over it; a parameter (and the optimizer
moments that mirror it) whose path matches `fsdp_regex` is additionally split over it along its
largest dimension that divides evenly (ZeRO-3 style), everything else is replicated. Under
`jax.jit` XLA inserts the gathers; results equal data parallel.
"""

import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_str(path) -> str:
  """'opt_state/0/mu/encoder/blocks_0/attn/qkv/kernel': the name the sharding, weight-decay,
  frozen-parameter and checksum rules match (jax's keystr with '/' between keys)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def fsdp_spec(shape, n: int) -> P:
  """Shards the largest evenly divisible dimension over the data axis; else replicates."""
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in order:
    if shape[i] % n == 0 and shape[i] >= n:
      spec = [None] * len(shape)
      spec[i] = DATA_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp_regex: str = ""):
  """Shardings for every leaf of a (abstract) train state, by the FSDP rule."""
  n = mesh.shape[DATA_AXIS]
  pattern = re.compile(fsdp_regex) if fsdp_regex else None

  def rule(path, leaf):
    shape = getattr(leaf, "shape", ())
    if pattern is not None and len(shape) > 0 and pattern.search(path_str(path)):
      return NamedSharding(mesh, fsdp_spec(shape, n))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(rule, abstract_state)
