"""Reading and writing PyTorch weight files as flat {name: numpy array} dicts.

torch is optional for the core package: safetensors files need only `safetensors` (bfloat16
through ml_dtypes); `.pth` files import torch when they are read or written.
"""

import os
import re
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from maelite_jax.utils.errors import WeightFileError

# Where training scripts nest the weights inside a checkpoint dict (MAE: 'model', Lightning and
# MoCo-v3: 'state_dict').
WRAPPER_KEYS = ("model", "state_dict", "module")
# The key that locates one model inside a file holding several (MoCo-v3: base and momentum).
ANCHOR_KEY = "cls_token"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def is_pth(path: str) -> bool:
  return bool(re.search(r"\.(pth|pt|bin)(\.tar)?$", path))


def stem(path: str) -> str:
  """The weight file's name without its extension: the exporter writes STEM.safetensors,
  STEM.pth (when asked) and STEM.json side by side."""
  return re.sub(r"\.(safetensors|pth(\.tar)?|pt|bin)$", "", path)


def read_export_info(path: str) -> tuple[dict | None, dict, str]:
  """(the exporter's JSON of model arguments or None, hints, JSON path) for a weight file.

  The JSON is STEM.json next to the weights (what scripts/export_torch.py writes); hints come
  from the safetensors metadata of STEM.safetensors when present: 'format', 'model' (our
  registry name), 'posemb', 'trainable_pos_embed'. A JSON that is not the exporter's (no
  'img_size') is ignored.
  """
  import json
  base = stem(os.path.expanduser(path))
  json_path = base + ".json"
  args = None
  if os.path.exists(json_path):
    with open(json_path) as f:
      try:
        args = json.load(f)
      except ValueError:
        args = None
    if not isinstance(args, dict) or "img_size" not in args:
      args = None
  hints = {}
  if os.path.exists(base + ".safetensors"):
    from safetensors import safe_open
    try:
      with safe_open(base + ".safetensors", "np") as f:
        meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - no hints from a damaged file: its loader says what is wrong
      meta = {}
    hints = {k: meta[k] for k in ("format", "model", "posemb") if meta.get(k)}
    if meta.get("trainable_pos_embed") in ("true", "false"):
      hints["trainable_pos_embed"] = meta["trainable_pos_embed"] == "true"
  return args, hints, json_path


