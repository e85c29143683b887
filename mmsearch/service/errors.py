"""Errors as HTTP answers: every error is a JSON `{"detail": "message"}` with a status by family."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from indexer.errors import (
    ConflictError,
    InvalidInputError,
    MMSearchError,
    ModelError,
    NotFoundError,
    UnavailableError,
)
from mmsearch.service.models import ErrorResponse

# By error family (indexer/errors.py), most specific first: every user-facing error has a status,
# so a new error class cannot fall through to a 500.
ERROR_STATUS: tuple[tuple[type[MMSearchError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 422),
    (UnavailableError, 503),
    (ModelError, 503),
    (MMSearchError, 400),
)


def status_for(exc: MMSearchError) -> int:
    """The HTTP status of a user-facing error: that of the first family it belongs to."""
    return next(status for family, status in ERROR_STATUS if isinstance(exc, family))


Responses = dict[int | str, dict[str, Any]]  # FastAPI's `responses=` for the OpenAPI schema
ERRORS: Responses = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"},
    422: {"model": ErrorResponse, "description": "Invalid parameters"},
    503: {"model": ErrorResponse, "description": "Index unavailable"},
}
NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "No indexed image with this id"}}
LOCKED: Responses = {409: {"model": ErrorResponse, "description": "Index is locked by another writer"}}
TOO_LARGE: Responses = {413: {"model": ErrorResponse, "description": "Request body too large"}}
MALFORMED: Responses = {400: {"model": ErrorResponse, "description": "Body that cannot be parsed"}}
FORBIDDEN: Responses = {403: {"model": ErrorResponse, "description": "Path outside the --root folders"}}
UNSUPPORTED: Responses = {
    415: {"model": ErrorResponse, "description": "A body that is neither JSON nor a multipart upload"}
}


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error answer."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def describe_validation(exc: RequestValidationError) -> str:
    """Pydantic's error list as one line, e.g. "query k: Input should be less than or equal to 1000"."""
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ())]
        where = f"{loc[0]} {'.'.join(loc[1:])}".strip() if loc else "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """HTTP, validation, user-facing and unexpected errors, each as one JSON answer."""

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, describe_validation(exc))

    async def user_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MMSearchError)
        return error_response(status_for(exc), str(exc))

    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this answer, so the server still logs the traceback.
        return error_response(500, "internal server error (see the server log)")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(MMSearchError, user_error)
    app.add_exception_handler(Exception, crashed)
