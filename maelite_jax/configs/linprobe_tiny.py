"""Frozen-encoder evaluation of ViT-Tiny: linear probe, k-NN and few-shot as config.evals.

The evaluators are those pre-training runs use as monitors (maelite_jax/evaluate/), here run
offline on the encoder of config.init ('' = a randomly initialised one, the baseline); each
appends rows to <workdir>/results.csv, and features are cached in <workdir>/features/ and
shared by the three (scripts/linprobe.py, knn.py, fewshot.py run one each, evaluate.py all).
Default (ImageNet-1k): MAE's linear probe (BatchNorm without affine + Linear on the cls token
after the final norm, LARS, base lr 0.1 x batch/256, batch 16384, 90 epochs with 10 warm-up,
no weight decay) on cached centre-view features; DINO's weighted k-NN (k 20, T 0.07);
big_vision's ridge few-shot (1/5/10/25 shots, 3 seeds, l2 2^10).
Variants:
  :cpu    the built-in Fashion-MNIST at 32px / patch 4 from runs/mae_tiny_cpu (the probe uses
          SGD: see below)
  :tiny   a 2-block random encoder on a few hundred images, for tests

  python scripts/linprobe.py --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/knn.py      --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
  python scripts/fewshot.py  --config configs/linprobe_tiny.py:cpu --workdir runs/eval_cpu
"""

import ml_collections

from maelite_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, ("cpu", "tiny"))
  config = ml_collections.ConfigDict(dict(
      seed=0,
      init="",                 # checkpoint / workdir of any encoder; '' = random init
      distributed=False,
      cache_features=True,     # <workdir>/features/*.npz, shared by the three protocols
      model=ml_collections.ConfigDict(dict(
          name="vit_tiny_patch16",  # architecture of the random-init baseline
          image_size=224,           # also the input size for a loaded encoder
          patch_size=16,
          depth=common.placeholder(int),
      )),
      data=common.imagenet_data(),
      evals=ml_collections.ConfigDict(),
  ))

  def train():  # each evaluator its own reference: overriding one split leaves the others
    return common.follow(config.data, "train_split")

  def test():
    return common.follow(config.data, "eval_split")

  probe_optim = common.optim_config(name="lars", base_lr=0.1, b1=0.9, weight_decay=0.0,
                                    warmup_epochs=10.0, min_lr=0.0)
  config.evals.linear = common.linear_eval(0, train(), test(), batch_size=1024, epochs=90,
                                           probe_batch_size=16384, optim=probe_optim,
                                           baseline=False)
  config.evals.knn = common.knn_eval(0, train(), test(), batch_size=1024, baseline=False)
  config.evals.fewshot = dict(type="fewshot", every=0, pool="token", train_split=train(),
                              eval_split=test(), batch_size=1024, shots=(1, 5, 10, 25), seeds=3,
                              l2_reg=2.0**10, baseline=False)
  if variant in ("cpu", "tiny"):
    config.init = "runs/mae_tiny_cpu"
    config.data.dataset = "fashion_mnist_builtin"
    config.data.eval_split = "test"
    config.data.cache = True
    config.data.eval_ops = common.eval_ops(crop_pct=1.0)
    config.model.image_size = 32
    config.model.patch_size = 4
    for name in ("linear", "knn", "fewshot"):
      config.evals[name].batch_size = 1000
    # LARS's step is 0.001 |w| per unit lr: it needs MAE's 16k batches (lr 6.4) and thousands of
    # steps to move a N(0, 0.01) head. On 60k examples SGD + Nesterov trains the same probe.
    config.evals.linear.probe_batch_size = 256
    config.evals.linear.optim.update(name="sgd", base_lr=0.5, warmup_epochs=5.0)
  if variant == "tiny":
    config.init = ""
    config.model.depth = 2
    config.data.train_split = "train[:256]"
    config.data.eval_split = "test[:128]"
    for name in ("linear", "knn", "fewshot"):
      config.evals[name].batch_size = 128
    config.evals.linear.update(epochs=20, probe_batch_size=64)
    config.evals.fewshot.update(shots=(1, 5), seeds=2)
  config.lock()
  return config
