"""Transfer fine-tuning on the paper's data-poor sets (MAE-Lite's finetuning_transfer_exp.py).

Recipe: SGD with Nesterov momentum 0.9, no weight decay, gradient clipping at 1.0, layer-wise
lr decay 0.75, global average pooling + fc_norm, batch 512, only RandomResizedCrop(0.08-1, 224,
bicubic) + flip (no RandAugment, mixup, cutmix, smoothing, erasing or drop path), warm-up +
cosine. The argument picks the dataset preset:
  :cifar10 :cifar100             tfds; 50 epochs, 10 warm-up, lr 0.1 at batch 512 (transfer.sh)
  :oxford_flowers102 :oxford_iiit_pet
                                 tfds; the experiment file's defaults (lr 0.03 at batch 512,
                                 20 warm-up epochs) for 100 epochs: tune them with scripts/sweep.py
  :aircraft :cars                ImageFolder (--config.data.data_dir=ROOT holding
                                 <split>/<class>/<images>), same defaults as flowers/pets;
                                 sweeps need a held-out `val` folder (folders cannot be sliced)
  :builtin                       the built-in Fashion-MNIST at 32px / patch 4 from the CPU MAE
                                 run: the same recipe, offline, 300 steps of batch 128
Low-resolution sets (CIFAR, 32 px) are upsampled to 224 by the crop, as the reference does.

  python scripts/finetune.py --config configs/transfer.py:cifar100 \
      --config.init=PRETRAIN_WORKDIR --workdir runs/transfer_cifar100
  python scripts/sweep.py --config configs/transfer.py:oxford_flowers102 \
      --config.init=PRETRAIN_WORKDIR --workdir runs/sweep_flowers
"""

import ml_collections

from maelite_jax.configs import common
from maelite_jax.configs.finetune_tiny import builtin_sizes, finetune_skeleton, finetune_views

# name -> (dataset, classes, train split, eval split, val split for sweeps, epochs, warm-up, lr@512)
PRESETS = {
    "cifar10": ("cifar10", 10, "train", "test", ("train[:90%]", "train[90%:]"), 50, 10, 0.1),
    "cifar100": ("cifar100", 100, "train", "test", ("train[:90%]", "train[90%:]"), 50, 10, 0.1),
    "oxford_flowers102": ("oxford_flowers102", 102, "train+validation", "test",
                          ("train", "validation"), 100, 20, 0.03),
    "oxford_iiit_pet": ("oxford_iiit_pet", 37, "train", "test", ("train[:90%]", "train[90%:]"),
                        100, 20, 0.03),
    "aircraft": ("imagefolder", 100, "trainval", "test", ("train", "val"), 100, 20, 0.03),
    "cars": ("imagefolder", 196, "train", "test", ("train", "val"), 100, 20, 0.03),
    "builtin": ("fashion_mnist_builtin", 10, "train", "test", ("train[:90%]", "train[90%:]"),
                2, 0.2, 0.1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = common.parse_arg(arg, tuple(PRESETS))
  if not name:
    raise ValueError(f"configs/transfer.py needs a dataset: one of {', '.join(PRESETS)} "
                     "(e.g. --config configs/transfer.py:cifar100)")
  dataset, classes, train, test, (sweep_train, sweep_val), epochs, warmup, lr = PRESETS[name]
  config = finetune_skeleton()
  config.protocol = f"transfer-{name}"
  config.batch_size = 512
  config.total_epochs = float(epochs)
  config.optim.update(name="sgd", b1=0.9, weight_decay=0.0, grad_clip=1.0, base_lr=lr,
                      lr_scale_batch=512, warmup_epochs=float(warmup), min_lr=0.0)
  config.optim.layer_decay = 0.75
  config.model.num_classes = classes
  config.augment.update(mixup=0.0, cutmix=0.0, label_smoothing=0.0, reprob=0.0)
  config.data = common.data_config(dataset, train_split=train, eval_split=test)
  finetune_views(config.data, randaugment="")
  config.evals.accuracy.batch_size = 500
  config.checkpoint_every = 500
  config.eval_every = 1000
  config.sweep.update(base_lrs=(lr / 3, lr, lr * 3), layer_decays=(0.65, 0.75, 0.85),
                      train_split=sweep_train, val_split=sweep_val)
  if name == "builtin":
    builtin_sizes(config)
    config.init = "runs/mae_tiny_cpu"
    config.batch_size = 128
    config.total_steps = 300  # the warm-up stays the preset's fraction: 10 %, 30 steps
    config.evals.accuracy.batch_size = 1000
    config.log_every = 50
  config.lock()
  return config
