"""Every entry point's one error path (issue 22), end to end: a user error is one paragraph
on stderr and exit status 2, no traceback; --debug (or MAELITE_DEBUG=1) shows the traceback;
a bug is a traceback and exit status 1.

The commands run as subprocesses, a few at a time, all started by one module fixture: each
fails in seconds, before anything is compiled.
"""

import concurrent.futures
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAE = os.path.join(ROOT, "configs", "mae_tiny.py:tiny")


def script(name, *args):
  return [sys.executable, os.path.join(ROOT, "scripts", f"{name}.py"), *args]


def train(*overrides, name="pretrain", config=MAE):
  return script(name, "--config", config, "--workdir", "{tmp}/run", *overrides)


# A bug on purpose: the trainer's constructor raises (as a programming error would).
CRASH = """
from maelite_jax import run
def build_trainer(*args, **kwargs):
  raise RuntimeError("a bug")
run.build_trainer = build_trainer
from maelite_jax.commands.train import main
main()
"""

# name: (command, expected exit status, text expected on stderr)
PROBES = {
    # a missing config file, for every entry point that reads one
    **{f"missing_config_{name}": (script(name, "--config", "/nonexistent.py", "--workdir",
                                         "{tmp}/run"), 2,
                                  "error: --config /nonexistent.py: the config file cannot be "
                                  "loaded ([Errno 2] No such file or directory")
       for name in ("pretrain", "knn", "sweep", "analyze")},  # one per command module
    "unknown_nested_key": (train("--config.model.foo=1"), 2,
                           "error: --config.model.foo: config.model has no key 'foo' (its keys: "
                           "attention_impl, attention_pad, depth,"),
    "bad_enum": (train("--config.model.dtype=bf16"), 2,
                 "error: config.model.dtype: 'bf16' is unknown. Use one of ('auto', 'float32', "
                 "'bfloat16')"),
    "bad_micro_batch": (train("--config.micro_batch_size=-4"), 2,
                        "error: config.micro_batch_size: -4 is negative."),
    "bad_variant": (script("pretrain", "--config", MAE.replace(":tiny", ":tiny2"), "--workdir",
                           "{tmp}/run"), 2, "unknown config variant 'tiny2'"),
    "debug_flag": (train("--config.model.dtype=bf16", "--debug"), 1,
                   "ConfigError: config.model.dtype: 'bf16' is unknown"),
    "debug_env": (train("--config.model.dtype=bf16") + ["{env}MAELITE_DEBUG=1"], 1,
                  "ConfigError: config.model.dtype: 'bf16' is unknown"),
    "crash": ([sys.executable, "-c", CRASH, "--config", MAE, "--workdir", "{tmp}/run"], 1,
              "RuntimeError: a bug"),
    "export_missing": (script("export_torch", "--checkpoint", "{tmp}/nowhere", "--out",
                              "{tmp}/x.safetensors"), 2,
                       "error: checkpoint path {tmp}/nowhere does not exist"),
    "import_empty": (script("import_torch", "--torch-checkpoint", "{tmp}/empty.pth", "--model",
                            "vit_tiny_patch16", "--out", "{tmp}/imported"), 2,
                     "error: {tmp}/empty.pth is empty (0 bytes)"),
    "import_garbage": (script("import_torch", "--torch-checkpoint", "{tmp}/bad.safetensors",
                              "--model", "vit_tiny_patch16", "--out", "{tmp}/imported"), 2,
                       "cannot be read as a .safetensors file"),
    "benchmark": (script("benchmark", "--batch", "0", "--steps", "1", "--image-size", "32",
                         "--patch-size", "4", "--config", MAE), 2,
                  "error: config.batch_size: 0 is not positive."),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("cli_errors"))
  open(os.path.join(tmp, "empty.pth"), "wb").close()
  open(os.path.join(tmp, "bad.safetensors"), "wb").write(os.urandom(3000))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}

  def one(item):
    name, (cmd, _, _) = item
    extra = dict(a[len("{env}"):].split("=", 1) for a in cmd if a.startswith("{env}"))
    cmd = [a.format(tmp=tmp) for a in cmd if not a.startswith("{env}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**env, **extra})
    return name, proc

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    return tmp, dict(pool.map(one, PROBES.items()))


@pytest.mark.parametrize("name", sorted(PROBES))
def test_entry_point_errors(results, name):
  tmp, procs = results
  _, want_rc, want_text = PROBES[name]
  proc = procs[name]
  assert proc.returncode == want_rc, proc.stderr[-3000:]
  assert want_text.format(tmp=tmp) in proc.stderr, proc.stderr[-3000:]
  if want_rc == 2:  # a user error: one paragraph, once, no traceback
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
  else:
    assert "Traceback (most recent call last)" in proc.stderr
