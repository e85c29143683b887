"""`indexer` is the lower layer: no module in it may import `mmsearch`, not even lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

INDEXER = Path(__file__).resolve().parents[1] / "indexer"
UPPER = "mmsearch"


def upper_imports(source: str, filename: str) -> list[str]:
    """'line N: import ...' for every import of the upper layer, at any depth in the module."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and _dynamic_import_name(node) is not None:
            names = [str(_dynamic_import_name(node))]
        else:
            continue
        found += [f"line {node.lineno}: {n}" for n in names if n == UPPER or n.startswith(UPPER + ".")]
    return found


def _dynamic_import_name(call: ast.Call) -> str | None:
    """The module named by importlib.import_module("...") or __import__("...")."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def test_checker_sees_every_import_form() -> None:
    source = (
        "import mmsearch\n"
        "import os, mmsearch.engine as eng\n"
        "from mmsearch.cli import app\n"
        "def lazy():\n"
        "    from mmsearch import Engine\n"
        "class K:\n"
        "    def m(self):\n"
        "        import mmsearch.texts\n"
        "mod = importlib.import_module('mmsearch.paths')\n"
        "__import__('mmsearch')\n"
        "import mmsearchx\n"
        "from indexer import mmsearch_like\n"
    )
    assert len(upper_imports(source, "<test>")) == 7


@pytest.mark.parametrize("path", sorted(INDEXER.rglob("*.py")), ids=lambda p: str(p.relative_to(INDEXER)))
def test_indexer_module_does_not_import_mmsearch(path: Path) -> None:
    assert upper_imports(path.read_text(encoding="utf-8"), str(path)) == []


def test_indexer_has_modules_to_check() -> None:
    assert len(list(INDEXER.rglob("*.py"))) >= 10
