"""Plain ViT encoder in flax.linen with timm's parameter names and MAE's numerics.

Parameter tree (so export to timm is one transpose per leaf):
  patch_embed/proj/{kernel,bias}, cls_token, [pos_embed if trainable], blocks_{i}/{norm1,
  attn/{qkv,proj}, norm2, mlp/{fc1,fc2}}, norm, [fc_norm, head].

`VisionTransformer.__call__` takes an optional `keep_ids` (B, K) that selects the visible patch
tokens after the position embedding is added (MAE masking, and the D-MAE teacher that must see
the same tokens), and returns `(output, aux)`; aux holds only the per-layer tokens and attention
logits that were asked for, so nothing else is kept in memory.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maelite_jax.models.posemb import sincos_2d

LN_EPS = 1e-6
# torch's xavier_uniform on a (out, in) matrix; for the patch conv on its (out, in*kh*kw) view.
dense_init = nn.initializers.xavier_uniform()
patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
token_init = nn.initializers.normal(stddev=0.02)


def gelu_exact(x):
  """torch's nn.GELU(): 0.5 x (1 + erf(x / sqrt 2)).

  Written with erf rather than jax.nn.gelu's erfc form: the same function to float32 rounding,
  but XLA's CPU erf is a short polynomial while erfc is not (~8% of a ViT-Tiny CPU step).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0**-0.5)))


def on_tokens(layer, x):
  """Applies a per-token layer (a Dense) to x (..., D) through its 2-D view (tokens, D).

  Why: on a (B, T, D) input the weight gradient contracts over two axes, and XLA:CPU's dot
  canonicalisation then materialises a transposed copy of the output gradient (or input) for
  every layer (~7 % of a ViT-Tiny CPU step); on the 2-D view the same contraction reads both
  operands in place. The reshapes are free (row-major bitcasts) and the function is the same.
  """
  y = layer(x.reshape(-1, x.shape[-1]))
  return y.reshape(x.shape[:-1] + y.shape[-1:])