def to_numpy(value) -> np.ndarray:
  """A torch tensor, numpy or jax array as numpy; floats (bfloat16 included) become float32."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  value = np.asarray(value)
  if value.dtype == ml_dtypes.bfloat16 or np.issubdtype(value.dtype, np.floating):
    value = value.astype(np.float32)
  return value


def unwrap(checkpoint: Mapping[str, Any]) -> dict:
  """Descends through 'model' / 'state_dict' / 'module' entries to the tensors."""
  while True:
    nested = [k for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)]
    if not nested:
      break
    checkpoint = checkpoint[nested[0]]
  return {k: v for k, v in checkpoint.items() if hasattr(v, "shape")}


def read_state_dict(path: str, allow_pickle: bool = False) -> dict:
  """Loads a .safetensors or .pth/.pth.tar file into {name: float32 numpy array}.

  `.pth` files are unpickled with torch's weights_only loader; allow_pickle=True permits
  arbitrary objects (only for files you trust, e.g. checkpoints that stored an argparse
  Namespace).
  """
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such PyTorch weight file: {path}")
  if os.path.isdir(path):
    raise WeightFileError(f"{path} is a folder, not a weight file: pass the .pth / .pth.tar / "
                          ".safetensors file itself.")
  size = os.path.getsize(path)
  if size == 0:
    raise WeightFileError(f"{path} is empty (0 bytes): the download or copy did not finish. "
                          "Fetch or export it again.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    try:
      loaded = load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors' own error types (rust) vary
      raise WeightFileError(f"{path} ({size} bytes) cannot be read as a .safetensors file "
                            f"({type(e).__name__}: {e}): it is truncated, damaged or of another "
                            "format. Fetch or export it again.") from e
    return {k: to_numpy(v) for k, v in loaded.items()}
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading {path} needs torch (pip install torch); safetensors files "
                      "do not") from e
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except Exception as e:  # noqa: BLE001 - sorted below: refused objects or a damaged file
    # torch's weights_only loader refuses objects by an UnpicklingError saying so; anything
    # else (a zip without its directory, a pickle cut short) is a damaged file, which
    # --allow-pickle would not read either.
    if not allow_pickle and "Weights only load failed" in str(e):
      first = str(e).split("\n")[0][:200]
      raise WeightFileError(f"{path} holds objects other than tensors ({first}); if you trust "
                            "the file, load it with allow_pickle=True (--allow-pickle)") from e
    raise WeightFileError(f"{path} ({size} bytes) cannot be read as a PyTorch file "
                          f"({type(e).__name__}: {_first_line(e)}): it is truncated or damaged. "
                          "Fetch or export it again.") from e
  if not isinstance(checkpoint, Mapping):
    raise WeightFileError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
  return {k: to_numpy(v) for k, v in unwrap(checkpoint).items()}


def _first_line(e: Exception, limit: int = 200) -> str:
  """The first sentence of an error (torch's zip errors go on for a paragraph)."""
  text = str(e).strip().splitlines()
  return (text[0].split(". ")[0] if text else "(no message)")[:limit]


def strip_prefix(state_dict: Mapping[str, Any], prefix: str | None = None):
  """Selects one model's keys and removes their prefix; returns (state_dict, prefix, skipped).

  A DDP `module.` in front of every key is always dropped. With prefix None the prefix is
  found from the key that ends in `cls_token` ('model.' in MAE-Lite files); a file with several
  models must name one (MoCo-v3: 'base_encoder.'). Keys outside the prefix are returned in
  `skipped` so that the caller can say what it left out.
  """
  items = dict(state_dict)
  if items and all(k.startswith("module.") for k in items):
    items = {k[len("module."):]: v for k, v in items.items()}
  if prefix is None:
    found = sorted(k[:-len(ANCHOR_KEY)] for k in items
                   if k == ANCHOR_KEY or k.endswith("." + ANCHOR_KEY))
    if len(found) > 1 and "" not in found:
      raise WeightFileError(f"the file holds several models (prefixes {found}); choose one with "
                       "prefix=... (--prefix), e.g. MoCo-v3's 'base_encoder.'")
    prefix = "" if not found or "" in found else found[0]
  if prefix and prefix.startswith("module.") and not any(k.startswith(prefix) for k in items):
    prefix = prefix[len("module."):]
  if prefix and not prefix.endswith("."):
    prefix += "."
  if not prefix:
    return items, "", []
  selected = {k[len(prefix):]: v for k, v in items.items() if k.startswith(prefix)}
  if not selected:
    raise WeightFileError(f"no key starts with prefix {prefix!r}; keys look like "
                          f"{sorted(items)[:5]}")
  skipped = sorted(k for k in items if not k.startswith(prefix))
  return selected, prefix, skipped


def cast(state_dict: Mapping[str, np.ndarray], dtype: str = "float32") -> dict:
  """Casts floating tensors to 'float32' or 'bfloat16' (integer buffers stay as they are)."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  target = DTYPES[dtype]
  return {k: np.ascontiguousarray(
      v.astype(target) if np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16
      else v) for k, v in state_dict.items()}


def _umask_mode(path: str):
  """Gives a written file the mode any new file gets (0644 under the usual umask 022):
  safetensors' writer creates it 0600, unreadable to the rest of a team."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


def write_safetensors(state_dict: Mapping[str, np.ndarray], path: str, metadata=None) -> str:
  from safetensors.numpy import save_file
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path, metadata=metadata)
  _umask_mode(path)
  return path


def write_pth(state_dict: Mapping[str, np.ndarray], path: str) -> str:
  """A plain torch state dict (what `model.load_state_dict(torch.load(path))` expects)."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"writing {path} needs torch; a .safetensors name needs only "
                      "safetensors") from e
  tensors = {}
  for k, v in state_dict.items():
    if v.dtype == ml_dtypes.bfloat16:  # numpy -> torch has no bfloat16 path
      tensors[k] = torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16)
    else:
      tensors[k] = torch.from_numpy(np.ascontiguousarray(v))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  torch.save(tensors, path)
  return path
