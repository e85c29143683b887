"""What a query is and how documents are scored against it.

- Query arithmetic: terms (text or image, each with a weight; subtractions have negative
  weights) are encoded, L2-normalised, summed with their weights and renormalised: the weighted
  late fusion of normalised embeddings. `a beach --add 2:sunset --subtract people` is
  normalise(e("a beach") + 2 e("sunset") - e("people")).
- Hybrid documents: a sentence query scores an image that has its own text as
  (1 - w) * image similarity + w * own-text similarity (indexer.indexing.calibration.FUSION_RULE; the
  "lift" rule, max(image, that), is kept for measurement). The own-text similarity is first
  shifted by the index's calibration so unrelated texts and unrelated images score alike on
  average (the modality gap). An image without own text keeps its image similarity.
- Relevance: a hit's score against the random-pair distribution recorded at index time.

Pure functions over vectors and VectorStores; the Engine wires them to an index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from indexer.errors import InvalidInputError
from indexer.indexing.calibration import (
    FUSION_ALIGN,
    FUSION_RULE,
    Calibration,
    FusionAlign,
    FusionRule,
    ScoreStats,
    fuse_scores,
)
from indexer.store.vectors import VectorStore

TermKind = Literal["text", "image"]
TERM_KINDS: tuple[str, ...] = ("text", "image")
# Measured on the sample corpus (benchmarks/FUSION.md): the best text->image recall among the
# weights that leave images without own text at least as well found as image-only retrieval.
DEFAULT_TEXT_WEIGHT = 0.2
# Each modality contributes this many candidates per wanted hit (at least MIN_CANDIDATES) to
# the union that is scored exactly; a document outside both pools cannot be found.
CANDIDATE_FACTOR = 4
MIN_CANDIDATES = 256
# A combined query vector shorter than this is the terms cancelling out, not a direction.
MIN_COMBINED_NORM = 1e-4
WEIGHT_SEPARATOR = ":"


class QuerySpecError(InvalidInputError):
    """A query that cannot be built as given (bad weight, nothing to add, terms cancel out)."""


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query: a sentence or an image (path or PIL image) with a non-zero weight."""

    kind: TermKind
    value: str | Path | Image.Image
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TERM_KINDS:
            raise QuerySpecError(f"a query term is text or image, not {self.kind!r}")
        if not math.isfinite(self.weight) or self.weight == 0:
            raise QuerySpecError(f"a term's weight must be a non-zero number, not {self.weight}")


def parse_weighted(spec: str, *, flag: str = "--add") -> tuple[float, str]:
    """`2:sunset` -> (2.0, "sunset"); `sunset` -> (1.0, "sunset"). Weights are positive.

    Only a prefix that reads as a number is a weight, so `note: at noon` stays one sentence.
    """
    head, sep, rest = spec.partition(WEIGHT_SEPARATOR)
    try:
        weight = float(head) if sep else None
    except ValueError:
        weight = None
    if weight is None:
        if not spec.strip():
            raise QuerySpecError(f"{flag} needs a value, e.g. {flag} sunset or {flag} 2:sunset")
        return 1.0, spec
    if not rest.strip():
        raise QuerySpecError(f"{flag} {spec!r}: nothing after the weight (write {flag} 2:sunset)")
    if not math.isfinite(weight) or weight <= 0:
        raise QuerySpecError(
            f"{flag} {spec!r}: the weight must be a positive number (use --subtract to subtract)"
        )
    return weight, rest


def build_terms(
    query: str | None = None,
    image: str | Path | None = None,
    *,
    add: Sequence[str] = (),
    subtract: Sequence[str] = (),
    add_image: Sequence[str] = (),
    subtract_image: Sequence[str] = (),
) -> list[QueryTerm]:
    """The CLI's terms: the main sentence or image (weight 1), then W:VALUE additions and
    subtractions (subtractions get negative weights)."""
    terms = [QueryTerm("text", query)] if query is not None else []
    terms += [QueryTerm("image", image)] if image is not None else []
    for specs, kind, sign, flag in (
        (add, "text", 1.0, "--add"),
        (subtract, "text", -1.0, "--subtract"),
        (add_image, "image", 1.0, "--add-image"),
        (subtract_image, "image", -1.0, "--subtract-image"),
    ):
        for spec in specs:
            weight, value = _image_spec(spec, flag) if kind == "image" else parse_weighted(spec, flag=flag)
            terms.append(QueryTerm(kind, value, sign * weight))  # type: ignore[arg-type]
    return terms


def _image_spec(spec: str, flag: str) -> tuple[float, str]:
    """An image path, optionally `W:path`; an existing file named like `2:x.png` stays a path."""
    if Path(spec).expanduser().exists():
        return 1.0, spec
    return parse_weighted(spec, flag=flag)


