"""PyTorch interop: round trips, and parity of exported weights in timm and an independent torch MAE.

Needs the test-only dependencies (requirements-test.txt: torch CPU and timm), which `make test`
installs; without them these tests fail rather than skip, so CI can never pass them silently.
Params are random (not init's) so that zero biases and unit norms cannot hide a wrong mapping.
"""

import functools
import importlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

import torch  # noqa: E402

from tests.torch_stubs import install_torchvision_stub  # noqa: E402

install_torchvision_stub()
import timm  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402

from maelite_jax import export  # noqa: E402
from maelite_jax.bench.torch_mae import TorchMAE  # noqa: E402
from maelite_jax.models.posemb import sincos_2d  # noqa: E402
from maelite_jax.models.registry import create_model  # noqa: E402
from maelite_jax.objectives.mae import mae_forward_loss, mae_loss, patchify  # noqa: E402
from maelite_jax.train.checkpoint import load_params, save_params  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(image_size=32, patch_size=4, depth=2)  # 8x8 grid, 12 heads of width 16
TOL = 1e-4
torch.set_num_threads(2)


def _random_params(model, seed):
  """Random weights of realistic scale from the param shapes (no init compile; LayerNorm scales
  and biases away from 1 and 0 so that a wrong mapping cannot hide)."""
  images = jnp.zeros((1, model.image_size, model.image_size, 3))
  rngs = {"params": jax.random.PRNGKey(0), "masking": jax.random.PRNGKey(1)}
  shapes = jax.eval_shape(lambda: model.init(rngs, images)["params"])
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name, noise = path[-1].key, rng.standard_normal(leaf.shape)
    if name == "kernel":
      value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name == "scale":
      value = 1.0 + 0.1 * noise
    elif name == "pos_embed":
      value = sincos_2d(leaf.shape[-1], model.grid_size, cls_token=True)[None] + 0.02 * noise
    else:
      value = 0.02 * noise
    return value.astype(np.float32)
  return jax.tree_util.tree_map_with_path(make, shapes)


@functools.lru_cache(maxsize=None)
def _case(name, **overrides):
  """(module, random params), built once per configuration."""
  model = create_model(name, **overrides)
  return model, _random_params(model, seed=len(overrides))


def _images(n, size, seed=0):
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _nchw(images):
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _torch_sd(state_dict):
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}


def _assert_same_tree(a, b):
  fa = dict(jax.tree_util.tree_flatten_with_path(a)[0])
  fb = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert fa.keys() == fb.keys()
  for path in fa:
    np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fb[path]), err_msg=str(path))


# ---------------------------------------------------------------------------------------- timm

VIT_CASES = {
    "tiny224": {},
    "small_features": SMALL,
    "small_token_head": dict(SMALL, num_classes=10, global_pool="token"),
    "small_avg_head_trainable_pos": dict(SMALL, num_classes=10, global_pool="avg",
                                         trainable_pos_embed=True),
}


@pytest.mark.parametrize("case", list(VIT_CASES))
def test_timm_round_trip_is_exact(case):
  model, params = _case("vit_tiny_patch16", **VIT_CASES[case])
  sd = export.to_torch_state_dict(params, "timm", image_size=model.image_size)
  back, report = export.from_torch_state_dict(sd, "timm", model=model)
  _assert_same_tree(params, back)
  assert not report.unexpected and not report.missing and not report.notes


@pytest.mark.parametrize("case", list(VIT_CASES))
def test_timm_parity(case):
  model, params = _case("vit_tiny_patch16", **VIT_CASES[case])
  images = _images(2, model.image_size)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, images)[0])
  args = export.timm_model_args(model, params)
  assert args["num_heads"] == 12
  net = timm.create_model(**args).eval()
  net.load_state_dict(_torch_sd(export.to_torch_state_dict(
      params, "timm", image_size=model.image_size)), strict=True)
  with torch.no_grad():
    theirs = (net(_nchw(images)) if args["num_classes"] else net.forward_features(_nchw(images)))
  diff = float(np.max(np.abs(ours - theirs.numpy())))
  print(f"timm parity {case}: output {ours.shape}, max abs diff {diff:.2e}")
  assert ours.shape == tuple(theirs.shape) and diff <= TOL


