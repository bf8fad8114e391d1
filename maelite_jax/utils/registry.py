"""Plug-ins by name: one module per plug-in in a package, found from the name a config uses.

`Registry("maelite_jax.tasks", "config.objective", skip=...)`: `register(name)` decorates a class;
`get(name)` imports `<package>.<name>` on first use (so nothing has to list the plug-ins) and
returns the class registered under `name`; a misspelt name is a ConfigError listing the choices.
Objectives (tasks/) and evaluators (evaluate/) are found this way.
"""

import importlib
import pkgutil

from maelite_jax.utils.errors import ConfigError


class Registry:

  def __init__(self, package: str, key: str, skip=(), attribute: str = "name"):
    """attribute: the class attribute that receives the registered name."""
    self.package, self.key, self.skip = package, key, frozenset(skip)
    self.attribute = attribute
    self._classes: dict[str, type] = {}

  def register(self, name: str):
    def wrap(cls):
      setattr(cls, self.attribute, name)
      self._classes[name] = cls
      return cls
    return wrap

  def available(self) -> list[str]:
    """The plug-in modules of the package (each registers the name it is called)."""
    path = importlib.import_module(self.package).__path__
    return sorted(m.name for m in pkgutil.iter_modules(path) if m.name not in self.skip)

  def get(self, name: str) -> type:
    if name not in self._classes and name in self.available():
      importlib.import_module(f"{self.package}.{name}")
    if name not in self._classes:
      raise ConfigError(f"{self.key}: {name!r} is unknown. Use one of: "
                        f"{', '.join(self.available())}.")
    return self._classes[name]
