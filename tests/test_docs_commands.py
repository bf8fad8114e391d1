"""Every command line of README.md and docs/*.md works as documented (issue 24, item 1).

The commands are not listed here: the test reads the fenced ```bash blocks of README.md and
docs/*.md when it runs, so a line the README gains, loses or changes is tested as it now reads.
Three layers, from cheap to thorough:

1. `test_the_docs_hold_commands_and_the_tables_cover_every_one` (no subprocess): every line is
   either external for a reason the test detects by itself (a wrapper such as gcloud, several
   hosts, a GPU-only flag, a config whose variants all need downloaded data, a downloaded .pth,
   a make target that installs or runs the suite) or the substitution tables below turn it into
   a tiny command: TINY (config file -> tiny variant + overrides), PLACEHOLDERS (flag -> what
   DIR / FILE / NAME stand for), MAKE_TARGETS. A new kind of line that the tables do not cover
   fails here, by file and line, before anything runs.
2. `test_documented_command_line_is_valid` (always; about a second of CPU per line): each line
   exactly as typed, placeholders filled, once per variant of a `[:cpu|:tiny]` group, with
   `--dry_run` appended (make: `ARGS=--dry_run`, or `make -n` for targets that do not run a
   script). Every entry point parses its flags, loads the config file and variant and applies
   the --config.* overrides, then exits: a renamed flag, config variant or config key in a
   documented line fails CI. External lines (ImageNet, multi-host, GPU) are checked this way
   too.
3. `test_documented_command_runs` (in the default suite and CI, ~5 CPU-minutes;
   MAELITE_DOCS_RUN=0 skips it for a quick local run): each runnable line for real in a
   sandbox on the built-in data with its config replaced by TINY's variant, then
   `test_results_csv_is_consistent_across_protocols` reads the results.csv files they wrote.
   Lines that become the same run once substituted (`make pretrain` and the pretrain.py line
   it stands for) run once (run_key); the others' output paths are linked to that run's. An
   entry point in RUN_ELSEWHERE (the reproduction study) is run by the test named there, from
   the documented line built by `build_argv` as here, so the suite pays for it once.

What a documented command line may look like (the rules the test applies):
- Only fenced blocks tagged bash/sh/shell/console count; inline `code` does not. Lines ending
  in a backslash continue on the next line; `# comments` are dropped; `$ ` prompts too.
- A project command starts with `python`, `python3` or `.venv/bin/python` running
  `scripts/NAME.py` or `-m maelite_jax...`, with a `maelite-NAME` console script
  (pyproject.toml), or with `make TARGET`. Any other line mentioning `scripts/*.py` or
  `maelite_jax` (a wrapper such as `gcloud ... --command "python scripts/..."`) is external.
  Other lines (mkdir, ln, pip, tensorboard) are not run.
- Synopsis notation: `[...]` groups are optional and are left out, except a config variant group
  (`configs/x.py[:cpu|:tiny]`, `configs/x.py:linprobe[_cpu]`): the alternatives are expanded,
  and the command runs when at least one of them trains/evaluates on the built-in data.
- Config files: `--config configs/X.py<variant>` (and `--finetune_config`) is replaced by the
  tiny variant of TINY[X] plus that entry's overrides (e.g. `:tiny --config.total_steps=2`);
  the documented `--config.*` overrides stay, TINY's come after them. A config whose documented
  variants all need other data (ImageNet, ADE20K, Pets, CIFAR) makes the command external.
- Placeholders are ALL-CAPS words (DIR, FILE, NAME, ...), `...` or one lower-case letter
  (`--process_id=i`). Their value depends on the flag: `--workdir DIR` and import's `--out DIR`
  get a fresh folder per command; `--config.init`, `--init`, `--checkpoint`,
  `--config.teacher.init` and `--config.models` paths get the shared MAE pre-training run
  (runs/mae_tiny_cpu); `--torch-checkpoint FILE` the file the first export command wrote;
  `--model NAME` vit_tiny_patch16; `--out FILE` of export and `--json FILE` a fresh file. A
  placeholder on another flag fails the test (add it to PLACEHOLDERS).
- Concrete paths are used as written, relative to a sandbox folder that stands for the
  repository root (scripts/, configs/, Makefile and .venv/bin/python are there). Commands run in
  document order (README.md, then docs/*.md by name), except that pre-training commands run
  first and imports last, so runs/mae_tiny_cpu exists when a later command reads it. An input
  checkpoint that no command has written (e.g. `--checkpoint workdirs/mae_tiny`) is linked to
  runs/mae_tiny_cpu before the command runs.
- `make TARGET` runs with the tiny config of the Makefile's CONFIG (CONFIG=... ARGS=...
  appended) and the sandbox's .venv (no install).
- Each command must exit with status 0, print no traceback, none of the known noise
  (tests.helpers.noise_lines) and at most one results table.
- BROKEN lists documented lines known to be wrong (strict xfail: fixing the line or the code
  makes the test say so); an entry that matches no documented line does nothing.

All subprocesses share one JAX compilation cache, so a program compiled by one command (the
same tiny model in pretrain, make pretrain, evaluate, analyze) is compiled once.
"""