def test_mae_checkpoint_exports_its_encoder_to_timm():
  model, params = _case("mae_vit_tiny_patch16", **SMALL)
  sd = export.to_torch_state_dict(params, "timm", image_size=32)
  assert not any(k.startswith(("decoder", "mask_token")) for k in sd)
  net = timm.create_model(**export.timm_model_args(model, params))
  net.load_state_dict(_torch_sd(sd), strict=True)


# ----------------------------------------------------------------------------------------- MAE

MAE_CASES = {"tiny224": {}, "small": dict(SMALL, decoder_depth=2)}


@pytest.mark.parametrize("case", list(MAE_CASES))
def test_mae_round_trip_is_exact(case):
  model, params = _case("mae_vit_tiny_patch16", **MAE_CASES[case])
  sd = export.to_torch_state_dict(params, "mae", image_size=model.image_size)
  assert {"pos_embed", "decoder_pos_embed", "mask_token", "decoder_pred.weight"} <= set(sd)
  back, report = export.from_torch_state_dict(sd, "mae", model=model)
  _assert_same_tree(params, back)
  assert not report.unexpected and not report.notes  # the exported tables are the sin-cos ones


@pytest.mark.parametrize("case", list(MAE_CASES))
def test_mae_parity_same_noise_same_loss(case):
  model, params = _case("mae_vit_tiny_patch16", **MAE_CASES[case])
  images = _images(2, model.image_size, seed=1)
  noise = np.random.default_rng(2).uniform(size=(2, model.num_patches)).astype(np.float32)

  @jax.jit
  def flax_loss(params, images, noise):
    out = model.apply({"params": params}, images, noise)
    return mae_loss(out["pred"], patchify(images, model.patch_size), out["mask"]), out
  loss, out = flax_loss(params, images, noise)
  # the training path: the masked patches only
  train_loss, _ = jax.jit(lambda p, i, n: mae_forward_loss(model, p, i, n, train=False))(
      params, images, noise)

  net = TorchMAE(**export.mae_model_args(model)).eval()
  net.load_state_dict(_torch_sd(export.to_torch_state_dict(
      params, "mae", image_size=model.image_size)), strict=True)
  with torch.no_grad():
    t_loss, t_pred, t_mask = net(_nchw(images), torch.from_numpy(noise))
  np.testing.assert_array_equal(np.asarray(out["mask"]), t_mask.numpy())
  pred_diff = float(np.max(np.abs(np.asarray(out["pred"]) - t_pred.numpy())))
  loss_diff = max(abs(float(loss) - float(t_loss)), abs(float(train_loss) - float(t_loss)))
  print(f"mae parity {case}: loss {float(loss):.6f}, loss diff {loss_diff:.2e}, "
        f"pred max abs diff {pred_diff:.2e}")
  assert loss_diff <= 1e-5 and pred_diff <= TOL


# -------------------------------------------------------------------------------------- import

def _small_head_export():
  model, params = _case("vit_tiny_patch16", **VIT_CASES["small_avg_head_trainable_pos"])
  return model, params, export.to_torch_state_dict(params, "timm", image_size=32)


def test_import_strips_module_prefix_and_reports_extra_keys():
  model, params, sd = _small_head_export()
  wrapped = {"module." + k: v for k, v in sd.items()}
  wrapped["module.head_dist.weight"] = np.zeros((10, 192), np.float32)
  back, report = export.from_torch_state_dict(_torch_sd(wrapped), "timm", model=model)
  _assert_same_tree(params, back)
  assert report.unexpected == ["head_dist.weight"]
  assert "head_dist.weight" in report.summary()


def test_import_missing_keys_raise_with_their_names():
  model, params, sd = _small_head_export()
  del sd["blocks.1.mlp.fc2.weight"], sd["head.bias"]
  with pytest.raises(KeyError, match=r"blocks\.1\.mlp\.fc2\.weight.*head\.bias"):
    export.from_torch_state_dict(sd, "timm", model=model)
  back, report = export.from_torch_state_dict(sd, "timm", model=model, allow_missing=True)
  assert report.missing == ["blocks.1.mlp.fc2.weight", "head.bias"]
  np.testing.assert_array_equal(back["blocks_0"]["mlp"]["fc2"]["kernel"],
                                params["blocks_0"]["mlp"]["fc2"]["kernel"])


