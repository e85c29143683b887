"""An index directory: the SQLite catalogue, one FAISS file per modality, and a writer lock.

Layout of INDEX_DIR:
    catalog.sqlite3   metadata and ids (WAL mode; -wal/-shm beside it while open)
    images.faiss      image vectors, ids = images.id (any kind: indexer.store.index_types)
    images.vectors    the same vectors at full precision, memory-mapped (indexer.store.raw_vectors):
                      what a rebuild into another index type reads instead of re-encoding
    texts.faiss       text vectors, ids = texts.id
    doc_texts.faiss   images' own-text vectors, ids = images.id (only images with own text)
    write.lock        held (flock) by the one writer; holds its PID
    backends.json     only when created with --vectors / --catalog: where vectors and the
                      catalogue live instead (indexer.store.backends); then the writer lock is a
                      PostgreSQL advisory lock when the catalogue is PostgreSQL

The same order holds for every backend: Milvus writes are idempotent upserts by id, durable when
acknowledged, and the catalogue commits last; reconcile repairs both directions the same way.

Commit order for crash safety: rows are inserted (ids assigned) inside a transaction, the
FAISS file is written atomically, then the transaction commits. A crash in between leaves FAISS
ids with no row; they are removed when the next writer opens the index (reconcile), and
readers ignore them. Rows without a vector are deleted too, so the next run encodes them again.
The full-precision records of new images are appended to images.vectors and fsynced before
images.faiss is written, so every id the FAISS file holds has its record; reconcile cuts a torn
or dead tail (records of a commit that never reached the FAISS file), writes the file from the
index when an older index has none, and treats an id without a record like a row without a
vector. A rebuild into another index type rewrites images.vectors (same live ids) before it
replaces images.faiss, so a crash between the two leaves a consistent pair.
An image's own-text vector is committed with its image vector (doc_texts.faiss is written after
images.faiss, before the transaction commits); reconcile drops own-text vectors without a row and
deletes images whose own-text row lost its vector, so the next run encodes both again.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from indexer.errors import ConflictError, ModelError, UnavailableError
from indexer.models.spec import EncoderInfo
from indexer.store import catalog
from indexer.store.advisory_lock import AdvisoryLock
from indexer.store.backends import (
    BACKENDS_FILE,
    Backends,
    VectorBackend,
    catalog_url,
    is_postgres,
    read_backends,
    vector_backend,
)
from indexer.store.catalog import ImageRow, TextRow
from indexer.store.raw_vectors import RawVectors
from indexer.store.vectors import INDEX_TYPE, VectorStore

IMAGES_FAISS = "images.faiss"
RAW_IMAGES = "images.vectors"  # raw_vectors.raw_path_for(images.faiss)
TEXTS_FAISS = "texts.faiss"
DOC_TEXTS_FAISS = "doc_texts.faiss"
LOCK_FILE = "write.lock"
IMAGES, TEXTS, DOC_TEXTS = "images", "texts", "doc_texts"  # store names in every backend
FUSION_KEY = "fusion"  # the index_info row recording the index's fusion method


class IndexStoreError(UnavailableError):
    """The index folder cannot be used as it is; the message says why and what to do."""


class IndexNotFoundError(IndexStoreError):
    """No index at the given directory."""


class IndexLockedError(IndexStoreError, ConflictError):
    """Another process is writing to this index."""


class IndexMismatchError(IndexStoreError, ModelError):
    """The index was built with another model or dimension, or a newer schema."""


@dataclass(frozen=True)
class IndexInfo:
    """What an index says about itself."""

    schema_version: int
    model_kind: str
    model_source: str
    model_id: str
    dim: int
    index_type: str
    created_at: float
    # How documents with own text are fused by default (indexer.indexing.fusion FUSION_METHODS);
    # None for indexes from before the choice was recorded (they fuse linearly).
    fusion: str | None = None

    @classmethod
    def from_rows(cls, rows: dict[str, str]) -> IndexInfo:
        """Parse the index_info key/value rows."""
        return cls(
            schema_version=int(rows["schema_version"]),
            model_kind=rows["model_kind"],
            model_source=rows["model_source"],
            model_id=rows["model_id"],
            dim=int(rows["dim"]),
            index_type=rows.get("index_type", INDEX_TYPE),
            created_at=float(rows.get("created_at", "0")),
            fusion=rows.get(FUSION_KEY),
        )

    def to_rows(self) -> dict[str, str]:
        """Key/value rows for index_info (a field not recorded has no row)."""
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}


def read_index_info(index_dir: Path) -> IndexInfo:
    """Read what an index records, or raise IndexNotFoundError with what to run."""
    try:
        engine = catalog.open_catalog(index_dir, create=False)
    except FileNotFoundError as exc:
        raise IndexNotFoundError(
            f"no index at {index_dir}: build one with `mmsearch index PHOTO_DIR --db {index_dir}`"
        ) from exc
    try:
        with Session(engine) as session:
            rows = catalog.read_info(session)
    except ProgrammingError as exc:  # a catalogue database with no tables yet
        raise IndexNotFoundError(
            f"no index in the catalogue of {index_dir}: build one with `mmsearch index PHOTO_DIR "
            f"--db {index_dir}`"
        ) from exc
    except OperationalError as exc:
        raise IndexStoreError(f"the catalogue of {index_dir} cannot be reached: {exc.orig}") from exc
    finally:
        engine.dispose()
    if "schema_version" not in rows:
        raise IndexNotFoundError(f"{index_dir} holds no finished index; run `mmsearch index` again")
    info = IndexInfo.from_rows(rows)
    if info.schema_version > catalog.SCHEMA_VERSION:
        raise IndexMismatchError(
            f"{index_dir} uses schema {info.schema_version}; this mmsearch reads up to "
            f"{catalog.SCHEMA_VERSION}: upgrade mmsearch"
        )
    return info


def index_exists(index_dir: Path) -> bool:
    """True when the folder holds a finished index (in whichever catalogue it records)."""
    try:
        read_index_info(index_dir)
    except IndexNotFoundError:
        return False
    return True


class WriterLock:
    """An exclusive flock on INDEX_DIR/write.lock; the file carries the holder's PID."""

    def __init__(self, index_dir: Path) -> None:
        self.path = index_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise IndexLockedError naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IndexLockedError(
                f"index is locked by PID {holder} (another `mmsearch index` is writing); "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (also dropped by the OS if the process dies)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class IndexWriter:
    """The one process allowed to change an index; use as a context manager."""

    def __init__(
        self,
        index_dir: Path,
        encoder_info: EncoderInfo | None,
        *,
        new_index_info: Mapping[str, str] | None = None,
    ) -> None:
        """encoder_info None: edit an existing index without a model (e.g. removals);
        new_index_info: further index_info rows (e.g. its index type policy) written in the
        same transaction that creates an index."""
        self.index_dir = index_dir
        self.encoder_info = encoder_info
        self.new_index_info = dict(new_index_info or {})
        self.backends = read_backends(index_dir)
        self.lock = writer_lock(index_dir, self.backends)
        self.vectors: VectorBackend = vector_backend(index_dir, self.backends)
        self.engine: SqlEngine | None = None
        self.images = VectorStore.create(1)
        self.texts = VectorStore.create(1)
        self.doc_texts = VectorStore.create(1)
        self.repaired = 0
        self.created = False  # this writer wrote the index's first info rows

    def __enter__(self) -> IndexWriter:
        if self.encoder_info is None:
            read_index_info(self.index_dir)  # must exist: raises IndexNotFoundError otherwise
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._open()
        except BaseException:
            if self.engine is not None:
                self.engine.dispose()
            self.vectors.close()
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self._tune()
        finally:
            if self.engine is not None:
                self.engine.dispose()
            self.vectors.close()
            self.lock.release()

    def _tune(self) -> None:
        """Let the vector backend adapt the image index to its size, and record what it chose."""
        described = self.vectors.tune(self.images)
        if described is not None:
            with self.session() as session:
                catalog.write_info(session, {"index_type": described})
                session.commit()

    def _open(self) -> None:
        self.vectors.clear_interrupted()  # we hold the lock: no save is in flight
        self.engine = catalog.open_catalog(self.index_dir, create=True)
        with Session(self.engine) as session:
            rows = catalog.read_info(session)
            if rows:
                info = IndexInfo.from_rows(rows)
                if self.encoder_info is not None:
                    check_compatible(info, self.encoder_info, self.index_dir)
                dim = info.dim
            else:
                assert self.encoder_info is not None
                dim = self.encoder_info.dim
        self.images = self.vectors.load(IMAGES, dim)
        self.texts = self.vectors.load(TEXTS, dim)
        self.doc_texts = self.vectors.load(DOC_TEXTS, dim)
        if not rows:
            assert self.encoder_info is not None
            info = IndexInfo(
                catalog.SCHEMA_VERSION,
                self.encoder_info.kind,
                self.encoder_info.source,
                self.encoder_info.model_id,
                self.encoder_info.dim,
                self.images.describe(),
                time.time(),
            )
            with self.session() as session:
                catalog.write_info(session, {**self.new_index_info, **info.to_rows()})
                session.commit()
            self.created = True
        self.repaired = self._reconcile()

    def session(self) -> Session:
        """A new session on the catalogue."""
        assert self.engine is not None, "use IndexWriter as a context manager"
        return Session(self.engine)

    def _reconcile(self) -> int:
        """Make FAISS and SQLite agree after a crash; returns how many ids were repaired."""
        repaired = 0
        with self.session() as session:
            for table, store, name in (
                (ImageRow, self.images, IMAGES),
                (TextRow, self.texts, TEXTS),
            ):
                rows = catalog.all_ids(session, table)
                vectors = set(self.ids_of(store))
                orphans = sorted(vectors - rows)
                missing = sorted(rows - vectors)
                if orphans:
                    store.remove(orphans)
                    self.vectors.save(name, store)
                if missing:
                    ids = list(missing)
                    if table is ImageRow:
                        catalog.delete_images(session, ids)
                    else:
                        catalog.delete_texts(session, ids)
                    session.commit()
                repaired += len(orphans) + len(missing)
        return repaired + self._reconcile_raw() + self._reconcile_doc_texts()

    def _reconcile_raw(self) -> int:
        """Make images.vectors cover exactly the live image ids (see the module docstring);
        returns how many live ids lost their vector for want of a record (their rows go too)."""
        raw = getattr(self.images, "raw", None)
        if not isinstance(raw, RawVectors):
            return 0  # a backend that keeps no full-precision file (Milvus keeps its own)
        live = self.images.ids()
        if not raw.exists() and len(live):
            # An index from before images.vectors (or one whose file was deleted: a compressed
            # kind then keeps its decoded codes, the best left to rebuild from).
            raw.write_all(live, self.images.index_vectors(live))
            return 0
        raw.trim(live)
        lost = live[raw.positions(live) < 0]
        if len(lost) == 0:
            return 0
        self.images.remove(lost)
        self.vectors.save(IMAGES, self.images)
        with self.session() as session:
            catalog.delete_images(session, [int(i) for i in lost])
            session.commit()
        return len(lost)

    def _reconcile_doc_texts(self) -> int:
        """After images are consistent: drop own-text vectors without a row (their image is gone
        or never committed); an own-text row without a vector takes its image out, to re-encode."""
        with self.session() as session:
            rows = catalog.all_doc_text_ids(session)
            vectors = set(self.ids_of(self.doc_texts))
            orphans = sorted(vectors - rows)
            missing = sorted(rows - vectors)
            if orphans:
                self.doc_texts.remove(orphans)
                self.vectors.save(DOC_TEXTS, self.doc_texts)
            if missing:
                self.images.remove(missing)
                self.vectors.save(IMAGES, self.images)
                catalog.delete_images(session, missing)  # cascades to the own-text rows
                session.commit()
        return len(orphans) + len(missing)

    @staticmethod
    def ids_of(store: VectorStore) -> list[int]:
        """Stored ids as Python ints."""
        return [int(i) for i in store.ids()]

    def commit_vectors(
        self,
        session: Session,
        *,
        images: tuple[list[int], np.ndarray] | None = None,
        texts: tuple[list[int], np.ndarray] | None = None,
        removed_images: list[int] | None = None,
        removed_texts: list[int] | None = None,
        doc_texts: tuple[list[int], np.ndarray] | None = None,
        removed_doc_texts: list[int] | None = None,
    ) -> None:
        """Apply vector changes, make them durable (FAISS: atomic file write; Milvus: acknowledged
        upserts), then commit the SQL transaction.

        Removing an image also removes its own-text vector; `doc_texts` are (image ids, own-text
        vectors (n, dim) float32) and `removed_doc_texts` drops own texts of images that stay.
        """
        if removed_images:
            self.images.remove(removed_images)
        if removed_texts:
            self.texts.remove(removed_texts)
        doc_changed = self.doc_texts.remove([*(removed_images or []), *(removed_doc_texts or [])])
        if images and images[0]:
            self.images.add(np.asarray(images[0], dtype=np.int64), images[1])
        if texts and texts[0]:
            self.texts.add(np.asarray(texts[0], dtype=np.int64), texts[1])
        if doc_texts and doc_texts[0]:
            self.doc_texts.add(np.asarray(doc_texts[0], dtype=np.int64), doc_texts[1])
            doc_changed += len(doc_texts[0])
        # An unchanged store is not rewritten: every rewrite makes open Engines reload it.
        if (images and images[0]) or removed_images:
            self.vectors.save(IMAGES, self.images)
        if (texts and texts[0]) or removed_texts:
            self.vectors.save(TEXTS, self.texts)
        if doc_changed:
            self.vectors.save(DOC_TEXTS, self.doc_texts)
        session.commit()


def check_compatible(info: IndexInfo, encoder: EncoderInfo, index_dir: Path) -> None:
    """Refuse to mix vectors of different models in one index."""
    if info.dim != encoder.dim:
        raise IndexMismatchError(
            f"{index_dir} holds {info.dim}-dimensional vectors from {info.model_source}; the model "
            f"{encoder.source} makes {encoder.dim}: drop --model to use the index's own model, or "
            "pick a new --db"
        )
    if info.model_id != encoder.model_id and info.model_source == encoder.source:
        raise IndexMismatchError(
            f"the model at {encoder.source} has changed since {index_dir} was built (weights "
            f"{info.model_id}, now {encoder.model_id}; an upgrade may have replaced the bundled "
            "model): re-index into a new --db, or give --model the weights the index was built with"
        )
    if info.model_id != encoder.model_id:
        raise IndexMismatchError(
            f"{index_dir} was built with model {info.model_id} ({info.model_source}), not "
            f"{encoder.model_id} ({encoder.source}): drop --model to use the index's own model, "
            "or pick a new --db"
        )


def index_files(index_dir: Path) -> list[Path]:
    """The files in the index folder that make up an index (for size on disk)."""
    names = [
        catalog.CATALOG_FILE,
        catalog.CATALOG_FILE + "-wal",
        IMAGES_FAISS,
        RAW_IMAGES,
        TEXTS_FAISS,
        DOC_TEXTS_FAISS,
        BACKENDS_FILE,
    ]
    return [index_dir / n for n in names if (index_dir / n).exists()]


def writer_lock(index_dir: Path, backends: Backends) -> WriterLock | AdvisoryLock:
    """The file lock, or a PostgreSQL advisory lock when the catalogue is PostgreSQL (so writers
    on different machines exclude each other)."""
    if is_postgres(backends):
        return AdvisoryLock(catalog_url(backends), locked_error=IndexLockedError)
    return WriterLock(index_dir)
