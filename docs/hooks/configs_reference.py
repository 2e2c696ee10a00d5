"""MkDocs hook: generates the configs reference (docs/configs.md) from configs/*.py.

At build time every configs/*.py is imported and its get_config() called; the
page lists each file with its module docstring and every field with its value
and its comment. Comments come from the source: the one on the line that sets
the field (or the comment lines right above it), in the config file itself or
else in the builder functions it calls (`moe_jax.train_config.base_config()`,
`moe_jax.prm.configs.prm_config()`, ...); a field with none inherits its group's. The
page is therefore always what the files say, never a copy that can drift.
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import inspect
import io
import os
import re
import sys
import tokenize

from mkdocs.exceptions import PluginError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plain_docstrings import to_markdown  # noqa: E402 (this directory is not a package)

PAGE = "configs.md"
MARKER = "<!-- configs-reference -->"


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (MkDocs hook signature)
  if page.file.src_uri != PAGE:
    return markdown
  if MARKER not in markdown:
    raise PluginError(f"{PAGE} lost its {MARKER!r} marker, where the generated reference goes")
  root = os.path.dirname(os.path.abspath(config.config_file_path))
  return markdown.replace(MARKER, render(root))


# Reading the sources -----------------------------------------------------------------

def _load(path: str):
  name = "_moe_jax_docs_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _chain(node) -> list[str] | None:
  """['a', 'b'] for `c.a.b` (the root name dropped); None for anything else."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  return parts[::-1] if isinstance(node, ast.Name) else None


def _dict_call(node) -> ast.Call | None:
  """The `dict(...)` inside `dict(...)` or `ConfigDict(dict(...))`, if that is what `node` is."""
  if not isinstance(node, ast.Call):
    return None
  name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
  if name == "dict":
    return node
  if name == "ConfigDict" and node.args:
    return _dict_call(node.args[0])
  return None


def field_comments(path: str, function: str | None = None) -> dict[str, str]:
  """{dotted field: comment} for the fields a source sets (`c.x.y = v`, `dict(k=v)`).

  With `function`, only the fields set inside that top-level function.
  """
  with open(path, encoding="utf-8") as f:
    source = f.read()
  trailing, alone = {}, {}  # line -> comment after code / on a line of its own
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      text = tok.string.lstrip("#").strip()
      (trailing if tok.line[:tok.start[1]].strip() else alone)[tok.start[0]] = text

  def comment(node) -> str:
    above, line = [], node.lineno - 1
    while line in alone:
      above.insert(0, alone[line])
      line -= 1
    here = trailing.get(node.lineno)
    return " ".join(above + ([here] if here else []))

  out: dict[str, str] = {}

  def visit(call: ast.Call, prefix: str, start: int) -> None:
    for kw in call.keywords:
      if kw.arg is None:  # **expansion
        continue
      if kw.value.lineno != start:  # on the group's own line, the comment is the group's
        out[prefix + kw.arg] = comment(kw.value)
      inner = _dict_call(kw.value)
      if inner is not None:
        visit(inner, prefix + kw.arg + ".", kw.value.lineno)

  tree = ast.parse(source)
  if function is not None:
    tree = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
      parts = _chain(node.targets[0])
      if parts:
        out[".".join(parts)] = comment(node)
        inner = _dict_call(node.value)
        if inner is not None:
          visit(inner, ".".join(parts) + ".", node.lineno)
    elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
          and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "update"):
      parts = _chain(node.value.func.value)  # c.model.update(dict(...))
      inner = _dict_call(node.value.args[0]) if node.value.args else None
      if parts and inner is not None:
        visit(inner, ".".join(parts) + ".", node.lineno)
  return {k: v for k, v in out.items() if v}


def flatten(cfg, prefix: str = "") -> dict:
  """{dotted field: value} over the leaves of a ConfigDict, in its (sorted) key order."""
  out = {}
  for key, value in cfg.items():
    if hasattr(value, "items") and not isinstance(value, dict):  # a nested ConfigDict
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


# Rendering -----------------------------------------------------------------------------

def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def _value(value) -> str:
  return "`" + repr(value).replace("`", "'") + "`"


def _comment_for(field: str, sources: list[dict[str, str]]) -> tuple[str, str]:
  """(comment, where): the field's own comment, else its nearest group's (`where` names the
  group); the first source that has one wins."""
  parts = field.split(".")
  for n in range(len(parts), 0, -1):
    key = ".".join(parts[:n])
    for src in sources:
      if key in src:
        return src[key], key
  return "", field


