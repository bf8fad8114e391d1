"""The Fashion-MNIST copy shipped inside the package, read with numpy alone (no TensorFlow).

The IDX files live in `maelite_jax/data/fashion_mnist/` (see the NOTICE there). The tfds builder
(`fashion_mnist_builtin.py`) and the on-device pipeline (`on_device.py`, which must not import
TensorFlow) both read them from here.
"""

import gzip
import pathlib

import numpy as np

DATA_DIR = pathlib.Path(__file__).resolve().parent / 'fashion_mnist'

CLASS_NAMES = (
    't_shirt_top', 'trouser', 'pullover', 'dress', 'coat',
    'sandal', 'shirt', 'sneaker', 'bag', 'ankle_boot',
)

# split -> (images file, labels file, number of examples); the sizes let configs be checked
# before the dataset is prepared.
SPLITS = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 60_000),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', 10_000),
}

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path) -> np.ndarray:
  """Parses a gzipped IDX file (big-endian header: 0, 0, dtype code, ndim, then dims)."""
  with gzip.open(path, 'rb') as f:
    data = f.read()
  zero, code, ndim = int.from_bytes(data[:2], 'big'), data[2], data[3]
  if zero != 0 or code not in _IDX_DTYPES:
    raise ValueError(f'{path} is not an unsigned-byte IDX file (header {data[:4]!r}).')
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  offset = 4 + 4 * ndim
  array = np.frombuffer(data, dtype=_IDX_DTYPES[code], offset=offset)
  return array.reshape(dims)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 28, 28), labels uint8 (N,)) of 'train' or 'test', checked."""
  images_file, labels_file, count = SPLITS[split]
  images = read_idx(DATA_DIR / images_file)
  labels = read_idx(DATA_DIR / labels_file)
  if images.shape != (count, 28, 28) or labels.shape != (count,):
    raise ValueError(f'Bundled Fashion-MNIST {split} files have shapes {images.shape} and '
                     f'{labels.shape}; expected ({count}, 28, 28) and ({count},).')
  return images, labels
