"""Where an image's CPU time goes: each op of ours (TensorFlow) and of the PyTorch loader (PIL),
timed alone on the pipeline benchmark's JPEGs (200 files, the same RandomResizedCrop windows for
both, drawn by torchvision's sampler), one thread, CPU ms per image, the best of REPS passes.

  PYTHONPATH=. python docs/bench/pipeline_2026-11-30_antialias/op_cost.py [REPS] > op_cost.json
"""
import os, sys, time, tempfile, json, glob
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.threading.set_intra_op_parallelism_threads(1)
from PIL import Image
from maelite_jax.bench import pipeline as bench
from maelite_jax.bench.torch_loader import random_resized_crop_params
import torch
torch.manual_seed(0)
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
root = tempfile.mkdtemp()
facts = bench.make_jpeg_folder(root, 200)
paths = sorted(glob.glob(f"{root}/train/*/*.jpg"))
datas = [open(p, "rb").read() for p in paths]
wins = []
for p in paths:
  with Image.open(p) as im:
    wins.append(random_resized_crop_params(im.size[0], im.size[1], (0.08, 1), (3/4, 4/3)))

def timed(fn):
  best = None
  for _ in range(REPS):
    t = time.process_time()
    for i in range(len(paths)):
      fn(i)
    c = (time.process_time() - t) / len(paths) * 1e3
    best = c if best is None else min(best, c)
  return best

@tf.function
def tf_full(d):
  return tf.image.decode_jpeg(d, channels=3)
@tf.function
def tf_full_fast(d):
  return tf.image.decode_jpeg(d, channels=3, dct_method="INTEGER_FAST")
@tf.function
def tf_crop(d, w):
  return tf.image.decode_and_crop_jpeg(d, w, channels=3)
@tf.function
def tf_crop_fast(d, w):
  return tf.image.decode_and_crop_jpeg(d, w, channels=3, dct_method="INTEGER_FAST")
def mk_resize(method, aa):
  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])  # traced once
  def f(x):
    return tf.cast(tf.clip_by_value(tf.image.resize(tf.cast(x, tf.float32) / 255.0, [224, 224], method=method, antialias=aa), 0, 1) * 255 + 0.5, tf.uint8)
  return f
crops = [tf_crop(tf.constant(d), tf.constant(w, tf.int32)) for d, w in zip(datas, wins)]
tdatas = [tf.constant(d) for d in datas]
twins = [tf.constant(w, tf.int32) for w in wins]
res = {}
res["tf_decode_full"] = timed(lambda i: tf_full(tdatas[i]).numpy())
res["tf_decode_full_ifast"] = timed(lambda i: tf_full_fast(tdatas[i]).numpy())
res["tf_decode_crop"] = timed(lambda i: tf_crop(tdatas[i], twins[i]).numpy())
res["tf_decode_crop_ifast"] = timed(lambda i: tf_crop_fast(tdatas[i], twins[i]).numpy())
for m in ("bilinear", "bicubic"):
  for aa in (True, False):
    f = mk_resize(m, aa)
    res[f"tf_resize_{m}_aa{int(aa)}"] = timed(lambda i: f(crops[i]).numpy())
res["tf_noop"] = timed(lambda i: tf.identity(crops[i]).numpy())  # eager call overhead
def pil_dec(i):
  with open(paths[i], "rb") as f:
    im = Image.open(f); im = im.convert("RGB")
  return im
res["pil_decode_full"] = timed(pil_dec)
ims = [pil_dec(i) for i in range(len(paths))]
for m, M in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
  def r(i, M=M):
    t, l, h, w = wins[i]
    return np.asarray(ims[i].crop((l, t, l + w, t + h)).resize((224, 224), M))
  res[f"pil_crop_resize_{m}"] = timed(r)
crops224 = [im.resize((224, 224)) for im in ims]
def pil_tail(i):  # torchvision's ToTensor + Normalize of the 224 px crop
  x = torch.from_numpy(np.array(crops224[i], np.uint8, copy=True)).view(224, 224, 3)
  x = x.permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)
  return x.sub_(torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)).div_(
      torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1))
res["torch_totensor_normalize"] = timed(pil_tail)
res["pil_flip"] = timed(lambda i: crops224[i].transpose(Image.FLIP_LEFT_RIGHT))
shrink = np.mean([(w[2] > 224) or (w[3] > 224) for w in wins])
print(json.dumps(dict(res=res, shrink_fraction=float(shrink), facts=facts, load=os.getloadavg()), indent=1))
