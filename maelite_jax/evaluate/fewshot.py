"""Few-shot linear evaluation by closed-form ridge regression (big_vision's fewshot protocol).

For each seed, `shots` training examples per class are drawn; their features are whitened with
the subset's mean/std, a large constant feature stands in for an (almost unregularised) bias,
targets are one-hot rescaled to {-1, 1}, and W = (X^T X + l2 I)^-1 X^T Y is solved exactly.
Accuracy is argmax(X_test W) on the full test split; results are averaged over seeds.
"""

import numpy as np

from maelite_jax.evaluate.base import register
from maelite_jax.evaluate.frozen import FrozenFeatureEvaluator

BIAS_CONSTANT = 100.0
DEFAULT_L2 = 2.0**10  # big_vision's default regulariser


def _whiten(x, mean, std):
  z = (x - mean) / std
  return np.concatenate([z, np.full((len(z), 1), BIAS_CONSTANT)], axis=1)


def ridge_fit(x, y, num_classes: int, l2_reg: float = DEFAULT_L2):
  """(W, mean, std) of ridge regression from features x (N, D) to {-1, 1} one-hot targets."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=0, keepdims=True)
  std = x.std(axis=0, keepdims=True) + 1e-5
  z = _whiten(x, mean, std)
  t = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
  n, d = z.shape
  if n >= d:  # (Z^T Z + l2 I)^-1 Z^T T
    w = np.linalg.solve(z.T @ z + l2_reg * np.eye(d), z.T @ t)
  else:  # the same solution via the (N, N) system: Z^T (Z Z^T + l2 I)^-1 T
    w = z.T @ np.linalg.solve(z @ z.T + l2_reg * np.eye(n), t)
  return w, mean, std


def ridge_predict(fit, x):
  w, mean, std = fit
  return np.argmax(_whiten(np.asarray(x, np.float64), mean, std) @ w, axis=1)


def sample_shots(labels, shots: int, num_classes: int, seed: int) -> np.ndarray:
  """Indices of `shots` examples per class (fewer if a class has fewer), by a seeded shuffle."""
  rng = np.random.default_rng(seed)
  labels = np.asarray(labels)
  picks = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in range(num_classes)]
  return np.concatenate(picks)


def fewshot_accuracy(train_x, train_y, test_x, test_y, *, shots=(1, 5, 10, 25), seeds=3,
                     l2_reg: float = DEFAULT_L2, num_classes: int | None = None) -> dict:
  """{shots: {'mean', 'std', 'per_seed'}} of ridge few-shot top-1 on the test features."""
  test_y = np.asarray(test_y)
  num_classes = num_classes or int(max(np.max(train_y), np.max(test_y))) + 1
  out = {}
  for s in shots:
    accs = []
    for seed in range(seeds):
      idx = sample_shots(train_y, s, num_classes, seed)
      fit = ridge_fit(train_x[idx], np.asarray(train_y)[idx], num_classes, l2_reg)
      accs.append(float(np.mean(ridge_predict(fit, test_x) == test_y)))
    out[s] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_seed": accs}
  return out


@register("fewshot")
class FewshotEvaluator(FrozenFeatureEvaluator):
  """Ridge few-shot top-1 for each of cfg.shots (mean over cfg.seeds draws)."""
  protocol = "fewshot"

  def score(self, train_x, train_y, test_x, test_y):
    out = fewshot_accuracy(train_x, train_y, test_x, test_y, shots=tuple(self.cfg.shots),
                           seeds=self.cfg.seeds, l2_reg=self.cfg.l2_reg)
    return {f"fewshot_{s}shot": r["mean"] for s, r in out.items()}

  @property
  def reported(self):
    return {f"fewshot_{s}shot": f"top1@{s}shot" for s in self.cfg.shots}
