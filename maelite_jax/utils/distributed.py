"""Multi-host start from flags or the environment: the same command runs on a laptop, one GPU
host and every worker of a TPU pod slice; nothing in the code changes.

`jax.distributed.initialize()` is called when asked for (a flag, config.distributed, or
MAELITE_DISTRIBUTED=1) or when a coordinator address is given. On Cloud TPU, SLURM and Open MPI
JAX finds the cluster itself; elsewhere pass the coordinator, process count and this process's
id (flags, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
"""

import os

from absl import flags, logging

ENV_SWITCH = "MAELITE_DISTRIBUTED"


def define_flags():
  """The absl flags every entry point shares (call at import time of a script); returns the
  --distributed holder."""
  holder = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (also "
                             f"{ENV_SWITCH}=1 or config.distributed=True)")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies "
                      "--distributed; env JAX_COORDINATOR_ADDRESS)")
  flags.DEFINE_integer("num_processes", None, "processes in the job (env JAX_NUM_PROCESSES)")
  flags.DEFINE_integer("process_id", None, "this process's index (env JAX_PROCESS_ID)")
  return holder


def _env_int(name):
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def maybe_initialize(enabled: bool = False, coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None) -> bool:
  """Initialises multi-host JAX if asked for; returns whether it did. Must run before any
  other JAX call that touches devices."""
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if not (enabled or os.environ.get(ENV_SWITCH) == "1" or address):
    return False
  import jax
  jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                             process_id=process_id)
  logging.info("multi-host: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def initialize_from_flags(config=None, enabled: bool = False) -> bool:
  """maybe_initialize() with the flags of `define_flags` where defined (and config.distributed)."""
  value = lambda name: flags.FLAGS[name].value if name in flags.FLAGS else None
  return maybe_initialize(
      enabled=bool(enabled or value("distributed")
                   or (config is not None and config.get("distributed", False))),
      coordinator_address=value("coordinator_address"), num_processes=value("num_processes"),
      process_id=value("process_id"))
