"""Model and checkpoint facts in one place: building a model from its config, and the meta
every checkpoint carries so that any tool can rebuild the model it holds.

- `model_from_config(model_cfg, **fixed)`: the registry model `model_cfg.name` with every config
  key that names a constructor argument (image_size, patch_size, depth, mask_ratio,
  num_classes, ...) plus the objective's fixed choices (e.g. a trainable pos_embed for
  fine-tuning). Other keys of config.model (norm_pix_loss, head_init_std, ...) belong to the
  objective, which reads them itself.
- `ModelSpec` (name + constructor arguments, JSON-able) rebuilds the module: `spec.build()`.
- `CheckpointMeta`: what a checkpoint says about itself (objective, model spec, run config,
  per-array checksums, import provenance), read and written as a dict by train/checkpoint.py.
- `encoder_from_meta`: the plain ViT encoder (and its params) inside any checkpoint: MAE,
  D-MAE, MoCo-v3, a fine-tuned classifier, a segmentation backbone, imported weights.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from maelite_jax.models import registry
from maelite_jax.models.vit import VisionTransformer
from maelite_jax.utils.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16")
VIT_FIELDS = frozenset(VisionTransformer.__dataclass_fields__) - {"parent", "name"}
# Where a checkpoint's plain ViT lives in its params: MAE / D-MAE / MoCo-v3 keep it under
# 'encoder', segmentation under 'backbone', a classifier or imported ViT is the whole tree.
ENCODER_KEYS = ("encoder", "backbone")


def resolve_dtype(name: str, platform: str | None = None):
  """The compute dtype of a config's `model.dtype`: 'auto' is bfloat16 on GPU/TPU (what
  MAE-Lite's AMP training computes in) and float32 on CPU, where bfloat16 is emulated and slow.
  Params and optimizer state stay float32 whatever this is."""
  if name not in DTYPES:
    raise ConfigError(f"config.model.dtype: {name!r} is unknown. Use one of {DTYPES} "
                      "('auto' = bfloat16 on accelerators, float32 on CPU).")
  if name == "auto":
    platform = platform or jax.default_backend()
    return jnp.dtype(jnp.float32 if platform == "cpu" else jnp.bfloat16)
  return jnp.dtype(name)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registry name and the constructor arguments that differ from its table (JSON-able)."""
  name: str
  kwargs: dict = dataclasses.field(default_factory=dict)

  def module_kwargs(self, **overrides) -> dict:
    """The constructor arguments for this process's platform: dtype 'auto' resolved, and
    'cudnn' attention (a GPU-only kernel) run as XLA's, the same function, elsewhere, so that
    a model trained with it on a GPU is evaluated, analysed and exported on any machine."""
    kwargs = dict(self.kwargs, **overrides)
    if isinstance(kwargs.get("dtype"), str):
      kwargs["dtype"] = resolve_dtype(kwargs["dtype"])
    if kwargs.get("attention_impl") == "cudnn" and jax.default_backend() != "gpu":
      kwargs["attention_impl"] = "xla"
    return kwargs

  def build(self, **overrides):
    """The flax module; overrides (e.g. image_size) win over the stored arguments."""
    return registry.create_model(self.name, **self.module_kwargs(**overrides))

  def to_dict(self) -> dict:
    return {"name": self.name, "kwargs": dict(self.kwargs)}

  @classmethod
  def from_dict(cls, d: dict | None) -> "ModelSpec":
    d = d or {}
    if not d.get("name"):
      raise ConfigError("the checkpoint's meta names no model: it was not written by this "
                        "project's training, fine-tuning or scripts/import_torch.py (which "
                        "record meta['model'] = {name, kwargs}).")
    return cls(d["name"], dict(d.get("kwargs") or {}))


@dataclasses.dataclass
class CheckpointMeta:
  """What a checkpoint says about itself; stored as JSON next to the arrays."""
  model: ModelSpec
  objective: str = ""             # '' for imported weights
  config: dict | None = None      # the run's config (JSON)
  fingerprint: dict | None = None  # {leaf path: checksum} of the saved tree
  source: dict | None = None      # import provenance (scripts/import_torch.py)
  head: dict | None = None        # segmentation head arguments

  def to_dict(self) -> dict:
    out = {"model": self.model.to_dict(), "objective": self.objective}
    for key in ("config", "fingerprint", "source", "head"):
      if getattr(self, key) is not None:
        out[key] = getattr(self, key)
    return out

  @classmethod
  def from_dict(cls, d: dict | None) -> "CheckpointMeta":
    d = dict(d or {})
    model = d.get("model") or {}
    head = d.get("head") or model.get("segmentation")  # older checkpoints kept it there
    return cls(model=ModelSpec.from_dict(model), objective=d.get("objective") or "",
               config=d.get("config"), fingerprint=d.get("fingerprint"),
               source=d.get("source"), head=head)


def model_from_config(model_cfg, **fixed) -> tuple[Any, ModelSpec]:
  """(flax module, its ModelSpec) for a config's `model` section; `fixed` are the objective's
  own choices (they win over config keys of the same name)."""
  name = model_cfg.name
  if name not in registry.list_models():
    raise ConfigError(f"config.model.name: unknown model {name!r}. Use one of: "
                      f"{', '.join(registry.list_models())}.")
  fields = registry.constructor_fields(name)
  kwargs = {k: model_cfg[k] for k in model_cfg if k in fields and model_cfg[k] is not None}
  kwargs.update({k: v for k, v in fixed.items() if v is not None})
  if "dtype" in kwargs:
    kwargs["dtype"] = str(kwargs["dtype"])
  spec = ModelSpec(name, kwargs)
  return spec.build(), spec


def vit_name(name: str) -> str:
  """The plain ViT of a registry name: 'mae_vit_tiny_patch16' -> 'vit_tiny_patch16'."""
  return name[len("mae_"):] if name.startswith("mae_") else name


def encoder_params(params: dict) -> dict:
  """The plain ViT tree inside a checkpoint's params (see ENCODER_KEYS)."""
  for key in ENCODER_KEYS:
    if key in params:
      return params[key]
  return params


def encoder_from_meta(meta: CheckpointMeta, params: dict, image_size: int | None = None,
                      drop_head: bool = False):
  """(VisionTransformer, its params) of the encoder inside any checkpoint.

  The ViT gets the checkpoint's encoder arguments (heads, depth, patch size, trainable or fixed
  positions, pooling); `image_size` overrides its size (fixed sin-cos positions are recomputed).
  drop_head: a head-less feature extractor; a fine-tuned avg-pool model (no final `norm`) keeps
  its trained fc_norm and pools with it.
  """
  params = dict(encoder_params(params))
  kwargs = {k: v for k, v in meta.model.module_kwargs().items() if k in VIT_FIELDS}
  if image_size:
    kwargs["image_size"] = int(image_size)
  kwargs["trainable_pos_embed"] = "pos_embed" in params
  if drop_head:
    params.pop("head", None)
    kwargs["num_classes"] = 0
    pool = "avg" if "norm" not in params and "fc_norm" in params else "token"
    if pool == "token":
      params.pop("fc_norm", None)
    kwargs["global_pool"] = pool
  name = vit_name(meta.model.name)
  if name in registry.list_models():
    return registry.create_model(name, **kwargs), params
  return VisionTransformer(**kwargs), params
