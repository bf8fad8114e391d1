"""Config checks that run before anything is compiled, each naming the key and the fix.

Objective-specific checks (a D-MAE teacher that fits the student, MAE's mask ratio, MoCo-v3's
second view) live in the objective plug-ins, which raise the same ConfigError when built.
"""

import os
import shutil
import tempfile

from maelite_jax.models import list_models
from maelite_jax.models.meta import DTYPES
from maelite_jax.train.optim import OPTIMIZERS, SCHEDULES
from maelite_jax.utils.errors import ConfigError

NONFINITE_POLICIES = ("skip", "rollback", "stop")
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")
BEST_MODES = ("max", "min")


def _fail(key: str, problem: str, fix: str):
  raise ConfigError(f"config.{key}: {problem}. {fix}")


def _choice(config, key: str, choices, what: str = ""):
  node = config
  for part in key.split("."):
    node = node[part]
  if node not in choices:
    _fail(key, f"{node!r} is unknown", f"Use one of {tuple(choices)}{what}.")


def _check_attention(m):
  """cuDNN's fused attention runs only on CUDA GPUs and in bf16/fp16: say so before compiling
  (JAX's own error comes from deep inside the lowering)."""
  pad = m.get("attention_pad", 0)
  if not isinstance(pad, int) or pad < 0:
    _fail("model.attention_pad", f"{pad!r} is not an integer >= 0", "Use 0 (pad only where the "
          "kernel needs it) or a multiple to pad the token sequence to, e.g. 8 or 64.")
  if m.attention_impl != "cudnn":
    return
  import jax
  from maelite_jax.models.meta import resolve_dtype
  if jax.default_backend() != "gpu":
    _fail("model.attention_impl", f"'cudnn' needs a CUDA GPU, this is a {jax.default_backend()}",
          "Use 'einsum' (or 'xla') here; keep 'cudnn' for GPU runs.")
  if resolve_dtype(m.dtype) == jax.numpy.float32:
    _fail("model.attention_impl", "cuDNN's fused attention computes in bfloat16/float16, "
          "model.dtype is float32", "Set model.dtype='auto' (bfloat16 on GPU) or 'bfloat16', or "
          "use attention_impl='einsum'.")


def _check_xla_options(text: str):
  """XLA judges its own options: a trivial program compiled with them fails now, with the
  option named, rather than the train step after minutes of tracing."""
  import jax
  import jax.numpy as jnp
  from maelite_jax.train.step import parse_xla_options
  try:
    options = parse_xla_options(text)
    jax.jit(lambda x: x + 1, compiler_options=options).lower(jnp.zeros(())).compile()
  except Exception as e:  # noqa: BLE001 - XLA's error says which option and why
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    _fail("xla_options", f"XLA rejects {text!r}: {msg}", "Give XLA_FLAGS-style options that "
          "this jaxlib knows, e.g. '--xla_gpu_enable_triton_gemm=false' (a GPU option is "
          "accepted and ignored on CPU), a named set of configs/common.py's XLA_OPTION_SETS "
          "('gpu'), or leave it empty.")