def test_import_resizes_trainable_pos_embed_like_timm():
  _, _, sd = _small_head_export()
  target = create_model("vit_tiny_patch16", **dict(VIT_CASES["small_avg_head_trainable_pos"],
                                                   image_size=48))
  back, report = export.from_torch_state_dict(sd, "timm", model=target)
  assert report.resized == {"pos_embed": [65, 145]}
  expected = resample_abs_pos_embed(torch.from_numpy(sd["pos_embed"]), (12, 12),
                                    num_prefix_tokens=1).numpy()
  assert back["pos_embed"].shape == (1, 145, 192)
  np.testing.assert_allclose(back["pos_embed"], expected, atol=1e-5)


@pytest.mark.parametrize("image_size", [32, 48])
def test_import_into_fixed_sincos_only_checks_a_trained_table(image_size):
  _, params, sd = _small_head_export()
  target = create_model("vit_tiny_patch16", **dict(VIT_CASES["small_avg_head_trainable_pos"],
                                                   image_size=image_size, trainable_pos_embed=False))
  back, report = export.from_torch_state_dict(sd, "timm", model=target)
  assert "pos_embed" not in back and not report.unexpected
  assert len(report.notes) == 1 and "pos_embed" in report.notes[0]
  np.testing.assert_array_equal(back["cls_token"], params["cls_token"])


def test_import_files_with_wrappers_and_prefixes(tmp_path):
  model, params = _case("mae_vit_tiny_patch16", **MAE_CASES["small"])
  sd = export.to_torch_state_dict(params, "mae", image_size=32)
  # MAE-Lite: {'model': {'module.model.<mae key>': ...}, ...} in a .pth.tar.
  path = str(tmp_path / "mae_lite.pth.tar")
  torch.save({"model": {"module.model." + k: v for k, v in _torch_sd(sd).items()},
              "start_epoch": 400}, path)
  back, report = export.from_torch_state_dict(export.read_state_dict(path), "mae", model=model)
  _assert_same_tree(params, back)
  assert report.prefix == "model."
  # MoCo-v3: two encoders in one file; the choice must be explicit.
  vit, vit_params = _case("vit_tiny_patch16", **SMALL)
  enc = export.to_torch_state_dict(vit_params, "timm", image_size=32)
  moco = {f"module.{which}.{k}": v for which in ("base_encoder", "momentum_encoder")
          for k, v in enc.items()}
  export.write_safetensors(moco, str(tmp_path / "moco.safetensors"))
  moco = export.read_state_dict(str(tmp_path / "moco.safetensors"))
  with pytest.raises(ValueError, match="prefix"):
    export.from_torch_state_dict(moco, "timm", model=vit)
  back, report = export.from_torch_state_dict(moco, "timm", model=vit, prefix="base_encoder.")
  _assert_same_tree(vit_params, back)
  assert len(report.skipped) == len(enc) and not report.unexpected


def _mocov3_pos_embed(dim, grid):
  """MoCo-v3's vits.py build_2d_sincos_position_embedding, re-derived in float32 numpy:
  torch.meshgrid(grid_w, grid_h) ('ij'), then [sin w, cos w, sin h, cos h], zero cls row."""
  grid_w, grid_h = np.meshgrid(np.arange(grid, dtype=np.float32),
                               np.arange(grid, dtype=np.float32), indexing="ij")
  pos_dim = dim // 4
  omega = 1.0 / 10000.0**(np.arange(pos_dim, dtype=np.float32) / pos_dim)
  out_w = np.einsum("m,d->md", grid_w.reshape(-1), omega)
  out_h = np.einsum("m,d->md", grid_h.reshape(-1), omega)
  emb = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)
  return np.concatenate([np.zeros((1, dim), np.float32), emb], axis=0)[None]


