"""MkDocs hook: the "Reproductions" nav section lists every docs/<study>/RESULTS.md (one level deeper too).

Each reproduction study (`python -m moe_jax.studies.esft`, `python -m
moe_jax.studies.prm`) commits its report as docs/<study>/RESULTS.md with its
figures beside it. Listing them by glob means a new or not-yet-committed study
neither breaks the strict build nor needs a mkdocs.yml edit.
"""

from __future__ import annotations

import glob
import os

SECTION = "Reproductions"


def _title(path: str, fallback: str) -> str:
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.startswith("# "):
        return line[2:].strip()
  return fallback


def on_config(config):
  docs = config["docs_dir"]
  pages = []
  # docs/<study>/RESULTS.md, or docs/<area>/<study>/RESULTS.md (docs/finance/events/)
  found = glob.glob(os.path.join(docs, "*", "RESULTS.md")) + glob.glob(
      os.path.join(docs, "*", "*", "RESULTS.md"))
  for path in sorted(found):
    rel = os.path.relpath(path, docs).replace(os.sep, "/")
    pages.append({_title(path, rel.rsplit("/", 1)[0]): rel})
  nav = config["nav"] or []
  for i, item in enumerate(nav):
    if isinstance(item, dict) and SECTION in item:
      if pages:
        item[SECTION] = pages
      else:
        del nav[i]
      break
  return config
