"""An index directory: the SQLite catalogue, one FAISS file per modality, and a writer lock.

Layout of INDEX_DIR:
    catalog.sqlite3   metadata and ids (WAL mode; -wal/-shm beside it while open)
    images.faiss      image vectors, ids = images.id
    texts.faiss       text vectors, ids = texts.id
    doc_texts.faiss   images' own-text vectors, ids = images.id (only images with own text)
    write.lock        held (flock) by the one writer; holds its PID

Commit order for crash safety: rows are inserted (ids assigned) inside a transaction, the
FAISS file is written atomically, then the transaction commits. A crash in between leaves FAISS
ids with no row; they are removed when the next writer opens the index (reconcile), and
readers ignore them. Rows without a vector are deleted too, so the next run encodes them again.
An image's own-text vector is committed with its image vector (doc_texts.faiss is written after
images.faiss, before the transaction commits); reconcile drops own-text vectors without a row and
deletes images whose own-text row lost its vector, so the next run encodes both again.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import Session

from indexer.errors import ConflictError, ModelError, UnavailableError
from indexer.models.encoder import EncoderInfo
from indexer.store import catalog
from indexer.store.catalog import ImageRow, TextRow
from indexer.store.vectors import INDEX_TYPE, VectorStore, remove_temp_files

IMAGES_FAISS = "images.faiss"
TEXTS_FAISS = "texts.faiss"
DOC_TEXTS_FAISS = "doc_texts.faiss"
LOCK_FILE = "write.lock"
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

    def __init__(self, index_dir: Path, encoder_info: EncoderInfo | None) -> None:
        """encoder_info None: edit an existing index without a model (e.g. removals)."""
        self.index_dir = index_dir
        self.encoder_info = encoder_info
        self.lock = WriterLock(index_dir)
        self.engine: SqlEngine | None = None
        self.images = VectorStore.create(1)
        self.texts = VectorStore.create(1)
        self.doc_texts = VectorStore.create(1)
        self.repaired = 0
        self.created = False  # True when this writer created the index

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
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.engine is not None:
            self.engine.dispose()
        self.lock.release()

    def _open(self) -> None:
        for name in (IMAGES_FAISS, TEXTS_FAISS, DOC_TEXTS_FAISS):
            remove_temp_files(self.index_dir / name)  # we hold the lock: no save is in flight
        self.engine = catalog.open_catalog(self.index_dir, create=True)
        with Session(self.engine) as session:
            rows = catalog.read_info(session)
            if rows:
                info = IndexInfo.from_rows(rows)
                if self.encoder_info is not None:
                    check_compatible(info, self.encoder_info, self.index_dir)
            else:
                assert self.encoder_info is not None
                info = IndexInfo(
                    catalog.SCHEMA_VERSION,
                    self.encoder_info.kind,
                    self.encoder_info.source,
                    self.encoder_info.model_id,
                    self.encoder_info.dim,
                    INDEX_TYPE,
                    time.time(),
                )
                catalog.write_info(session, info.to_rows())
                session.commit()
                self.created = True
        dim = info.dim
        self.images = VectorStore.load(self.index_dir / IMAGES_FAISS, dim=dim)
        self.texts = VectorStore.load(self.index_dir / TEXTS_FAISS, dim=dim)
        self.doc_texts = VectorStore.load(self.index_dir / DOC_TEXTS_FAISS, dim=dim)
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
                (ImageRow, self.images, IMAGES_FAISS),
                (TextRow, self.texts, TEXTS_FAISS),
            ):
                rows = catalog.all_ids(session, table)
                vectors = set(self.ids_of(store))
                orphans = sorted(vectors - rows)
                missing = sorted(rows - vectors)
                if orphans:
                    store.remove(orphans)
                    store.save(self.index_dir / name)
                if missing:
                    ids = list(missing)
                    if table is ImageRow:
                        catalog.delete_images(session, ids)
                    else:
                        catalog.delete_texts(session, ids)
                    session.commit()
                repaired += len(orphans) + len(missing)
        return repaired + self._reconcile_doc_texts()

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
                self.doc_texts.save(self.index_dir / DOC_TEXTS_FAISS)
            if missing:
                self.images.remove(missing)
                self.images.save(self.index_dir / IMAGES_FAISS)
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
        """Apply vector changes, write FAISS atomically, then commit the SQL transaction.

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
            self.images.save(self.index_dir / IMAGES_FAISS)
        if (texts and texts[0]) or removed_texts:
            self.texts.save(self.index_dir / TEXTS_FAISS)
        if doc_changed:
            self.doc_texts.save(self.index_dir / DOC_TEXTS_FAISS)
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
    """The files that make up an index (for size on disk)."""
    names = [
        catalog.CATALOG_FILE,
        catalog.CATALOG_FILE + "-wal",
        IMAGES_FAISS,
        TEXTS_FAISS,
        DOC_TEXTS_FAISS,
    ]
    return [index_dir / n for n in names if (index_dir / n).exists()]
