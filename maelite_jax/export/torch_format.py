"""Flax params <-> PyTorch state dicts in timm's ViT and the reference MAE key names.

Our parameter names follow timm's, so a key is the flax path joined by '.', with `blocks_3` ->
`blocks.3` and `kernel`/`scale` -> `weight`; Dense kernels are transposed (flax (in, out), torch
(out, in)) and the patch conv goes HWIO <-> OIHW. The encoder's keys are the same in both formats
(timm's VisionTransformer and MAE's encoder half); 'mae' adds the decoder. Fixed sin-cos tables
are no flax params but torch modules keep them (`pos_embed`, `decoder_pos_embed`), so export
writes them and import checks them, loading `pos_embed` only into a trainable table. A fixed
`pos_embed` comes in MAE's layout or MoCo-v3's (halves swapped, models/posemb.py): import reports
which (`ImportReport.posemb`), and export writes the model's own.
"""

import dataclasses
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from maelite_jax.export import io
from maelite_jax.models import posemb as posemb_lib
from maelite_jax.utils.errors import MissingWeightsError, WeightFileError

FORMATS = ("timm", "mae")
_ORDER = ("cls_token", "pos_embed", "patch_embed", "proj", "blocks", "norm", "fc_norm", "head",
          "decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks", "decoder_norm",
          "decoder_pred", "norm1", "attn", "qkv", "norm2", "mlp", "fc1", "fc2", "weight", "bias")
# A stored sin-cos table matches ours to this tolerance: bfloat16 rounding of values in [-1, 1]
# is at most 2e-3; a trained table moves further.
_SINCOS_TOL = 5e-3


def _check_format(fmt: str):
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _listing(keys: list, limit: int = 12) -> str:
  return str(keys) if len(keys) <= limit else f"{keys[:limit]} and {len(keys) - limit} more"


def torch_key(path: tuple[str, ...]) -> str:
  """('encoder', 'blocks_3', 'attn', 'qkv', 'kernel') -> 'blocks.3.attn.qkv.weight'."""
  if path and path[0] == "encoder":
    path = path[1:]
  parts = [re.sub(r"^(blocks|decoder_blocks)_(\d+)$", r"\1.\2", p) for p in path]
  parts[-1] = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
  return ".".join(parts)


def _sort_key(name: str):
  return tuple((_ORDER.index(p) if p in _ORDER else len(_ORDER), int(p) if p.isdigit() else -1, p)
               for p in name.split("."))


def _to_torch_leaf(path, value):
  value = io.to_numpy(value)
  if path[-1] == "kernel" and value.ndim == 2:
    return value.T
  if path[-1] == "kernel" and value.ndim == 4:  # conv HWIO -> OIHW
    return value.transpose(3, 2, 0, 1)
  return value


def _from_torch_leaf(path, value):
  if path[-1] == "kernel" and value.ndim == 2:
    return value.T
  if path[-1] == "kernel" and value.ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  return value


def _flat(params) -> dict:
  return traverse_util.flatten_dict(params)


