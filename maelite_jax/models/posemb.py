"""Fixed 2-D sin-cos position embeddings, exactly as MAE's `get_2d_sincos_pos_embed`.

MAE's formula (not big_vision's): omega = 1 / 10000 ** (arange(D/4) / (D/4)); the first half of
the channels encodes the grid's w coordinate, the second half its h coordinate, each as
[sin, cos]; an optional all-zero row for the cls token comes first.

MoCo-v3's vits.py builds the same numbers with `torch.meshgrid(grid_w, grid_h)` ('ij'
indexing), which puts the h coordinate (the row) in the first half: MAE's table with its two
halves swapped. Its checkpoints store that table, so an encoder imported from one must keep it
(layout "mocov3") or it sees transposed positions.
"""

import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("mae", "mocov3")


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  if dim % 2:
    raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
  omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
  omega = 1.0 / 10000**omega
  out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_size: int | tuple[int, int], cls_token: bool = False,
              layout: str = "mae") -> np.ndarray:
  """Returns a float32 table (grid_h * grid_w [+1], dim) in MAE's or MoCo-v3's channel layout."""
  if layout not in LAYOUTS:
    raise ValueError(f"unknown position table layout {layout!r}; choose one of {LAYOUTS}")
  gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
  grid_w, grid_h = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
  # MAE: grid = meshgrid(grid_w, grid_h); emb_h uses grid[0] (the w coordinate) first.
  halves = [_sincos_1d(dim // 2, grid_w), _sincos_1d(dim // 2, grid_h)]
  emb = np.concatenate(halves[::-1] if layout == "mocov3" else halves, axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
  return emb.astype(np.float32)


def sincos_table(dim: int, num_tokens: int, layout: str = "mae") -> np.ndarray:
  """The (1, num_tokens, dim) table with its cls row, for 1 + a square grid of tokens."""
  grid = int(round((num_tokens - 1)**0.5))
  if grid * grid != num_tokens - 1:
    raise ValueError(f"a position table of {num_tokens} tokens is not 1 + a square grid")
  return sincos_2d(dim, grid, cls_token=True, layout=layout)[None]


def match_layout(table: np.ndarray, tol: float,
                 layouts: tuple[str, ...] = LAYOUTS) -> tuple[str | None, float]:
  """(layout, max abs diff) of the fixed table a stored (1, 1 + g*g, D) table is within tol of,
  or (None, smallest diff) when it is none of them (a trained table)."""
  smallest = np.inf
  for layout in layouts:
    try:
      diff = float(np.max(np.abs(table - sincos_table(table.shape[-1], table.shape[1], layout))))
    except ValueError:  # not 1 + a square grid, or a width not divisible by 4
      return None, np.inf
    if diff <= tol:
      return layout, diff
    smallest = min(smallest, diff)
  return None, smallest


def layout_of(meta: dict) -> str:
  """The fixed table layout of the model a checkpoint's meta describes (its model kwargs)."""
  return ((meta.get("model") or {}).get("kwargs") or {}).get("posemb", "mae")


def resize_pos_table(table, num_tokens: int):
  """A (1, 1 + g*g, D) position table resampled to num_tokens as timm's resample_abs_pos_embed
  does (bicubic with antialiasing: jax.image.resize's Keys kernel, a = -0.5, matches torch's
  antialiased bicubic to ~1e-6); the cls row is kept. Traceable under jit."""
  if table.shape[1] == num_tokens:
    return table
  old, new = (int(round((n - 1)**0.5)) for n in (table.shape[1], num_tokens))
  if old * old != table.shape[1] - 1 or new * new != num_tokens - 1:
    raise ValueError(f"cannot resize a position table of {table.shape[1]} tokens to "
                     f"{num_tokens}: only square grids after the cls token are supported")
  dim = table.shape[-1]
  grid = jax.image.resize(jnp.asarray(table[:, 1:], jnp.float32).reshape(1, old, old, dim),
                          (1, new, new, dim), method="bicubic", antialias=True)
  grid = grid.reshape(1, new * new, dim).astype(table.dtype)
  return jnp.concatenate([jnp.asarray(table[:, :1]), grid], axis=1)
