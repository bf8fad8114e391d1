"""Input-pipeline benchmark: this project's tf.data pipeline against a PyTorch DataLoader + PIL
loader on the same real JPEGs, per core, timed in turns (`scripts/benchmark.py --pipeline`).

The JPEGs: an ImageFolder built offline from the real photographs that installed packages
ship (scikit-image's data module, matplotlib's sample image; see `photo_paths`), cropped and
rescaled to ImageNet-like sizes (longer side 300-500 px) and saved at quality 90 with 4:2:0
chroma, as most ImageNet files are.

Each loader runs in its own process (TensorFlow and PyTorch never share one), driven by this
module over a pipe: after a warm-up, the loaders take turns, each consuming `steps` batches per
turn (`rounds` turns each, the order rotated), so drift on a shared machine hits all alike.
Between its turns a loader's process group (DataLoader workers included) is stopped
(SIGSTOP): no loader works while another is timed, and none fills its buffers in the pause
(tf.data's autotuning grows its prefetch buffer over time: after 15 s idle, ~3 batches were
ready at first, ~20 four pauses later, which a fixed drain cannot cover; buffer_depth.py in
docs/bench/pipeline_2026-11-30_antialias/).
Per loader:
- `images_per_s`: timed images / timed wall seconds, after `drain` untimed batches at the
  start of each turn (what the loader made ahead at the end of its previous turn);
- `per_core` = images_per_s / cores: both loaders get every core of the host (`cores`) as
  threads (tf.data's private pool) or worker processes (DataLoader's num_workers);
- `images_per_cpu_s`: timed images / CPU seconds the loader's processes (workers included)
  used while they were timed: the per-core cost, which other users of a shared machine do not
  distort, since it counts only the loader's own CPU time. The buffers are empty when timing
  starts and the producers keep pace with the consumer, so the work done is the work timed.
Both pipelines end with what a training step consumes: ours normalised float32 arrays on the
JAX device (the jitted normalise of `pipeline.to_device`), PyTorch's normalised float32
tensors from the loader.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

# The colour photographs of scikit-image's data module (bundled files, no download) and
# matplotlib's sample image: people, animals, objects, a street scene, microscopy, astronomy.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg",
                  "ihc.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg",
                  "rocket.jpg")
JPEG_QUALITY = 90
SIDES = (300, 500)  # the longer side of the files, uniform in this range (ImageNet-like)


def cores() -> int:
  """The cores this process may use (affinity mask)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def photo_paths() -> list[str]:
  """Real photographs shipped by installed packages (scikit-image is optional: without it only
  matplotlib's, a runtime dependency, is used, and the record says so)."""
  import matplotlib
  paths = []
  try:
    import skimage
    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths += [os.path.join(folder, n) for n in SKIMAGE_PHOTOS
              if os.path.exists(os.path.join(folder, n))]
  except ImportError:
    pass
  paths.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data",
                            "grace_hopper.jpg"))
  return paths


