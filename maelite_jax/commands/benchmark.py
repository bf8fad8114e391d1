"""Benchmark the training step (and input pipeline) against an equivalent PyTorch step.

  python scripts/benchmark.py --objective mae --batch 32 --image-size 224 --patch-size 16 \
      --steps 10 --compare-torch --json bench.json [--dtype bfloat16] [--attention cudnn] \
      [--attention-pad N] [--xla-options '--xla_gpu_...=...'] [--profile DIR] \
      [--scan-blocks] [--remat] [--micro-batch-size N]

Flags take hyphens or underscores alike (--compare-torch = --compare_torch).

One JSON record per measurement: objective, image_size, batch, step_time_s_median,
images_per_s, compile_s, peak_mem_bytes, compute_dtype, analytic model_flops_per_image and
model_bytes_per_image (bench/accounting.py) next to XLA's xla_flops_per_step and
xla_bytes_accessed_per_step, traffic_ceiling_images_per_s on known GPUs (+ torch_images_per_s,
mfu on GPU, profile: ms per step by category with --profile), and
how it was taken: date_utc, command, machine (CPU model and cores, accelerator), load_before /
load_after (1-minute load average; on a shared machine > ~1.5 per 2 cores means noisy times).

  python scripts/benchmark.py --pipeline --json pipeline.json

times the input pipeline instead (maelite_jax/bench/pipeline.py): ours against a PyTorch
DataLoader + PIL doing the same ops on real JPEGs, in turns, one record per interpolation with
pipeline_images_per_s, cores, per_core, torch_loader_per_core (+ images per CPU second), and
one for the built-in data.

On CPU the MAE step accumulates gradients over micro-batches of 8 by default (the same update,
cache-sized activations); PyTorch is then timed both ways, whole batch and the same
micro-batches, and jax_over_torch_speed is taken against the faster of the two.
"""

import json
import os
import statistics
import sys

from absl import app, flags, logging

from maelite_jax.utils import machine as machine_lib

_OBJECTIVE = flags.DEFINE_enum("objective", "mae", ["mae", "mocov3", "dmae"], "which step")
_BATCH = flags.DEFINE_list("batch", ["32"], "global batch size(s)")
_IMAGE = flags.DEFINE_list("image_size", ["224"], "image size(s)")
_PATCH = flags.DEFINE_integer("patch_size", 16, "patch size")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (median reported)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "compute dtype ('auto': bfloat16 on GPU/TPU, float32 on CPU)")
_ATTN = flags.DEFINE_enum("attention", "einsum", ["einsum", "xla", "cudnn"], "attention kernel")
_ATTN_PAD = flags.DEFINE_integer(
    "attention_pad", 0, "xla/cudnn attention: pad tokens to a multiple of this, padded keys "
    "masked (0: cudnn pads odd lengths to a multiple of 8; config.model.attention_pad)")
_XLA_OPTIONS = flags.DEFINE_string(
    "xla_options", "", "XLA options of the step, XLA_FLAGS-style (config.xla_options), e.g. "
    "'--xla_gpu_enable_triton_gemm=false', or a named set of configs/common.py's "
    "XLA_OPTION_SETS ('gpu')")
_PROFILE = flags.DEFINE_string(
    "profile", None, "write a jax.profiler trace of a few warm steps (per measurement) under "
    "this folder, and its per-category summary (profile_summary.json); open the trace with "
    "TensorBoard's profile plugin or xprof")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "steps in each --profile trace")
_SCAN = flags.DEFINE_bool("scan_blocks", False, "lax.scan over the encoder blocks")
_REMAT = flags.DEFINE_bool("remat", False, "recompute block activations in the backward pass")
_FSDP = flags.DEFINE_string("fsdp_regex", "", "FSDP rule (config.fsdp_regex)")
_MICRO = flags.DEFINE_integer(
    "micro_batch_size", -1, "gradient accumulation micro-batch; -1 = auto: 8 on CPU for MAE and "
    "D-MAE (cache-sized, the same update), the whole batch elsewhere; 0 = the whole batch")
_TORCH = flags.DEFINE_bool("compare_torch", False, "also time the PyTorch step (MAE)")
_PIPELINE = flags.DEFINE_bool(
    "pipeline", False, "time the input pipeline instead of the step: ours against a PyTorch "
    "DataLoader + PIL on real JPEGs, per core, and ours on the built-in data "
    "(maelite_jax/bench/pipeline.py; uses the first --batch and --image-size, --steps batches "
    "per turn)")
