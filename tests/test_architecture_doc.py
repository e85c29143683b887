"""docs/ARCHITECTURE.md stays true: every module, package and function it names exists."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"
# `indexer/...` or `mmsearch/...` in backticks, optionally `path.py:name` or `path.py:Class.name`.
REFERENCE = re.compile(r"`((?:indexer|mmsearch)/[^`:\s]*)(?::([A-Za-z_][\w.]*))?`")
# The page maps every subpackage and traces two commands: far fewer names means the parse broke.
MIN_REFERENCES = 60


def references(text: str) -> list[tuple[str, str | None]]:
    """(path, name or None) for every code reference in the text, in order."""
    return [(m.group(1), m.group(2)) for m in REFERENCE.finditer(text)]


def doc_references() -> list[tuple[str, str | None]]:
    return references(DOC.read_text(encoding="utf-8"))


@cache
def defined_names(path: Path) -> frozenset[str]:
    """Top-level functions, classes and constants of a module, and Class.member for class bodies."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        names |= _bound(node)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{member}" for child in node.body for member in _bound(child)}
    return frozenset(names)


def _bound(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def test_the_parser_reads_paths_and_names(tmp_path: Path) -> None:
    text = (
        "`indexer/store/` and `mmsearch/engine.py:Engine.open`, `indexer/media/scan.py:scan_folder`;"
        " not `tests/x.py`, not indexer/bare.py, `IndexReport.to_dict`"
    )
    assert references(text) == [
        ("indexer/store/", None),
        ("mmsearch/engine.py", "Engine.open"),
        ("indexer/media/scan.py", "scan_folder"),
    ]
    module = tmp_path / "module.py"
    module.write_text(
        "from x import imported\nLIMIT = 3\nTYPED: int = 4\ndef run(): pass\n"
        "class Engine:\n    SIZE = 1\n    def open(self):\n        def inner(): pass\n",
        encoding="utf-8",
    )
    assert defined_names(module) == {"LIMIT", "TYPED", "run", "Engine", "Engine.SIZE", "Engine.open"}


def test_the_page_names_enough_to_check() -> None:
    assert len(doc_references()) >= MIN_REFERENCES


@pytest.mark.parametrize("path", sorted({p for p, _ in doc_references()}))
def test_every_named_module_and_package_exists(path: str) -> None:
    target = REPO / path
    exists = target.is_dir() if path.endswith("/") else target.is_file()
    assert exists, f"docs/ARCHITECTURE.md names {path}, which does not exist: update the page"


@pytest.mark.parametrize(
    ("path", "name"), sorted({(p, n) for p, n in doc_references() if n}), ids=lambda x: str(x)
)
def test_every_named_function_and_class_exists(path: str, name: str) -> None:
    module = REPO / path
    assert module.is_file(), f"docs/ARCHITECTURE.md names {path}, which does not exist"
    assert name in defined_names(module), (
        f"docs/ARCHITECTURE.md names {path}:{name}, which {path} no longer defines: update the page"
    )