def make_jpeg_folder(root: str, num_files: int, seed: int = 0) -> dict:
  """root/train/<photo>/<i>.jpg: `num_files` random crops (40-100 % of the area) of the photos,
  rescaled so that the longer side is uniform in SIDES, JPEG quality 90. Returns its facts."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  photos = photo_paths()
  sides, sizes = [], []
  for i in range(num_files):
    path = photos[i % len(photos)]
    with Image.open(path) as im:
      im = im.convert("RGB")
    width, height = im.size
    f = np.sqrt(rng.uniform(0.4, 1.0))
    w, h = max(1, int(width * f)), max(1, int(height * f))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    side = int(rng.integers(SIDES[0], SIDES[1] + 1))
    s = side / max(w, h)
    im = im.crop((left, top, left + w, top + h)).resize(
        (max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    folder = os.path.join(root, "train", os.path.splitext(os.path.basename(path))[0])
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, f"{i:05d}.jpg")
    im.save(out, quality=JPEG_QUALITY)  # PIL's default chroma subsampling: 4:2:0
    sides.append(im.size)
    sizes.append(os.path.getsize(out))
  return dict(jpeg_files=num_files, jpeg_photos=[os.path.basename(p) for p in photos],
              jpeg_mean_size_px=[float(np.mean([s[0] for s in sides])),
                                 float(np.mean([s[1] for s in sides]))],
              jpeg_mean_bytes=float(np.mean(sizes)), jpeg_quality=JPEG_QUALITY)


# ---------------------------------------------------------------- one loader (a child process)

def _ours(spec):
  """This project's pipeline on the JPEG folder (or the built-in data), through to_device."""
  import jax
  from maelite_jax.configs import common
  from maelite_jax.data import pipeline
  interpolation = spec["interpolation"]
  if spec["kind"] == "builtin":
    cfg = common.builtin_data()
  else:
    cfg = common.data_config("imagefolder", data_dir=spec["root"], train_split="train",
                             eval_split="train", shuffle_buffer=1000)
  cfg.train_ops = common.crop_flip_ops(interpolation=interpolation,
                                       antialias=spec.get("antialias", True))
  if spec.get("service_workers"):  # a dispatcher and its workers in this process
    from maelite_jax.data.service import LocalCluster
    spec["_cluster"] = LocalCluster(spec["service_workers"])
    cfg.service_address = spec["_cluster"].address
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  options = pipeline.tf_data_options(**spec.get("options", {}))
  batches = pipeline.local_train_batches(cfg, image_size=spec["image_size"],
                                         local_batch=spec["batch"], seed=0, options=options,
                                         fuse_decode=spec.get("fuse"))
  it = pipeline.to_device(batches, cfg, mesh, "data", spec["batch"])
  return lambda: jax.block_until_ready(next(it)["image"])


def _torch(spec):
  import torch
  from maelite_jax.bench.torch_loader import make_loader
  if not spec.get("in_process"):  # its own process: one thread, as DataLoader workers have
    torch.set_num_threads(1)
  it = make_loader(os.path.join(spec["root"], "train"), batch=spec["batch"],
                   image_size=spec["image_size"], workers=spec["workers"],
                   interpolation=spec["interpolation"])
  return lambda: next(it)[0].shape


def _cpu_seconds(proc) -> float:
  """CPU time of a process and all its live children (DataLoader workers)."""
  total = sum(proc.cpu_times()[:2])
  for child in proc.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except Exception:  # noqa: BLE001 - a child that just ended
      pass
  return total


def _loader(spec):
  return _torch(spec) if spec["kind"] == "torch" else _ours(spec)


def _timed_turn(next_batch, proc, batch: int, drain: int, n: int) -> dict:
  for _ in range(drain):  # batches made while another loader had its turn
    next_batch()
  cpu0, t0 = _cpu_seconds(proc), time.perf_counter()
  batch_s = []
  for _ in range(n):
    t = time.perf_counter()
    next_batch()
    batch_s.append(round(time.perf_counter() - t, 4))
  wall, cpu = time.perf_counter() - t0, _cpu_seconds(proc) - cpu0
  return {"wall": wall, "images": n * batch, "cpu": cpu, "batch_s": batch_s,
          "rss_mb": round(proc.memory_info().rss / 2**20)}


