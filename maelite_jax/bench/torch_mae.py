"""MAE written in PyTorch from the reference formulas (models_mae.py with timm's blocks),
independent of the Flax code.

The PyTorch baseline of the benchmark (eager, SDPA attention, what the reference trains) and the
reference of the parity tests (same weights, same noise -> same loss). Its module names are
timm's, so it loads the `mae` export format (`to_torch_state_dict(params, 'mae')`) with
strict=True. Needs only torch (an optional dependency: `pip install maelite-jax[torch]`).
"""

import functools

import torch
import torch.nn.functional as F


class Attention(torch.nn.Module):
  """timm's Attention (qkv with bias, SDPA, proj)."""

  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = torch.nn.Linear(dim, dim * 3)
    self.proj = torch.nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(torch.nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = torch.nn.Linear(dim, hidden)
    self.act = torch.nn.GELU()  # exact (erf), as timm's
    self.fc2 = torch.nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(torch.nn.Module):
  """timm's pre-norm ViT block (LayerNorm eps 1e-6)."""

  def __init__(self, dim, num_heads, mlp_ratio):
    super().__init__()
    self.norm1 = torch.nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TorchMAE(torch.nn.Module):
  """models_mae.MaskedAutoencoderViT's forward, with an explicit noise input."""

  def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, decoder_embed_dim,
               decoder_depth, decoder_num_heads, mlp_ratio=4.0, in_chans=3):
    super().__init__()
    nn = torch.nn
    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    num_patches = (img_size // patch_size)**2
    self.patch_size = patch_size
    self.patch_embed = nn.Module()
    self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.register_buffer("pos_embed", torch.zeros(1, num_patches + 1, embed_dim))
    self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
    self.norm = norm(embed_dim)
    self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
    self.register_buffer("decoder_pos_embed", torch.zeros(1, num_patches + 1, decoder_embed_dim))
    self.decoder_blocks = nn.ModuleList(
        Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth))
    self.decoder_norm = norm(decoder_embed_dim)
    self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)

  def patchify(self, imgs):  # (B, C, H, W) -> (B, N, p*p*C) in (h, w, p, q, c) order
    b, c, height, width = imgs.shape
    p = self.patch_size
    x = imgs.reshape(b, c, height // p, p, width // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (height // p) * (width // p), p * p * c)

  def forward(self, imgs, noise, mask_ratio=0.75):
    x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
    b, n, d = x.shape
    keep = int(n * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(b, n, device=imgs.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in self.blocks:
      x = blk(x)
    x = self.decoder_embed(self.norm(x))
    tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - keep, -1).to(x.dtype)], dim=1)
    tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[-1]))
    x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
    for blk in self.decoder_blocks:
      x = blk(x)
    pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
    target = self.patchify(imgs).float()
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)  # unbiased
    target = (target - mean) / (var + 1e-6)**0.5
    loss = ((pred.float() - target)**2).mean(-1)
    return (loss * mask).sum() / mask.sum(), pred, mask
