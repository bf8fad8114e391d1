"""The small-scale reproduction of the paper's comparisons, end to end (scripts/reproduce.py).

Runs every arm of configs/reproduce.py through the ordinary entry points of the project (the
training loop, the offline evaluators, the analysis report) in <workdir>, so a rerun resumes:
finished runs are only evaluated again. Then it checks the paper's findings on the numbers
(study/findings.py) and writes a Markdown report with tables and figures.
"""

import datetime
import importlib
import json
import os
import resource
import sys
import time

import jax
import numpy as np
from absl import logging

from maelite_jax.study import findings as findings_lib

PAPER = ("A Closer Look at Self-Supervised Lightweight Vision Transformers (MAE-Lite, ICML 2023)")


def _arm_config(module: str, variant: str, overrides, workdir: str):
  """The arm's config: configs/<module>.py:<variant> with the (dotted key, value) overrides."""
  config = importlib.import_module(f"maelite_jax.configs.{module}").get_config(variant)
  resolved = {k: _resolve(v, workdir) for k, v in dict(overrides).items()}
  config.update_from_flattened_dict({k: v for k, v in resolved.items() if v is not None})
  return config


def _resolve(value, workdir):
  """'@arm' names another arm's pre-training workdir."""
  if isinstance(value, str) and value.startswith("@"):
    return os.path.join(workdir, "pretrain", value[1:])
  return value


def _timed(label, fn, times):
  """Runs one part, or reads its output from an earlier invocation (<workdir>/parts/<label>.json;
  delete that file to redo the part), and records its wall time and this process's CPU time
  (user + system, all threads: what the part costs whatever else the machine runs)."""
  path = os.path.join(times.workdir, "parts", label + ".json")
  if os.path.exists(path):
    with open(path) as f:
      out = json.load(f)
    logging.info("reproduction: %s done earlier (%s)", label, path)
    return out
  t0, c0 = time.perf_counter(), _cpu_seconds()
  out = fn()
  times.record(label, time.perf_counter() - t0, _cpu_seconds() - c0)
  logging.info("reproduction: %s done in %.0f s (%.0f CPU s)", label, times[label],
               times.cpu[label])
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(out, f, default=_plain)
    os.replace(path + ".tmp", path)
  return out


def _plain(x):
  """JSON for numpy/jax scalars and arrays."""
  x = np.asarray(x)
  return x.item() if x.ndim == 0 else x.tolist()


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


class _Times(dict):
  """Wall seconds per part (and CPU seconds in .cpu), kept in <workdir>/times.json across
  reruns: a resumed study only re-evaluates a finished arm (seconds), so each part keeps the
  longest time any run of it took, and the study's wall time is their sum, not the last
  invocation's."""

  def __init__(self, workdir):
    super().__init__()
    self.workdir = workdir
    self._path = os.path.join(workdir, "times.json")
    self.cpu = {}
    self._seen = {"wall_s": {}, "cpu_s": {}}
    if os.path.exists(self._path):
      with open(self._path) as f:
        self._seen = json.load(f)
      if "wall_s" not in self._seen:  # the first format: wall seconds only
        self._seen = {"wall_s": self._seen, "cpu_s": {}}
    self.update(self._seen["wall_s"])
    self.cpu.update(self._seen["cpu_s"])

  def record(self, label, wall, cpu):
    self[label] = max(wall, self._seen["wall_s"].get(label, 0.0))
    self.cpu[label] = max(cpu, self._seen["cpu_s"].get(label, 0.0))
    self._seen["wall_s"][label], self._seen["cpu_s"][label] = self[label], self.cpu[label]
    with open(self._path, "w") as f:
      json.dump(self._seen, f, indent=1)


def pretrain(config, workdir, times) -> dict:
  from maelite_jax.run import train_and_evaluate
  out = {}
  for name in config.pretrain_order:
    arm = config.pretrain[name]
    cfg = _arm_config(arm.config, arm.variant, arm.overrides, workdir)
    final = _timed(f"pretrain/{name}", lambda: train_and_evaluate(
        cfg, os.path.join(workdir, "pretrain", name)), times)
    arm_dir = os.path.join(workdir, "pretrain", name)
    out[name] = {"loss": final.get("loss", _last_logged(arm_dir, "loss")),
                 "steps": cfg.total_steps, "batch": cfg.batch_size, "model": cfg.model.name}
  return out


def finetune(config, workdir, times) -> dict:
  from maelite_jax.run import train_and_evaluate
  out = {}
  for name in config.finetune:
    arm = config.finetune[name]
    overrides = dict(dict(arm.overrides), init=arm.init)
    cfg = _arm_config("finetune_tiny", "cpu", overrides, workdir)
    arm_dir = os.path.join(workdir, "finetune", name)
    final = _timed(f"finetune/{name}", lambda: train_and_evaluate(cfg, arm_dir), times)
    if "top1" not in final:  # finished in an earlier invocation: its final evaluation's rows
      final = _final_rows(arm_dir, cfg.total_steps)
    out[name] = {"top1": final["top1"], "top5": final["top5"], "steps": cfg.total_steps,
                 "train_split": cfg.data.train_split, "eval_split": cfg.data.eval_split}
  return out


