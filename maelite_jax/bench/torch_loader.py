"""The PyTorch input pipeline the benchmark compares with: torchvision's ImageFolder training
recipe (PIL decode, RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize) in a
`torch.utils.data.DataLoader`, written by hand because torchvision is not installed here.

Each transform follows torchvision's code path for PIL images (v0.2x): `pil_loader` opens the
file and converts it to RGB (a full decode), `RandomResizedCrop.get_params` draws the window
with torch's generator (10 attempts, then a centre crop with the ratio clamped), `resized_crop`
crops then resizes with PIL (antialiased, like every PIL resize), the flip draws `torch.rand(1)`
and ToTensor/Normalize work on float32 CHW tensors. Needs torch and PIL only.
"""

import math
import os

import numpy as np
import torch
from PIL import Image

PIL_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def random_resized_crop_params(width: int, height: int, scale, ratio, generator=None):
  """torchvision's RandomResizedCrop.get_params -> (top, left, h, w)."""
  area = height * width
  log_ratio = torch.log(torch.tensor(ratio))
  for _ in range(10):
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
    aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1],
                                                     generator=generator)).item()
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
      j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
      return i, j, h, w
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


class TrainTransform:
  """RandomResizedCrop(size, scale, ratio, interpolation) + RandomHorizontalFlip(flip) +
  ToTensor + Normalize(mean, std), as torchvision.transforms.Compose runs them."""

  def __init__(self, size, scale, ratio, interpolation, flip, mean, std):
    if interpolation == "random":  # timm's 'random': bilinear or bicubic per image
      self.interpolations = (Image.BILINEAR, Image.BICUBIC)
    else:
      self.interpolations = (PIL_INTERPOLATION[interpolation],)
    self.size, self.scale, self.ratio, self.flip = size, tuple(scale), tuple(ratio), flip
    self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

  def __call__(self, img):
    top, left, h, w = random_resized_crop_params(img.size[0], img.size[1], self.scale, self.ratio)
    interpolation = self.interpolations[0]
    if len(self.interpolations) > 1:
      interpolation = self.interpolations[int(torch.randint(0, 2, (1,)).item())]
    img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), interpolation)
    if torch.rand(1) < self.flip:
      img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.array(img, np.uint8, copy=True))
    x = x.view(img.size[1], img.size[0], 3).permute((2, 0, 1)).contiguous()
    x = x.to(dtype=torch.float32).div(255)
    return x.sub_(self.mean).div_(self.std)


class ImageFolder(torch.utils.data.Dataset):
  """torchvision's ImageFolder: root/<class>/<files>, classes sorted, files sorted."""

  def __init__(self, root, transform):
    self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    self.samples = []
    for label, name in enumerate(self.classes):
      for folder, _, files in sorted(os.walk(os.path.join(root, name))):
        self.samples += [(os.path.join(folder, f), label) for f in sorted(files)]
    self.transform = transform

  def __len__(self):
    return len(self.samples)

  def __getitem__(self, index):
    path, label = self.samples[index]
    with open(path, "rb") as f:  # torchvision's pil_loader
      img = Image.open(f)
      img = img.convert("RGB")
    return self.transform(img), label


def _worker_init(_):
  torch.set_num_threads(1)  # what DataLoader workers get by default too


def make_loader(root, *, batch: int, image_size: int, workers: int, interpolation: str,
                scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=0.5,
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed: int = 0):
  """An endless iterator of (images f32 (B, 3, H, W) normalised, labels) from `workers`
  processes (persistent, 2 batches prefetched each: DataLoader's defaults)."""
  dataset = ImageFolder(root, TrainTransform(image_size, scale, ratio, interpolation, flip,
                                             mean, std))
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
      persistent_workers=workers > 0, worker_init_fn=_worker_init,
      generator=torch.Generator().manual_seed(seed))

  def endless():
    while True:
      yield from loader

  return endless()
