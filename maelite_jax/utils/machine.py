"""What a measurement ran on, for the records of benchmarks and studies."""

import os
import platform


def cpu_model() -> str:
  """The CPU's model name (Linux's /proc/cpuinfo; the platform's name elsewhere)."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    model = names[0] if names else model
  except OSError:
    pass
  return model


def machine_info() -> str:
  """'<CPU model>, <n> cores'."""
  return f"{cpu_model()}, {os.cpu_count()} cores"