def _last_logged(run_dir, key):
  """The last value of `key` in a run's metrics.jsonl (None if it never logged it)."""
  value = None
  path = os.path.join(run_dir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        value = json.loads(line).get(key, value)
  return value


def _final_rows(run_dir, total_steps) -> dict:
  """A finished run's final evaluation as results.csv recorded it ({metric: fraction}): a rerun
  of a finished run returns no metrics, it only says there is nothing to do."""
  from maelite_jax.train import results
  rows = [r for r in results.read_rows(run_dir)
          if int(r["step"]) == total_steps and not r["protocol"].endswith("-best")]
  return {r["metric"]: float(r["value"]) / 100 for r in rows}


def frozen(config, workdir, times) -> dict:
  """k-NN and the linear probe of every encoder (random init as the floor), one protocol."""
  from maelite_jax.evaluate.offline import evaluate_checkpoint
  f = config.frozen
  out = {}
  for name in f.encoders:
    cfg = importlib.import_module("maelite_jax.configs.linprobe_tiny").get_config("cpu")
    cfg.update_from_flattened_dict({
        "init": "" if name == "random" else os.path.join(workdir, "pretrain", name),
        "data.on_device": True, "data.train_split": f.bank_split,
        "data.eval_split": f.query_split, "model.image_size": 28, "model.patch_size": 4,
        "evals.knn.pool": f.pool, "evals.linear.pool": f.pool,
        "evals.knn.batch_size": f.feature_batch, "evals.linear.batch_size": f.feature_batch,
        "evals.linear.epochs": f.probe_epochs, "evals.fewshot.every": -1})
    if config.depth is not None:
      cfg.model.depth = config.depth
    res = _timed(f"frozen/{name}", lambda: evaluate_checkpoint(
        cfg, os.path.join(workdir, "frozen", name), ["knn", "linear"]), times)
    out[name] = {"knn": res["knn"]["knn_top1"], "linear": res["linear"]["linear_top1"]}
  return out


def analyse(config, workdir, times) -> dict:
  """Attention distance per layer and CKA of each encoder against the supervised model."""
  from maelite_jax.analysis import report
  a = config.analysis
  paths = {name: os.path.join(workdir, "finetune", "scratch") if name == "supervised" else
           os.path.join(workdir, "pretrain", name) for name in a.models}
  cfg = importlib.import_module("maelite_jax.configs.analyze").get_config("cpu")
  cfg.update_from_flattened_dict({
      "models": ",".join(f"{n}={p}" for n, p in paths.items()), "data.on_device": True,
      "data.eval_split": a.split, "num_images": a.num_images, "batch_size": a.batch_size,
      "vis.num_images": 2})
  out_dir = os.path.join(workdir, "analysis")
  result = _timed("analysis", lambda: report.run(cfg, out_dir), times)
  distance = {n: v["distance_layer_mean"] for n, v in result["attention"].items()}
  cka = {}
  for pair in result["cka"]["pairs"]:
    if "supervised" in (pair["a"], pair["b"]) and pair["a"] != pair["b"]:
      other = pair["a"] if pair["b"] == "supervised" else pair["b"]
      m = np.asarray(pair["matrix"])
      cka[other] = np.diag(m if pair["b"] == "supervised" else m.T).tolist()
  return {"distance": distance, "cka_to_supervised": cka, "dir": out_dir,
          "unit": result["attention"][a.models[0]]["unit"]}


def check_findings(config, ft, analysis) -> list[dict]:
  n_full = _count(ft["mae"]["eval_split"])
  n_poor = _count(ft["poor_mae"]["eval_split"])
  top1 = {k: v["top1"] for k, v in ft.items()}
  poor = {k[len("poor_"):]: v for k, v in top1.items() if k.startswith("poor_")}
  cka = analysis["cka_to_supervised"]
  return [findings_lib.mae_beats_scratch_and_mocov3(top1, n_full),
          findings_lib.mae_transfers_worse_than_mocov3(poor, n_poor),
          findings_lib.dmae_helps_higher_layers(top1, cka["dmae"], cka["mae"], n_full),
          findings_lib.lower_layers_carry_maes_benefit(top1, n_full)]


def _count(split: str) -> int:
  """Examples of a built-in test split such as 'test[:2000]' (the full test split: 10000)."""
  from maelite_jax.data import on_device
  from maelite_jax.configs import common
  return on_device.num_examples(common.builtin_data(), split)


def machine() -> str:
  from maelite_jax.utils.machine import cpu_model
  dev = jax.devices()[0]
  accel = "" if dev.platform == "cpu" else f", {jax.device_count()}x {dev.device_kind}"
  return f"{os.cpu_count()} CPU cores ({cpu_model()}){accel}; JAX {jax.__version__}"


def run(config, workdir: str, report_path: str, command: str) -> dict:
  """The whole study; returns what results.json holds (also written into the workdir)."""
  os.makedirs(workdir, exist_ok=True)
  started, t0, times = datetime.datetime.now(), time.perf_counter(), _Times(workdir)
  pre = pretrain(config, workdir, times)
  ft = finetune(config, workdir, times)
  fr = frozen(config, workdir, times)
  an = analyse(config, workdir, times)
  rows = check_findings(config, ft, an)
  wall = time.perf_counter() - t0
  result = {"scale": config.scale, "command": command, "machine": machine(),
            "date": started.isoformat(timespec="minutes"), "wall_s": sum(times.values()),
            "cpu_s": sum(times.cpu.values()), "last_invocation_s": wall,
            "load_average": os.getloadavg(), "times_s": dict(times), "cpu_times_s": times.cpu,
            "pretrain": pre, "finetune": ft, "frozen": fr,
            "analysis": {k: v for k, v in an.items() if k != "dir"}, "findings": rows}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  from maelite_jax.study import report
  report.write(result, an["dir"], report_path)
  logging.info("reproduction (%s scale) finished: %.1f min of work in all (this invocation "
               "%.1f min); report: %s", config.scale, result["wall_s"] / 60, wall / 60,
               report_path)
  for row in rows:
    logging.info("finding (%s) %s: %s", row["id"], row["claim"], row["verdict"])
  return result


def command_line() -> str:
  return " ".join(["python scripts/reproduce.py", *sys.argv[1:]])
