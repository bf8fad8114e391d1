"""Model structure and numerics against independent numpy formulas (timm parity: test_export)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maelite_jax.models import create_model, model_kwargs
from maelite_jax.models.mae import random_masking_ids
from maelite_jax.models.posemb import sincos_2d
from maelite_jax.models.vit import VisionTransformer
from maelite_jax.objectives.mae import mae_forward_loss, mae_loss, patchify


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_vit_tiny_trainable_param_count_matches_timm():
  # timm ViT-Tiny, 12 heads, no head: 5,524,416 params, 37,824 of them the position table,
  # which MAE keeps fixed (a constant here, not a parameter).
  model = create_model("vit_tiny_patch16")
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert _count(shapes["params"]) == 5_524_416 - 37_824
  assert model.num_heads == 12 and model.embed_dim == 192


# REFERENCE.md's table: MAE-Lite's (embed, depth, heads) and decoder (embed, depth, heads).
REFERENCE_SIZES = {
    "vit_tiny_patch16": (192, 12, 12), "vit_small_patch16": (384, 12, 12),
    "vit_base_patch16": (768, 12, 12),
}
REFERENCE_DECODERS = {"mae_vit_tiny_patch16": (96, 1, 3), "mae_vit_small_patch16": (192, 1, 6)}


def test_registry_sizes_are_mae_lites():
  """MAE-Lite changed ViT-Small to 12 heads (timm: 6) and gave MAE-Small a 192-wide, 1-block,
  6-head decoder (its models_mae.py mae_vit_small_patch16), not MAE-Base's 512/8/16 shape."""
  for name, (dim, depth, heads) in REFERENCE_SIZES.items():
    for full in (name, "mae_" + name):
      kw = model_kwargs(full)
      assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["patch_size"]) == (
          dim, depth, heads, 16), full
  for name, decoder in REFERENCE_DECODERS.items():
    kw = model_kwargs(name)
    assert (kw["decoder_embed_dim"], kw["decoder_depth"], kw["decoder_num_heads"]) == decoder, name
    assert kw.get("mlp_ratio", 4.0) == 4.0  # decoder MLP 4x: 384 (Tiny), 768 (Small)


def _numpy_mae_posemb(dim, grid):
  """MAE's get_2d_sincos_pos_embed, re-derived: w coordinate first, then h; zero cls row."""
  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
    ang = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(ang), np.cos(ang)], 1)
  hh, ww = np.indices((grid, grid))
  emb = np.concatenate([one_d(dim // 2, ww.astype(float)), one_d(dim // 2, hh.astype(float))], 1)
  return np.concatenate([np.zeros((1, dim)), emb], 0)


@pytest.mark.parametrize("dim,grid", [(192, 14), (96, 8), (64, 3)])
def test_sincos_posemb_matches_numpy_formula(dim, grid):
  np.testing.assert_allclose(sincos_2d(dim, grid, cls_token=True), _numpy_mae_posemb(dim, grid),
                             atol=1e-6)


def test_random_masking_keeps_lowest_noise_and_restores_order():
  noise = jnp.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]])
  ids_keep, ids_restore, mask = random_masking_ids(noise, 0.5)
  np.testing.assert_array_equal(ids_keep, [[1, 3], [0, 2]])
  np.testing.assert_array_equal(mask, [[1, 0, 1, 0], [0, 1, 0, 1]])
  shuffle = np.argsort(np.asarray(noise), 1)
  np.testing.assert_array_equal(np.take_along_axis(shuffle, np.asarray(ids_restore), 1),
                                np.tile(np.arange(4), (2, 1)))


@pytest.fixture(scope="module")
def small_mae():
  model = create_model("mae_vit_tiny_patch16", image_size=32, patch_size=4, depth=2)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  noise = jax.random.uniform(jax.random.key(2), (2, 64))
  params = model.init(jax.random.key(0), x, noise)["params"]
  return model, params, x, noise


