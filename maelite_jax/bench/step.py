"""Speed measurements: the jitted training step and a PyTorch baseline (the input pipeline:
bench/pipeline.py).

The step is the training loop's own (train/program.py's StepProgram: the objective from the
registry, the optimizer with its lr factors, the non-finite guard, jitted with shardings and
donation), run on synthetic device data, so the input pipeline is measured separately and the
slower of the two is visible. FLOPs: analytic model FLOPs where known, else XLA's cost analysis
of the compiled step (which leaves out cuBLAS matmuls on GPU); MFU = FLOPs / step time / peak.
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from maelite_jax.models.mae import num_kept
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


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get("flops", 0.0)) or None if cost else None


def vit_forward_flops(tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
  """Matmul FLOPs (2 per multiply-add) of `depth` pre-norm blocks on `tokens` tokens."""
  dense = 2 * tokens * (4 * dim * dim + 2 * mlp_ratio * dim * dim)  # qkv + proj + fc1 + fc2
  attention = 2 * 2 * tokens * tokens * dim  # q k^T and attn v
  return depth * (dense + attention)


def mae_train_flops(kw: dict, image_size: int, mask_ratio: float = 0.75) -> float:
  """Model FLOPs of one MAE training example: 3 x forward (backward costs two forwards)."""
  n = (image_size // kw["patch_size"])**2
  keep = num_kept(n, mask_ratio)
  patch_dim = kw["patch_size"]**2 * 3
  fwd = 2 * keep * patch_dim * kw["embed_dim"]  # patch embedding of the kept patches only
  fwd += vit_forward_flops(1 + keep, kw["embed_dim"], kw["depth"], kw.get("mlp_ratio", 4.0))
  fwd += 2 * (1 + keep) * kw["embed_dim"] * kw["decoder_embed_dim"]
  fwd += vit_forward_flops(1 + n, kw["decoder_embed_dim"], kw["decoder_depth"],
                           kw.get("mlp_ratio", 4.0))
  fwd += 2 * (n - keep) * kw["decoder_embed_dim"] * patch_dim  # head on the masked patches
  return 3.0 * fwd


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
  b, s = config.batch_size, config.model.image_size
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(b, s, s, 3)).astype(np.float32),
           "label": rng.integers(0, 10, size=(b,)).astype(np.int32)}
  if config.data.view2_ops:
    batch["image2"] = rng.normal(size=(b, s, s, 3)).astype(np.float32)
  batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
  t0 = time.perf_counter()
  compiled = program.train_step.lower(state, batch, program.frozen).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch, program.frozen)
    jax.block_until_ready(metrics)

  model_flops = None
  if config.objective == "mae":
    from maelite_jax.models import model_kwargs
    kw = model_kwargs(config.model.name, patch_size=config.model.patch_size)
    model_flops = b * mae_train_flops(kw, s, config.model.mask_ratio)
  dev = jax.devices()[0]
  xla_flops = _flops(compiled)
  if xla_flops and program.accum > 1:  # XLA counts a loop body once; the loop runs accum x
    xla_flops *= program.accum
  dtype = jnp.dtype(objective.model.dtype).name
  facts = dict(compile_s=compile_s, xla_flops_per_step=xla_flops,
               model_flops_per_step=model_flops, devices=mesh.size, compute_dtype=dtype,
               device=f"{mesh.size}x {dev.device_kind}",
               peak=peak_flops(dev.device_kind, dtype) if dev.platform == "gpu" else None)
  return one_step, facts


def jax_step_record(config, facts: dict, times: list[float]) -> dict:
  """The documented JSON fields of one JAX measurement from its step times."""
  median = statistics.median(times)
  flops = facts["model_flops_per_step"] or facts["xla_flops_per_step"]
  peak = facts["peak"]
  return dict(step_time_s_median=median, images_per_s=config.batch_size / median,
              compile_s=facts["compile_s"], peak_mem_bytes=peak_memory_bytes(),
              model_flops_per_step=facts["model_flops_per_step"],
              xla_flops_per_step=facts["xla_flops_per_step"],
              achieved_tflops=flops / median / 1e12 if flops else None,
              mfu=(flops / median / (peak * facts["devices"])) if (flops and peak) else None,
              device=facts["device"])


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

