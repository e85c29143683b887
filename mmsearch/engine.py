"""Open an index and answer queries: text->image, image->image, image->text.

The engine never prints or exits; it raises EngineError subclasses whose messages say what to
do, and the CLI and HTTP layers turn them into exit codes and status codes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from indexer.errors import InvalidInputError, MMSearchError
from indexer.indexing.calibration import Calibration
from indexer.indexing.fusion import Fusion, FusionMethod
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
from indexer.models.fusion_head import FusionHead
from indexer.models.lazy import LazyEncoder
from indexer.models.spec import EncoderInfo, ModelLoadError, ModelSpec
from indexer.store import catalog
from indexer.store.backends import read_backends, vector_backend
from indexer.store.catalog import DocTextRow, ImageRow, TextRow
from indexer.store.index_dir import (
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

# Re-exported: the errors were defined here, and callers import them from here.
from mmsearch.errors import EngineError as EngineError
from mmsearch.errors import ImageNotFoundError, IndexUnavailableError, QueryError
from mmsearch.query import MAX_K as MAX_K  # importable from here, as before
from mmsearch.query import TERM_KINDS, Query, QueryTerm, Target, TermKind
from mmsearch.query_vectors import MAX_QUERY_CHARS as MAX_QUERY_CHARS
from mmsearch.query_vectors import checked_query_vector, query_text, query_vectors

# Re-exported: the result types were defined here, and callers import them from here.
from mmsearch.results import ImageHit as ImageHit
from mmsearch.results import IndexedImage as IndexedImage
from mmsearch.results import IndexStats as IndexStats
from mmsearch.results import SearchResults as SearchResults
from mmsearch.results import TextHit as TextHit
from mmsearch.searcher import Job, Searcher

if TYPE_CHECKING:
    from indexer.models.encoder import Encoder

__all__ = [
    "MAX_IMAGE_ID",
    "MAX_K",
    "MAX_QUERY_CHARS",
    "Engine",
    "EngineError",
    "ImageHit",
    "ImageNotFoundError",
    "IndexStats",
    "IndexUnavailableError",
    "IndexedImage",
    "QueryError",
    "SearchResults",
    "TextHit",
]

# SQLite INTEGER keys (and FAISS int64 ids) are signed 64-bit; a larger id cannot name a row.
MAX_IMAGE_ID = 2**63 - 1


class _UnusableModel:
    """Stands in for a model that is missing or no longer matches the index, so the index can
    still be described; every use raises the problem found when it was opened."""

    def __init__(self, info: IndexInfo, problem: str) -> None:
        self.info = EncoderInfo(info.model_kind, info.model_source, info.model_id, info.dim)
        self.problem = problem
        self.device = CPU  # where FAISS searches ready vectors; nothing is encoded

    def __getattr__(self, name: str) -> Any:
        raise IndexUnavailableError(self.problem)


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
        self._vectors = vector_backend(index_dir, self.backends)
        self._searcher = Searcher(
            index_dir,
            info,
            encoder.info,
            sql=self._sql,
            vectors=self._vectors,
            use_gpu=_faiss_on_gpu(device or Device.parse(getattr(encoder, "device", CPU))),
        )
        self._images = self._searcher.images  # stored vectors of image terms, stats

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
        self._searcher.close()
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
        jobs: list[Job] = []
        for query, vector in zip(queries, self._query_vectors(queries), strict=True):
            if isinstance(vector, MMSearchError):
                answers.append(vector)
            else:
                jobs.append(Job(vector, query.modality, query))
                answers.append(_PENDING)
        answered = iter(self._searcher.answer(jobs))
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
        return _raised(self._searcher.answer([Job(self.query_vector(vector), modality, spec)])[0])

    def query_vector(self, vector: np.ndarray | Sequence[float]) -> np.ndarray:
        """A caller's vector checked and made a query vector: (dim,) finite, L2-normalised float32."""
        return checked_query_vector(vector, dim=self.info.dim, model_id=self.info.model_id)

    def encode_terms(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """Weighted query terms -> (dim,) normalised query vector."""
        return _raised(self._query_vectors([Query(tuple(terms))])[0])

    def _query_vectors(self, queries: Sequence[Query]) -> list[np.ndarray | MMSearchError]:
        """Each query's (dim,) vector, or the error that refuses it (mmsearch.query_vectors)."""
        return query_vectors(
            queries,
            dim=self.info.dim,
            encode_texts=self._encode_sentences,
            encode_image=self._encode_image_term,
        )

    def _encode_sentences(self, texts: list[str]) -> np.ndarray:
        """Checked sentences -> (n, dim) query vectors, the weights loaded on first use."""
        self.load_model()
        return self.encoder.encode_texts(texts)

    def _encode_image_term(self, term: QueryTerm) -> np.ndarray:
        """An image term's (dim,) vector: an indexed image's stored one, or the image encoded."""
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

    def fusion_methods(self) -> tuple[str, ...]:
        """The fusion methods queries can ask for: learned only when the model has a usable head."""
        return self._searcher.fusion_methods()

    def fusion_head(self) -> FusionHead:
        """The model's learned fusion head (loaded once), or NoFusionHeadError naming the command
        that trains one."""
        return self._searcher.fusion_head()

    def calibration(self) -> Calibration | None:
        """The index's random-pair score calibration, or None (not computed, or an old index)."""
        return self._searcher.calibration()

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
        texts = [query_text(query) for query in queries]
        if not texts:
            return np.zeros((0, self.info.dim), np.float32)
        return self._encode_sentences(texts)

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
            text_vectors=len(self._searcher.texts.refresh()),
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


# The placeholder in search_batch's list for queries still being answered (replaced before return).
_PENDING = SearchResults([], None)
_Answer = TypeVar("_Answer")


def _raised(answer: _Answer | MMSearchError) -> _Answer:
    """A batch answer for a caller of one query: the answer, or its error raised."""
    if isinstance(answer, MMSearchError):
        raise answer
    return answer


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