def test_mae_shapes_and_visible_tokens(small_mae):
  model, params, x, noise = small_mae
  out = model.apply({"params": params}, x, noise, return_attn_logits=(-1,), return_tokens=(0,))
  assert out["pred"].shape == (2, 64, 4 * 4 * 3)
  assert out["latent"].shape == (2, 1 + 16, 192)
  assert float(out["mask"].sum()) == 2 * 48
  assert set(out["aux"]["attn_logits"]) == {1} and set(out["aux"]["tokens"]) == {0}
  assert out["aux"]["attn_logits"][1].shape == (2, 12, 17, 17)


def test_mae_encoder_sees_only_kept_patches(small_mae):
  # Changing pixels of a masked patch must not change the latent of the visible tokens.
  model, params, x, noise = small_mae
  out = model.apply({"params": params}, x, noise)
  masked = int(np.argmax(np.asarray(out["mask"][0])))
  r, c = divmod(masked, 8)
  x2 = x.at[0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].add(5.0)
  out2 = model.apply({"params": params}, x2, noise)
  np.testing.assert_allclose(out["latent"], out2["latent"], atol=1e-6)
  visible = int(np.argmin(np.asarray(out["mask"][0])))
  r, c = divmod(visible, 8)
  x3 = x.at[0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].add(5.0)
  assert not np.allclose(out["latent"], model.apply({"params": params}, x3, noise)["latent"])


