"""tf.data service servers: a dispatcher and the workers that decode and augment for training
hosts which lack cores (`config.data.service_address`; docs/input-pipeline.md).

The pipeline shards each epoch statically over the workers (each example is processed by
exactly one of them, a pure function of (seed, index)), so the dispatcher must know the workers'
addresses when it starts, and every worker must be up for a job to run. Workers run the
training's own tf.data graph: they need the same TensorFlow version and must be able to read
the dataset's files at the same paths (a shared file system or a bucket).
"""

import socket
from typing import Optional, Sequence

import tensorflow as tf

_service = tf.data.experimental.service


def _host_port(address: str) -> str:
  return address.split('://', 1)[-1]


def start_dispatcher(port: int, worker_addresses: Sequence[str],
                     work_dir: Optional[str] = None) -> '_service.DispatchServer':
  """A dispatcher on `port` that expects exactly these workers ('host:port' as each worker
  announces itself). `work_dir` (optional) lets a restarted dispatcher recover its jobs."""
  config = _service.DispatcherConfig(port=port, worker_addresses=list(worker_addresses),
                                     work_dir=work_dir, fault_tolerant_mode=bool(work_dir))
  return _service.DispatchServer(config)


def start_worker(dispatcher_address: str, worker_address: str,
                 port: Optional[int] = None) -> '_service.WorkerServer':
  """A worker announcing itself as `worker_address` ('host:port', one of the dispatcher's
  worker_addresses) and listening on its port (or `port`)."""
  port = int(worker_address.rsplit(':', 1)[1]) if port is None else port
  config = _service.WorkerConfig(dispatcher_address=_host_port(dispatcher_address),
                                 worker_address=worker_address, port=port)
  return _service.WorkerServer(config)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class LocalCluster:
  """A dispatcher and `num_workers` workers in this process, on localhost (tests, benchmark).
  `address` is what config.data.service_address takes."""

  def __init__(self, num_workers: int = 2):
    self.worker_addresses = [f'localhost:{free_port()}' for _ in range(num_workers)]
    self.dispatcher = start_dispatcher(0, self.worker_addresses)
    self.address = _host_port(self.dispatcher.target)
    self.workers = [start_worker(self.address, a) for a in self.worker_addresses]

  def stop(self):
    for server in self.workers + [self.dispatcher]:
      server.stop()

