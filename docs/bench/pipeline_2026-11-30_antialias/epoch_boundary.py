"""Batch-by-batch wall and CPU time of the local pipeline over 1000 JPEGs (31-batch epochs): what
the first epoch boundary (batch 31) costs in one process.

  PYTHONPATH=. python docs/bench/pipeline_2026-11-30_antialias/epoch_boundary.py > epoch_boundary.txt
"""
import os, time, tempfile
os.environ["TF_CPP_MIN_LOG_LEVEL"]="2"
import psutil
from maelite_jax.bench import pipeline as bench
from maelite_jax.configs import common
from maelite_jax.data import pipeline
proc = psutil.Process()
root = tempfile.mkdtemp(); bench.make_jpeg_folder(root, 1000)
cfg = common.data_config("imagefolder", data_dir=root, train_split="train", eval_split="train", shuffle_buffer=1000)
cfg.train_ops = common.crop_flip_ops(interpolation="bilinear", antialias=False)
it = pipeline.local_train_batches(cfg, image_size=224, local_batch=32, seed=0)
for i in range(70):
  t = time.perf_counter(); c = sum(proc.cpu_times()[:2])
  next(it)
  dt = time.perf_counter() - t
  if dt > 0.5 or i in (0, 30, 31, 32, 92, 93):
    print(i, f"{dt:.2f} s wall, {sum(proc.cpu_times()[:2]) - c:.2f} s cpu", flush=True)
