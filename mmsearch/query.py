"""What a query is, as a value, and how its hits are judged and cut.

- `Query`: one search as a frozen value: the terms, the target (images or texts), k, a folder
  filter, the fusion (indexer.indexing.fusion) and the cut-offs. `Engine.search` answers it.
- Query arithmetic: terms (text or image, each with a weight; subtractions have negative
  weights) are encoded, L2-normalised, summed with their weights and renormalised: the weighted
  late fusion of normalised embeddings. `a beach --add 2:sunset --subtract people` is
  normalise(e("a beach") + 2 e("sunset") - e("people")).
- Hybrid documents: how an image's own text joins its pixels is the fusion policy, in
  indexer.indexing.fusion (used for sentence and image queries alike).
- Relevance: a hit's score against the random-pair distribution recorded at index time.

Pure functions over vectors; the Engine wires them to an index.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from indexer.errors import InvalidInputError
from indexer.indexing.fusion_spec import DEFAULT_TEXT_WEIGHT as DEFAULT_TEXT_WEIGHT  # kept importable here
from indexer.indexing.fusion_spec import Fusion, QueryModality, Scored
from indexer.store.search_params import SearchParams, whole_number

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from indexer.indexing.calibration import Calibration
    from indexer.indexing.score_stats import ScoreStats

TermKind = QueryModality
TERM_KINDS: tuple[str, ...] = ("text", "image")
Target = Literal["image", "text"]
TARGETS: tuple[str, ...] = ("image", "text")
DEFAULT_K = 10
# Guards against accidental huge requests; FAISS itself would happily return millions.
MAX_K = 1000
# A combined query vector shorter than this is the terms cancelling out, not a direction.
MIN_COMBINED_NORM = 1e-4
WEIGHT_SEPARATOR = ":"


class QuerySpecError(InvalidInputError):
    """A query that cannot be built as given (bad weight, nothing to add, terms cancel out)."""


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query with a non-zero weight: a sentence, or an image given as a path, a
    PIL image or the id (int) of an indexed image (its stored vector: nothing is decoded)."""

    kind: TermKind
    value: str | Path | Image.Image | int
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TERM_KINDS:
            raise QuerySpecError(f"a query term is text or image, not {self.kind!r}")
        if not math.isfinite(self.weight) or self.weight == 0:
            raise QuerySpecError(f"a term's weight must be a non-zero number, not {self.weight}")
        if isinstance(self.value, int) and (self.kind != "image" or isinstance(self.value, bool)):
            raise QuerySpecError("only an image term can be an indexed image's id")


@dataclass(frozen=True)
class Query:
    """One search, as a value: what to look for, what to return, how to score, what to drop.

    terms: combined into one query vector (query arithmetic); empty only when the caller brings
    the vector itself (Engine.search_vector). to: "image" (indexed images, fused with their own
    text) or "text" (indexed captions). under: only images below this folder (made absolute
    here, once). fusion: how images' own text counts (its method None: the index's recorded
    one). min_score drops hits below a raw score; relevant keeps only hits above the 99th
    percentile of random pairs recorded for the index.
    """

    terms: tuple[QueryTerm, ...]
    to: Target = "image"
    k: int = DEFAULT_K
    under: Path | None = None
    fusion: Fusion = field(default_factory=Fusion)
    min_score: float | None = None
    relevant: bool = False
    # Accuracy knobs of the image vector store (nprobe, ef_search); None: the index's tuned ones.
    search_params: SearchParams | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))
        if self.to not in TARGETS:
            raise QuerySpecError(f"to must be 'image' or 'text', not {self.to!r}")
        try:
            object.__setattr__(self, "k", whole_number(self.k))  # a NumPy integer becomes int
        except TypeError:
            raise QuerySpecError(f"k must be a whole number between 1 and {MAX_K}, got {self.k!r}") from None
        if not 1 <= self.k <= MAX_K:
            raise QuerySpecError(f"k must be between 1 and {MAX_K}, got {self.k}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise QuerySpecError(f"min_score must be a number, not {self.min_score}")
        if self.under is not None:
            object.__setattr__(self, "under", Path(os.path.abspath(self.under)))

    @property
    def modality(self) -> QueryModality:
        """What the query mainly is (its first term): decides the fusion channels and nulls."""
        return main_kind(self.terms)


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
    import numpy as np  # here, not at import: the CLI parses queries before any search

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
class Relevance:
    """How a hit compares with random pairs: z-score and whether it beats their 99th percentile."""

    z: float
    likely_relevant: bool


def relevance_of(
    scored: Scored, calibration: Calibration | None, *, modality: QueryModality, to: Target, fusion: Fusion
) -> list[Relevance] | None:
    """Each candidate's relevance against the random pairs of its kind; None when the index has
    no calibration for this kind of query. Fused documents are judged against fused scores (of
    the learned head when `fusion`, as the engine resolved it, is learned)."""
    if calibration is None:
        return None
    if to == "text":  # a caption is judged against random (query, caption) pairs
        null = calibration.text_image if modality == "image" else calibration.text_doc
        return None if null is None else judge(scored, null, None)
    null = calibration.text_image if modality == "text" else calibration.image_image
    if null is None:
        return None
    if fusion.method == "learned":
        fused_null = calibration.learned_fused
    else:
        fused_null = calibration.fused_null(modality, fusion.text_weight) if fusion.calibrated else None
    return judge(scored, null, fused_null)


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
    if min_score is None and not (relevant_only and relevance is not None):
        return scored, relevance  # nothing to drop: no copies per query
    import numpy as np

    mask = np.ones(len(scored.ids), dtype=bool)
    if min_score is not None:
        mask &= scored.scores >= min_score
    if relevant_only and relevance is not None:
        mask &= np.array([r.likely_relevant for r in relevance], dtype=bool)
    kept = None if relevance is None else [r for r, m in zip(relevance, mask, strict=True) if m]
    return scored.keep(mask), kept