def test_encoder_embeds_only_kept_patches_as_embedding_all_then_gathering(small_mae):
  # The masked encoder projects only the kept patches; that must equal timm/MAE's order
  # (project every patch, add positions, then keep), tokens and positions alike.
  model, params, x, noise = small_mae
  enc = params["encoder"]
  ids_keep, _, _ = random_masking_ids(noise, 0.75)
  # depth 0: embedding + final norm, a per-token map, so keeping commutes with it
  encoder = VisionTransformer(image_size=32, patch_size=4, depth=0)
  full, _ = encoder.apply({"params": enc}, x)
  kept, _ = encoder.apply({"params": enc}, x, keep_ids=ids_keep)
  want = jnp.take_along_axis(full[:, 1:], ids_keep[:, :, None], axis=1)
  np.testing.assert_allclose(kept[:, 1:], want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(kept[:, 0], full[:, 0])


def test_masked_only_prediction_and_loss_equal_the_full_ones(small_mae):
  # Training predicts only the masked patches; pred and loss must be those of the full
  # prediction (the reference's form), values and gradients.
  model, params, x, noise = small_mae
  # Jitted: eager dispatch of a 12-block model's backward takes ~40 s on 2 cores.
  apply = jax.jit(lambda p, masked_only: model.apply({"params": p}, x, noise,
                                                     masked_only=masked_only),
                  static_argnums=1)
  full, part = apply(params, False), apply(params, True)
  ids = part["pred_ids"]
  assert part["pred"].shape == (2, 48, 48)
  np.testing.assert_array_equal(jnp.take_along_axis(full["mask"], ids, axis=1), 1.0)
  np.testing.assert_allclose(part["pred"], jnp.take_along_axis(full["pred"], ids[:, :, None], 1),
                             rtol=1e-6, atol=1e-6)

  def full_loss(p):
    out = model.apply({"params": p}, x, noise)
    return mae_loss(out["pred"], patchify(x, 4), out["mask"])

  def train_loss(p):
    return mae_forward_loss(model, p, x, noise, train=False)[0]

  (l_full, g_full), (l_part, g_part) = (jax.jit(jax.value_and_grad(f))(params)
                                        for f in (full_loss, train_loss))
  np.testing.assert_allclose(l_part, l_full, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g_part,
               g_full)
  assert float(jnp.abs(g_part["decoder_pred"]["kernel"]).max()) > 0


def test_init_statistics_follow_reference(small_mae):
  _, params, _, _ = small_mae
  enc = params["encoder"]
  assert abs(float(enc["cls_token"].std()) - 0.02) < 0.006
  qkv = np.asarray(enc["blocks_0"]["attn"]["qkv"]["kernel"])  # xavier: U(+-sqrt(6/(in+out)))
  assert np.abs(qkv).max() <= np.sqrt(6 / (192 + 576)) + 1e-7
  assert np.abs(qkv).max() > 0.9 * np.sqrt(6 / (192 + 576))
  pk = np.asarray(enc["patch_embed"]["proj"]["kernel"])  # xavier on the (out, in*kh*kw) view
  bound = np.sqrt(6 / (4 * 4 * 3 + 192))
  assert bound * 0.9 < np.abs(pk).max() <= bound + 1e-7
  assert float(np.abs(enc["blocks_0"]["attn"]["qkv"]["bias"]).max()) == 0.0
  np.testing.assert_array_equal(enc["norm"]["scale"], 1.0)


def test_drop_path_is_random_in_training_and_off_in_eval():
  model = create_model("vit_tiny_patch16", image_size=32, patch_size=4, depth=2,
                       drop_path_rate=0.5)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  params = model.init(jax.random.key(0), x)["params"]
  a, _ = model.apply({"params": params}, x, train=True, rngs={"droppath": jax.random.key(1)})
  b, _ = model.apply({"params": params}, x, train=True, rngs={"droppath": jax.random.key(2)})
  c, _ = model.apply({"params": params}, x)
  d, _ = model.apply({"params": params}, x)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(c, d)


def test_wrong_image_size_is_a_clear_error():
  with pytest.raises(ValueError, match="not divisible by patch_size"):
    create_model("vit_tiny_patch16", image_size=30, patch_size=4).init(
        jax.random.key(0), jnp.zeros((1, 30, 30, 3)))
  with pytest.raises(ValueError, match="unknown model"):
    create_model("vit_huge")


@pytest.mark.parametrize("options", [dict(scan_blocks=True), dict(remat=True),
                                     dict(scan_blocks=True, remat=True)])
def test_scanned_and_remat_blocks_equal_the_loop(options):
  """Same params tree, outputs and gradients as the unrolled blocks (float32, 1e-6)."""
  kw = dict(image_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=5)
  loop, fast = VisionTransformer(**kw), VisionTransformer(**kw, **options)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  params = loop.init(jax.random.key(0), x)["params"]
  fast_params = fast.init(jax.random.key(0), x)["params"]
  assert jax.tree.structure(fast_params) == jax.tree.structure(params)
  loss = lambda m: jax.jit(jax.value_and_grad(  # train mode, drop path 0: no rng needed
      lambda p: (m.apply({"params": p}, x, train=True)[0]**2).sum()))
  (l_loop, g_loop), (l_fast, g_fast) = loss(loop)(params), loss(fast)(params)
  np.testing.assert_allclose(l_fast, l_loop, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_loop)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if options.get("scan_blocks"):  # the scan really runs (and per-layer outputs fall back)
    assert "scan" in str(jax.make_jaxpr(lambda p: fast.apply({"params": p}, x)[0])(params))
    _, aux = fast.apply({"params": params}, x, return_tokens=(1,))
    ref = loop.apply({"params": params}, x, return_tokens=(1,))[1]
    np.testing.assert_allclose(aux["tokens"][1], ref["tokens"][1], rtol=1e-6)


def test_scanned_blocks_apply_drop_path_per_layer():
  kw = dict(image_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, drop_path_rate=0.5)
  model = VisionTransformer(**kw, scan_blocks=True)
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  params = model.init(jax.random.key(0), x)["params"]
  run = lambda seed: model.apply({"params": params}, x, train=True,
                                 rngs={"droppath": jax.random.key(seed)})[0]
  assert not np.allclose(run(0), run(1))
  np.testing.assert_allclose(run(0), run(0))
  np.testing.assert_allclose(model.apply({"params": params}, x)[0],
                             VisionTransformer(**kw).apply({"params": params}, x)[0], rtol=1e-5, atol=1e-5)


def test_block_backward_reads_token_activations_in_place_on_cpu():
  # The per-token Dense layers run on the (tokens, D) view: their weight gradients then contract
  # one axis and XLA:CPU needs no transposed copy of the activations or output gradients. On the
  # (B, T, D) input it materialises one per Dense layer (~7 % of a ViT-Tiny CPU step).
  if jax.default_backend() != "cpu":
    pytest.skip("an XLA:CPU codegen property")
  from maelite_jax.models.vit import Mlp
  mlp = Mlp(hidden_dim=64)
  x = jnp.ones((2, 5, 16))
  params = mlp.init(jax.random.key(0), x)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(mlp.apply(p, x) ** 2)))
  hlo = grad.lower(params, x).compile().as_text()
  assert " transpose(" not in hlo and "copy_bitcast" not in hlo, hlo