def _imported_calls(path: str, root: str, function: str | None = None) -> list[tuple[str, str]]:
  """(source file, function) for each function of moe_jax that `path` imports by name and calls
  (inside `function` only, if given), in call order."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  imported = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moe_jax"):
      src = os.path.join(root, *node.module.split(".")) + ".py"
      for alias in node.names:
        imported[alias.asname or alias.name] = (src, alias.name)
  # A module-level alias `from moe_jax import train_config` makes `train_config.f()` a call too.
  modules = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "moe_jax":
      for alias in node.names:
        modules[alias.asname or alias.name] = os.path.join(root, "moe_jax", alias.name + ".py")
  if function is not None:
    tree = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
  out = []
  for n in ast.walk(tree):
    if not isinstance(n, ast.Call):
      continue
    if isinstance(n.func, ast.Name) and n.func.id in imported:
      out.append(imported[n.func.id])
    elif (isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
          and n.func.value.id in modules and os.path.exists(modules[n.func.value.id])):
      out.append((modules[n.func.value.id], n.func.attr))
  return list(dict.fromkeys(out))


def _builders(config_path: str, root: str) -> list[tuple[str, str]]:
  """The config builders a config file calls (base_config, esft_config, prm_config, ...), each
  followed by those it builds on (prm_config before the base_config it extends)."""
  out, todo = [], _imported_calls(config_path, root)
  while todo:
    src, fn = todo.pop(0)
    if (src, fn) in out or not os.path.exists(src):
      continue
    out.append((src, fn))
    todo = _imported_calls(src, root, fn) + todo
  return out


def _module(src: str, root: str) -> str:
  return os.path.splitext(os.path.relpath(src, root))[0].replace(os.sep, ".")


def render(root: str) -> str:
  train_config = os.path.join(root, "moe_jax", "train_config.py")
  base = flatten(_load(train_config).base_config())
  paths = sorted(glob.glob(os.path.join(root, "configs", "*.py")))
  if not paths:
    raise PluginError(f"no config files under {os.path.join(root, 'configs')}")

  modules = {path: _load(path) for path in paths}

  out = ["| file | summary |", "|---|---|"]
  for path, module in modules.items():
    rel = os.path.relpath(path, root)
    summary = (module.__doc__ or "").strip().splitlines()
    anchor = re.sub(r"[^a-z0-9_-]", "", rel.lower())  # the heading's id, as toc makes it
    out.append(f"| [`{rel}`](#{anchor}) | {_cell(summary[0] if summary else '')} |")
  out.append("")

  for path, module in modules.items():
    rel = os.path.relpath(path, root)
    if not hasattr(module, "get_config"):
      raise PluginError(f"{rel} has no get_config()")
    fields = flatten(module.get_config())
    # Comments: the file's own, then those of the builders it calls (ppo_config before the
    # base_config it extends).
    builders = _builders(path, root)
    if builders and (train_config, "base_config") not in builders:
      builders.append((train_config, "base_config"))
    sources = [field_comments(path)] + [field_comments(src, fn) for src, fn in builders]
    derived = set(base) <= set(fields)  # built on train_config.base_config()
    out += [f"## {rel}", "", to_markdown(inspect.cleandoc(module.__doc__ or "")), ""]
    if builders:
      out += ["Built on " + ", ".join(f"`{_module(src, root)}.{fn}()`" for src, fn in builders)
              + ".", ""]
    if derived:
      out += ["Values in **bold** differ from `base_config()`.", ""]
    out += ["| field | value | comment |", "|---|---|---|"]
    unset_model = [k for k, v in fields.items() if k.startswith("model.") and k != "model.preset"
                   and v is None]
    groups_seen = set()
    for key, value in fields.items():
      if key in unset_model:
        continue
      shown = _value(value)
      if derived and (key not in base or base[key] != value):
        shown = f"**{shown}**"
      comment, where = _comment_for(key, sources)
      if where != key:  # a group's comment: said once, on the group's first field
        comment = "" if where in groups_seen else f"`{where}`: {comment}"
        groups_seen.add(where)
      out.append(f"| `{key}` | {shown} | {_cell(comment)} |")
    if unset_model:
      names = ", ".join(f"`{k}`" for k in unset_model)
      out.append(f"| the other `model.*` fields | `None` | not set: the preset's value. "
                 f"{_cell(names)} |")
    out.append("")
  return "\n".join(out)