import dataclasses
import glob
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import noise_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
PRETRAIN = "runs/mae_tiny_cpu"  # the shared MAE pre-training run (what `make pretrain` writes)
TIMEOUT = 600
RUN_ENV = "MAELITE_DOCS_RUN"  # =0: only check the documented commands (--dry_run), run none
RUN_ALL = os.environ.get(RUN_ENV, "1") != "0"

# `make TARGET`: None = runs (with the tiny variant of the Makefile's CONFIG), else why not.
MAKE_TARGETS = {
    "pretrain": None,
    "test": "runs the whole test suite, which holds this test",
    "benchmark": "a benchmark (minutes); scripts/benchmark.py's documented lines run instead",
    "venv": "installs packages", "venv-test": "installs packages",
    "clean": "deletes .venv and runs/",
}
# Documented lines known to be wrong, with the reason: they must still fail (strict xfail), so
# the entry goes when the line is fixed. An entry that matches no documented line is inert.
BROKEN = {
}
# entry point -> the test that runs its documented line (built by build_argv, as here) and checks
# what it wrote, so that the suite runs it once: the tiny reproduction study costs minutes.
RUN_ELSEWHERE = {
    "reproduce": "tests/test_reproduce.py (its `study` fixture runs this documented line)",
}

# config file -> [(documented variant pattern, variant to run, overrides)]: the first entry whose
# pattern matches one of the command's offline variants wins. Overrides are KEY=VALUE pairs of
# the config (the flag prefix, --config. or --finetune_config., is added).
_SMALL_EVAL = ["data.eval_split=test[:64]", "evals.accuracy.batch_size=64"]
TINY = {
    "configs/mae_tiny.py": [(r".*", "tiny", ["total_steps=2", "evals.reconstruction.every=0"])],
    "configs/mocov3_tiny.py": [(r".*", "tiny", ["total_steps=2", "evals.knn.every=-1"])],
    "configs/dmae_tiny.py": [(r".*", "tiny", ["total_steps=2", f"teacher.init={PRETRAIN}",
                                              "evals.reconstruction.every=-1"])],
    "configs/finetune_tiny.py": [
        (r"linprobe.*", "linprobe_cpu", ["total_steps=2", "model.depth=2", "batch_size=32",
                                         *_SMALL_EVAL]),
        (r".*", "tiny", ["total_steps=2", *_SMALL_EVAL])],
    "configs/transfer.py": [(r".*", "builtin", ["total_steps=2", "model.depth=2", "batch_size=32",
                                                *_SMALL_EVAL])],
    "configs/linprobe_tiny.py": [(r".*", "tiny", ["evals.linear.epochs=2"])],
    "configs/seg_tiny.py": [(r".*", "tiny", ["total_steps=2"])],
    "configs/analyze.py": [(r".*", "tiny", [])],
}
# Flags of entry points without --config (appended; absl keeps the last value of a flag).
ENTRY_ARGS = {
    "benchmark": lambda argv: [f"--config=configs/{_flag(argv, 'objective') or 'mae'}_tiny.py:tiny",
                               "--batch=8", "--image_size=32", "--patch_size=4", "--steps=1",
                               "--warmup=0"] + (  # --pipeline: 8 JPEGs, one turn per loader
                                   ["--warmup=1", "--pipeline_files=8", "--pipeline_rounds=1",
                                    "--pipeline_interpolation=bilinear", "--nopipeline_builtin",
                                    "--nopipeline_no_antialias"]
                                   if "--pipeline" in argv else []),
    "reproduce": lambda argv: ["--scale=tiny"],  # the study at its smallest (minutes)
}
# flag -> what a placeholder in its value stands for (see the module docstring)
PLACEHOLDERS = {
    "--workdir": "fresh_dir", "--config.init": "pretrain", "--init": "pretrain",
    "--checkpoint": "pretrain", "--config.teacher.init": "pretrain", "--config.models": "models",
    "--torch-checkpoint": "export", "--model": "vit_tiny_patch16", "--json": "fresh_file",
    "--num_processes": "2", "--process_id": "0",
}
INPUT_FLAGS = ("--config.init", "--init", "--checkpoint", "--config.teacher.init")
MULTI_HOST = ("--distributed", "--coordinator_address", "--num_processes", "--process_id")
GPU_ONLY = ("--attention=cudnn", "--attention cudnn")
LAUNCHERS = ("python", "python3", ".venv/bin/python")


