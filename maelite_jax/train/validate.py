"""Config checks that run before anything is compiled, each naming the key and the fix."""

import os
import shutil
import tempfile

from maelite_jax.models import list_models


NONFINITE_POLICIES = ("skip", "rollback", "stop")


class ConfigError(ValueError):
  """A config value that cannot work; the message says which key and what to change."""


def _fail(key: str, problem: str, fix: str):
  raise ConfigError(f"config.{key}: {problem}. {fix}")


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
  if check_data:
    from maelite_jax import data as data_lib  # imports tensorflow: only where data is read
    try:
      data_lib.validate_data_config(config.data)
    except ValueError as e:
      raise ConfigError(f"config.data: {e}") from None
  if config.init and not os.path.exists(os.path.expanduser(config.init)):
    _fail("init", f"{config.init} does not exist",
          "Pass a workdir, WORKDIR/checkpoints or a step folder, or leave it empty.")
  policy = config.get("nonfinite_policy", "skip")
  if policy not in NONFINITE_POLICIES:
    _fail("nonfinite_policy", f"{policy!r} is unknown",
          "Use 'skip' (drop the update, count it), 'rollback' (last checkpoint, lower lr) or "
          "'stop' (error, keep the last good checkpoint).")
  factor = config.get("nonfinite_lr_factor", 0.5)
  if not 0.0 < factor <= 1.0:
    _fail("nonfinite_lr_factor", f"{factor} is outside (0, 1]",
          "Each rollback multiplies the lr by it; e.g. 0.5.")
  if config.objective == "dmae":
    _check_dmae(config)
  if workdir is not None:
    _check_workdir(workdir)


def _check_dmae(config):
  """The teacher exists and cuts the student's patch grid; layers and adapters fit both."""
  from maelite_jax.models import model_kwargs
  from maelite_jax.tasks import dmae
  from maelite_jax.train.checkpoint import load_meta
  t, d, m = config.teacher, config.distill, config.model
  if not t.init or not os.path.exists(os.path.expanduser(t.init)):
    _fail("teacher.init", f"teacher checkpoint {t.init!r} does not exist",
          "Pass the workdir of a pre-training run (`make pretrain` writes runs/mae_tiny_cpu) or "
          "of scripts/import_torch.py (e.g. the official MAE-Base weights).")
  try:
    name, teacher = dmae.teacher_spec(load_meta(t.init))
  except (ValueError, FileNotFoundError, KeyError) as e:
    raise ConfigError(f"config.teacher.init: cannot read the teacher's model from {t.init}: "
                      f"{e}") from None
  if t.name and t.name != name:
    _fail("teacher.name", f"{t.init} holds {name}, not {t.name}",
          f"Use a {t.name} checkpoint or --config.teacher.name={name} ('' accepts any ViT).")
  if teacher.patch_size != m.patch_size:
    _fail("teacher.init", f"the teacher's patch size {teacher.patch_size} differs from the "
          f"student's {m.patch_size}", "The teacher must see the student's patch grid (same "
          "visible tokens); use a teacher with the student's patch size.")
  if teacher.image_size != m.image_size and teacher.trainable_pos_embed:
    _fail("teacher.init", f"the teacher's learned position table is for {teacher.image_size}px, "
          f"the student sees {m.image_size}px", "Use a teacher with fixed sin-cos positions "
          "(a pre-trained, not fine-tuned, encoder) or the student's image size.")
  student = model_kwargs(m.name, depth=m.get("depth"))
  depth = student["depth"]
  if d.d2 and not 1 <= d.d2_decode_layer <= depth:
    _fail("distill.d2_decode_layer", f"{d.d2_decode_layer} is outside 1..{depth}",
          "The decoder reads after that many student blocks (the reference: 8 of 12).")
  for kind, first, s_last in (("attn", 1, depth + bool(d.d2)), ("hidden", 0, depth)):
    s_key, t_key = f"{kind}_student_layers", f"{kind}_teacher_layers"
    try:
      dmae.resolve_layers(d[s_key], s_last, first, s_key)
      dmae.resolve_layers(d[t_key], teacher.depth, first, t_key)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if len(d[s_key]) != len(d[t_key]):
      _fail(f"distill.{s_key}", f"{len(d[s_key])} student layers but {len(d[t_key])} "
            "teacher layers", f"List one teacher layer per student layer in distill.{t_key}.")
    if d[f"{kind}_alpha"] < 0:
      _fail(f"distill.{kind}_alpha", f"{d[f'{kind}_alpha']} is negative", "Use a weight >= 0.")
  if d.attn_student_layers and not d.attn_adapter and student["num_heads"] != teacher.num_heads:
    _fail("distill.attn_adapter", f"off, but the student has {student['num_heads']} heads and "
          f"the teacher {teacher.num_heads}", "Set --config.distill.attn_adapter=True.")
  if (d.hidden_student_layers and not d.hidden_adapter
      and student["embed_dim"] != teacher.embed_dim):
    _fail("distill.hidden_adapter", f"off, but the student is {student['embed_dim']} wide and "
          f"the teacher {teacher.embed_dim}", "Set --config.distill.hidden_adapter=True.")


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
