"""MAE pre-training (the paper's main objective) as a plug-in of the one loop."""

import jax.numpy as jnp

from maelite_jax.models.meta import model_from_config
from maelite_jax.objectives import mae as mae_obj
from maelite_jax.tasks.base import Objective
from maelite_jax.tasks.registry import register
from maelite_jax.utils.errors import ConfigError


def check_mask_ratio(ratio: float, num_patches: int):
  """MAE needs at least one masked patch (the loss averages over them) and one kept patch."""
  kept = int(num_patches * (1 - ratio))
  if not 0.0 < ratio < 1.0 or kept < 1 or kept >= num_patches:
    raise ConfigError(f"config.model.mask_ratio: {ratio} keeps {kept} of {num_patches} patches; "
                      "MAE needs at least one masked and one visible patch. Use a ratio in "
                      f"(0, 1) with 1 <= int(N * (1 - ratio)) < N, e.g. 0.75 (the paper's).")


@register("mae")
class MAE(Objective):
  """params = {'encoder': ViT, decoder...}; the loss is the masked-patch MSE."""

  def __init__(self, config):
    self.model, self.spec = model_from_config(config.model)
    self.norm_pix_loss = config.model.norm_pix_loss
    check_mask_ratio(self.model.mask_ratio, self.model.num_patches)

  def init(self, rng, example):
    images = example["image"][:1]
    noise = jnp.zeros((1, self.model.num_patches), jnp.float32)
    return self.model.init({"params": rng}, images, noise)["params"], {}

  def prepare_batch(self, rng, batch):
    """The masking noise of the whole global batch (micro-batches slice it)."""
    noise = mae_obj.masking_noise(rng, batch["image"].shape[0], self.model.num_patches)
    return dict(batch, noise=noise)

  def loss(self, params, extra, batch, rng, step, frozen=None):
    loss, _ = mae_obj.mae_forward_loss(
        self.model, params, batch["image"], batch["noise"], norm_pix_loss=self.norm_pix_loss,
        train=True, rngs={"droppath": rng})
    return loss, ({"loss": loss}, extra)

  def reconstruct(self, params, images, noise):
    """(pred (B, N, p*p*c), mask (B, N)) in eval mode: what the reconstruction evaluator draws."""
    out = self.model.apply({"params": params}, images, noise)
    return out["pred"], out["mask"]