_PIPE_FILES = flags.DEFINE_integer("pipeline_files", 1000, "JPEG files built for --pipeline")
_PIPE_ROUNDS = flags.DEFINE_integer("pipeline_rounds", 3, "turns of each loader (--pipeline)")
_PIPE_INTERP = flags.DEFINE_list("pipeline_interpolation", ["bilinear", "bicubic", "random"],
                                 "crop interpolations compared (--pipeline)")
_PIPE_BUILTIN = flags.DEFINE_bool("pipeline_builtin", True, "--pipeline: also the built-in data")
_PIPE_NO_AA = flags.DEFINE_bool(
    "pipeline_no_antialias", True, "--pipeline: also ours with the crop's plain resize kernel "
    "(data op antialias=False, big_vision's resize: faster, aliasing) against the same PyTorch "
    "loader")
_PIPE_VARIANTS = flags.DEFINE_bool("pipeline_variants", False, "--pipeline: also each tf.data "
                                   "setting turned off, and decode-then-crop")
_PIPE_DIR = flags.DEFINE_string("pipeline_jpeg_dir", "", "--pipeline: an existing ImageFolder "
                                "root (with train/<class>/) instead of the built JPEGs")
_JSON = flags.DEFINE_string("json", None, "write the records to this file")
_CONFIG = flags.DEFINE_string("config", None, "config file[:variant] (default "
                              "configs/<objective>_tiny.py), e.g. configs/mae_tiny.py:cpu")


def make_config(objective, batch, image_size, platform):
  import importlib.util
  from maelite_jax import configs
  path, _, variant = (_CONFIG.value or os.path.join(os.path.dirname(configs.__file__),
                                                    f"{objective}_tiny.py")).partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  with config.unlocked():
    if objective == "dmae" and not _CONFIG.value:
      config.teacher.init = random_teacher(config.teacher.name, _PATCH.value)
    config.batch_size = batch
    from maelite_jax.bench.step import auto_micro_batch
    config.micro_batch_size = (_MICRO.value if _MICRO.value >= 0 else
                               auto_micro_batch(objective, batch, platform))
    config.model.image_size = image_size
    config.model.patch_size = _PATCH.value
    config.model.dtype = _DTYPE.value
    config.model.attention_impl = _ATTN.value
    config.model.attention_pad = _ATTN_PAD.value
    config.xla_options = _XLA_OPTIONS.value
    config.model.scan_blocks = _SCAN.value
    config.model.remat = _REMAT.value
    config.fsdp_regex = _FSDP.value
    config.total_steps = 1000  # schedules (lr, momentum) need a length; no dataset lookup
  return config


