"""Imports PyTorch weights (MAE-Lite, MAE, MoCo-v3, timm, or our own exports) as an orbax checkpoint.

  python scripts/import_torch.py --torch-checkpoint mae_tiny_400e.pth.tar \
      --model mae_vit_tiny_patch16 --out workdirs/mae_tiny_torch
  python scripts/import_torch.py --torch-checkpoint mocov3.pth.tar --prefix base_encoder. \
      --model vit_tiny_patch16 --out workdirs/mocov3_tiny
  python scripts/import_torch.py --torch-checkpoint vit_tiny.safetensors --out workdirs/back

A file written by scripts/export_torch.py needs no model flags: the JSON next to it
(vit_tiny.json: image size, patch size, depth, heads, classes, pooling) and the safetensors
metadata (model name, position table) describe the model; flags given anyway win over them.
The output is a workdir with checkpoints/0 in the training layout (meta names the model), which
`--config.init` of pre-training, fine-tuning and distillation accept. A MoCo-v3 file's fixed
position table (MAE's with its halves swapped) is recognised and kept: meta's model kwargs get
posemb='mocov3'.
"""

import ast
import json
import os

from absl import app, flags, logging

from maelite_jax import export
from maelite_jax.export import io as export_io
from maelite_jax.models.registry import (constructor_fields, create_model, list_models,
                                         model_class, model_kwargs)
from maelite_jax.train.checkpoint import checkpoint_dir, load_params, save_params
from maelite_jax.utils import cli
from maelite_jax.utils.errors import CheckpointError, ConfigError, UserError


def define_flags(fv=flags.FLAGS):
  flags.DEFINE_string("torch-checkpoint", None, ".pth / .pth.tar / .safetensors file.",
                      flag_values=fv)
  flags.DEFINE_enum("model", None, list_models(), "Registry name of the model to load into; "
                    "default: the one named by the exporter's JSON next to the file.",
                    flag_values=fv)
  flags.DEFINE_string("out", None, "Workdir to write the checkpoint into.", flag_values=fv)
  flags.DEFINE_enum("format", None, export.FORMATS,
                    "Key names in the file; default: 'mae' for mae_* models, else 'timm'.",
                    flag_values=fv)
  flags.DEFINE_string("prefix", None, "Key prefix of the model inside the file, e.g. "
                      "'base_encoder.' (MoCo-v3); default: found from the cls_token key.",
                      flag_values=fv)
  flags.DEFINE_integer("image-size", None, "Target image size (position table resized if it "
                       "differs and is trainable).", flag_values=fv)
  flags.DEFINE_integer("num-classes", None, "Classifier head size for fine-tuned weights.",
                       flag_values=fv)
  flags.DEFINE_enum("global-pool", None, ["token", "avg"], "Pooling of a fine-tuned model.",
                    flag_values=fv)
  flags.DEFINE_bool("trainable-pos-embed", None, "Load the file's pos_embed as a trainable table "
                    "(fine-tuned models) instead of the fixed sin-cos one.", flag_values=fv)
  flags.DEFINE_multi_string("model-arg", [], "Other constructor overrides as KEY=VALUE, e.g. "
                            "patch_size=8 or depth=6 (repeatable).", flag_values=fv)
  flags.DEFINE_bool("allow-missing", False, "Keep initial values for weights the file lacks.",
                    flag_values=fv)
  flags.DEFINE_bool("allow-pickle", False, "Unpickle arbitrary objects in a .pth you trust.",
                    flag_values=fv)
  flags.DEFINE_integer("step", 0, "Step number of the written checkpoint.", flag_values=fv)
  flags.mark_flags_as_required(["torch-checkpoint", "out"], flag_values=fv)


