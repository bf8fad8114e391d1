"""Fine-tuning through the generic loop: loading an MAE checkpoint, on-device mixing, a short
run on the built-in data that clearly beats chance, best checkpoint and results.csv."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maelite_jax.configs import common, finetune_tiny, mae_tiny
from maelite_jax.evaluate import features
from maelite_jax.models.meta import CheckpointMeta, model_from_config
from maelite_jax.models.posemb import sincos_2d
from maelite_jax.run import build_trainer
from maelite_jax.tasks.classification import Classification
from maelite_jax.train import checkpoint, pretrained, results
from tests.helpers import override


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory):
  """An MAE (depth 2, 32 px / patch 4) checkpoint written as pre-training would write it."""
  model, spec = model_from_config(mae_tiny.get_config("tiny").model)
  params = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 32, 32, 3)),
                               jnp.zeros((1, model.num_patches)))["params"]
  path = str(tmp_path_factory.mktemp("mae"))
  checkpoint.save_params(path, jax.device_get(params),
                         {"model": spec.to_dict(), "objective": "mae"}, step=7)
  return path, jax.device_get(params)


def ft_config(**overrides):
  return override(finetune_tiny.get_config("tiny"), **overrides)


def init_params(task, real=True):
  """The task's initial params (real=False: zeros of the right shapes, no compile)."""
  batch = {"image": jnp.zeros((1, 32, 32, 3))}
  if not real:
    shapes, _ = jax.eval_shape(task.init, jax.random.key(0), batch)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  params, _ = jax.jit(task.init)(jax.random.key(0), batch)
  return jax.device_get(params)


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_adapt_pretrained_from_mae_checkpoint(mae_checkpoint, pool):
  path, mae_params = mae_checkpoint
  task = Classification(ft_config(**{"model.global_pool": pool}))
  target = init_params(task, real=pool == "avg")
  loaded, meta = checkpoint.load_params(path)
  out = pretrained.map_pretrained(target, loaded, CheckpointMeta.from_dict(meta), task)
  assert jax.tree.structure(out) == jax.tree.structure(target)
  enc = mae_params["encoder"]
  for key in ("patch_embed", "cls_token", "blocks_0", "blocks_1"):
    for a, b in zip(jax.tree.leaves(out[key]), jax.tree.leaves(enc[key])):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(out["head"]["kernel"], target["head"]["kernel"])  # fresh head
  if pool == "avg":  # the final norm is dropped, a fresh fc_norm follows the pooling
    assert 0 < np.abs(target["head"]["kernel"]).max() < 1e-4  # trunc_normal(2e-5)
    np.testing.assert_allclose(out["pos_embed"][0], sincos_2d(192, 8, cls_token=True))
    assert "norm" not in out and "fc_norm" in out
  else:
    np.testing.assert_array_equal(out["norm"]["scale"], enc["norm"]["scale"])
  # Imported plain-ViT weights (no 'encoder' level) map the same way.
  plain = pretrained.map_pretrained(
      target, enc, CheckpointMeta.from_dict({"model": {"name": "vit_tiny_patch16"}}), task)
  np.testing.assert_array_equal(plain["blocks_1"]["attn"]["qkv"]["kernel"],
                                enc["blocks_1"]["attn"]["qkv"]["kernel"])


def test_prepare_batch_mixes_the_global_batch():
  task = Classification(ft_config(**{"augment.mixup": 0.8, "augment.cutmix": 1.0,
                                         "augment.label_smoothing": 0.1, "augment.reprob": 0.5}))
  batch = {"image": jax.random.normal(jax.random.key(0), (8, 32, 32, 3)),
           "label": jnp.arange(8) % 10}
  out = jax.jit(task.prepare_batch)(jax.random.key(1), batch)
  assert out["image"].shape == batch["image"].shape
  np.testing.assert_allclose(np.sum(out["target"], axis=1), 1.0, rtol=1e-5)
  assert np.all(np.asarray(out["target"]) >= 0.01 - 1e-6)  # smoothing: 0.1 / 10 everywhere


