"""One family of user-facing errors: every problem a user can fix derives from `MMSearchError`.

Library code raises these and never prints or exits. The edges (the CLI and the HTTP service)
map them *by class* to exit codes and HTTP statuses, so a new error only has to pick its family
here to be reported as one clear line, never as a traceback or a 500. Messages say which flag or
command fixes the problem.

The families are the few ways an edge must react differently; the concrete errors live beside
the code that raises them and subclass one family each.
"""

from __future__ import annotations

import warnings

__all__ = [
    "ConflictError",
    "InvalidInputError",
    "MMSearchError",
    "ModelError",
    "NotFoundError",
    "UnavailableError",
    "warn_once",
]


class MMSearchError(Exception):
    """A problem the user can fix; the message says how."""


class InvalidInputError(MMSearchError, ValueError):
    """The request itself is wrong: a flag, a query, a corpus or caption file, an uploaded image."""


class NotFoundError(MMSearchError, LookupError):
    """The request names something that does not exist (an image id, an index folder)."""


class ConflictError(MMSearchError):
    """Someone else holds what the request needs (another writer holds the index lock)."""


class UnavailableError(MMSearchError, RuntimeError):
    """The index cannot be read or written right now (damaged, vanished, or its store failed)."""


class ModelError(MMSearchError, RuntimeError):
    """A model cannot be loaded, trained or used with this index."""


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Emit a fallback warning the first time it happens in this process, then stay quiet.

    "Once" is per process, not per call site: one command resolves the device in several places
    (model load, training, FAISS), and a user should read one warning line, not three.
    """
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, stacklevel=3)
