"""What a person sees on the console: progress on long stretches, a warning when a shortened run
is all warm-up, the :cpu recipes' warm-up as a fraction of the run (issue 24, items 6 and 7)."""

import logging

import pytest

from maelite_jax.configs import finetune_tiny, mae_tiny
from maelite_jax.train.schedule import schedule_lengths
from maelite_jax.utils import logs
from tests.helpers import override


def test_progress_speaks_at_most_every_few_seconds_and_not_for_short_loops(monkeypatch, caplog):
  now = [0.0]
  monkeypatch.setattr(logs.time, "perf_counter", lambda: now[0])
  with caplog.at_level(logging.INFO):
    short = logs.Progress("features of test", total=100)
    for _ in range(10):  # 10 batches in 9 s: silent
      now[0] += 0.9
      short.update(10)
    assert caplog.records == []
    now[0] = 1000.0
    long = logs.Progress("features of train", total=60_000)
    for _ in range(60):  # 60 batches of 1000 in 60 s: one line per 10 s
      now[0] += 1.0
      long.update(1000)
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 6, lines
  assert lines[0] == "features of train: 10,000 / 60,000 images, 1,000 img/s, ETA 50 s"


@pytest.mark.parametrize("module,variant,default,short", [
    (mae_tiny, "cpu", (1000, 60), (50, 3)),                     # 6 % (24 of 400 epochs)
    (finetune_tiny, "cpu", (1500, 100), (30, 2)),               # 1/15
    (finetune_tiny, "linprobe_cpu", (1000, 50), (20, 1)),       # 1/20
])
def test_cpu_variants_give_the_warm_up_as_a_fraction_of_the_run(module, variant, default, short):
  """--config.total_steps=N on a :cpu recipe keeps its warm-up's share of the run, so a short
  run still decays its lr (with a warm-up in steps, 20-30 steps were all warm-up)."""
  config = module.get_config(variant)
  assert config.optim.warmup_steps < 0  # given in epochs: a fraction of total_epochs
  assert schedule_lengths(config) == default
  assert schedule_lengths(override(config, total_steps=short[0])) == short


@pytest.mark.parametrize("variant,steps,warns", [("tiny", 6, True), ("cpu", 30, False)])
def test_one_line_warns_when_the_warm_up_covers_more_than_half_the_run(tmp_path, caplog,
                                                                       variant, steps, warns):
  from maelite_jax.run import build_trainer
  config = override(mae_tiny.get_config(variant), total_steps=steps, **{"model.depth": 1})
  with caplog.at_level(logging.WARNING):
    trainer = build_trainer(config, str(tmp_path))
  lines = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
  assert len(lines) == int(warns), lines
  if warns:
    assert lines[0].startswith(f"the warm-up ({trainer.warmup_steps} steps) covers more than "
                               f"half of this {steps}-step run")
    assert "\n" not in lines[0]


def test_a_run_without_warm_up_logs_nothing_and_keeps_optax_cosine(caplog):
  """warmup_steps=0 (linear probes, short fine-tunes): optax's warm-up piece would be a 0-step
  linear schedule and log 'non-positive transition_steps' at every start; the plain cosine we
  build instead has optax's values."""
  import numpy as np
  import optax
  from maelite_jax.train import optim
  cfg = override(finetune_tiny.get_config("tiny"), **{"optim.warmup_steps": 0,
                                                      "optim.min_lr": 1e-6}).optim
  with caplog.at_level(logging.DEBUG):
    ours = optim.lr_schedule(cfg, 256, 50, 0)
  assert [r.getMessage() for r in caplog.records] == []
  theirs = optax.warmup_cosine_decay_schedule(cfg.warmup_init_lr, optim.scaled_lr(cfg, 256), 0,
                                              50, cfg.min_lr)
  steps = np.arange(0, 60, 7)
  np.testing.assert_allclose([float(ours(s)) for s in steps], [float(theirs(s)) for s in steps],
                             rtol=1e-6)
