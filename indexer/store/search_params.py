"""Per-query accuracy knobs of a vector store, torch- and FAISS-free so a query value can hold
them without importing FAISS (the CLI's start-up stays light)."""

from __future__ import annotations

from dataclasses import dataclass

from indexer.errors import InvalidInputError


class SearchParamsError(InvalidInputError):
    """A search knob out of range (nprobe or ef_search below 1)."""


@dataclass(frozen=True)
class SearchParams:
    """Per-query accuracy knobs; None keeps what the index was built (and tuned) with.

    nprobe: inverted lists searched (ivf, sq8, ivfpq); ef_search: width of the HNSW graph walk.
    More of either raises recall and latency. Knobs a kind does not have are ignored.
    """

    nprobe: int | None = None
    ef_search: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("nprobe", self.nprobe), ("ef_search", self.ef_search)):
            if value is not None and value < 1:
                raise SearchParamsError(f"{name} must be at least 1, got {value}")


DEFAULT_SEARCH = SearchParams()
