"""One family of user-facing errors: every error class the project defines is an MMSearchError,
and the CLI and the service map errors by family, so a new one can never become a traceback or 500."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

import indexer
import mmsearch
from indexer.errors import (
    ConflictError,
    InvalidInputError,
    MMSearchError,
    ModelError,
    NotFoundError,
    UnavailableError,
)

# Modules that need an optional extra to import at all; their errors are checked where it is.
OPTIONAL_MODULES = {"indexer.models.openclip"}


def _project_modules() -> Iterator[str]:
    for package in (indexer, mmsearch):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if info.name not in OPTIONAL_MODULES:
                yield info.name


def _project_exceptions() -> list[type[BaseException]]:
    found = {}
    for name in _project_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_project_error_class_belongs_to_the_family() -> None:
    errors = _project_exceptions()
    assert len(errors) >= 15, "the walk found too few error classes to be checking anything"
    # Private HTTP plumbing (Starlette's HTTPException) is not a user error class.
    outsiders = [
        f"{e.__module__}.{e.__qualname__}"
        for e in errors
        if not issubclass(e, MMSearchError) and not e.__name__.startswith("_")
    ]
    assert outsiders == []


@pytest.mark.parametrize(
    ("family", "status"),
    [
        (NotFoundError, 404),
        (ConflictError, 409),
        (InvalidInputError, 422),
        (UnavailableError, 503),
        (ModelError, 503),
        (MMSearchError, 400),
    ],
)
def test_service_maps_a_new_error_by_its_family(family: type[MMSearchError], status: int) -> None:
    from mmsearch.service import status_for

    class BrandNewError(family):  # type: ignore[misc, valid-type]
        pass

    assert status_for(BrandNewError("x")) == status


def test_a_locked_index_is_a_conflict_not_an_unavailable_index() -> None:
    from indexer.store.index_dir import IndexLockedError
    from mmsearch.service import status_for

    assert status_for(IndexLockedError("locked by PID 1")) == 409


def test_cli_reports_a_new_error_as_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmsearch import cli_common

    class BrandNewError(UnavailableError):
        pass

    def broken() -> None:
        raise BrandNewError("the index went away: run `mmsearch index` again")

    app = typer.Typer()
    monkeypatch.setattr(cli_common, "app", app)  # register on a private app, not the real one
    cli_common.command("broken")(broken)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 1
    assert "error: the index went away: run `mmsearch index` again" in result.output
    assert "Traceback" not in result.output