@pytest.fixture(scope="module")
def short_run(mae_checkpoint, tmp_path_factory):
  path, _ = mae_checkpoint
  workdir = str(tmp_path_factory.mktemp("ft"))
  # Light augmentation and a high lr: a 2-block ViT learns in 40 steps of 32 images.
  config = ft_config(**{"init": path, "total_steps": 40, "optim.base_lr": 4e-2,
                        "optim.warmup_steps": 3, "augment.mixup": 0.0,
                        "data.train_ops": common.crop_flip_ops(scale=(0.8, 1.0), flip=0),
                        "eval_every": 20, "log_every": 10, "checkpoint_every": 40})
  trainer = build_trainer(config, workdir)
  final = trainer.run()
  return trainer, workdir, final, path


def test_short_finetune_beats_chance(short_run):
  trainer, workdir, final, _ = short_run
  assert trainer.mesh.size == 8
  assert final["top1"] > 0.25, final  # chance is 0.10 on 256 test images
  assert final["top5"] > final["top1"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [r for r in map(json.loads, f) if "top1" in r]
  assert [r["step"] for r in evals] == [20, 40]


def test_best_checkpoint_and_results_rows(short_run):
  _, workdir, final, init = short_run
  best = checkpoint.best_record(workdir)
  assert best["top1"] == pytest.approx(final["best_top1"])
  rows = [r for r in results.read_rows(workdir) if r["metric"] == "top1"]
  assert [r["protocol"] for r in rows] == ["finetune", "finetune-best"]
  assert rows[1]["step"] == str(best["step"])
  assert rows[0]["pretrain"] == f"mae:{init}" and rows[0]["value"] == f"{100 * final['top1']:.2f}"
  # The best params are a loadable fine-tuned model: its avg-pool features come out.
  encoder, params, meta = checkpoint.load_encoder(os.path.join(workdir, "best"))
  assert meta.objective == "classification" and encoder.global_pool == "avg"
  feats = features.feature_fn(encoder)(params, jnp.zeros((2, 32, 32, 3)))
  assert feats.shape == (2, 192)


def test_transfer_presets_and_sweep_points():
  from maelite_jax.configs import transfer
  from maelite_jax.evaluate.sweep import point_config
  for name in transfer.PRESETS:
    config = transfer.get_config(name)
    assert config.optim.name == "sgd" and config.optim.grad_clip == 1.0
    assert config.optim.layer_decay == 0.75 and config.model.global_pool == "avg"
    assert config.augment.mixup == 0
    assert "randaugment" not in [op for op, _ in config.data.train_ops]
  config = transfer.get_config("cifar100")
  assert (config.model.num_classes, config.total_epochs, config.batch_size) == (100, 50, 512)
  point = point_config(config, 0.3, 0.65, validation=True)
  assert (point.optim.base_lr, point.optim.layer_decay) == (0.3, 0.65)
  assert (point.data.train_split, point.data.eval_split) == ("train[:90%]", "train[90%:]")
  assert config.optim.base_lr == 0.1 and config.data.eval_split == "test"  # original untouched
  with pytest.raises(ValueError, match="needs a dataset"):
    transfer.get_config("")


def test_probe_norm_folds_into_the_head():
  from maelite_jax.tasks.classification import PROBE_NORM_EPS, fold_probe_norm
  rng = np.random.default_rng(0)
  feats = rng.normal(2.0, 3.0, (16, 8)).astype(np.float32)
  stats = {"mean": rng.normal(size=8).astype(np.float32),
           "var": rng.uniform(0.5, 2.0, 8).astype(np.float32)}
  params = {"blocks_0": {"w": np.ones(3)}, "head": {"kernel": rng.normal(size=(8, 5)).astype(
      np.float32), "bias": rng.normal(size=5).astype(np.float32)}}
  normed = (feats - stats["mean"]) / np.sqrt(stats["var"] + PROBE_NORM_EPS)
  expected = normed @ params["head"]["kernel"] + params["head"]["bias"]
  folded = fold_probe_norm(params, stats)
  got = feats @ np.asarray(folded["head"]["kernel"]) + np.asarray(folded["head"]["bias"])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert folded["blocks_0"] is params["blocks_0"]


def test_ema_copies_first_then_averages():
  task = Classification(ft_config(ema_decay=0.9))
  params = {"w": jnp.full((2,), 4.0)}
  extra = task.post_update(params, {"ema": {"w": jnp.zeros((2,))}}, jnp.asarray(0))
  np.testing.assert_allclose(extra["ema"]["w"], [4.0, 4.0])  # the first update copies
  extra = task.post_update({"w": jnp.full((2,), 14.0)}, extra, jnp.asarray(1))
  np.testing.assert_allclose(extra["ema"]["w"], [5.0, 5.0])  # 0.9 * 4 + 0.1 * 14


@pytest.fixture(scope="module")
def probe_run(mae_checkpoint, tmp_path_factory):
  path, _ = mae_checkpoint
  workdir = str(tmp_path_factory.mktemp("probe"))
  config = finetune_tiny.get_config("linprobe_cpu")
  config = override(config, **{"init": path, "model.depth": 2, "batch_size": 32,
                               "total_steps": 40, "optim.warmup_steps": 3, "eval_every": 40,
                               "log_every": 10, "checkpoint_every": 40,
                               "data.eval_split": "test[:256]",
                               "evals.accuracy.batch_size": 64})
  trainer = build_trainer(config, workdir)
  final = trainer.run()
  return trainer, workdir, final, path


def test_image_linear_probe_trains_only_the_head(probe_run, mae_checkpoint):
  trainer, workdir, final, _ = probe_run
  _, mae_params = mae_checkpoint
  params = jax.device_get(trainer.state.params)
  for name in ("patch_embed", "cls_token", "blocks_0", "blocks_1", "norm"):
    for got, want in zip(jax.tree.leaves(params[name]), jax.tree.leaves(mae_params["encoder"][name])):
      np.testing.assert_array_equal(got, want)  # frozen: not even weight decay moves it
  assert np.abs(params["head"]["kernel"]).max() > 0.05  # trained from N(0, 0.01)
  stats = jax.device_get(trainer.state.extra["probe_norm"])
  assert np.abs(stats["mean"]).max() > 0 and not np.allclose(stats["var"], 1.0)
  assert final["top1"] > 0.3, final  # chance is 0.10 on 256 test images
  rows = results.read_rows(workdir)
  assert rows[0]["protocol"] == "linear-images"


def test_image_linear_probe_best_is_a_plain_classifier(probe_run):
  """The saved best params (norm folded into the head) give the reported top-1 as a plain ViT."""
  trainer, workdir, final, _ = probe_run
  from maelite_jax.evaluate import accuracy
  from maelite_jax.tasks.classification import classifier_from_config
  best = checkpoint.best_record(workdir)
  params, _ = checkpoint.load_params(os.path.join(workdir, "best"))
  model, _ = classifier_from_config(trainer.config.model)
  count_fn = accuracy.make_count_fn(
      lambda p, x: model.apply({"params": p}, x, train=False)[0], trainer.mesh)
  res = accuracy.evaluate_classifier(count_fn, params, trainer.config.data, image_size=32,
                                     batch_size=64, mesh=trainer.mesh)
  assert res["top1"] == pytest.approx(best["top1"])


def test_linear_probe_rejects_ema():
  config = override(finetune_tiny.get_config("linprobe_cpu"), ema_decay=0.99)
  with pytest.raises(ValueError, match="trains only the head"):
    Classification(config)


def test_sweep_picks_the_best_validation_point_and_reruns_it(mae_checkpoint, tmp_path):
  """run_sweep end to end: every grid point trained on the sweep's train split and scored on its
  validation split, the argmax chosen in sweep.csv, then retrained and tested once."""
  import csv
  from maelite_jax.evaluate.sweep import run_sweep
  path, _ = mae_checkpoint
  config = ft_config(**{"init": path, "total_steps": 6, "optim.warmup_steps": 1,
                        "augment.mixup": 0.0, "eval_every": 0, "checkpoint_every": 6,
                        "sweep.base_lrs": (1e-4, 4e-2), "sweep.layer_decays": (0.75,),
                        "sweep.rerun_best": True, "data.eval_split": "test[:128]"})
  out = run_sweep(config, str(tmp_path))
  with open(os.path.join(tmp_path, "sweep.csv")) as f:
    grid = list(csv.DictReader(f))
  assert [r["name"] for r in grid] == ["lr0.0001_ld0.75", "lr0.04_ld0.75"]
  chosen = [r for r in grid if r["chosen"] == "1"]
  assert len(chosen) == 1
  assert float(chosen[0]["val_top1"]) == max(float(r["val_top1"]) for r in grid)
  # the validation runs never saw the test split; the rerun did, and reported it
  for r in grid:
    with open(os.path.join(tmp_path, r["name"], "config.json")) as f:
      assert json.load(f)["data"]["eval_split"] == "train[256:384]"
  rows = [r for r in results.read_rows(str(tmp_path)) if r["metric"] == "top1"]
  assert rows[-1]["protocol"] == f"finetune-swept({chosen[0]['name']})"
  assert float(rows[-1]["value"]) == pytest.approx(100 * out["test"]["top1"], abs=0.01)


def test_layer_decay_preset_follows_the_checkpoints_objective(tmp_path):
  """MAE-Lite fine-tunes MoCo-v3 encoders with layer decay 0.75 and MAE's with 0.85: the
  fine-tuning config picks the preset from config.init's checkpoint; an explicit value wins."""
  optim_cfg = finetune_tiny.get_config("cpu").optim
  assert optim_cfg.layer_decay is None  # the preset decides
  params = {"cls_token": np.zeros((1, 1, 4), np.float32)}
  paths = {}
  for name, meta in (("moco", {"objective": "mocov3"}), ("mae", {"objective": "mae"}),
                     ("imported", {"objective": ""}),
                     ("imported_moco", {"objective": "", "posemb": "mocov3"})):
    kwargs = {"posemb": meta.pop("posemb")} if "posemb" in meta else {}
    paths[name] = str(tmp_path / name)
    checkpoint.save_params(paths[name], params,
                           {"model": {"name": "vit_tiny_patch16", "kwargs": kwargs}, **meta})
  got = {name: pretrained.resolve_layer_decay(optim_cfg, path) for name, path in paths.items()}
  assert got == {"moco": 0.75, "mae": 0.85, "imported": 0.85, "imported_moco": 0.75}
  assert pretrained.resolve_layer_decay(optim_cfg, "") == 1.0  # from scratch: no decay
  optim_cfg.layer_decay = 0.6
  assert pretrained.resolve_layer_decay(optim_cfg, paths["moco"]) == 0.6


def test_init_reset_reinitialises_the_matching_params(mae_checkpoint, tmp_path):
  """config.init_reset keeps the fresh init for the params it matches (re-initialised top
  blocks: the layer-wise analysis of the reproduction study)."""
  path, mae_params = mae_checkpoint
  config = ft_config(**{"init": path, "init_reset": "blocks_1/", "total_steps": 1})
  trainer = build_trainer(config, str(tmp_path), devices=jax.devices()[:1])
  manager = checkpoint.make_manager(str(tmp_path))
  params = jax.device_get(trainer.initial_state(manager).params)
  manager.close()
  enc = mae_params["encoder"]
  np.testing.assert_array_equal(params["blocks_0"]["attn"]["qkv"]["kernel"],
                                enc["blocks_0"]["attn"]["qkv"]["kernel"])
  assert not np.allclose(params["blocks_1"]["attn"]["qkv"]["kernel"],
                         enc["blocks_1"]["attn"]["qkv"]["kernel"])
  with pytest.raises(ValueError, match="matches no parameter"):
    pretrained.reset_params(params, params, "no_such_block/")
