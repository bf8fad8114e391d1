"""The analysis of trained checkpoints: layer CKA heat maps, attention distance / entropy per
head, attention maps and reconstructions, and analysis.json with every number.

All models see the same images in one pass over the data; memory does not grow with
num_images. What `scripts/analyze.py` runs (see configs/analyze.py).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from maelite_jax import data as data_lib
from maelite_jax.analysis import attention, cka, plots
from maelite_jax.analysis import representations as reps
from maelite_jax.analysis.attention import AttentionAccumulator
from maelite_jax.analysis.cka import MinibatchCKA
from maelite_jax.analysis.reconstruction import save_reconstruction_grid
from maelite_jax.analysis.representations import forward, layer_labels
from maelite_jax.models.meta import CheckpointMeta, encoder_from_meta
from maelite_jax.train import mesh as mesh_lib
from maelite_jax.train import metrics as metrics_lib
from maelite_jax.train.checkpoint import checkpoint_step, load_params
from maelite_jax.utils.errors import ConfigError


def parse_models(spec: str) -> list[tuple[str, str]]:
  """'a=PATH,PATH2' -> [('a', PATH), (<PATH2's run folder name>, PATH2)]; names must be unique."""
  entries = [s.strip() for s in (spec or "").split(",") if s.strip()]
  if not entries:
    raise ConfigError("no models given; pass --config.models=NAME=PATH[,NAME=PATH...] "
                     "(NAME= is optional; PATH is a workdir or checkpoint step folder)")
  out = []
  for entry in entries:
    name, sep, path = entry.partition("=")
    if not sep:
      path = name
      parts = [p for p in os.path.normpath(path).split(os.sep) if p]
      # WORKDIR/checkpoints/<step> -> WORKDIR's name
      while len(parts) > 1 and (parts[-1].isdigit() or parts[-1] == "checkpoints"):
        parts.pop()
      name = parts[-1] if parts else path
    out.append((name.strip(), path.strip()))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise ConfigError(f"model names must be unique, got {names}; label them as NAME=PATH")
  return out


def load_models(config) -> list[dict]:
  """Loads every checkpoint and builds its ViT encoder (MAE: the encoder part)."""
  models = []
  for name, path in parse_models(config.models):
    params, meta = load_params(path)
    meta = CheckpointMeta.from_dict(meta)
    encoder, enc_params = encoder_from_meta(meta, params, config.image_size)
    last = reps.last_norm(meta, enc_params) if config.cka.last_norm == "auto" else (
        config.cka.last_norm)
    models.append(dict(name=name, path=path, meta=meta, params=params, encoder=encoder,
                       enc_params=enc_params, is_mae=reps.is_mae(params), last_norm=last,
                       step=checkpoint_step(path)))
    logging.info("%s: %s from %s (depth %d, %d heads, %dpx, patch %d)", name,
                 meta.model.name, path, encoder.depth, encoder.num_heads,
                 encoder.image_size, encoder.patch_size)
  sizes = {m["encoder"].image_size for m in models}
  if len(sizes) > 1:
    raise ConfigError(f"the checkpoints expect different image sizes {sorted(sizes)}; set "
                     "--config.image_size to compare them on the same images")
  return models


def eval_batches(config, image_size: int, mesh):
  """Yields (images, valid) for the first config.num_images examples of the evaluation split."""
  it = data_lib.build_eval_iterator(config.data, image_size=image_size,
                                    global_batch_size=config.batch_size, mesh=mesh,
                                    split=config.split or None)
  seen = 0
  for batch in it:
    valid = np.asarray(batch["mask"]) > 0
    valid &= np.cumsum(valid) + seen <= config.num_images
    if not valid.any():
      return
    seen += int(valid.sum())
    yield batch["image"], valid
    if seen >= config.num_images:
      return


def vis_query(query: str, grid_size: int):
  if query == "cls":
    return "cls"
  if query == "center":
    return (grid_size // 2) * grid_size + grid_size // 2
  return int(query)


def vis_layers_heads(encoder, config) -> tuple[list[int], list[int]]:
  layers = sorted({i % encoder.depth for i in config.vis.layers}) or [encoder.depth - 1]
  return layers, [h for h in config.vis.heads if 0 <= h < encoder.num_heads] or [0]


def make_batch_fn(encoder, config, mesh, last_norm=None):
  """jit: (params, images) -> dict of per-batch summaries, all small and replicated.

  last_norm: the LayerNorm of the last CKA representation (representations.forward's `last`).

  grams (depth+1, B, B) linear grams of the CKA representations; distance, entropy (depth, B, H);
  maps (len(vis layers), B, len(vis heads), g, g) attention maps for the figures.
  """
  scale = attention.pixels_per_patch(encoder.patch_size, encoder.num_patches,
                                     config.attention.distance_unit)
  dist = attention.grid_distances(encoder.grid_size, scale)
  layers, heads = vis_layers_heads(encoder, config)
  query, g = vis_query(config.vis.query, encoder.grid_size), encoder.grid_size

  def fn(params, images):
    out = forward(encoder, params, images, remove_cls=config.cka.remove_cls, last=last_norm)
    stats = [attention.attention_stats(out["logits"][i], dist) for i in range(encoder.depth)]
    maps = [attention.attention_map(out["logits"][i], query)[:, jnp.asarray(heads)] for i in layers]
    return dict(grams=jnp.stack([cka.linear_gram(r) for r in out["reps"]]),
                distance=jnp.stack([s[0] for s in stats]),
                entropy=jnp.stack([s[1] for s in stats]),
                maps=jnp.stack(maps).reshape(len(layers), images.shape[0], len(heads), g, g))

  return jax.jit(fn, out_shardings=mesh_lib.replicated(mesh)), scale


def label(m) -> str:
  """How figures name a model: 'mae (MAE, step 300)'."""
  return plots.model_label(m["name"], m["meta"].objective, m["step"])


def draw_attention_maps(m, images, maps, config, workdir) -> list[str]:
  """maps: (len(vis layers), n, len(vis heads), g, g) for the n images shown."""
  layers, heads = vis_layers_heads(m["encoder"], config)
  shown = plots.denormalize(images, config.data.mean, config.data.std)
  paths = []
  for i, layer_maps in zip(layers, maps):
    path = os.path.join(workdir, f"attn_maps_{m['name']}_block{i}.png")
    paths.append(plots.plot_attention_maps(
        path, shown, layer_maps, heads, f"{label(m)}: block {i}, query {config.vis.query}"))
  return paths


def draw_reconstructions(m, images, config, workdir) -> str:
  meta = m["meta"]
  mae = meta.model.build(image_size=m["encoder"].image_size)
  norm_pix = ((meta.config or {}).get("model") or {}).get("norm_pix_loss",
                                                          config.vis.norm_pix_loss)
  noise = np.random.default_rng(config.seed).uniform(size=(images.shape[0], mae.num_patches))
  noise = noise.astype(np.float32)
  out = jax.jit(lambda p, x, n: mae.apply({"params": p}, x, n))(m["params"], images, noise)
  path, _ = save_reconstruction_grid(
      os.path.join(workdir, f"recon_{m['name']}.png"), images=images, pred=out["pred"],
      mask=out["mask"], patch_size=mae.patch_size, norm_pix_loss=norm_pix,
      mean=config.data.mean, std=config.data.std, title=f"{label(m)}: reconstructions")
  return path


def run(config, workdir: str) -> dict:
  """The whole analysis; returns what analysis.json holds."""
  os.makedirs(workdir, exist_ok=True)
  models = load_models(config)
  mesh = mesh_lib.make_mesh()
  image_size = models[0]["encoder"].image_size
  fns = []
  for m in models:
    fn, m["pixels_per_patch"] = make_batch_fn(m["encoder"], config, mesh, m["last_norm"])
    fns.append(fn)
    m["enc_params"] = jax.device_put(m["enc_params"], mesh_lib.replicated(mesh))
  pairs = [(i, j) for i in range(len(models)) for j in range(i, len(models))]
  num_reps = [m["encoder"].depth + 1 for m in models]
  ckas = {p: MinibatchCKA(num_reps[p[0]], num_reps[p[1]], config.cka.kernel,
                          config.cka.rbf_threshold) for p in pairs}
  attn = [AttentionAccumulator() for _ in models]
  vis_images, vis_maps, seen = None, [], 0
  for images, valid in eval_batches(config, image_size, mesh):
    grams = []
    for m, fn, acc in zip(models, fns, attn):
      out = jax.device_get(fn(m["enc_params"], images))
      grams.append(out["grams"])
      acc.update(out["distance"], out["entropy"], valid)
      if vis_images is None:
        vis_maps.append(out["maps"][:, valid][:, :config.vis.num_images])
    for (i, j), acc in ckas.items():
      acc.update_grams(grams[i], grams[j], valid)
    if vis_images is None:
      vis_images = np.asarray(jax.device_get(images))[valid][:config.vis.num_images]
    seen += int(valid.sum())
    logging.info("analysed %d / %d images", seen, config.num_images)
  if vis_images is None:
    raise ConfigError("the data gave no images; check config.data and config.split")

  figures = []
  result = {"num_images": seen, "data": {"dataset": config.data.dataset,
                                         "split": config.split or config.data.eval_split},
            "models": {}, "cka": {"kernel": config.cka.kernel, "pairs": []}, "attention": {}}
  for m, acc in zip(models, attn):
    enc = m["encoder"]
    result["models"][m["name"]] = dict(
        path=m["path"], model=m["meta"].model.name, mae=m["is_mae"], depth=enc.depth,
        num_heads=enc.num_heads, image_size=enc.image_size, patch_size=enc.patch_size,
        cka_layers=layer_labels(enc.depth), cka_last_norm=m["last_norm"])
    stats = acc.result()
    result["attention"][m["name"]] = dict(
        unit=config.attention.distance_unit, pixels_per_patch=m["pixels_per_patch"],
        distance=stats["distance"].tolist(), entropy=stats["entropy"].tolist(),
        distance_layer_mean=stats["distance"].mean(1).tolist(),
        entropy_layer_mean=stats["entropy"].mean(1).tolist())
  for (i, j), acc in ckas.items():
    a, b = models[i]["name"], models[j]["name"]
    matrix = acc.result()
    result["cka"]["pairs"].append(dict(a=a, b=b, matrix=matrix.tolist(),
                                       num_batches=acc.num_batches))
    figures.append(plots.plot_cka(
        os.path.join(workdir, f"cka_{a}_vs_{b}.png"), matrix, a, b,
        layer_labels(models[i]["encoder"].depth), layer_labels(models[j]["encoder"].depth),
        f"{config.cka.kernel} CKA ({seen} images): {label(models[i])} vs {label(models[j])}"))
  unit = {"patch": "pixels", "sqrt_tokens": "grid x sqrt(N): the paper's unit",
          "grid": "patches"}[config.attention.distance_unit]
  for key, ylabel in (("distance", f"mean attention distance\n({unit})"),
                      ("entropy", "attention entropy (nats)")):
    values = {label(m): np.asarray(result["attention"][m["name"]][key]) for m in models}
    figures.append(plots.plot_head_stats(
        os.path.join(workdir, f"attention_{key}.png"), values, ylabel,
        f"attention {key} per head ({seen} images)"))
  for m, maps in zip(models, vis_maps if len(vis_images) else []):
    figures += draw_attention_maps(m, vis_images, maps, config, workdir)
    if m["is_mae"]:
      figures.append(draw_reconstructions(m, vis_images, config, workdir))
  result["figures"] = [os.path.basename(f) for f in figures]
  with open(os.path.join(workdir, "analysis.json"), "w") as f:
    json.dump(result, f, indent=1)
  write_events(workdir, models, result, figures)
  return result


def summary_scalars(result: dict) -> dict:
  """A few numbers per model and pair for TensorBoard (analysis.json has them all): mean
  attention distance / entropy over blocks and heads, the CKA of the last representations and,
  for models of equal depth, the mean CKA of same-depth layers."""
  scalars = {}
  for name, att in result["attention"].items():
    scalars[f"attention_distance/{name}"] = float(np.mean(att["distance_layer_mean"]))
    scalars[f"attention_entropy/{name}"] = float(np.mean(att["entropy_layer_mean"]))
  for pair in result["cka"]["pairs"]:
    matrix, key = np.asarray(pair["matrix"]), f"{pair['a']}_vs_{pair['b']}"
    scalars[f"cka_last/{key}"] = float(matrix[-1, -1])
    if matrix.shape[0] == matrix.shape[1]:
      scalars[f"cka_same_depth/{key}"] = float(np.mean(np.diag(matrix)))
  return scalars


def write_events(workdir: str, models: list[dict], result: dict, figures: list[str]) -> None:
  """The summary scalars and every figure (as an image named after its file) to TensorBoard
  events in the workdir, at the newest checkpoint step among the models."""
  writer = metrics_lib.event_writer(workdir)
  if writer is None:
    return
  try:
    images = {os.path.splitext(os.path.basename(f))[0]: plots.figure_array(f) for f in figures}
    metrics_lib.write_events(writer, max(m["step"] for m in models), summary_scalars(result),
                             images)
  finally:
    writer.close()
