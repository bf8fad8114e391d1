"""The persistent compilation cache every entry point turns on (utils/compile_cache.py)."""

import os
import subprocess
import sys

from maelite_jax.utils import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# An entry point (utils.cli.run, as every script's main) that compiles a small gradient program
# and prints JAX's own count of persistent-cache hits and misses: a cache hit is read from
# JAX's monitoring events, not from timings, which a shared machine makes noisy.
PROGRAM = """
import collections
from maelite_jax.utils import cli

def main(argv):
  import jax, jax.numpy as jnp
  events = collections.Counter()
  jax.monitoring.register_event_listener(lambda name, **kw: events.update([name]))
  def loss(ws, x):
    for w in ws:
      x = jnp.tanh(x @ w + 0.1)
    return (x ** 2).sum()
  ws = [jnp.full((16, 16), 0.01 * (i + 1)) for i in range(4)]
  jax.jit(jax.grad(loss)).lower(ws, jnp.ones((4, 16))).compile()
  print("HITS", events["/jax/compilation_cache/cache_hits"],
        events["/jax/compilation_cache/cache_misses"], flush=True)

cli.run(main)
"""


def _run(*flags, env=None):
  """(persistent-cache hits, misses) of one process running PROGRAM."""
  # every program is stored, however fast it compiles (the default threshold is 0.3 s)
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             **(env or {}))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = subprocess.run([sys.executable, "-c", PROGRAM, *flags], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  line = [x for x in out.stdout.splitlines() if x.startswith("HITS")][-1]
  return tuple(int(v) for v in line.split()[1:])


def _entries(path):
  return [f for f in os.listdir(path) if f.endswith("-cache")] if os.path.isdir(path) else []


def test_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
  cache = str(tmp_path / "cache")
  hits, misses = _run(f"--compilation_cache_dir={cache}")
  assert hits == 0 and misses >= 1 and _entries(cache)  # compiled, and written to disk
  hits, misses = _run(f"--compilation_cache_dir={cache}")
  assert hits >= 1 and misses == 0  # the second process compiled nothing
  # off: nothing is read or written
  off = str(tmp_path / "off")
  assert _run("--nocompilation_cache", env={compile_cache.ENV_DIR: off}) == (0, 0)
  assert not _entries(off)


def test_cache_directory_rules(monkeypatch, tmp_path):
  for var in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV_DIR, compile_cache.ENV_SWITCH):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.resolve_dir() == str(tmp_path / "xdg" / "maelite_jax" / "jax_cache")
  monkeypatch.setenv(compile_cache.ENV_DIR, str(tmp_path / "env"))
  assert compile_cache.resolve_dir() == str(tmp_path / "env")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # JAX's own wins
  assert compile_cache.resolve_dir() == str(tmp_path / "jax")
  assert compile_cache.resolve_dir(path=str(tmp_path / "flag")) == str(tmp_path / "flag")
  assert compile_cache.resolve_dir(enabled=False) is None
  monkeypatch.setenv(compile_cache.ENV_SWITCH, "0")
  assert compile_cache.resolve_dir(path=str(tmp_path / "flag")) is None
