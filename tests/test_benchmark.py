"""The benchmark's measurements exist and its model-FLOPs formula agrees with XLA's count."""

import jax
import jax.numpy as jnp
import pytest

from maelite_jax.bench import step as benchmark
from maelite_jax.models import create_model, model_kwargs
from tests import helpers


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
       "--profile", str(tmp_path / "trace"), "--profile-steps", "1",
       "--xla-options=--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=",
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
  # analytic counts next to XLA's; the GPU options were passed (and ignored on CPU)
  assert rec["model_flops_per_image"] * 16 == rec["model_flops_per_step"]
  assert rec["model_bytes_per_image"] > 0 and rec["xla_bytes_accessed_per_step"] > 0
  assert rec["compute_dtype"] == "float32" and "triton_gemm=false" in rec["xla_options"]
  # how it was taken: date, command, machine, load
  assert rec["date_utc"].startswith("20") and "--profile" in rec["command"]
  assert "cores" in rec["machine"] and rec["load_before"] >= 0 and rec["load_after"] >= 0
  # --profile: a trace TensorBoard/xprof can open, and its summary by category
  trace = tmp_path / "trace" / "mae_32px_b16_float32_einsum"
  assert list(trace.glob("plugins/profile/*/*.xplane.pb")), list(trace.rglob("*"))
  summary = json.loads((trace / "profile_summary.json").read_text())
  assert summary["per_step_ms"]["matmul"] > 0 and summary["per_step_ms"]["optimizer"] > 0
  assert rec["profile"] == summary["per_step_ms"] and summary["hlo_matched"] > 0.9


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
      helpers.NO_TENSORFLOW_PRELUDE +
      "from maelite_jax.configs import mae_tiny\n"
      "from maelite_jax.bench import step as benchmark\n"
      "from maelite_jax.train.validate import validate_config\n"
      "validate_config(mae_tiny.get_config(), num_devices=1, check_data=False)\n")
  root = __file__.rsplit("/tests/", 1)[0]
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Accounting: analytic FLOPs and bytes per image (bench/accounting.py) against XLA's counts


def _teacher(tmp_path_factory):
  from maelite_jax.train.checkpoint import save_params
  kw = dict(image_size=32, patch_size=4, depth=2, embed_dim=80, num_heads=5)
  model = create_model("vit_tiny_patch16", **kw)
  params = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))["params"]
  path = str(tmp_path_factory.mktemp("teacher"))
  save_params(path, jax.device_get(params), {"model": {"name": "vit_tiny_patch16", "kwargs": kw}})
  return path


@pytest.mark.parametrize("objective", ["mae", "mocov3", "dmae"])
def test_objective_flops_formulas_match_xla(objective, tmp_path_factory):
  # XLA's count of the whole train step (lowered, before fusion; no cuBLAS on CPU, so every
  # matmul is in it) is the analytic count plus softmax, norms, GELU and the optimizer: 0-6 %.
  # D-MAE: the teacher only as deep as its distilled layers (XLA drops the rest).
  import importlib
  from maelite_jax.tasks import registry
  from maelite_jax.train import mesh as mesh_lib
  from maelite_jax.train.program import StepProgram
  config = importlib.import_module(f"maelite_jax.configs.{objective}_tiny").get_config("tiny")
  with config.unlocked():
    config.batch_size = 8
    config.total_steps = 10
    if objective == "dmae":
      config.teacher.init = _teacher(tmp_path_factory)
      config.distill.hidden_student_layers, config.distill.hidden_teacher_layers = (1,), (1,)
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  task = registry.build(config)
  program = StepProgram(config, task, mesh, total_steps=10, warmup_steps=1)
  state = program.init_state()
  batch = benchmark.synthetic_batch(config, mesh)
  lowered = program.train_step.lower(state, batch, program.frozen)
  cost = lowered.cost_analysis()
  counts = benchmark.model_accounting(task, program, state, config)
  ratio = cost["flops"] / (8 * counts["model_flops_per_image"])
  assert 1.0 <= ratio <= 1.06, ratio


