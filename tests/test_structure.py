"""The shape the code keeps (issue 25): no class in phi3ui/ over 300 lines, and no Python
string holding more than a few lines of JavaScript (it lives in phi3ui/ui/static/)."""

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
