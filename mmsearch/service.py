"""The HTTP edge: a FastAPI app over one Engine, and the web search page served beside it.

Everything here is translation: query parameters and uploads become Engine calls, Engine and
indexer errors become status codes with a JSON `{"detail": "message"}` body, and results become
the Pydantic response models of mmsearch.service_models (so `/openapi.json` describes every
answer). The model is loaded once,
by the caller that opens the Engine; one app serves one Engine.

Safety: the CLI binds 127.0.0.1 unless told otherwise, and refuses any other address without a
bearer token (`check_bind`). Files are served by integer id only, and only when the file on disk
is still the one that was indexed (same size and mtime, read through one descriptor), so neither
a crafted id nor a symlink swapped in after indexing can reach another file.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import ipaddress
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.errors import (
    ConflictError,
    InvalidInputError,
    MMSearchError,
    ModelError,
    NotFoundError,
    UnavailableError,
)
from indexer.indexing.pipeline import IndexOptions, IndexReport
from indexer.media.images import DEFAULT_MAX_MEGAPIXELS, decode_image_bytes
from mmsearch import __version__
from mmsearch.engine import (
    MAX_IMAGE_ID,
    MAX_K,
    MAX_QUERY_CHARS,
    Engine,
    ImageHit,
    IndexedImage,
    IndexStats,
    TextHit,
)
from mmsearch.service_models import (
    DeleteResponse,
    ErrorResponse,
    HealthResponse,
    ImageInfo,
    ImageResult,
    ImageSearchResponse,
    IndexRequest,
    IndexResponse,
    QueryInfo,
    SkippedFile,
    TextResult,
    TextSearchResponse,
)

TOKEN_ENV = "MMSEARCH_TOKEN"
# A guessable token on a LAN-facing server is no protection; 16 chars of token_urlsafe is 96 bits.
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = frozenset({"localhost"})
# Host headers accepted when bound to loopback: stops DNS rebinding (a web page that points its
# own host name at 127.0.0.1 and then reads this server's answers from the user's browser).
LOOPBACK_HOST_HEADERS = ("127.0.0.1", "localhost", "[::1]", "::1")

# Phone photos are 2-12 MB; 16 MiB leaves room for a PNG screenshot without inviting abuse.
DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
DEFAULT_K = 10
THUMBNAIL_SIZE = 256  # the web page's grid cell, at 1x
THUMBNAIL_MIN, THUMBNAIL_MAX = 32, 512
THUMBNAIL_QUALITY = 85
# ~15 KB per 256 px JPEG: a 32 MiB budget keeps a couple of thousand thumbnails warm.
THUMBNAIL_CACHE_BYTES = 32 * 1024 * 1024
FILE_CHUNK_BYTES = 256 * 1024
SKIPPED_SHOWN = 100  # skipped files listed in an index report; the count is always exact
UPLOAD_NAME_CHARS = 200
WARMUP_QUERY = "warm up"

IMAGE_MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
WEB_FILES = {  # the page's own files, the only ones served from mmsearch/web/
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class ServiceConfigError(InvalidInputError):
    """Settings the server refuses to start with (e.g. a public address without a token)."""


@dataclass(frozen=True)
class ServiceSettings:
    """What the server allows; the CLI fills it from `mmsearch serve` flags and MMSEARCH_TOKEN."""

    token: str | None = None
    roots: tuple[Path, ...] = ()  # folders POST /index may add or refresh; none: POST /index is off
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    allowed_hosts: tuple[str, ...] | None = None  # None: any Host header (token-protected binds)
    thumbnail_cache_bytes: int = THUMBNAIL_CACHE_BYTES
    # Queries encoding at once. Encoding is CPU-bound, so more than one per core only makes
    # every query slower; the rest wait their turn, which keeps the p99 down under load
    # (16 clients on 2 cores: p99 ~0.55 s with 2 slots against ~1.1 s unlimited).
    query_slots: int = field(default_factory=lambda: os.cpu_count() or 1)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token; ServiceConfigError says what to set."""
    if token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
        raise ServiceConfigError(
            f"{TOKEN_ENV} is shorter than {MIN_TOKEN_CHARS} characters; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if not is_loopback(host) and token is None:
        raise ServiceConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach it could search "
            f"and read your indexed photos. Set {TOKEN_ENV} (clients send it as "
            f"'Authorization: Bearer ...'), or keep the default --host 127.0.0.1"
        )


