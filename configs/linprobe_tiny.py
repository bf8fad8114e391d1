"""Frozen-encoder evaluation of ViT-Tiny: linear probe, k-NN and few-shot share this config.

Default (ImageNet-1k): MAE's linear probe (BatchNorm without affine + Linear on the cls token
after the final norm, LARS, base lr 0.1 x batch/256, batch 16384, 90 epochs with 10 warm-up,
no weight decay), trained on cached centre-view features; DINO's weighted k-NN (k 20, T 0.07);
big_vision's ridge few-shot (1/5/10/25 shots, 3 seeds, l2 2^10). An empty `init` evaluates a
randomly initialised encoder, the baseline every number should be compared with.
Variants:
  :cpu    the built-in Fashion-MNIST at 32px / patch 4 from runs/mae_tiny_cpu (the probe uses
          SGD: see below)
  :tiny   a 2-block random encoder on a few hundred images, for tests

  python scripts/linprobe.py --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/knn.py      --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/fewshot.py  --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, ("cpu", "tiny"))
  config = ml_collections.ConfigDict(dict(
      seed=0,
      init="",                 # checkpoint / workdir of any encoder; '' = random init
      distributed=False,
      num_classes=1000,
      pool="token",            # "token" (cls after the final norm, MAE/DINO) | "avg"
      feature_batch_size=1024,
      cache_features=True,     # <workdir>/features/*.npz, shared by the three protocols
      model=ml_collections.ConfigDict(dict(
          name="vit_tiny_patch16",  # architecture of the random-init baseline
          image_size=224,           # also the input size for a loaded encoder
          patch_size=16,
          depth=ml_collections.config_dict.placeholder(int),
      )),
      data=common.imagenet_data(),
      linear=ml_collections.ConfigDict(dict(
          epochs=90,
          batch_size=16384,
          optim=common.optim_config(name="lars", base_lr=0.1, b1=0.9, weight_decay=0.0,
                                    warmup_epochs=10.0, min_lr=0.0),
      )),
      knn=ml_collections.ConfigDict(dict(k=20, temperature=0.07)),
      fewshot=ml_collections.ConfigDict(dict(shots=(1, 5, 10, 25), seeds=3, l2_reg=2.0**10)),
  ))
  config.data.eval_crop_pct = 0.875
  if variant in ("cpu", "tiny"):
    config.init = "runs/mae_tiny_cpu"
    config.data = common.builtin_data()
    config.data.eval_crop_pct = 1.0
    config.num_classes = 10
    config.model.image_size = 32
    config.model.patch_size = 4
    config.feature_batch_size = 1000
    # LARS's step is 0.001 |w| per unit lr: it needs MAE's 16k batches (lr 6.4) and thousands of
    # steps to move a N(0, 0.01) head. On 60k examples SGD + Nesterov trains the same probe.
    config.linear.batch_size = 256
    config.linear.optim.update(name="sgd", base_lr=0.5, warmup_epochs=5.0)
  if variant == "tiny":
    config.init = ""
    config.model.depth = 2
    config.data.train_split = "train[:256]"
    config.data.eval_split = "test[:128]"
    config.feature_batch_size = 128
    config.linear.update(epochs=20, batch_size=64)
    config.fewshot.shots = (1, 5)
    config.fewshot.seeds = 2
  config.lock()
  return config
