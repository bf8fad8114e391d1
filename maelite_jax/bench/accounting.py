"""Analytic FLOPs and memory traffic (bytes) per training image for MAE, D-MAE and MoCo-v3.

Why both: at width 192 a ViT-Tiny matmul does ~150 FLOP per byte it moves, below a GPU's ridge
point (an H100 does ~295 bf16 FLOP per byte of HBM bandwidth), so the step is bound by memory
traffic; bytes per image, not MFU, says how far a step is from its ceiling. XLA's own cost
analysis is recorded next to these numbers, but on GPU it leaves out the matmuls that XLA hands
to cuBLAS (MoCo-v3: 160 GFLOP per step from XLA against ~5,200 analytic at batch 256), so the
FLOPs here are counted from the model's shapes.

FLOPs: 2 per multiply-add of every matmul (attention's QK^T and AV included; softmax, LayerNorm
and GELU are left out, a few percent). A training step costs 3 forward passes (the backward pass
two) for what gets gradients, 1 for what does not (D-MAE's teacher, MoCo-v3's momentum branch).
Padding that a fused-attention kernel adds (vit.fused_attention) is not model work: not counted.

Bytes (a rough, stated model of HBM traffic; `traffic_assumptions()` returns the same text):
- every op reads its inputs and writes its output once in the compute dtype (bf16: 2 bytes);
  XLA fuses each element-wise chain into one kernel, so a LayerNorm, a GELU or a residual add
  costs one read of its inputs and one write; no op's output stays in on-chip memory for the
  next op (Triton GEMM fusion of LayerNorm/GELU into the matmuls would remove those terms);
- attention without a fused kernel writes the (H, T, T) logits, reads them in the softmax,
  writes the probabilities and reads them in the AV matmul (4 passes over H T^2 values); a fused
  (flash) kernel reads q, k, v and writes the output only;
- the backward pass moves twice the forward's bytes (it reads the saved activations and the
  output gradients and writes the input gradients); no-gradient forwards move 1x;
- per step (shared by the batch): the fp32 weights are read to cast them (bf16), the weights
  are read by the forward and the backward matmuls, fp32 gradients are written, the non-finite
  guard reads them, and AdamW reads params, gradients and both moments and writes params and
  moments; MoCo-v3's momentum update reads both branches and writes one;
- the input images are read once per view in float32.
"""

import math

# HBM bandwidth per chip (bytes/s), for the traffic-bound ceiling of the step.
HBM_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12}

# Bytes that AdamW + the non-finite guard + the casts move per fp32 parameter and step, apart
# from the matmuls' reads of the (compute-dtype) weights: gradient write 4, guard read 4, AdamW
# reads p, g, m, v (16) and writes p, m, v (12).
OPTIMIZER_BYTES_PER_PARAM = 36


def hbm_bandwidth(device_kind: str) -> float | None:
  for name, bw in HBM_BANDWIDTH.items():  # 'H100 PCIe' before 'H100'
    if name in device_kind:
      return bw
  return None


def traffic_assumptions() -> str:
  doc = __doc__.split("Bytes (", 1)[1]
  return " ".join(("Bytes (" + doc).split())


# ---------------------------------------------------------------- FLOPs

