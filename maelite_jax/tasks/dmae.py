"""D-MAE: MAE pre-training of a small student guided by a frozen teacher (MAE-Lite's D-MAE/D2-MAE).

The teacher is any registry ViT loaded from a checkpoint of this project (our own pre-training
runs, or PyTorch weights converted by scripts/import_torch.py). Its params are the task's
`frozen` tree: the loop places them on the mesh and passes them into the jitted step as an
argument, so they are never differentiated, updated or written into the student's checkpoints.
The teacher encodes exactly the student's visible tokens (the student's ids_keep).

Layer numbering follows the reference: attention layer i (1-based) is block i; hidden
representation i (0..depth) is block i's input after its norm1 (i < depth) or the final norm
output (i == depth); negative numbers count from the end (-1 = last). With D2 the student has an
extra logits-only block, attention layer depth + 1 (what -1 then means), and the pixel decoder
reads norm(x) after `d2_decode_layer` blocks.

Student params = the MAE tree + 'distill_adapters' (+ 'distill_block' with D2): adapters are
trained and weight-decayed with the student, and params['encoder'] stays a plain ViT for
downstream use.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from maelite_jax.models.d2 import AttentionLogitsBlock
from maelite_jax.models.mae import (MaskedAutoencoder, encoder_module, masked_patch_ids,
                                    random_masking_ids)
from maelite_jax.models.meta import CheckpointMeta, encoder_from_meta, resolve_dtype, vit_name
from maelite_jax.models.vit import LN_EPS
from maelite_jax.objectives import distill as distill_obj
from maelite_jax.objectives import mae as mae_obj
from maelite_jax.tasks.mae import MAE
from maelite_jax.tasks.registry import register
from maelite_jax.train import checkpoint as ckpt_lib
from maelite_jax.utils.errors import ConfigError

DISTILL_KEYS = ("distill_adapters", "distill_block")
# torch's default init of the reference's Conv2d / Linear adapters: U(+-1/sqrt(fan_in)).
adapter_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def resolve_layers(layers, last: int, first: int, key: str) -> tuple[int, ...]:
  """Layer numbers with negatives counted from the end (-1 = last); range-checked."""
  out = []
  for i in layers:
    j = last + 1 + i if i < 0 else i
    if not first <= j <= last:
      raise ConfigError(f"config.distill.{key}: layer {i} is outside {first}..{last} (or -1 "
                        "for the last). Number layers from 1 (attention) or 0 (hidden), or "
                        "count from the end with negatives.")
    out.append(j)
  return tuple(out)


def _fail(key, problem, fix):
  raise ConfigError(f"config.{key}: {problem}. {fix}")


def load_teacher(config):
  """(teacher ViT run at the student's size / dtype / attention, its params) from
  config.teacher.init, checked against the student: it must see the student's patch grid."""
  t, m = config.teacher, config.model
  if not t.init or not os.path.exists(os.path.expanduser(t.init)):
    _fail("teacher.init", f"teacher checkpoint {t.init!r} does not exist",
          "Pass the workdir of a pre-training run (`make pretrain` writes runs/mae_tiny_cpu) or "
          "of scripts/import_torch.py (e.g. the official MAE-Base weights).")
  try:
    meta = CheckpointMeta.from_dict(ckpt_lib.load_meta(t.init))
  except (ValueError, FileNotFoundError, KeyError) as e:
    raise ConfigError(f"config.teacher.init: cannot read the teacher's model from {t.init}: "
                      f"{e}") from None
  name = vit_name(meta.model.name)
  if t.name and t.name != name:
    _fail("teacher.name", f"{t.init} holds {name}, not {t.name}",
          f"Use a {t.name} checkpoint or --config.teacher.name={name} ('' accepts any ViT).")
  params, _ = ckpt_lib.load_params(os.path.abspath(os.path.expanduser(t.init)))
  teacher, params = encoder_from_meta(meta, params)
  if teacher.patch_size != m.patch_size:
    _fail("teacher.init", f"the teacher's patch size {teacher.patch_size} differs from the "
          f"student's {m.patch_size}", "The teacher must see the student's patch grid (same "
          "visible tokens); use a teacher with the student's patch size.")
  if teacher.image_size != m.image_size and teacher.trainable_pos_embed:
    _fail("teacher.init", f"the teacher's learned position table is for {teacher.image_size}px, "
          f"the student sees {m.image_size}px", "Use a teacher with fixed sin-cos positions "
          "(a pre-trained, not fine-tuned, encoder) or the student's image size.")
  teacher = teacher.clone(image_size=m.image_size, dtype=resolve_dtype(m.dtype),
                          attention_impl=m.attention_impl, attention_pad=m.attention_pad)
  return teacher, params


def encode(model, params, images, keep_ids, *, attn=(), tokens=(), hidden=(), train=False,
           rngs=None):
  """A ViT on the kept tokens; returns (out, aux, {i: hidden representation i}).

  attn / tokens: 0-based blocks whose logits / outputs go into aux; hidden: representation
  numbers (see module doc), read with capture_intermediates from exactly those LayerNorms.
  """
  kwargs = dict(keep_ids=keep_ids, train=train, return_attn_logits=tuple(attn),
                return_tokens=tuple(tokens), rngs=rngs or {})
  paths = {i: (f"blocks_{i}", "norm1") if i < model.depth else ("norm",) for i in hidden}
  if not paths:
    out, aux = model.apply({"params": params}, images, **kwargs)
    return out, aux, {}
  wanted = set(paths.values())
  (out, aux), state = model.apply(
      {"params": params}, images, mutable=["intermediates"],
      capture_intermediates=lambda m, name: name == "__call__" and tuple(m.path) in wanted,
      **kwargs)
  found = {}
  for i, path in paths.items():
    node = state["intermediates"]
    for k in path:
      node = node[k]
    found[i] = node["__call__"][0]
  return out, aux, found


@register("dmae")
class DMAE(MAE):
  """The MAE student + distillation adapters (+ D2's block); the teacher is `frozen`."""

  def __init__(self, config):
    super().__init__(config)
    m, d = self.model, config.distill
    self.encoder = encoder_module(m)
    self.teacher, teacher_params = load_teacher(config)
    self.frozen = {"teacher": teacher_params}
    self.d2 = bool(d.d2)
    depth, t_depth = m.depth, self.teacher.depth
    if self.d2 and not 1 <= d.d2_decode_layer <= depth:
      _fail("distill.d2_decode_layer", f"{d.d2_decode_layer} is outside 1..{depth}",
            "The decoder reads after that many student blocks (the reference: 8 of 12).")
    self.decode_layer = d.d2_decode_layer if self.d2 else depth
    for kind in ("attn", "hidden"):
      s_key, t_key = f"{kind}_student_layers", f"{kind}_teacher_layers"
      if len(d[s_key]) != len(d[t_key]):
        _fail(f"distill.{s_key}", f"{len(d[s_key])} student layers but {len(d[t_key])} "
              "teacher layers", f"List one teacher layer per student layer in distill.{t_key}.")
      if d[f"{kind}_alpha"] < 0:
        _fail(f"distill.{kind}_alpha", f"{d[f'{kind}_alpha']} is negative", "Use a weight >= 0.")
    self.attn_pairs = tuple(zip(
        resolve_layers(d.attn_student_layers, depth + self.d2, 1, "attn_student_layers"),
        resolve_layers(d.attn_teacher_layers, t_depth, 1, "attn_teacher_layers")))
    self.hidden_pairs = tuple(zip(
        resolve_layers(d.hidden_student_layers, depth, 0, "hidden_student_layers"),
        resolve_layers(d.hidden_teacher_layers, t_depth, 0, "hidden_teacher_layers")))
    if self.attn_pairs and not d.attn_adapter and m.num_heads != self.teacher.num_heads:
      _fail("distill.attn_adapter", f"off, but the student has {m.num_heads} heads and the "
            f"teacher {self.teacher.num_heads}", "Set --config.distill.attn_adapter=True.")
    if self.hidden_pairs and not d.hidden_adapter and m.embed_dim != self.teacher.embed_dim:
      _fail("distill.hidden_adapter", f"off, but the student is {m.embed_dim} wide and the "
            f"teacher {self.teacher.embed_dim}", "Set --config.distill.hidden_adapter=True.")
    self.attn_alpha, self.hidden_alpha = d.attn_alpha, d.hidden_alpha
    self.attn_adapter, self.hidden_adapter = d.attn_adapter, d.hidden_adapter

  def init(self, rng, example):
    rng_mae, rng_adapt, rng_d2 = jax.random.split(rng, 3)
    params, extra = super().init(rng_mae, example)
    m, t = self.encoder, self.teacher
    adapters = {}
    shapes = ([(f"attn_s{s}_t{u}", (m.num_heads, t.num_heads)) for s, u in self.attn_pairs
               if self.attn_adapter] +
              [(f"hidden_s{s}_t{u}", (m.embed_dim, t.embed_dim)) for s, u in self.hidden_pairs
               if self.hidden_adapter])
    for k, (name, shape) in enumerate(shapes):
      adapters[name] = {"kernel": adapter_init(jax.random.fold_in(rng_adapt, k), shape)}
    params = dict(params)
    if adapters:
      params["distill_adapters"] = adapters
    if self.d2:
      tokens = jnp.zeros((1, 1 + m.num_patches, m.embed_dim), m.dtype)
      params["distill_block"] = self._d2_block().init(rng_d2, tokens)["params"]
    return params, extra

  def _d2_block(self):
    return AttentionLogitsBlock(self.encoder.num_heads, self.encoder.dtype)

  def student_forward(self, params, images, noise, *, train=False, rng=None, masked_only=False):
    """The student MAE; returns dict(pred, mask, ids_keep, attn={layer: logits},
    hidden={layer: tokens}) with layers numbered as in the config.

    masked_only: pred covers only the masked patches, listed in the extra output pred_ids
    (what the loss needs; see MaskedAutoencoder)."""
    depth = self.encoder.depth
    ids_keep, ids_restore, mask = random_masking_ids(noise, self.model.mask_ratio)
    attn_layers = sorted({s for s, _ in self.attn_pairs if s <= depth})
    tokens = (self.decode_layer - 1, depth - 1) if self.d2 else ()
    latent, aux, hidden = encode(
        self.encoder, params["encoder"], images, ids_keep, attn=[s - 1 for s in attn_layers],
        tokens=tokens, hidden=sorted({s for s, _ in self.hidden_pairs}), train=train,
        rngs={"droppath": rng} if rng is not None else None)
    attn = {s: aux["attn_logits"][s - 1] for s in attn_layers}
    if self.d2:
      norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.encoder.dtype)
      latent = norm.apply({"params": params["encoder"]["norm"]},
                          aux["tokens"][self.decode_layer - 1])
      attn[depth + 1] = self._d2_block().apply({"params": params["distill_block"]},
                                                aux["tokens"][depth - 1])
    mae_params = {k: v for k, v in params.items() if k not in DISTILL_KEYS}
    pred_ids = masked_patch_ids(noise, self.model.mask_ratio) if masked_only else None
    pred = self.model.apply({"params": mae_params}, latent, ids_restore, pred_ids,
                            method=MaskedAutoencoder.decode)
    return dict(pred=pred, pred_ids=pred_ids, mask=mask, ids_keep=ids_keep, attn=attn,
                hidden=hidden)

  def teacher_forward(self, teacher_params, images, ids_keep):
    """The frozen teacher on the student's visible tokens: dict(attn=..., hidden=...)."""
    teacher_params = jax.lax.stop_gradient(teacher_params)
    attn_layers = sorted({u for _, u in self.attn_pairs})
    _, aux, hidden = encode(self.teacher, teacher_params, images, ids_keep,
                            attn=[u - 1 for u in attn_layers],
                            hidden=sorted({u for _, u in self.hidden_pairs}), train=False)
    out = dict(attn={u: aux["attn_logits"][u - 1] for u in attn_layers}, hidden=hidden)
    return jax.lax.stop_gradient(out)

  def loss(self, params, extra, batch, rng, step, frozen=None):
    images = batch["image"]
    student = self.student_forward(params, images, batch["noise"], train=True, rng=rng,
                                   masked_only=True)
    with jax.named_scope("teacher"):  # a label for profiles (bench/profile.py)
      teacher = self.teacher_forward(frozen["teacher"], images, student["ids_keep"])
    mae_loss = mae_obj.masked_patch_loss(student["pred"], images, student["pred_ids"],
                                         self.model.patch_size, self.norm_pix_loss)
    adapters = params.get("distill_adapters", {})

    def kernel(name):
      return adapters[name]["kernel"] if name in adapters else None

    attn = [(student["attn"][s], teacher["attn"][u], kernel(f"attn_s{s}_t{u}"))
            for s, u in self.attn_pairs]
    hidden = [(student["hidden"][s], teacher["hidden"][u], kernel(f"hidden_s{s}_t{u}"))
              for s, u in self.hidden_pairs]
    total, metrics = distill_obj.dmae_total_loss(
        mae_loss, attn=attn, hidden=hidden, attn_alpha=self.attn_alpha,
        hidden_alpha=self.hidden_alpha)
    return total, (metrics, extra)

  def reconstruct(self, params, images, noise):
    out = self.student_forward(params, images, noise)
    return out["pred"], out["mask"]
