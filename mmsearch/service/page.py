"""The web search page: three static files from mmsearch/web/, read once, served beside the API."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

WEB_FILES = {  # the page's own files, the only ones served from mmsearch/web/
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _web_file(name: str) -> bytes:
    return resources.files("mmsearch").joinpath("web", name).read_bytes()


def add_page_routes(app: FastAPI) -> None:
    """`/` and `/static/{app.js,style.css}`, outside the OpenAPI schema and without a token."""
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
