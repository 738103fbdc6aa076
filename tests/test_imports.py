"""The package's modules import without cycles: each one alone, and in the static import graph."""

import ast
import subprocess
import sys
from pathlib import Path

import specdistill

ROOT = Path(specdistill.__file__).parent
MODULES = sorted(
    "specdistill." + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    if p.name != "__init__.py" else ".".join(("specdistill", *p.relative_to(ROOT).parent.parts))
    for p in ROOT.rglob("*.py")
)


def module_path(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    return ROOT / rel / "__init__.py" if (ROOT / rel).is_dir() else (ROOT / rel).with_suffix(".py")


def imported_modules(name: str) -> set[str]:
    """The package modules that `name` imports anywhere in its source (function-level imports included).

    `from .x import y` counts as an import of x.y when x.y is a module, else of x."""
    path = module_path(name)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names}
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_static_import_graph_has_no_cycle():
    # A package's __init__ may import its own children (that is how it re-exports them); only the edges from a
    # module to its own parent package are left out, since `from . import x` inside a package means x.
    graph = {m: {d for d in imported_modules(m) if not m.startswith(d + ".")} for m in MODULES}
    assert "specdistill.scoring" in graph["specdistill.train.step"]  # the graph sees the imports it should
    assert "specdistill.scoring" in graph["specdistill.evaluate.metrics"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_find_cycle_finds_a_function_level_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


IMPORT_EACH_ALONE = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "specdistill" or m.startswith("specdistill.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
"""


def test_each_module_imports_alone():
    """In a fresh interpreter, each module imported first (the package's other modules unloaded) loads."""
    names = [m for m in MODULES if m != "specdistill.__main__"]  # importing it runs the command line
    proc = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *names], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
