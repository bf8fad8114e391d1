"""The benchmark's measurements exist and its model-FLOPs formula agrees with XLA's count."""

import jax
import jax.numpy as jnp
import pytest

from configs import mae_tiny
from maelite_jax import benchmark
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


def test_bench_jax_step_reports_the_documented_fields():
  config = mae_tiny.get_config("tiny")
  with config.unlocked():
    config.batch_size = 8
  rec = benchmark.bench_jax_step(config, steps=2, warmup=1)
  for key in ("step_time_s_median", "images_per_s", "compile_s", "peak_mem_bytes"):
    assert rec[key] > 0
  assert rec["images_per_s"] == pytest.approx(8 / rec["step_time_s_median"])
  assert rec["mfu"] is None  # no peak FLOPs known for a CPU
