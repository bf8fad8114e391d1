"""Exports a checkpoint of this project to PyTorch: timm's ViT or the reference MAE model.

  python scripts/export_torch.py --checkpoint WORKDIR --out vit_tiny.safetensors
  python scripts/export_torch.py --checkpoint WORKDIR/checkpoints/1000 --out mae.pth --format mae

Writes FILE.safetensors (and FILE.pth when the name ends in .pth) plus FILE.json with the model
arguments: `timm.create_model(**json)` for 'timm', models_mae.MaskedAutoencoderViT(**json) for
'mae'. The model is rebuilt from the checkpoint's meta, which says which sizes and heads it has.
scripts/import_torch.py reads FILE.json (and the safetensors metadata: our model name, the
position table's layout and trainability) back, so a round trip needs no model flags.
"""

import json

from absl import app, flags, logging

from maelite_jax import export
from maelite_jax.export import io
from maelite_jax.models.meta import CheckpointMeta, vit_name
from maelite_jax.train.checkpoint import load_params
from maelite_jax.utils import cli


def define_flags(fv=flags.FLAGS):
  flags.DEFINE_string("checkpoint", None, "Workdir, its checkpoints/ folder or a step folder.",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "Output file: NAME.safetensors, or NAME.pth for both.",
                      flag_values=fv)
  flags.DEFINE_enum("format", "timm", export.FORMATS,
                    "timm: the encoder (and head) as timm's VisionTransformer; mae: the whole MAE "
                    "model in the reference models_mae.py names.", flag_values=fv)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Tensor dtype in the file.",
                    flag_values=fv)
  flags.mark_flags_as_required(["checkpoint", "out"], flag_values=fv)


def output_paths(out: str) -> dict:
  """{'safetensors', 'pth' (or None), 'json'} for the --out name."""
  stem = io.stem(out)
  return {"safetensors": stem + ".safetensors", "pth": out if io.is_pth(out) else None,
          "json": stem + ".json"}


def export_checkpoint(checkpoint: str, out: str, fmt: str = "timm", dtype: str = "float32") -> dict:
  """Writes the files; returns their paths (see output_paths)."""
  params, meta = load_params(checkpoint)
  meta = CheckpointMeta.from_dict(meta)
  name = meta.model.name
  model = meta.model.build()
  state_dict = export.to_torch_state_dict(params, fmt, image_size=model.image_size, dtype=dtype,
                                          posemb=getattr(model, "posemb", "mae"))
  args = export.timm_model_args(model, params) if fmt == "timm" else export.mae_model_args(model)
  paths = output_paths(out)
  # What the JSON (timm's or MAE's constructor arguments) cannot hold, for scripts/import_torch.py
  hints = {"format": fmt, "source_model": name,
           "model": vit_name(name) if fmt == "timm" else name,
           "posemb": getattr(model, "posemb", "mae"),
           "trainable_pos_embed": str(bool(getattr(model, "trainable_pos_embed", False))).lower()}
  io.write_safetensors(state_dict, paths["safetensors"], metadata=hints)
  if paths["pth"]:
    io.write_pth(state_dict, paths["pth"])
  with open(paths["json"], "w") as f:
    json.dump(args, f, indent=2)
  logging.info("exported %s (%d tensors, %s, %s format) to %s", name, len(state_dict), dtype, fmt,
               ", ".join(p for p in paths.values() if p))
  return paths


def _main(argv, fv=flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from maelite_jax.utils.logs import quiet_library_logs
  quiet_library_logs()
  paths = export_checkpoint(fv.checkpoint, fv.out, fv.format, fv.dtype)
  print(json.dumps(paths))


def main():
  define_flags()
  cli.run(_main)


if __name__ == "__main__":
  main()
