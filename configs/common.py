"""Shared config pieces: the pre-training skeleton every objective fills in, dataset presets.

Every pre-training config has the same keys (run length: total_steps / total_epochs), so one
command line works for all of them. Configs are locked: an unknown key fails loudly.
"""

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_arg(arg: str | None, known: tuple[str, ...]) -> str:
  """The variant after ':' in `--config configs/x.py:variant` ('' = the paper's recipe)."""
  arg = (arg or "").strip()
  if arg and arg not in known:
    raise ValueError(f"unknown config variant {arg!r}; choose one of {', '.join(known)} or none")
  return arg


def data_config(dataset: str = "fashion_mnist_builtin", **overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      dataset=dataset,
      data_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="test",
      shuffle_buffer=10_000,
      crop_scale=(0.08, 1.0),  # MAE-Lite; the original MAE uses (0.2, 1.0)
      crop_ratio=(3 / 4, 4 / 3),
      hflip=True,
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      cache=False,
      prefetch=2,
      check_images=True,    # imagefolder: open every file once (cached), skip unreadable ones
      # Two augmented views (MoCo-v3); *_prob pairs are (view 1, view 2), 0 = op left out.
      views=1,
      interpolation="bicubic",
      color_jitter=(0.4, 0.4, 0.2, 0.1),  # brightness, contrast, saturation, hue
      color_jitter_prob=(0.0, 0.0),
      grayscale_prob=(0.0, 0.0),
      blur_prob=(0.0, 0.0),
      blur_sigma=(0.1, 2.0),
      solarize_prob=(0.0, 0.0),
  ))
  cfg.update(overrides)
  return cfg


def imagenet_data() -> ml_collections.ConfigDict:
  return data_config("imagenet2012", eval_split="validation", shuffle_buffer=50_000)


def builtin_data() -> ml_collections.ConfigDict:
  """Real Fashion-MNIST shipped inside the package: works offline."""
  return data_config("fashion_mnist_builtin", cache=True, shuffle_buffer=20_000)


def optim_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      name="adamw",
      base_lr=1.5e-4,       # lr = base_lr * batch_size / lr_scale_batch
      lr_scale_batch=256,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.05,
      no_decay_regex="",    # extra params to exclude from decay (1-D ones too, unless decay_all)
      decay_all=False,      # True: decay every param, 1-D ones included (MoCo-v3's AdamW)
      warmup_epochs=40.0,
      warmup_steps=-1,      # >= 0 overrides warmup_epochs
      warmup_init_lr=0.0,
      min_lr=0.0,
      grad_clip=0.0,        # 0 = no clipping (the MAE recipe)
  ))
  cfg.update(overrides)
  return cfg


def pretrain_skeleton() -> ml_collections.ConfigDict:
  """Keys shared by all pre-training configs (values are the ImageNet defaults)."""
  return ml_collections.ConfigDict(dict(
      objective="mae",
      seed=0,
      batch_size=4096,        # global batch, independent of the device count
      micro_batch_size=0,     # > 0: gradient accumulation over batch_size / micro_batch_size
      total_epochs=400.0,
      total_steps=0,          # > 0 overrides total_epochs
      init="",                # a checkpoint (workdir / step dir) to initialise params from
      fsdp_regex="",          # params (and their optimizer state) sharded FSDP-style, e.g. ".*"
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=3,
      eval_every=5000,        # figures (e.g. reconstructions) every N steps and at the end
      num_vis_images=8,
      distributed=False,      # jax.distributed.initialize (also via MAELITE_DISTRIBUTED=1)
      # NaN/Inf loss or gradients (the update is always dropped): 'skip' counts it and goes on,
      # 'rollback' restores the last checkpoint with lr x nonfinite_lr_factor, 'stop' raises.
      nonfinite_policy="skip",
      nonfinite_lr_factor=0.5,
      data=imagenet_data(),
      optim=optim_config(),
  ))
