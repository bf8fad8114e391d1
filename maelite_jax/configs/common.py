"""Shared config pieces: the pre-training skeleton every objective fills in, data presets, the
augmentation op lists, and evaluator entries.

Configs are the only home of hyper-parameters: library code reads every key it uses from here
(no defaults of its own), and configs are locked, so an unknown key fails loudly. Ops lists are
`(name, kwargs)` pairs (see maelite_jax/data/ops.py); evaluators are `config.evals` entries (see
maelite_jax/evaluate/base.py).
"""

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
placeholder = ml_collections.config_dict.placeholder


# Opt-in XLA option sets, by name, for config.xla_options (a name and explicit options mix:
# "gpu --xla_gpu_autotune_level=2"). None is on by default: each is kept only where the GPU
# benchmark (scripts/gpu_bench.sh, docs/performance.md) measures a win.
#   gpu: Triton GEMMs for every matmul (lets XLA fuse LayerNorm / bias / GELU into the matmul
#        instead of a cuBLAS call with separate element-wise kernels: fewer HBM round trips
#        for width-192 matmuls) and the latency-hiding scheduler.
XLA_OPTION_SETS = {
    "gpu": "--xla_gpu_triton_gemm_any=true --xla_gpu_enable_latency_hiding_scheduler=true",
}


def parse_arg(arg: str | None, known: tuple[str, ...]) -> str:
  """The variant after ':' in `--config configs/x.py:variant` ('' = the paper's recipe)."""
  arg = (arg or "").strip()
  if arg and arg not in known:
    raise ValueError(f"unknown config variant {arg!r}; choose one of {', '.join(known)} or none")
  return arg


# ---------------------------------------------------------------- augmentation op lists

def crop_flip_ops(scale=(0.08, 1.0), interpolation="bicubic", flip=0.5,
                  antialias=True) -> tuple:
  """MAE-Lite's pre-training view: RandomResizedCrop (ratio 3/4-4/3) + horizontal flip.
  `antialias=True` resizes as PIL (so the reference's timm/torchvision) does; False takes the
  plain kernel of big_vision's and TF's ImageNet pipelines: ~2x a PyTorch DataLoader's
  per-core rate on JPEGs (1.1-1.3x antialiased), different pixels (a shrinking crop aliases);
  docs/input-pipeline.md measures both."""
  ops = (("random_resized_crop", dict(scale=tuple(scale), ratio=(3 / 4, 4 / 3),
                                      interpolation=interpolation, antialias=antialias)),)
  return ops + ((("random_flip", dict(prob=flip)),) if flip else ())


def eval_ops(crop_pct=0.875, interpolation="bicubic") -> tuple:
  """The evaluation view: resize the short side to size / crop_pct, centre crop (256 -> 224)."""
  return (("center_crop_resize", dict(crop_pct=crop_pct, interpolation=interpolation)),)


def byol_view_ops(blur_prob: float, solarize_prob: float, blur_sigma=(0.1, 2.0)) -> tuple:
  """One of BYOL's asymmetric views as in MAE-Lite's ssl_transform, in its order: crop 0.08-1
  (bilinear), colour jitter 0.4/0.4/0.2/0.1 p 0.8, blur, grayscale p 0.2, flip, solarize."""
  ops = (("random_resized_crop", dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                      interpolation="bilinear", antialias=True)),
         ("color_jitter", dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, prob=0.8)),
         ("random_gaussian_blur", dict(sigma=tuple(blur_sigma), prob=blur_prob)),
         ("random_grayscale", dict(prob=0.2)),
         ("random_flip", dict(prob=0.5)))
  if solarize_prob:
    ops += (("random_solarize", dict(threshold=128 / 255, prob=solarize_prob)),)
  return ops


# ---------------------------------------------------------------- data

def data_config(dataset: str = "fashion_mnist_builtin", **overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      dataset=dataset,
      data_dir=placeholder(str),
      train_split="train",
      eval_split="test",
      image_key="image",         # tfds feature names
      label_key="label",
      label_type="class",        # 'class' (one label per image) | 'map' (segmentation)
      reduce_zero_label=False,   # segmentation folders: 0 -> ignore, k -> k - 1 (ADE20K)
      shuffle_buffer=10_000,
      on_device=False,           # the split decoded once onto the accelerator, augmented there
      on_device_canvas=0,        # on_device ImageFolder: images stored at this side (0: none)
      cache=False,               # tf.data: decoded examples kept in memory
      prefetch=2,                # batches in flight on the devices
      service_address="",        # tf.data service dispatcher ("host:port"): workers elsewhere
                                 # decode and augment (docs/input-pipeline.md); "" = here
      check_images=True,         # imagefolder: open every file once (cached), skip unreadable
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      train_ops=crop_flip_ops(),  # MAE-Lite: crop scale 0.08-1 (the original MAE 0.2-1)
      view2_ops=(),               # a second view (MoCo-v3); () = one view
      eval_ops=eval_ops(),
  ))
  cfg.update(overrides)
  return cfg


