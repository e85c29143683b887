"""Open an index and answer queries: text->image, image->image, image->text.

The engine never prints or exits; it raises EngineError subclasses whose messages say what to
do, and the CLI and HTTP layers turn them into exit codes and status codes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from indexer import catalog
from indexer.catalog import ImageRow, TextRow
from indexer.encoders import Encoder, load_encoder
from indexer.images import ImageLoadError, open_image
from indexer.index_store import (
    IMAGES_FAISS,
    TEXTS_FAISS,
    IndexInfo,
    IndexStoreError,
    check_compatible,
    index_files,
    read_index_info,
)
from indexer.model import ModelLoadError
from indexer.pipeline import (
    IndexOptions,
    IndexReport,
    TextsReport,
    add_texts,
    index_folders,
    remove_images,
)
from indexer.vectors import VectorStore

# Guards against accidental huge requests; FAISS itself would happily return millions.
MAX_K = 1000
MAX_QUERY_CHARS = 1000

Target = Literal["image", "text"]


class EngineError(Exception):
    """Base class of errors the engine raises; the message is meant for the user."""


class IndexUnavailableError(EngineError):
    """No index, or an index that cannot be used with the requested model."""


class QueryError(EngineError):
    """A query that cannot be answered as given (empty text, unreadable image, bad k)."""


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


class _Snapshot:
    """A FAISS file as loaded, reloaded when a writer has atomically replaced it."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self.stamp: tuple[int, int] | None = None
        self.store = VectorStore.create(dim)
        self.refresh()

    def refresh(self) -> VectorStore:
        """Reload if the file on disk is a different one than last time (cheap stat per query)."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp != self.stamp:
            self.store = VectorStore.load(self.path, dim=self.dim)
            self.stamp = stamp
        return self.store


class Engine:
    """A read handle on one index plus the model that filled it. Use Engine.open()."""

    def __init__(self, index_dir: Path, info: IndexInfo, encoder: Encoder) -> None:
        self.index_dir = index_dir
        self.info = info
        self.encoder = encoder
        self._sql = catalog.open_catalog(index_dir, create=False)
        self._images = _Snapshot(index_dir / IMAGES_FAISS, info.dim)
        self._texts = _Snapshot(index_dir / TEXTS_FAISS, info.dim)

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
        except (IndexStoreError, ModelLoadError) as exc:
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

    def search_text(self, query: str, k: int = 10, *, under: str | Path | None = None) -> list[ImageHit]:
        """Images best matching a sentence (only files below `under` when given)."""
        vector = self.encode_query_text(query)
        return self._image_hits(vector, _check_k(k), under=under)

    def search_image(
        self,
        image: str | Path | Image.Image,
        k: int = 10,
        to: Target = "image",
        *,
        under: str | Path | None = None,
    ) -> list[ImageHit] | list[TextHit]:
        """Images similar to an image (to="image"), or texts describing it (to="text")."""
        vector = self.encode_query_image(image)
        if to == "image":
            return self._image_hits(vector, _check_k(k), under=under)
        if to == "text":
            return self._text_hits(vector, _check_k(k))
        raise QueryError(f"to must be 'image' or 'text', not {to!r}")

    def encode_query_text(self, query: str) -> np.ndarray:
        """A sentence -> (dim,) normalised query vector."""
        text = (query or "").strip()
        if not text:
            raise QueryError('empty query: give a sentence, e.g. mmsearch search "a red star"')
        if len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"query longer than {MAX_QUERY_CHARS} characters")
        return self.encoder.encode_texts([text])[0]

    def encode_query_image(self, image: str | Path | Image.Image) -> np.ndarray:
        """An image file or PIL image -> (dim,) normalised query vector."""
        if not isinstance(image, Image.Image):
            try:
                image = open_image(image, target_size=self.encoder.preprocess_config.image_size)
            except ImageLoadError as exc:
                raise QueryError(f"cannot use query image {exc}") from exc
        pixels = self.encoder.preprocess(image.convert("RGB")).unsqueeze(0)
        return self.encoder.encode_pixels(pixels)[0]

    def _image_hits(self, vector: np.ndarray, k: int, *, under: str | Path | None = None) -> list[ImageHit]:
        allowed = None if under is None else self._ids_under(under)
        result = self._images.refresh().search(vector[None, :], k, allowed_ids=allowed)[0]
        with Session(self._sql) as session:
            rows = catalog.image_rows(session, [int(i) for i in result.ids])
        return _ranked(
            result.ids, result.scores, rows, lambda r, s, i, row: ImageHit(r, s, i, row.path)
        )

    def _ids_under(self, folder: str | Path) -> np.ndarray:
        with Session(self._sql) as session:
            rows = catalog.images_under(session, os.path.abspath(folder))
        return np.array([row.id for row in rows], dtype=np.int64)

    def _text_hits(self, vector: np.ndarray, k: int) -> list[TextHit]:
        result = self._texts.refresh().search(vector[None, :], k)[0]
        with Session(self._sql) as session:
            rows = catalog.text_rows(session, [int(i) for i in result.ids])
        return _ranked(
            result.ids, result.scores, rows, lambda r, s, i, row: TextHit(r, s, i, row.text)
        )

    # -- editing (takes the writer lock) ----------------------------------------------------

    def add(
        self, paths: Sequence[Path | str], *, options: IndexOptions = IndexOptions()
    ) -> IndexReport:
        """Index (or refresh) folders into this index with its own model."""
        return index_folders(
            [Path(p) for p in paths], self.index_dir, self.encoder, options=options
        )

    def add_texts(self, texts: Sequence[str], *, source: str = "api") -> TextsReport:
        """Add captions for image->text search."""
        return add_texts(self.index_dir, self.encoder, texts, source=source)

    def remove(self, paths: Sequence[Path | str]) -> int:
        """Remove files (or everything under folders) from the index; returns how many."""
        return remove_images(self.index_dir, [Path(p) for p in paths])

    # -- facts --------------------------------------------------------------------------------

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
        )


def _load_model(spec: str | Path, device: str) -> Encoder:
    source = str(spec)
    if not source.startswith("openclip:") and not Path(source).exists():
        raise ModelLoadError(
            f"the model {source} recorded in this index is missing; pass --model DIR pointing at "
            "the same model, or rebuild the index"
        )
    return load_encoder(source, device=device)


def _check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def _ranked(ids, scores, rows, make):  # type: ignore[no-untyped-def]
    """Hits in score order, skipping ids whose row a concurrent writer has not committed."""
    hits = []
    for id_, score in zip(ids, scores, strict=True):
        row = rows.get(int(id_))
        if row is not None:
            hits.append(make(len(hits) + 1, round(float(score), 4), int(id_), row))
    return hits
