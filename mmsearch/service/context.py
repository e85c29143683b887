"""What every route shares: the Engine, the settings, and the server's limits on concurrent work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Path as PathParam
from fastapi import Query
from PIL import Image
from starlette.exceptions import HTTPException

from indexer.media.images import decode_image_bytes
from indexer.store.search_params import MAX_RERANK
from indexer.store.vectors import set_search_threads
from mmsearch.engine import MAX_IMAGE_ID, MAX_K, MAX_QUERY_CHARS, Engine, SearchResults
from mmsearch.query import Query as SearchQuery
from mmsearch.service.batching import MS_PER_S, QueryBatcher
from mmsearch.service.files import ThumbnailCache
from mmsearch.service.settings import ServiceSettings

UPLOAD_NAME_CHARS = 200

# Parameters shared by several endpoints (module level: FastAPI resolves the string annotations
# that `from __future__ import annotations` leaves against the route module's globals, so route
# modules import these names).
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="Number of results.")]
QParam = Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="A sentence.")]
NprobeParam = Annotated[
    int | None,
    Query(ge=1, description="IVF lists searched (ivf/sq8/ivfpq index; default: the index's tuned value)."),
]
RerankParam = Annotated[
    int | None,
    Query(
        ge=1,
        le=MAX_RERANK,
        description="Candidates per result re-scored exactly from the full vectors (sq8/ivfpq "
        "index; 1: none; default: the index's tuned value).",
    ),
]
EfSearchParam = Annotated[
    int | None,
    Query(ge=1, description="HNSW search width (hnsw index; default: the index's tuned value)."),
]
IdParam = Annotated[int, PathParam(ge=1, le=MAX_IMAGE_ID, description="Image id from a search.")]
FusionParam = Annotated[
    Literal["linear", "learned"] | None,
    Query(
        description="How an image's own text joins its pixels: linear, or learned (the model's "
        "fusion head); default: the index's recorded method."
    ),
]


@dataclass
class ServiceContext:
    """One app's Engine and settings, with the locks that pace queries and writes and the
    batcher that answers sentence queries together."""

    engine: Engine
    settings: ServiceSettings
    query_slots: threading.BoundedSemaphore = field(init=False)
    batcher: QueryBatcher = field(init=False)
    thumbnails: ThumbnailCache = field(init=False)
    _write_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.query_slots = threading.BoundedSemaphore(max(1, self.settings.query_slots))
        self.batcher = QueryBatcher(
            self.engine.search_batch,
            max_batch=self.settings.max_batch,
            max_wait_s=self.settings.batch_wait_ms / MS_PER_S,
            workers=max(1, self.settings.query_slots),  # one batch computing per slot
            slots=self.query_slots,
            on_worker_start=self._set_search_threads,
        )
        self.thumbnails = ThumbnailCache(self.settings.thumbnail_cache_bytes)

    def _set_search_threads(self) -> None:
        if self.settings.search_threads is not None:
            set_search_threads(self.settings.search_threads)

    async def search(self, query: SearchQuery) -> SearchResults:
        """A query answered in a batch with those arriving with it; no thread waits for it."""
        return await asyncio.wrap_future(self.batcher.submit(query))

    @contextlib.contextmanager
    def write_slot(self) -> Iterator[None]:
        """One write at a time from this process; a second one gets 409 at once."""
        if not self._write_lock.acquire(blocking=False):
            raise HTTPException(
                409, "index is locked: another POST /index or DELETE is running; retry when it ends"
            )
        try:
            yield
        finally:
            self._write_lock.release()

    def upload_name(self, filename: str | None) -> str:
        """An uploaded file's name as shown back: its base name, bounded."""
        return os.path.basename(filename or "upload")[:UPLOAD_NAME_CHARS] or "upload"

    def check_upload_size(self, data: bytes) -> None:
        """413 for an upload read to one byte past the limit."""
        if len(data) > self.settings.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {self.settings.max_upload_bytes} bytes")

    def decode_upload(self, data: bytes, *, name: str) -> Image.Image:
        """Uploaded bytes -> an image at the model's input size, within the megapixel limit."""
        return decode_image_bytes(
            data,
            name=name,
            max_megapixels=self.settings.max_megapixels,
            target_size=self.engine.encoder.preprocess_config.image_size,
        )
