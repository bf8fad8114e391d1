"""PNG figures for the analysis: CKA heat maps, per-head attention statistics, attention maps,
segmentation predictions.

Figures are saved at DPI 100 without tight bounding boxes, so a figure's pixel size is exactly
its `figsize * DPI` (the `*_size` helpers below; tests and docs rely on that). Each PNG carries
its title in the file's metadata ('Title', PIL: `Image.open(p).text['Title']`) too.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100


def cka_size() -> tuple[int, int]:
  return 550, 500


def head_stats_size(num_models: int) -> tuple[int, int]:
  return 70 + 350 * num_models, 350


def attention_maps_size(num_images: int, num_heads: int) -> tuple[int, int]:
  return 150 * (num_heads + 1), 150 * num_images + 50


def _figure(size_px):
  return plt.figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)


# How figures name where a model comes from (checkpoint meta's objective).
OBJECTIVE_TITLES = {"mae": "MAE", "dmae": "D-MAE", "mocov3": "MoCo-v3",
                    "classification": "fine-tuned", "segmentation": "segmentation",
                    "": "imported"}


def objective_title(objective: str | None) -> str:
  return OBJECTIVE_TITLES.get(objective or "", objective)


def model_label(name: str, objective: str | None, step: int | None) -> str:
  """'mae (MAE, step 300)': a model as figures name it."""
  step_text = "" if step is None else f", step {step}"
  return f"{name} ({objective_title(objective)}{step_text})"


def _save(fig, path, title: str = "") -> str:
  title = title or (fig._suptitle.get_text() if fig._suptitle is not None else "")
  fig.savefig(path, dpi=DPI, metadata={"Title": title} if title else None)
  plt.close(fig)
  return path


def plot_cka(path, matrix, name_a: str, name_b: str, labels_a=None, labels_b=None,
             title: str = "") -> str:
  """Layer x layer heat map: rows = layers of model A (y axis, bottom = first), columns = B's."""
  matrix = np.asarray(matrix, np.float64)
  fig = _figure(cka_size())
  ax = fig.add_axes((0.14, 0.12, 0.66, 0.76))
  im = ax.imshow(matrix, origin="lower", cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
  labels_a = labels_a or [str(i) for i in range(matrix.shape[0])]
  labels_b = labels_b or [str(i) for i in range(matrix.shape[1])]
  ax.set_yticks(range(len(labels_a)), labels_a, fontsize=7)
  ax.set_xticks(range(len(labels_b)), labels_b, fontsize=7, rotation=90)
  if max(matrix.shape) <= 16:  # values readable in the cells
    for (i, j), v in np.ndenumerate(matrix):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5,
              color="black" if v > 0.6 else "white")
  ax.set_ylabel(f"{name_a} layer")
  ax.set_xlabel(f"{name_b} layer")
  title = title or f"linear CKA: {name_a} vs {name_b}"
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, cax=fig.add_axes((0.83, 0.12, 0.03, 0.76)))
  return _save(fig, path, title)


def plot_head_stats(path, values: dict, ylabel: str, title: str = "", labels=None) -> str:
  """One panel per model: x = layer, one point per head, a line through the head mean.

  values: {model name: (L, H) array}; panels share the y axis so models compare at a glance.
  """
  size = head_stats_size(len(values))
  fig = _figure(size)
  axes = fig.subplots(1, len(values), sharey=True, squeeze=False)[0]
  rng = np.random.default_rng(0)
  for ax, (name, v) in zip(axes, values.items()):
    v = np.asarray(v, np.float64)
    layers = np.arange(v.shape[0])
    jitter = rng.uniform(-0.15, 0.15, size=v.shape)
    ax.scatter((layers[:, None] + jitter).ravel(), v.ravel(), s=8, alpha=0.6, label="head")
    ax.plot(layers, v.mean(axis=1), color="k", lw=1, label="mean")
    ax.set_xticks(layers, labels or [str(i) for i in layers], fontsize=7)
    ax.set_xlabel("block")
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(ylabel)
  axes[0].legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(left=95 / size[0], right=0.98, bottom=0.15, top=0.85)
  return _save(fig, path)


def denormalize(images, mean, std) -> np.ndarray:
  """Normalised NHWC images back to [0, 1] for display."""
  images = np.asarray(images, np.float32) * np.asarray(std, np.float32)
  return np.clip(images + np.asarray(mean, np.float32), 0.0, 1.0)


