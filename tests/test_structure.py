"""The shape the code keeps (issue 25): no class in phi3ui/ over 300 lines, no Python string
holding more than a few lines of JavaScript (it lives in phi3ui/ui/static/), and no test but
those marked `bench` importing the benchmarks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "phi3ui"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_CLASS_LINES = 300
MAX_JS_LINES = 3


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_class_is_over_300_lines(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, f"{path.name}: {node.name}"


def looks_like_javascript(text: str) -> bool:
    return any(mark in text for mark in ("=>", "function(", "function (", "window.", "document.", "const "))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_python_string_holds_more_than_a_few_lines_of_javascript(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and looks_like_javascript(node.value):
            assert node.value.count("\n") < MAX_JS_LINES, f"{path.name}, line {node.lineno}"


# --- tests and benchmarks -----------------------------------------------------------------
TESTS = Path(__file__).parent


def imports_of(tree: ast.Module, modules: set[str]) -> list[ast.AST]:
    """The imports of `modules` (or of modules inside them) in a module, wherever they are."""
    def named(name: str | None) -> bool:
        return bool(name) and any(name == m or name.startswith(m + ".") for m in modules)

    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Import) and any(named(alias.name) for alias in node.names)
            or isinstance(node, ast.ImportFrom) and named(node.module)]


def marks_bench(node: ast.AST) -> bool:
    """Whether a decorator or a `pytestmark` value names `pytest.mark.bench`."""
    return any(isinstance(n, ast.Attribute) and n.attr == "bench" and isinstance(n.value, ast.Attribute)
               and n.value.attr == "mark" for n in ast.walk(node))


def outside_bench_tests(tree: ast.Module, imports: list[ast.AST]) -> list[int]:
    """The lines of `imports` outside tests marked `bench` (by the module's `pytestmark` or
    a test function's decorator)."""
    if any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
           and marks_bench(node.value) for node in tree.body):
        return []
    marked = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
              and any(marks_bench(d) for d in node.decorator_list) for inner in ast.walk(node)}
    return [node.lineno for node in imports if id(node) not in marked]


def test_only_tests_marked_bench_import_the_benchmarks() -> None:
    """The benchmarks may use helpers under tests/ (starting the app, the JSON cases), never
    the other way round: `-m "not bench"` runs no benchmark code. A helper under tests/
    imports nothing from bench/, and a test that imports another test module that does is
    marked `bench` too."""
    trees = {path: ast.parse(path.read_text()) for path in sorted(TESTS.glob("*.py"))}
    benchy = {"bench"}  # bench/, and the modules under tests/ that import it
    while True:
        more = {f"tests.{path.stem}" for path, tree in trees.items() if imports_of(tree, benchy)} - benchy
        if not more:
            break
        benchy |= more
    found = {}
    for path, tree in trees.items():
        imports = imports_of(tree, benchy)
        lines = outside_bench_tests(tree, imports) if path.name.startswith("test_") else [n.lineno for n in imports]
        if lines:
            found[path.name] = lines
    assert found == {}, f"bench/ imported outside tests marked bench (file: lines): {found}"
