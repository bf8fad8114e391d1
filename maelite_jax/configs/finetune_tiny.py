"""Fine-tuning ViT-Tiny for classification (MAE-Lite's eval_tools recipes).

Default: the paper's "improved" recipe (finetuning_exp.py) on ImageNet-1k: 300 epochs, batch
1024, AdamW(0.9, 0.999), lr 1e-3 x batch/256, wd 0.05 (none on biases, norms, pos_embed,
cls_token), 5 warm-up epochs, cosine to 1e-6, layer-wise lr decay 0.85 (use 0.75 for MoCo-v3
encoders), global average pooling + fc_norm, RandAugment rand-m10-mstd0.5-inc1, mixup 0.2, no
cutmix / label smoothing / random erasing / drop path / EMA. (Its colour jitter 0.3 is inert:
timm skips colour jitter when RandAugment is on, and so do we.) The layer decay is a preset
chosen from the objective of the checkpoint in config.init (MAE / D-MAE 0.85, MoCo-v3 0.75:
optim.layer_decay_presets); --config.optim.layer_decay=X overrides it.
Variants:
  :default  MAE's default recipe (finetuning_mae_exp.py): 100 epochs, rand-m9-mstd0.5-inc1,
            mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing 0.25, drop path 0.1
  :cpu      the built-in Fashion-MNIST at 32px / patch 4 from the CPU MAE run
            (runs/mae_tiny_cpu; pre-train it with `make pretrain`), a CPU-sized schedule
  :linprobe      MAE's linear probe on images (main_linprobe.py): frozen encoder, BatchNorm
                 without affine + head on the cls token, LARS lr 0.1 x batch/256, batch 16384,
                 90 epochs (10 warm-up), no weight decay, crop + flip only. (scripts/linprobe.py
                 is the fast variant on cached centre-crop features.)
  :linprobe_cpu  the same probe on the built-in data from runs/mae_tiny_cpu (SGD: LARS needs
                 MAE's 16k batches, see configs/linprobe_tiny.py)
  :tiny     a 2-block toy from scratch for tests and smoke runs

  python scripts/finetune.py --config configs/finetune_tiny.py --config.init=PRETRAIN_WORKDIR \
      --workdir runs/ft_tiny
"""

import ml_collections

from maelite_jax.configs import common

NO_DECAY_TOKENS = r"(^|/)(pos_embed|cls_token)$"


def finetune_skeleton() -> ml_collections.ConfigDict:
  """Keys of every classification config (fine-tuning and transfer), improved-recipe values."""
  config = common.pretrain_skeleton()
  config.objective = "classification"
  config.protocol = "finetune"  # the results.csv label
  config.batch_size = 1024
  config.total_epochs = 300.0
  config.optim.update(b1=0.9, b2=0.999, base_lr=1e-3, weight_decay=0.05, warmup_epochs=5.0,
                      min_lr=1e-6, no_decay_regex=NO_DECAY_TOKENS)
  # Layer-wise lr decay: None = the preset for where the weights come from: the objective of
  # config.init's checkpoint, '' = imported weights, 'scratch' = no config.init; 1.0 = off.
  config.optim.layer_decay = common.placeholder(float)
  config.optim.layer_decay_presets = dict(mae=0.85, dmae=0.85, mocov3=0.75, scratch=1.0,
                                          **{"": 0.85})
  config.ema_decay = 0.0      # > 0: also evaluate an EMA of the weights (e.g. 0.9999)
  config.linear_probe = False # True: train only a BatchNorm(no affine) + head on a frozen encoder
  config.best_metric = "top1"  # <workdir>/best holds the params of the best eval top-1
  config.evals.accuracy = dict(type="accuracy", every=common.every(config), split="",
                               batch_size=1024)
  config.log_every = 100
  config.checkpoint_every = 1250
  config.keep_checkpoints = 2
  config.eval_every = 6250    # ~5 epochs at batch 1024
  config.model = ml_collections.ConfigDict(dict(
      name="vit_tiny_patch16",
      image_size=224,
      patch_size=16,
      depth=ml_collections.config_dict.placeholder(int),  # None = the variant's depth
      num_classes=1000,
      global_pool="avg",        # "avg" (+ fc_norm, the reference) | "token"
      drop_path_rate=0.0,
      head_init_std=2e-5,       # MAE: trunc_normal(2e-5) head weights
      dtype="auto",       # bfloat16 compute on GPU/TPU, float32 on CPU
      attention_impl="einsum",
      scan_blocks=False,  # lax.scan over encoder blocks: compile time ~depth x shorter
      remat=False,        # recompute block activations in the backward pass: memory
  ))
  config.augment = ml_collections.ConfigDict(dict(
      mixup=0.2,             # Beta(alpha) mixup; 0 = off
      cutmix=0.0,            # Beta(alpha) cutmix; 0 = off
      mix_prob=1.0,          # probability a batch is mixed at all
      switch_prob=0.5,       # with both on: probability of cutmix instead of mixup
      label_smoothing=0.0,
      reprob=0.0,            # random erasing probability (timm 'pixel' mode, on device)
  ))
  config.data = common.imagenet_data()
  finetune_views(config.data, randaugment="rand-m10-mstd0.5-inc1")
  # scripts/sweep.py: a grid of runs trained on train_split, picked by top-1 on val_split,
  # then (rerun_best) the winner trained on data.train_split and tested on data.eval_split.
  config.sweep = ml_collections.ConfigDict(dict(
      base_lrs=(5e-4, 1e-3, 2e-3),
      layer_decays=(0.65, 0.75, 0.85),
      train_split="train[:90%]",
      val_split="train[90%:]",
      rerun_best=True,
  ))
  return config


