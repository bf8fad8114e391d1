"""MAE pre-training as a task of the generic loop."""

import jax
import jax.numpy as jnp

from maelite_jax.models import compute_options, create_model, model_kwargs
from maelite_jax.objectives import mae as mae_obj
from maelite_jax.tasks.base import Task


def model_from_config(model_cfg):
  """Builds the registry model named by config.model.name with the config's overrides."""
  overrides = dict(image_size=model_cfg.image_size, patch_size=model_cfg.patch_size,
                   mask_ratio=model_cfg.mask_ratio, drop_path_rate=model_cfg.drop_path_rate,
                   depth=model_cfg.get("depth"), **compute_options(model_cfg))
  kwargs = model_kwargs(model_cfg.name, **overrides)
  meta_kwargs = {k: (str(jnp.dtype(v)) if k == "dtype" else v) for k, v in kwargs.items()}
  return create_model(model_cfg.name, **overrides), {"name": model_cfg.name, "kwargs": meta_kwargs}


class MAETask(Task):
  def __init__(self, config):
    self.config = config
    self.model, self.model_meta = model_from_config(config.model)
    self.norm_pix_loss = config.model.norm_pix_loss

  def init(self, rng, batch):
    images = batch["image"][:1]
    noise = jnp.zeros((1, self.model.num_patches), jnp.float32)
    variables = self.model.init({"params": rng}, images, noise)
    return variables["params"], {}

  def per_example_random(self, rng, batch):
    b = batch["image"].shape[0]
    return {"noise": mae_obj.masking_noise(rng, b, self.model.num_patches)}

  def loss(self, params, extra, batch, rng, step, frozen=None):
    loss, _ = mae_obj.mae_forward_loss(
        self.model, params, batch["image"], batch["noise"], norm_pix_loss=self.norm_pix_loss,
        train=True, rngs={"droppath": rng})
    return loss, ({"loss": loss}, extra)

  def predict(self, params, images, noise):
    """(pred, mask) of the model in eval mode; subclasses with another forward override it."""
    out = self.model.apply({"params": params}, images, noise)
    return out["pred"], out["mask"]

  def visualize(self, params, extra, batch, out_path):
    from maelite_jax.analysis.reconstruction import save_reconstruction_grid
    noise = mae_obj.masking_noise(jax.random.key(0), batch["image"].shape[0],
                                  self.model.num_patches)
    pred, mask = jax.jit(self.predict)(params, batch["image"], noise)
    return save_reconstruction_grid(
        out_path, images=batch["image"], pred=pred, mask=mask,
        patch_size=self.model.patch_size, norm_pix_loss=self.norm_pix_loss,
        mean=self.config.data.mean, std=self.config.data.std)
