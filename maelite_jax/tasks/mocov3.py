"""MoCo-v3 contrastive pre-training as a task of the generic loop.

params = {"encoder": ViT, "projector": MLP, "predictor": MLP}   (trained by the optimizer)
extra  = {"batch_stats": {"projector", "predictor"},             (BatchNorm running averages)
          "momentum": {"encoder", "projector"},                  (the EMA / key encoder)
          "momentum_batch_stats": {"projector"}}
Both live in the checkpointed train state. params["encoder"] is a plain VisionTransformer tree,
so `load_params(workdir)[0]["encoder"]` (with meta["model"] naming the ViT) is the encoder that
evaluation, analysis and export read, as for MAE.

Everything runs on global arrays inside one jit: InfoNCE negatives span the global batch and
BatchNorm statistics are global-batch statistics (SyncBN). With gradient accumulation
(micro_batch_size > 0) both are taken per micro-batch instead, i.e. a smaller effective batch
for negatives and BN: a different objective from the full batch, unlike MAE's exact split.
"""

import jax
import jax.numpy as jnp

from maelite_jax.models import heads
from maelite_jax.models.meta import model_from_config
from maelite_jax.objectives import contrastive as cl
from maelite_jax.tasks.base import Objective
from maelite_jax.tasks.registry import register
from maelite_jax.train.schedule import schedule_lengths
from maelite_jax.utils.errors import ConfigError


def moco_vit_init(encoder_params, rng, cls_init_std: float):
  """MoCo-v3's ViT init on top of ours: cls token ~ N(0, cls_init_std) and each of q, k, v
  xavier-uniform as its own (D, D) matrix (the fused (D, 3D) one would be narrower)."""
  params = dict(encoder_params)
  r_cls, r_qkv = jax.random.split(rng)
  cls = params["cls_token"]
  params["cls_token"] = cls_init_std * jax.random.normal(r_cls, cls.shape, cls.dtype)
  for i, name in enumerate(sorted(k for k in params if k.startswith("blocks_"))):
    block = dict(params[name])
    attn = dict(block["attn"])
    qkv = dict(attn["qkv"])
    dim = qkv["kernel"].shape[0]
    limit = (6.0 / (dim + dim))**0.5
    qkv["kernel"] = jax.random.uniform(jax.random.fold_in(r_qkv, i), qkv["kernel"].shape,
                                       qkv["kernel"].dtype, -limit, limit)
    attn["qkv"] = qkv
    block["attn"] = attn
    params[name] = block
  return params