def settings_for(
    host: str, *, token: str | None, roots: tuple[Path, ...] = (), **limits: Any
) -> ServiceSettings:
    """Settings for a bind address: loopback binds also check the Host header."""
    check_bind(host, token)
    allowed = (*LOOPBACK_HOST_HEADERS, host.lower()) if is_loopback(host) else None
    resolved = tuple(Path(os.path.realpath(r)) for r in roots)
    for root in resolved:
        if not root.is_dir():
            raise ServiceConfigError(f"--root {root}: not a folder")
    return ServiceSettings(token=token, roots=resolved, allowed_hosts=allowed, **limits)


# -- errors -------------------------------------------------------------------------------------

# By error family (indexer/errors.py), most specific first: every user-facing error has a status,
# so a new error class cannot fall through to a 500.
ERROR_STATUS: tuple[tuple[type[MMSearchError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 422),
    (UnavailableError, 503),
    (ModelError, 503),
    (MMSearchError, 400),
)


def status_for(exc: MMSearchError) -> int:
    """The HTTP status of a user-facing error: that of the first family it belongs to."""
    return next(status for family, status in ERROR_STATUS if isinstance(exc, family))


Responses = dict[int | str, dict[str, Any]]  # FastAPI's `responses=` for the OpenAPI schema
ERRORS: Responses = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"},
    422: {"model": ErrorResponse, "description": "Invalid parameters"},
    503: {"model": ErrorResponse, "description": "Index unavailable"},
}
NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "No indexed image with this id"}}
LOCKED: Responses = {409: {"model": ErrorResponse, "description": "Index is locked by another writer"}}
TOO_LARGE: Responses = {413: {"model": ErrorResponse, "description": "Request body too large"}}
MALFORMED: Responses = {400: {"model": ErrorResponse, "description": "Body that cannot be parsed"}}
FORBIDDEN: Responses = {403: {"model": ErrorResponse, "description": "Path outside the --root folders"}}


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    """Pydantic's error list as one line, e.g. "query k: Input should be less than or equal to 1000"."""
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ())]
        where = f"{loc[0]} {'.'.join(loc[1:])}".strip() if loc else "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _error(422, _describe_validation(exc))

    async def user_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MMSearchError)
        return _error(status_for(exc), str(exc))

    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this answer, so the server still logs the traceback.
        return _error(500, "internal server error (see the server log)")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(MMSearchError, user_error)
    app.add_exception_handler(Exception, crashed)