# ------------------------------------------------------------------------- reading the docs

@dataclasses.dataclass
class DocCommand:
  text: str        # normalised: tokens joined by one space
  where: str       # 'README.md:36'
  tokens: list


def _fenced_bash(path):
  """[(line number, text)] of the lines inside ```bash / sh / shell / console blocks."""
  out, lang = [], None
  for i, line in enumerate(open(path).read().splitlines(), 1):
    m = re.match(r"^\s*```\s*([\w-]*)\s*$", line)
    if m:
      lang = None if lang is not None else m.group(1).lower()
      continue
    if lang in ("bash", "sh", "shell", "console"):
      out.append((i, line))
  return out


def documented_commands() -> list[DocCommand]:
  """Project command lines of README.md and docs/*.md, in order, each text once."""
  seen, out = set(), []
  for doc in DOCS:
    buf, start = "", None
    for i, line in _fenced_bash(os.path.join(ROOT, doc)):
      s = line.strip()
      if s.startswith("$ "):
        s = s[2:]
      start = start or i
      if s.endswith("\\"):
        buf += s[:-1] + " "
        continue
      buf, text, start_line, start = "", buf + s, start, None
      try:
        tokens = shlex.split(text, comments=True)
      except ValueError:
        tokens = text.split()
      if not tokens or not _mentions_project(text, tokens):
        continue
      norm = " ".join(tokens)
      if norm not in seen:
        seen.add(norm)
        out.append(DocCommand(norm, f"{doc}:{start_line}", tokens))
  return out


def _mentions_project(text, tokens) -> bool:
  return (tokens[0] == "make" or tokens[0].startswith("maelite-")
          or bool(re.search(r"scripts/\w+\.py|maelite_jax", text)))


# ------------------------------------------------------------------------- understanding one

def entry_point(tokens):
  """(entry name, index of its first argument) or None for a line that is not a direct launch
  (a wrapper such as gcloud ... --command "...")."""
  if tokens[0] == "make":
    return ("make:" + tokens[1] if len(tokens) > 1 else "make"), 2
  if tokens[0].startswith("maelite-"):
    return tokens[0][len("maelite-"):].replace("-", "_"), 1
  if tokens[0] in LAUNCHERS and len(tokens) > 1:
    m = re.fullmatch(r"scripts/(\w+)\.py", tokens[1])
    if m:
      return m.group(1), 2
    if tokens[1] == "-m" and len(tokens) > 2 and tokens[2].startswith("maelite_jax"):
      return tokens[2].rpartition(".")[2], 3
  return None


def _flag(tokens, name):
  """The value of --name (either spelling: --name=v, --name v; hyphens = underscores)."""
  want = name.replace("-", "_")
  for i, t in enumerate(tokens):
    key, eq, value = t.partition("=")
    if key.startswith("--") and key[2:].replace("-", "_") == want:
      if eq:
        return value
      if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
        return tokens[i + 1]
  return None


def _expand(spec: str) -> list[str]:
  """':linprobe[_cpu]' -> ['linprobe', 'linprobe_cpu']; '[:cpu|:tiny]' -> ['', 'cpu', 'tiny']."""
  m = re.search(r"\[([^\[\]]*)\]", spec)
  if not m:
    return [spec.lstrip(":")]
  head, tail = spec[:m.start()], spec[m.end():]
  return [v for alt in [""] + m.group(1).split("|") for v in _expand(head + alt + tail)]


def split_config(value):
  """'configs/x.py[:cpu|:tiny]' -> ('configs/x.py', ['', 'cpu', 'tiny'])."""
  path, _, rest = value.partition(".py")
  return path + ".py", _expand(rest)


