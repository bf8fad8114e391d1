"""PyTorch interop: Flax params <-> timm / MAE state dicts, and the files that carry them."""

from maelite_jax.export.io import read_state_dict, strip_prefix, write_pth, write_safetensors
from maelite_jax.export.torch_format import (FORMATS, ImportReport, from_torch_state_dict,
                                             mae_model_args, model_from_export_args,
                                             timm_model_args, to_torch_state_dict)

__all__ = [
    "FORMATS", "ImportReport", "from_torch_state_dict", "mae_model_args",
    "model_from_export_args", "read_state_dict",
    "strip_prefix", "timm_model_args", "to_torch_state_dict", "write_pth",
    "write_safetensors",
]
