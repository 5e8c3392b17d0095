"""The node's layers, checked on its source: imports go one way (storage -> log -> cluster -> subscriptions -> api),
all SQL lives in node/storage/, and the layers above the log reach the log on disk only through Log's interface."""
import ast
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[2] / "node"
# each layer, and the layers it must not import (the ones above it)
ABOVE = {
    "storage": ("log", "cluster", "subscriptions", "api", "app"),
    "log": ("cluster", "subscriptions", "api", "app"),
    "cluster": ("subscriptions", "api", "app"),
    "subscriptions": ("cluster", "api", "app"),
}


def modules(layer: str = "") -> list[Path]:
    """The source files of a layer (a package, or a module such as log.py); without one, all of node/."""
    if not layer:
        return sorted(NODE.rglob("*.py"))
    return sorted((NODE / layer).rglob("*.py")) if (NODE / layer).is_dir() else [NODE / f"{layer}.py"]


def imported(path: Path) -> set[str]:
    """The node modules `path` imports, as their first name below node/ (`storage`, `log`, `api`, ...)."""
    names = set()
    package = path.relative_to(NODE).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[:len(package) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                names.add(target[0])
            else:  # `from . import x` at node/'s top level
                names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_a_layer_imports_no_layer_above_it(layer):
    wrong = {str(path.relative_to(NODE)): sorted(imported(path) & set(ABOVE[layer])) for path in modules(layer)}
    assert not {path: names for path, names in wrong.items() if names}


def test_sql_is_executed_only_in_storage():
    outside = [path for path in modules() if "storage" not in path.relative_to(NODE).parts]
    found = [f"{path.relative_to(NODE)}:{node.lineno}" for path in outside
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "executescript")]
    assert not found


@pytest.mark.parametrize("layer", ["cluster", "subscriptions", "api"])
def test_layers_above_the_log_never_reach_through_it_to_storage(layer):
    found = [f"{path.relative_to(NODE)}:{node.lineno}" for path in modules(layer)
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr == "storage"]
    assert not found
