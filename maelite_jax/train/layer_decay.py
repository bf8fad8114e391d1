"""Layer-wise lr decay (BEiT/MAE): lower layers of a pre-trained ViT move less in fine-tuning.

Layer ids follow MAE's `get_layer_id_for_vit`: patch_embed, cls_token and pos_embed are layer 0,
blocks_i is layer i + 1, everything else (norm, fc_norm, head) is layer depth + 1; the lr scale
is decay ** (depth + 1 - layer_id), so the head keeps the full lr. The optimizer multiplies each
update by its scale, which also scales min_lr and decoupled weight decay, as timm's param groups do.
"""

import re

import jax

from maelite_jax.train.mesh import path_str

_BLOCK = re.compile(r"(?:^|/)blocks_(\d+)/")
_EMBED = re.compile(r"(?:^|/)(patch_embed|cls_token|pos_embed)(?:/|$)")


def layer_id(path: str, depth: int) -> int:
  """Layer index of a parameter path such as 'encoder/blocks_3/attn/qkv/kernel'."""
  if _EMBED.search(path):
    return 0
  match = _BLOCK.search(path)
  if match:
    return int(match.group(1)) + 1
  return depth + 1


def encoder_depth(params) -> int:
  """Blocks of the ViT inside a params tree (1 + the highest blocks_i index; decoder_blocks and
  other trees' blocks are not counted)."""
  ids = [int(m.group(1)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
         for m in [_BLOCK.search(path_str(p) + "/")] if m]
  return max(ids) + 1 if ids else 0


def layer_decay_multipliers(params, depth: int, decay: float):
  """A tree like `params` holding each leaf's lr scale (all 1.0 when decay is 1)."""
  def scale(path, _):
    return float(decay ** (depth + 1 - layer_id(path_str(path), depth)))
  return jax.tree_util.tree_map_with_path(scale, params)
