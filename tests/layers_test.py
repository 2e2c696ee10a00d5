"""The package's layering, as docs/concepts.md documents it, holds in the code.

The table under "Layers" in docs/concepts.md gives every module (or package) of
moe_jax a level. Every import in the source, those inside functions too, must
go to a lower level or stay inside the module's own package; no module may be
left out of the table; no imports may form a cycle; and each module imports
on its own, first of all moe_jax (so no hidden order of imports holds it up).
"""

import ast
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "moe_jax"


def _documented_levels() -> dict[str, int]:
  text = (REPO / "docs" / "concepts.md").read_text(encoding="utf-8")
  section = text[text.index("## Layers"):]
  levels = {}
  for level, names in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M):
    for name in re.findall(r"`([\w.]+)`", names):
      levels[name] = int(level)
  assert levels, "docs/concepts.md has no layer table under '## Layers'"
  return levels


def _modules() -> dict[str, pathlib.Path]:
  """{dotted module name: file} for every module of the package."""
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(REPO).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def _unit(module: str) -> str:
  """The name the layer table uses for a module: its top-level part under moe_jax."""
  return "moe_jax" if module == "moe_jax" else module.split(".")[1]


def _imports(module: str, path: pathlib.Path, modules: dict) -> set[str]:
  """The moe_jax modules `module` imports anywhere in its source (the package face for names)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("moe_jax")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moe_jax"):
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        out.add(sub if sub in modules else node.module)
  return {m for m in out if m != module and not module.startswith(m + ".")}


def _graph():
  modules = _modules()
  return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_documented_level():
  levels = _documented_levels()
  missing = sorted({_unit(m) for m in _modules()} - set(levels))
  assert not missing, f"modules without a level in docs/concepts.md's layer table: {missing}"


def test_imports_only_go_down():
  levels = _documented_levels()
  modules, graph = _graph()
  upward = []
  for m, targets in graph.items():
    for t in targets:
      a, b = _unit(m), _unit(t)
      if a != b and levels[b] >= levels[a]:
        upward.append(f"{m} (level {levels[a]}) imports {t} (level {levels[b]})")
  assert not upward, "imports that do not go down the documented layers:\n" + "\n".join(upward)


def test_no_import_cycles():
  _, graph = _graph()
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = "open"
    for t in sorted(graph[m]):
      if state.get(t) == "open":
        cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
      elif t not in state:
        visit(t, stack + [t])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_each_module_imports_alone():
  names = sorted(_modules())
  script = (
      "import importlib, sys\n"
      "failed = []\n"
      f"for name in {names!r}:\n"
      "  for k in [k for k in sys.modules if k == 'moe_jax' or k.startswith('moe_jax.')]:\n"
      "    del sys.modules[k]\n"
      "  try:\n"
      "    importlib.import_module(name)\n"
      "  except Exception as e:\n"
      "    failed.append(f'{name}: {type(e).__name__}: {e}')\n"
      "print('\\n'.join(failed))\n"
      "sys.exit(1 if failed else 0)\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_modules_and_functions_stay_short():
  """One concept per module: about 500 lines at most (550 allowed) and 80 a function."""
  long = []
  for path in sorted(PACKAGE.rglob("*.py")):
    source = path.read_text(encoding="utf-8")
    rel = path.relative_to(REPO)
    if source.count("\n") > 550:
      long.append(f"{rel}: {source.count(chr(10))} lines")
    long += [f"{rel}: {n.name}() is {n.end_lineno - n.lineno + 1} lines"
             for n in ast.walk(ast.parse(source))
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
  assert not long, "\n".join(long)
