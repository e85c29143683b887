"""Routes about the service and the index: health, stats (and batching's), indexed files,
POST /index, DELETE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

from indexer.indexing.pipeline import IndexOptions, IndexReport
from mmsearch import __version__
from mmsearch.engine import IndexStats
from mmsearch.service.context import IdParam, ServiceContext
from mmsearch.service.errors import FORBIDDEN, LOCKED, MALFORMED, NOT_FOUND, TOO_LARGE
from mmsearch.service.files import (
    IMAGE_MEDIA_TYPES,
    THUMBNAIL_MAX,
    THUMBNAIL_MIN,
    THUMBNAIL_SIZE,
    display,
    make_thumbnail,
    open_indexed,
    stream,
)
from mmsearch.service.models import (
    BatchingResponse,
    DeleteResponse,
    HealthResponse,
    ImageInfo,
    IndexRequest,
    IndexResponse,
    SkippedFile,
)

SKIPPED_SHOWN = 100  # skipped files listed in an index report; the count is always exact


def health_router(context: ServiceContext) -> APIRouter:
    """GET /health, answered without a token so load balancers and the page can ask."""
    router = APIRouter()
    auth_required = context.settings.token is not None

    @router.get("/health", response_model=HealthResponse, tags=["service"])
    def health() -> HealthResponse:
        """The server is up (no token needed)."""
        return HealthResponse(version=__version__, auth_required=auth_required)

    return router


def index_router(context: ServiceContext) -> APIRouter:
    """Stats, the indexed files and their thumbnails, and the two writes (index, delete)."""
    router = APIRouter()
    engine, settings = context.engine, context.settings

    @router.get("/stats", response_model=IndexStats, tags=["service"])
    def stats() -> IndexStats:
        """Counts, model, dimension and size on disk of the served index."""
        return engine.stats()

    @router.get("/stats/batching", response_model=BatchingResponse, tags=["service"])
    def batching() -> BatchingResponse:
        """How many sentence queries were answered together, in how many batches."""
        stats = context.batcher.stats()
        return BatchingResponse(
            max_batch=stats.max_batch,
            max_wait_ms=stats.max_wait_ms,
            batches=stats.batches,
            queries=stats.queries,
            largest_batch=stats.largest_batch,
            mean_batch=round(stats.mean_batch, 3),
        )

    @router.get(
        "/images/{image_id:int}/info", response_model=ImageInfo, responses=NOT_FOUND, tags=["images"]
    )
    def image_info(image_id: IdParam) -> ImageInfo:
        """An indexed image's path, pixel size and file size."""
        image = engine.get_image(image_id)
        return ImageInfo(
            id=image.id,
            path=display(image.path),
            name=display(os.path.basename(image.path)),
            width=image.width,
            height=image.height,
            size=image.size,
            image_url=f"/images/{image.id}",
            thumbnail_url=f"/images/{image.id}/thumbnail",
        )

    @router.get(
        "/images/{image_id:int}",
        response_class=Response,
        responses={
            200: {"content": {t: {} for t in sorted(set(IMAGE_MEDIA_TYPES.values()))}},
            **NOT_FOUND,
        },
        tags=["images"],
    )
    def image_file(image_id: IdParam) -> Response:
        """The indexed file itself, if it is still the file that was indexed."""
        image = engine.get_image(image_id)
        fh, st = open_indexed(image)
        media_type = IMAGE_MEDIA_TYPES.get(Path(image.path).suffix.lower(), "application/octet-stream")
        return StreamingResponse(
            stream(fh),
            media_type=media_type,
            headers={"content-length": str(st.st_size), "cache-control": "private, max-age=300"},
        )

    @router.get(
        "/images/{image_id:int}/thumbnail",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "Not modified"}, **NOT_FOUND},
        tags=["images"],
    )
    def image_thumbnail(
        request: Request,
        image_id: IdParam,
        size: Annotated[int, Query(ge=THUMBNAIL_MIN, le=THUMBNAIL_MAX)] = THUMBNAIL_SIZE,
    ) -> Response:
        """A JPEG at most size x size pixels, made with Pillow and cached in memory."""
        image = engine.get_image(image_id)
        etag = f'"{image.id}-{image.size}-{image.mtime_ns}-{size}"'
        headers = {"etag": etag, "cache-control": "private, max-age=300"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        key = (image.path, image.size, image.mtime_ns, size)  # ids can be reused after a delete
        data = context.thumbnails.get(key)
        if data is None:
            fh, _ = open_indexed(image)
            with fh:
                raw = fh.read()
            data = make_thumbnail(raw, name=os.path.basename(image.path), size=size)
            context.thumbnails.put(key, data)
        return Response(data, media_type="image/jpeg", headers=headers)

    @router.post(
        "/index",
        response_model=IndexResponse,
        responses={**MALFORMED, **FORBIDDEN, **LOCKED, **TOO_LARGE},
        tags=["index"],
    )
    def index(request: IndexRequest) -> IndexResponse:
        """Add or refresh folders under the server's --root folders; answers when the run is done."""
        if not settings.roots:
            raise HTTPException(
                403, "indexing over HTTP is off: start the server with --root DIR to allow it under DIR"
            )
        folders = [_under_roots(raw, settings.roots) for raw in request.paths]
        with context.write_slot():
            report = engine.add(folders, options=IndexOptions(max_megapixels=settings.max_megapixels))
        return _index_response(report)

    @router.delete(
        "/images/{image_id:int}",
        response_model=DeleteResponse,
        responses={**NOT_FOUND, **LOCKED},
        tags=["index"],
    )
    def delete_image(image_id: IdParam) -> DeleteResponse:
        """Remove one image from the index; the file on disk is not touched."""
        with context.write_slot():
            image = engine.remove_image(image_id)
        return DeleteResponse(id=image.id, path=display(image.path))

    return router


def _index_response(report: IndexReport) -> IndexResponse:
    return IndexResponse(
        new=report.new,
        changed=report.changed,
        moved=report.moved,
        removed=report.removed,
        unchanged=report.unchanged,
        indexed=report.new + report.changed,
        repaired=report.repaired,
        skipped_count=len(report.skipped),
        skipped=[SkippedFile(path=display(s.path), reason=s.reason) for s in report.skipped[:SKIPPED_SHOWN]],
        elapsed_s=round(report.elapsed_s, 3),
        images_per_s=round(report.images_per_s, 2),
    )


def _under_roots(raw: str, roots: tuple[Path, ...]) -> Path:
    """The real folder a POST /index path names, if it lies under a --root (symlinks resolved)."""
    if "\x00" in raw:
        raise HTTPException(422, "paths must not contain NUL characters")
    if not os.path.isabs(raw):
        raise HTTPException(422, f"{raw!r}: paths must be absolute")
    try:
        real = Path(os.path.realpath(raw))
    except (OSError, ValueError) as exc:
        raise HTTPException(422, f"{raw!r}: {exc}") from None
    if not any(real == root or root in real.parents for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise HTTPException(403, f"{raw!r} is outside the folders this server may index ({allowed})")
    return real
