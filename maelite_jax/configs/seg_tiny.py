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

from maelite_jax.configs import common
from maelite_jax.configs.finetune_tiny import NO_DECAY_TOKENS

CPU_INIT = "runs/mae_tiny_cpu"


def seg_data(dataset: str, *, base_size=None, scale_range=(0.5, 2.0), max_ratio=4.0,
             **overrides) -> ml_collections.ConfigDict:
  """The one pipeline's data config for (image, class map) pairs: mmseg's training view
  (random rescale of the short side to base_size * r, r ~ U(scale_range), long side <=
  max_ratio * base_size * r; pad; random crop of the model's size; flip) and the evaluation
  canvas (long side to the evaluator's image_size, padded square)."""
  cfg = common.data_config(dataset, label_type="map", label_key=common.placeholder(str),
                           eval_ops=(("seg_eval_view", {}),))
  cfg.train_ops = (("seg_rescale_crop_flip", dict(base_size=base_size,
                                                  scale_range=tuple(scale_range),
                                                  max_ratio=max_ratio, hflip=True)),)
  cfg.update(overrides)
  return cfg


def seg_eval(config, mode: str, stride: int, image_size, batch_size: int, num_images: int):
  """mIoU / pixel accuracy / per-class IoU over the eval split and a figure of num_images."""
  return dict(type="segmentation", every=common.every(config), split="", mode=mode,
              stride=stride, batch_size=batch_size, num_images=num_images,
              image_size=ml_collections.FieldReference(image_size, field_type=int))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, ("ade20k", "pets", "cpu", "tiny")) or "ade20k"
  config = common.pretrain_skeleton()
  config.objective = "segmentation"
  config.protocol = "segment"  # the results.csv label
  config.batch_size = 16
  config.total_steps = 160_000
  config.optim.update(b1=0.9, b2=0.999, base_lr=1e-4, lr_scale_batch=16, weight_decay=0.05,
                      warmup_steps=1500, min_lr=0.0, no_decay_regex=NO_DECAY_TOKENS)
  config.optim.schedule = "poly"
  config.optim.poly_power = 1.0
  config.optim.layer_decay = 0.8
  config.avg_non_ignore = False  # mmseg's default: the loss is divided by all pixels
  config.best_metric = "miou"    # <workdir>/best holds the params of the best mIoU
  # Sliding 512 windows every 341 px over a 683 px canvas (a 4:3 image gets the usual 512
  # short side); 683 px canvases: the full-size logits live on the device, batch 8.
  config.evals.segmentation = seg_eval(config, "slide", 341, 683, batch_size=8, num_images=4)
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
      dtype="auto",       # bfloat16 compute on GPU/TPU, float32 on CPU
      attention_impl="einsum",  # einsum | xla | cudnn (jax.nn.dot_product_attention)
      attention_pad=0,    # xla/cudnn: pad tokens to a multiple of this (0: cudnn pads odd ones)
      remat=False,  # recompute block activations in the backward pass: memory (no scan_blocks:
                    # the pyramid reads per-block outputs, which the unrolled blocks give)
  ))
  config.data = seg_data("imagefolder", train_split="training", eval_split="validation",
                         reduce_zero_label=True, base_size=512)
  if variant == "pets":
    config.model.update(image_size=224, num_classes=3)
    config.data = seg_data("oxford_iiit_pet", base_size=224)
    config.total_steps = 10_000
    config.optim.warmup_steps = 500
    config.evals.segmentation.update(stride=64, image_size=288)
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
    config.batch_size = 16
    config.total_steps = 160
    config.optim.update(base_lr=3e-3, lr_scale_batch=16, warmup_steps=10)
    config.optim.layer_decay = 0.9  # a short run: let the (weak, CPU-pretrained) backbone move
    config.evals.segmentation.update(mode="whole", image_size=None, batch_size=200,
                                     num_images=8)
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
    config.evals.segmentation.update(batch_size=64, num_images=2)
    config.log_every = 5
    config.checkpoint_every = 10
    config.eval_every = 0
  config.lock()
  return config
