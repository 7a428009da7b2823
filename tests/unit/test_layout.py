"""The tree stays readable: no daemon module over 450 lines, no class over 250."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250


def _modules() -> list[Path]:
    return sorted((REPO / "wrennd").rglob("*.py"))


def test_no_module_is_too_long() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_class_is_too_long() -> None:
    long = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    long[f"{p.relative_to(REPO)}:{node.name}"] = size
    assert long == {}


def test_the_checks_see_the_tree() -> None:
    assert len(_modules()) > 50