def vit_forward_flops(tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
  """Matmul FLOPs (2 per multiply-add) of `depth` pre-norm blocks on `tokens` tokens."""
  dense = 2 * tokens * (4 * dim * dim + 2 * mlp_ratio * dim * dim)  # qkv + proj + fc1 + fc2
  attention = 2 * 2 * tokens * tokens * dim  # q k^T and attn v
  return depth * (dense + attention)


def patch_embed_flops(patches: int, patch_size: int, dim: int, in_chans: int = 3) -> float:
  return 2 * patches * patch_size**2 * in_chans * dim


def encoder_forward_flops(enc: dict, patches: int) -> float:
  """A ViT encoder on `patches` patch tokens + cls (MAE: the kept ones; others: all)."""
  return (patch_embed_flops(patches, enc["patch_size"], enc["embed_dim"]) +
          vit_forward_flops(1 + patches, enc["embed_dim"], enc["depth"], enc["mlp_ratio"]))


def mae_forward_flops(kw: dict, image_size: int, mask_ratio: float = 0.75) -> float:
  """One MAE forward: encoder on the kept patches, decoder on all, head on the masked ones."""
  from maelite_jax.models.mae import num_kept
  kw = dict(dict(mlp_ratio=4.0), **kw)
  n = (image_size // kw["patch_size"])**2
  keep = num_kept(n, mask_ratio)
  patch_dim = kw["patch_size"]**2 * 3
  fwd = encoder_forward_flops(kw, keep)
  fwd += 2 * (1 + keep) * kw["embed_dim"] * kw["decoder_embed_dim"]
  fwd += vit_forward_flops(1 + n, kw["decoder_embed_dim"], kw["decoder_depth"], kw["mlp_ratio"])
  fwd += 2 * (n - keep) * kw["decoder_embed_dim"] * patch_dim  # head on the masked patches
  return fwd


def mae_train_flops(kw: dict, image_size: int, mask_ratio: float = 0.75) -> float:
  """Model FLOPs of one MAE training example: 3 x forward (backward costs two forwards)."""
  return 3.0 * mae_forward_flops(kw, image_size, mask_ratio)


def teacher_forward_flops(teacher: dict, tokens: int, attn_layers=(), hidden_layers=()) -> float:
  """D-MAE's frozen teacher on `tokens` tokens, only as deep as the distillation reads it (XLA
  drops the rest): attention layer u (1-based) needs blocks 1..u-1, block u's qkv and QK^T;
  hidden representation u needs blocks 1..u (u = depth: all, + the final norm)."""
  t = dict(dict(mlp_ratio=4.0), **teacher)
  d = t["embed_dim"]
  full = max([u - 1 for u in attn_layers] + list(hidden_layers) + [0])
  flops = patch_embed_flops(tokens - 1, t["patch_size"], d)
  flops += vit_forward_flops(tokens, d, full, t["mlp_ratio"])
  if attn_layers and max(attn_layers) - 1 >= full:  # the deepest layer's logits only
    flops += 2 * tokens * d * 3 * d + 2 * tokens * tokens * d
  return flops


def dmae_train_flops(kw: dict, teacher: dict, image_size: int, mask_ratio: float = 0.75,
                     attn_layers=(12,), hidden_layers=(), attn_pairs: int | None = None,
                     hidden_pairs: int | None = None) -> float:
  """D-MAE: the MAE student (3x) + the frozen teacher's forward on the student's visible
  tokens (1x, as deep as needed: `teacher_forward_flops`; attn_layers / hidden_layers are the
  teacher's distilled layers) + the adapters (3x): a 1x1 conv over heads per distilled
  attention map, a Linear(student dim -> teacher dim) per distilled hidden state."""
  from maelite_jax.models.mae import num_kept
  n = (image_size // kw["patch_size"])**2
  t = 1 + num_kept(n, mask_ratio)
  attn_pairs = len(attn_layers) if attn_pairs is None else attn_pairs
  hidden_pairs = len(hidden_layers) if hidden_pairs is None else hidden_pairs
  adapters = (attn_pairs * 2 * t * t * kw["num_heads"] * teacher["num_heads"] +
              hidden_pairs * 2 * t * kw["embed_dim"] * teacher["embed_dim"])
  return (mae_train_flops(kw, image_size, mask_ratio) +
          teacher_forward_flops(teacher, t, attn_layers, hidden_layers) + 3.0 * adapters)


def mlp_head_flops(in_dim: int, hidden: int, out: int, layers: int) -> float:
  dims = [in_dim] + [hidden] * (layers - 1) + [out]
  return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def mocov3_train_flops(kw: dict, image_size: int, batch: int, mlp_dim: int = 4096,
                       dim: int = 256) -> float:
  """MoCo-v3 per image: two views through the base encoder + projector + predictor (3x) and
  the momentum encoder + projector (1x); the contrastive logits q k^T against the batch's keys,
  two directions (3x: forward and the query's gradient) plus the accuracy monitor's (1x)."""
  kw = dict(dict(mlp_ratio=4.0), **kw)
  n = (image_size // kw["patch_size"])**2
  enc = encoder_forward_flops(kw, n)
  proj = mlp_head_flops(kw["embed_dim"], mlp_dim, dim, 3)
  pred = mlp_head_flops(dim, mlp_dim, dim, 2)
  logits = 2 * batch * dim  # one query against the batch's keys
  return 2 * (3.0 * (enc + proj + pred) + (enc + proj)) + (2 * 2 + 1) * logits


# ---------------------------------------------------------------- bytes

def block_bytes(tokens: int, dim: int, heads: int, mlp_ratio: float, act_bytes: int,
                fused_attention: bool = False) -> float:
  """HBM bytes of one pre-norm block's forward on one example (see the module doc):
  LayerNorm 2, qkv 4, attention 4 (+ 4 H T^2 / D unfused), proj 2, residual 3, LayerNorm 2,
  fc1 1 + r, GELU 2 r, fc2 1 + r, residual 3 (x T D values)."""
  r = mlp_ratio
  per_token = 2 + 4 + 4 + 2 + 3 + 2 + (1 + r) + 2 * r + (1 + r) + 3
  values = per_token * tokens * dim
  if not fused_attention:
    values += 4 * heads * tokens * tokens
  return values * act_bytes


def encoder_forward_bytes(enc: dict, patches: int, act_bytes: int, fused: bool) -> float:
  """Patch embedding (write; pixels are counted as input), position add and cls concat
  (3 passes), the blocks, the final LayerNorm."""
  t, d = 1 + patches, enc["embed_dim"]
  glue = (1 + 3 + 2) * t * d * act_bytes
  return glue + enc["depth"] * block_bytes(t, d, enc["num_heads"], enc["mlp_ratio"], act_bytes,
                                           fused)


def mae_forward_bytes(kw: dict, image_size: int, mask_ratio: float, act_bytes: int,
                      fused: bool) -> float:
  from maelite_jax.models.mae import num_kept
  kw = dict(dict(mlp_ratio=4.0), **kw)
  n = (image_size // kw["patch_size"])**2
  keep = num_kept(n, mask_ratio)
  dd, pd = kw["decoder_embed_dim"], kw["patch_size"]**2 * 3
  total = encoder_forward_bytes(kw, keep, act_bytes, fused)
  # decoder embed (read latent, write), mask tokens + unshuffle (2), positions (3), its norm (2)
  total += ((1 + keep) * (kw["embed_dim"] + dd) + (2 + 3 + 2) * (n + 1) * dd) * act_bytes
  total += kw["decoder_depth"] * block_bytes(n + 1, dd, kw["decoder_num_heads"], kw["mlp_ratio"],
                                             act_bytes, fused)
  # pixel head on the masked patches (gather + write) and the loss (prediction + target, fp32)
  total += (n - keep) * (2 * dd * act_bytes + pd * act_bytes + 2 * pd * 4)
  return total


def image_bytes(image_size: int, views: int = 1) -> float:
  return views * image_size**2 * 3 * 4


def param_bytes_per_step(num_params: int, act_bytes: int, frozen_params: int = 0,
                         momentum_params: int = 0) -> float:
  """Weight, gradient and optimizer traffic of one step (see the module doc)."""
  cast = 6 if act_bytes == 2 else 0  # read fp32, write bf16
  trained = num_params * (OPTIMIZER_BYTES_PER_PARAM + 2 * act_bytes + cast)
  frozen = frozen_params * (act_bytes + cast)  # D-MAE's teacher: cast + one forward
  # MoCo-v3: EMA reads both branches and writes one (12), the key forward reads it (+ cast)
  momentum = momentum_params * (12 + act_bytes + cast)
  return trained + frozen + momentum


def per_image(objective: str, model: dict, image_size: int, batch: int, act_bytes: int,
              fused_attention: bool, mask_ratio: float = 0.75, teacher: dict | None = None,
              heads: dict | None = None, distill: dict | None = None,
              params: dict | None = None) -> dict:
  """The record's accounting fields for one objective (shapes as plain dicts of ints).

  params: {'trained': n, 'frozen': n, 'momentum': n} parameter counts for the per-step
  weight traffic (spread over the batch). distill (D-MAE): the teacher's distilled layers
  {'attn_layers': (u, ...), 'hidden_layers': (u, ...)} and the pair counts (adapters)."""
  model = dict(dict(mlp_ratio=4.0), **model)
  params = params or {}
  n = (image_size // model["patch_size"])**2
  if objective in ("mae", "dmae"):
    flops = mae_train_flops(model, image_size, mask_ratio)
    act = 3 * mae_forward_bytes(model, image_size, mask_ratio, act_bytes, fused_attention)
    act += image_bytes(image_size)
    if objective == "dmae":
      from maelite_jax.models.mae import num_kept
      d = dict(dict(attn_layers=(teacher["depth"],), hidden_layers=()), **(distill or {}))
      flops = dmae_train_flops(model, teacher, image_size, mask_ratio, **d)
      t = dict(dict(mlp_ratio=4.0), **teacher)
      # the teacher's forward (1x; its distilled logits come from the einsum path)
      act += encoder_forward_bytes(t, num_kept(n, mask_ratio), act_bytes, fused_attention)
  elif objective == "mocov3":
    h = heads or {}
    flops = mocov3_train_flops(model, image_size, batch, h.get("mlp_dim", 4096),
                               h.get("dim", 256))
    enc = encoder_forward_bytes(model, n, act_bytes, fused_attention)
    act = 2 * (3 * enc + enc) + image_bytes(image_size, views=2)  # heads: (B, 4096), small
  else:
    raise ValueError(f"no analytic count for objective {objective!r}")
  step = param_bytes_per_step(params.get("trained", 0), act_bytes, params.get("frozen", 0),
                              params.get("momentum", 0))
  total = act + step / batch
  return dict(model_flops_per_image=flops, model_bytes_per_image=total,
              activation_bytes_per_image=act, param_bytes_per_step=step,
              model_flop_per_byte=flops / total)


def ceiling_images_per_s(bytes_per_image: float, device_kind: str, devices: int = 1):
  """The traffic-bound rate: devices x HBM bandwidth / bytes per image (None if unknown)."""
  bw = hbm_bandwidth(device_kind)
  return devices * bw / bytes_per_image if bw and bytes_per_image else None


def count_params(tree) -> int:
  import jax
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