def test_import_keeps_mocov3s_position_table(tmp_path):
  """A MoCo-v3 checkpoint's fixed pos_embed (MAE's halves swapped) stays the model's table
  through import, every tool that rebuilds the model from meta, and export."""
  from types import SimpleNamespace
  from maelite_jax.models.meta import CheckpointMeta, ModelSpec
  from maelite_jax.train.checkpoint import load_encoder
  from maelite_jax.train.pretrained import map_pretrained
  objective = lambda name, key, model, fresh=(): SimpleNamespace(
      name=name, encoder_key=key, fresh_keys=fresh, spec=ModelSpec(model, SMALL))
  _, params = _case("vit_tiny_patch16", **SMALL)
  sd = export.to_torch_state_dict(params, "timm", image_size=32)
  moco_table = _mocov3_pos_embed(192, 8)
  assert np.max(np.abs(moco_table - sd["pos_embed"])) > 0.5  # not MAE's table
  sd["pos_embed"] = moco_table
  path = str(tmp_path / "mocov3.safetensors")
  export.write_safetensors({f"module.{which}.{k}": v for which in ("base_encoder",
                            "momentum_encoder") for k, v in sd.items()}, path)
  out = str(tmp_path / "imported")
  _run_script("import_torch", f"--torch-checkpoint={path}", "--model=vit_tiny_patch16",
              f"--out={out}", "--prefix=base_encoder.", "--image-size=32",
              "--model-arg=patch_size=4", "--model-arg=depth=2")
  loaded, meta = load_params(out)
  _assert_same_tree(params, loaded)
  enc, enc_params, _ = load_encoder(out)
  table = enc.apply({"params": enc_params}, method=lambda m: m.pos_table())
  np.testing.assert_allclose(np.asarray(table), moco_table, atol=1e-6)
  assert meta["model"]["kwargs"]["posemb"] == "mocov3"
  # the forward is timm's with the file's weights and table
  images = _images(2, 32)
  ours = np.asarray(jax.jit(enc.apply)({"params": enc_params}, images)[0])
  net = timm.create_model(**export.timm_model_args(enc, enc_params)).eval()
  net.load_state_dict(_torch_sd(sd), strict=True)
  with torch.no_grad():
    theirs = net.forward_features(_nchw(images)).numpy()
  assert float(np.max(np.abs(ours - theirs))) <= TOL
  # fine-tuning and segmentation start their trainable tables from it (at their grid), a
  # pre-training init with MAE's table refuses it; export writes it back
  meta = CheckpointMeta.from_dict(meta)
  target = {"cls_token": params["cls_token"], "pos_embed": np.zeros_like(moco_table)}
  classifier = objective("classification", "", "vit_tiny_patch16", ("head", "fc_norm"))
  np.testing.assert_allclose(map_pretrained(target, loaded, meta, classifier)["pos_embed"],
                             moco_table, atol=1e-6)
  target = {"backbone": {"cls_token": params["cls_token"], "pos_embed": np.zeros((1, 17, 192))}}
  segmenter = objective("segmentation", "backbone", "vit_tiny_patch16")
  np.testing.assert_allclose(
      map_pretrained(target, loaded, meta, segmenter)["backbone"]["pos_embed"],
      _mocov3_pos_embed(192, 4), atol=1e-6)
  with pytest.raises(ValueError, match="layout"):
    map_pretrained({"encoder": {}}, loaded, meta, objective("mae", "encoder",
                                                            "mae_vit_tiny_patch16"))
  _run_script("export_torch", f"--checkpoint={out}", f"--out={tmp_path}/back.safetensors")
  back = export.read_state_dict(str(tmp_path / "back.safetensors"))
  np.testing.assert_allclose(back["pos_embed"], moco_table, atol=1e-6)
  # an MAE's encoder has MAE's table only: a MoCo-v3 table there is an error, not a silent swap
  mae, mae_params = _case("mae_vit_tiny_patch16", **MAE_CASES["small"])
  mae_sd = export.to_torch_state_dict(mae_params, "mae", image_size=32)
  with pytest.raises(ValueError, match="mocov3"):
    export.from_torch_state_dict(dict(mae_sd, pos_embed=moco_table), "mae", model=mae)


# ------------------------------------------------------------------------------------- scripts

def _run_script(name, *args):
  """The command's main on its own flag values (the module defines no global flags)."""
  module = importlib.import_module(f"maelite_jax.commands.{name}")
  fv = flags.FlagValues()
  module.define_flags(fv)
  module._main(fv([name + ".py", *args]), fv)


@pytest.fixture(scope="module")
def mae_workdir(tmp_path_factory):
  _, params = _case("mae_vit_tiny_patch16", **SMALL)
  workdir = str(tmp_path_factory.mktemp("mae_run"))
  save_params(workdir, params, {"model": {"name": "mae_vit_tiny_patch16", "kwargs": SMALL}},
              step=7)
  return workdir, params


