"""Speed measurements: the jitted training step and a PyTorch baseline (the input pipeline:
bench/pipeline.py).

The step is the training loop's own (train/program.py's StepProgram: the objective from the
registry, the optimizer with its lr factors, the non-finite guard, jitted with shardings,
donation and config.xla_options), run on synthetic data made on the devices, so the input
pipeline is measured separately and the slower of the two is visible. FLOPs and bytes per image
are counted analytically (bench/accounting.py: MAE, D-MAE, MoCo-v3); XLA's cost analysis of the
compiled step (which leaves out cuBLAS matmuls on GPU) is recorded next to them. MFU = analytic
FLOPs / step time / peak; the traffic ceiling = HBM bandwidth / analytic bytes per image.
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from maelite_jax.bench import accounting
from maelite_jax.bench.accounting import mae_train_flops, vit_forward_flops  # noqa: F401
from maelite_jax.train import mesh as mesh_lib

# Dense peak FLOP/s per chip (bf16; fp32 matmuls on GPU run as TF32 by default in XLA).
PEAK_FLOPS = {"H100": {"bfloat16": 989e12, "float32": 494.7e12},
              "H200": {"bfloat16": 989e12, "float32": 494.7e12},
              "A100": {"bfloat16": 312e12, "float32": 156e12}}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  for name, table in PEAK_FLOPS.items():
    if name in device_kind:
      return table[dtype]
  return None


def peak_memory_bytes() -> int:
  """Device peak for accelerators; the process's max RSS on CPU."""
  dev = jax.devices()[0]
  if dev.platform != "cpu":
    stats = dev.memory_stats() or {}
    return int(stats.get("peak_bytes_in_use", 0))
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return cost or {}


def model_accounting(objective, program, state, config) -> dict:
  """bench/accounting.py's analytic FLOPs and bytes per image for this step's objective, from
  the built modules' shapes (so config overrides of depth, width or size are counted)."""
  name = objective.name
  if name not in ("mae", "dmae", "mocov3"):
    return {}
  fields = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "decoder_embed_dim",
            "decoder_depth", "decoder_num_heads")
  model = {f: getattr(objective.model, f) for f in fields if hasattr(objective.model, f)}
  fused = objective.model.attention_impl == "cudnn"
  act_bytes = jnp.dtype(objective.model.dtype).itemsize
  params = {"trained": accounting.count_params(state.params),
            "frozen": accounting.count_params(program.frozen),
            "momentum": accounting.count_params(state.extra.get("momentum", {}))}
  kw = dict(objective=name, model=model, image_size=config.model.image_size,
            batch=config.batch_size, act_bytes=act_bytes, fused_attention=fused, params=params)
  if name in ("mae", "dmae"):
    kw["mask_ratio"] = config.model.mask_ratio
  if name == "dmae":
    t = objective.teacher
    kw["teacher"] = {f: getattr(t, f) for f in fields[:5]}
    kw["distill"] = {"attn_layers": tuple(u for _, u in objective.attn_pairs),
                     "hidden_layers": tuple(u for _, u in objective.hidden_pairs)}
  if name == "mocov3":
    kw["heads"] = {"mlp_dim": objective.projector.hidden_dim, "dim": objective.projector.out_dim}
  return accounting.per_image(**kw)


def synthetic_batch(config, mesh):
  """A fixed random batch made on the devices in its sharding: at batch 4096 and 224 px the
  images are 2.5 GB per view, which numpy would take seconds to draw and copy."""
  b, s = config.batch_size, config.model.image_size
  shapes = {"image": (b, s, s, 3)}
  if config.data.view2_ops:
    shapes["image2"] = (b, s, s, 3)

  def make(key):
    keys = jax.random.split(key, len(shapes) + 1)
    out = {k: jax.random.normal(r, shape, jnp.float32)
           for r, (k, shape) in zip(keys, shapes.items())}
    out["label"] = jax.random.randint(keys[-1], (b,), 0, 10, jnp.int32)
    return out

  sharding = mesh_lib.batch_sharding(mesh)
  return jax.jit(make, out_shardings={k: sharding for k in (*shapes, "label")})(
      jax.random.key(0))