class DropPath(nn.Module):
  """Stochastic depth per sample (timm's drop_path), rng stream 'droppath'."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool, rate=None):
    """`rate` (may be traced) overrides the attribute: the scanned blocks pass it per layer."""
    rate = self.rate if rate is None else rate
    if deterministic or (isinstance(rate, float) and rate == 0.0):
      return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("droppath"), keep, shape)
    return x * mask.astype(x.dtype) / keep


# cuDNN's fused (flash) attention rejected the MAE decoder's 197 tokens on an H100 (JAX 0.11,
# cuDNN 9): odd lengths go to the next multiple of this, the padded keys masked.
CUDNN_SEQ_MULTIPLE = 8


def attention_length(n: int, implementation: str, pad: int = 0) -> int:
  """The sequence length `fused_attention` runs at: n rounded up to a multiple of `pad` (> 0),
  else, for cuDNN, odd n rounded up to a multiple of CUDNN_SEQ_MULTIPLE (the encoder's 50
  tokens go in as they are); n otherwise."""
  multiple = pad if pad > 0 else (CUDNN_SEQ_MULTIPLE if implementation == "cudnn" and n % 2 else 1)
  return -(-n // multiple) * multiple


def fused_attention(qkv, implementation: str, pad: int = 0):
  """softmax(q k^T / sqrt(d)) v through jax.nn.dot_product_attention, for qkv (B, T, 3, H, d)
  in timm's q | k | v order; returns (B, T, H, d).

  implementation: 'xla' (XLA's own fusion) or 'cudnn' (cuDNN flash attention: never writes the
  (B, H, T, T) probabilities to memory, which dominate MoCo-v3's traffic). When
  `attention_length` asks for more than T, the tokens are zero-padded, every sequence's true
  length goes in as key_value_seq_lengths (padded keys get no weight), and the padded query
  rows are cut off: the same function and gradients as unpadded attention. Only keys are
  masked, so no row is fully masked (such rows are where cuDNN's backward produced NaNs).
  """
  b, n = qkv.shape[:2]
  impl = None if implementation == "xla" else implementation
  target = attention_length(n, implementation, pad)
  lengths = None
  if target != n:
    qkv = jnp.pad(qkv, ((0, 0), (0, target - n), (0, 0), (0, 0), (0, 0)))
    lengths = jnp.full((b,), n, jnp.int32)
  # BTNH slices of the projection: no transposes on the way in or out
  out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                     key_value_seq_lengths=lengths, implementation=impl)
  return out[:, :n]


class Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  attention_impl: str = "einsum"  # "einsum" | "xla" | "cudnn" (jax.nn.dot_product_attention)
  attention_pad: int = 0  # xla/cudnn: pad the sequence to a multiple of this (fused_attention)

  @nn.compact
  def __call__(self, x, return_logits: bool = False):
    b, n, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = on_tokens(nn.Dense(3 * dim, dtype=self.dtype, kernel_init=dense_init, name="qkv"), x)
    # timm row order: q | k | v, each split into heads
    qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
    logits = None
    if self.attention_impl == "einsum" or return_logits:
      # heads-major layout is faster on CPU
      heads = qkv.transpose(2, 0, 3, 1, 4)
      q, k, v = heads[0], heads[1], heads[2]
      logits = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim**-0.5, k)
      attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
      out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3)
    else:
      out = fused_attention(qkv, self.attention_impl, self.attention_pad)
    out = out.reshape(b, n, dim)
    out = on_tokens(nn.Dense(dim, dtype=self.dtype, kernel_init=dense_init, name="proj"), out)
    return out, (logits if return_logits else None)


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    x = on_tokens(nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=dense_init, name="fc1"),
                  x)
    x = gelu_exact(x)
    return on_tokens(nn.Dense(dim, dtype=self.dtype, kernel_init=dense_init, name="fc2"), x)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  attention_impl: str = "einsum"
  attention_pad: int = 0

  @nn.compact
  def __call__(self, x, deterministic: bool = True, return_logits: bool = False, drop_rate=None):
    dim = x.shape[-1]
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    y, logits = Attention(self.num_heads, self.dtype, self.attention_impl, self.attention_pad,
                          name="attn")(y, return_logits)
    x = x + DropPath(self.drop_path)(y, deterministic, drop_rate)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(dim * self.mlp_ratio), self.dtype, name="mlp")(y)
    x = x + DropPath(self.drop_path)(y, deterministic, drop_rate)
    return x, logits


def scan_blocks(block: Block, block_params: list, x, *, deterministic: bool, rates, rng=None,
                remat: bool = False):
  """Runs `len(block_params)` copies of the unbound `block` with jax.lax.scan.

  The per-block params (timm layout, `blocks_{i}`) are stacked inside the step, so checkpoints
  and export keep the unrolled layout while XLA compiles the block body once (compile time
  ~depth x shorter). Drop path: the per-layer rate is scanned too; layer i draws from
  fold_in(rng, i). remat recomputes each block's activations in the backward pass.
  """
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *block_params)
  deterministic = deterministic or rng is None  # blocks are random only through drop path

  def body(h, layer):
    params, rate, i = layer
    rngs = {"droppath": jax.random.fold_in(rng, i)} if rng is not None else {}
    h, _ = block.apply({"params": params}, h, deterministic, False, rate, rngs=rngs)
    return h, None

  if remat:
    body = jax.checkpoint(body)
  layers = (stacked, jnp.asarray(rates, jnp.float32), jnp.arange(len(block_params)))
  return jax.lax.scan(body, x, layers)[0]


def patchify(images, patch_size: int):
  """(B, H, W, C) -> (B, N, p*p*C), each patch laid out (p, q, c) as MAE's targets are."""
  b, h, w, c = images.shape
  gh, gw = h // patch_size, w // patch_size
  x = images.reshape(b, gh, patch_size, gw, patch_size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, patch_size * patch_size * c)


class PatchProjection(nn.Module):
  """timm's stride-p conv `patch_embed.proj` (HWIO kernel (p, p, C, D) + bias), computed as
  patchify + one matmul.

  Non-overlapping patches make the two the same function; the matmul form skips XLA's generic
  convolution (on CPU ~2.5x slower forward+backward) and shares its patchify with MAE's target.
  With `keep_ids` (B, K) only those patches are projected: MAE's masking drops the other 75 %
  anyway, and each patch is projected on its own, so gathering the pixels first is the same
  function at a quarter of the work.
  """
  features: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, keep_ids=None):
    p, c = self.patch_size, images.shape[-1]
    kernel = self.param("kernel", patch_init, (p, p, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    patches = patchify(images, p)
    if keep_ids is not None:
      patches = take_tokens(patches, keep_ids)
    patches, kernel, bias = nn.dtypes.promote_dtype(patches, kernel, bias, dtype=self.dtype)
    return on_tokens(lambda t: t @ kernel.reshape(p * p * c, self.features) + bias, patches)


class PatchEmbed(nn.Module):
  """Non-overlapping patches -> tokens (B, N, D), params named like timm's patch_embed.proj."""
  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, keep_ids=None):
    return PatchProjection(self.embed_dim, self.patch_size, self.dtype, name="proj")(images,
                                                                                     keep_ids)


def take_tokens(x, ids):
  """Gathers tokens x (B, N, D) at ids (B, K) -> (B, K, D); ids must lie in [0, N).

  The ids are always argsort positions, so the gather promises XLA they are in bounds: the
  default fill mode adds a bounds check and select over every gathered element (~1 % of a
  ViT-Tiny CPU step).
  """
  return jnp.take_along_axis(x, ids[:, :, None], axis=1, mode="promise_in_bounds")


class VisionTransformer(nn.Module):
  """ViT encoder. With num_classes > 0 a classifier head follows the pooled features."""
  image_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  embed_dim: int = 192
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  num_classes: int = 0
  global_pool: str = "token"  # "token" (cls) | "avg" (mean of patch tokens, then fc_norm)
  trainable_pos_embed: bool = False  # fine-tuning: a table initialised from sin-cos
  posemb: str = "mae"  # the sin-cos table's layout: "mae" | "mocov3" (halves swapped; posemb.py)
  dtype: Any = jnp.float32
  attention_impl: str = "einsum"
  attention_pad: int = 0     # xla/cudnn attention: pad the tokens to a multiple (0 = as needed)
  scan_blocks: bool = False  # jax.lax.scan over the blocks (when no per-layer outputs are asked)
  remat: bool = False        # recompute block activations in the backward pass (memory)

  @property
  def grid_size(self) -> int:
    if self.image_size % self.patch_size:
      raise ValueError(
          f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
          "set config.model.image_size to a multiple of the patch size")
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid_size**2

  def pos_table(self):
    """(1, 1 + N, D): constant sin-cos, or the trainable table initialised from it."""
    table = sincos_2d(self.embed_dim, self.grid_size, cls_token=True, layout=self.posemb)[None]
    if self.trainable_pos_embed:
      return self.param("pos_embed", lambda *_: jnp.asarray(table))
    return jnp.asarray(table)

  def embed(self, images, keep_ids=None):
    """Patch-embeds NHWC images, adds positions, keeps `keep_ids` patches, prepends cls."""
    _ = self.grid_size  # validates image_size against patch_size before any reshape
    if images.shape[1] != self.image_size or images.shape[2] != self.image_size:
      raise ValueError(f"expected {self.image_size}px images, got shape {images.shape}")
    x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, name="patch_embed")(images,
                                                                                 keep_ids)
    b = x.shape[0]
    pos = self.pos_table().astype(x.dtype)
    patch_pos = pos[:, 1:]
    if keep_ids is not None:  # the positions of the kept patches: (B, K, D)
      patch_pos = take_tokens(jnp.broadcast_to(patch_pos, (b,) + patch_pos.shape[1:]), keep_ids)
    x = x + patch_pos
    cls = self.param("cls_token", token_init, (1, 1, self.embed_dim))
    cls = (cls + pos[:, :1]).astype(x.dtype)
    return jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.embed_dim)), x], axis=1)

  def _scanned(self, x, train: bool, rates):
    params = self.variables["params"]
    block = Block(self.num_heads, self.mlp_ratio, 0.0, self.dtype, self.attention_impl,
                  self.attention_pad, parent=None)
    rng = self.make_rng("droppath") if train and self.drop_path_rate > 0 else None
    return scan_blocks(block, [params[f"blocks_{i}"] for i in range(self.depth)], x,
                       deterministic=not train, rates=rates, rng=rng, remat=self.remat)

  @nn.compact
  def __call__(self, images, *, keep_ids=None, train: bool = False,
               return_tokens: Sequence[int] = (), return_attn_logits: Sequence[int] = (),
               return_features: bool = False):
    """Returns (out, aux).

    out: final normed tokens (B, 1+K, D) when num_classes == 0 and not return_features; pooled
    features (B, D) when return_features; logits (B, num_classes) otherwise.
    aux: {"tokens": {i: block i input after its norm1 is NOT taken; the block i output},
          "attn_logits": {i: (B, H, 1+K, 1+K) pre-softmax logits of block i}} for the requested
    0-based block indices (negative indices count from the end).
    """
    want_tokens = {i % self.depth for i in return_tokens}
    want_logits = {i % self.depth for i in return_attn_logits}
    x = self.embed(images, keep_ids)
    aux = {"tokens": {}, "attn_logits": {}}
    rates = [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]
    # init creates the per-block params unrolled; per-layer outputs need the unrolled loop too
    scanned = self.scan_blocks and not (want_tokens or want_logits or self.is_initializing())
    if scanned:
      x = self._scanned(x, train, rates)
    block_cls = nn.remat(Block, static_argnums=(2, 3)) if self.remat else Block
    for i in range(0 if scanned else self.depth):
      x, logits = block_cls(self.num_heads, self.mlp_ratio, rates[i], self.dtype,
                            self.attention_impl, self.attention_pad,
                            name=f"blocks_{i}")(x, not train, i in want_logits)
      if i in want_tokens:
        aux["tokens"][i] = x
      if i in want_logits:
        aux["attn_logits"][i] = logits
    if self.global_pool == "avg" and (self.num_classes > 0 or return_features):
      feats = x[:, 1:].mean(axis=1)
      feats = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="fc_norm")(feats)
    else:
      x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
      if self.num_classes == 0 and not return_features:
        return x, aux
      feats = x[:, 0]
    if self.num_classes == 0 or return_features:
      return feats, aux
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="head")(feats)
    return head, aux
