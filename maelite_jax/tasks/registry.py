"""Objectives by name: `config.objective` -> the class registered under it.

A plug-in module `maelite_jax/tasks/<name>.py` registers its class with `@register("<name>")`;
`build(config)` imports the module named by `config.objective` and constructs the class from the
config. Adding an objective is one new module here (plus its pure loss in objectives/ and a
config): nothing else lists the objectives.
"""

from maelite_jax.utils.registry import Registry

OBJECTIVES = Registry("maelite_jax.tasks", "config.objective", skip=("base", "registry"))
register, available, get = OBJECTIVES.register, OBJECTIVES.available, OBJECTIVES.get


def build(config):
  """The objective named by config.objective, built from the config."""
  return get(config.objective)(config)
