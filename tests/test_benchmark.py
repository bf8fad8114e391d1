"""The benchmark's measurements exist and its model-FLOPs formula agrees with XLA's count."""

import jax
import jax.numpy as jnp
import pytest

from maelite_jax.bench import step as benchmark
from maelite_jax.models import create_model, model_kwargs


def test_vit_flops_formula_matches_xla_cost_analysis():
  model = create_model("vit_tiny_patch16", image_size=32, patch_size=4, depth=2)
  x = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  cost = jax.jit(lambda p, x: model.apply(p, x)[0]).lower(params, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  patch = 2 * 64 * 48 * 192
  want = 2 * (patch + benchmark.vit_forward_flops(65, 192, 2))
  # XLA also counts softmax, LayerNorm and GELU, a few percent on top of the matmuls.
  assert want <= cost["flops"] <= 1.15 * want


def test_mae_train_flops_of_vit_tiny_224_is_about_2_gflop():
  # 3 x (patch embedding of the 49 kept patches + 12 blocks on 50 tokens + the decoder on 197
  # tokens + its pixel head on the 147 masked ones)
  flops = benchmark.mae_train_flops(model_kwargs("mae_vit_tiny_patch16"), 224)
  assert flops == pytest.approx(1.951e9, rel=0.002)


def test_time_interleaved_runs_the_steps_in_turns():
  calls = []
  times = benchmark.time_interleaved({"a": lambda: calls.append("a"),
                                      "b": lambda: calls.append("b")}, steps=3, warmup=1)
  assert calls == ["a", "b"] * 4
  assert len(times["a"]) == len(times["b"]) == 3


def test_benchmark_script_smoke_run_writes_every_field(tmp_path):
  # The command line end to end at toy size: JAX step with CPU micro-batching, both PyTorch
  # baselines (whole batch and the same accumulation), the JSON record and the table; flags
  # spelled with hyphens (the documented form) or underscores.
  import json
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(root, "scripts", "benchmark.py"), "--config",
       os.path.join(root, "configs", "mae_tiny.py") + ":tiny", "--batch", "16", "--image-size",
       "32", "--patch_size=4", "--steps", "2", "--warmup", "1", "--compare-torch",
       "--json", str(out)], capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  (rec,) = json.loads(out.read_text())
  assert rec["micro_batch_size"] == benchmark.CPU_MICRO_BATCH  # the CPU default
  for key in ("objective", "image_size", "batch", "step_time_s_median", "images_per_s",
              "compile_s", "peak_mem_bytes", "torch_images_per_s", "torch_micro_images_per_s",
              "jax_over_torch_speed", "model_flops_per_step", "xla_flops_per_step"):
    assert rec[key], key
  assert (rec["objective"], rec["image_size"], rec["batch"]) == ("mae", 32, 16)
  assert rec["images_per_s"] == pytest.approx(16 / rec["step_time_s_median"])
  assert rec["mfu"] is None  # no peak FLOPs known for a CPU
  best_torch = max(rec["torch_images_per_s"], rec["torch_micro_images_per_s"])
  assert rec["jax_over_torch_speed"] == pytest.approx(rec["images_per_s"] / best_torch)
  assert "jax_over_torch_speed" in proc.stdout  # the printed table


def test_auto_micro_batch_only_for_mae_objectives_on_cpu():
  assert benchmark.auto_micro_batch("mae", 32, "cpu") == 8
  assert benchmark.auto_micro_batch("dmae", 64, "cpu") == 8
  assert benchmark.auto_micro_batch("mocov3", 32, "cpu") == 0  # fewer negatives: not the same
  assert benchmark.auto_micro_batch("mae", 1024, "gpu") == 0
  assert benchmark.auto_micro_batch("mae", 8, "cpu") == 0 and benchmark.auto_micro_batch(
      "mae", 12, "cpu") == 0


def test_benchmark_rejects_a_micro_batch_that_does_not_divide_the_batch():
  # Checked before anything is compiled; else JAX would silently use another micro-batch than
  # the PyTorch baseline it is compared with.
  from maelite_jax.configs import mae_tiny
  from maelite_jax.train.validate import ConfigError
  config = mae_tiny.get_config("tiny")
  config.batch_size, config.micro_batch_size = 16, 6
  with pytest.raises(ConfigError, match="micro_batch_size: 6 does not divide batch_size=16"):
    benchmark.prepare_jax_step(config)


def test_benchmark_step_needs_no_tensorflow():
  # GPU machines often lack tensorflow: building and checking the synthetic-data step must not
  # import it (only --pipeline reads data).
  import subprocess
  import sys
  code = (
      "import builtins\n"
      "real = builtins.__import__\n"
      "def guard(name, *a, **k):\n"
      "  if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):\n"
      "    raise ModuleNotFoundError(name)\n"
      "  return real(name, *a, **k)\n"
      "builtins.__import__ = guard\n"
      "from maelite_jax.configs import mae_tiny\n"
      "from maelite_jax.bench import step as benchmark\n"
      "from maelite_jax.train.validate import validate_config\n"
      "validate_config(mae_tiny.get_config(), num_devices=1, check_data=False)\n")
  root = __file__.rsplit("/tests/", 1)[0]
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