# ---------------------------------------------------------------------------------------------
# Fused attention (jax.nn.dot_product_attention) with the sequence padded and the padding masked


def _value_and_grads(model, params, x):
  """Loss and gradients w.r.t. params and input of sum(out^2): every path of the backward."""
  fn = lambda p, x: (model.apply(p, x)[0].astype(jnp.float32)**2).sum() * 1e-3
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(params, x)


def _assert_close_tree(a, b, rtol, atol):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
    assert np.isfinite(u).all()
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol * np.abs(v).max())


def test_attention_length_pads_odd_sequences_for_cudnn_only():
  from maelite_jax.models.vit import attention_length
  assert attention_length(197, "cudnn") == 200  # the MAE decoder's / MoCo-v3's tokens
  assert attention_length(50, "cudnn") == 50    # the MAE encoder's: even, as they are
  assert attention_length(197, "xla") == 197
  assert attention_length(197, "xla", pad=64) == 256 and attention_length(50, "cudnn", 64) == 64
  assert attention_length(64, "cudnn", 64) == 64


@pytest.mark.parametrize("tokens,pad", [(197, 8), (197, 64), (50, 64), (65, 0)])
def test_padded_fused_attention_equals_einsum(tokens, pad):
  # The padding path cuDNN runs (zero-padded tokens, key_value_seq_lengths, padded query rows
  # cut off), run here with XLA's kernel: outputs and gradients equal the einsum path (fp32).
  from maelite_jax.models.vit import Attention
  x = jax.random.normal(jax.random.key(0), (2, tokens, 32))
  ref = Attention(2, attention_impl="einsum")
  fused = Attention(2, attention_impl="xla", attention_pad=pad)
  params = ref.init(jax.random.key(1), x)
  jaxpr = str(jax.make_jaxpr(lambda p: fused.apply(p, x))(params))
  assert ("pad[" in jaxpr) == (pad > 0)  # the padding path really runs (or not)
  (l_ref, g_ref), (l_new, g_new) = (_value_and_grads(m, params, x) for m in (ref, fused))
  np.testing.assert_allclose(l_new, l_ref, rtol=1e-5)
  _assert_close_tree(g_new, g_ref, rtol=1e-5, atol=1e-5)


