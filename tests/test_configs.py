"""Config mechanics every entry point relies on: defaults that follow a shared key until they
are overridden themselves, and only then."""

from maelite_jax.configs import linprobe_tiny, mae_tiny


def test_one_evaluators_every_leaves_the_others_and_eval_every():
  """`--config.evals.linear.every=-1` switches off the linear probe only (a shared
  FieldReference would have switched off every evaluator and set eval_every)."""
  config = mae_tiny.get_config("cpu")
  config.update_from_flattened_dict({"evals.linear.every": -1})
  assert (config.eval_every, config.evals.knn.every, config.evals.reconstruction.every,
          config.evals.linear.every) == (500, 500, 500, -1)
  config.eval_every = 200  # the others still follow eval_every
  assert (config.evals.knn.every, config.evals.linear.every) == (200, -1)


def test_one_evaluators_split_leaves_the_data_and_the_other_evaluators():
  config = linprobe_tiny.get_config("cpu")
  config.update_from_flattened_dict({"evals.knn.bank_split": "train[:5]"})
  assert (config.data.train_split, config.evals.linear.train_split,
          config.evals.fewshot.train_split, config.evals.knn.bank_split) == (
              "train", "train", "train", "train[:5]")
  config.data.train_split = "train[:7]"
  assert (config.evals.linear.train_split, config.evals.knn.bank_split) == ("train[:7]",
                                                                            "train[:5]")
