"""The HTTP edge: a FastAPI app over one Engine, and the web search page served beside it.

Everything here is translation: query parameters, JSON bodies and uploads become Engine calls,
Engine and indexer errors become status codes with a JSON `{"detail": "message"}` body, and
results become the Pydantic response models of `models` (so `/openapi.json` describes every
answer). The model is loaded once, by the caller that opens the Engine; one app serves one Engine.

- `app`: create_app, the factory (middleware, token check, routers, page).
- `settings`: ServiceSettings and bind safety (no address beyond loopback without a token).
- `routes`: health, stats, indexed files and thumbnails, POST /index, DELETE.
- `search_routes`: the searches, POST /search/vector and POST /embed.
- `context`: what the routes share (Engine, settings, query slots, write lock, uploads).
- `files`: serving an indexed file only while it is the file that was indexed; thumbnails.
- `middleware`, `errors` (status by error family), `page` (the web page), `models` (schemas).
"""

from mmsearch.service.app import create_app
from mmsearch.service.errors import ERROR_STATUS, status_for
from mmsearch.service.files import ThumbnailCache
from mmsearch.service.middleware import BodyLimitMiddleware, HostCheckMiddleware, SecurityHeadersMiddleware
from mmsearch.service.settings import (
    DEFAULT_MAX_UPLOAD_BYTES,
    LOOPBACK_HOST_HEADERS,
    MIN_TOKEN_CHARS,
    TOKEN_ENV,
    ServiceConfigError,
    ServiceSettings,
    check_bind,
    is_loopback,
    settings_for,
)

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "ERROR_STATUS",
    "LOOPBACK_HOST_HEADERS",
    "MIN_TOKEN_CHARS",
    "TOKEN_ENV",
    "BodyLimitMiddleware",
    "HostCheckMiddleware",
    "SecurityHeadersMiddleware",
    "ServiceConfigError",
    "ServiceSettings",
    "ThumbnailCache",
    "check_bind",
    "create_app",
    "is_loopback",
    "settings_for",
    "status_for",
]