@register("mocov3")
class MoCoV3(Objective):
  """Base encoder + projector + predictor; momentum encoder + projector as an EMA in `extra`."""

  def __init__(self, config):
    m = config.model
    self.model, self.spec = model_from_config(m)
    dtype = self.model.dtype
    self.projector = heads.projection_mlp(m.mlp_dim, m.dim, dtype)
    self.predictor = heads.prediction_mlp(m.mlp_dim, m.dim, m.predictor_last_bn, dtype)
    self.cls_init_std = m.cls_init_std
    self.freeze_patch_embed = m.freeze_patch_embed
    # freeze_patch_embed (MoCo-v3's stop_grad_conv1): lr 0, so neither Adam nor weight decay
    # moves the random patch projection; the loss also stops its gradient.
    self.frozen_regex = "^encoder/patch_embed/" if m.freeze_patch_embed else ""
    self.temperature = config.moco.temperature
    self.m0 = config.moco.momentum
    # The run length the momentum schedule spans (an epoch-based run reads the dataset's size).
    self.total_steps = schedule_lengths(config)[0]
    if not config.data.view2_ops:
      raise ConfigError("config.data.view2_ops: empty, but MoCo-v3 contrasts two views of each "
                        "image. Give the second view's ops (configs/mocov3_tiny.py's "
                        "two_view_data sets BYOL's asymmetric pair).")

  # ---------------------------------------------------------------- state

  def init(self, rng, example):
    r_enc, r_moco, r_proj, r_pred = jax.random.split(rng, 4)
    images = example["image"][:1]
    encoder = self.model.init({"params": r_enc}, images)["params"]
    encoder = moco_vit_init(encoder, r_moco, self.cls_init_std)
    feats = jnp.zeros((2, self.model.embed_dim), jnp.float32)
    proj = self.projector.init({"params": r_proj}, feats, train=False)
    pred = self.predictor.init({"params": r_pred}, jnp.zeros((2, self.projector.out_dim)),
                               train=False)
    params = {"encoder": encoder, "projector": proj["params"], "predictor": pred["params"]}
    # The momentum branch starts as an exact copy (MoCo-v3's param_m.copy_(param_b)); jit
    # gives each output its own buffer, so donating the state never sees one buffer twice.
    extra = {
        "batch_stats": {"projector": proj["batch_stats"], "predictor": pred["batch_stats"]},
        "momentum": {"encoder": encoder, "projector": proj["params"]},
        "momentum_batch_stats": {"projector": proj["batch_stats"]},
    }
    return params, extra

  def momentum(self, step):
    return cl.momentum_at(step, self.total_steps, self.m0)

  # ---------------------------------------------------------------- forward and loss

  def _encode(self, encoder_params, images, rng):
    feats, _ = self.model.apply({"params": encoder_params}, images, train=True,
                                return_features=True, rngs={"droppath": rng})
    return feats

  def _head(self, head, params, stats, x):
    out, new = head.apply({"params": params, "batch_stats": stats}, x, train=True,
                          mutable=["batch_stats"])
    return out, new["batch_stats"]

  def loss(self, params, extra, batch, rng, step, frozen=None):
    if self.freeze_patch_embed:
      encoder = dict(params["encoder"])
      encoder["patch_embed"] = jax.lax.stop_gradient(encoder["patch_embed"])
      params = dict(params, encoder=encoder)
    x1, x2 = batch["image"], batch["image2"]
    b = x1.shape[0]
    r_q, r_k = jax.random.split(rng)
    # Both views go through the ViT together (no batch coupling there); the heads see one view
    # at a time, as in MoCo-v3, so each BatchNorm normalises over one view's global batch.
    images = jnp.concatenate([x1, x2])
    stats = extra["batch_stats"]
    f = self._encode(params["encoder"], images, r_q)
    z1, proj_stats = self._head(self.projector, params["projector"], stats["projector"], f[:b])
    z2, proj_stats = self._head(self.projector, params["projector"], proj_stats, f[b:])
    q1, pred_stats = self._head(self.predictor, params["predictor"], stats["predictor"], z1)
    q2, pred_stats = self._head(self.predictor, params["predictor"], pred_stats, z2)
    # Keys: the momentum branch, already updated for this step by the previous after_update.
    mom = jax.lax.stop_gradient(extra["momentum"])
    with jax.named_scope("momentum_branch"):  # a label for profiles (bench/profile.py)
      fk = self._encode(mom["encoder"], images, r_k)
      mom_stats = extra["momentum_batch_stats"]["projector"]
      k1, mom_stats = self._head(self.projector, mom["projector"], mom_stats, fk[:b])
      k2, mom_stats = self._head(self.projector, mom["projector"], mom_stats, fk[b:])
    k1, k2 = jax.lax.stop_gradient(k1), jax.lax.stop_gradient(k2)
    loss = cl.symmetric_info_nce(q1, q2, k1, k2, self.temperature)
    new_extra = dict(extra, batch_stats={"projector": proj_stats, "predictor": pred_stats},
                     momentum_batch_stats={"projector": mom_stats})
    metrics = {"loss": loss, "momentum": self.momentum(step),
               "contrast_acc": cl.contrastive_accuracy(q1, k2),
               "align": cl.alignment(k1, k2), "uniform": cl.uniformity(k1)}
    return loss, (metrics, new_extra)

  def post_update(self, params, extra, step):
    """EMA of base encoder + projector into the momentum branch with m(step + 1).

    MoCo-v3 updates the momentum encoder at the start of step t with m(t), just before the key
    forward, from the base weights left by step t - 1's optimizer update. Doing it here, right
    after step t's update with m(t + 1), gives the same weights to step t + 1's keys; at t = 0
    MoCo-v3's update is a no-op (both branches equal the init), which our initial copy matches.
    """
    m = self.momentum(step + 1)
    online = {"encoder": params["encoder"], "projector": params["projector"]}
    return dict(extra, momentum=cl.ema_update(extra["momentum"], online, m))
