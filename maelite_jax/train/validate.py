"""Config checks that run before anything is compiled, each naming the key and the fix."""

import os
import shutil

from maelite_jax import data as data_lib
from maelite_jax.models import list_models


class ConfigError(ValueError):
  """A config value that cannot work; the message says which key and what to change."""


def _fail(key: str, problem: str, fix: str):
  raise ConfigError(f"config.{key}: {problem}. {fix}")


def validate_config(config, *, num_devices: int, workdir: str | None = None):
  m = config.model
  if m.name not in list_models():
    _fail("model.name", f"unknown model {m.name!r}", f"Use one of: {', '.join(list_models())}.")
  if m.image_size <= 0 or m.patch_size <= 0 or m.image_size % m.patch_size:
    _fail("model.image_size", f"{m.image_size} is not a positive multiple of "
          f"model.patch_size={m.patch_size}",
          "Pick an image size divisible by the patch size (e.g. 224/16, 32/4).")
  if "mask_ratio" in m and not 0.0 <= m.mask_ratio < 1.0:
    _fail("model.mask_ratio", f"{m.mask_ratio} is outside [0, 1)", "MAE uses 0.75.")
  b = config.batch_size
  if b <= 0 or b % num_devices:
    _fail("batch_size", f"global batch {b} is not divisible by the {num_devices} devices",
          f"Use a multiple of {num_devices} (the batch is split evenly over devices).")
  mb = config.micro_batch_size
  if mb and mb < b:
    if b % mb:
      _fail("micro_batch_size", f"{mb} does not divide batch_size={b}",
            "Use a divisor of batch_size (accumulation steps = batch_size / micro_batch_size).")
    if mb % num_devices:
      _fail("micro_batch_size", f"{mb} is not divisible by the {num_devices} devices",
            f"Use a multiple of {num_devices}.")
  if config.total_steps <= 0 and config.total_epochs <= 0:
    _fail("total_steps", "neither total_steps nor total_epochs is positive",
          "Set --config.total_steps=N (or --config.total_epochs=E).")
  if config.optim.base_lr <= 0:
    _fail("optim.base_lr", f"{config.optim.base_lr} is not positive", "MAE uses 1.5e-4.")
  for key in ("log_every", "checkpoint_every"):
    if config[key] <= 0:
      _fail(key, f"{config[key]} is not positive", "Use a step interval >= 1.")
  try:
    data_lib.validate_data_config(config.data)
  except ValueError as e:
    raise ConfigError(f"config.data: {e}") from None
  if config.init and not os.path.exists(os.path.expanduser(config.init)):
    _fail("init", f"{config.init} does not exist",
          "Pass a workdir, WORKDIR/checkpoints or a step folder, or leave it empty.")
  if workdir is not None:
    _check_workdir(workdir)


def _check_workdir(workdir: str, min_free_bytes: int = 100 * 2**20):
  path = os.path.abspath(workdir)
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.access(probe, os.W_OK):
    raise ConfigError(f"--workdir {workdir}: {probe} is not writable. Choose a directory you can "
                      "write to.")
  free = shutil.disk_usage(probe).free
  if free < min_free_bytes:
    raise ConfigError(f"--workdir {workdir}: only {free / 2**20:.0f} MiB free on that disk; "
                      "checkpoints need more. Free space or choose another workdir.")