def plot_attention_maps(path, images, maps, heads, title: str = "") -> str:
  """Rows = images, columns = the image then one attention map per head, overlaid on it.

  images: (n, H, W, 3) in [0, 1]; maps: (n, len(heads), g, g) attention over the patch grid,
  each shown normalised to its own maximum (upsampled by pixel repetition, no smoothing).
  """
  images, maps = np.asarray(images), np.asarray(maps, np.float64)
  n, h = maps.shape[0], maps.shape[1]
  size = attention_maps_size(n, h)
  fig = _figure(size)
  axes = fig.subplots(n, h + 1, squeeze=False)
  factor = images.shape[1] // maps.shape[2]
  for i in range(n):
    axes[i, 0].imshow(images[i], interpolation="nearest")
    for j in range(h):
      m = maps[i, j] / max(maps[i, j].max(), 1e-12)
      m = np.kron(m, np.ones((factor, factor)))
      ax = axes[i, j + 1]
      ax.imshow(images[i].mean(-1), cmap="gray", interpolation="nearest")
      ax.imshow(m, cmap="inferno", alpha=0.6, vmin=0, vmax=1, interpolation="nearest")
      if i == 0:
        ax.set_title(f"head {heads[j]}", fontsize=8)
    if i == 0:
      axes[i, 0].set_title("image", fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 45 / size[1],
                      wspace=0.05, hspace=0.05)
  return _save(fig, path)


IGNORE = 255  # the ignore label of segmentation maps (evaluate/segmentation.py)


def palette() -> np.ndarray:
  """(256, 3) uint8 class colours: PASCAL VOC's bit-interleaved palette, ignore (255) white."""
  colours = np.zeros((256, 3), np.uint8)
  for c in range(256):
    v, r, g, b = c, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (v & 1) << shift
      g |= ((v >> 1) & 1) << shift
      b |= ((v >> 2) & 1) << shift
      v >>= 3
    colours[c] = (r, g, b)
  colours[255] = 255
  return colours


def segmentation_size(num_images: int) -> tuple[int, int]:
  return 760, 200 * num_images + 90


def legend_entries(labels, preds, class_names) -> list[tuple[tuple, str]]:
  """(colour, name) of each class in the ground truth or the prediction, then 'ignored' (white)
  when the ground truth has ignored pixels."""
  colours = palette()
  present = sorted((set(np.unique(labels).tolist()) | set(np.unique(preds).tolist()))
                   - {IGNORE})
  out = [(tuple(int(v) for v in colours[c]), class_names[c] if c < len(class_names) else str(c))
         for c in present]
  if np.any(np.asarray(labels) == IGNORE):
    out.append(((255, 255, 255), "ignored"))
  return out


def plot_segmentation(path, images, labels, preds, class_names, title: str = "") -> str:
  """One row per image: image | ground truth | prediction, with a legend of the classes that
  appear (ignore pixels white)."""
  n = len(images)
  colours = palette()
  fig = _figure(segmentation_size(n))
  grid = fig.add_gridspec(n, 4, width_ratios=(1, 1, 1, 0.9), left=0.02, right=0.98,
                          top=1 - 55 / segmentation_size(n)[1], bottom=0.02, wspace=0.05,
                          hspace=0.08)
  for i in range(n):
    for j, (panel, name) in enumerate(((images[i], "image"), (colours[labels[i]], "ground truth"),
                                       (colours[preds[i]], "prediction"))):
      ax = fig.add_subplot(grid[i, j])
      ax.imshow(panel, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(name, fontsize=9)
  entries = legend_entries(labels, preds, class_names)
  handles = [plt.Rectangle((0, 0), 1, 1, facecolor=np.asarray(c) / 255, edgecolor="0.5", lw=0.5)
             for c, _ in entries]
  names = [name for _, name in entries]
  legend_ax = fig.add_subplot(grid[:, 3])
  legend_ax.axis("off")
  legend_ax.legend(handles, names, loc="upper left", fontsize=8, frameon=False,
                   title="classes", title_fontsize=9)
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def figure_array(path: str) -> np.ndarray:
  """A saved PNG as uint8 (H, W, 3), for TensorBoard's image summaries."""
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def plot_layer_curves(path, curves: dict, ylabel: str, title: str = "",
                      xlabel: str = "layer (block)") -> str:
  """One line per model over its layers (e.g. mean attention distance, CKA to a reference)."""
  fig = _figure((640, 400))
  ax = fig.add_axes((0.11, 0.13, 0.62, 0.77))
  for name, values in curves.items():
    ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
  ax.set_title(title, fontsize=9)
  return _save(fig, path)
