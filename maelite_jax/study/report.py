"""The reproduction's Markdown report: what ran (command, machine, date, wall time), the tables
of every arm, the paper's findings with their verdicts, and the figures."""

import os
import shutil

from maelite_jax.analysis import plots


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.2f}"


def _figures(result, analysis_dir, fig_dir) -> list[tuple[str, str]]:
  os.makedirs(fig_dir, exist_ok=True)
  an = result["analysis"]
  out = [("attention_distance_per_layer.png", plots.plot_layer_curves(
      os.path.join(fig_dir, "attention_distance_per_layer.png"), an["distance"],
      f"mean attention distance ({an['unit']})", "attention distance per layer")),
         ("cka_to_supervised.png", plots.plot_layer_curves(
             os.path.join(fig_dir, "cka_to_supervised.png"), an["cka_to_supervised"],
             "linear CKA to the supervised model", "layer-wise CKA of each encoder against the "
             "supervised ViT-Tiny (same layer)", "representation (block inputs, then output)"))]
  for name in ("mae", "mocov3", "dmae"):
    src = os.path.join(analysis_dir, f"cka_{name}_vs_supervised.png")
    if os.path.exists(src):
      shutil.copyfile(src, os.path.join(fig_dir, os.path.basename(src)))
      out.append((os.path.basename(src), src))
  return out


def write(result: dict, analysis_dir: str, path: str) -> str:
  fig_dir = os.path.join(os.path.dirname(os.path.abspath(path)), "figures",
                         f"reproduction_{result['scale']}")
  figures = _figures(result, analysis_dir, fig_dir)
  rel = os.path.relpath(fig_dir, os.path.dirname(os.path.abspath(path)))
  ft, fr, pre = result["finetune"], result["frozen"], result["pretrain"]
  lines = [
      f"# Reproduction of the paper's comparisons ({result['scale']} scale)", "",
      "The comparisons of \"A Closer Look at Self-Supervised Lightweight Vision Transformers\" "
      "(MAE-Lite, ICML 2023) at small scale: MAE-Tiny, MoCo-v3-Tiny, D-MAE-Tiny (its teacher an "
      "MAE-Small pre-trained in the same study) and a supervised ViT-Tiny from scratch, all "
      "MAE-Lite's ViT-Tiny (12 heads) on the built-in Fashion-MNIST (28 px, patch 4), data on "
      "the device. Every number below comes from this run.", "",
      f"- Command: `{result['command']}`",
      f"- Machine: {result['machine']}",
      f"- Date: {result['date']}; wall time {result['wall_s'] / 60:.1f} min, the sum of the "
      f"parts below, and {result['cpu_s'] / 60:.1f} CPU-minutes (user + system of all "
      "threads; per part in `results.json` of the workdir); load average at the end "
      f"{result['load_average'][2]:.1f} (15 min)", "",
      "## The paper's findings at this scale", "",
      "| | finding | verdict | numbers | against the noise |", "|---|---|---|---|---|"]
  for row in result["findings"]:
    lines.append(f"| ({row['id']}) | {row['claim']} | **{row['verdict']}** | {row['evidence']} "
                 f"| {row['noise']} |")
  lines += ["", "## Pre-training", "",
            "| arm | model | batch x steps | final loss | wall s | CPU s |",
            "|---|---|---|---|---|---|"]
  for name, p in pre.items():
    loss = "-" if p["loss"] is None else f"{p['loss']:.4f}"
    lines.append(f"| {name} | {p['model']} | {p['batch']} x {p['steps']} | {loss} | "
                 f"{result['times_s'].get('pretrain/' + name, 0):.0f} | "
                 f"{result['cpu_times_s'].get('pretrain/' + name, 0):.0f} |")
  lines += ["", "## Fine-tuning (top-1 %)", "",
            "| init | train split | steps | top-1 | top-5 | eval split | wall s | CPU s |",
            "|---|---|---|---|---|---|---|---|"]
  for name, r in ft.items():
    lines.append(f"| {name} | {r['train_split']} | {r['steps']} | {_pct(r['top1'])} | "
                 f"{_pct(r['top5'])} | {r['eval_split']} | "
                 f"{result['times_s'].get('finetune/' + name, 0):.0f} | "
                 f"{result['cpu_times_s'].get('finetune/' + name, 0):.0f} |")
  lines += ["", "## Frozen features (top-1 %)", "", "| encoder | k-NN | linear probe |",
            "|---|---|---|"]
  for name, r in fr.items():
    lines.append(f"| {name} | {_pct(r['knn'])} | {_pct(r['linear'])} |")
  an = result["analysis"]
  depth = len(next(iter(an["distance"].values())))
  lines += ["", "## Layer-wise analysis", "",
            "Mean attention distance per block (the paper's unit: grid distance x sqrt(N)):", "",
            "| model | " + " | ".join(f"block {i + 1}" for i in range(depth)) + " |",
            "|---|" + "---|" * depth]
  for name, values in an["distance"].items():
    lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
  lines += ["", "Linear CKA of each encoder's representation against the supervised model's "
            "same representation (the inputs of each block after its norm1, then the output):",
            "", "| model | " + " | ".join(f"block {i + 1} in" for i in range(depth)) +
            " | output |", "|---|" + "---|" * (depth + 1)]
  for name, values in an["cka_to_supervised"].items():
    lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
  lines += [""]
  for name, _ in figures:
    lines += [f"![{name}]({rel}/{name})", ""]
  lines += ["## How to read this", "",
            "This is a small-scale run: a few thousand images and minutes of training instead of "
            "ImageNet and days. A verdict says whether the paper's ordering shows up in these "
            "numbers; the last column compares each margin with the sampling error of the test "
            "images behind it, so a verdict with a margin below ~2 standard errors is not "
            "evidence either way. The GPU scale (`--scale gpu`) trains every arm longer."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path
