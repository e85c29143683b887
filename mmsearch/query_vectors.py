"""Queries made query vectors, the first half of a search (the second: mmsearch.answering).

Every sentence of a batch of queries goes through the text tower in one forward pass; image terms
are encoded as they come; a query of several terms is their weighted sum. A caller's ready
vector is checked here too, so every vector a search scores with obeys the same contract:
(dim,) float32, finite, unit length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from indexer.errors import MMSearchError
from mmsearch.errors import QueryError
from mmsearch.query import Query, QuerySpecError, QueryTerm, combine

MAX_QUERY_CHARS = 1000
# A caller's query vector (search_vector) whose length is off 1 by more than this is
# renormalised; unit vectors (from encode_query_*, or POST /embed) are used bit for bit.
UNIT_TOLERANCE = 1e-3

EncodeTexts = Callable[[list[str]], np.ndarray]  # sentences -> (n, dim) unit vectors
EncodeImageTerm = Callable[[QueryTerm], np.ndarray]  # an image term -> (dim,) unit vector


@dataclass(frozen=True)
class TermPlan:
    """A query's terms as query_vectors encodes them: per term a vector already made (images)
    or the row of its sentence in the shared forward pass; the weights; its sentences."""

    parts: list[np.ndarray | int]
    weights: list[float]
    texts: list[str]


def query_vectors(
    queries: Sequence[Query], *, dim: int, encode_texts: EncodeTexts, encode_image: EncodeImageTerm
) -> list[np.ndarray | MMSearchError]:
    """Each query's (dim,) vector, or the error that refuses it (in its place, so one bad query
    never fails the others); every sentence of every query is encoded in one forward pass."""
    plans: list[TermPlan | MMSearchError] = []
    texts: list[str] = []  # the sentences of all queries, in order
    for query in queries:
        try:
            planned = plan_terms(query, dim=dim, first_text=len(texts), encode_image=encode_image)
        except MMSearchError as exc:
            plans.append(exc)
            continue
        plans.append(planned)
        texts += planned.texts
    encoded = encode_texts(texts) if texts else None  # (len(texts), dim)
    vectors: list[np.ndarray | MMSearchError] = []
    for plan in plans:
        if isinstance(plan, MMSearchError):
            vectors.append(plan)
            continue
        rows = [encoded[part] if isinstance(part, int) else part for part in plan.parts]  # type: ignore[index]
        if len(rows) == 1 and abs(float(rows[0].dot(rows[0])) - 1.0) <= UNIT_TOLERANCE:
            # One term (its weight is positive, see plan_terms) that is a unit vector (every
            # sentence; an image's unless reconstructed from compressed codes): used bit for
            # bit, as search_vector uses one.
            vectors.append(rows[0])
            continue
        try:
            vectors.append(combined(np.stack(rows), plan.weights))
        except QueryError as exc:
            vectors.append(exc)
    return vectors


def plan_terms(query: Query, *, dim: int, first_text: int, encode_image: EncodeImageTerm) -> TermPlan:
    """What a query's terms need: image terms encoded now, sentences checked and numbered from
    first_text for the shared forward pass. Raises as a search would, term by term."""
    try:
        query.modality  # noqa: B018  # an empty query is refused before anything else
    except QuerySpecError as exc:
        raise QueryError(str(exc)) from exc
    weights = [t.weight for t in query.terms]
    if not any(w > 0 for w in weights):  # refuse before encoding anything
        combined(np.zeros((len(weights), dim), np.float32), weights)
    parts: list[np.ndarray | int] = []
    texts: list[str] = []
    for term in query.terms:
        if term.kind == "text":
            parts.append(first_text + len(texts))
            texts.append(query_text(str(term.value)))
        else:
            parts.append(encode_image(term))
    return TermPlan(parts, weights, texts)


def combined(vectors: np.ndarray, weights: list[float]) -> np.ndarray:
    """mmsearch.query.combine, refusing as the engine refuses (QueryError)."""
    try:
        return combine(vectors, weights)
    except QuerySpecError as exc:
        raise QueryError(str(exc)) from exc


def query_text(query: str | None) -> str:
    """A sentence as the text tower gets it (stripped), or QueryError if empty or too long."""
    text = (query or "").strip()
    if not text:
        raise QueryError('empty query: give a sentence, e.g. mmsearch search "a red star"')
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query longer than {MAX_QUERY_CHARS} characters")
    return text


def checked_query_vector(vector: np.ndarray | Sequence[float], *, dim: int, model_id: str) -> np.ndarray:
    """A caller's vector checked and made a query vector: (dim,) finite, L2-normalised float32."""
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (dim,):
        raise QueryError(
            f"the query vector has shape {array.shape}; this index's model "
            f"({model_id}) makes vectors of {dim} numbers"
        )
    # Array methods rather than np.all / np.max / np.linalg.norm: the same numbers, without
    # their dispatch (a few microseconds of every search by vector).
    if not np.isfinite(array).all():
        raise QueryError("the query vector holds values that are not finite numbers (NaN or infinity)")
    peak = float(np.abs(array).max())
    if peak == 0.0:
        raise QueryError("the query vector is all zeros: it has no direction to search in")
    scaled = array / peak  # (dim,) largest entry 1: its norm cannot overflow or underflow
    norm = math.sqrt(scaled.dot(scaled))  # what np.linalg.norm computes for a 1-d array
    if abs(peak * norm - 1.0) > UNIT_TOLERANCE:
        array = scaled / norm
    return np.ascontiguousarray(array, dtype=np.float32)
