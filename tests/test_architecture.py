"""docs/architecture.md draws the modules as they are: every module of kqa/ is named there, and the
imports between kqa's modules (at module level or inside functions) form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kqa"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def kqa_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The kqa modules `path` imports anywhere in its code (`from kqa.x import y` counts kqa.x.y when
    that is a module, else kqa.x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if candidate in known:
                    found.add(candidate)
                elif base in known:
                    found.add(base)
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    modules = kqa_modules()
    # `kqa` itself is the lazy facade of the public names (and holds __version__): leaving it out keeps
    # "module → kqa.__version__" from reading as a cycle through every module the facade names.
    known = set(modules) - {"kqa"}
    return {name: imported_modules(path, name, known) for name, path in modules.items() if name != "kqa"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_kqa_has_no_import_cycle():
    graph = import_graph()
    assert graph["kqa.offline.verify"] >= {"kqa.retrieval.dense"}  # the graph sees real imports
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_is_named_in_the_architecture_page():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    tree_lines = [line.strip() for line in text.splitlines() if line.startswith("  ") and "/" in line]
    missing = []
    for name in kqa_modules():
        parts = name.split(".")
        in_tree = len(parts) == 3 and any(
            line.startswith(f"{parts[1]}/") and f" {parts[2]}.py" in f" {line}" for line in tree_lines
        )
        if f"`{name}`" not in text and name not in text and not in_tree:
            missing.append(name)
    assert not missing, f"docs/architecture.md does not name: {missing}"
