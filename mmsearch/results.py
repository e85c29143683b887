"""What a search and `mmsearch info` hand back: ranked hits, their relevance, an index's stats.

Plain frozen records whose field names are the --json and HTTP contract; the engine fills them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer.indexing.fusion_spec import Scored
    from indexer.store.catalog import HitRows
    from mmsearch.query import Relevance, Target


@dataclass(frozen=True)
class ImageHit:
    """One image result; field names match the --json output."""

    rank: int
    score: float
    id: int
    path: str


@dataclass(frozen=True)
class TextHit:
    """One text result; field names match the --json output."""

    rank: int
    score: float
    id: int
    text: str


@dataclass(frozen=True)
class IndexedImage:
    """One indexed file as the catalogue records it; size and mtime_ns are as of indexing."""

    id: int
    path: str
    root: str
    size: int
    mtime_ns: int
    width: int
    height: int


@dataclass(frozen=True)
class SearchResults:
    """Hits, and each hit's relevance (parallel to hits) when the index has a calibration."""

    hits: list[ImageHit] | list[TextHit]
    relevance: list[Relevance] | None

    def to_json(self) -> dict[str, object]:
        """{"results": [...]} as --json prints it, plus "relevance" when known."""
        hits: list[ImageHit | TextHit] = list(self.hits)
        out: dict[str, object] = {"results": [asdict(h) for h in hits]}
        if self.relevance is not None:
            out["relevance"] = [{"id": h.id, **asdict(r)} for h, r in zip(hits, self.relevance, strict=True)]
        return out


@dataclass(frozen=True)
class IndexStats:
    """What `mmsearch info` shows."""

    index_dir: str
    model_kind: str
    model_source: str
    model_id: str
    dim: int
    index_type: str
    images: int
    texts: int
    image_vectors: int
    text_vectors: int
    size_bytes: int
    fusion: str  # the fusion method queries use unless they ask for another
    vectors_at: str = "faiss files in the index folder"
    catalog_at: str = "sqlite in the index folder"
    # The image index's structure (read from the FAISS file), the policy that chose it, the
    # recall@10 against exact search measured when it was built (None: exact search) and the
    # memory budget `auto` chooses by (indexer.store.index_types).
    index_kind: str = "flat"
    index_params: dict[str, int | bool] | None = None
    index_policy: str = "auto"
    index_recall: float | None = None
    memory_budget: int | None = None


def ranked_hits(scored: Scored, to: Target, rows: HitRows) -> list[ImageHit] | list[TextHit]:
    """Scored candidates as ranked hits, from catalogue rows read beforehand."""
    if to == "text":
        return _ranked(scored.ids, scored.scores, rows.texts, TextHit)
    return _ranked(scored.ids, scored.scores, rows.paths, ImageHit)


def _ranked(ids, scores, names, make):  # type: ignore[no-untyped-def]
    """Hits in score order, skipping ids whose row a concurrent writer has not committed."""
    hits = []
    for id_, score in zip(ids.tolist(), scores.tolist(), strict=True):
        name = names.get(id_)
        if name is not None:
            hits.append(make(len(hits) + 1, round(score, 4), id_, name))
    return hits
