"""Analysis of trained checkpoints: layer CKA, attention distance/entropy, maps, reconstructions.

  python scripts/analyze.py --config configs/analyze.py[:variant] \
      --config.models=mae=runs/mae_tiny_cpu,moco=runs/mocov3_tiny_cpu --workdir runs/analysis

`models`: comma-separated checkpoints, each `NAME=PATH` or just `PATH` (then the name is the
run folder's name); a PATH is a workdir, its checkpoints/ folder or one step folder.
Default: MAE-Lite's protocol (1000 evaluation images, batch 128, linear CKA, unbiased minibatch
HSIC) on the built-in Fashion-MNIST; set `data` like the pre-training configs for ImageNet.
Variants:
  :cpu    256 images, batch 64 (a minute on 2 cores for the CPU models)
  :tiny   16 images, batch 8, small figures (tests and smoke runs)
"""

import ml_collections

from maelite_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, ("cpu", "tiny"))
  placeholder = ml_collections.config_dict.placeholder
  config = ml_collections.ConfigDict(dict(
      models="",
      data=common.builtin_data(),
      split="",              # "" = data.eval_split
      num_images=1000,
      batch_size=128,        # global batch; CKA's minibatch size (MAE-Lite: 128)
      image_size=placeholder(int),  # None = the checkpoints' (they must agree)
      seed=0,                # MAE masking noise of the reconstruction figure
      cka=ml_collections.ConfigDict(dict(
          kernel="linear",   # linear | rbf
          rbf_threshold=0.5, # rbf sigma = threshold * median pairwise distance
          remove_cls=True,   # the reference drops the cls token
          # LayerNorm of the last representation: auto = the reference's (a trained fc_norm,
          # else a fresh one; MoCo-v3's trained final norm), or fc_norm | fresh | norm.
          last_norm="auto",
      )),
      attention=ml_collections.ConfigDict(dict(
          # sqrt_tokens: the paper's unit (grid distance * sqrt(num patches), 14 at 224px/16);
          # patch: true pixels (grid distance * patch size); grid: patch units.
          distance_unit="sqrt_tokens",
      )),
      vis=ml_collections.ConfigDict(dict(
          num_images=4,      # images in the attention-map and reconstruction figures
          layers=(0, -1),    # blocks whose attention maps are drawn (negative = from the end)
          heads=(0, 1, 2, 3),  # heads drawn (those beyond a model's head count are skipped)
          query="cls",       # cls | center | a patch index: whose attention the maps show
          norm_pix_loss=True,  # for checkpoints whose meta does not record it
      )),
  ))
  if variant == "cpu":
    config.num_images = 256
    config.batch_size = 64
  if variant == "tiny":
    config.num_images = 16
    config.batch_size = 8
    config.vis.num_images = 2
    config.vis.heads = (0, 1)
  config.lock()
  return config
