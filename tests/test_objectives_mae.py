"""The MAE loss against an independent numpy computation of the reference formula."""

import jax
import numpy as np
import pytest

from maelite_jax.objectives.mae import mae_loss, patchify, unpatchify


def _numpy_patchify(imgs, p):
  # models_mae.patchify on NCHW: reshape (N,C,h,p,w,p) -> einsum nchpwq->nhwpqc.
  nchw = imgs.transpose(0, 3, 1, 2)
  n, c, hh, ww = nchw.shape
  h, w = hh // p, ww // p
  x = nchw.reshape(n, c, h, p, w, p)
  x = np.einsum("nchpwq->nhwpqc", x)
  return x.reshape(n, h * w, p * p * c)


def _numpy_loss(pred, imgs, mask, p, norm_pix):
  target = _numpy_patchify(imgs, p).astype(np.float64)
  if norm_pix:
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, keepdims=True, ddof=1)  # torch .var() is unbiased
    target = (target - mean) / (var + 1e-6) ** 0.5
  per_patch = ((pred - target) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_numpy(norm_pix):
  rng = np.random.default_rng(0)
  imgs = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
  pred = rng.normal(size=(3, 16, 48)).astype(np.float32)
  mask = (rng.uniform(size=(3, 16)) < 0.75).astype(np.float32)
  got = mae_loss(pred, patchify(imgs, 4), mask, norm_pix)
  np.testing.assert_allclose(float(got), _numpy_loss(pred, imgs, mask, 4, norm_pix), rtol=1e-5)


def test_patchify_layout_and_inverse():
  imgs = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_array_equal(patchify(imgs, 4), _numpy_patchify(imgs, 4))
  np.testing.assert_array_equal(unpatchify(patchify(imgs, 4), 4), imgs)


def test_loss_ignores_visible_patches():
  rng = np.random.default_rng(2)
  imgs = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
  pred = rng.normal(size=(1, 4, 48)).astype(np.float32)
  mask = np.array([[1, 0, 1, 0]], np.float32)
  base = mae_loss(pred, patchify(imgs, 4), mask)
  pred2 = pred.copy()
  pred2[0, 1] += 10.0
  assert float(mae_loss(pred2, patchify(imgs, 4), mask)) == pytest.approx(float(base))
  assert jax.numpy.isfinite(base)
