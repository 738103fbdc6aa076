"""The package's shape (docs/architecture.md): every module sits in one layer and imports only its own layer or
lower ones; no file over 500 lines; no function over 60 lines."""

import ast

import pytest

from test_imports import MODULES, ROOT, imported_modules, module_path

# Lowest first: the data flow of docs/architecture.md. A module name matches a layer by itself or by a prefix
# that ends at a dot (`engine` holds engine.loop). evaluate sits below train because the recipe's validate step
# scores answers with evaluate's quality measurement; nothing in evaluate reads train.
LAYERS = [
    ("base", ["errors", "progress", "folders", "checkpoint", "config"]),
    ("data", ["data"]),
    ("model files", ["models", "gguf_io", "gguf_export", "gguf_check", "llamacpp_server", "drafts", "real_models"]),
    ("engine", ["engine"]),
    ("rollout", ["rollout"]),
    ("losses", ["losses", "scoring"]),
    ("evaluate", ["evaluate"]),
    ("train", ["train"]),
    ("study", ["study"]),
    ("cli", ["cli", "__main__"]),
]
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a specdistill module (the package itself is above every layer); None if unplaced."""
    name = module.removeprefix("specdistill").removeprefix(".")
    if not name:
        return len(LAYERS)
    for index, (_, roots) in enumerate(LAYERS):
        if any(name == root or name.startswith(root + ".") for root in roots):
            return index
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every edge of the import graph that runs from a lower layer to a higher one, as 'a -> b'."""
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if layer_of(d) is not None and layer_of(m) is not None and layer_of(d) > layer_of(m))


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of every function or method of the source longer than the limit, nested ones included."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_module_imports_from_a_higher_layer():
    graph = {m: {d for d in imported_modules(m) if not m.startswith(d + ".")} for m in MODULES}
    assert "specdistill.evaluate.quality" in graph["specdistill.study.measure"]  # the graph sees real edges
    assert upward_imports(graph) == []


def test_the_layer_check_finds_an_upward_import():
    graph = {"specdistill.config": {"specdistill.models", "specdistill.errors"},
             "specdistill.train.recipe": {"specdistill.evaluate.quality", "specdistill.cli"}}
    assert upward_imports(graph) == ["specdistill.config -> specdistill.models",
                                     "specdistill.train.recipe -> specdistill.cli"]


@pytest.mark.parametrize("module", MODULES)
def test_files_and_functions_stay_short(module):
    source = module_path(module).read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_FILE_LINES, f"{module_path(module).relative_to(ROOT)} has {lines} lines"
    assert long_functions(source) == []


def test_the_length_check_finds_a_long_function():
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def short():\n    pass\n\nclass A:\n    def long(self):\n{body}\n") == [
        ("long", MAX_FUNCTION_LINES + 1)]
