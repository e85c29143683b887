"""Per-query accuracy knobs of a vector store, torch- and FAISS-free so a query value can hold
them without importing FAISS (the CLI's start-up stays light)."""

from __future__ import annotations

import operator
from dataclasses import dataclass

from indexer.errors import InvalidInputError

# Re-ranking reads this many candidates per wanted hit at most: each costs a full-vector read.
MAX_RERANK = 64


class SearchParamsError(InvalidInputError):
    """A search knob that is not a whole number, or out of range (nprobe, ef_search or rerank
    below 1, rerank above MAX_RERANK)."""


@dataclass(frozen=True)
class SearchParams:
    """Per-query accuracy knobs; None keeps what the index was built (and tuned) with.

    nprobe: inverted lists searched (ivf, sq8, ivfpq); ef_search: width of the HNSW graph walk;
    rerank: candidates per wanted hit that a compressed index (sq8, ivfpq) scores again exactly
    from the full vectors (1: FAISS's own top-k with its approximate scores). More of any raises
    recall and latency. Knobs a kind does not have are ignored.
    """

    nprobe: int | None = None
    ef_search: int | None = None
    rerank: int | None = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search", "rerank"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                value = whole_number(value)  # NumPy integers become int: FAISS's SWIG takes only int
            except TypeError:
                raise SearchParamsError(f"{name} must be a whole number, got {value!r}") from None
            object.__setattr__(self, name, value)
            if value < 1:
                raise SearchParamsError(f"{name} must be at least 1, got {value}")
        if self.rerank is not None and self.rerank > MAX_RERANK:
            raise SearchParamsError(f"rerank must be at most {MAX_RERANK}, got {self.rerank}")

    @property
    def is_default(self) -> bool:
        """True when no knob is set (the index's own are used)."""
        return self.nprobe is None and self.ef_search is None and self.rerank is None


DEFAULT_SEARCH = SearchParams()


def whole_number(value: object) -> int:
    """An int or a NumPy integer as an int; TypeError for anything else (a bool, a float, a
    string), which a count given as True or 2.0 always is by mistake."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a whole number")
    return operator.index(value)  # type: ignore[arg-type]