def test_export_script_timm(mae_workdir, tmp_path):
  workdir, params = mae_workdir
  _run_script("export_torch", f"--checkpoint={workdir}", f"--out={tmp_path}/vit.safetensors")
  with open(tmp_path / "vit.json") as f:
    args = json.load(f)
  assert args == {"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4,
                  "in_chans": 3, "embed_dim": 192, "depth": 2, "num_heads": 12, "mlp_ratio": 4.0,
                  "num_classes": 0, "global_pool": "token"}
  from safetensors.torch import load_file
  net = timm.create_model(**args)
  net.load_state_dict(load_file(str(tmp_path / "vit.safetensors")), strict=True)
  np.testing.assert_array_equal(net.cls_token.detach().numpy(), params["encoder"]["cls_token"])


def test_export_script_mae_bfloat16_pth_then_import(mae_workdir, tmp_path):
  workdir, params = mae_workdir
  _run_script("export_torch", f"--checkpoint={workdir}/checkpoints/7", f"--out={tmp_path}/mae.pth",
              "--format=mae", "--dtype=bfloat16")
  assert {p.name for p in tmp_path.iterdir()} == {"mae.pth", "mae.safetensors", "mae.json"}
  sd = torch.load(str(tmp_path / "mae.pth"), weights_only=True)
  assert sd["decoder_pred.weight"].dtype == torch.bfloat16 and "decoder_pos_embed" in sd
  with open(tmp_path / "mae.json") as f:
    assert json.load(f)["decoder_num_heads"] == 3
  out = str(tmp_path / "imported")
  _run_script("import_torch", f"--torch-checkpoint={tmp_path}/mae.safetensors",
              "--model=mae_vit_tiny_patch16", f"--out={out}", "--image-size=32",
              "--model-arg=patch_size=4", "--model-arg=depth=2")
  back, meta = load_params(out)
  assert meta["model"] == {"name": "mae_vit_tiny_patch16",
                           "kwargs": {"image_size": 32, "patch_size": 4, "depth": 2}}
  rounded = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), params)
  _assert_same_tree(rounded, back)


def test_export_then_import_float32_is_exact(mae_workdir, tmp_path):
  workdir, params = mae_workdir
  _run_script("export_torch", f"--checkpoint={workdir}", f"--out={tmp_path}/enc.safetensors")
  out = str(tmp_path / "imported")
  _run_script("import_torch", f"--torch-checkpoint={tmp_path}/enc.safetensors",
              "--model=vit_tiny_patch16", f"--out={out}", "--image-size=32",
              "--model-arg=patch_size=4", "--model-arg=depth=2")
  back, meta = load_params(out)
  _assert_same_tree(params["encoder"], back)
  assert meta["source"]["format"] == "timm" and meta["source"]["unexpected"] == []


@pytest.mark.parametrize("kind", ["mae_encoder", "mae_whole", "classifier"])
def test_round_trip_needs_no_model_flags(mae_workdir, tmp_path, kind):
  """Export of a 32 px / patch 4 model, then import with only --torch-checkpoint and --out: the
  exporter's JSON next to the weights (and the safetensors metadata) name the model, its sizes,
  heads, classes, pooling and position table (issue 24, item 3)."""
  if kind == "classifier":
    kwargs = VIT_CASES["small_avg_head_trainable_pos"]
    _, params = _case("vit_tiny_patch16", **kwargs)
    workdir = str(tmp_path / "ft")
    save_params(workdir, params, {"model": {"name": "vit_tiny_patch16", "kwargs": kwargs}},
                step=3)
    fmt, want, want_kwargs = "timm", params, kwargs
  else:
    workdir, params = mae_workdir
    fmt = "mae" if kind == "mae_whole" else "timm"
    want = params if kind == "mae_whole" else params["encoder"]
    want_kwargs = SMALL
  _run_script("export_torch", f"--checkpoint={workdir}", f"--out={tmp_path}/w.safetensors",
              f"--format={fmt}")
  out = str(tmp_path / "imported")
  _run_script("import_torch", f"--torch-checkpoint={tmp_path}/w.safetensors", f"--out={out}")
  back, meta = load_params(out)
  _assert_same_tree(want, back)
  name = "mae_vit_tiny_patch16" if kind == "mae_whole" else "vit_tiny_patch16"
  assert meta["model"] == {"name": name, "kwargs": want_kwargs}
  assert meta["source"]["format"] == fmt


