"""CPU seconds per image of each loader, one after another in this one process: ours with the
crop's antialiased (PIL's) and plain (big_vision's, `antialias=False`) resize kernel, and the
PyTorch DataLoader + PIL, for each interpolation (docs/input-pipeline.md).

  PYTHONPATH=. python docs/bench/pipeline_2026-11-30_antialias/measure_cpu_cost.py OUT.json [ROUNDS [BATCHES]]

ROUNDS (default 3) repeats the whole list, so that drift on a shared machine hits every loader;
each loader is timed for BATCHES (default 20) batches of 32 per round.

Each loader (maelite_jax/bench/pipeline.py's `_ours` / `_torch`, the benchmark's own code) is
built, warmed up, timed for BATCHES batches (CPU seconds of this process, every thread counted,
and wall seconds), then deleted, which stops its tf.data threads before the next one starts.
Images per CPU second do not depend on how much of the machine others take; wall rates here
do and are recorded only as context. PyTorch's DataLoader runs without worker processes in
here (the per-image work is the same; the workers' IPC is left out, which favours PyTorch),
with one intra-op thread, as DataLoader workers have (with torch's default of one per core its
idle OpenMP thread spins and the first attempt measured 23 images per CPU second).
"""

import gc
import json
import os
import sys
import tempfile
import time

import psutil

from maelite_jax.bench import pipeline as bench

BATCH, SIZE, WARMUP, FILES = 32, 224, 2, 300
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
BATCHES = int(sys.argv[3]) if len(sys.argv) > 3 else 20


def measure(spec):
  proc = psutil.Process()
  next_batch = bench._loader(spec)
  for _ in range(WARMUP):
    next_batch()
  cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
  for _ in range(BATCHES):
    next_batch()
  cpu, wall = sum(proc.cpu_times()[:2]) - cpu0, time.perf_counter() - t0
  del next_batch
  gc.collect()
  cluster = spec.pop("_cluster", None)
  if cluster is not None:
    cluster.stop()
  images = BATCH * BATCHES
  return dict(name=spec["name"], images=images, cpu_s=cpu, wall_s=wall,
              images_per_cpu_s=images / cpu, wall_images_per_s=images / wall)


def main(out):
  import torch
  torch.set_num_threads(1)
  load = os.getloadavg()
  with tempfile.TemporaryDirectory(prefix="pipeline_cost_") as root:
    facts = bench.make_jpeg_folder(root, FILES)
    base = dict(root=root, batch=BATCH, image_size=SIZE, warmup=WARMUP, in_process=True)
    interps = ("bilinear", "bicubic", "random")
    specs = []
    for i in interps:  # interleaved: ours (PIL's kernel), ours (plain kernel), PyTorch
      specs += [dict(base, name=f"ours_{i}", kind="ours", interpolation=i),
                dict(base, name=f"ours_{i}_no_antialias", kind="ours", interpolation=i,
                     antialias=False),
                dict(base, name=f"torch_{i}", kind="torch", interpolation=i, workers=0)]
    records = []
    for r in range(ROUNDS):
      for spec in specs:
        rec = dict(measure(dict(spec)), round=r)
        print(json.dumps(rec), flush=True)
        records.append(rec)
  result = dict(command="PYTHONPATH=. python " + " ".join(sys.argv), batch=BATCH,
                image_size=SIZE, batches=BATCHES, warmup=WARMUP, cores=bench.cores(),
                loadavg_before=load, loadavg_after=os.getloadavg(), records=records, **facts)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
