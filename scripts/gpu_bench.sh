#!/usr/bin/env bash
# Issue 23's GPU measurements in one run (docs/performance.md, "Waiting for a GPU"): run it once
# on a machine with one H100/H200 from the repository root; ~7 minutes. Needs JAX with CUDA and
# torch (no TensorFlow: the benchmark makes its data on the device).
#
#   bash scripts/gpu_bench.sh [OUT_DIR]     (default: $OUT, else docs/bench/gpu_<date>)
#
# Writes into OUT_DIR: machine.txt, cudnn_check.txt (cuDNN attention against einsum, values and
# gradients, padded lengths), one benchmark JSON per variant (*.json; each record carries its
# command, date, machine and load), profile/*/profile_summary.json (ms per step by category),
# and summary.txt. Runs go in priority order; once BUDGET_S (default 420 s) is spent, the rest
# are skipped and listed in summary.txt. Copy OUT_DIR to docs/bench/ and fill in the tables of
# docs/performance.md from summary.txt.
set -u
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-docs/bench/gpu_$(date -u +%Y-%m-%d)}}
BUDGET_S=${BUDGET_S:-420}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# A fresh compilation cache: the first run of a config shows the cold compile, the 'cache' run
# the warm one. Outside OUT_DIR (it is large).
CACHE=$(mktemp -d /tmp/maelite_gpu_cache_XXXX)
export MAELITE_COMPILATION_CACHE_DIR=$CACHE
START=$(date +%s)
SKIPPED=""

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import jax, torch; print('jax', jax.__version__, jax.devices())
print('torch', torch.__version__)" 2>&1
} > "$OUT_DIR/machine.txt"
cat "$OUT_DIR/machine.txt"

# 1. cuDNN fused attention against the einsum path (bf16, with padding), before timing it.
timeout 150 $PY - > "$OUT_DIR/cudnn_check.txt" 2>&1 <<'EOF'
import jax, jax.numpy as jnp, numpy as np
from maelite_jax.models.vit import Attention
def run(model, params, x):
  fn = lambda p, x: (model.apply(p, x)[0].astype(jnp.float32) ** 2).sum() * 1e-3
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(params, x)
for tokens, pad in [(50, 0), (197, 0), (197, 64), (65, 0), (257, 0)]:
  x = jax.random.normal(jax.random.key(0), (8, tokens, 192))
  ref32 = Attention(12, attention_impl="einsum")
  ref = Attention(12, dtype=jnp.bfloat16, attention_impl="einsum")
  cud = Attention(12, dtype=jnp.bfloat16, attention_impl="cudnn", attention_pad=pad)
  params = ref32.init(jax.random.key(1), x)
  try:
    hlo = jax.jit(lambda p: cud.apply(p, x)[0]).lower(params).compile().as_text().lower()
    (l32, g32), (lb, gb), (lc, gc) = (run(m, params, x) for m in (ref32, ref, cud))
    rel = lambda a, b: float(np.abs(np.float32(a) - np.float32(b)).max() /
                             (np.abs(np.float32(b)).max() + 1e-12))
    gerr_c = max(rel(a, b) for a, b in zip(jax.tree.leaves(gc), jax.tree.leaves(g32)))
    gerr_b = max(rel(a, b) for a, b in zip(jax.tree.leaves(gb), jax.tree.leaves(g32)))
    finite = all(bool(np.isfinite(np.float32(a)).all()) for a in jax.tree.leaves(gc))
    ok = finite and "cudnn" in hlo and gerr_c < 5e-2
    print(f"tokens={tokens} pad={pad} cudnn_in_hlo={'cudnn' in hlo} finite={finite} "
          f"loss32={float(l32):.6g} loss_bf16={float(lb):.6g} loss_cudnn={float(lc):.6g} "
          f"grad_err_cudnn={gerr_c:.3g} grad_err_bf16_einsum={gerr_b:.3g} {'OK' if ok else 'FAIL'}")
  except Exception as e:  # a rejected length is a result too
    print(f"tokens={tokens} pad={pad} ERROR {type(e).__name__}: {str(e).splitlines()[0][:300]}")
EOF
cat "$OUT_DIR/cudnn_check.txt"

bench() {  # bench NAME ARGS...: one benchmark process, skipped once the budget is spent
  local name=$1; shift
  local now=$(( $(date +%s) - START ))
  if (( now > BUDGET_S )); then SKIPPED="$SKIPPED $name"; echo "skip $name (budget)"; return; fi
  echo "== $name (t=${now}s): $*"
  timeout 240 $PY scripts/benchmark.py --image_size 224 --steps 10 --warmup 2 \
      --json "$OUT_DIR/$name.json" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "   rc=$? $(tail -c 300 "$OUT_DIR/$name.log" | tail -n 2)"
}

# 2. The measurements, most important first.
bench mae_einsum --batch 1024 --compare_torch --profile "$OUT_DIR/profile" --profile_steps 2
bench mae_cudnn --batch 1024 --attention cudnn --profile "$OUT_DIR/profile" --profile_steps 2
bench mocov3_einsum --objective mocov3 --batch 1024 --profile "$OUT_DIR/profile" \
    --profile_steps 2
bench mocov3_cudnn --objective mocov3 --batch 1024 --attention cudnn
bench mae_cache --batch 1024 --steps 3   # the same program as mae_einsum: compile_s from cache
bench mae_xla_gpu --batch 1024 --xla_options gpu
bench dmae_einsum --objective dmae --batch 256
bench dmae_cudnn --objective dmae --batch 256 --attention cudnn
bench mae_b4096 --batch 4096 --steps 5
bench mocov3_cudnn_pad64 --objective mocov3 --batch 1024 --attention cudnn --attention_pad 64

rm -rf "$CACHE"
$PY - "$OUT_DIR" "$SKIPPED" > "$OUT_DIR/summary.txt" <<'EOF'
import glob, json, os, sys
out, skipped = sys.argv[1], sys.argv[2].split()
keys = ("objective", "batch", "dtype", "attention", "attention_pad", "xla_options",
        "images_per_s", "torch_images_per_s", "compile_s", "traffic_ceiling_images_per_s",
        "model_bytes_per_image", "model_flops_per_image", "xla_flops_per_step", "mfu", "profile")
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
  for rec in json.load(open(path)):
    print(os.path.basename(path), {k: rec.get(k) for k in keys})
print("skipped (time budget):", skipped or "none")
EOF
cat "$OUT_DIR/summary.txt"
echo "total $(( $(date +%s) - START )) s"
