"""Plain-text docstrings as Markdown, without editing them (a griffe extension).

The code's docstrings are written for `help()`: lists start right after a line
ending in ":", worked examples and formulas are indented two spaces, and command
examples are indented four. Markdown would run those into the paragraph above.
`to_markdown` adds the blank line a list needs and fences indented examples as
code, leaving Google-style sections (Args:, Returns:, ...) and existing fences
alone. mkdocstrings loads `PlainDocstrings` through the python handler's
`extensions` option; the configs reference hook calls `to_markdown` directly.
"""

from __future__ import annotations

import re

import griffe

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters|"
    r"Returns?|Yields?|Receives|Raises|Warns|Warnings?|Examples?|Notes?|Attributes|Methods|"
    r"Functions|Classes|Modules|Todo|References|See Also|Deprecated):\s*$")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[*+-]|\d+[.)])\s+\S")


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _code_lines(block: list[str], indent: int) -> list[str]:
  """A fenced copy of an indented example, dedented.

  In a plain (not raw) docstring a backslash-newline joins two lines of a shell
  command, leaving the next line's indentation as a run of spaces before its
  `--flag`; those are split back into continued lines.
  """
  while block and not block[-1].strip():
    block = block[:-1]
  first = block[0].strip()
  if re.match(r"(python3?|pip|bash|\$) ", first):
    lang = "bash"
  elif re.match(r"(import |from \S+ import |>>> |[\w.]+(, *[\w.]+)* = |[\w.]+\()", first):
    lang = "python"
  else:
    lang = "text"
  out = ["```" + lang]
  for line in block:
    parts = re.split(r"\s{2,}(?=--)", line[indent:].rstrip())
    out += [("    " if i else "") + p + (" \\" if i < len(parts) - 1 else "")
            for i, p in enumerate(parts)]
  return out + ["```"]


def to_markdown(text: str) -> str:
  """The docstring `text` (already dedented) with its lists and examples made Markdown."""
  lines = text.splitlines()
  out: list[str] = []
  fence = section = in_list = False
  content = 0
  i = 0
  while i < len(lines):
    line = lines[i]
    stripped, indent = line.strip(), _indent(line)
    if stripped.startswith("```"):
      fence = not fence
    if fence or stripped.startswith("```"):
      out.append(line)
      i += 1
      continue
    if section and (not stripped or indent > 0):  # a Google-style section's body
      out.append(line)
      i += 1
      continue
    section = indent == 0 and bool(_SECTION.match(line))
    if section or not stripped:
      in_list = in_list and not section
      out.append(line)
      i += 1
      continue
    previous = next((l for l in reversed(out) if l.strip()), "")
    after_blank = bool(out) and not out[-1].strip()
    item = _LIST_ITEM.match(line)
    if item:
      if out and not after_blank and not in_list:
        out.append("")
      in_list = True
      content = item.end() - 1  # where the item's text starts
      out.append(line.lstrip())
      i += 1
      continue
    if indent and in_list:  # a list item's continuation, re-indented to Markdown's 4 columns
      out.append("    " + (line[content:] if indent >= content else line.lstrip()))
      i += 1
      continue
    in_list = False
    if indent and (previous.rstrip().endswith(":") or (after_blank and indent >= 4)):
      block = []
      while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) >= indent):
        block.append(lines[i])
        i += 1
      if out and not after_blank:
        out.append("")
      out += _code_lines(block, indent) + [""]
      continue
    out.append(line)
    i += 1
  return "\n".join(out)


class PlainDocstrings(griffe.Extension):
  """Rewrites every docstring with `to_markdown` before mkdocstrings parses it."""

  def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: ARG002
    if obj.docstring is not None:
      obj.docstring.value = to_markdown(obj.docstring.value)