def main_kind(terms: Sequence[QueryTerm]) -> TermKind:
    """The modality of the query: that of its first term (the sentence or the --image)."""
    if not terms:
        raise QuerySpecError("an empty query: give a sentence or an image")
    return terms[0].kind


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of normalised term vectors (n, dim), renormalised -> (dim,) float32."""
    if not any(w > 0 for w in weights):
        raise QuerySpecError(
            "a query needs something to look for: only subtractions were given "
            '(add a sentence, --add or --add-image, e.g. mmsearch search "a beach" --subtract people)'
        )
    rows = np.asarray(vectors, dtype=np.float64)  # (n, dim)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    total = np.asarray(weights, dtype=np.float64) @ rows  # (dim,)
    norm = float(np.linalg.norm(total))
    if norm < MIN_COMBINED_NORM:
        raise QuerySpecError("the query's terms cancel each other out: change the weights")
    return np.ascontiguousarray(total / norm, dtype=np.float32)


@dataclass(frozen=True)
class Scored:
    """Candidates best first: ids (n,) int64, final scores (n,) float32, and the parts.

    text_scores is NaN where the document has no own text (or fusion was off).
    """

    ids: np.ndarray
    scores: np.ndarray
    image_scores: np.ndarray
    text_scores: np.ndarray

    def keep(self, mask: np.ndarray) -> Scored:
        """The candidates where mask (n,) bool is true, order kept."""
        return Scored(self.ids[mask], self.scores[mask], self.image_scores[mask], self.text_scores[mask])


def plain(ids: np.ndarray, scores: np.ndarray) -> Scored:
    """One-modality results as Scored (no own-text part)."""
    return Scored(ids, scores, scores, np.full(len(ids), np.nan, np.float32))


def score_documents(
    vector: np.ndarray,
    images: VectorStore,
    doc_texts: VectorStore,
    k: int,
    *,
    text_weight: float,
    calibration: Calibration | None,
    allowed_ids: np.ndarray | None = None,
    align: FusionAlign = FUSION_ALIGN,
    rule: FusionRule = FUSION_RULE,
) -> Scored:
    """Top-k images for a query vector (dim,), fusing own-text similarity when there is any.

    Both indexes give a candidate pool; the union is scored exactly from reconstructed vectors.
    """
    pool = max(k * CANDIDATE_FACTOR, MIN_CANDIDATES)
    query = vector[None, :]
    by_image = images.search(query, pool if len(doc_texts) else k, allowed_ids=allowed_ids)[0]
    if text_weight <= 0 or len(doc_texts) == 0:
        return plain(by_image.ids[:k], by_image.scores[:k])
    by_text = doc_texts.search(query, pool, allowed_ids=allowed_ids)[0]
    ids = np.union1d(by_image.ids, by_text.ids)
    ids = ids[np.isin(ids, images.ids())]  # own text of an image a writer is still committing
    image_scores = _exact_scores(vector, images, ids, by_image.ids, by_image.scores)
    has_text = np.isin(ids, doc_texts.ids())
    text_scores = np.full(len(ids), np.nan, np.float32)
    text_scores[has_text] = _exact_scores(vector, doc_texts, ids[has_text], by_text.ids, by_text.scores)
    fused = fuse_scores(image_scores, text_scores, text_weight, calibration, align, rule)
    order = np.argsort(-fused, kind="stable")[:k]
    return Scored(ids[order], fused[order], image_scores[order], text_scores[order])


def _exact_scores(
    vector: np.ndarray,
    store: VectorStore,
    ids: np.ndarray,
    known_ids: np.ndarray,
    known_scores: np.ndarray,
) -> np.ndarray:
    """Inner products for ids (n,): from the search results when there, else reconstructed."""
    known = dict(zip(known_ids.tolist(), known_scores.tolist(), strict=True))
    scores = [
        known[i] if i in known else float(store.reconstruct(i) @ vector) for i in ids.tolist()
    ]
    return np.asarray(scores, dtype=np.float32)


@dataclass(frozen=True)
class Relevance:
    """How a hit compares with random pairs: z-score and whether it beats their 99th percentile."""

    z: float
    likely_relevant: bool


def judge(scored: Scored, null: ScoreStats, fused_null: ScoreStats | None) -> list[Relevance]:
    """Relevance per candidate: fused_null for documents scored with own text, null otherwise
    (and, without a fused calibration, a document with text is judged by its image score)."""
    verdicts = []
    for score, image_score, text_score in zip(
        scored.scores.tolist(), scored.image_scores.tolist(), scored.text_scores.tolist(), strict=True
    ):
        stats, value = null, score
        if not math.isnan(text_score):
            stats, value = (fused_null, score) if fused_null is not None else (null, image_score)
        verdicts.append(Relevance(round(stats.z(value), 2), value >= stats.p99))
    return verdicts


def cut(
    scored: Scored,
    relevance: list[Relevance] | None,
    *,
    min_score: float | None,
    relevant_only: bool,
) -> tuple[Scored, list[Relevance] | None]:
    """Drop candidates below min_score (raw score) and, if asked, those not likely relevant."""
    mask = np.ones(len(scored.ids), dtype=bool)
    if min_score is not None:
        mask &= scored.scores >= min_score
    if relevant_only and relevance is not None:
        mask &= np.array([r.likely_relevant for r in relevance], dtype=bool)
    kept = None if relevance is None else [r for r, m in zip(relevance, mask, strict=True) if m]
    return scored.keep(mask), kept
