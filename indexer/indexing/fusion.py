"""The fusion policy: how an image's own text (caption, sidecar, metadata) joins its pixels.

One module, because both sides need the same rule: indexing records the null distribution of
fused scores (calibration.py), the query side ranks with it (mmsearch.engine).

Two methods (`Fusion.method`, `--fusion linear|learned`):

- linear: a document with own text scores (1 - w) * image similarity + w * own-text similarity,
  with w = `Fusion.text_weight` (DEFAULT_TEXT_WEIGHT) and the own-text similarity first shifted
  onto the image scale by the difference of random-pair means (the modality gap).
- learned: a tiny gate trained with the model (indexer.models.fusion_head) picks, per query and
  candidate, the share of the own text, and aligns own-text similarities itself. It is trained
  for sentence queries; an image query uses the linear rule.

Under both, a document without own text keeps its image similarity: a missing modality is never
a penalty. Which similarities those are depends on the query: for a sentence, text/image and
text/text; for an image, image/image and image/text (`Channels`). An index records its method
(`mmsearch index --fusion`); a query without one uses the index's. Measured in
benchmarks/FUSION.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

# Re-exported: the plain values lived here before fusion_spec.py.
from indexer.indexing.fusion_spec import DEFAULT_FUSION_METHOD as DEFAULT_FUSION_METHOD
from indexer.indexing.fusion_spec import DEFAULT_TEXT_WEIGHT as DEFAULT_TEXT_WEIGHT
from indexer.indexing.fusion_spec import FUSION_ALIGN as FUSION_ALIGN
from indexer.indexing.fusion_spec import FUSION_METHODS as FUSION_METHODS
from indexer.indexing.fusion_spec import FUSION_RULE as FUSION_RULE
from indexer.indexing.fusion_spec import Fusion as Fusion
from indexer.indexing.fusion_spec import FusionAlign as FusionAlign
from indexer.indexing.fusion_spec import FusionError as FusionError
from indexer.indexing.fusion_spec import FusionMethod as FusionMethod
from indexer.indexing.fusion_spec import FusionRule as FusionRule
from indexer.indexing.fusion_spec import QueryModality as QueryModality
from indexer.indexing.fusion_spec import Scored as Scored
from indexer.indexing.score_stats import ScoreStats

if TYPE_CHECKING:
    from indexer.models.fusion_head import FusionHead
    from indexer.store.search_params import SearchParams
    from indexer.store.vectors import SearchResult, VectorStore

# Each modality contributes this many candidates per wanted hit (at least MIN_CANDIDATES) to
# the union that is scored exactly; a document outside both pools cannot be found.
CANDIDATE_FACTOR = 4
MIN_CANDIDATES = 256


@dataclass(frozen=True)
class Channels:
    """Random-pair score statistics of the two things a document is compared on, for one kind
    of query: its image (image) and its own text (text). Fusion aligns text onto image."""

    image: ScoreStats
    text: ScoreStats


def align_text_scores(text_scores: np.ndarray, channels: Channels | None, align: FusionAlign) -> np.ndarray:
    """Own-text scores (n,) mapped so random pairs score like random image pairs: in mean
    ("mean"), or in mean and std ("z"); unchanged without channels or with "none"."""
    if channels is None or align == "none":
        return text_scores
    image, text = channels.image, channels.text
    if align == "mean":
        return text_scores - text.mean + image.mean
    z = (text_scores - text.mean) / max(text.std, 1e-6)
    return image.mean + image.std * z


def mix(
    image_scores: np.ndarray, text_scores: np.ndarray, text_weight: float, rule: FusionRule
) -> np.ndarray:
    """The rule itself on aligned scores (n,): (1-w) * image + w * text ("lift": never below image)."""
    mixed = (1.0 - text_weight) * image_scores + text_weight * text_scores
    return np.maximum(image_scores, mixed) if rule == "lift" else mixed


def fuse_scores(
    image_scores: np.ndarray,
    text_scores: np.ndarray,
    fusion: Fusion,
    channels: Channels | None,
    *,
    head: FusionHead | None = None,
    query: np.ndarray | None = None,
) -> np.ndarray:
    """Fused scores (n,) float32 of documents; text_scores is NaN for documents without own
    text, which keep their image score unchanged. With a head (learned fusion), the query
    vector (dim,) is needed too and the head decides the mix."""
    if head is not None:
        if query is None:
            raise ValueError("learned fusion needs the query vector")
        return head.fuse(query, image_scores, text_scores)
    aligned = align_text_scores(text_scores, channels, fusion.align)
    fused = mix(image_scores, aligned, fusion.text_weight, fusion.rule)
    return np.where(np.isnan(text_scores), image_scores, fused).astype(np.float32)


def plain(ids: np.ndarray, scores: np.ndarray) -> Scored:
    """One-modality results as Scored (no own-text part)."""
    return Scored(ids, scores, scores, np.full(len(ids), np.nan, np.float32))


def score_documents(
    vector: np.ndarray,
    images: VectorStore,
    doc_texts: VectorStore,
    k: int,
    *,
    fusion: Fusion,
    channels: Channels | None,
    allowed_ids: np.ndarray | None = None,
    params: SearchParams | None = None,
    head: FusionHead | None = None,
) -> Scored:
    """Top-k documents for a query vector (dim,), fusing own-text similarity when there is any;
    with a head (learned fusion) the head mixes, else the linear rule of `fusion`.

    Both stores give a candidate pool; the union is scored exactly. The work is bounded by the
    pool size, never by the size of the collection: membership is looked up per candidate.
    """
    return score_documents_batch(
        vector[None, :],
        images,
        doc_texts,
        k,
        fusion=fusion,
        channels=[channels],
        allowed_ids=allowed_ids,
        params=params,
        head=head,
    )[0]


def score_documents_batch(
    vectors: np.ndarray,
    images: VectorStore,
    doc_texts: VectorStore,
    k: int,
    *,
    fusion: Fusion,
    channels: Sequence[Channels | None],
    allowed_ids: np.ndarray | None = None,
    params: SearchParams | None = None,
    head: FusionHead | None = None,
) -> list[Scored]:
    """score_documents for query vectors (n, dim) sharing k, fusion, head and filter: each
    store is searched once for all n (one FAISS batch), then each query is fused alone;
    channels[i] is query i's (queries of different modalities compare on different channels)."""
    pool = max(k * CANDIDATE_FACTOR, MIN_CANDIDATES)
    fuse = (head is not None or fusion.text_weight > 0) and len(doc_texts) > 0
    by_image = images.search(vectors, pool if fuse else k, allowed_ids=allowed_ids, params=params)
    if not fuse:
        return [plain(found.ids[:k], found.scores[:k]) for found in by_image]
    by_text = doc_texts.search(vectors, pool, allowed_ids=allowed_ids)
    return [
        _fuse_candidates(vector, images, doc_texts, k, found_image, found_text, fusion, query_channels, head)
        for vector, found_image, found_text, query_channels in zip(
            vectors, by_image, by_text, channels, strict=True
        )
    ]