def test_mae_with_padded_fused_attention_and_bfloat16_track_the_float32_einsum_loss():
  # The whole MAE (encoder on 17 kept tokens, decoder on 65: both odd) with padding to 8 gives
  # the einsum path's loss (gradients: the Attention test above); bf16 compute (MAE-Lite's AMP)
  # keeps fp32 params and gradients and its loss within 1 %. Forward passes only, one compile.
  kw = dict(image_size=32, patch_size=4, depth=1, embed_dim=32, num_heads=2,
            decoder_embed_dim=16, decoder_num_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  noise = jax.random.uniform(jax.random.key(1), (2, 64))
  ref = create_model("mae_vit_tiny_patch16", **kw)
  fused = create_model("mae_vit_tiny_patch16", **kw, attention_impl="xla", attention_pad=8)
  bf16 = create_model("mae_vit_tiny_patch16", **kw, dtype=jnp.bfloat16)
  params = jax.jit(lambda: ref.init(jax.random.key(2), x, noise))()["params"]
  loss = lambda m, p: mae_forward_loss(m, p, x, noise, norm_pix_loss=True)[0]
  jaxpr = str(jax.make_jaxpr(lambda p: loss(fused, p))(params))
  assert jaxpr.count("pad[") == 2  # the encoder's block and the decoder's block pad
  l_ref, l_fused, l_bf16 = jax.jit(lambda p: [loss(m, p) for m in (ref, fused, bf16)])(params)
  np.testing.assert_allclose(l_fused, l_ref, rtol=1e-5)
  np.testing.assert_allclose(l_bf16, l_ref, rtol=1e-2)
  assert l_bf16 != l_ref  # bf16 really computed
  bf16_params = jax.eval_shape(lambda: bf16.init(jax.random.key(2), x, noise))["params"]
  grads = jax.eval_shape(jax.grad(lambda p: loss(bf16, p)), params)
  for tree in (bf16_params, grads):
    assert {p.dtype for p in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a CUDA GPU "
                    "(MAELITE_TEST_PLATFORM=gpu pytest -k cudnn; or scripts/gpu_bench.sh)")
@pytest.mark.parametrize("tokens,pad", [(50, 0), (197, 0), (197, 64), (65, 0)])
def test_cudnn_attention_equals_einsum_on_gpu(tokens, pad):
  # bf16 (cuDNN computes in bf16/fp16): the cuDNN kernel against the einsum path in the same
  # dtype, and both against fp32; gradients finite (cuDNN's backward gave NaNs for some padded
  # lengths) and close.
  from maelite_jax.models.vit import Attention
  x = jax.random.normal(jax.random.key(0), (8, tokens, 192))
  ref32 = Attention(12, attention_impl="einsum")
  ref = Attention(12, dtype=jnp.bfloat16, attention_impl="einsum")
  cudnn = Attention(12, dtype=jnp.bfloat16, attention_impl="cudnn", attention_pad=pad)
  params = ref32.init(jax.random.key(1), x)
  hlo = jax.jit(lambda p: cudnn.apply(p, x)[0]).lower(params).compile().as_text()
  assert "cudnn" in hlo.lower()  # the fused kernel really runs
  (l32, g32), (l_ref, g_ref), (l_new, g_new) = (_value_and_grads(m, params, x)
                                                for m in (ref32, ref, cudnn))
  np.testing.assert_allclose(l_new, l32, rtol=2e-2)
  np.testing.assert_allclose(l_new, l_ref, rtol=2e-2)
  _assert_close_tree(g_new, g32, rtol=5e-2, atol=5e-2)


def test_model_spec_runs_cudnn_attention_as_xla_off_gpu():
  # A checkpoint trained with cuDNN attention on a GPU is evaluated / exported on a CPU.
  from maelite_jax.models.meta import ModelSpec
  spec = ModelSpec("vit_tiny_patch16", {"attention_impl": "cudnn", "dtype": "auto"})
  kwargs = spec.module_kwargs()
  if jax.default_backend() != "gpu":
    assert kwargs["attention_impl"] == "xla" and kwargs["dtype"] == jnp.float32


def test_auto_dtype_is_bfloat16_on_accelerators_float32_on_cpu(monkeypatch):
  from maelite_jax.models.meta import CheckpointMeta, ModelSpec, encoder_from_meta, resolve_dtype
  assert resolve_dtype("auto", "gpu") == jnp.bfloat16 == resolve_dtype("auto", "tpu")
  assert resolve_dtype("auto", "cpu") == jnp.float32
  assert resolve_dtype("float32", "gpu") == jnp.float32
  # a checkpoint's 'auto' resolves where it is loaded (evaluation, analysis, D-MAE teachers)
  meta = CheckpointMeta(ModelSpec("mae_vit_tiny_patch16", {"dtype": "auto", "depth": 1}))
  assert encoder_from_meta(meta, {})[0].dtype == jnp.float32
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert encoder_from_meta(meta, {})[0].dtype == jnp.bfloat16
  assert meta.model.build().dtype == jnp.bfloat16
