"""The small-scale reproduction of the paper's comparisons (scripts/reproduce.py).

Every arm is an ordinary config of this project with a few overrides (`arms`); the study runs
them in order, each in <workdir>/<arm> (a rerun resumes every arm from its checkpoints), then
evaluates and analyses the encoders and writes the report. All arms see the built-in
Fashion-MNIST at 28 px / patch 4 through the on-device data engine (no TensorFlow).

Encoders: MAE-Tiny, MoCo-v3-Tiny, a larger MAE (MAE-Small) as the teacher of D-MAE-Tiny, and a
supervised ViT-Tiny from scratch; all ViT-Tiny are MAE-Lite's (12 blocks, 192 wide, 12 heads).
Evaluations: fine-tuning of each (and of a random init = supervised from scratch), a data-poor
fine-tune (a small labelled subset), MAE with its top half re-initialised before fine-tuning,
k-NN and the linear probe on frozen features (random init as the floor); analysis: attention
distance per layer, CKA of each encoder against the supervised one.
Scales:
  :tiny  2-block models, a few steps of each arm: the pipeline end to end (tests, CI)
  :cpu   ~80 min on 2 CPU cores (docs/reproduction.md: 80.6 min, 93.5 CPU-minutes)
  :gpu   about 10 minutes on one H100/H200
"""

import ml_collections

from maelite_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = common.parse_arg(arg, ("tiny", "cpu", "gpu")) or "cpu"
  # Per scale: steps and batch of each kind of run, and the evaluation sizes.
  s = {
      # tiny: the data-poor arms train as long as the full ones, so that arms of one init
      # share their compiled step (the persistent compilation cache) and CI stays short
      "tiny": dict(depth=2, mae=(16, 6), small=(16, 4), dmae=(16, 6), moco=(16, 4),
                   finetune=(32, 6), poor=(32, 6), poor_split="train[:64]", bank="train[:256]",
                   queries="test[:128]", eval_split="test[:256]", analysis_images=32,
                   feature_batch=64, probe_epochs=5),
      "cpu": dict(depth=None, mae=(16, 1000), small=(16, 600), dmae=(16, 1000), moco=(32, 300),
                  finetune=(32, 200), poor=(32, 100), poor_split="train[:500]",
                  bank="train[:5000]", queries="test[:2000]", eval_split="test[:2000]",
                  analysis_images=256, feature_batch=250, probe_epochs=30),
      "gpu": dict(depth=None, mae=(256, 4000), small=(256, 3000), dmae=(256, 4000),
                  moco=(256, 2000), finetune=(256, 2000), poor=(64, 500),
                  poor_split="train[:500]", bank="train", queries="test", eval_split="test",
                  analysis_images=1000, feature_batch=1000, probe_epochs=90),
  }[scale]
  config = ml_collections.ConfigDict()
  config.scale = scale
  config.seed = 0
  config.depth = ml_collections.FieldReference(s["depth"], field_type=int)
  common_overrides = {"seed": 0, "data.on_device": True, "model.image_size": 28,
                      "model.patch_size": 4, "log_every": 50, "eval_every": 0}
  if s["depth"]:
    common_overrides["model.depth"] = s["depth"]
  no_evals = {"eval_every": -1}  # pre-training arms: no monitors (the study evaluates after)

  def pairs(d: dict) -> tuple:
    """Overrides as (dotted key, value) pairs: ConfigDict keys cannot hold dots."""
    return tuple(sorted(d.items()))

  def steps(kind):
    batch, total = s[kind]
    return {"batch_size": batch, "total_steps": total, "checkpoint_every": total}

  # (config file, variant, overrides) of each pre-training arm, run in this order (the teacher
  # before its student; ConfigDict itself sorts its keys).
  config.pretrain_order = ("mae", "mae_small", "dmae", "mocov3")
  config.pretrain = ml_collections.ConfigDict({
      "mae": dict(config="mae_tiny", variant="cpu", overrides=pairs({
          **common_overrides, **no_evals, **steps("mae")})),
      "mae_small": dict(config="mae_tiny", variant="cpu", overrides=pairs({
          **common_overrides, **no_evals, **steps("small"),
          "model.name": "mae_vit_small_patch16"})),
      "dmae": dict(config="dmae_tiny", variant="cpu", overrides=pairs({
          **common_overrides, **no_evals, **steps("dmae"), "teacher.init": "@mae_small",
          "teacher.name": "vit_small_patch16"})),
      "mocov3": dict(config="mocov3_tiny", variant="cpu", overrides=pairs({
          **common_overrides, **no_evals, **steps("moco"),
          "model.depth": s["depth"] or 12, "model.patch_size": 4, "model.dim": 256,
          "model.mlp_dim": 1024, "optim.base_lr": 1.5e-3, "optim.warmup_steps": -1})),
  })
  # Fine-tuning: one recipe for every init (the layer decay is the init's preset).
  finetune = {**common_overrides, **steps("finetune"), "evals.accuracy.every": 0,
              "evals.accuracy.batch_size": s["feature_batch"],
              "data.eval_split": s["eval_split"], "optim.base_lr": 2e-3,
              "optim.warmup_steps": -1, "best_metric": ""}
  poor = {**finetune, **steps("poor"), "data.train_split": s["poor_split"]}
  depth = s["depth"] or 12
  config.finetune = ml_collections.ConfigDict({
      "scratch": dict(init="", overrides=pairs(finetune)),
      "mae": dict(init="@mae", overrides=pairs(finetune)),
      "mocov3": dict(init="@mocov3", overrides=pairs(finetune)),
      "dmae": dict(init="@dmae", overrides=pairs(finetune)),
      # the paper's layer-wise finding: MAE's lower half only (the top half re-initialised)
      "mae_lower_half": dict(init="@mae", overrides=pairs({
          **finetune, "init_reset": "|".join(f"^blocks_{i}/" for i in range(depth // 2, depth))})),
      # data-poor transfer: a small labelled subset
      "poor_scratch": dict(init="", overrides=pairs(poor)),
      "poor_mae": dict(init="@mae", overrides=pairs(poor)),
      "poor_mocov3": dict(init="@mocov3", overrides=pairs(poor)),
  })
  config.frozen = ml_collections.ConfigDict(dict(
      encoders=("random", "mae", "mocov3", "dmae", "mae_small"),
      bank_split=s["bank"], query_split=s["queries"], feature_batch=s["feature_batch"],
      probe_epochs=s["probe_epochs"], pool="avg"))
  config.analysis = ml_collections.ConfigDict(dict(
      models=("mae", "mocov3", "dmae", "supervised"), num_images=s["analysis_images"],
      batch_size=min(64, s["analysis_images"]), split=s["eval_split"]))
  config.lock()
  return config