def _fuse_candidates(
    vector: np.ndarray,
    images: VectorStore,
    doc_texts: VectorStore,
    k: int,
    by_image: SearchResult,
    by_text: SearchResult,
    fusion: Fusion,
    channels: Channels | None,
    head: FusionHead | None,
) -> Scored:
    """The union of one query's two candidate pools scored exactly and fused, top k first."""
    ids = np.union1d(by_image.ids, by_text.ids)
    image_scores = _candidate_scores(vector, images, ids, by_image)
    has_image = ~np.isnan(image_scores)  # own text of an image a writer is still committing
    ids, image_scores = ids[has_image], image_scores[has_image]
    text_scores = _candidate_scores(vector, doc_texts, ids, by_text)
    fused = fuse_scores(image_scores, text_scores, fusion, channels, head=head, query=vector)
    order = np.argsort(-fused, kind="stable")[:k]
    return Scored(ids[order], fused[order], image_scores[order], text_scores[order])


def _candidate_scores(
    vector: np.ndarray, store: VectorStore, ids: np.ndarray, found: SearchResult
) -> np.ndarray:
    """Inner products (n,) float32 of the query with each id's vector in store: from the search
    results when there, else reconstructed; NaN where the store holds no vector for the id."""
    known = dict(zip(found.ids.tolist(), found.scores.tolist(), strict=True))
    scores = np.full(len(ids), np.nan, np.float32)
    for position, id_ in enumerate(ids.tolist()):
        score = known.get(id_)
        if score is None:
            try:
                score = float(store.reconstruct(id_) @ vector)
            except KeyError:
                continue
        scores[position] = score
    return scores
