"""The app factory: one FastAPI app over one open Engine, with its middleware, routes and page."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from mmsearch import __version__
from mmsearch.engine import Engine
from mmsearch.service.context import ServiceContext
from mmsearch.service.errors import ERRORS, install_error_handlers
from mmsearch.service.middleware import BodyLimitMiddleware, HostCheckMiddleware, SecurityHeadersMiddleware
from mmsearch.service.page import add_page_routes
from mmsearch.service.routes import health_router, index_router
from mmsearch.service.search_routes import document_dimension, search_router
from mmsearch.service.settings import TOKEN_ENV, ServiceSettings

WARMUP_QUERY = "warm up"
BEARER = HTTPBearer(auto_error=False, description=f"The server's {TOKEN_ENV}")


def create_app(engine: Engine, settings: ServiceSettings | None = None) -> FastAPI:
    """The HTTP API and web page over one open Engine (the caller owns and closes the Engine)."""
    settings = settings or ServiceSettings()
    # The tokenizer configures its padding and truncation on first use; do that once here,
    # before the thread pool can run two first queries at the same time.
    engine.encode_query_text(WARMUP_QUERY)
    context = ServiceContext(engine, settings)
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
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeadersMiddleware)
    guarded = [Depends(_token_check(settings.token))] if settings.token else []
    app.include_router(health_router(context))
    api = APIRouter(dependencies=guarded, responses=ERRORS)
    api.include_router(search_router(context))
    api.include_router(index_router(context))
    app.include_router(api)
    add_page_routes(app)
    document_dimension(app, engine.info.dim, fusion_methods=engine.fusion_methods())
    return app


def _token_check(token: str | None) -> Callable[..., None]:
    """A dependency that answers 401 unless the request carries the bearer token."""

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer <MMSEARCH_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token
