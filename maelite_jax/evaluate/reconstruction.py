"""The `reconstruction` evaluator: MAE's (and D-MAE's) reconstructions of the first eval images.

A figure for humans (original | input | reconstructions | per-patch error, see
analysis/reconstruction.py) written as <workdir>/reconstruction_step<N>.png and
reconstruction.png, sent to TensorBoard as an image, and the mean hidden-patch error (in the
loss's own space) as a scalar. The masking noise is fixed (key(cfg.seed)), so figures of
different steps show the same masks.
"""

import os

import jax
from absl import logging

from maelite_jax.analysis.reconstruction import figure_title, save_reconstruction_grid
from maelite_jax.analysis.plots import figure_array
from maelite_jax.evaluate.base import Evaluator, Result, host_params, publish_figure, register
from maelite_jax.objectives import mae as mae_obj
from maelite_jax.utils.errors import ConfigError


@register("reconstruction")
class ReconstructionEvaluator(Evaluator):
  reported = {}

  def __init__(self, cfg, **kw):
    super().__init__(cfg, **kw)
    if not hasattr(self.model, "reconstruct"):
      raise ConfigError(f"config.evals.{self.name}: objective {self.model.name!r} does not "
                        "reconstruct images (only MAE-style objectives do); remove the entry.")
    self.reconstruct = jax.jit(self.model.reconstruct)
    self.batch = None

  def run(self, params, step):
    mae = self.model.model
    if self.batch is None:
      self.batch = self.vis_batch(self.cfg.num_images, mae.image_size)
    images = self.batch["image"]
    noise = mae_obj.masking_noise(jax.random.key(self.cfg.seed), images.shape[0],
                                  mae.num_patches)
    pred, mask = self.reconstruct(host_params(params), images, noise)
    if jax.process_index() != 0:  # one figure per run; metrics are written by process 0 only
      return Result()
    path = os.path.join(self.workdir, f"reconstruction_step{step:07d}.png")
    title = figure_title(self.model.name, os.path.abspath(self.workdir), step)
    data = self.run_config.data
    _, err = save_reconstruction_grid(
        path, images=images, pred=pred, mask=mask, patch_size=mae.patch_size,
        norm_pix_loss=self.model.norm_pix_loss, mean=data.mean, std=data.std, title=title)
    publish_figure(path, os.path.join(self.workdir, "reconstruction.png"))
    logging.info("wrote %s", path)
    return Result(scalars={"recon_hidden_error": err},
                  images={self.name: figure_array(path)})
