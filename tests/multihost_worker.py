"""One process of the 2-process CPU test in test_reliability.py (not a test itself).

  python -m tests.multihost_worker PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT_DIR

Starts multi-host JAX through the same helper as scripts/pretrain.py, trains the tiny MAE with
a stop after step 2, resumes from that checkpoint and trains until the test sends SIGTERM to one
of the processes (the figure is drawn at step 3), then saves the rows of every global batch
that this process fed (for the single-process comparison). The resume reuses the Trainer only
to skip a second compilation.
"""

import json
import os
import sys

import numpy as np
from absl import logging


def main(process_id, num_processes, port, workdir, out_dir):
  from maelite_jax.utils import distributed
  assert distributed.maybe_initialize(coordinator_address=f"localhost:{port}",
                                      num_processes=num_processes, process_id=process_id)
  import jax
  from maelite_jax import data as data_lib
  from maelite_jax.run import build_trainer
  from tests.test_reliability import tiny_config

  rows = {}
  real = data_lib.build_train_iterator

  def recording(*args, start_step=0, **kwargs):
    for k, batch in enumerate(real(*args, start_step=start_step, **kwargs)):
      shards = sorted(batch["image"].addressable_shards, key=lambda s: s.index[0].start)
      rows[start_step + k + 1] = ([s.index[0].start for s in shards],
                                  np.concatenate([np.asarray(s.data) for s in shards]))
      yield batch

  data_lib.build_train_iterator = recording
  config = tiny_config(**{"evals.reconstruction.every": 3})
  trainer = build_trainer(config, workdir)
  trainer.run(stop_at=2)
  trainer.run()  # until preempted
  final = int(jax.device_get(trainer.state.step))
  steps = sorted(s for s in rows if s <= final)
  np.savez(os.path.join(out_dir, f"rows{process_id}.npz"),
           **{f"image{s}": rows[s][1] for s in steps}, **{f"start{s}": rows[s][0] for s in steps})
  with open(os.path.join(out_dir, f"proc{process_id}.json"), "w") as f:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "local_devices": jax.local_device_count(), "devices": jax.device_count(),
               "steps": steps, "final": final}, f)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  pid, n, port = (int(a) for a in sys.argv[1:4])
  main(pid, n, port, sys.argv[4], sys.argv[5])