def test_import_flags_win_over_the_exporters_json(mae_workdir, tmp_path):
  workdir, params = mae_workdir
  _run_script("export_torch", f"--checkpoint={workdir}", f"--out={tmp_path}/w.safetensors")
  out = str(tmp_path / "imported")
  # a 64 px import of the 32 px export: the fixed sin-cos table is recomputed for the new grid
  _run_script("import_torch", f"--torch-checkpoint={tmp_path}/w.safetensors", f"--out={out}",
              "--image-size=64")
  _, meta = load_params(out)
  assert meta["model"]["kwargs"] == dict(SMALL, image_size=64)
  # without the JSON, the model must be named
  os.remove(tmp_path / "w.json")
  from maelite_jax.utils.errors import UserError
  with pytest.raises(UserError, match="--model is needed"):
    _run_script("import_torch", f"--torch-checkpoint={tmp_path}/w.safetensors",
                f"--out={tmp_path}/again")


def test_host_fingerprint_equals_the_jitted_one():
  """load_params checks the weights it reads in numpy (no compilation per tool run); the sums
  must be those the jitted fingerprint wrote at save time, for every dtype a state holds."""
  import ml_dtypes
  from maelite_jax.train import checkpoint
  rng = np.random.default_rng(0)
  tree = {"f32": rng.standard_normal((3, 5)).astype(np.float32),
          "bf16": rng.standard_normal(7).astype(ml_dtypes.bfloat16),
          "i32": rng.integers(-9, 9, (4, 2)).astype(np.int32),
          "u8": rng.integers(0, 255, 6).astype(np.uint8),
          "flag": np.array([True, False, True]), "scalar": np.array(3.5, np.float32),
          "big": rng.standard_normal(100_003).astype(np.float32)}
  on_device = checkpoint.fingerprint_json(jax.tree.map(jnp.asarray, tree))
  jitted, checkpoint.fingerprint = checkpoint.fingerprint, None  # the host path compiles nothing
  try:
    host = checkpoint.fingerprint_json(tree)
  finally:
    checkpoint.fingerprint = jitted
  assert host == on_device and len(set(host.values())) == len(tree)



def test_loading_a_checkpoint_logs_no_orbax_metadata_warning(mae_workdir, caplog):
  """load_params reads the item's metadata through its handler: orbax's checkpointer would look
  for the step's _CHECKPOINT_METADATA inside state/ and warn on every load (issue 24, item 6)."""
  import logging
  workdir, _ = mae_workdir
  with caplog.at_level(logging.INFO):
    load_params(workdir)
  assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]


def _pytorch_snippets():
  """The ```python blocks of README.md and docs/*.md that load an export into timm."""
  import glob
  import re
  out = []
  for path in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs",
                                                                                 "*.md"))):
    for block in re.findall(r"^\s*```python\s*\n(.*?)^\s*```", open(path).read(), re.M | re.S):
      if "timm.create_model" in block:
        out.append(pytest.param(block, id=os.path.relpath(path, ROOT)))
  return out


@pytest.mark.parametrize("snippet", _pytorch_snippets())
def test_documented_pytorch_snippet_loads_the_export(mae_workdir, tmp_path, monkeypatch, snippet):
  """The docs' PyTorch code, run as written (timm 1.0.31 with the torchvision stub) on the files
  the documented export command writes, gives the JAX encoder's tokens."""
  import re
  assert _pytorch_snippets(), "docs/pytorch.md shows how to load the export in PyTorch"
  weights = re.search(r'load_file\("([^"]+)"\)', snippet).group(1)
  workdir, params = mae_workdir
  _run_script("export_torch", f"--checkpoint={workdir}", f"--out={tmp_path / weights}")
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(compile(snippet, "snippet", "exec"), scope)  # noqa: S102 - the documentation's own code
  model, args = scope["model"], scope["args"]
  images = _images(2, args["img_size"])
  with torch.no_grad():
    theirs = model.forward_features(_nchw(images)).numpy()
  encoder = create_model("vit_tiny_patch16", **SMALL)
  ours = np.asarray(encoder.apply({"params": params["encoder"]}, images)[0])
  assert float(np.max(np.abs(ours - theirs))) <= TOL