def to_torch_state_dict(params: Mapping[str, Any], fmt: str = "timm", *,
                        image_size: int | None = None, dtype: str = "float32",
                        posemb: str = "mae") -> dict:
  """Flax params -> {torch key: numpy array} in 'timm' or 'mae' key names.

  params: a VisionTransformer tree, or a MaskedAutoencoder tree ({'encoder', decoder...}); for
  'timm' an MAE tree contributes its encoder only. image_size is needed to write the fixed
  sin-cos tables (every model here except a fine-tuned one with a trainable pos_embed);
  posemb is the encoder table's layout (the model's `posemb`; an MAE decoder's is always 'mae').
  """
  _check_format(fmt)
  flat = _flat(params)
  is_mae = any(p[0] == "encoder" for p in flat)
  if fmt == "mae" and not is_mae:
    raise WeightFileError("the 'mae' format needs MAE params (with an 'encoder' subtree and the "
                     "decoder); export a ViT with fmt='timm'")
  if fmt == "timm" and is_mae:
    flat = {p: v for p, v in flat.items() if p[0] == "encoder"}
  # D-MAE's adapters / extra distillation block serve pre-training only; no reference key exists.
  flat = {p: v for p, v in flat.items() if not p[0].startswith("distill_")}
  out = {torch_key(p): _to_torch_leaf(p, v) for p, v in flat.items()}

  def table(width, layout="mae"):
    if image_size is None:
      raise ValueError("image_size is needed to write the fixed sin-cos position tables")
    patch = out["patch_embed.proj.weight"].shape[-1]
    return posemb_lib.sincos_table(width, (image_size // patch)**2 + 1, layout)

  if "pos_embed" not in out:
    out["pos_embed"] = table(out["cls_token"].shape[-1], posemb)
  if fmt == "mae":
    out["decoder_pos_embed"] = table(out["mask_token"].shape[-1])
  return io.cast({k: out[k] for k in sorted(out, key=_sort_key)}, dtype)


@dataclasses.dataclass
class ImportReport:
  """What `from_torch_state_dict` did, for logs and for the checkpoint's meta."""
  prefix: str = ""
  missing: list = dataclasses.field(default_factory=list)  # filled from init (allow_missing)
  unexpected: list = dataclasses.field(default_factory=list)  # in the file, not in the model
  skipped: list = dataclasses.field(default_factory=list)  # outside the chosen prefix
  resized: dict = dataclasses.field(default_factory=dict)  # key -> [old tokens, new tokens]
  notes: list = dataclasses.field(default_factory=list)
  # layout of the file's fixed pos_embed ('mae' | 'mocov3'); None: trained, absent or loaded
  posemb: str | None = None

  def summary(self) -> str:
    lines = [f"prefix {self.prefix!r}" if self.prefix else "no prefix"]
    if self.skipped:
      lines.append(f"{len(self.skipped)} keys outside the prefix skipped, e.g. {self.skipped[:3]}")
    decoder = [k for k in self.unexpected if k.startswith(("decoder_", "mask_token"))]
    other = [k for k in self.unexpected if k not in decoder]
    if decoder:
      lines.append(f"MAE decoder not loaded ({len(decoder)} keys; the model is an encoder)")
    if other:
      lines.append(f"unexpected keys (not loaded): {other}")
    if self.missing:
      lines.append(f"missing keys (left at their initial values): {self.missing}")
    lines += [f"resized {k}: {a} -> {b} tokens" for k, (a, b) in self.resized.items()]
    return "; ".join(lines + self.notes)


def _dummy_inputs(model):
  size, chans = model.image_size, model.in_chans
  return jnp.zeros((1, size, size, chans), jnp.float32)


def _init(model, abstract: bool):
  rngs = {"params": jax.random.PRNGKey(0), "masking": jax.random.PRNGKey(1)}
  fn = lambda: model.init(rngs, _dummy_inputs(model))["params"]
  if abstract:
    return jax.eval_shape(fn)
  lowered = jax.jit(fn).lower()
  if jax.default_backend() == "cpu":  # run once: optimising the program costs more than it saves
    return lowered.compile({"xla_backend_optimization_level": 0,
                            "xla_llvm_disable_expensive_passes": True})()
  return lowered.compile()()


def _check_fixed_table(key, value, report, model_layout: str | None = "mae"):
  """A fixed sin-cos target ignores the file's table; it says so when the table was trained.

  The encoder's pos_embed may be in MoCo-v3's layout: the layout found goes to report.posemb.
  A target of another layout is an error when it cannot change (model_layout None: an MAE,
  whose encoder always uses MAE's table) and a note otherwise (scripts/import_torch.py then
  records the file's layout in the checkpoint's model kwargs).
  """
  layouts = posemb_lib.LAYOUTS if key == "pos_embed" else ("mae",)  # MAE decoder: MAE's only
  layout, diff = posemb_lib.match_layout(value, _SINCOS_TOL, layouts)
  if layout is None:
    msg = (f"{key} in the file is not the fixed sin-cos table (max diff {diff:.3g}); the target "
           "model uses fixed sin-cos positions, so it is ignored")
    if key == "pos_embed":
      msg += " (build the target with trainable_pos_embed=True to load it)"
    report.notes.append(msg)
    logging.warning(msg)
    return
  if key != "pos_embed":
    return
  report.posemb = layout
  if layout != (model_layout or "mae"):
    if model_layout is None:
      raise WeightFileError(f"pos_embed in the file is the fixed sin-cos table in {layout!r} "
                            "layout, but this model's encoder always uses MAE's; load it into a "
                            "vit_* model")
    msg = (f"pos_embed in the file is the fixed sin-cos table in {layout!r} layout, not the "
           f"target's {model_layout!r}: build the model with posemb={layout!r} (import_torch.py "
           "records it in the checkpoint)")
    report.notes.append(msg)
    logging.info(msg)


def from_torch_state_dict(state_dict: Mapping[str, Any], fmt: str = "timm", *, model,
                          prefix: str | None = None, allow_missing: bool = False):
  """{torch key: tensor} -> (flax params for `model`, ImportReport).

  model: the flax module to load into (VisionTransformer or MaskedAutoencoder); its parameter
  shapes decide what is read. A pos_embed with another grid is resized (bicubic) for a
  trainable table; a fixed sin-cos target only checks it. Unexpected keys are reported, missing
  ones raise KeyError naming them unless allow_missing (then they keep the model's init).
  """
  _check_format(fmt)
  expected = _flat(_init(model, abstract=True))
  if fmt == "timm" and any(p[0] == "encoder" for p in expected):
    raise WeightFileError("the 'timm' format holds only an encoder; load it into a vit_* model, or "
                     "use fmt='mae' for a whole MAE checkpoint")
  sd, used_prefix, skipped = io.strip_prefix(state_dict, prefix)
  sd = {k: io.to_numpy(v) for k, v in sd.items()}
  report = ImportReport(prefix=used_prefix, skipped=skipped)
  params, missing, bad_shapes = {}, [], []
  for path, leaf in expected.items():
    key = torch_key(path)
    if key not in sd:
      missing.append(key)
      continue
    value = _from_torch_leaf(path, sd.pop(key))
    if key == "pos_embed" and value.shape != leaf.shape:
      report.resized[key] = [value.shape[1], leaf.shape[1]]
      value = np.asarray(posemb_lib.resize_pos_table(value, leaf.shape[1]), np.float32)
    if value.shape != leaf.shape:
      bad_shapes.append(f"{key}: file {tuple(value.shape)} (as flax) vs model {tuple(leaf.shape)}")
      continue
    params[path] = value.astype(leaf.dtype)
  for key in ("pos_embed", "decoder_pos_embed"):
    if key in sd and sd[key].ndim == 3:
      _check_fixed_table(key, sd.pop(key), report, getattr(model, "posemb", None))
  if bad_shapes:
    more = f"; and {len(bad_shapes) - 8} more" if len(bad_shapes) > 8 else ""
    raise WeightFileError("shape mismatch between the file and the model: "
                          + "; ".join(bad_shapes[:8]) + more + ". Check --model, --image-size, "
                          "--num-classes and --model-arg against the file.")
  report.unexpected = sorted(sd, key=_sort_key)
  if missing:
    if not allow_missing:
      raise MissingWeightsError(
          f"the file lacks {len(missing)} weights of the model: {_listing(missing)}. Check the "
                     f"prefix (used {used_prefix!r}), the format and the model arguments "
                     "(e.g. num_classes), or pass allow_missing to keep their initial values")
    init = _flat(_init(model, abstract=False))
    params.update({p: np.asarray(init[p]) for p in expected if torch_key(p) in missing})
    report.missing = missing
  if report.unexpected or report.missing:
    logging.warning("importing weights: %s", report.summary())
  return traverse_util.unflatten_dict({p: params[p] for p in expected}), report


def timm_model_args(model, params: Mapping[str, Any]) -> dict:
  """`timm.create_model(**args)` arguments for a 'timm' export of `model` (ViT or MAE module).

  Head count is not visible in the weights (MAE-Lite's Tiny has 12, timm's stock Tiny 3), so it
  comes from the module; pooling and head come from the params.
  """
  enc = params["encoder"] if "encoder" in params else params
  base = {192: "vit_tiny", 384: "vit_small", 768: "vit_base"}.get(model.embed_dim, "vit_base")
  num_classes = int(np.shape(enc["head"]["bias"])[0]) if "head" in enc else 0
  return {
      "model_name": f"{base}_patch16_224",
      "img_size": model.image_size, "patch_size": model.patch_size, "in_chans": model.in_chans,
      "embed_dim": model.embed_dim, "depth": model.depth, "num_heads": model.num_heads,
      "mlp_ratio": model.mlp_ratio, "num_classes": num_classes,
      "global_pool": "avg" if "fc_norm" in enc else "token",
  }


def mae_model_args(model) -> dict:
  """Constructor arguments of the reference models_mae.MaskedAutoencoderViT for a 'mae' export."""
  names = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
           "decoder_depth", "decoder_num_heads", "mlp_ratio")
  return {"img_size": model.image_size, **{n: getattr(model, n) for n in names}}


_VIT_BY_WIDTH = {192: "vit_tiny_patch16", 384: "vit_small_patch16", 768: "vit_base_patch16"}
# The exporter's JSON keys -> our constructor arguments (timm_model_args / mae_model_args).
_ARG_NAMES = {"img_size": "image_size", "patch_size": "patch_size", "in_chans": "in_chans",
              "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads",
              "mlp_ratio": "mlp_ratio", "num_classes": "num_classes",
              "global_pool": "global_pool", "decoder_embed_dim": "decoder_embed_dim",
              "decoder_depth": "decoder_depth", "decoder_num_heads": "decoder_num_heads"}


def model_from_export_args(args: Mapping[str, Any], hints: Mapping[str, Any] | None = None
                           ) -> tuple[str, str, dict]:
  """(format, registry name, constructor kwargs) from the JSON the exporter writes next to the
  weights (timm_model_args or mae_model_args) and the file's own hints (export writes the
  source model's name, position-table layout and trainability into the safetensors metadata).

  What the JSON cannot say is inferred as the exporter decided it: a 'timm' export with a head
  (num_classes > 0) is a fine-tuned classifier, whose position table is trainable.
  """
  hints = dict(hints or {})
  fmt = hints.get("format") or ("mae" if "decoder_embed_dim" in args else "timm")
  _check_format(fmt)
  kwargs = {ours: args[theirs] for theirs, ours in _ARG_NAMES.items() if theirs in args}
  if fmt == "mae":
    kwargs.pop("num_classes", None)
    kwargs.pop("global_pool", None)
  name = hints.get("model") or _VIT_BY_WIDTH.get(int(args.get("embed_dim", 0)), "")
  if fmt == "mae" and name and not name.startswith("mae_"):
    name = "mae_" + name
  if fmt == "timm":
    name = name[len("mae_"):] if name.startswith("mae_") else name
    kwargs["trainable_pos_embed"] = bool(hints.get("trainable_pos_embed",
                                                   int(args.get("num_classes", 0)) > 0))
  if hints.get("posemb"):
    kwargs["posemb"] = hints["posemb"]
  return fmt, name, kwargs
