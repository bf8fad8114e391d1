"""Which files of a folder dataset can be trained on, decided once, before tf.data sees them.

A file that TensorFlow cannot decode raises inside tf.data and kills the input iterator, and
dropping it there (`ignore_errors`) would shift every later batch, which breaks exact resume
and the batch counts that all hosts must agree on. So each file is opened with PIL when the
split is listed: JPEGs are decoded at 1/8 scale (fast, but it still reads all the data, so a
truncated file fails), other formats fully. Files that fail or that TF cannot read are left
out with one counted warning. Grayscale, palette, RGBA, CMYK and 16-bit files are fine: TF
converts them to RGB when decoding; tiny images are upscaled by the crop/resize ops.

Verdicts are cached per file (path, size, mtime) in a JSON file, so a restart re-checks only
new or changed files (MAELITE_CACHE_DIR, default ~/.cache/maelite_jax).
"""

import concurrent.futures
import hashlib
import json
import os

from absl import logging

# What tf.io.decode_image reads ('MPO' is the multi-picture JPEG some cameras write).
TF_FORMATS = ('JPEG', 'MPO', 'PNG', 'GIF', 'BMP', 'WEBP')
TINY = 16  # images with a side below this are counted (they are upscaled, not skipped)
_VERSION = 1
_WARNED = set()


def check_file(path: str) -> tuple[bool, str, tuple]:
  """(usable, reason if not, (width, height)); never raises."""
  from PIL import Image
  try:
    with Image.open(path) as im:
      size = im.size
      if im.format not in TF_FORMATS:
        return False, f'format {im.format} is not decoded by TensorFlow', size
      if im.format in ('JPEG', 'MPO'):
        im.draft('RGB', (max(1, size[0] // 8), max(1, size[1] // 8)))
      im.load()
  except Exception as e:  # noqa: BLE001 - any failure: the file is not usable
    why = str(e).replace(repr(path), 'it').replace(path, 'it')
    return False, f'{type(e).__name__}: {why[:120]}', (0, 0)
  if min(size) < 1:
    return False, f'empty image {size}', size
  return True, '', size


def _cache_path(folder: str) -> str:
  root = os.environ.get('MAELITE_CACHE_DIR',
                        os.path.join(os.path.expanduser('~'), '.cache', 'maelite_jax'))
  key = hashlib.sha1(os.path.abspath(folder).encode()).hexdigest()[:16]
  return os.path.join(root, 'image_check', f'{key}.json')


def _load_cache(path: str) -> dict:
  try:
    with open(path) as f:
      data = json.load(f)
    return data['files'] if data.get('version') == _VERSION else {}
  except (OSError, ValueError, KeyError):
    return {}


def _save_cache(path: str, files: dict):
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      json.dump({'version': _VERSION, 'files': files}, f)
    os.replace(tmp, path)
  except OSError as e:  # a read-only home only costs the re-check next time
    logging.info('image check cache not written (%s)', e)


def usable_files(folder: str, paths: list, ignored: int = 0, label: str = '') -> tuple:
  """(usable mask in `paths` order, report dict); logs one warning when files are dropped."""
  cache_file = _cache_path(folder)
  cache = _load_cache(cache_file)
  results, todo = {}, []
  for p in paths:
    try:
      st = os.stat(p)
    except OSError as e:
      results[p] = (False, f'{type(e).__name__}: {e}', (0, 0))
      continue
    key = f'{st.st_size}:{st.st_mtime_ns}'
    hit = cache.get(p)
    if hit and hit[0] == key:
      results[p] = (hit[1], hit[2], tuple(hit[3]))
    else:
      todo.append((p, key))
  if todo:
    workers = min(32, 4 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for (p, key), res in zip(todo, pool.map(check_file, [p for p, _ in todo])):
        results[p] = res
        cache[p] = [key, res[0], res[1], list(res[2])]
    _save_cache(cache_file, cache)
  mask = [results[p][0] for p in paths]
  bad = [(p, results[p][1]) for p in paths if not results[p][0]]
  tiny = sum(1 for p in paths if results[p][0] and min(results[p][2]) < TINY)
  report = {'usable': sum(mask), 'skipped': len(bad), 'tiny': tiny, 'ignored': ignored,
            'examples': bad[:5]}
  if (bad or ignored or tiny) and (folder, len(paths), len(bad)) not in _WARNED:
    _WARNED.add((folder, len(paths), len(bad)))  # once per process, not once per pipeline
    shown = '; '.join(f'{os.path.relpath(p, folder)} ({why})' for p, why in bad[:5])
    logging.warning(
        'image folder %s%s: %d of %d image files skipped as unreadable%s; %d non-image files '
        'ignored; %d tiny images (< %d px) will be upscaled. Remove or fix the skipped files to '
        'silence this.', folder, f' ({label})' if label else '', len(bad), len(paths),
        f' (e.g. {shown})' if shown else '', ignored, tiny, TINY)
  return mask, report
