"""The reproduction study end to end at its tiny scale (`scripts/reproduce.py --scale tiny`):
every arm runs a few steps, and the report, its figures and a verdict for every finding of the
paper are written; the findings' checks themselves are tested on chosen numbers."""

import json
import os
import re
import subprocess

import pytest

from maelite_jax.study import findings
from tests import test_docs_commands as docs
from tests.helpers import noise_lines


def documented_study_argv(box) -> list:
  """The README's reproduce.py line as tests/test_docs_commands.py runs documented lines
  (placeholders filled, `--scale=tiny` appended): that test leaves this entry point to the
  `study` fixture (RUN_ELSEWHERE), so the suite runs the tiny study once."""
  lines = [c for c in docs.COMMANDS if (docs.entry_point(c.tokens) or ("",))[0] == "reproduce"
           and not docs.external_needs(c)]
  assert lines, "no runnable `scripts/reproduce.py` line in README.md / docs/*.md"
  argv = docs.build_argv(lines[0], box)
  assert argv[-1] == "--scale=tiny", argv
  return argv


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  box = docs.Sandbox(str(tmp_path_factory.mktemp("reproduce")))
  argv = documented_study_argv(box)
  workdir = os.path.join(box.path, docs._flag(argv, "workdir"))
  proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=box.path,
                        env=box.env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "Traceback" not in proc.stderr and noise_lines(proc.stdout + proc.stderr) == []
  return workdir, proc.stderr, argv, box


def test_report_has_a_verdict_for_every_finding(study):
  workdir, _, argv, _ = study
  with open(os.path.join(workdir, "reproduction.md")) as f:
    report = f.read()
  rows = [line for line in report.splitlines() if re.match(r"\| \([a-d]\) \|", line)]
  assert [row[3] for row in rows] == ["a", "b", "c", "d"], report
  assert all(re.search(r"\*\*(holds|does not hold)\*\*", row) for row in rows), rows
  assert f"- Command: `python {' '.join(argv[1:])}`" in report  # the line that ran
  assert "wall time" in report and "Machine:" in report


def test_every_arm_has_numbers_and_the_figures_exist(study):
  workdir = study[0]
  with open(os.path.join(workdir, "results.json")) as f:
    result = json.load(f)
  assert set(result["pretrain"]) == {"mae", "mae_small", "dmae", "mocov3"}
  assert set(result["finetune"]) == {"scratch", "mae", "mocov3", "dmae", "mae_lower_half",
                                     "poor_scratch", "poor_mae", "poor_mocov3"}
  assert set(result["frozen"]) == {"random", "mae", "mocov3", "dmae", "mae_small"}
  for arm in result["finetune"].values():
    assert 0.0 <= arm["top1"] <= 1.0
  for arm in result["frozen"].values():
    assert 0.0 <= arm["knn"] <= 1.0 and 0.0 <= arm["linear"] <= 1.0
  depth = len(result["analysis"]["distance"]["mae"])
  assert depth == 2  # the tiny scale's blocks
  assert set(result["analysis"]["cka_to_supervised"]) == {"mae", "mocov3", "dmae"}
  figures = os.path.join(workdir, "figures", "reproduction_tiny")
  for name in ("attention_distance_per_layer.png", "cka_to_supervised.png"):
    with open(os.path.join(figures, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(workdir, "reproduction.md")) as f:
    assert "figures/reproduction_tiny/cka_to_supervised.png" in f.read()


def test_rerun_reads_every_part_and_keeps_the_times(study):
  """A second invocation redoes nothing (each part's output is in <workdir>/parts), reports the
  same numbers, and the study's wall time stays the first run's."""
  workdir = study[0]
  with open(os.path.join(workdir, "times.json")) as f:
    first = json.load(f)["wall_s"]
  assert len(first) == 18  # 4 pre-training, 8 fine-tuning, 5 frozen encoders, the analysis
  with open(os.path.join(workdir, "results.json")) as f:
    before = json.load(f)
  assert before["wall_s"] == pytest.approx(sum(first.values()))
  _, _, argv, box = study
  proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=box.path,
                        env=box.env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stderr.count("done earlier") == 18
  with open(os.path.join(workdir, "results.json")) as f:
    after = json.load(f)
  for key in ("wall_s", "finetune", "frozen", "findings", "pretrain"):
    assert after[key] == before[key], key


def test_findings_checks_on_chosen_numbers():
  ft = {"scratch": 0.70, "mae": 0.80, "mocov3": 0.75, "dmae": 0.82, "mae_lower_half": 0.78}
  a = findings.mae_beats_scratch_and_mocov3(ft, 2000)
  assert a["verdict"] == "holds" and "+5.0 pt" in a["noise"]
  assert findings.mae_beats_scratch_and_mocov3(
      dict(ft, mocov3=0.81), 2000)["verdict"] == "does not hold"
  assert findings.mae_transfers_worse_than_mocov3(
      {"mae": 0.6, "mocov3": 0.65, "scratch": 0.5}, 1000)["verdict"] == "holds"
  assert findings.mae_transfers_worse_than_mocov3(
      {"mae": 0.7, "mocov3": 0.65, "scratch": 0.5}, 1000)["verdict"] == "does not hold"
  # D-MAE's gain is in the upper layers: holds; in the lower ones: does not
  assert findings.dmae_helps_higher_layers(
      ft, [0.5, 0.5, 0.6, 0.7], [0.5, 0.5, 0.5, 0.5], 2000)["verdict"] == "holds"
  assert findings.dmae_helps_higher_layers(
      ft, [0.7, 0.6, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], 2000)["verdict"] == "does not hold"
  # MAE's lower half keeps 80 % of the gain: holds; 20 %: does not
  assert findings.lower_layers_carry_maes_benefit(ft, 2000)["verdict"] == "holds"
  assert findings.lower_layers_carry_maes_benefit(
      dict(ft, mae_lower_half=0.72), 2000)["verdict"] == "does not hold"
  no_gain = findings.lower_layers_carry_maes_benefit(dict(ft, mae=0.69), 2000)
  assert no_gain["verdict"] == "does not hold"
  assert no_gain["evidence"].endswith("no gain of MAE over scratch to keep")


@pytest.mark.parametrize("scale", ["tiny", "cpu", "gpu"])
def test_every_arm_of_every_scale_is_a_valid_config(scale, tmp_path):
  """The GPU scale cannot run here; its arms are still checked as the loop would check them
  (sizes, batch vs devices, keys) before any compilation."""
  from maelite_jax.configs import reproduce
  from maelite_jax.study import reproduction
  from maelite_jax.train.validate import validate_config
  config = reproduce.get_config(scale)
  workdir = str(tmp_path)
  for name in config.pretrain:  # what '@name' inits point at (validation checks they exist)
    os.makedirs(os.path.join(workdir, "pretrain", name))
  arms = [reproduction._arm_config(a.config, a.variant, a.overrides, workdir)
          for a in config.pretrain.values()]
  arms += [reproduction._arm_config("finetune_tiny", "cpu", dict(dict(a.overrides), init=a.init),
                                    workdir) for a in config.finetune.values()]
  assert len(arms) == 12
  for arm in arms:
    validate_config(arm, num_devices=1)
    assert arm.data.on_device and arm.model.image_size == 28
  assert all(arm.eval_every == -1 for arm in arms[:4])  # no monitors while pre-training
