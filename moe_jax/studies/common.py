"""What every study driver shares: a plan guard for its cache, cached JSON results, its CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Callable

import numpy as np


def check_plan(plan, out: str) -> None:
  """The cache under out/runs belongs to one plan (a dataclass): refuse to mix results of two."""
  path = os.path.join(out, "runs", "plan.json")
  mine = json.loads(json.dumps(dataclasses.asdict(plan)))
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      theirs = json.load(f)
    if theirs != mine:
      raise SystemExit(f"{path}: the cached runs were made with another plan ({theirs}); "
                       f"use another --out or delete {os.path.dirname(path)}")
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(mine, f)


def jsonable(x):
  """json.dump's `default` for numpy arrays and scalars."""
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"not JSON-able: {type(x)}")


def cached(path: str, fn: Callable):
  """fn()'s JSON-able result, computed once: read back from `path` when it exists."""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  value = fn()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, default=jsonable)
  os.replace(tmp, path)
  return json.loads(json.dumps(value, default=jsonable))


def write_report(out: str, results: dict, report: Callable[[dict, str], str]) -> str:
  """Writes results.json and RESULTS.md (report(results, out)) to `out`; returns RESULTS.md's path."""
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, default=jsonable)
  path = os.path.join(out, "RESULTS.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(report(json.loads(json.dumps(results, default=jsonable)), out))
  return path


def recorded(out: str, plan, quick: bool, free: tuple[str, ...] = ()) -> dict:
  """out/results.json's results when its plan is `plan` but for the `free` fields, else {}.

  runs/ is git-ignored, so a fresh clone has only the committed results.json: a plan that
  only adds to it (a setting, an extension) reads the rest back instead of recomputing it.
  The caller checks what the free fields may differ by.
  """
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  mine = json.loads(json.dumps(dataclasses.asdict(plan)))
  theirs = old.get("plan", {})
  drop = lambda d: {k: v for k, v in d.items() if k not in free}
  return old if old.get("quick") == quick and drop(theirs) == drop(mine) else {}


def prior_wall(out: str, plan, quick: bool) -> float:
  """The wall time already spent on `plan` in `out`: a finished results.json's of the same plan,
  when its runs/ cache is there too (a rerun reads the runs back, so their time still counts)."""
  if not os.path.isdir(os.path.join(out, "runs")):
    return 0.0
  return float(recorded(out, plan, quick).get("wall_s", 0.0))


def finish(out: str, results: dict, report: Callable[[dict, str], str], t0: float) -> dict:
  """A study's last step: its wall time into results, then results.json and RESULTS.md."""
  results["wall_s"] = time.time() - t0
  path = write_report(out, results, report)
  print(f"[study] wrote {path} ({results['wall_s']:.0f} s)")
  return results


def written_by(module: str, quick: bool) -> str:
  """RESULTS.md's first line: the command that wrote it, and whether it was the --quick plan."""
  return (f"Written by `python -m {module}`"
          + (" --quick (toy sizes: the pipeline, not the claims)." if quick else "."))


def main(prog: str, doc: str, run_study: Callable[[str, bool], dict],
         report: Callable[[dict, str], str], argv=None) -> int:
  """A study's command line: `--out DIR [--quick] [--report-only]`."""
  parser = argparse.ArgumentParser(prog=prog, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="where runs/, results.json and RESULTS.md go")
  parser.add_argument("--quick", action="store_true", help="a few minutes: the pipeline, not the claims")
  parser.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from results.json")
  args = parser.parse_args(argv)
  if args.report_only:
    with open(os.path.join(args.out, "results.json"), encoding="utf-8") as f:
      text = report(json.load(f), args.out)
    with open(os.path.join(args.out, "RESULTS.md"), "w", encoding="utf-8") as f:
      f.write(text)
    return 0
  run_study(args.out, args.quick)
  return 0
