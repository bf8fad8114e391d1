"""MAE reconstruction figure: original / masked / reconstructions / per-patch error.

With norm_pix_loss the decoder predicts each patch normalised by its own mean and std, so the
prediction alone is not an image. MAE's demo maps it back with the *true* patch statistics of
the hidden patches, which leaks part of the answer. We show both mappings, labelled:
  - "oracle stats": true per-patch mean/std of the hidden patches (looks best; leaks),
  - "visible stats": every hidden patch gets the mean of the visible patches' means and stds
    (no leak; what the model alone implies),
and the per-patch error in the loss's own space, so the figure cannot flatter the model.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from maelite_jax.objectives.mae import normalize_patches, patchify, unpatchify  # noqa: E402


MASK_COLOUR = (0.62, 0.78, 0.95)  # hidden patches in the input panel: not black, which is
# Fashion-MNIST's (and many photos') background


def reconstruction_panels(images, pred, mask, patch_size, norm_pix_loss, mean, std):
  """Returns dict of (B, H, W, 3) arrays in [0, 1] plus the (B, g, g) per-patch error (NaN on
  the visible patches: the loss never scores them)."""
  images = np.asarray(images, np.float32)
  pred = np.asarray(pred, np.float32)
  mask = np.asarray(mask, np.float32)
  target = np.asarray(patchify(images, patch_size))
  if norm_pix_loss:
    tn, t_mean, t_std = (np.asarray(a) for a in normalize_patches(target))
    oracle = pred * t_std + t_mean
    vis = (1 - mask)[..., None]
    n_vis = np.maximum(vis.sum(axis=1, keepdims=True), 1)
    vis_mean = (t_mean * vis).sum(axis=1, keepdims=True) / n_vis
    vis_std = (t_std * vis).sum(axis=1, keepdims=True) / n_vis
    honest = pred * vis_std + vis_mean
    err = ((pred - tn)**2).mean(-1)
  else:
    oracle = honest = pred
    err = ((pred - target)**2).mean(-1)
  m = mask[..., None]
  c = images.shape[-1]
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  to_img = lambda p: np.clip(unpatchify(p, patch_size, c) * std + mean, 0, 1)
  g = int(round(mask.shape[1]**0.5))
  hidden = np.asarray(unpatchify(np.repeat(m, target.shape[-1], axis=-1), patch_size, c))
  masked = to_img(target) * (1 - hidden) + hidden * np.asarray(MASK_COLOUR, np.float32)
  return {
      "original": to_img(target),
      "masked": masked,
      "recon_oracle": to_img(target * (1 - m) + oracle * m),
      "recon_visible": to_img(target * (1 - m) + honest * m),
      "error": np.where(mask > 0, err, np.nan).reshape(-1, g, g),
      "hidden_error": float((err * mask).sum() / max(mask.sum(), 1)),
  }


def save_reconstruction_grid(path, *, images, pred, mask, patch_size, norm_pix_loss,
                             mean, std, title: str = "MAE reconstructions") -> tuple[str, float]:
  """Writes the PNG grid (one row per image); returns (path, mean hidden-patch error)."""
  panels = reconstruction_panels(images, pred, mask, patch_size, norm_pix_loss, mean, std)
  n = panels["original"].shape[0]
  if norm_pix_loss:  # the prediction is in per-patch normalised units: two ways back
    titles = ["original", "input (hidden patches\nin blue)",
              "recon, oracle stats\n(true hidden-patch mean/std: leaks)",
              "recon, visible stats\n(no leak)",
              "per-patch error, hidden only\n(norm-pix MSE; grey = visible)"]
    keys = ["original", "masked", "recon_oracle", "recon_visible", "error"]
  else:  # the prediction is pixels: the reconstruction is honest as it is
    titles = ["original", "input (hidden patches\nin blue)",
              "reconstruction\n(+ visible patches)",
              "per-patch error, hidden only\n(MSE; grey = visible)"]
    keys = ["original", "masked", "recon_visible", "error"]
  cols = len(keys)
  fig, axes = plt.subplots(n, cols, figsize=(2 * cols, 2.0 * n + 0.9), squeeze=False,
                           layout="constrained")
  cmap = matplotlib.colormaps["magma"].with_extremes(bad="#c8c8c8")
  vmax = float(np.nanmax(panels["error"])) if np.isfinite(panels["error"]).any() else 1.0
  for i in range(n):
    for j, key in enumerate(keys):
      ax = axes[i, j]
      if key == "error":
        im = ax.imshow(panels[key][i], cmap=cmap, vmin=0, vmax=vmax or 1.0)
      else:
        ax.imshow(panels[key][i], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(titles[j], fontsize=7)
  fig.colorbar(im, ax=axes[:, cols - 1].tolist(), shrink=0.6)
  err = panels["hidden_error"]
  fig.suptitle(f"{title} (mean hidden-patch error {err:.3f})", fontsize=9)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path, err
