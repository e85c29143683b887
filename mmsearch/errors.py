"""The errors the engine raises: each message is meant for the user, and the CLI and HTTP
layers map them by class (indexer.errors) to exit codes and status codes."""

from __future__ import annotations

from indexer.errors import InvalidInputError, MMSearchError, NotFoundError, UnavailableError


class EngineError(MMSearchError):
    """Base class of errors the engine raises; the message is meant for the user."""


class IndexUnavailableError(EngineError, UnavailableError):
    """No index, or an index that cannot be used with the requested model."""


class QueryError(EngineError, InvalidInputError):
    """A query that cannot be answered as given (empty text, unreadable image, bad k)."""


class ImageNotFoundError(EngineError, NotFoundError):
    """No indexed image has the given id (never indexed, or removed since)."""
