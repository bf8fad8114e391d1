"""Optimizer pieces: MAE's lr scaling and per-step schedule, timm's weight-decay rule."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from maelite_jax.configs import common
from maelite_jax.models import create_model
from maelite_jax.train import optim


def test_lr_is_scaled_by_batch_and_follows_warmup_then_cosine():
  cfg = common.optim_config(base_lr=1.5e-4, min_lr=0.0)
  sched = optim.lr_schedule(cfg, 4096, total_steps=1000, warmup_steps=100)
  peak = 1.5e-4 * 4096 / 256
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(50)), peak * 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(sched(100)), peak, rtol=1e-6)
  np.testing.assert_allclose(float(sched(550)), peak * 0.5, rtol=1e-5)  # half-way down the cosine
  assert float(sched(1000)) == pytest.approx(0.0, abs=1e-9)


def test_weight_decay_mask_follows_the_reference_rule():
  model = create_model("mae_vit_tiny_patch16", image_size=32, patch_size=4, depth=1)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             jnp.zeros((1, 64))))["params"]
  mask = optim.weight_decay_mask(params)
  assert mask["encoder"]["cls_token"] and mask["mask_token"]  # tokens ARE decayed in pre-training
  assert mask["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert mask["encoder"]["patch_embed"]["proj"]["kernel"]
  assert not mask["encoder"]["blocks_0"]["attn"]["qkv"]["bias"]
  assert not mask["encoder"]["norm"]["scale"] and not mask["decoder_norm"]["bias"]
  extra = optim.weight_decay_mask(params, no_decay_regex="cls_token|mask_token")
  assert not extra["encoder"]["cls_token"] and not extra["mask_token"]


def test_adamw_update_matches_torch_formula():
  # One AdamW step on a known gradient equals PyTorch's decoupled-decay formula.
  cfg = ml_collections.ConfigDict(common.optim_config(weight_decay=0.05, b2=0.95, grad_clip=0.0))
  params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5])}
  grads = {"w": jnp.array([[0.1, 0.2]]), "b": jnp.array([-0.3])}
  tx = optim.build_optimizer(cfg, 1e-2, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr, eps = 1e-2, 1e-8
  for name, decay in (("w", 0.05), ("b", 0.0)):
    g, p = np.asarray(grads[name]), np.asarray(params[name])
    m_hat, v_hat = g, g * g  # bias-corrected first step
    want = -lr * (m_hat / (np.sqrt(v_hat) + eps) + decay * p)
    np.testing.assert_allclose(np.asarray(updates[name]), want, rtol=1e-6)


def test_lr_multipliers_scale_updates():
  cfg = common.optim_config(weight_decay=0.0)
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))}
  tx = optim.build_optimizer(cfg, 1e-2, params, {"a": 1.0, "b": 0.25})
  updates, _ = tx.update(params, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["b"]), 0.25 * np.asarray(updates["a"]))
