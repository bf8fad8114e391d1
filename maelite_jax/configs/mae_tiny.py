"""MAE pre-training of ViT-Tiny (MAE-Lite's recipe).

Default: ImageNet-1k, 400 epochs, batch 4096, base lr 1.5e-4 (x batch/256), 40 warm-up epochs,
AdamW(0.9, 0.95), wd 0.05, mask ratio 0.75, norm-pix loss, RandomResizedCrop(0.08-1) + flip;
monitors: k-NN of the encoder (50k-image bank, 10k queries, and a random encoder as the floor)
and reconstruction figures every 5000 steps.
Variants:
  :cpu    the same ViT-Tiny on the built-in Fashion-MNIST at 28 px / patch 4, batch 16, 1000
          steps, data on the device: `make pretrain`, minutes on 2 cores (see cpu_recipe)
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
      scan_blocks=False,  # lax.scan over encoder blocks: compile time ~depth x shorter
      remat=False,        # recompute block activations in the backward pass: memory
  ))
  config.evals.knn = common.knn_eval(common.every(config), "train[:50000]", "validation[:10000]",
                                     batch_size=1024)
  config.evals.reconstruction = dict(type="reconstruction", every=common.every(config),
                                     num_images=8, seed=0)
  if variant == "cpu":
    cpu_recipe(config)
  if variant == "tiny":  # a 2-block toy of the old 32 px shape (tests compare against it)
    config.data = common.builtin_data()
    config.model.update(image_size=32, patch_size=4, depth=2)
    config.batch_size = 32
    config.total_steps = 20
    config.optim.base_lr = 1.5e-3
    config.optim.warmup_steps = 5
    config.log_every = 5
    config.checkpoint_every = 10
    config.eval_every = 0
    del config.evals["knn"]
    config.evals.reconstruction.update(every=-1, num_images=4)  # off: turn on with every >= 0
  config.lock()
  return config


def cpu_recipe(config) -> None:
  """MAE-Tiny that visibly learns in a few CPU minutes (`make pretrain`). The model is the
  paper's ViT-Tiny (12 blocks, 192 wide, 12 heads; decoder 96 x 1); the recipe differs from the
  ImageNet one where a 16k-image run needs it (measured on 2 cores, docs/results.md):
  - built-in Fashion-MNIST at its native 28 px, patch 4 (7 x 7 grid, 12 visible patches): no
    upsampling, ~20 % cheaper per image than 32 px; data on the device (no host pipeline);
  - batch 16 for 1000 steps: on 2 cores the images/s barely depend on the batch, so a small
    batch buys 4x the updates of batch 64 in the same time;
  - peak lr 3.75e-4 (base 6e-3 x 16/256): 1.5e-3 and above make the features worse than a
    random encoder at this batch (while the loss looks fine); warm-up 6 % of the run, cosine;
  - plain-pixel targets (norm_pix_loss=False): per-patch normalised 4x4 targets taught the
    encoder nothing usable in 16k images; the garment silhouette is what it can learn;
  - crop scale 0.35-1 (0.08 leaves a sliver of a 28 px garment);
  - monitors: k-NN (average-pooled patch tokens, bank train[:2000], queries test[:1000]) and a
    linear probe on the same features, each next to a random encoder of the same architecture,
    every 500 steps and at the end; reconstructions every 500 steps.
  """
  config.data = common.builtin_data()
  config.data.on_device = True
  config.data.train_ops = common.crop_flip_ops(scale=(0.35, 1.0))
  config.model.update(image_size=28, patch_size=4, norm_pix_loss=False)
  config.batch_size = 16
  config.total_steps = 1000
  config.optim.base_lr = 6e-3
  config.optim.warmup_steps = -1  # a fraction of the run, kept by shortened runs:
  config.optim.warmup_epochs = 0.06 * config.total_epochs  # 6 %, 60 of 1000 steps
  config.log_every = 50
  config.checkpoint_every = 500
  config.eval_every = 500
  config.evals.knn.update(bank_split="train[:2000]", query_split="test[:1000]", batch_size=250,
                          pool="avg")
  config.evals.linear = common.linear_eval(
      common.every(config), "train[:2000]", "test[:1000]", batch_size=250, epochs=30,
      probe_batch_size=256, pool="avg",
      optim=common.optim_config(name="sgd", base_lr=0.5, b1=0.9, weight_decay=0.0,
                                warmup_epochs=3.0, min_lr=0.0))
