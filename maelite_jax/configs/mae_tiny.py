"""MAE pre-training of ViT-Tiny (MAE-Lite's recipe).

Default: ImageNet-1k, 400 epochs, batch 4096, base lr 1.5e-4 (x batch/256), 40 warm-up epochs,
AdamW(0.9, 0.95), wd 0.05, mask ratio 0.75, norm-pix loss, RandomResizedCrop(0.08-1) + flip;
monitors: k-NN of the encoder (50k-image bank, 10k queries, and a random encoder as the floor)
and reconstruction figures every 5000 steps.
Variants:
  :cpu    the same ViT-Tiny on the built-in Fashion-MNIST at 32px / patch 4, batch 64, 300
          steps: a few minutes on 2 cores (scale up with --config.total_steps)
  :tiny   a 2-block toy for tests and smoke runs
"""

import ml_collections

from maelite_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, ("cpu", "tiny"))
  config = common.pretrain_skeleton()
  config.objective = "mae"
  config.model = ml_collections.ConfigDict(dict(
      name="mae_vit_tiny_patch16",
      image_size=224,
      patch_size=16,
      mask_ratio=0.75,
      norm_pix_loss=True,
      drop_path_rate=0.0,
      depth=common.placeholder(int),  # None = the variant's depth
      dtype="auto",       # bfloat16 compute on GPU/TPU (MAE-Lite trains with AMP), fp32 on CPU
      attention_impl="einsum",  # einsum | xla | cudnn (jax.nn.dot_product_attention)
      attention_pad=0,    # xla/cudnn: pad tokens to a multiple of this (0: cudnn pads odd ones)
      scan_blocks=False,  # lax.scan over encoder blocks: compile time ~depth x shorter
      remat=False,        # recompute block activations in the backward pass: memory
  ))
  config.evals.knn = common.knn_eval(common.every(config), "train[:50000]", "validation[:10000]",
                                     batch_size=1024)
  config.evals.reconstruction = dict(type="reconstruction", every=common.every(config),
                                     num_images=8, seed=0)
  if variant in ("cpu", "tiny"):
    config.data = common.builtin_data()
    config.model.image_size = 32
    config.model.patch_size = 4
    config.batch_size = 64
    config.total_steps = 300
    config.optim.base_lr = 1.5e-3
    config.optim.warmup_steps = -1  # the recipe's 40 of 400 epochs: 10 % of any run length
    config.log_every = 20
    config.checkpoint_every = 100
    config.eval_every = 150
    config.evals.knn.update(bank_split="train[:10000]", query_split="test", batch_size=1000)
  if variant == "tiny":
    config.model.depth = 2
    config.batch_size = 32
    config.total_steps = 20
    config.optim.warmup_steps = 5
    config.log_every = 5
    config.checkpoint_every = 10
    config.eval_every = 0
    del config.evals["knn"]
    config.evals.reconstruction.update(every=-1, num_images=4)  # off: turn on with every >= 0
  config.lock()
  return config
