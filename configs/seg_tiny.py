"""Semantic segmentation with a (pre-trained) ViT-Tiny backbone and a semantic-FPN head.

Default (= :ade20k): MAE-Lite's seg recipe (REFERENCE.md) on ADE20K (ADEChallengeData2016 laid
out as root/{training,validation}/{images,masks}, see docs/segmentation.md): 512 crop, batch 16,
160k iterations, AdamW(0.9, 0.999) lr 1e-4 (at batch 16), wd 0.05, layer decay 0.8, drop path
0.1, poly decay after 1500 warm-up steps, features from blocks 3, 5, 7, 11, random rescale
0.5-2.0 of 512 (long side <= 2048), random crop, flip; eval: long side 683 (a 4:3 image gets the
usual 512 short side), sliding 512 windows every 341 px.
Variants:
  :ade20k  the default
  :pets    Oxford-IIIT Pets (tfds) as {background, cat, dog}, 224 crop, 10k steps
  :cpu     the OFFLINE SMOKE task: built-in Fashion-MNIST, foreground pixels (> 32/255) labelled
           garment class + 1, background 0 (11 classes), 32px / patch 4, ViT-Tiny from the CPU MAE
           run runs/mae_tiny_cpu (`make pretrain`); when that folder is missing the backbone
           starts from scratch (a warning says so). A CPU-sized head (32 channels), 160 steps of
           16 crops, evaluated at the end on 1000 test images: a few minutes on 2 cores.
  :tiny    a 2-block toy for tests

  python scripts/segment.py --config configs/seg_tiny.py:cpu --workdir runs/seg_cpu
  python scripts/segment.py --config configs/seg_tiny.py:ade20k \
      --config.data.data_dir=/data/ade20k --config.init=runs/mae_tiny_in1k --workdir runs/seg_ade
"""

import os

import ml_collections
from absl import logging

from configs import common
from configs.finetune_tiny import NO_DECAY_TOKENS

CPU_INIT = "runs/mae_tiny_cpu"


def seg_data(dataset: str, **overrides) -> ml_collections.ConfigDict:
  """Keys read by maelite_jax.data.segmentation (plus what the generic data check reads)."""
  cfg = ml_collections.ConfigDict(dict(
      dataset=dataset,
      data_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="test",
      image_key="image",
      label_key=ml_collections.config_dict.placeholder(str),  # None: the dataset's preset
      reduce_zero_label=False,  # imagefolder: 0 -> ignore, k -> k - 1 (ADE20K's files)
      shuffle_buffer=10_000,
      cache=False,
      prefetch=2,
      check_images=True,
      mean=common.IMAGENET_MEAN,
      std=common.IMAGENET_STD,
      scale_range=(0.5, 2.0),   # random rescale factor r
      base_size=ml_collections.config_dict.placeholder(int),  # short side at r = 1 (None: crop)
      max_ratio=4.0,            # long side <= max_ratio * base_size * r (mmseg's 2048 / 512)
      hflip=True,
      eval_size=ml_collections.config_dict.placeholder(int),  # eval canvas side (None: crop)
  ))
  cfg.update(overrides)
  return cfg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, ("ade20k", "pets", "cpu", "tiny")) or "ade20k"
  config = common.pretrain_skeleton()
  config.objective = "segmentation"
  config.protocol = "segment"  # results.csv: top1 = mIoU, top5 = pixel accuracy
  config.batch_size = 16
  config.total_steps = 160_000
  config.optim.update(b1=0.9, b2=0.999, base_lr=1e-4, lr_scale_batch=16, weight_decay=0.05,
                      warmup_steps=1500, min_lr=0.0, no_decay_regex=NO_DECAY_TOKENS)
  config.optim.schedule = "poly"
  config.optim.poly_power = 1.0
  config.layer_decay = 0.8
  config.avg_non_ignore = False  # mmseg's default: the loss is divided by all pixels
  config.eval_mode = "slide"     # "whole" | "slide" (windows of the crop size)
  config.eval_stride = 341
  config.eval_batch_size = 8      # 683 px canvases; the full-size logits live on the device
  config.save_best = True
  config.num_vis_images = 4
  config.log_every = 50
  config.checkpoint_every = 4000
  config.keep_checkpoints = 2
  config.eval_every = 16_000
  config.model = ml_collections.ConfigDict(dict(
      name="vit_tiny_patch16",
      image_size=512,           # the training crop (and sliding window)
      patch_size=16,
      depth=ml_collections.config_dict.placeholder(int),      # None = the variant's
      embed_dim=ml_collections.config_dict.placeholder(int),
      num_heads=ml_collections.config_dict.placeholder(int),
      out_indices=ml_collections.config_dict.placeholder(tuple),  # None: 3,5,7,11 for 12
      num_classes=150,
      fpn_dim=256,
      head_dim=128,
      dropout=0.1,
      classifier_init_std=0.01,  # mmseg's N(0, 0.01); 0 = lecun_normal (short runs)
      drop_path_rate=0.1,
      dtype="float32",
      attention_impl="einsum",
      remat=False,  # recompute block activations in the backward pass: memory (no scan_blocks:
                    # the pyramid reads per-block outputs, which the unrolled blocks give)
  ))
  config.data = seg_data("imagefolder", train_split="training", eval_split="validation",
                         reduce_zero_label=True, base_size=512, eval_size=683)
  if variant == "pets":
    config.model.update(image_size=224, num_classes=3)
    config.data = seg_data("oxford_iiit_pet", base_size=224, eval_size=288)
    config.total_steps = 10_000
    config.optim.warmup_steps = 500
    config.eval_stride = 64
    config.checkpoint_every = 2000
    config.eval_every = 2000
  if variant in ("cpu", "tiny"):
    config.model.update(image_size=32, patch_size=4, num_classes=11, fpn_dim=32, head_dim=32,
                        drop_path_rate=0.0, classifier_init_std=0.0)
    config.data = seg_data("fashion_mnist_builtin", cache=True, shuffle_buffer=20_000,
                           scale_range=(0.75, 1.5), eval_split="test[:1000]")
    config.init = CPU_INIT if os.path.exists(CPU_INIT) else ""
    if variant == "cpu" and not config.init:
      logging.warning("%s is missing (pre-train it with `make pretrain`): the :cpu segmentation "
                      "backbone starts from scratch", CPU_INIT)
    config.eval_mode = "whole"
    config.batch_size = 16
    config.total_steps = 160
    config.optim.update(base_lr=3e-3, lr_scale_batch=16, warmup_steps=10)
    config.layer_decay = 0.9  # a short run: let the (weak, CPU-pretrained) backbone move
    config.eval_batch_size = 200
    config.num_vis_images = 8
    config.log_every = 20
    config.checkpoint_every = 80
    config.eval_every = 0      # only at the end (a few minutes in all on 2 cores)
  if variant == "tiny":
    config.init = ""
    config.model.update(depth=2, fpn_dim=16, head_dim=16)
    config.batch_size = 32
    config.data.eval_split = "test[:128]"
    config.total_steps = 20
    config.optim.warmup_steps = 3
    config.eval_batch_size = 64
    config.num_vis_images = 2
    config.log_every = 5
    config.checkpoint_every = 10
    config.eval_every = 0
  config.lock()
  return config
