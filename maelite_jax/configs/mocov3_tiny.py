"""MoCo-v3 pre-training of ViT-Tiny (MAE-Lite's mocov3_exp.py recipe).

Default: ImageNet-1k, 400 epochs, batch 1024, AdamW(0.9, 0.999), base lr 1.5e-4 (x batch/256),
weight decay 0.1 on ALL parameters, 40 warm-up epochs from 1e-6 then cosine to 0; projector
3 x 4096 -> 256, predictor 2 x 4096 -> 256, T 0.2, momentum 0.99 -> 1 (cosine), SyncBN (free
under jit), patch embedding trained; BYOL's asymmetric two-view augmentation.
Variants:
  :cpu    built-in Fashion-MNIST at 32px, a ViT-Tiny-wide encoder of 4 blocks on patch 8 with
          512/128 heads: ~8 min on 2 busy CPU cores. Per image MoCo-v3 runs the ViT 8 times
          (2 views x (forward + backward) + 2 key forwards) on all tokens where MAE runs it 3
          times on a quarter of them, so MAE's :cpu encoder (12 blocks, patch 4) would take ~2.5
          img/s here, hours for a useful run; override model.depth/patch_size to get it.
  :tiny   a 2-block toy for tests and smoke runs
"""

import ml_collections

from maelite_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, ("cpu", "tiny"))
  config = common.pretrain_skeleton()
  config.objective = "mocov3"
  config.batch_size = 1024
  config.total_epochs = 400.0
  config.optim.update(b1=0.9, b2=0.999, weight_decay=0.1, decay_all=True, warmup_epochs=40.0,
                      warmup_init_lr=1e-6)
  config.data = common.imagenet_data()
  two_view_data(config.data)
  config.model = ml_collections.ConfigDict(dict(
      name="vit_tiny_patch16",
      image_size=224,
      patch_size=16,
      drop_path_rate=0.0,
      depth=ml_collections.config_dict.placeholder(int),  # None = the variant's depth
      dtype="auto",       # bfloat16 compute on GPU/TPU, float32 on CPU
      attention_impl="einsum",  # einsum | xla | cudnn (jax.nn.dot_product_attention)
      attention_pad=0,    # xla/cudnn: pad tokens to a multiple of this (0: cudnn pads odd ones)
      scan_blocks=False,  # lax.scan over encoder blocks: compile time ~depth x shorter
      remat=False,        # recompute block activations in the backward pass: memory
      cls_init_std=1e-6,
      dim=256,                  # projector / predictor output
      mlp_dim=4096,             # their hidden width
      predictor_last_bn=True,   # MoCo-v3's ViT predictor (and MAE-Lite's); False: its ResNet one
      freeze_patch_embed=False,  # MoCo-v3's stop_grad_conv1 trick (off in MAE-Lite's recipe)
  ))
  config.moco = ml_collections.ConfigDict(dict(temperature=0.2, momentum=0.99))
  # Weighted k-NN monitor on the base encoder (eval view) at eval_every and at the end.
  config.evals.knn = common.knn_eval(common.every(config), "train[:50000]", "validation[:10000]",
                                     batch_size=1024)
  if variant in ("cpu", "tiny"):
    config.data = common.builtin_data()
    two_view_data(config.data, blur_sigma=(0.1, 0.5))  # ~(0.1, 2.0) px at 224, scaled to 32 px
    config.model.image_size = 32
    config.model.patch_size = 8
    config.model.depth = 4
    config.model.dim = 128
    config.model.mlp_dim = 512
    config.batch_size = 64
    config.total_steps = 200
    config.optim.base_lr = 5e-3  # peak 1.25e-3 at batch 64
    config.optim.warmup_steps = 20
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_every = 100
    config.evals.knn.update(batch_size=500, bank_split="train[:5000]", query_split="test[:1000]")
  if variant == "tiny":
    config.model.depth = 2
    config.model.patch_size = 4
    config.model.dim = 32
    config.model.mlp_dim = 64
    config.batch_size = 32
    config.total_steps = 20
    config.optim.warmup_steps = 5
    config.log_every = 5
    config.checkpoint_every = 10
    config.eval_every = 0
    config.evals.knn.update(k=5, batch_size=64, bank_split="train[:256]", query_split="test[:128]",
                            baseline=False)
  config.lock()
  return config


def two_view_data(data, blur_sigma=(0.1, 2.0)):
  """BYOL's asymmetric views as in MAE-Lite's ssl_transform: crop 0.08-1 (bilinear), colour
  jitter 0.4/0.4/0.2/0.1 p 0.8, blur p 1.0 / 0.1, grayscale p 0.2, flip, solarize p 0 / 0.2."""
  data.train_ops = common.byol_view_ops(blur_prob=1.0, solarize_prob=0.0, blur_sigma=blur_sigma)
  data.view2_ops = common.byol_view_ops(blur_prob=0.1, solarize_prob=0.2, blur_sigma=blur_sigma)