# Tokens per micro-batch that keep a ViT-Tiny block's activations (8 x 50 x 768 floats, 1.2 MB)
# in a CPU's cache: on 2 cores the batch-32 MAE step runs ~17 % faster as 4 x 8 than as 1 x 32.
CPU_MICRO_BATCH = 8


def auto_micro_batch(objective: str, batch: int, platform: str) -> int:
  """The benchmark's default gradient-accumulation micro-batch: CPU_MICRO_BATCH on CPU for the
  MAE objectives (same update as the whole batch), none elsewhere. MoCo-v3 is left alone: its
  micro-batches would see fewer negatives, a different objective."""
  if platform == "cpu" and objective in ("mae", "dmae") and batch > CPU_MICRO_BATCH and (
      batch % CPU_MICRO_BATCH == 0):
    return CPU_MICRO_BATCH
  return 0


def time_calls(fn, steps: int, warmup: int) -> list[float]:
  """Per-call wall times after warm-up; fn must block until its result is ready."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def prepare_jax_step(config):
  """Builds and compiles the real training step; returns (one_step, facts for the record).

  one_step runs one step on a fixed synthetic device batch and blocks until it is done.
  """
  from maelite_jax.tasks import registry
  from maelite_jax.train.program import StepProgram
  from maelite_jax.train.validate import validate_config
  mesh = mesh_lib.make_mesh()
  # Bad settings (e.g. a micro-batch that does not divide the batch) fail before compiling; the
  # data config is not checked (and tensorflow not imported): the batches are synthetic.
  validate_config(config, num_devices=mesh.size, check_data=False)
  objective = registry.build(config)
  program = StepProgram(config, objective, mesh, total_steps=config.total_steps,
                        warmup_steps=10)
  state = program.init_state(jax.random.key(0))
  batch = synthetic_batch(config, mesh)
  t0 = time.perf_counter()
  compiled = program.train_step.lower(state, batch, program.frozen).compile()
  compile_s = time.perf_counter() - t0
  counts = model_accounting(objective, program, state, config)
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch, program.frozen)
    jax.block_until_ready(metrics)

  one_step.hlo_text = compiled.as_text  # for bench/profile.py's categories

  b = config.batch_size
  dev = jax.devices()[0]
  cost = _cost(compiled)
  xla_flops = float(cost.get("flops", 0.0)) or None
  xla_bytes = float(cost.get("bytes accessed", 0.0)) or None
  if program.accum > 1:  # XLA counts a loop body once; the loop runs accum x
    xla_flops = xla_flops and xla_flops * program.accum
    xla_bytes = xla_bytes and xla_bytes * program.accum
  dtype = jnp.dtype(objective.model.dtype).name
  facts = dict(compile_s=compile_s, xla_flops_per_step=xla_flops,
               xla_bytes_accessed_per_step=xla_bytes,
               model_flops_per_step=(b * counts["model_flops_per_image"]) if counts else None,
               devices=mesh.size, compute_dtype=dtype, device=f"{mesh.size}x {dev.device_kind}",
               device_kind=dev.device_kind, xla_options=config.xla_options,
               peak=peak_flops(dev.device_kind, dtype) if dev.platform == "gpu" else None,
               **counts)
  return one_step, facts


def profile_steps(one_step, logdir: str, steps: int = 3) -> str:
  """A jax.profiler trace of `steps` warm steps in logdir (TensorBoard's profile plugin or
  xprof read it; bench/profile.py summarises it); returns the .xplane.pb written."""
  import glob
  import os
  one_step()  # compiled and warm before the trace starts
  jax.profiler.start_trace(logdir)
  try:
    for i in range(steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=i):
        one_step()
  finally:
    jax.profiler.stop_trace()
  files = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")),
                 key=os.path.getmtime)
  return files[-1] if files else ""


def jax_step_record(config, facts: dict, times: list[float]) -> dict:
  """The documented JSON fields of one JAX measurement from its step times."""
  median = statistics.median(times)
  flops = facts["model_flops_per_step"] or facts["xla_flops_per_step"]
  peak = facts["peak"]
  rec = dict(step_time_s_median=median, images_per_s=config.batch_size / median,
             compile_s=facts["compile_s"], peak_mem_bytes=peak_memory_bytes(),
             model_flops_per_step=facts["model_flops_per_step"],
             xla_flops_per_step=facts["xla_flops_per_step"],
             xla_bytes_accessed_per_step=facts["xla_bytes_accessed_per_step"],
             achieved_tflops=flops / median / 1e12 if flops else None,
             mfu=(flops / median / (peak * facts["devices"])) if (flops and peak) else None,
             device=facts["device"], compute_dtype=facts["compute_dtype"],
             xla_options=facts["xla_options"])
  for key in ("model_flops_per_image", "model_bytes_per_image", "activation_bytes_per_image",
              "param_bytes_per_step", "model_flop_per_byte"):
    rec[key] = facts.get(key)
  if facts.get("model_bytes_per_image"):
    rec["traffic_ceiling_images_per_s"] = accounting.ceiling_images_per_s(
        facts["model_bytes_per_image"], facts["device_kind"], facts["devices"])
    rec["achieved_bytes_per_s"] = facts["model_bytes_per_image"] * config.batch_size / median
  return rec


def bench_jax_step(config, *, steps: int = 10, warmup: int = 3) -> dict:
  """Compile time, median step time, images/s, FLOPs/MFU of the real training step."""
  one_step, facts = prepare_jax_step(config)
  return jax_step_record(config, facts, time_calls(one_step, steps, warmup))


def prepare_torch_mae_step(model_kwargs: dict, *, batch: int, image_size: int,
                           dtype: str = "float32", micro_batch: int = 0):
  """The equivalent PyTorch step: MAE forward (timm blocks, SDPA), backward, AdamW.

  micro_batch > 0 accumulates gradients over batch / micro_batch chunks, as the JAX step does
  with config.micro_batch_size. Returns (one_step, facts); one_step blocks until it is done.
  """
  import torch
  from maelite_jax.bench.torch_mae import TorchMAE
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  keys = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
          "decoder_num_heads", "mlp_ratio")
  net = TorchMAE(img_size=image_size, **{k: model_kwargs[k] for k in keys if k in model_kwargs}).to(dev)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                          fused=dev == "cuda")
  imgs = torch.randn(batch, 3, image_size, image_size, device=dev)
  n = (image_size // model_kwargs["patch_size"])**2
  amp = dtype == "bfloat16"

  chunk = micro_batch if 0 < micro_batch < batch else batch

  def one_step():
    noise = torch.rand(batch, n, device=dev)
    opt.zero_grad(set_to_none=True)
    for i in range(0, batch, chunk):
      with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        loss, _, _ = net(imgs[i:i + chunk], noise[i:i + chunk])
      (loss * (chunk / batch)).backward()
    opt.step()
    if dev == "cuda":
      torch.cuda.synchronize()
    else:
      loss.item()

  return one_step, dict(torch_device=dev, torch_version=torch.__version__)


def torch_step_record(batch: int, facts: dict, times: list[float]) -> dict:
  median = statistics.median(times)
  return dict(torch_step_time_s_median=median, torch_images_per_s=batch / median, **facts)


def time_interleaved(fns: dict, steps: int, warmup: int) -> dict[str, list[float]]:
  """Per-call wall times of several step functions, run in turns (a, b, a, b, ...).

  On a shared or throttling machine the speed drifts by 10-20 % over a minute; timing the two
  frameworks in alternation exposes both to the same drift, so their ratio is stable even
  when the absolute times are not.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(steps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return times

