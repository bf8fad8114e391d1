"""Projection and prediction MLPs for contrastive learning (MoCo-v3's `_build_mlp`).

Each layer is Linear (no bias) -> BatchNorm -> ReLU, the last Linear is followed by a BatchNorm
without scale and bias (or nothing). BatchNorm statistics are taken over every row of the array
it sees; under `jax.jit` on a data mesh that array is the global batch, so this is PyTorch's
SyncBatchNorm with no axis_name and no collectives written by hand. The running averages live
in the `batch_stats` collection (the training task keeps them in the train state's `extra`);
flax averages the biased batch variance into them where PyTorch uses the unbiased one, which
only matters for eval-mode use of the heads (MoCo-v3 never does that).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# PyTorch's nn.Linear default (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)). MoCo-v3
# builds its heads after the ViT's xavier init, so they keep this default.
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
BN_MOMENTUM = 0.9  # flax convention: PyTorch's momentum 0.1
BN_EPS = 1e-5  # PyTorch's default


class MLPHead(nn.Module):
  """num_layers Linear layers; BN + ReLU between them; a last BN without affine if last_bn."""
  num_layers: int
  hidden_dim: int
  out_dim: int
  last_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    bn = lambda name, affine=True: nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, use_bias=affine,
        use_scale=affine, use_fast_variance=False, dtype=self.dtype, name=name)
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.out_dim if last else self.hidden_dim, use_bias=False,
                   kernel_init=torch_linear_init, dtype=self.dtype, name=f"fc{i}")(x)
      if not last:
        x = nn.relu(bn(f"bn{i}")(x))
      elif self.last_bn:
        x = bn(f"bn{i}", affine=False)(x)
    return x


def projection_mlp(hidden_dim: int = 4096, out_dim: int = 256, dtype=jnp.float32) -> MLPHead:
  """MoCo-v3's projector: 3 layers, last BN without affine."""
  return MLPHead(3, hidden_dim, out_dim, last_bn=True, dtype=dtype)


def prediction_mlp(hidden_dim: int = 4096, out_dim: int = 256, last_bn: bool = True,
                   dtype=jnp.float32) -> MLPHead:
  """MoCo-v3's predictor: 2 layers ending in a BN without affine, for ViTs in both MAE-Lite's
  mocov3.py and the original MoCo-v3 (`_build_mlp(2, ...)`, last_bn=True); only the original's
  ResNet predictor drops that BN (last_bn=False)."""
  return MLPHead(2, hidden_dim, out_dim, last_bn=last_bn, dtype=dtype)
