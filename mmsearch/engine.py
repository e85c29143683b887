"""Open an index and answer queries: text->image, image->image, image->text.

The engine never prints or exits; it raises EngineError subclasses whose messages say what to
do, and the CLI and HTTP layers turn them into exit codes and status codes.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from indexer.errors import InvalidInputError, MMSearchError, NotFoundError, UnavailableError
from indexer.indexing.calibration import CALIBRATION_KEY, Calibration, parse_calibration
from indexer.indexing.fusion import (
    FUSION_METHODS,
    Fusion,
    FusionMethod,
    Scored,
    plain,
    score_documents_batch,
)
from indexer.indexing.pipeline import (
    IndexOptions,
    IndexReport,
    TextsReport,
    add_texts,
    calibrate_index,
    index_folders,
    remove_images,
)
from indexer.media.images import ImageLoadError, open_image
from indexer.models.devices import AUTO, CPU, Device
from indexer.models.fusion_head import FusionHead, load_fusion_head
from indexer.models.lazy import LazyEncoder
from indexer.models.spec import EncoderInfo, ModelLoadError, ModelSpec
from indexer.store import catalog
from indexer.store.backends import read_backends, vector_backend
from indexer.store.catalog import DocTextRow, HitRows, ImageRow, TextRow
from indexer.store.hit_cache import HitRowCache
from indexer.store.index_dir import (
    DOC_TEXTS,
    IMAGES,
    TEXTS,
    IndexInfo,
    IndexStoreError,
    check_compatible,
    index_files,
    read_index_info,
)
from indexer.store.index_upkeep import IndexTypeRecord
from indexer.store.vectors import (
    SearchParams,
    VectorStore,
    VectorStoreError,
    gpu_available,
)
from mmsearch.query import MAX_K as MAX_K  # importable from here, as before
from mmsearch.query import (
    TERM_KINDS,
    Query,
    QuerySpecError,
    QueryTerm,
    Relevance,
    Target,
    TermKind,
    combine,
    cut,
    relevance_of,
)

# Re-exported: the result types were defined here, and callers import them from here.
from mmsearch.results import ImageHit as ImageHit
from mmsearch.results import IndexedImage as IndexedImage
from mmsearch.results import IndexStats as IndexStats
from mmsearch.results import SearchResults as SearchResults
from mmsearch.results import TextHit as TextHit
from mmsearch.results import ranked_hits
from mmsearch.snapshot import Snapshot

if TYPE_CHECKING:
    from indexer.models.encoder import Encoder

MAX_QUERY_CHARS = 1000
# SQLite INTEGER keys (and FAISS int64 ids) are signed 64-bit; a larger id cannot name a row.
MAX_IMAGE_ID = 2**63 - 1
# A caller's query vector (search_vector) whose length is off 1 by more than this is
# renormalised; unit vectors (from encode_query_*, or POST /embed) are used bit for bit.
UNIT_TOLERANCE = 1e-3
# A search whose catalogue read finds the calibration changed since the search began is answered
# again with the new one, at most this many times in all (computing one takes seconds: a change
# during the retry is a writer racing it, and that answer is then as fresh as any before).
CALIBRATION_ATTEMPTS = 3
# Resolved fusions an engine remembers (callers pass a handful of distinct policies; a bound
# keeps a caller sweeping text weights from growing it without end).
RESOLVED_FUSIONS_KEPT = 64


class EngineError(MMSearchError):
    """Base class of errors the engine raises; the message is meant for the user."""


class IndexUnavailableError(EngineError, UnavailableError):
    """No index, or an index that cannot be used with the requested model."""


class _UnusableModel:
    """Stands in for a model that is missing or no longer matches the index, so the index can
    still be described; every use raises the problem found when it was opened."""

    def __init__(self, info: IndexInfo, problem: str) -> None:
        self.info = EncoderInfo(info.model_kind, info.model_source, info.model_id, info.dim)
        self.problem = problem
        self.device = CPU  # where FAISS searches ready vectors; nothing is encoded

    def __getattr__(self, name: str) -> Any:
        raise IndexUnavailableError(self.problem)


class QueryError(EngineError, InvalidInputError):
    """A query that cannot be answered as given (empty text, unreadable image, bad k)."""


class ImageNotFoundError(EngineError, NotFoundError):
    """No indexed image has the given id (never indexed, or removed since)."""


class Engine:
    """A read handle on one index plus the model that filled it. Use Engine.open()."""

    def __init__(
        self, index_dir: Path, info: IndexInfo, encoder: Encoder, *, device: Device | None = None
    ) -> None:
        """device: where queries run (default: the encoder's own device)."""
        self.index_dir = index_dir
        self.info = info
        self.encoder = encoder
        self.backends = read_backends(index_dir)
        self._sql = catalog.open_catalog(index_dir, create=False)
        self._hit_cache = HitRowCache(self._sql)
        self._vectors = vector_backend(index_dir, self.backends)
        use_gpu = _faiss_on_gpu(device or Device.parse(getattr(encoder, "device", CPU)))
        self._images = Snapshot(self._vectors, IMAGES, info.dim, use_gpu=use_gpu)
        self._texts = Snapshot(self._vectors, TEXTS, info.dim, use_gpu=use_gpu)
        self._doc_texts = Snapshot(self._vectors, DOC_TEXTS, info.dim, use_gpu=use_gpu)
        self._fusion_head: FusionHead | None = None
        self._resolved_fusions: dict[tuple[Fusion, TermKind], Fusion] = {}  # see _fusion_for
        self._head_lock = threading.Lock()
        # The calibration the last search read (None: not read yet); every search reads it again
        # in its one catalogue statement and answers again if it changed (_answer_batch).
        self._calibration_seen: _SeenCalibration | None = None

    @classmethod
    def open(
        cls,
        index_dir: Path | str,
        *,
        model: ModelSpec | str | Path | None = None,
        device: Device | str = AUTO,
        check_model: bool = True,
    ) -> Engine:
        """Open an index with its recorded model, or with `model` after checking it matches.

        The model's weights load on the first query that needs encoding, so opening (for stats,
        or a search by a ready vector) imports no torch; a mismatched model is refused here.
        check_model=False opens the index even when its model is missing or has changed (to
        describe it: `mmsearch info`); then `model_problem` says what is wrong, and anything
        that needs the model raises that error.
        """
        index_dir = Path(index_dir).expanduser().resolve()
        target = Device.parse(device)
        try:
            info = read_index_info(index_dir)
        except (IndexStoreError, VectorStoreError) as exc:
            raise IndexUnavailableError(str(exc)) from exc
        try:
            spec = ModelSpec.parse(model) if model is not None else ModelSpec.from_recorded(info.model_source)
            encoder: Encoder = LazyEncoder(spec, device=target)
            check_compatible(info, encoder.info, index_dir)
        except (IndexStoreError, ModelLoadError, VectorStoreError) as exc:
            if check_model:
                raise IndexUnavailableError(str(exc)) from exc
            encoder = _UnusableModel(info, str(exc))
        return cls(index_dir, info, encoder, device=target)

    @property
    def model_problem(self) -> str | None:
        """Why the index's model cannot be used (opened with check_model=False), else None."""
        return self.encoder.problem if isinstance(self.encoder, _UnusableModel) else None

    def load_model(self) -> None:
        """Load the model's weights now instead of on the first query (a server does, so that a
        broken model stops it at start and the first request is not slow); a model that cannot
        load raises IndexUnavailableError, as Engine.open did when it loaded the model itself."""
        if isinstance(self.encoder, LazyEncoder):
            try:
                self.encoder.load()
            except ModelLoadError as exc:
                raise IndexUnavailableError(str(exc)) from exc

    def close(self) -> None:
        """Release the catalogue's and the vector store's connections."""
        self._hit_cache.close()
        self._sql.dispose()
        self._vectors.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------------

    def search(self, query: Query) -> SearchResults:
        """The one search: encode the terms into a query vector, score the documents (fusing
        their own text), judge each hit's relevance and apply the cut-offs. Every search_*
        method is a thin wrapper over this, and it is search_batch of one query."""
        return _raised(self.search_batch([query])[0])

    def search_batch(self, queries: Sequence[Query]) -> list[SearchResults | MMSearchError]:
        """Several searches at once, each answered as search() answers it alone: all their
        sentences go through the text tower in one forward pass, and queries that share a
        target, k, folder and fusion are searched as one FAISS batch. A query that cannot be
        answered gets its error in its place (like asyncio.gather(return_exceptions=True)), so
        one bad query never fails the others. Only errors meant for the user are returned so;
        anything else (a bug, a broken disk) raises for the whole batch."""
        answers: list[SearchResults | MMSearchError] = []
        jobs: list[_Job] = []
        for query, vector in zip(queries, self._query_vectors(queries), strict=True):
            if isinstance(vector, MMSearchError):
                answers.append(vector)
            else:
                jobs.append(_Job(vector, query.modality, query))
                answers.append(_PENDING)
        answered = iter(self._answer_batch(jobs))
        return [next(answered) if answer is _PENDING else answer for answer in answers]

    def search_text(
        self,
        query: str,
        k: int = 10,
        *,
        under: str | Path | None = None,
        text_weight: float | None = None,
        min_score: float | None = None,
        relevant: bool = False,
        fusion: FusionMethod | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> list[ImageHit]:
        """Images best matching a sentence (only files below `under` when given); images with
        own text are scored on image and text together (indexer.indexing.fusion; `fusion`
        "linear" or "learned", default the index's). nprobe / ef_search / rerank trade latency for
        recall on an approximate index (default: its tuned ones)."""
        spec = _query(
            [QueryTerm("text", query)],
            k=k,
            under=under,
            text_weight=text_weight,
            min_score=min_score,
            relevant=relevant,
            fusion=fusion,
            search_params=_search_params(nprobe, ef_search, rerank),
        )
        return self.search(spec).hits  # type: ignore[return-value]

    def search_image(
        self,
        image: str | Path | Image.Image,
        k: int = 10,
        to: Target = "image",
        *,
        under: str | Path | None = None,
        text_weight: float | None = None,
        min_score: float | None = None,
        relevant: bool = False,
        fusion: FusionMethod | None = None,
    ) -> list[ImageHit] | list[TextHit]:
        """Images similar to an image (to="image"; own texts fused as for a sentence), or texts
        describing it (to="text")."""
        spec = _query(
            [QueryTerm("image", image)],
            k=k,
            to=to,
            under=under,
            text_weight=text_weight,
            min_score=min_score,
            relevant=relevant,
            fusion=fusion,
        )
        return self.search(spec).hits

    def search_by_id(
        self,
        image_id: int,
        k: int = 10,
        to: Target = "image",
        *,
        under: str | Path | None = None,
        text_weight: float | None = None,
        min_score: float | None = None,
        relevant: bool = False,
        fusion: FusionMethod | None = None,
    ) -> list[ImageHit] | list[TextHit]:
        """Like search_image for an already indexed image, from its stored vector (no decoding)."""
        spec = _query(
            [QueryTerm("image", int(image_id))],
            k=k,
            to=to,
            under=under,
            text_weight=text_weight,
            min_score=min_score,
            relevant=relevant,
            fusion=fusion,
        )
        return self.search(spec).hits

    def search_texts(self, query: str, k: int = 10) -> list[TextHit]:
        """Indexed texts closest to a sentence (text -> text, both sides through the text tower)."""
        return self.search(_query([QueryTerm("text", query)], k=k, to="text")).hits  # type: ignore[return-value]

    def search_mixed(
        self,
        terms: Sequence[QueryTerm],
        k: int = 10,
        to: Target = "image",
        *,
        under: str | Path | None = None,
        text_weight: float | None = None,
        min_score: float | None = None,
        relevant: bool = False,
        fusion: FusionMethod | None = None,
    ) -> list[ImageHit] | list[TextHit]:
        """Query arithmetic: the weighted sum of the terms' normalised embeddings, renormalised."""
        return self.search_scored(
            terms,
            k,
            to,
            under=under,
            text_weight=text_weight,
            min_score=min_score,
            relevant=relevant,
            fusion=fusion,
        ).hits

    def search_scored(
        self,
        terms: Sequence[QueryTerm],
        k: int = 10,
        to: Target = "image",
        *,
        under: str | Path | None = None,
        text_weight: float | None = None,
        min_score: float | None = None,
        relevant: bool = False,
        fusion: FusionMethod | None = None,
    ) -> SearchResults:
        """search() with its fields as arguments: weighted terms, hits and their relevance."""
        spec = _query(
            terms,
            k=k,
            to=to,
            under=under,
            text_weight=text_weight,
            min_score=min_score,
            relevant=relevant,
            fusion=fusion,
        )
        return self.search(spec)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        to: Target = "image",
        *,
        modality: TermKind = "text",
        under: str | Path | None = None,
        text_weight: float | None = None,
        min_score: float | None = None,
        relevant: bool = False,
        fusion: FusionMethod | None = None,
    ) -> SearchResults:
        """Search with a ready query vector (dim,) (renormalised if it is not of unit length);
        `modality` (what the query is) picks the fusion channels and the random-pair
        distribution that judges it."""
        if modality not in TERM_KINDS:
            raise QueryError(f"modality must be 'text' or 'image', not {modality!r}")
        spec = _query(
            (),
            k=k,
            to=to,
            under=under,
            text_weight=text_weight,
            min_score=min_score,
            relevant=relevant,
            fusion=fusion,
        )
        return _raised(self._answer_batch([_Job(self.query_vector(vector), modality, spec)])[0])

    def query_vector(self, vector: np.ndarray | Sequence[float]) -> np.ndarray:
        """A caller's vector checked and made a query vector: (dim,) finite, L2-normalised float32."""
        array = np.asarray(vector, dtype=np.float64)
        if array.shape != (self.info.dim,):
            raise QueryError(
                f"the query vector has shape {array.shape}; this index's model "
                f"({self.info.model_id}) makes vectors of {self.info.dim} numbers"
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

    def encode_terms(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """Weighted query terms -> (dim,) normalised query vector."""
        return _raised(self._query_vectors([Query(tuple(terms))])[0])

    def _query_vectors(self, queries: Sequence[Query]) -> list[np.ndarray | MMSearchError]:
        """Each query's (dim,) vector, or the error that refuses it; every sentence of every
        query is encoded in one forward pass."""
        plans: list[_TermPlan | MMSearchError] = []
        texts: list[str] = []  # the sentences of all queries, in order
        for query in queries:
            try:
                planned = self._plan_terms(query, first_text=len(texts))
            except MMSearchError as exc:
                plans.append(exc)
                continue
            plans.append(planned)
            texts += planned.texts
        if texts:
            self.load_model()
        encoded = self.encoder.encode_texts(texts) if texts else None  # (len(texts), dim)
        vectors: list[np.ndarray | MMSearchError] = []
        for plan in plans:
            if isinstance(plan, MMSearchError):
                vectors.append(plan)
                continue
            rows = [encoded[part] if isinstance(part, int) else part for part in plan.parts]  # type: ignore[index]
            if len(rows) == 1 and abs(float(rows[0].dot(rows[0])) - 1.0) <= UNIT_TOLERANCE:
                # One term (its weight is positive, see _plan_terms) that is a unit vector (every
                # sentence; an image's unless reconstructed from compressed codes): used bit for
                # bit, as search_vector uses one.
                vectors.append(rows[0])
                continue
            try:
                vectors.append(self._combine(np.stack(rows), plan.weights))
            except QueryError as exc:
                vectors.append(exc)
        return vectors

    def _plan_terms(self, query: Query, *, first_text: int) -> _TermPlan:
        """What a query's terms need: image terms encoded now, sentences checked and numbered
        from first_text for the shared forward pass. Raises as search() would, term by term."""
        try:
            query.modality  # noqa: B018  # an empty query is refused before anything else
        except QuerySpecError as exc:
            raise QueryError(str(exc)) from exc
        weights = [t.weight for t in query.terms]
        if not any(w > 0 for w in weights):  # refuse before encoding anything
            self._combine(np.zeros((len(weights), self.info.dim), np.float32), weights)
        parts: list[np.ndarray | int] = []
        texts: list[str] = []
        for term in query.terms:
            if term.kind == "text":
                parts.append(first_text + len(texts))
                texts.append(_query_text(str(term.value)))
            else:
                parts.append(self._encode_term(term))
        return _TermPlan(parts, weights, texts)

    def _encode_term(self, term: QueryTerm) -> np.ndarray:
        if term.kind == "text":
            return self.encode_query_text(str(term.value))
        if isinstance(term.value, int):
            return self._indexed_vector(term.value)
        return self.encode_query_image(term.value)

    def _indexed_vector(self, image_id: int) -> np.ndarray:
        """An indexed image's stored vector (dim,) float32, or ImageNotFoundError."""
        self.get_image(image_id)  # a removed image keeps no row: ImageNotFoundError
        try:
            return self._images.refresh().reconstruct(image_id)
        except KeyError:
            raise ImageNotFoundError(f"no indexed image has id {image_id}") from None

    @staticmethod
    def _combine(vectors: np.ndarray, weights: list[float]) -> np.ndarray:
        try:
            return combine(vectors, weights)
        except QuerySpecError as exc:
            raise QueryError(str(exc)) from exc

    def _answer_batch(self, jobs: Sequence[_Job]) -> list[SearchResults | MMSearchError]:
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
        return self._results(jobs, judged, rows)

    def _judge_batch(
        self, jobs: Sequence[_Job], calibration: Calibration | None
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
                fusion = self._fusion_for(job.query.fusion, job.modality)
            except MMSearchError as exc:
                judged[position] = exc
                continue
            # The resolved method is part of the search key: learned and linear never share a batch.
            resolved[position] = job = _Job(job.vector, job.modality, job.query, fusion)
            groups.setdefault(_search_key(job), []).append(position)
        for members in groups.values():
            group = [resolved[i] for i in members]
            for position, job, scored in zip(members, group, self._score(group, calibration), strict=True):
                try:
                    judged[position] = _judge(scored, job, calibration)
                except QueryError as exc:
                    judged[position] = exc
        return judged

    def _score(self, jobs: Sequence[_Job], calibration: Calibration | None) -> list[Scored]:
        """Candidates for jobs that search alike (one _search_key, fusion resolved by
        `_fusion_for`): one FAISS batch per store."""
        query, fusion = jobs[0].query, jobs[0].fusion
        vectors = np.stack([job.vector for job in jobs])  # (n, dim) float32
        if query.to == "text":
            found = self._texts.refresh().search(vectors, query.k)
            return [plain(result.ids, result.scores) for result in found]
        return score_documents_batch(
            vectors,
            self._images.refresh(),
            self._doc_texts.refresh(),
            query.k,
            fusion=fusion,
            channels=[None if calibration is None else calibration.channels(job.modality) for job in jobs],
            allowed_ids=None if query.under is None else self._ids_under(query.under),
            params=query.search_params,
            head=self.fusion_head() if fusion.method == "learned" else None,
        )

    def _fusion_for(self, fusion: Fusion, modality: TermKind) -> Fusion:
        """The query's fusion with a concrete method (the index's when it names none): learned
        fusion is trained for sentences, so an image query under it uses the linear rule. Asking
        for learned fusion without a usable head raises (NoFusionHeadError, FusionHeadError).
        Remembered per (fusion, modality): the answer never changes for an open engine."""
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
                self._fusion_head = load_fusion_head(self.encoder.info.source, self.encoder.info.model_id)
            return self._fusion_head

    def _hit_rows(self, jobs: Sequence[_Job], judged: Sequence[_Judged | MMSearchError]) -> HitRows:
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

    @staticmethod
    def _results(
        jobs: Sequence[_Job],
        judged: Sequence[_Judged | MMSearchError],
        rows: HitRows,
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

    def _ids_under(self, folder: Path) -> np.ndarray:
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

    def calibrate(self) -> Calibration:
        """(Re)compute the calibration now (takes the writer lock)."""
        return calibrate_index(self.index_dir, self.encoder)

    def doc_text(self, image_id: int) -> str | None:
        """An indexed image's own text (caption, sidecar or metadata), or None."""
        try:
            with Session(self._sql) as session:
                row = session.get(DocTextRow, image_id)
        except OperationalError:
            return None  # an index from before own texts: no doc_texts table
        return None if row is None else row.text

    def encode_query_text(self, query: str) -> np.ndarray:
        """A sentence -> (dim,) normalised query vector."""
        return self.encode_query_texts([query])[0]

    def encode_query_texts(self, queries: Sequence[str]) -> np.ndarray:
        """Sentences -> (n, dim) normalised query vectors, encoded as one batch."""
        texts = [_query_text(query) for query in queries]
        if not texts:
            return np.zeros((0, self.info.dim), np.float32)
        self.load_model()
        return self.encoder.encode_texts(texts)

    def encode_query_image(self, image: str | Path | Image.Image) -> np.ndarray:
        """An image file or PIL image -> (dim,) normalised query vector."""
        self.load_model()
        if not isinstance(image, Image.Image):
            try:
                image = open_image(image, target_size=self.encoder.preprocess_config.image_size)
            except ImageLoadError as exc:
                raise QueryError(f"cannot use query image {exc}") from exc
        pixels = self.encoder.preprocess(image.convert("RGB")).unsqueeze(0)
        return self.encoder.encode_pixels(pixels)[0]

    # -- editing (takes the writer lock) ----------------------------------------------------

    def add(
        self,
        paths: Sequence[Path | str],
        *,
        options: IndexOptions = IndexOptions(),
        captions: Mapping[str | Path, str] | None = None,
    ) -> IndexReport:
        """Index (or refresh) folders into this index with its own model.

        captions {image path: text} give images their own text (it takes precedence over a
        sidecar .txt and the file's EXIF/XMP/IPTC description).
        """
        return index_folders(
            [Path(p) for p in paths],
            self.index_dir,
            self.encoder,
            options=options,
            captions={os.path.abspath(p): t for p, t in (captions or {}).items()},
        )

    def add_texts(self, texts: Sequence[str], *, source: str = "api") -> TextsReport:
        """Add captions for image->text search."""
        return add_texts(self.index_dir, self.encoder, texts, source=source)

    def remove(self, paths: Sequence[Path | str]) -> int:
        """Remove files (or everything under folders) from the index; returns how many."""
        return remove_images(self.index_dir, [Path(p) for p in paths])

    def remove_image(self, image_id: int) -> IndexedImage:
        """Remove one image by id (the file itself is untouched); returns what was removed."""
        image = self.get_image(image_id)
        if self.remove([image.path]) == 0:  # another writer removed it in between
            raise ImageNotFoundError(f"no indexed image has id {image_id}")
        return image

    # -- facts --------------------------------------------------------------------------------

    def get_image(self, image_id: int) -> IndexedImage:
        """The catalogue record of one indexed image, or ImageNotFoundError."""
        if not 0 < image_id <= MAX_IMAGE_ID:
            raise ImageNotFoundError(f"no indexed image has id {image_id}")
        with Session(self._sql) as session:
            row = session.get(ImageRow, image_id)
            if row is None:
                raise ImageNotFoundError(f"no indexed image has id {image_id}")
            return IndexedImage(
                id=row.id,
                path=row.path,
                root=row.root,
                size=row.size,
                mtime_ns=row.mtime_ns,
                width=row.width,
                height=row.height,
            )

    def stats(self) -> IndexStats:
        """Counts, model and size on disk."""
        store = self._images.refresh()
        kind = store.kind if isinstance(store, VectorStore) else "milvus"
        with Session(self._sql) as session:
            images = catalog.count(session, ImageRow)
            texts = catalog.count(session, TextRow)
            record = IndexTypeRecord.read(session, legacy_kind=store.kind if kind != "milvus" else "flat")
        return IndexStats(
            index_dir=str(self.index_dir),
            model_kind=self.info.model_kind,
            model_source=self.info.model_source,
            model_id=self.info.model_id,
            dim=self.info.dim,
            index_type=store.describe(),
            images=images,
            texts=texts,
            image_vectors=len(store),
            text_vectors=len(self._texts.refresh()),
            size_bytes=sum(p.stat().st_size for p in index_files(self.index_dir)),
            fusion=self.info.fusion or "linear",
            **self.backends.describe(),
            index_kind=kind,
            index_params=store.params() if isinstance(store, VectorStore) else None,
            index_policy=record.policy if kind != "milvus" else "milvus",
            index_recall=record.recall,
            memory_budget=record.budget(),
        )


def _faiss_on_gpu(device: Device) -> bool:
    """--device cuda searches a FAISS GPU copy (warning once when it cannot); auto does so when
    faiss sees a GPU, without importing torch to ask."""
    if device.is_auto:
        return gpu_available()
    return device.resolve().is_cuda


def _search_params(nprobe: int | None, ef_search: int | None, rerank: int | None) -> SearchParams | None:
    """The knobs as the vector store takes them; None when none is given."""
    if nprobe is None and ef_search is None and rerank is None:
        return None
    try:
        return SearchParams(nprobe=nprobe, ef_search=ef_search, rerank=rerank)
    except MMSearchError as exc:
        raise QueryError(str(exc)) from exc


class _Job:
    """One query on its way through search_batch: its vector (dim,) float32, unit length, and
    its fusion with the method resolved (_fusion_for; the query's own until then)."""

    __slots__ = ("fusion", "modality", "query", "vector")

    def __init__(
        self, vector: np.ndarray, modality: TermKind, query: Query, fusion: Fusion | None = None
    ) -> None:
        self.vector = vector
        self.modality = modality
        self.query = query
        self.fusion = query.fusion if fusion is None else fusion


@dataclass(frozen=True)
class _TermPlan:
    """A query's terms as search_batch encodes them: per term a vector already made (images)
    or the row of its sentence in the shared forward pass; the weights; its sentences."""

    parts: list[np.ndarray | int]
    weights: list[float]
    texts: list[str]


_Judged = tuple[Scored, list[Relevance] | None]  # candidates after the cut-offs, their relevance


class _SeenCalibration:
    """The calibration row's text as a search read it (None: no row) and the calibration in it."""

    __slots__ = ("calibration", "text")

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.calibration: Calibration | None = parse_calibration(text)


# Placeholders in search_batch's lists for queries still being answered (replaced before return).
_PENDING = SearchResults([], None)
_NOT_SCORED = QueryError("not scored")
_Answer = TypeVar("_Answer")


def _raised(answer: _Answer | MMSearchError) -> _Answer:
    """A batch answer for a caller of one query: the answer, or its error raised."""
    if isinstance(answer, MMSearchError):
        raise answer
    return answer


def _search_key(job: _Job) -> tuple[object, ...]:
    """What decides a job's FAISS searches: its query but for the terms and the cut-offs (which
    only drop hits afterwards), with the fusion resolved. Jobs with equal keys are searched as
    one batch. A tuple, not a Query: replace() would validate the query again on every search."""
    query = job.query
    return (query.to, query.k, query.under, job.fusion, query.search_params)


def _judge(scored: Scored, job: _Job, calibration: Calibration | None) -> _Judged:
    """Each candidate's relevance, then the cut-offs; QueryError when relevance was asked for
    and the calibration does not cover this kind of query."""
    query = job.query
    relevance = relevance_of(scored, calibration, modality=job.modality, to=query.to, fusion=job.fusion)
    if query.relevant and relevance is None:
        raise QueryError("this index's calibration does not cover this kind of query")
    return cut(scored, relevance, min_score=query.min_score, relevant_only=query.relevant)


def _query_text(query: str | None) -> str:
    """A sentence as the text tower gets it (stripped), or QueryError if empty or too long."""
    text = (query or "").strip()
    if not text:
        raise QueryError('empty query: give a sentence, e.g. mmsearch search "a red star"')
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query longer than {MAX_QUERY_CHARS} characters")
    return text


def _query(
    terms: Sequence[QueryTerm],
    *,
    k: int,
    to: Target = "image",
    under: str | Path | None = None,
    text_weight: float | None = None,
    min_score: float | None = None,
    relevant: bool = False,
    fusion: FusionMethod | None = None,
    search_params: SearchParams | None = None,
) -> Query:
    """The wrappers' arguments as a Query; what it refuses is a QueryError like the engine's."""
    try:
        return Query(
            tuple(terms),
            to=to,
            k=k,
            under=None if under is None else Path(under),
            fusion=Fusion.weighted(text_weight, fusion),
            min_score=min_score,
            relevant=relevant,
            search_params=search_params,
        )
    except InvalidInputError as exc:
        raise QueryError(str(exc)) from exc
