"""The paper's findings as checks on the study's numbers: pure functions, one per finding.

Each returns a row {id, claim, verdict ('holds' | 'does not hold'), evidence (the numbers),
noise (the margin against the evaluation's sampling error)}. Accuracies are fractions; `n_test`
is the number of test images behind each accuracy, whose binomial standard error sets what a
difference can mean at this scale.
"""

import math

import numpy as np


def stderr(acc: float, n: int) -> float:
  """Standard error of the difference of two independent accuracies near `acc` on n images."""
  return math.sqrt(2 * acc * (1 - acc) / max(n, 1))


def _row(fid, claim, holds, evidence, margin, acc, n):
  se = stderr(acc, n)
  noise = (f"margin {100 * margin:+.1f} pt, {abs(margin) / se:.1f} x the {100 * se:.1f} pt "
           f"standard error of a difference on {n} test images")
  return {"id": fid, "claim": claim, "verdict": "holds" if holds else "does not hold",
          "evidence": evidence, "noise": noise}


def pct(x: float) -> str:
  return f"{100 * x:.1f}"


def mae_beats_scratch_and_mocov3(ft: dict, n: int) -> dict:
  """(a) After fine-tuning, MAE pre-training beats training from scratch and beats MoCo-v3."""
  margin = min(ft["mae"] - ft["scratch"], ft["mae"] - ft["mocov3"])
  return _row("a", "MAE pre-training beats scratch after fine-tuning, and beats MoCo-v3 there",
              margin > 0, f"fine-tune top-1: MAE {pct(ft['mae'])}, scratch {pct(ft['scratch'])}, "
              f"MoCo-v3 {pct(ft['mocov3'])}", margin, ft["mae"], n)


def mae_transfers_worse_than_mocov3(poor: dict, n: int) -> dict:
  """(b) MAE transfers worse than MoCo-v3 to a data-poor downstream set."""
  margin = poor["mocov3"] - poor["mae"]
  return _row("b", "MAE transfers worse than MoCo-v3 to a data-poor set (a small labelled "
              "subset)", margin > 0, f"data-poor fine-tune top-1: MAE {pct(poor['mae'])}, "
              f"MoCo-v3 {pct(poor['mocov3'])}, scratch {pct(poor['scratch'])}", margin,
              poor["mae"], n)


def upper_minus_lower(per_layer) -> float:
  """Mean of the upper half of a per-layer curve minus the mean of its lower half."""
  x = np.asarray(per_layer, np.float64)
  half = len(x) // 2
  return float(x[half:].mean() - x[:half].mean())


def dmae_helps_higher_layers(ft: dict, cka_dmae, cka_mae, n: int) -> dict:
  """(c) D-MAE >= MAE, its gain mainly in the higher layers (CKA to the supervised model, per
  layer: the D-MAE - MAE gap is larger in the upper half than in the lower)."""
  gain = np.asarray(cka_dmae, np.float64) - np.asarray(cka_mae, np.float64)
  where = upper_minus_lower(gain)
  margin = ft["dmae"] - ft["mae"]
  holds = margin >= 0 and where > 0
  return _row("c", "D-MAE >= MAE, its gain mainly in the higher layers", holds,
              f"fine-tune top-1: D-MAE {pct(ft['dmae'])}, MAE {pct(ft['mae'])}; CKA to the "
              f"supervised model, D-MAE - MAE: lower half {gain[:len(gain) // 2].mean():+.3f}, "
              f"upper half {gain[len(gain) // 2:].mean():+.3f}", margin, ft["mae"], n)


def lower_layers_carry_maes_benefit(ft: dict, n: int) -> dict:
  """(d) The lower layers carry MAE's benefit: fine-tuning MAE with its top half
  re-initialised keeps at least half of MAE's gain over scratch."""
  gain, kept = ft["mae"] - ft["scratch"], ft["mae_lower_half"] - ft["scratch"]
  holds = gain > 0 and kept >= 0.5 * gain
  numbers = (f"fine-tune top-1: MAE {pct(ft['mae'])}, MAE lower half only "
             f"{pct(ft['mae_lower_half'])}, scratch {pct(ft['scratch'])}")
  kept_text = (f" (gain kept: {100 * kept / gain:.0f} %)" if gain > 0 else
               "; no gain of MAE over scratch to keep")
  return _row("d", "the lower layers carry MAE's benefit (MAE with its top half re-initialised "
              "keeps most of the gain over scratch)", holds, numbers + kept_text,
              kept - 0.5 * gain, ft["mae"], n)