# -- middleware (pure ASGI: no buffering of bodies or streamed files) ---------------------------


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(HTTPException):
    """Raised from receive() once a body passes the limit; handled like any HTTPException."""


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once from Content-Length, else while they stream in."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"request body larger than {max_bytes / 1024 / 1024:g} MiB (the server's --max-upload-mb)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, self.message)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _BodyTooLarge(413, self.message)
            return message

        await self.app(scope, counted, send)


class HostCheckMiddleware:
    """400 unless the Host header names this machine (only installed for loopback binds)."""

    def __init__(self, app: ASGIApp, *, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.split(":")[0]
            if name not in self.allowed:
                await _send_json(send, 400, f"unexpected Host header {host!r}: use http://127.0.0.1")
                return
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """nosniff, no referrer, no framing on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


# -- thumbnails --------------------------------------------------------------------------------


class ThumbnailCache:
    """A thread-safe LRU of encoded thumbnails, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        """The cached bytes, marked as recently used."""
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[object, ...], data: bytes) -> None:
        """Store, evicting the least recently used entries beyond the budget."""
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


def _thumbnail(data: bytes, *, name: str, size: int) -> bytes:
    """Image bytes -> a JPEG no larger than size x size (aspect kept, EXIF orientation applied)."""
    image = decode_image_bytes(data, name=name, target_size=size)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return out.getvalue()


# -- serving indexed files ---------------------------------------------------------------------


def _display(path: str) -> str:
    """A path as valid UTF-8 for JSON (undecodable file-name bytes become U+FFFD)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _open_indexed(image: IndexedImage) -> tuple[BinaryIO, os.stat_result]:
    """Open the row's own path, and only if it is still the regular file that was indexed.

    The checks run on the opened descriptor, so nothing can be swapped in between check and
    read; O_NONBLOCK keeps a FIFO planted at the path from hanging the worker.
    """
    gone = HTTPException(404, f"image {image.id} is indexed but its file is gone; re-index to drop it")
    try:
        fd = os.open(image.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise gone from None
    except OSError as exc:
        raise HTTPException(404, f"image {image.id}: file cannot be read ({exc.strerror})") from None
    fh = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (image.size, image.mtime_ns):
        fh.close()
        raise HTTPException(
            404,
            f"image {image.id}: the file changed since it was indexed; re-index "
            "(POST /index or `mmsearch index`) to serve it",
        )
    return fh, st


def _stream(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(FILE_CHUNK_BYTES):
            yield chunk


# Parameters shared by several endpoints (module level: FastAPI resolves the string annotations
# that `from __future__ import annotations` leaves against this module's globals).
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="Number of results.")]
QParam = Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="A sentence.")]
IdParam = Annotated[int, PathParam(ge=1, le=MAX_IMAGE_ID, description="Image id from a search.")]
BEARER = HTTPBearer(auto_error=False, description=f"The server's {TOKEN_ENV}")


# -- the app -----------------------------------------------------------------------------------


def _image_result(hit: ImageHit) -> ImageResult:
    return ImageResult(
        rank=hit.rank,
        score=hit.score,
        id=hit.id,
        path=_display(hit.path),
        name=_display(os.path.basename(hit.path)),
        image_url=f"/images/{hit.id}",
        thumbnail_url=f"/images/{hit.id}/thumbnail",
    )


def _text_result(hit: TextHit) -> TextResult:
    return TextResult(rank=hit.rank, score=hit.score, id=hit.id, text=hit.text)


def _search_response(
    hits: list[ImageHit] | list[TextHit],
    *,
    to: Literal["image", "text"],
    query: QueryInfo,
    k: int,
    started: float,
) -> ImageSearchResponse | TextSearchResponse:
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    if to == "text":
        texts = [_text_result(h) for h in hits if isinstance(h, TextHit)]
        return TextSearchResponse(query=query, k=k, took_ms=took_ms, results=texts)
    images = [_image_result(h) for h in hits if isinstance(h, ImageHit)]
    return ImageSearchResponse(query=query, k=k, took_ms=took_ms, results=images)


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
        skipped=[SkippedFile(path=_display(s.path), reason=s.reason) for s in report.skipped[:SKIPPED_SHOWN]],
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


def create_app(engine: Engine, settings: ServiceSettings | None = None) -> FastAPI:
    """The HTTP API and web page over one open Engine (the caller owns and closes the Engine)."""
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="mmsearch",
        version=__version__,
        summary="Cross-modal semantic search: images by a sentence, captions by an image.",
        # Swagger UI and ReDoc load their scripts from a CDN; the schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.settings = settings
    _install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeadersMiddleware)

    # The tokenizer configures its padding and truncation on first use; do that once here,
    # before the thread pool can run two first queries at the same time.
    engine.encode_query_text(WARMUP_QUERY)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        token = settings.token
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer <MMSEARCH_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    api = APIRouter(dependencies=[Depends(require_token)] if settings.token else [], responses=ERRORS)
    write_lock = threading.Lock()  # one write at a time from this process; others get 409
    query_slots = threading.BoundedSemaphore(max(1, settings.query_slots))
    thumbnails = ThumbnailCache(settings.thumbnail_cache_bytes)

    @contextlib.contextmanager
    def write_slot() -> Iterator[None]:
        if not write_lock.acquire(blocking=False):
            raise HTTPException(
                409, "index is locked: another POST /index or DELETE is running; retry when it ends"
            )
        try:
            yield
        finally:
            write_lock.release()

    @app.get("/health", response_model=HealthResponse, tags=["service"])
    def health() -> HealthResponse:
        """The server is up (no token needed)."""
        return HealthResponse(version=__version__, auth_required=settings.token is not None)

    @api.get("/stats", response_model=IndexStats, tags=["service"])
    def stats() -> IndexStats:
        """Counts, model, dimension and size on disk of the served index."""
        return engine.stats()

    @api.get("/search", response_model=ImageSearchResponse, tags=["search"])
    def search(q: QParam, k: KParam = DEFAULT_K) -> ImageSearchResponse | TextSearchResponse:
        """Text to image: the indexed images that best match a sentence."""
        started = time.perf_counter()
        with query_slots:
            hits = engine.search_text(q, k=k)
        return _search_response(hits, to="image", query=QueryInfo(text=q), k=k, started=started)

    @api.post(
        "/search/image",
        response_model=ImageSearchResponse | TextSearchResponse,
        responses={**MALFORMED, **NOT_FOUND, **TOO_LARGE},
        tags=["search"],
    )
    def search_image(
        file: Annotated[UploadFile | None, File(description="An image to search by.")] = None,
        image_id: Annotated[
            int | None,
            Form(alias="id", ge=1, le=MAX_IMAGE_ID, description="Or: an indexed image's id."),
        ] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = DEFAULT_K,
        to: Annotated[
            Literal["image", "text"], Form(description="Find similar images, or describing texts.")
        ] = "image",
    ) -> ImageSearchResponse | TextSearchResponse:
        """Image to image or image to text, by an uploaded file or an indexed image's id."""
        started = time.perf_counter()
        if (file is None) == (image_id is None):
            raise HTTPException(422, "send either a file upload or an indexed image id, not both")
        if image_id is not None:
            with query_slots:
                hits = engine.search_by_id(image_id, k=k, to=to)
            query = QueryInfo(image_id=image_id)
            return _search_response(hits, to=to, query=query, k=k, started=started)
        assert file is not None
        name = os.path.basename(file.filename or "upload")[:UPLOAD_NAME_CHARS] or "upload"
        data = file.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {settings.max_upload_bytes} bytes")
        image = decode_image_bytes(
            data,
            name=name,
            max_megapixels=settings.max_megapixels,
            target_size=engine.encoder.preprocess_config.image_size,
        )
        with query_slots:
            hits = engine.search_image(image, k=k, to=to)
        return _search_response(hits, to=to, query=QueryInfo(upload=name), k=k, started=started)

    @api.get("/texts/search", response_model=TextSearchResponse, tags=["search"])
    def search_texts(q: QParam, k: KParam = DEFAULT_K) -> ImageSearchResponse | TextSearchResponse:
        """Text to text: the indexed captions closest to a sentence."""
        started = time.perf_counter()
        with query_slots:
            hits = engine.search_texts(q, k=k)
        return _search_response(hits, to="text", query=QueryInfo(text=q), k=k, started=started)

    @api.get("/images/{image_id:int}/info", response_model=ImageInfo, responses=NOT_FOUND, tags=["images"])
    def image_info(image_id: IdParam) -> ImageInfo:
        """An indexed image's path, pixel size and file size."""
        image = engine.get_image(image_id)
        return ImageInfo(
            id=image.id,
            path=_display(image.path),
            name=_display(os.path.basename(image.path)),
            width=image.width,
            height=image.height,
            size=image.size,
            image_url=f"/images/{image.id}",
            thumbnail_url=f"/images/{image.id}/thumbnail",
        )

    @api.get(
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
        fh, st = _open_indexed(image)
        media_type = IMAGE_MEDIA_TYPES.get(Path(image.path).suffix.lower(), "application/octet-stream")
        return StreamingResponse(
            _stream(fh),
            media_type=media_type,
            headers={"content-length": str(st.st_size), "cache-control": "private, max-age=300"},
        )

    @api.get(
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
        data = thumbnails.get(key)
        if data is None:
            fh, _ = _open_indexed(image)
            with fh:
                raw = fh.read()
            data = _thumbnail(raw, name=os.path.basename(image.path), size=size)
            thumbnails.put(key, data)
        return Response(data, media_type="image/jpeg", headers=headers)

    @api.post(
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
        with write_slot():
            report = engine.add(folders, options=IndexOptions(max_megapixels=settings.max_megapixels))
        return _index_response(report)

    @api.delete(
        "/images/{image_id:int}",
        response_model=DeleteResponse,
        responses={**NOT_FOUND, **LOCKED},
        tags=["index"],
    )
    def delete_image(image_id: IdParam) -> DeleteResponse:
        """Remove one image from the index; the file on disk is not touched."""
        with write_slot():
            image = engine.remove_image(image_id)
        return DeleteResponse(id=image.id, path=_display(image.path))

    app.include_router(api)
    _add_page_routes(app)
    return app


def _web_file(name: str) -> bytes:
    return resources.files("mmsearch").joinpath("web", name).read_bytes()


def _add_page_routes(app: FastAPI) -> None:
    """The web search page: three static files from mmsearch/web/, read once."""
    files = {name: _web_file(name) for name in WEB_FILES}

    def serve(name: str) -> Callable[[], Response]:
        def page() -> Response:
            headers = {"cache-control": "no-cache"}
            if name == "index.html":
                headers["content-security-policy"] = PAGE_CSP
            return Response(files[name], media_type=WEB_FILES[name], headers=headers)

        return page

    app.get("/", include_in_schema=False)(serve("index.html"))
    for name in WEB_FILES:
        if name != "index.html":
            app.get(f"/static/{name}", include_in_schema=False)(serve(name))