def import_checkpoint(torch_checkpoint: str, model: str, out: str, *, fmt: str | None = None,
                      prefix: str | None = None, overrides: dict | None = None,
                      allow_missing: bool = False, allow_pickle: bool = False, step: int = 0):
  """Converts the file and saves it; returns (step dir, ImportReport)."""
  overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
  fmt = fmt or ("mae" if model.startswith("mae_") else "timm")
  target = os.path.join(checkpoint_dir(out), str(step))
  if os.path.exists(target):  # before the conversion: the answer does not depend on it
    raise CheckpointError(f"--out {out} already holds checkpoint step {step} ({target}). Choose "
                          "a new --out (or --step), or delete that checkpoint first.")
  try:
    module = create_model(model, **overrides)
  except TypeError as e:  # an argument the model's constructor does not take
    raise ConfigError(f"--model-arg / --image-size / --num-classes: {model} does not take "
                      f"these arguments ({e}). Check the names against the model.") from None
  state_dict = export.read_state_dict(torch_checkpoint, allow_pickle=allow_pickle)
  params, report = export.from_torch_state_dict(state_dict, fmt, model=module, prefix=prefix,
                                                allow_missing=allow_missing)
  if report.posemb and report.posemb != getattr(module, "posemb", "mae"):
    # a fixed table is no param: the model keeps the file's (MoCo-v3's) layout through its meta,
    # which every tool that rebuilds it (fine-tuning, evaluation, analysis, export) reads
    overrides["posemb"] = report.posemb
  meta = {"model": {"name": model, "kwargs": overrides}, "objective": "",
          "source": {"torch_checkpoint": os.path.abspath(torch_checkpoint), "format": fmt,
                     "prefix": report.prefix, "missing": report.missing,
                     "unexpected": report.unexpected, "resized": report.resized,
                     "posemb": report.posemb, "notes": report.notes}}
  step_dir = save_params(out, params, meta, step=step)
  load_params(step_dir)  # read back and verified against its checksums: the copy is sound
  logging.info("imported %s into %s: %s", torch_checkpoint, step_dir, report.summary())
  return step_dir, report


def _defaults(name: str) -> dict:
  """Every constructor argument of a registry model as built without overrides."""
  cls = model_class(name)
  fields = {k: f.default for k, f in cls.__dataclass_fields__.items()
            if k not in ("parent", "name")}
  return dict(fields, **model_kwargs(name))


def resolve_model(torch_checkpoint: str, model: str | None, fmt: str | None,
                  overrides: dict) -> tuple[str, str | None, dict, str | None]:
  """(model, format, constructor overrides, the JSON read or None): the exporter's JSON next to
  the file (and its safetensors metadata) give the model's sizes, heads, classes, pooling and
  position table; explicit flags (`model`, `fmt`, `overrides`) win over it. Arguments equal to
  the registry model's own are left out, so meta records only what differs."""
  args, hints, json_path = export_io.read_export_info(torch_checkpoint)
  if args is None:
    if model is None:
      raise UserError(f"--model is needed for {torch_checkpoint}: no exporter JSON "
                      f"({json_path}) says which model it holds. Pass a registry name: "
                      f"{', '.join(list_models())}.")
    return model, fmt, overrides, None
  json_fmt, json_model, json_kwargs = export.model_from_export_args(args, hints)
  model = model or json_model
  if model not in list_models():
    raise UserError(f"{json_path} describes a model ({args.get('embed_dim')} wide) that is not "
                    f"in the registry; pass --model (one of {', '.join(list_models())}) and "
                    "its arguments with --model-arg.")
  fields, defaults = constructor_fields(model), _defaults(model)
  merged = {k: v for k, v in json_kwargs.items() if k in fields and defaults.get(k) != v}
  merged.update(overrides)
  logging.info("model arguments from %s: %s", json_path, merged)
  return model, fmt or json_fmt, merged, json_path


def parse_model_args(items) -> dict:
  """['depth=6', 'global_pool=avg'] -> {'depth': 6, 'global_pool': 'avg'}."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--model-arg wants KEY=VALUE, got {item!r}")
    try:
      out[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key.strip()] = value
  return out


def _main(argv, fv=flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from maelite_jax.utils.logs import quiet_library_logs
  quiet_library_logs()
  named = {"image_size": fv["image-size"].value, "num_classes": fv["num-classes"].value,
           "global_pool": fv["global-pool"].value,
           "trainable_pos_embed": fv["trainable-pos-embed"].value}
  overrides = parse_model_args(fv["model-arg"].value)
  overrides.update({k: v for k, v in named.items() if v is not None})
  model, fmt, overrides, _ = resolve_model(fv["torch-checkpoint"].value, fv.model, fv.format,
                                           overrides)
  step_dir, report = import_checkpoint(
      fv["torch-checkpoint"].value, model, fv.out, fmt=fmt, prefix=fv.prefix,
      overrides=overrides, allow_missing=fv["allow-missing"].value,
      allow_pickle=fv["allow-pickle"].value, step=fv.step)
  print(json.dumps({"checkpoint": step_dir, "report": report.summary()}))


def main():
  define_flags()
  cli.run(_main)


if __name__ == "__main__":
  main()