def validate_config(config, *, num_devices: int, workdir: str | None = None,
                    check_data: bool = True):
  """Raises ConfigError naming the bad key and its fix before anything is built.

  check_data=False skips config.data (and its tensorflow import): for synthetic batches.
  """
  m = config.model
  if m.name not in list_models():
    _fail("model.name", f"unknown model {m.name!r}", f"Use one of: {', '.join(list_models())}.")
  if m.image_size <= 0 or m.patch_size <= 0 or m.image_size % m.patch_size:
    _fail("model.image_size", f"{m.image_size} is not a positive multiple of "
          f"model.patch_size={m.patch_size}",
          "Pick an image size divisible by the patch size (e.g. 224/16, 32/4).")
  _choice(config, "model.dtype", DTYPES, " ('auto' = bfloat16 on GPU/TPU, float32 on CPU)")
  _choice(config, "model.attention_impl", ATTENTION_IMPLS)
  _check_attention(m)
  _choice(config, "optim.name", OPTIMIZERS)
  _choice(config, "optim.schedule", SCHEDULES)
  _choice(config, "nonfinite_policy", NONFINITE_POLICIES,
          ": 'skip' drops the update and counts it, 'rollback' restores the last checkpoint "
          "with a lower lr, 'stop' raises and keeps the last good checkpoint")
  if config.best_metric:
    _choice(config, "best_mode", BEST_MODES)
  b = config.batch_size
  if b <= 0:
    _fail("batch_size", f"{b} is not positive", "Use the global batch size, e.g. 4096 (split "
          "over the devices).")
  if b % num_devices:
    _fail("batch_size", f"global batch {b} is not divisible by the {num_devices} devices",
          f"Use a multiple of {num_devices} (the batch is split evenly over devices).")
  mb = config.micro_batch_size
  if mb < 0:
    _fail("micro_batch_size", f"{mb} is negative",
          "Use 0 (the whole batch at once) or a divisor of batch_size.")
  if mb and mb < b:
    if b % mb:
      _fail("micro_batch_size", f"{mb} does not divide batch_size={b}",
            "Use a divisor of batch_size (accumulation steps = batch_size / micro_batch_size).")
    if mb % num_devices:
      _fail("micro_batch_size", f"{mb} is not divisible by the {num_devices} devices",
            f"Use a multiple of {num_devices}.")
  if config.total_steps < 0:
    _fail("total_steps", f"{config.total_steps} is negative",
          "Use a positive number of steps, or 0 to take the run length from total_epochs.")
  if config.total_steps == 0 and config.total_epochs <= 0:
    _fail("total_steps", "neither total_steps nor total_epochs is positive",
          "Set --config.total_steps=N (or --config.total_epochs=E).")
  if config.optim.base_lr <= 0:
    _fail("optim.base_lr", f"{config.optim.base_lr} is not positive", "MAE uses 1.5e-4.")
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if config[key] < 1:
      _fail(key, f"{config[key]} is below 1", "Use an integer >= 1 (keep_checkpoints >= 1: the "
            "final checkpoint is never deleted)." if key == "keep_checkpoints" else
            "Use a step interval >= 1.")
  for key in ("nonfinite_max_consecutive", "nonfinite_window"):
    if config[key] < 1:
      _fail(key, f"{config[key]} is below 1", "Use an integer >= 1 (e.g. 20 / 100).")
  if not 0.0 < config.nonfinite_max_fraction <= 1.0:
    _fail("nonfinite_max_fraction", f"{config.nonfinite_max_fraction} is outside (0, 1]",
          "It is the share of non-finite steps in a window that stops the run; e.g. 0.25.")
  if not 0.0 < config.nonfinite_lr_factor <= 1.0:
    _fail("nonfinite_lr_factor", f"{config.nonfinite_lr_factor} is outside (0, 1]",
          "Each rollback multiplies the lr by it; e.g. 0.5.")
  if config.get("xla_options"):
    _check_xla_options(config.xla_options)
  if check_data:
    from maelite_jax import data as data_lib  # imports tensorflow: only where data is read
    data_lib.validate_data_config(config.data, m.image_size)
  if config.init and not os.path.exists(os.path.expanduser(config.init)):
    _fail("init", f"{config.init} does not exist",
          "Pass a workdir, WORKDIR/checkpoints or a step folder, or leave it empty.")
  if workdir is not None:
    _check_workdir(workdir)


def _check_workdir(workdir: str, min_free_bytes: int = 100 * 2**20, need: str = "checkpoints"):
  """The workdir (or the folder it will be created in) takes a real file, and has room."""
  path = os.path.abspath(workdir)
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise ConfigError(f"--workdir {workdir}: {probe} is a file, not a folder. Choose another "
                      "workdir.")
  try:  # os.access says yes to root on read-only mounts; a real file does not lie
    with tempfile.TemporaryFile(dir=probe, prefix=".maelite_write_probe"):
      pass
  except OSError as e:
    raise ConfigError(f"--workdir {workdir}: cannot write to {probe} ({e.strerror or e}). "
                      "Choose a directory you can write to.") from None
  free = shutil.disk_usage(probe).free
  if free < min_free_bytes:
    raise ConfigError(f"--workdir {workdir}: only {free / 2**20:.0f} MiB free on that disk; "
                      f"{need} need about {min_free_bytes / 2**20:.0f} MiB. Free space or "
                      "choose another workdir.")


def check_checkpoint_space(workdir: str, state_bytes: int):
  """Room for one more checkpoint of this train state (older ones are deleted only after the
  new one is complete), with a margin; checked once the state's size is known."""
  need = max(100 * 2**20, int(1.25 * state_bytes) + 32 * 2**20)
  _check_workdir(workdir, need, f"checkpoints of this {state_bytes / 2**20:.0f} MiB train state")