def random_teacher(name: str, patch_size: int) -> str:
  """A checkpoint of a randomly initialised teacher (D-MAE's MAE-Base by default): its weights
  do not change the step's speed, and no pre-trained teacher has to be at hand."""
  import atexit
  import shutil
  import tempfile
  import jax
  import jax.numpy as jnp
  from maelite_jax.models import create_model
  from maelite_jax.train.checkpoint import save_params
  name = name or "vit_base_patch16"
  model = create_model(name, patch_size=patch_size)
  size = model.image_size
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  path = tempfile.mkdtemp(prefix="bench_teacher_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)  # ViT-B: ~350 MB
  save_params(path, jax.device_get(params),
              {"model": {"name": name, "kwargs": {"patch_size": patch_size}}})
  return path


def _main(argv):
  if _PIPELINE.value:
    return _pipeline_main()
  import datetime
  import jax
  from maelite_jax.bench import step as benchmark
  run_info = dict(date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"), command=" ".join([os.path.basename(argv[0])] + sys.argv[1:]),
      machine=machine_lib.machine_info())
  records = []
  for image_size in map(int, _IMAGE.value):
    for batch in map(int, _BATCH.value):
      config = make_config(_OBJECTIVE.value, batch, image_size, jax.default_backend())
      micro = config.micro_batch_size
      fns = {}
      fns["jax"], facts = benchmark.prepare_jax_step(config)
      dtype = facts["compute_dtype"]  # 'auto' resolved for this platform
      load_before = os.getloadavg()[0]
      rec = dict(objective=_OBJECTIVE.value, image_size=image_size, batch=batch,
                 patch_size=_PATCH.value, dtype=dtype, attention=_ATTN.value,
                 attention_pad=_ATTN_PAD.value, scan_blocks=_SCAN.value, remat=_REMAT.value,
                 micro_batch_size=micro, jax_version=jax.__version__)
      if _TORCH.value and _OBJECTIVE.value == "mae":
        from maelite_jax.models import model_kwargs
        kw = model_kwargs(config.model.name, patch_size=_PATCH.value)
        fns["torch"], torch_facts = benchmark.prepare_torch_mae_step(
            kw, batch=batch, image_size=image_size, dtype=dtype)
        if 0 < micro < batch:  # PyTorch gets the same accumulation: the ratio is to its best
          fns["torch_micro"], _ = benchmark.prepare_torch_mae_step(
              kw, batch=batch, image_size=image_size, dtype=dtype, micro_batch=micro)
      # JAX and PyTorch steps alternate, so machine drift hits both alike
      times = benchmark.time_interleaved(fns, _STEPS.value, _WARMUP.value)
      rec.update(benchmark.jax_step_record(config, facts, times["jax"]))
      if "torch" in fns:
        rec.update(benchmark.torch_step_record(batch, torch_facts, times["torch"]))
        best = rec["torch_images_per_s"]
        if "torch_micro" in fns:
          rec["torch_micro_images_per_s"] = batch / statistics.median(times["torch_micro"])
          best = max(best, rec["torch_micro_images_per_s"])
        rec["jax_over_torch_speed"] = rec["images_per_s"] / best
      if _PROFILE.value:
        rec.update(_profile(fns["jax"], rec))
      rec.update(run_info, load_before=load_before, load_after=os.getloadavg()[0])
      records.append(rec)
      print(json.dumps(rec), flush=True)
  _print_table(records)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(records, f, indent=1)


def _pipeline_main():
  from maelite_jax.bench import pipeline
  records = pipeline.run(batch=int(_BATCH.value[0]), image_size=int(_IMAGE.value[0]),
                         steps=_STEPS.value, warmup=_WARMUP.value, rounds=_PIPE_ROUNDS.value,
                         files=_PIPE_FILES.value, interpolations=_PIPE_INTERP.value,
                         builtin=_PIPE_BUILTIN.value, variants=_PIPE_VARIANTS.value,
                         jpeg_dir=_PIPE_DIR.value, no_antialias=_PIPE_NO_AA.value)
  for rec in records:
    rec["command"] = " ".join(sys.argv)
    print(json.dumps(rec), flush=True)
  pipeline.print_table(records)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(records, f, indent=1)


def _profile(one_step, rec) -> dict:
  """A trace of a few steps of this measurement in --profile/<name>, and its summary."""
  from maelite_jax.bench import profile as profile_lib
  from maelite_jax.bench import step as benchmark
  name = "{objective}_{image_size}px_b{batch}_{dtype}_{attention}".format(**rec)
  logdir = os.path.join(_PROFILE.value, name)
  xplane = benchmark.profile_steps(one_step, logdir, _PROFILE_STEPS.value)
  summary = profile_lib.summarize(xplane, _PROFILE_STEPS.value, one_step.hlo_text()) if (
      xplane) else {}
  with open(os.path.join(logdir, "profile_summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return dict(profile_dir=logdir, profile=summary.get("per_step_ms"))


def _print_table(records):
  cols = ["objective", "image_size", "batch", "dtype", "attention", "scan_blocks", "remat",
          "step_time_s_median",
          "micro_batch_size", "images_per_s", "compile_s", "mfu", "torch_images_per_s",
          "torch_micro_images_per_s", "jax_over_torch_speed",
          "pipeline_images_per_s"]
  cols = [c for c in cols if any(r.get(c) is not None for r in records)]
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  print(" | ".join(cols))
  for r in records:
    print(" | ".join(fmt(r.get(c, "")) for c in cols))


def parse_flags(argv):
  """absl flags, also spelled with hyphens (--compare-torch, --image-size, ...)."""
  def underscored(arg):
    if not arg.startswith("--"):
      return arg
    name, eq, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value
  return flags.FLAGS([underscored(a) for a in argv])


def main():
  from maelite_jax.utils import cli
  cli.run(_main, flags_parser=parse_flags, verbosity=logging.WARNING)


if __name__ == "__main__":
  main()