def imagenet_data() -> ml_collections.ConfigDict:
  return data_config("imagenet2012", eval_split="validation", shuffle_buffer=50_000)


def builtin_data() -> ml_collections.ConfigDict:
  """Real Fashion-MNIST shipped inside the package: works offline. Its 28 px images are shown
  whole at evaluation (no centre crop)."""
  return data_config("fashion_mnist_builtin", cache=True, shuffle_buffer=20_000,
                     eval_ops=eval_ops(crop_pct=1.0))


def optim_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      name="adamw",         # adamw | sgd (Nesterov) | lars
      base_lr=1.5e-4,       # lr = base_lr * batch_size / lr_scale_batch
      lr_scale_batch=256,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.05,
      no_decay_regex="",    # extra params to exclude from decay (1-D ones too, unless decay_all)
      decay_all=False,      # True: decay every param, 1-D ones included (MoCo-v3's AdamW)
      schedule="cosine",    # cosine | poly (segmentation)
      poly_power=1.0,
      warmup_epochs=40.0,
      warmup_steps=-1,      # >= 0 overrides warmup_epochs
      warmup_init_lr=0.0,
      min_lr=0.0,
      grad_clip=0.0,        # 0 = no clipping (the MAE recipe)
      layer_decay=1.0,      # layer-wise lr decay (fine-tuning); 1 = off
  ))
  cfg.update(overrides)
  return cfg


# ---------------------------------------------------------------- evaluators

def knn_eval(every, bank_split: str, query_split: str, batch_size: int, baseline=True,
             pool="token") -> dict:
  """DINO's weighted k-NN (cosine, k 20, T 0.07) of the frozen encoder; with `baseline` also
  of a random encoder (once per run) as the floor."""
  return dict(type="knn", every=every, k=20, temperature=0.07, pool=pool, bank_split=bank_split,
              query_split=query_split, batch_size=batch_size, baseline=baseline)


def linear_eval(every, train_split: str, eval_split: str, batch_size: int, epochs: int,
                probe_batch_size: int, optim, baseline=True, pool="token") -> dict:
  """MAE's linear probe on cached frozen features (BatchNorm without affine + Linear)."""
  return dict(type="linear", every=every, pool=pool, train_split=train_split,
              eval_split=eval_split, batch_size=batch_size, epochs=epochs,
              probe_batch_size=probe_batch_size, optim=optim, baseline=baseline)


def pretrain_skeleton() -> ml_collections.ConfigDict:
  """Keys shared by all training configs (values are the ImageNet pre-training defaults)."""
  config = ml_collections.ConfigDict(dict(
      objective="mae",
      seed=0,
      batch_size=4096,        # global batch, independent of the device count
      micro_batch_size=0,     # > 0: gradient accumulation over batch_size / micro_batch_size
      total_epochs=400.0,
      total_steps=0,          # > 0 overrides total_epochs
      init="",                # a checkpoint (workdir / step dir) to initialise params from
      init_reset="",          # params (path regex) that keep their fresh init despite `init`
      fsdp_regex="",          # params (and their optimizer state) sharded FSDP-style, e.g. ".*"
      # XLA compiler options of the train step, XLA_FLAGS-style, or a named set of
      # XLA_OPTION_SETS (opt-in, e.g. "gpu"); a GPU option is accepted and ignored on CPU
      xla_options="",
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=3,     # >= 1: the final checkpoint is always kept
      eval_every=5000,        # the default cadence of config.evals (each entry has its own)
      best_metric="",         # an evaluator scalar whose best value <workdir>/best keeps
      best_mode="max",
      distributed=False,      # jax.distributed.initialize (also via MAELITE_DISTRIBUTED=1)
      # NaN/Inf loss or gradients (the update is always dropped): 'skip' counts it and goes on,
      # 'rollback' restores the last checkpoint with lr x nonfinite_lr_factor, 'stop' raises.
      nonfinite_policy="skip",
      nonfinite_lr_factor=0.5,
      # 'skip' escalates: the run stops (exit 2, naming the step, the count and the likely
      # causes) after more than nonfinite_max_consecutive non-finite steps in a row, or more than
      # nonfinite_max_fraction of the last nonfinite_window steps (of the run, if shorter).
      nonfinite_max_consecutive=20,
      nonfinite_window=100,
      nonfinite_max_fraction=0.25,
      data=imagenet_data(),
      optim=optim_config(),
      evals=ml_collections.ConfigDict(),
  ))
  return config


def every(config):
  """config.eval_every as each evaluator's default: --config.eval_every=N moves every evaluator,
  while --config.evals.NAME.every=M overrides that one only."""
  return follow(config, "eval_every")


def follow(config, key):
  """A value that follows config[key] until it is set itself. A plain `get_ref` is the same
  FieldReference in both places, so setting either one (e.g. `evals.linear.every=-1`) would set
  the other and every field sharing it; a derived reference (`ref + 0`) is set on its own."""
  ref = config.get_ref(key)
  return ref + ("" if isinstance(config[key], str) else 0)