def serve(spec: dict) -> None:
  """The child's loop: warm up, say 'ready', then 'run D N' -> drain D, time N batches -> one
  JSON line."""
  import psutil
  proc = psutil.Process()
  next_batch = _loader(spec)
  for _ in range(spec["warmup"]):
    next_batch()
  print(json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
      break
    print(json.dumps(_timed_turn(next_batch, proc, spec["batch"], int(cmd[1]), int(cmd[2]))),
          flush=True)


class _InProcess:
  """A loader in this process, with `_Child`'s interface (run(in_process=True)): the smoke test
  of the benchmark's code in CI, which costs no process start and no imports. Not a
  measurement: the loaders share this process, PyTorch's runs without worker processes."""

  def __init__(self, spec):
    import psutil
    self.spec, self.turns, self._proc = spec, [], psutil.Process()
    self._next = _loader(spec)

  def wait_ready(self):
    for _ in range(self.spec["warmup"]):
      self._next()

  def pause(self):
    pass

  def turn(self, drain, steps):
    self.turns.append(_timed_turn(self._next, self._proc, self.spec["batch"], drain, steps))

  def close(self):
    pass


class _Child:
  def __init__(self, spec):
    self.spec = spec
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)  # one host device, as on a real host (tests simulate 8)
    # Its own process group: pause() stops the loader and its DataLoader workers together.
    self.proc = subprocess.Popen([sys.executable, "-m", "maelite_jax.bench.pipeline",
                                  json.dumps(spec)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env,
                                 start_new_session=True)
    self.turns = []

  def _signal(self, sig):
    try:
      os.killpg(self.proc.pid, sig)
    except ProcessLookupError:  # already gone (close after a failure)
      pass

  def pause(self):
    """Stops every thread of the loader until its next turn (SIGSTOP to its group)."""
    self._signal(signal.SIGSTOP)

  def _reply(self):
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f"pipeline benchmark child {self.spec['name']} exited "
                           f"(status {self.proc.wait()})")
      if line.startswith("{"):
        return json.loads(line)

  def wait_ready(self):
    self._reply()

  def turn(self, drain, steps):
    self._signal(signal.SIGCONT)
    self.proc.stdin.write(f"run {drain} {steps}\n")
    self.proc.stdin.flush()
    self.turns.append(self._reply())
    self.pause()

  def close(self):
    self._signal(signal.SIGCONT)
    try:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
      self.proc.wait(timeout=60)
    except Exception:  # noqa: BLE001
      self.proc.kill()


def _summary(child, n_cores) -> dict:
  turns = child.turns
  images = sum(t["images"] for t in turns)
  wall = sum(t["wall"] for t in turns)
  rate = images / wall
  cpu = sum(t["cpu"] for t in turns)  # 0 when every timed batch was already buffered (smoke)
  return dict(images_per_s=rate, per_core=rate / n_cores,
              images_per_cpu_s=images / cpu if cpu > 0 else None,
              turn_images_per_s=[round(t["images"] / t["wall"], 1) for t in turns],
              turn_batch_s=[t.get("batch_s") for t in turns],
              rss_mb=max((t.get("rss_mb", 0) for t in turns), default=0))


def loader_specs(root, *, batch, image_size, warmup, interpolations, builtin, variants,
                 n_cores, in_process=False, no_antialias=True) -> list[dict]:
  """Ours and PyTorch's for each interpolation (+ ours with the plain resize kernel, + the
  built-in data, + tf.data variants)."""
  base = dict(root=root, batch=batch, image_size=image_size, warmup=warmup,
              in_process=in_process)
  specs = []
  for interp in interpolations:
    specs.append(dict(base, name=f"ours_{interp}", kind="ours", interpolation=interp))
    if no_antialias:
      specs.append(dict(base, name=f"ours_{interp}_no_antialias", kind="ours",
                        interpolation=interp, antialias=False))
    specs.append(dict(base, name=f"torch_{interp}", kind="torch", interpolation=interp,
                      workers=0 if in_process else n_cores))
  if builtin:
    specs.append(dict(base, name="builtin", kind="builtin", interpolation=interpolations[0],
                      variant="builtin"))
  if variants:  # what each tf.data setting and the fused decode buy (first interpolation)
    interp = interpolations[0]
    for name, extra in (("tf_defaults", dict(options=dict(threads=0, intra_op=0))),
                        ("private_pool_only", dict(options=dict(intra_op=0))),
                        ("intra_op_1_only", dict(options=dict(threads=0))),
                        ("decode_then_crop", dict(fuse=False)),
                        ("service_2_local_workers", dict(service_workers=2))):
      specs.append(dict(base, name=f"ours_{interp}_{name}", kind="ours", interpolation=interp,
                        variant=name, **extra))
  return specs