def test_traffic_estimate_matches_xla_bytes_of_a_vit_forward():
  # The byte model (accounting.py's assumptions) against XLA:CPU's bytes accessed by the
  # compiled forward: the same order (XLA fuses differently than a GPU, so within 1.5x).
  from maelite_jax.bench import accounting
  b, img, p = 8, 64, 8
  model = create_model("vit_tiny_patch16", image_size=img, patch_size=p, depth=2)
  x = jnp.zeros((b, img, img, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  compiled = jax.jit(lambda p, x: model.apply(p, x)[0]).lower(params, x).compile()
  xla = benchmark._cost(compiled)["bytes accessed"]
  enc = dict(patch_size=p, embed_dim=192, depth=2, num_heads=12, mlp_ratio=4.0)
  est = b * (accounting.encoder_forward_bytes(enc, (img // p)**2, 4, fused=False) +
             accounting.image_bytes(img)) + 4 * accounting.count_params(params)
  assert 1 / 1.5 <= xla / est <= 1.5, xla / est


def test_accounting_of_the_paper_settings():
  # Reference values for the README table (224 px, bf16, unfused attention; the H100's
  # 3.35 TB/s): MAE-Tiny ~2 GFLOP and ~48 MB per image (ceiling ~70k img/s), MoCo-v3 ~20 GFLOP
  # and ~640 MB (ceiling ~5k); a fused attention kernel drops the T^2 traffic.
  from maelite_jax.bench import accounting
  mae, vit = model_kwargs("mae_vit_tiny_patch16"), model_kwargs("vit_tiny_patch16")
  r = accounting.per_image("mae", mae, 224, 1024, 2, False)
  assert r["model_flops_per_image"] == pytest.approx(1.951e9, rel=0.002)
  assert r["model_bytes_per_image"] == pytest.approx(47.4e6, rel=0.02)
  ceiling = accounting.ceiling_images_per_s(r["model_bytes_per_image"], "NVIDIA H100 80GB HBM3")
  assert 65e3 < ceiling < 75e3
  fused = accounting.per_image("mae", mae, 224, 1024, 2, True)
  assert fused["model_bytes_per_image"] < 0.8 * r["model_bytes_per_image"]
  moco = accounting.per_image("mocov3", vit, 224, 1024, 2, False)
  assert moco["model_flops_per_image"] == pytest.approx(20.38e9, rel=0.01)
  assert 4e3 < accounting.ceiling_images_per_s(moco["model_bytes_per_image"], "H100") < 6e3
  teacher = dict(model_kwargs("vit_base_patch16"))
  dmae = accounting.per_image("dmae", mae, 224, 256, 2, False, teacher=teacher)
  # the student's 1.95 + ViT-B's forward on the 50 visible tokens up to its last logits
  assert dmae["model_flops_per_image"] == pytest.approx(10.03e9, rel=0.01)
  assert accounting.hbm_bandwidth("NVIDIA H100 PCIe") == 2.0e12
  assert accounting.hbm_bandwidth("NVIDIA H200") == 4.8e12


def test_profile_categories_read_the_compiled_program():
  # bench/profile.py names each op's category from the compiled HLO: a matmul, an element-wise
  # fusion, and ops under the train step's 'optimizer' scope.
  from maelite_jax.bench import profile

  def f(w, x):
    y = jnp.tanh(x @ w)
    with jax.named_scope("optimizer"):
      z = y * 0.9 + 1.0
    return z.sum()

  w, x = jnp.ones((64, 64)), jnp.ones((32, 64))
  text = jax.jit(f).lower(w, x).compile().as_text()
  instrs = profile.parse_hlo(text)
  cats = {profile.categorize(name, info) for name, info in instrs.items()}
  assert {"matmul", "optimizer"} <= cats, {n: profile.categorize(n, i) for n, i in instrs.items()}
  assert profile.categorize("fusion.3", {"opcode": "fusion", "body": {"add", "multiply"},
                                         "op_name": "jit(f)/blocks_0/norm1/add"}) == "elementwise"
  assert profile.categorize("custom-call.1", {"opcode": "custom-call",
                                              "target": "__cudnn$fmhaSoftmax"}) == "attention"
  assert profile.categorize("cublas-gemm.2", {"opcode": "custom-call",
                                              "target": "__cublas$gemm"}) == "matmul"
  assert profile.categorize("fusion.9", {"opcode": "fusion", "body": {"multiply"},
                                         "op_name": "jit(f)/blocks_0/attn/mul"}) == "attention"
