"""Imports point one way (docs/ARCHITECTURE.md): mmsearch -> indexer, never back, and inside
indexer errors <- media <- models <- store <- indexing, with training beside indexing.

Every import counts, at any depth (a lazy import inside a function is still a dependency), in
every form: `import a.b`, `from a import b`, relative imports and importlib.import_module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INDEXER = REPO / "indexer"
MMSEARCH = REPO / "mmsearch"
UPPER = "mmsearch"

# The indexer subpackages (and errors.py) each may import, besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "media": frozenset({"errors"}),
    "models": frozenset({"errors", "media"}),
    "store": frozenset({"errors"}),  # and TORCH_FREE_MODEL_TYPES
    "indexing": frozenset({"errors", "media", "models", "store"}),
    "training": frozenset({"errors", "media", "models"}),
}
# The one models module store may import: torch-free EncoderInfo/ModelSpec.
TORCH_FREE_MODEL_TYPES = "indexer.models.spec"
HEAVY_MODULES = ("torch", "transformers")  # opening an index must not cost their import
# Folders of scripts, not library code: neither layer imports them.
NOT_LIBRARY = ("sample_corpus", "benchmarks", "tests")

# Edges that break a rule today, each removed by work under way on another branch. When that
# lands, test_known_exceptions_still_exist fails: delete the line and the rule holds for good.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()  # none left: every rule holds


def module_name(path: Path) -> str:
    """indexer/store/catalog.py -> indexer.store.catalog; a package's __init__.py -> the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_project_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(
    source: str, filename: str, *, module: str = "", is_package: bool = False, runtime_only: bool = False
) -> list[str]:
    """Every module the source imports, at any depth; `from pkg import sub` names pkg.sub when
    sub is a module of this repository, and relative imports resolve against `module`.
    runtime_only leaves out `if TYPE_CHECKING:` blocks (annotations, never executed)."""
    found: list[str] = []
    tree = ast.parse(source, filename=filename)
    for node in _runtime_nodes(tree) if runtime_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                child = f"{base}.{alias.name}" if base else alias.name
                found.append(child if is_project_module(child) else base)
        elif isinstance(node, ast.Call) and (name := _dynamic_import_name(node)) is not None:
            found.append(name)
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under an `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _dynamic_import_name(call: ast.Call) -> str | None:
    """The module named by importlib.import_module("...") or __import__("...")."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(path: Path) -> list[str]:
    return imported_modules(
        path.read_text(encoding="utf-8"),
        str(path),
        module=module_name(path),
        is_package=path.name == "__init__.py",
    )


def project_module(name: str) -> str | None:
    """The longest prefix of an imported name that is a module of this repository."""
    parts = name.split(".")
    while parts and not is_project_module(".".join(parts)):
        parts.pop()
    return ".".join(parts) or None


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def runtime_import_graph(paths: list[Path], *, runtime_only: bool = True) -> dict[str, set[str]]:
    """module -> the project modules it imports when run (lazy imports count; typing-only only
    when runtime_only is False).
    A package's own __init__ is left out as a target: importing a.b runs a/__init__.py first
    by Python's rules, not by a choice the module made."""
    graph: dict[str, set[str]] = {}
    for path in paths:
        module = module_name(path)
        source = path.read_text(encoding="utf-8")
        names = imported_modules(
            source, str(path), module=module, is_package=path.name == "__init__.py", runtime_only=runtime_only
        )
        targets = {project_module(n) for n in names}
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


def upper_imports(source: str, filename: str) -> list[str]:
    """Every import of the upper layer in the source."""
    return [n for n in imported_modules(source, filename) if n == UPPER or n.startswith(UPPER + ".")]


def indexer_part(name: str) -> str | None:
    """indexer.store.catalog -> "store", indexer.errors -> "errors"; None outside indexer."""
    parts = name.split(".")
    if parts[0] != "indexer":
        return None
    return parts[1] if len(parts) > 1 else ""


def rule_breaks(module: str, imported: list[str]) -> list[str]:
    """The indexer-internal imports of `module` that its part's rule does not allow."""
    own = indexer_part(module)
    assert own in ALLOWED, f"{module}: no import rule for indexer/{own}: add it to ALLOWED"
    broken = []
    for target in sorted(set(imported)):
        part = indexer_part(target)
        if part is None or part in ("", own) or part in ALLOWED[own]:
            continue  # outside indexer, the bare package, its own part, or allowed
        if own == "store" and target == TORCH_FREE_MODEL_TYPES:
            continue
        broken.append(target)
    return broken


INDEXER_MODULES = sorted(p for p in INDEXER.rglob("*.py") if p.parent != INDEXER or p.name != "__init__.py")
ALL_INDEXER_FILES = sorted(INDEXER.rglob("*.py"))
MMSEARCH_MODULES = sorted(MMSEARCH.rglob("*.py"))


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


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


def test_checker_resolves_submodules_and_relative_imports() -> None:
    source = (
        "from indexer.models import encoder\n"
        "from indexer.models.encoder import EncoderInfo\n"
        "from ..errors import InvalidInputError\n"
        "from . import catalog\n"
        "from .vectors import VectorStore\n"
        "import indexer.media.images as im\n"
        "def later():\n"
        "    import torch\n"
        "    return importlib.import_module('indexer.indexing.pipeline')\n"
    )
    found = imported_modules(source, "<test>", module="indexer.store.example")
    assert found == [
        "indexer.models.encoder",
        "indexer.models.encoder",
        "indexer.errors",
        "indexer.store.catalog",
        "indexer.store.vectors",
        "indexer.media.images",
        "torch",
        "indexer.indexing.pipeline",
    ]
    assert rule_breaks("indexer.store.example", found) == [
        "indexer.indexing.pipeline",
        "indexer.media.images",
        "indexer.models.encoder",
    ]
    assert rule_breaks("indexer.indexing.example", found) == []
    assert rule_breaks("indexer.store.example", [TORCH_FREE_MODEL_TYPES, "numpy"]) == []


@pytest.mark.parametrize("path", ALL_INDEXER_FILES, ids=_id)
def test_indexer_module_does_not_import_mmsearch(path: Path) -> None:
    assert upper_imports(path.read_text(encoding="utf-8"), str(path)) == []


@pytest.mark.parametrize("path", INDEXER_MODULES, ids=_id)
def test_indexer_module_imports_only_the_parts_below_it(path: Path) -> None:
    module = module_name(path)
    broken = [t for t in rule_breaks(module, imports_of(path)) if (module, t) not in KNOWN_EXCEPTIONS]
    part = indexer_part(module)
    assert broken == [], f"{module} may import indexer parts {sorted(ALLOWED[str(part)])} only"


@pytest.mark.parametrize("path", sorted((INDEXER / "store").rglob("*.py")), ids=_id)
def test_store_never_imports_torch_or_transformers(path: Path) -> None:
    heavy = [n for n in imports_of(path) if n.split(".")[0] in HEAVY_MODULES]
    assert heavy == [], f"{module_name(path)} imports {heavy}: opening an index must not need them"


@pytest.mark.parametrize("path", MMSEARCH_MODULES + ALL_INDEXER_FILES, ids=_id)
def test_library_code_never_imports_scripts_or_tests(path: Path) -> None:
    scripts = [n for n in imports_of(path) if n.split(".")[0] in NOT_LIBRARY]
    assert scripts == []


def test_every_indexer_part_has_a_rule() -> None:
    parts = {p.parent.name for p in INDEXER.glob("*/__init__.py")} | {
        p.stem for p in INDEXER.glob("*.py") if p.name != "__init__.py"
    }
    assert parts == set(ALLOWED), "give every indexer subpackage a line in ALLOWED (and the doc)"


@pytest.mark.parametrize("edge", sorted(KNOWN_EXCEPTIONS), ids=lambda e: f"{e[0]}->{e[1]}")
def test_known_exceptions_still_exist(edge: tuple[str, str]) -> None:
    module, target = edge
    path = REPO.joinpath(*module.split(".")).with_suffix(".py")
    assert path.is_file() and target in imports_of(path), (
        f"{module} no longer imports {target}: delete that line from KNOWN_EXCEPTIONS in "
        "tests/test_layering.py so the rule holds from now on"
    )


def test_indexer_has_modules_to_check() -> None:
    assert len(INDEXER_MODULES) >= 20 and len(MMSEARCH_MODULES) >= 10


def test_cycle_finder_sees_a_lazy_import_cycle_and_ignores_typing_only_imports() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    lazy = "def f():\n    from indexer.store import catalog\n"
    typing_only = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from indexer.store import vectors\n"
    )
    assert imported_modules(lazy, "<test>", runtime_only=True) == ["indexer.store.catalog"]
    assert imported_modules(typing_only, "<test>", runtime_only=True) == ["typing"]


def test_no_module_imports_itself_through_others() -> None:
    """No cycles between modules, lazy imports included (encoder <-> openclip was one): each
    module can be read, tested and replaced knowing only what it imports."""
    graph = runtime_import_graph(ALL_INDEXER_FILES + MMSEARCH_MODULES)
    assert import_cycles(graph) == []


def test_no_cycle_even_through_annotations() -> None:
    """Imports under `if TYPE_CHECKING:` count too: a type two modules both need lives in a
    module of its own (indexer/indexing/score_stats.py, indexer/training/embeddings.py), so a
    stricter checker (or a future runtime use) finds no cycle either."""
    graph = runtime_import_graph(ALL_INDEXER_FILES + MMSEARCH_MODULES, runtime_only=False)
    assert import_cycles(graph) == []