def run(*, batch: int, image_size: int, steps: int, warmup: int, rounds: int, files: int,
        interpolations=("bilinear", "bicubic"), builtin: bool = True, variants: bool = False,
        drain: int = 8, jpeg_dir: str = "", in_process: bool = False,
        no_antialias: bool = True) -> list[dict]:
  """Builds the JPEG folder (unless `jpeg_dir` names one), runs every loader in turns and
  returns one record per interpolation and resize kernel (ours vs PyTorch: antialiased, as
  PIL; with `no_antialias` also the plain kernel, big_vision's, against the same PyTorch
  loader), plus the built-in data's and the tf.data variants'. in_process=True: the loaders
  run in this process (`_InProcess`; a smoke test, not a measurement: its records say
  mode='in_process')."""
  n_cores = cores()
  with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as tmp:
    facts = {}
    root = jpeg_dir
    if not root:
      root = tmp
      facts = make_jpeg_folder(root, files)
    specs = loader_specs(root, batch=batch, image_size=image_size, warmup=warmup,
                         interpolations=list(interpolations), builtin=builtin,
                         variants=variants, n_cores=n_cores, in_process=in_process,
                         no_antialias=no_antialias)
    children = []
    drain = min(drain, steps)  # a turn drains no more than it times (smoke runs)
    try:
      for spec in specs:  # started together: warm-ups are not timed
        children.append(_InProcess(spec) if in_process else _Child(spec))
      for child in children:  # none works ahead while the others warm up or are timed
        child.wait_ready()
        child.pause()
      load = os.getloadavg()
      for r in range(rounds):
        order = children[r % len(children):] + children[:r % len(children)]
        for child in order:
          child.turn(drain, steps)
      load_after = os.getloadavg()
    finally:
      for child in children:
        child.close()
  results = {c.spec["name"]: _summary(c, n_cores) for c in children}
  common = dict(benchmark="pipeline", batch=batch, image_size=image_size, cores=n_cores,
                mode="in_process" if in_process else "processes",
                steps_per_turn=steps, rounds=rounds, loadavg_before=load,
                loadavg_after=load_after, **facts)
  records = []
  for interp, antialias in [(i, a) for i in interpolations for a in (True, False)]:
    name = f"ours_{interp}" + ("" if antialias else "_no_antialias")
    if name not in results:
      continue
    ours, torch = results[name], results[f"torch_{interp}"]
    records.append(dict(
        common, data="jpeg_imagefolder", interpolation=interp, antialias=antialias,
        pipeline_images_per_s=ours["images_per_s"], per_core=ours["per_core"],
        images_per_cpu_s=ours["images_per_cpu_s"],
        torch_loader_images_per_s=torch["images_per_s"],
        torch_loader_per_core=torch["per_core"],
        torch_loader_images_per_cpu_s=torch["images_per_cpu_s"],
        per_core_over_torch=ours["per_core"] / torch["per_core"],
        per_cpu_s_over_torch=(ours["images_per_cpu_s"] / torch["images_per_cpu_s"]
                              if ours["images_per_cpu_s"] and torch["images_per_cpu_s"]
                              else None),
        turns=ours["turn_images_per_s"], torch_turns=torch["turn_images_per_s"],
        batch_s=ours["turn_batch_s"], torch_batch_s=torch["turn_batch_s"],
        rss_mb=ours["rss_mb"], torch_rss_mb=torch["rss_mb"]))
  for spec in specs:
    if "variant" in spec:
      res = results[spec["name"]]
      records.append(dict(common, data="builtin" if spec["kind"] == "builtin" else
                          "jpeg_imagefolder", variant=spec["variant"],
                          interpolation=spec["interpolation"],
                          pipeline_images_per_s=res["images_per_s"], per_core=res["per_core"],
                          images_per_cpu_s=res["images_per_cpu_s"],
                          turns=res["turn_images_per_s"], batch_s=res["turn_batch_s"],
                          rss_mb=res["rss_mb"]))
  return records


def print_table(records) -> None:
  cols = ["data", "variant", "interpolation", "antialias", "pipeline_images_per_s", "per_core",
          "images_per_cpu_s", "torch_loader_per_core", "torch_loader_images_per_cpu_s",
          "per_core_over_torch", "per_cpu_s_over_torch"]
  cols = [c for c in cols if any(r.get(c) is not None for r in records)]
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  print(" | ".join(cols))
  for r in records:
    print(" | ".join(fmt(r.get(c, "")) for c in cols))


if __name__ == "__main__":
  serve(json.loads(sys.argv[1]))