def mae_default_recipe(config) -> None:
  """MAE's default fine-tuning regularisation (stronger; tuned for ViT-Base)."""
  config.total_epochs = 100.0
  finetune_views(config.data, randaugment="rand-m9-mstd0.5-inc1")
  config.augment.update(mixup=0.8, cutmix=1.0, label_smoothing=0.1, reprob=0.25)
  config.model.drop_path_rate = 0.1


def linear_probe_recipe(config) -> None:
  """MAE's linear probe (main_linprobe.py) as a run of the loop."""
  config.protocol = "linear-images"
  config.linear_probe = True
  config.batch_size = 16384
  config.total_epochs = 90.0
  config.optim.update(name="lars", base_lr=0.1, b1=0.9, weight_decay=0.0, warmup_epochs=10.0,
                      min_lr=0.0)
  config.optim.layer_decay = 1.0
  config.model.global_pool = "token"
  config.model.head_init_std = 0.01
  finetune_views(config.data, randaugment="")
  config.augment.update(mixup=0.0, cutmix=0.0, label_smoothing=0.0, reprob=0.0)


def finetune_views(data, randaugment: str, crop_scale=(0.08, 1.0), crop_pct=0.875) -> None:
  """Training view: RandomResizedCrop + flip (+ timm's RandAugment after the flip when
  `randaugment` names a policy); eval view: resize 256 / centre crop 224 (crop_pct), bicubic."""
  ops = common.crop_flip_ops(scale=crop_scale)
  if randaugment:
    ops += (("randaugment", dict(spec=randaugment)),)
  data.train_ops = ops
  data.eval_ops = common.eval_ops(crop_pct=crop_pct)


def builtin_sizes(config, crop_scale=(0.35, 1.0)) -> None:
  """The built-in Fashion-MNIST at 32px / patch 4 (what the CPU pre-training configs use); crop
  scale 0.35-1 (0.08 wipes out most of a 28 px garment), no centre crop at evaluation."""
  data = common.builtin_data()
  finetune_views(data, randaugment="", crop_scale=crop_scale, crop_pct=1.0)
  config.data = data
  config.model.image_size = 32
  config.model.patch_size = 4
  config.model.num_classes = 10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, ("default", "cpu", "linprobe", "linprobe_cpu", "tiny"))
  config = finetune_skeleton()
  if variant == "default":
    mae_default_recipe(config)
  if variant.startswith("linprobe"):
    linear_probe_recipe(config)
  if variant == "linprobe_cpu":
    builtin_sizes(config)
    config.init = "runs/mae_tiny_cpu"
    config.batch_size = 256
    config.total_steps = 1000
    # The warm-up as a fraction of the run (1/20: 50 of 1000 steps) so a shortened run keeps it.
    config.optim.update(name="sgd", base_lr=0.5, warmup_steps=-1,
                        warmup_epochs=config.total_epochs / 20)
    config.evals.accuracy.batch_size = 1000
    config.log_every = 50
    config.checkpoint_every = 500
    config.eval_every = 500
  if variant in ("cpu", "tiny"):
    builtin_sizes(config)
    config.init = "runs/mae_tiny_cpu"
    config.batch_size = 128
    config.total_steps = 1500
    config.optim.base_lr = 2e-3
    # The warm-up as a fraction of the run (1/15: 100 of 1500 steps) so a shortened run keeps it.
    config.optim.warmup_steps = -1
    config.optim.warmup_epochs = config.total_epochs / 15
    config.evals.accuracy.batch_size = 1000
    config.log_every = 50
    config.checkpoint_every = 500
    config.eval_every = 500
  if variant == "tiny":
    config.init = ""
    config.model.depth = 2
    config.batch_size = 32
    config.total_steps = 30
    config.optim.warmup_steps = 5
    config.data.eval_split = "test[:256]"
    config.evals.accuracy.batch_size = 64
    config.log_every = 5
    config.checkpoint_every = 15
    config.eval_every = 0
    config.sweep.update(base_lrs=(1e-2, 4e-2), layer_decays=(0.75,), train_split="train[:256]",
                        val_split="train[256:384]", rerun_best=False)
  config.lock()
  return config
