"""Open an index and answer queries: text->image, image->image, image->text.

The engine never prints or exits; it raises EngineError subclasses whose messages say what to
do, and the CLI and HTTP layers turn them into exit codes and status codes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from indexer.errors import InvalidInputError, MMSearchError, NotFoundError, UnavailableError
from indexer.indexing.calibration import Calibration, read_calibration
from indexer.indexing.fusion import FUSION_METHODS, Fusion, FusionMethod, Scored, plain, score_documents
from indexer.indexing.fusion_head import FusionHead, load_fusion_head
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
from indexer.models.encoder import Encoder, bundled_model_moved, load_encoder
from indexer.models.native import ModelLoadError
from indexer.store import catalog
from indexer.store.catalog import DocTextRow, ImageRow, TextRow
from indexer.store.index_dir import (
    DOC_TEXTS_FAISS,
    IMAGES_FAISS,
    TEXTS_FAISS,
    IndexInfo,
    IndexStoreError,
    check_compatible,
    index_files,
    read_index_info,
)
from indexer.store.vectors import VectorStore, VectorStoreError, to_search_device
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

MAX_QUERY_CHARS = 1000
# SQLite INTEGER keys (and FAISS int64 ids) are signed 64-bit; a larger id cannot name a row.
MAX_IMAGE_ID = 2**63 - 1
# A caller's query vector (search_vector) whose length is off 1 by more than this is
# renormalised; unit vectors (from encode_query_*, or POST /embed) are used bit for bit.
UNIT_TOLERANCE = 1e-3


class EngineError(MMSearchError):
    """Base class of errors the engine raises; the message is meant for the user."""


class IndexUnavailableError(EngineError, UnavailableError):
    """No index, or an index that cannot be used with the requested model."""


class QueryError(EngineError, InvalidInputError):
    """A query that cannot be answered as given (empty text, unreadable image, bad k)."""


class ImageNotFoundError(EngineError, NotFoundError):
    """No indexed image has the given id (never indexed, or removed since)."""


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
            out["relevance"] = [
                {"id": h.id, **asdict(r)} for h, r in zip(hits, self.relevance, strict=True)
            ]
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


class _Snapshot:
    """A FAISS file as loaded, reloaded when a writer has atomically replaced it.

    Safe to share between threads (the HTTP service queries from a thread pool): one thread
    reloads while the others keep answering from the snapshot they already have, so a reader
    never waits for a reload and N readers never load the same new file N times over.
    """

    def __init__(self, path: Path, dim: int, *, use_gpu: bool = False) -> None:
        self.path = path
        self.dim = dim
        self.use_gpu = use_gpu  # search a FAISS GPU copy when possible (see to_search_device)
        self.stamp: tuple[int, int] | None = None
        self.store = VectorStore.create(dim)
        self._reload_lock = threading.Lock()
        self.refresh()

    def refresh(self) -> VectorStore:
        """Reload if the file on disk is a different one than last time (cheap stat per query)."""
        if self._stamp() == self.stamp:
            return self.store
        if not self._reload_lock.acquire(blocking=False):
            return self.store  # another thread is loading the new file; answer from this one
        try:
            stamp = self._stamp()  # again under the lock: another thread may have just loaded it
            if stamp != self.stamp:
                # Store first, then stamp: a reader that sees the new stamp gets the new store.
                loaded = VectorStore.load(self.path, dim=self.dim)
                self.store = to_search_device(loaded, use_gpu=self.use_gpu)
                self.stamp = stamp
        finally:
            self._reload_lock.release()
        return self.store

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)


class Engine:
    """A read handle on one index plus the model that filled it. Use Engine.open()."""

    def __init__(self, index_dir: Path, info: IndexInfo, encoder: Encoder) -> None:
        self.index_dir = index_dir
        self.info = info
        self.encoder = encoder
        self._sql = catalog.open_catalog(index_dir, create=False)
        # An encoder on the GPU (--device cuda) means FAISS searches there too when it can.
        use_gpu = str(getattr(encoder, "device", "cpu")).startswith("cuda")
        self._images = _Snapshot(index_dir / IMAGES_FAISS, info.dim, use_gpu=use_gpu)
        self._texts = _Snapshot(index_dir / TEXTS_FAISS, info.dim, use_gpu=use_gpu)
        self._doc_texts = _Snapshot(index_dir / DOC_TEXTS_FAISS, info.dim, use_gpu=use_gpu)
        self._fusion_head: FusionHead | None = None
        self._head_lock = threading.Lock()

    @classmethod
    def open(
        cls, index_dir: Path | str, *, model: str | Path | None = None, device: str = "auto"
    ) -> Engine:
        """Open an index with its recorded model, or with `model` after checking it matches."""
        index_dir = Path(index_dir).expanduser().resolve()
        try:
            info = read_index_info(index_dir)
            encoder = _load_model(model if model is not None else info.model_source, device)
            check_compatible(info, encoder.info, index_dir)
        except (IndexStoreError, ModelLoadError, VectorStoreError) as exc:
            raise IndexUnavailableError(str(exc)) from exc
        return cls(index_dir, info, encoder)

    def close(self) -> None:
        """Release the SQLite connections."""
        self._sql.dispose()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------------

    def search(self, query: Query) -> SearchResults:
        """The one search: encode the terms into a query vector, score the documents (fusing
        their own text), judge each hit's relevance and apply the cut-offs. Every search_*
        method is a thin wrapper over this."""
        try:
            modality = query.modality
        except QuerySpecError as exc:
            raise QueryError(str(exc)) from exc
        return self._answer(self.encode_terms(query.terms), modality, query)

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
    ) -> list[ImageHit]:
        """Images best matching a sentence (only files below `under` when given); images with
        own text are scored on image and text together (indexer.indexing.fusion; `fusion`
        "linear" or "learned", default the index's)."""
        spec = _query(
            [QueryTerm("text", query)],
            k=k,
            under=under,
            text_weight=text_weight,
            min_score=min_score,
            relevant=relevant,
            fusion=fusion,
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
        return self._answer(self.query_vector(vector), modality, spec)

    def query_vector(self, vector: np.ndarray | Sequence[float]) -> np.ndarray:
        """A caller's vector checked and made a query vector: (dim,) finite, L2-normalised float32."""
        array = np.asarray(vector, dtype=np.float64)
        if array.shape != (self.info.dim,):
            raise QueryError(
                f"the query vector has shape {array.shape}; this index's model "
                f"({self.info.model_id}) makes vectors of {self.info.dim} numbers"
            )
        if not np.all(np.isfinite(array)):
            raise QueryError("the query vector holds values that are not finite numbers (NaN or infinity)")
        peak = float(np.max(np.abs(array)))
        if peak == 0.0:
            raise QueryError("the query vector is all zeros: it has no direction to search in")
        scaled = array / peak  # (dim,) largest entry 1: its norm cannot overflow or underflow
        norm = float(np.linalg.norm(scaled))
        if abs(peak * norm - 1.0) > UNIT_TOLERANCE:
            array = scaled / norm
        return np.ascontiguousarray(array, dtype=np.float32)

    def encode_terms(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """Weighted query terms -> (dim,) normalised query vector."""
        weights = [t.weight for t in terms]
        if not any(w > 0 for w in weights):  # refuse before encoding anything
            return self._combine(np.zeros((len(terms), self.info.dim), np.float32), weights)
        return self._combine(np.stack([self._encode_term(t) for t in terms]), weights)

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

    def _answer(self, vector: np.ndarray, modality: TermKind, query: Query) -> SearchResults:
        """Score, judge and cut for a query vector (dim,) float32 of the given modality."""
        calibration = self.calibration()
        if query.relevant and calibration is None:
            raise QueryError(
                f"{self.index_dir} has no score calibration yet, so relevance is unknown: run "
                f"`mmsearch calibrate --db {self.index_dir}` (or `mmsearch index` again)"
            )
        fusion, head = self._fusion_for(query.fusion, modality)
        scored = self._score(vector, modality, query, calibration, fusion=fusion, head=head)
        relevance = relevance_of(scored, calibration, modality=modality, to=query.to, fusion=fusion)
        if query.relevant and relevance is None:
            raise QueryError("this index's calibration does not cover this kind of query")
        scored, relevance = cut(scored, relevance, min_score=query.min_score, relevant_only=query.relevant)
        hits = self._hits(scored, query.to)
        if relevance is not None:
            by_id = dict(zip(scored.ids.tolist(), relevance, strict=True))
            relevance = [by_id[h.id] for h in hits]
        return SearchResults(hits, relevance)

    def _score(
        self,
        vector: np.ndarray,
        modality: TermKind,
        query: Query,
        calibration: Calibration | None,
        *,
        fusion: Fusion,
        head: FusionHead | None,
    ) -> Scored:
        if query.to == "text":
            result = self._texts.refresh().search(vector[None, :], query.k)[0]
            return plain(result.ids, result.scores)
        return score_documents(
            vector,
            self._images.refresh(),
            self._doc_texts.refresh(),
            query.k,
            fusion=fusion,
            channels=None if calibration is None else calibration.channels(modality),
            allowed_ids=None if query.under is None else self._ids_under(query.under),
            head=head,
        )

    def _fusion_for(self, fusion: Fusion, modality: TermKind) -> tuple[Fusion, FusionHead | None]:
        """The query's fusion with a concrete method (the index's when it names none), and the
        head that scores it: learned fusion is trained for sentences, so an image query under it
        uses the linear rule."""
        fusion = fusion.resolved(self.info.fusion)
        if fusion.method != "learned":
            return fusion, None
        head = self.fusion_head()
        if modality != head.config.query_modality:
            return replace(fusion, method="linear"), None
        return fusion, head

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

    def _hits(self, scored: Scored, to: Target) -> list[ImageHit] | list[TextHit]:
        ids = [int(i) for i in scored.ids]
        with Session(self._sql) as session:
            if to == "text":
                texts = catalog.text_rows(session, ids)
                return _ranked(
                    scored.ids, scored.scores, texts, lambda r, s, i, row: TextHit(r, s, i, row.text)
                )
            images = catalog.image_rows(session, ids)
        return _ranked(
            scored.ids, scored.scores, images, lambda r, s, i, row: ImageHit(r, s, i, row.path)
        )

    def _ids_under(self, folder: Path) -> np.ndarray:
        with Session(self._sql) as session:
            rows = catalog.images_under(session, str(folder))
        return np.array([row.id for row in rows], dtype=np.int64)

    def calibration(self) -> Calibration | None:
        """The index's random-pair score calibration, or None (not computed, or an old index)."""
        with Session(self._sql) as session:
            return read_calibration(session)

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
        texts = [(query or "").strip() for query in queries]
        for text in texts:
            if not text:
                raise QueryError('empty query: give a sentence, e.g. mmsearch search "a red star"')
            if len(text) > MAX_QUERY_CHARS:
                raise QueryError(f"query longer than {MAX_QUERY_CHARS} characters")
        if not texts:
            return np.zeros((0, self.info.dim), np.float32)
        return self.encoder.encode_texts(texts)

    def encode_query_image(self, image: str | Path | Image.Image) -> np.ndarray:
        """An image file or PIL image -> (dim,) normalised query vector."""
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
        with Session(self._sql) as session:
            images = catalog.count(session, ImageRow)
            texts = catalog.count(session, TextRow)
        return IndexStats(
            index_dir=str(self.index_dir),
            model_kind=self.info.model_kind,
            model_source=self.info.model_source,
            model_id=self.info.model_id,
            dim=self.info.dim,
            index_type=self.info.index_type,
            images=images,
            texts=texts,
            image_vectors=len(self._images.refresh()),
            text_vectors=len(self._texts.refresh()),
            size_bytes=sum(p.stat().st_size for p in index_files(self.index_dir)),
            fusion=self.info.fusion or "linear",
        )


def _load_model(spec: str | Path, device: str) -> Encoder:
    source = str(bundled_model_moved(spec))
    if not source.startswith("openclip:") and not Path(source).exists():
        raise ModelLoadError(
            f"the model {source} recorded in this index is missing; pass --model DIR pointing at "
            "the same model, or rebuild the index"
        )
    return load_encoder(source, device=device)


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
        )
    except InvalidInputError as exc:
        raise QueryError(str(exc)) from exc


def _ranked(ids, scores, rows, make):  # type: ignore[no-untyped-def]
    """Hits in score order, skipping ids whose row a concurrent writer has not committed."""
    hits = []
    for id_, score in zip(ids, scores, strict=True):
        row = rows.get(int(id_))
        if row is not None:
            hits.append(make(len(hits) + 1, round(float(score), 4), int(id_), row))
    return hits