def _load_config(path, variant):
  import importlib.util
  spec = importlib.util.spec_from_file_location("doc_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant or None)


def offline_variants(path, variants) -> list[str]:
  """The variants whose data is the built-in dataset (the others need downloads)."""
  out = []
  for v in variants:
    try:
      config = _load_config(path, v)
    except ValueError:  # a variant the file does not have: a doc error, reported when run
      continue
    data = config.get("data")
    if data is not None and data.dataset == "fashion_mnist_builtin":
      out.append(v)
  return out


def external_needs(cmd: DocCommand) -> list[str]:
  """Why a command cannot run here (empty: it can): what the test detects by itself."""
  found = entry_point(cmd.tokens)
  if found is None:
    return ["not a direct launch of an entry point (a wrapper: ssh, gcloud, srun, ...)"]
  if found[0].startswith("make"):
    why = MAKE_TARGETS.get(found[0][len("make:"):])
    return [why] if why else []
  reasons = []
  if found[0] == "data_service":
    reasons.append("a server that runs until it is stopped (tests/test_input_pipeline.py runs "
                   "a dispatcher and two workers)")
  if _flag(cmd.tokens, "data_service") is not None:
    reasons.append("a tf.data service dispatcher on another machine")
  if any(_flag(cmd.tokens, f[2:]) is not None or f in cmd.tokens for f in MULTI_HOST):
    reasons.append("several hosts")
  if any(g in " ".join(_required(cmd.tokens)) for g in GPU_ONLY):
    reasons.append("a GPU")
  for flag in ("config", "finetune_config"):
    value = _flag(cmd.tokens, flag)
    if value and value.startswith("configs/"):
      path, variants = split_config(value)
      if not offline_variants(path, variants):
        reasons.append(f"the data of {value} (not the built-in dataset)")
  torch_file = _flag(cmd.tokens, "torch-checkpoint")
  if torch_file and not _is_placeholder(torch_file) and re.search(r"\.(pth|pt|bin)(\.tar)?$",
                                                                   torch_file):
    reasons.append(f"{torch_file}, a PyTorch file this repository does not write")
  return reasons


def _required(tokens):
  """The tokens without optional `[...]` groups."""
  out, skip = [], False
  for tok in tokens:
    if skip or tok.startswith("["):
      skip = not tok.endswith("]")
      continue
    out.append(tok)
  return out


def _is_placeholder(token: str) -> bool:
  return token == "..." or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*|[a-z]", token))


# ------------------------------------------------------------------------- the sandbox

class Sandbox:
  """A folder standing for the repository root: commands run in it, their relative paths
  (runs/..., workdirs/..., configs/...) land in it."""

  def __init__(self, path):
    self.path = path
    for name in ("scripts", "configs", "maelite_jax", "Makefile", "pyproject.toml",
                 "requirements.txt", "requirements-test.txt"):
      os.symlink(os.path.join(ROOT, name), os.path.join(path, name))
    os.makedirs(os.path.join(path, ".venv", "bin"))
    python = os.path.join(path, ".venv", "bin", "python")
    with open(python, "w") as f:
      f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    os.chmod(python, 0o755)
    open(os.path.join(path, ".venv", ".core"), "w").close()  # newer than requirements: no install
    os.makedirs(os.path.join(path, "logs"))
    self.counter = 0
    self.export = None  # the first export's .safetensors
    self.ran = {}  # command text -> argv, of the commands that passed
    cache = os.path.join(path, ".jax_cache")
    self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    self.env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the tests' setting; users see what cli sets

  def fresh(self, entry, suffix=""):
    self.counter += 1
    return f"runs/doc_{entry.replace(':', '_')}_{self.counter}{suffix}"

  def ensure_input(self, path):
    """A checkpoint path that no command wrote stands for the shared pre-training run."""
    full = os.path.join(self.path, path)
    if not os.path.exists(full) and os.path.exists(os.path.join(self.path, PRETRAIN)):
      os.makedirs(os.path.dirname(full) or self.path, exist_ok=True)
      os.symlink(os.path.abspath(os.path.join(self.path, PRETRAIN)), full)


def build_argv(cmd: DocCommand, box: Sandbox) -> list[str]:
  """The command as it runs: placeholders filled, optional groups dropped, tiny config and
  overrides appended."""
  entry, first = entry_point(cmd.tokens)
  out, extra = [], []
  for tok in _joined(cmd.tokens[first:]):
    key, eq, value = tok.partition("=")
    if eq and key.startswith("--"):
      value = _fill(entry, key, value, box)
      if key in ("--config", "--finetune_config") and value.startswith("configs/"):
        value, overrides = _tiny_config(value, cmd)
        extra += [f"{key}.{o}" for o in overrides]
      if key in INPUT_FLAGS:
        box.ensure_input(value)
      if key == "--config.models":
        for item in value.split(","):
          box.ensure_input(item.partition("=")[2] or item)
      tok = f"{key}={value}"
    out.append(tok)
  if entry in ENTRY_ARGS:
    extra += ENTRY_ARGS[entry](cmd.tokens)
  if entry.startswith("make:"):
    return ["make", entry[len("make:"):], *out, *_make_overrides(entry[len("make:"):])]
  return [*_launcher(cmd.tokens[:first]), *out, *extra]


def _joined(args):
  """The required arguments, each flag one token: --flag value -> --flag=value."""
  args = _required(args)
  joined, i = [], 0
  while i < len(args):
    tok = args[i]
    if (tok.startswith("--") and "=" not in tok and i + 1 < len(args)
        and not args[i + 1].startswith("--")):
      joined.append(f"{tok}={args[i + 1]}")
      i += 2
    else:
      joined.append(tok)
      i += 1
  return joined


def _launcher(launcher):
  if launcher[0] in ("python", "python3"):
    return [sys.executable, *launcher[1:]]
  if launcher[0].startswith("maelite-"):
    return [sys.executable, "-c", _console_script(launcher[0])]
  return launcher  # .venv/bin/python: the sandbox's


def dry_argvs(cmd) -> list[tuple[str, list[str]]]:
  """[(variant, argv)]: the command as typed (placeholders filled, optional groups left out),
  once per variant of a `[:a|:b]` config group, with --dry_run appended (make: ARGS=--dry_run
  for a target that runs a script, `make -n` for the others)."""
  entry, first = entry_point(cmd.tokens)
  if entry.startswith("make:"):
    target = entry[len("make:"):]
    if target in MAKE_TARGETS and MAKE_TARGETS[target] is None:
      return [("", ["make", target, *cmd.tokens[first:], "ARGS=--dry_run"])]
    return [("", ["make", "-n", target, *cmd.tokens[first:]])]
  box, out, variants = _DryBox(), [[]], [""]
  for tok in _joined(cmd.tokens[first:]):
    key, eq, value = tok.partition("=")
    if eq and key.startswith("--"):
      value = _fill(entry, key, value, box)
      if key in ("--config", "--finetune_config") and "[" in value and len(variants) == 1:
        path, variants = split_config(value)
        out = [o + [f"{key}={path}" + (f":{v}" if v else "")] for o in out for v in variants]
        continue
      tok = f"{key}={value}"
    out = [o + [tok] for o in out]
  launcher = _launcher(cmd.tokens[:first])
  return [(v, [*launcher, *o, "--dry_run"]) for v, o in zip(variants, out)]


def _fill(entry, key, value, box):
  """A placeholder value -> the sandbox's stand-in (see PLACEHOLDERS)."""
  if key == "--config.models" and any(_is_placeholder(p) for p in re.split(r"[=,]", value)):
    return f"mae={PRETRAIN}"
  if not _is_placeholder(value):
    return value
  if key == "--out":
    kind = "fresh_dir" if entry == "import_torch" else "export_file"
  else:
    kind = PLACEHOLDERS.get(key)
  if kind is None:
    pytest.fail(f"placeholder {value!r} of {key}: the test does not know what to put there; "
                "add the flag to PLACEHOLDERS in tests/test_docs_commands.py")
  if kind == "fresh_dir":
    return box.fresh(entry)
  if kind == "fresh_file":
    return box.fresh(entry, ".json")
  if kind == "export_file":
    return box.fresh(entry, ".safetensors")
  if kind == "pretrain":
    return PRETRAIN
  if kind == "models":
    return f"mae={PRETRAIN}"
  if kind == "export":
    if box.export is None:
      pytest.fail("no documented export command ran before this import: nothing to import")
    return box.export
  return kind  # a literal (e.g. a model name)


def _tiny_config(value, cmd):
  path, variants = split_config(value)
  offline = offline_variants(path, variants)
  for pattern, variant, overrides in TINY.get(path, []):
    if any(re.fullmatch(pattern, v) for v in offline):
      return f"{path}:{variant}", overrides
  pytest.fail(f"{cmd.where}: no tiny variant for {value} in TINY (tests/test_docs_commands.py)")


def _make_overrides(target):
  """CONFIG=<tiny variant of the Makefile's CONFIG> ARGS=<its overrides>."""
  makefile = open(os.path.join(ROOT, "Makefile")).read()
  m = re.search(r"^CONFIG \?= (\S+)", makefile, re.M)
  if target != "pretrain" or not m:
    return []
  path, variants = split_config(m.group(1))
  for pattern, variant, overrides in TINY.get(path, []):
    if any(re.fullmatch(pattern, v) for v in variants):
      return [f"CONFIG={path}:{variant}", "ARGS=" + " ".join(f"--config.{o}" for o in overrides)]
  return []


def _console_script(name):
  text = open(os.path.join(ROOT, "pyproject.toml")).read()
  m = re.search(rf'^{re.escape(name)} = "([\w.]+):(\w+)"', text, re.M)
  assert m, f"{name} is not a console script of pyproject.toml"
  module, fn = m.groups()
  return f"import sys; sys.argv[0] = {name!r}; from {module} import {fn}; {fn}()"


def run_order(commands):
  """Pre-training first (others read its runs), imports last (they read an export)."""
  def stage(cmd):
    found = entry_point(cmd.tokens)
    entry = found[0] if found else ""
    config = _flag(cmd.tokens, "config") or ""
    if entry == "make:pretrain" or (entry in ("pretrain", "train") and re.search(
        r"configs/(mae|mocov3)_tiny\.py", config)):
      return 0
    return 2 if entry == "import_torch" else 1
  return sorted(commands, key=stage)  # stable: document order within a stage


# ------------------------------------------------------------------------- the tests

COMMANDS = documented_commands()


def test_the_docs_hold_commands_and_the_tables_cover_every_one(tmp_path):
  """Cheap (no command runs): every documented line either is external for a reason the test
  detects, or turns into a command line here (its entry point exists, its config file has a
  tiny variant in TINY, each placeholder has a stand-in in PLACEHOLDERS, its make target is in
  MAKE_TARGETS). A new documented line that the tables do not cover fails here, by name."""
  assert COMMANDS, "no documented command found in README.md / docs/*.md"
  problems = []
  box = Sandbox(str(tmp_path))
  box.export = "runs/dry_run.safetensors"
  for cmd in COMMANDS:
    found = entry_point(cmd.tokens)
    if found and found[0].startswith("make") and found[0][len("make:"):] not in MAKE_TARGETS:
      problems.append(f"{cmd.where}: {cmd.text}: make target not in MAKE_TARGETS")
      continue
    if external_needs(cmd):
      continue
    entry = found[0]
    if not entry.startswith("make") and cmd.tokens[0] in LAUNCHERS and cmd.tokens[1] != "-m":
      if not os.path.exists(os.path.join(ROOT, cmd.tokens[1])):
        problems.append(f"{cmd.where}: {cmd.tokens[1]} does not exist")
    try:
      build_argv(cmd, box)
    except pytest.fail.Exception as e:
      problems.append(str(e))
  assert not problems, "\n".join(problems)


def test_command_lines_sit_in_bash_blocks():
  """A command line in an untagged (or otherwise tagged) fenced block would escape this test:
  every line that starts like a project command must be in a bash/sh/shell/console block."""
  command = re.compile(r"^\s*(\$ )?(python3?|\.venv/bin/python|make|maelite-[\w-]+)\s")
  problems = []
  for doc in DOCS:
    lang = None
    for i, line in enumerate(open(os.path.join(ROOT, doc)).read().splitlines(), 1):
      m = re.match(r"^\s*```\s*([\w-]*)\s*$", line)
      if m:
        lang = None if lang is not None else m.group(1).lower()
        continue
      if lang is not None and lang not in ("bash", "sh", "shell", "console") and (
          command.match(line) and _mentions_project(line, line.split())):
        problems.append(f"{doc}:{i}: ```{lang} block: {line.strip()}")
  assert not problems, "tag these blocks ```bash so that their commands are tested:\n" + (
      "\n".join(problems))


def test_the_docs_hold_the_commands_of_every_protocol():
  entries = {entry_point(c.tokens)[0] for c in COMMANDS if entry_point(c.tokens)}
  assert {"pretrain", "finetune", "linprobe", "knn", "fewshot", "segment", "analyze",
          "export_torch", "import_torch"} <= entries, entries


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
  return Sandbox(str(tmp_path_factory.mktemp("docs")))


class _DryBox:
  """build_argv's view of a sandbox that has nothing in it (for run_key)."""
  path, export = ROOT, "runs/export.safetensors"

  def fresh(self, entry, suffix=""):
    return f"runs/fresh{suffix}"

  def ensure_input(self, path):
    pass


OUTPUT_FLAGS = ("--workdir", "--out", "--json")


def run_key(cmd):
  """What a command runs once substituted, without where it writes: two documented lines with
  one key (e.g. `make pretrain` and the pretrain.py line it stands for) are one run."""
  try:
    argv = build_argv(cmd, _DryBox())
  except BaseException:  # noqa: BLE001 - a table gap: the line runs alone and fails there
    return cmd.text
  entry = entry_point(cmd.tokens)[0]
  if entry == "make:pretrain":
    values = dict(a.split("=", 1) for a in argv[2:] if "=" in a and not a.startswith("-"))
    argv = ["pretrain", f"--config={values.get('CONFIG', '')}", *values.get("ARGS", "").split()]
  else:
    argv = [entry, *argv[len(cmd.tokens[:entry_point(cmd.tokens)[1]]):]]
  rest = sorted(a for a in argv[1:] if a.partition("=")[0] not in OUTPUT_FLAGS)
  return (argv[0], *rest)


def _groups():
  """{command text: the text of the first command with its run_key} in run order."""
  first, out = {}, {}
  for cmd in run_order(COMMANDS):
    if not external_needs(cmd):
      out[cmd.text] = first.setdefault(run_key(cmd), cmd.text)
  return out


SAME_RUN = _groups()


def _params():
  out = []
  for cmd in run_order(COMMANDS):
    marks = []
    needs = external_needs(cmd)
    if needs:
      marks.append(pytest.mark.skip(reason="needs " + "; ".join(needs)))
    elif entry_point(cmd.tokens)[0] in RUN_ELSEWHERE:
      marks.append(pytest.mark.skip(reason="runs in " + RUN_ELSEWHERE[
          entry_point(cmd.tokens)[0]]))
    elif cmd.text in BROKEN:
      marks.append(pytest.mark.xfail(reason=BROKEN[cmd.text], strict=True))
    out.append(pytest.param(cmd, id=f"{cmd.where}", marks=marks))
  return out


def _dry_params():
  out = []
  for cmd in COMMANDS:
    if entry_point(cmd.tokens) is None:
      continue  # a wrapper (gcloud ... --command "..."): not ours to launch
    marks = [pytest.mark.xfail(reason=BROKEN[cmd.text], strict=True)] if cmd.text in BROKEN else []
    try:
      argvs = dry_argvs(cmd)
    except BaseException as e:  # noqa: BLE001 - a table gap: reported by the test itself
      argvs = [("", e)]
    for variant, argv in argvs:
      name = cmd.where + (f":{variant or 'default'}" if len(argvs) > 1 else "")
      out.append(pytest.param(cmd, argv, id=name, marks=marks))
  return out


@pytest.mark.parametrize("cmd,argv", _dry_params())
def test_documented_command_line_is_valid(cmd, argv, sandbox):
  """Every documented line with --dry_run (cheap: flags parsed, config file and variant loaded,
  overrides applied, nothing run), as typed: also the lines that need ImageNet, a GPU or several
  hosts, and each variant of a `[:cpu|:tiny]` group."""
  if isinstance(argv, BaseException):
    raise argv
  proc = subprocess.run(argv, cwd=sandbox.path, env=sandbox.env, capture_output=True, text=True,
                        timeout=TIMEOUT)
  shown = f"{cmd.where}: {shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  assert proc.returncode == 0, shown
  if "--dry_run" in argv or "ARGS=--dry_run" in argv:
    assert "dry run: the command line is valid" in proc.stdout, shown


# entry point -> the results.csv protocol its documented line writes
PROTOCOL_OF = {"finetune": "finetune", "knn": "knn-k20", "linprobe": "linear",
               "fewshot": "fewshot", "segment": "segment"}


@pytest.mark.skipif(not RUN_ALL, reason=f"{RUN_ENV}=0: documented commands checked, not run")
@pytest.mark.parametrize("cmd", _params())
def test_documented_command_runs(cmd, sandbox):
  argv = build_argv(cmd, sandbox)
  same = SAME_RUN.get(cmd.text, cmd.text)
  if same != cmd.text:  # the same run as an earlier line: its outputs stand for this one's
    ran = sandbox.ran.get(same)
    assert ran is not None, f"{cmd.where}: the same run as `{same}`, which did not pass"
    for key in OUTPUT_FLAGS:
      mine, theirs = _flag(argv, key[2:]), _flag(ran, key[2:])
      if mine and theirs and mine != theirs and not os.path.lexists(
          os.path.join(sandbox.path, mine)):
        os.makedirs(os.path.dirname(os.path.join(sandbox.path, mine)), exist_ok=True)
        os.symlink(os.path.join(sandbox.path, theirs), os.path.join(sandbox.path, mine))
    return
  log_path = os.path.join(sandbox.path, "logs", cmd.where.replace("/", "_") + ".log")
  before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
  proc = subprocess.run(argv, cwd=sandbox.path, env=sandbox.env, capture_output=True, text=True,
                        timeout=TIMEOUT)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
  with open(log_path, "w") as f:  # the CPU time says what a quiet machine's wall time would be
    f.write(f"$ {shlex.join(argv)}\n# wall {time.perf_counter() - start:.1f} s, cpu {cpu:.1f} s"
            f"\n{proc.stdout}\n{proc.stderr}")
  shown = f"{cmd.where}: {shlex.join(argv)}\n{proc.stderr[-4000:]}"
  assert proc.returncode == 0, shown
  assert "Traceback" not in proc.stderr, shown
  assert noise_lines(proc.stdout + proc.stderr) == [], shown
  assert proc.stdout.count("pretrain  protocol") <= 1, shown  # results tables: printed once
  sandbox.ran[cmd.text] = argv
  entry = entry_point(cmd.tokens)[0]
  if entry == "export_torch" and sandbox.export is None:
    sandbox.export = os.path.join(sandbox.path, _flag(argv, "out").replace(".pth", ""))
    if not sandbox.export.endswith(".safetensors"):
      sandbox.export = re.sub(r"(\.pth(\.tar)?|\.pt)$", "", sandbox.export) + ".safetensors"
    assert os.path.exists(sandbox.export), shown


@pytest.mark.skipif(not RUN_ALL, reason=f"reads what the documented commands wrote ({RUN_ENV}=0)")
def test_results_csv_is_consistent_across_protocols(sandbox):
  """After the documented commands (runs after them, in file order): every results.csv row of
  every protocol names the model, the pre-training and the metric the same way (issue 24,
  item 8): model = a registry ViT, pretrain = '<objective>:<path>' | 'random-init' |
  'scratch', metric = top1 / top5 / top1@<k>shot / miou / pixel_acc, value in %, step = the
  evaluated checkpoint's step."""
  from maelite_jax.train import results
  rows = []
  for path in glob.glob(os.path.join(sandbox.path, "runs", "**", results.FILENAME),
                        recursive=True):
    with open(path) as f:
      assert f.readline().strip() == ",".join(results.COLUMNS), path
    rows += [dict(r, file=os.path.relpath(path, sandbox.path))
             for r in results.read_rows(os.path.dirname(path))]
  protocols = {r["protocol"] for r in rows}
  ran = {entry_point(c.tokens)[0] for c in COMMANDS if c.text in sandbox.ran}
  expected = {PROTOCOL_OF[e] for e in ran if e in PROTOCOL_OF}  # what the documented lines wrote
  assert expected and expected <= protocols, (expected, protocols)
  for r in rows:
    assert re.fullmatch(r"vit_(tiny|small|base)_patch16", r["model"]), r
    assert re.fullmatch(r"random-init|scratch|(mae|dmae|mocov3|imported|classification):\S+",
                        r["pretrain"]), r
    assert re.fullmatch(r"top1|top5|top1@\d+shot|miou|pixel_acc", r["metric"]), r
    assert 0.0 <= float(r["value"]) <= 100.0 and re.fullmatch(r"\d+\.\d\d", r["value"]), r
    assert r["step"].isdigit(), r
    assert r["metric"] in (("miou", "pixel_acc") if r["protocol"].startswith("segment") else
                           ("top1", "top5") if not r["protocol"].startswith("fewshot") else
                           (r["metric"],)), r
  pretrained = {r["pretrain"] for r in rows if r["pretrain"] not in ("random-init", "scratch")}
  assert pretrained == {f"mae:{PRETRAIN}"}, pretrained  # the same run, named the same way
