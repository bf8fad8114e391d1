"""An inert stand-in for `torchvision`, so `import timm` works where torchvision is not installed.

timm imports torchvision at module level (transforms, ops, datasets) but the ViT code path never
calls it, and the package registry has no CPU torchvision build for torch 2.13. Call
`install_torchvision_stub()` before the first `import timm`; a real torchvision, when importable,
is left alone.
"""

import enum
import importlib.util
import sys
import types

_SUBMODULES = ("transforms", "transforms.functional", "transforms.v2", "ops", "ops.misc",
               "datasets", "utils", "io")


class InterpolationMode(enum.Enum):
  NEAREST = "nearest"
  NEAREST_EXACT = "nearest-exact"
  BILINEAR = "bilinear"
  BICUBIC = "bicubic"
  BOX = "box"
  HAMMING = "hamming"
  LANCZOS = "lanczos"


class _StubModule(types.ModuleType):
  """Any public attribute is a placeholder class (subclassable, never useful when called)."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    def unavailable(*args, **kwargs):
      raise RuntimeError(f"{self.__name__}.{name} is a stub: torchvision is not installed")
    placeholder = type(name, (), {"__init__": unavailable, "__module__": self.__name__})
    setattr(self, name, placeholder)
    return placeholder


def install_torchvision_stub() -> bool:
  """Registers the stub in sys.modules unless torchvision is importable; returns True if it did."""
  if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
    return False
  root = _StubModule("torchvision")
  root.__path__ = []  # a package without files: unlisted submodules fail with ImportError
  root.__version__ = "0.0.0+stub"
  sys.modules["torchvision"] = root
  for sub in _SUBMODULES:
    module = _StubModule(f"torchvision.{sub}")
    module.__path__ = []
    sys.modules[module.__name__] = module
    parent, _, leaf = module.__name__.rpartition(".")
    setattr(sys.modules[parent], leaf, module)
  sys.modules["torchvision.transforms.functional"].InterpolationMode = InterpolationMode
  sys.modules["torchvision.transforms"].InterpolationMode = InterpolationMode
  return True
