"""Reading JSONL files line by line, with errors that name the file and line."""

from __future__ import annotations

import json
import os
from typing import Iterator


def records(path: str | os.PathLike, error: type[Exception] = ValueError) -> Iterator[tuple[str, object]]:
  """Yields ("path:line", parsed JSON) for each non-blank line; raises `error` naming the line."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise error(f"{path}: no such file")
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        record = json.loads(line.rstrip("\r\n"))
      except json.JSONDecodeError as e:
        raise error(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
      yield where, record
