"""Query vectors to answers, the second half of a search (the first: mmsearch.query_vectors).

A batch of query vectors is grouped by what decides its FAISS searches, each group searched as
one batch (the image store fused with the images' own text, or the text store), each query's
candidates judged against the index's calibration and cut, and every hit named from the
catalogue rows read for the whole batch in one statement.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import Session

from indexer.errors import MMSearchError
from indexer.indexing.calibration import CALIBRATION_KEY, Calibration, parse_calibration
from indexer.indexing.fusion import FUSION_METHODS, Fusion, Scored, plain, score_documents_batch
from indexer.models.fusion_head import FusionHead, load_fusion_head
from indexer.models.spec import EncoderInfo
from indexer.store import catalog
from indexer.store.backends import VectorBackend
from indexer.store.catalog import HitRows
from indexer.store.hit_cache import HitRowCache
from indexer.store.index_dir import DOC_TEXTS, IMAGES, TEXTS, IndexInfo
from mmsearch.errors import QueryError
from mmsearch.query import Query, Relevance, Target, TermKind, cut, relevance_of
from mmsearch.results import SearchResults, ranked_hits
from mmsearch.snapshot import Snapshot

# A search whose catalogue read finds the calibration changed since the search began is answered
# again with the new one, at most this many times in all (computing one takes seconds: a change
# during the retry is a writer racing it, and that answer is then as fresh as any before).
CALIBRATION_ATTEMPTS = 3
# Resolved fusions a searcher remembers (callers pass a handful of distinct policies; a bound
# keeps a caller sweeping text weights from growing it without end).
RESOLVED_FUSIONS_KEPT = 64


class Job:
    """One query on its way to its answer: its vector (dim,) float32, unit length, and its
    fusion with the method resolved (Searcher.fusion_for; the query's own until then)."""

    __slots__ = ("fusion", "modality", "query", "vector")

    def __init__(
        self, vector: np.ndarray, modality: TermKind, query: Query, fusion: Fusion | None = None
    ) -> None:
        self.vector = vector
        self.modality = modality
        self.query = query
        self.fusion = query.fusion if fusion is None else fusion


_Judged = tuple[Scored, list[Relevance] | None]  # candidates after the cut-offs, their relevance
_NOT_SCORED = QueryError("not scored")  # a placeholder, replaced before judge_batch returns


class Searcher:
    """The index's three vector snapshots, its catalogue rows and its calibration, as searches
    read them. Safe to share between threads, like the snapshots and the hit cache it holds."""

    def __init__(
        self,
        index_dir: Path,
        info: IndexInfo,
        model: EncoderInfo,
        *,
        sql: SqlEngine,
        vectors: VectorBackend,
        use_gpu: bool,
    ) -> None:
        """model: the index's model, whose folder may hold a learned fusion head."""
        self.index_dir = index_dir
        self.info = info
        self.model = model
        self._sql = sql
        self._hit_cache = HitRowCache(sql)
        self.images = Snapshot(vectors, IMAGES, info.dim, use_gpu=use_gpu)
        self.texts = Snapshot(vectors, TEXTS, info.dim, use_gpu=use_gpu)
        self.doc_texts = Snapshot(vectors, DOC_TEXTS, info.dim, use_gpu=use_gpu)
        self._fusion_head: FusionHead | None = None
        self._resolved_fusions: dict[tuple[Fusion, TermKind], Fusion] = {}  # see fusion_for
        self._head_lock = threading.Lock()
        # The calibration the last search read (None: not read yet); every search reads it again
        # in its one catalogue statement and answers again if it changed (answer).
        self._calibration_seen: _SeenCalibration | None = None

    def close(self) -> None:
        """Release the hit cache's own catalogue connection."""
        self._hit_cache.close()

    def answer(self, jobs: Sequence[Job]) -> list[SearchResults | MMSearchError]:
        """Score, judge and cut each job's query vector; jobs that search alike share one
        FAISS batch and all share one catalogue statement. That statement also reads the
        calibration again: the cached one judged the search, and if it has changed since (a
        writer recalibrated) the search is answered again with the new one."""
        if not jobs:
            return []
        seen = self._calibration_seen or self._read_calibration()
        for _ in range(CALIBRATION_ATTEMPTS):
            judged = self._judge_batch(jobs, seen.calibration)
            rows = self._hit_rows(jobs, judged)
            if rows.info_value == seen.text:
                break
            seen = self._calibration_seen = _SeenCalibration(rows.info_value)
        return _results(jobs, judged, rows)

    def _judge_batch(
        self, jobs: Sequence[Job], calibration: Calibration | None
    ) -> list[_Judged | MMSearchError]:
        """Each job's candidates after relevance and cut-offs, or the error that refuses it."""
        resolved = list(jobs)  # each query's fusion made concrete below
        judged: list[_Judged | MMSearchError] = [_NOT_SCORED] * len(jobs)
        groups: dict[tuple[object, ...], list[int]] = {}
        for position, job in enumerate(resolved):
            if job.query.relevant and calibration is None:
                judged[position] = QueryError(
                    f"{self.index_dir} has no score calibration yet, so relevance is unknown: run "
                    f"`mmsearch calibrate --db {self.index_dir}` (or `mmsearch index` again)"
                )
                continue
            try:
                fusion = self.fusion_for(job.query.fusion, job.modality)
            except MMSearchError as exc:
                judged[position] = exc
                continue
            # The resolved method is part of the search key: learned and linear never share a batch.
            resolved[position] = job = Job(job.vector, job.modality, job.query, fusion)
            groups.setdefault(_search_key(job), []).append(position)
        for members in groups.values():
            group = [resolved[i] for i in members]
            for position, job, scored in zip(members, group, self._score(group, calibration), strict=True):
                try:
                    judged[position] = _judge(scored, job, calibration)
                except QueryError as exc:
                    judged[position] = exc
        return judged

    def _score(self, jobs: Sequence[Job], calibration: Calibration | None) -> list[Scored]:
        """Candidates for jobs that search alike (one _search_key, fusion resolved by
        `fusion_for`): one FAISS batch per store."""
        query, fusion = jobs[0].query, jobs[0].fusion
        vectors = np.stack([job.vector for job in jobs])  # (n, dim) float32
        if query.to == "text":
            found = self.texts.refresh().search(vectors, query.k)
            return [plain(result.ids, result.scores) for result in found]
        return score_documents_batch(
            vectors,
            self.images.refresh(),
            self.doc_texts.refresh(),
            query.k,
            fusion=fusion,
            channels=[None if calibration is None else calibration.channels(job.modality) for job in jobs],
            allowed_ids=None if query.under is None else self.ids_under(query.under),
            params=query.search_params,
            head=self.fusion_head() if fusion.method == "learned" else None,
        )

    def fusion_for(self, fusion: Fusion, modality: TermKind) -> Fusion:
        """The query's fusion with a concrete method (the index's when it names none): learned
        fusion is trained for sentences, so an image query under it uses the linear rule. Asking
        for learned fusion without a usable head raises (NoFusionHeadError, FusionHeadError).
        Remembered per (fusion, modality): the answer never changes for an open index."""
        key = (fusion, modality)
        known = self._resolved_fusions.get(key)
        if known is None:
            known = fusion.resolved(self.info.fusion)
            if known.method == "learned" and modality != self.fusion_head().config.query_modality:
                known = replace(known, method="linear")
            if len(self._resolved_fusions) < RESOLVED_FUSIONS_KEPT:
                self._resolved_fusions[key] = known
        return known

    def fusion_methods(self) -> tuple[str, ...]:
        """The fusion methods queries can ask for: learned only when the model has a usable head."""
        try:
            self.fusion_head()
        except MMSearchError:
            return ("linear",)
        return FUSION_METHODS

    def fusion_head(self) -> FusionHead:
        """The model's learned fusion head (loaded once), or NoFusionHeadError naming the command
        that trains one."""
        with self._head_lock:
            if self._fusion_head is None:
                self._fusion_head = load_fusion_head(self.model.source, self.model.model_id)
            return self._fusion_head

    def _hit_rows(self, jobs: Sequence[Job], judged: Sequence[_Judged | MMSearchError]) -> HitRows:
        """The catalogue rows of every job's candidates and the calibration, in one statement."""
        wanted: dict[Target, set[int]] = {"image": set(), "text": set()}
        for job, outcome in zip(jobs, judged, strict=True):
            if not isinstance(outcome, MMSearchError):
                wanted[job.query.to].update(outcome[0].ids.tolist())
        return self._hit_cache.read(
            image_ids=sorted(wanted["image"]),
            text_ids=sorted(wanted["text"]),
            info_key=CALIBRATION_KEY,
        )

    def ids_under(self, folder: Path) -> np.ndarray:
        """The ids an IDSelector restricts a search to: one range query on the path index."""
        with Session(self._sql) as session:
            ids = catalog.image_ids_under(session, str(folder))
        return np.asarray(ids, dtype=np.int64)

    def calibration(self) -> Calibration | None:
        """The index's random-pair score calibration, or None (not computed, or an old index)."""
        return self._read_calibration().calibration

    def _read_calibration(self) -> _SeenCalibration:
        """The calibration as stored now, remembered for the next search."""
        with self._sql.connect() as connection:
            seen = _SeenCalibration(catalog.read_info_value(connection, CALIBRATION_KEY))
        self._calibration_seen = seen
        return seen


class _SeenCalibration:
    """The calibration row's text as a search read it (None: no row) and the calibration in it."""

    __slots__ = ("calibration", "text")

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.calibration: Calibration | None = parse_calibration(text)


def _search_key(job: Job) -> tuple[object, ...]:
    """What decides a job's FAISS searches: its query but for the terms and the cut-offs (which
    only drop hits afterwards), with the fusion resolved. Jobs with equal keys are searched as
    one batch. A tuple, not a Query: replace() would validate the query again on every search."""
    query = job.query
    return (query.to, query.k, query.under, job.fusion, query.search_params)


def _judge(scored: Scored, job: Job, calibration: Calibration | None) -> _Judged:
    """Each candidate's relevance, then the cut-offs; QueryError when relevance was asked for
    and the calibration does not cover this kind of query."""
    query = job.query
    relevance = relevance_of(scored, calibration, modality=job.modality, to=query.to, fusion=job.fusion)
    if query.relevant and relevance is None:
        raise QueryError("this index's calibration does not cover this kind of query")
    return cut(scored, relevance, min_score=query.min_score, relevant_only=query.relevant)


def _results(
    jobs: Sequence[Job], judged: Sequence[_Judged | MMSearchError], rows: HitRows
) -> list[SearchResults | MMSearchError]:
    """Judged candidates as hits, named from the catalogue rows read for them."""
    results: list[SearchResults | MMSearchError] = []
    for job, outcome in zip(jobs, judged, strict=True):
        if isinstance(outcome, MMSearchError):
            results.append(outcome)
            continue
        scored, relevance = outcome
        hits = ranked_hits(scored, job.query.to, rows)
        if relevance is not None and len(hits) < len(relevance):  # a row not yet committed
            by_id = dict(zip(scored.ids.tolist(), relevance, strict=True))
            relevance = [by_id[h.id] for h in hits]
        results.append(SearchResults(hits, relevance))
    return results
