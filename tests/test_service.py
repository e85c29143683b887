"""The HTTP service: every endpoint through TestClient, safety checks, concurrency on a real uvicorn.

One read-only index of noisy colour images (the conftest's colors model tells the four colours
apart) is shared by most tests; tests that write (POST /index, DELETE) build their own index.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import COLORS, caption_for, color_image
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support import serve
from typer.testing import CliRunner

from indexer.indexing.pipeline import add_texts, index_folders
from indexer.store.index_dir import IMAGES_FAISS, IndexWriter, WriterLock
from indexer.store.vectors import VectorStore
from mmsearch.cli import app as cli_app
from mmsearch.engine import MAX_K, MAX_QUERY_CHARS, Engine
from mmsearch.service import (
    LOOPBACK_HOST_HEADERS,
    ServiceConfigError,
    ServiceSettings,
    check_bind,
    create_app,
    is_loopback,
    settings_for,
)
from mmsearch.service.models import MAX_EMBED_TEXTS

TOKEN = "test-token-0123456789abcdef"
CAPTIONS = [caption_for(c) for c in COLORS] + ["a photo of a cat", "a crowded beach at noon"]
SECRET = "root:x:0:0:top secret line\n"


@dataclass
class Gallery:
    """Indexed colour images: colour -> paths, plus the ids the index gave them."""

    root: Path
    by_color: dict[str, list[Path]]
    index_dir: Path
    model_dir: Path


def write_gallery(root: Path) -> dict[str, list[Path]]:
    """Three copies per colour in nested folders, one with a unicode name, plus a corrupt file."""
    by_color: dict[str, list[Path]] = {}
    for c, color in enumerate(COLORS):
        folder = root / color / "nested" if c % 2 else root / color
        folder.mkdir(parents=True)
        paths = []
        for i in range(3):
            name = f"{color}_{i}.png" if i < 2 else f"{color} ünï 写真.jpg"
            path = folder / name
            image = color_image(color, seed=5000 + 10 * c + i, size=(40 + 8 * i, 32 + 4 * i))
            image.save(path, "JPEG" if name.endswith(".jpg") else "PNG")
            paths.append(path)
        by_color[color] = paths
    (root / "broken.png").write_bytes(b"definitely not a png")
    return by_color


def build_index(root: Path, index_dir: Path, model_dir: Path) -> None:
    """Index a folder and the captions with the colors model."""
    from indexer.models.encoder import load_encoder

    encoder = load_encoder(model_dir, device="cpu")
    index_folders([root], index_dir, encoder)
    add_texts(index_dir, encoder, CAPTIONS, source="test")


@pytest.fixture(scope="module")
def gallery(colors_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Gallery:
    base = tmp_path_factory.mktemp("service")
    root = base / "photos"
    by_color = write_gallery(root)
    build_index(root, base / "index", colors_model)
    return Gallery(root, by_color, base / "index", colors_model)


@pytest.fixture(scope="module")
def engine(gallery: Gallery) -> Iterator[Engine]:
    with Engine.open(gallery.index_dir, device="cpu") as opened:
        yield opened


@pytest.fixture(scope="module")
def client(engine: Engine) -> TestClient:
    return TestClient(create_app(engine))


@dataclass
class Writable:
    """A private index over a private photo folder, for tests that change the index."""

    engine: Engine
    root: Path  # the only --root of the app
    photos: Path  # an indexed folder under root
    client: TestClient


@pytest.fixture
def writable(colors_model: Path, tmp_path: Path) -> Iterator[Writable]:
    root = tmp_path / "library"
    photos = root / "photos"
    write_gallery(photos)
    build_index(photos, tmp_path / "index", colors_model)
    with Engine.open(tmp_path / "index", device="cpu") as opened:
        app = create_app(opened, ServiceSettings(roots=(root.resolve(),)))
        yield Writable(opened, root.resolve(), photos.resolve(), TestClient(app))


def png_bytes(color: str, *, seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    buffer = io.BytesIO()
    color_image(color, seed=seed, size=size).save(buffer, "PNG")
    return buffer.getvalue()


def image_hits(engine: Engine, query: str, k: int = 10) -> list[dict[str, Any]]:
    return [asdict(h) for h in engine.search_text(query, k=k)]


def strip_urls(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: r[key] for key in ("rank", "score", "id", "path")} for r in results]


def assert_error(response: Any, status: int, *words: str) -> None:
    """A JSON {"detail": "..."} error with the status and a message naming the problem."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word.lower() in detail.lower(), detail


# -- health, stats, schema ----------------------------------------------------------------------


def test_health_stats_and_openapi(client: TestClient, engine: Engine) -> None:
    health = client.get("/health")
    assert health.json() == {"status": "ok", "version": "0.1.0", "auth_required": False}
    assert health.headers["x-content-type-options"] == "nosniff"

    stats = client.get("/stats").json()
    assert stats == asdict(engine.stats())
    assert stats["images"] == 12 and stats["texts"] == len(CAPTIONS)

    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        ("/search", "get"),
        ("/search/image", "post"),
        ("/search/vector", "post"),
        ("/embed", "post"),
        ("/texts/search", "get"),
        ("/images/{image_id}", "get"),
        ("/images/{image_id}/thumbnail", "get"),
        ("/images/{image_id}/info", "get"),
        ("/images/{image_id}", "delete"),
        ("/index", "post"),
        ("/health", "get"),
        ("/stats", "get"),
        ("/stats/batching", "get"),
    }
    assert {(p, m) for p, ops in paths.items() for m in ops} == expected
    vector = schema["components"]["schemas"]["VectorSearchRequest"]["properties"]["vector"]
    assert vector["minItems"] == vector["maxItems"] == engine.info.dim  # the served index's own
    bodies = paths["/embed"]["post"]["requestBody"]["content"]
    assert set(bodies) == {"application/json", "multipart/form-data"}
    for path, ops in paths.items():
        for method, op in ops.items():
            ok = op["responses"]["200"]["content"]
            assert ok, (path, method)
            if "application/json" in ok:  # JSON answers are typed models, not bare dicts
                assert "$ref" in str(ok["application/json"]["schema"]), (path, method)
            for status, answer in op["responses"].items():
                if status.startswith("4") or status.startswith("5"):
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"
                    }, (path, method, status)


def test_web_page_is_served_with_its_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/app.js"' in page.text
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    assert client.get("/static/../service.py").status_code == 404
    assert client.get("/static/index.html").status_code == 404


# -- searches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("color", list(COLORS))
def test_text_search_matches_the_engine(
    client: TestClient, engine: Engine, gallery: Gallery, color: str
) -> None:
    response = client.get("/search", params={"q": caption_for(color), "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["kind"] == "image" and body["query"]["text"] == caption_for(color) and body["k"] == 5
    assert strip_urls(body["results"]) == image_hits(engine, caption_for(color), k=5)
    top = body["results"][0]
    assert Path(top["path"]) in gallery.by_color[color]
    assert top["image_url"] == f"/images/{top['id']}"
    assert top["thumbnail_url"] == f"/images/{top['id']}/thumbnail"
    assert top["name"] == Path(top["path"]).name


def test_text_to_text_search(client: TestClient, engine: Engine) -> None:
    body = client.get("/texts/search", params={"q": "a blue image", "k": 3}).json()
    assert body["kind"] == "text"
    assert body["results"] == [asdict(h) for h in engine.search_texts("a blue image", k=3)]
    assert body["results"][0]["text"] == "a blue image"


def test_search_by_upload_finds_the_same_image_first(
    client: TestClient, engine: Engine, gallery: Gallery
) -> None:
    path = gallery.by_color["green"][1]
    response = client.post(
        "/search/image", files={"file": (path.name, path.read_bytes(), "image/png")}, data={"k": "4"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "image" and body["query"]["upload"] == path.name
    assert body["results"][0]["path"] == str(path.resolve())
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert strip_urls(body["results"]) == [asdict(h) for h in engine.search_image(path, k=4)]


def test_search_by_indexed_id_and_image_to_text(client: TestClient, engine: Engine, gallery: Gallery) -> None:
    path = str(gallery.by_color["yellow"][2].resolve())
    image_id = next(h.id for h in engine.search_text("a yellow image", k=MAX_K) if h.path == path)
    by_id = client.post("/search/image", data={"id": str(image_id), "k": "3"}).json()
    assert by_id["query"]["image_id"] == image_id
    assert by_id["results"][0]["id"] == image_id
    assert strip_urls(by_id["results"]) == [asdict(h) for h in engine.search_image(path, k=3)]

    captions = client.post("/search/image", data={"id": str(image_id), "k": "2", "to": "text"}).json()
    assert captions["kind"] == "text"
    assert captions["results"][0]["text"] == "a yellow image"
    assert captions["results"] == [asdict(h) for h in engine.search_by_id(image_id, k=2, to="text")]


# -- vectors: POST /embed and POST /search/vector ------------------------------------------------


def test_embed_gives_the_engines_query_vectors(client: TestClient, engine: Engine, gallery: Gallery) -> None:
    texts = [caption_for(c) for c in COLORS] + ["  a red or blue picture "]
    response = client.post("/embed", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == engine.info.model_id
    vectors = np.asarray(body["vectors"], np.float32)
    assert vectors.shape == (len(texts), engine.info.dim)
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(vector, engine.encode_query_text(text), atol=1e-5)
    path = gallery.by_color["green"][2]  # the JPEG with a unicode name
    upload = client.post("/embed", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert upload.status_code == 200, upload.text
    [vector] = upload.json()["vectors"]
    np.testing.assert_allclose(vector, engine.encode_query_image(path), atol=1e-4)


def test_search_by_vector_finds_the_indexed_image_first(
    client: TestClient, engine: Engine, gallery: Gallery
) -> None:
    path = str(gallery.by_color["blue"][1].resolve())
    image_id = next(h.id for h in engine.search_text("a blue image", k=MAX_K) if h.path == path)
    stored = VectorStore.load(gallery.index_dir / IMAGES_FAISS, dim=engine.info.dim).reconstruct(image_id)
    response = client.post("/search/vector", json={"vector": stored.tolist(), "k": 4, "modality": "image"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "image" and body["k"] == 4
    assert body["results"][0]["id"] == image_id and body["results"][0]["path"] == path
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert strip_urls(body["results"]) == [asdict(h) for h in engine.search_by_id(image_id, k=4)]

    # A sentence's vector from /embed finds what /search finds, and the captions /texts/search finds.
    [vector] = client.post("/embed", json={"texts": ["a yellow image"]}).json()["vectors"]
    by_vector = client.post("/search/vector", json={"vector": vector, "k": 5}).json()
    by_text = client.get("/search", params={"q": "a yellow image", "k": 5}).json()
    assert by_vector["results"] == by_text["results"]
    texts = client.post("/search/vector", json={"vector": vector, "k": 2, "to": "text"}).json()
    assert texts["kind"] == "text"
    by_text = client.get("/texts/search", params={"q": "a yellow image", "k": 2}).json()
    assert texts["results"] == by_text["results"]


def test_bad_vectors_and_embeds_are_refused_with_a_message(client: TestClient, engine: Engine) -> None:
    dim = engine.info.dim
    good = [1.0] + [0.0] * (dim - 1)
    assert client.post("/search/vector", json={"vector": good}).status_code == 200
    for body, words in [
        ({"vector": good[:-1]}, [f"{dim} numbers"]),
        ({"vector": [*good, 0.0]}, [f"{dim} numbers"]),
        ({"vector": []}, ["vector", "at least 1"]),
        ({"vector": [0.0] * dim}, ["all zeros"]),
        ({"vector": good, "k": 0}, ["k", "greater than or equal to 1"]),
        ({"vector": good, "to": "audio"}, ["to"]),
        ({"vector": good, "modality": "audio"}, ["modality"]),
        ({"vector": good, "extra": 1}, ["extra"]),
        ({"vector": ["a"] * dim}, ["vector", "number"]),
        ({}, ["vector", "required"]),
    ]:
        assert_error(client.post("/search/vector", json=body), 422, *words)
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = '{"vector": [' + ", ".join([literal] + ["0.0"] * (dim - 1)) + "]}"
        response = client.post("/search/vector", content=raw, headers={"content-type": "application/json"})
        assert_error(response, 422, "finite")

    for body, words in [
        ({"texts": []}, ["texts", "at least 1"]),
        ({"texts": ["   "]}, ["empty query"]),
        ({"texts": [""]}, ["texts", "at least 1 character"]),
        ({"texts": ["x" * (MAX_QUERY_CHARS + 1)]}, ["texts", f"at most {MAX_QUERY_CHARS}"]),
        ({"texts": ["a red image"] * (MAX_EMBED_TEXTS + 1)}, ["texts", f"at most {MAX_EMBED_TEXTS}"]),
        ({"texts": "a red image"}, ["texts", "array"]),
        ({"texts": ["a"], "extra": 1}, ["extra"]),
    ]:
        assert_error(client.post("/embed", json=body), 422, *words)
    json_type = {"content-type": "application/json"}
    assert_error(client.post("/embed", content=b"{not json", headers=json_type), 422, "json")
    not_image = client.post("/embed", files={"file": ("notes.png", b"hello, not pixels")})
    assert_error(not_image, 422, "notes.png", "not an image")
    wrong_field = client.post("/embed", files={"image": ("red.png", png_bytes("red", seed=2))})
    assert_error(wrong_field, 422, '"file"')
    plain = client.post("/embed", content=b"a red image", headers={"content-type": "text/plain"})
    assert_error(plain, 415, "JSON", "multipart")
    assert_error(client.post("/embed"), 415)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"q": "a red image", "k": 0}, ["k", "greater than or equal to 1"]),
        ({"q": "a red image", "k": MAX_K + 1}, ["k", f"less than or equal to {MAX_K}"]),
        ({"q": "a red image", "k": "ten"}, ["k", "integer"]),
        ({"k": 3}, ["q", "required"]),
        ({"q": ""}, ["q", "at least 1 character"]),
        ({"q": "   "}, ["empty query"]),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, ["q", f"at most {MAX_QUERY_CHARS}"]),
    ],
)
def test_bad_search_parameters_are_422_with_a_message(
    client: TestClient, params: dict[str, Any], words: list[str]
) -> None:
    assert_error(client.get("/search", params=params), 422, *words)
    assert_error(client.get("/texts/search", params=params), 422, *words)


def test_bad_image_searches(client: TestClient, engine: Engine) -> None:
    assert_error(client.post("/search/image", data={"k": "3"}), 422, "either")
    both = client.post("/search/image", data={"id": "1"}, files={"file": ("a.png", png_bytes("red", seed=1))})
    assert_error(both, 422, "not both")
    assert_error(client.post("/search/image", data={"id": "987654"}), 404, "987654")
    assert_error(client.post("/search/image", data={"id": "0"}), 422, "id")
    assert_error(client.post("/search/image", data={"id": "1", "to": "audio"}), 422, "to")
    assert_error(client.post("/search/image", data={"id": "1", "k": "0"}), 422, "k")
    not_image = client.post("/search/image", files={"file": ("notes.png", b"hello, not pixels")})
    assert_error(not_image, 422, "notes.png", "not an image")
    empty = client.post("/search/image", files={"file": ("empty.jpg", b"")})
    assert_error(empty, 422, "empty")


def test_upload_limits_are_413_and_422(engine: Engine) -> None:
    small = TestClient(create_app(engine, ServiceSettings(max_upload_bytes=2000, max_megapixels=0.01)))
    big = png_bytes("red", seed=3, size=(200, 200))  # incompressible noise: well over 2000 bytes
    assert_error(small.post("/search/image", files={"file": ("big.png", big)}), 413, "larger than")
    assert_error(small.post("/embed", files={"file": ("big.png", big)}), 413, "larger than")

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        yield b"x" * 1500
        yield b"x" * 1500

    streamed = small.post(
        "/search/image", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_error(streamed, 413, "larger than")
    # 150 x 150 = 0.0225 MP: small in bytes, over the 0.01 MP decode limit.
    buffer = io.BytesIO()
    Image.new("RGB", (150, 150), (255, 0, 0)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 2000
    bomb = small.post("/search/image", files={"file": ("wide.png", buffer.getvalue())})
    assert_error(bomb, 422, "max-megapixels")


# -- serving files ------------------------------------------------------------------------------


def test_images_and_thumbnails_are_served(client: TestClient, engine: Engine, gallery: Gallery) -> None:
    for color, paths in gallery.by_color.items():
        hits = {h.path: h.id for h in engine.search_text(caption_for(color), k=MAX_K)}
        for path in paths:
            image_id = hits[str(path.resolve())]
            original = client.get(f"/images/{image_id}")
            assert original.status_code == 200
            assert original.content == path.read_bytes()
            kind = "image/jpeg" if path.suffix == ".jpg" else "image/png"
            assert original.headers["content-type"] == kind

            info = client.get(f"/images/{image_id}/info").json()
            assert info["path"] == str(path.resolve()) and info["name"] == path.name
            assert (info["width"], info["height"]) == Image.open(path).size

            thumb = client.get(f"/images/{image_id}/thumbnail", params={"size": 32})
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            small = Image.open(io.BytesIO(thumb.content))
            assert small.format == "JPEG" and max(small.size) == 32
            again = client.get(
                f"/images/{image_id}/thumbnail",
                params={"size": 32},
                headers={"if-none-match": thumb.headers["etag"]},
            )
            assert again.status_code == 304
    assert_error(client.get("/images/4242"), 404, "4242")
    assert_error(client.get("/images/4242/thumbnail"), 404, "4242")
    assert_error(client.get("/images/1/thumbnail", params={"size": 4096}), 422, "size")


def test_a_file_that_changed_or_became_a_symlink_is_not_served(writable: Writable, tmp_path: Path) -> None:
    engine, client = writable.engine, writable.client
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    hits = {h.path: h.id for h in engine.search_text("a red image", k=MAX_K)}
    red = sorted(p for p in hits if "/red/" in p)
    swapped, edited, vanished = red[0], red[1], red[2]

    os.remove(swapped)
    os.symlink(secret, swapped)  # a link to a file outside the index, planted after indexing
    for url in (f"/images/{hits[swapped]}", f"/images/{hits[swapped]}/thumbnail"):
        response = client.get(url)
        assert_error(response, 404, "changed since it was indexed")
        assert "top secret" not in response.text

    with open(edited, "ab") as fh:
        fh.write(b"appended")
    assert_error(client.get(f"/images/{hits[edited]}"), 404, "changed since it was indexed")

    os.remove(vanished)
    os.mkfifo(vanished)  # a FIFO must not hang the worker
    assert_error(client.get(f"/images/{hits[vanished]}"), 404)
    os.remove(vanished)
    assert_error(client.get(f"/images/{hits[vanished]}/thumbnail"), 404, "gone")


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (no client-side normalisation of ..)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


TRAVERSALS = [
    "/images/../../../../etc/passwd",
    "/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/images/%252e%252e%252fetc%252fpasswd",
    "/images/1%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/images/1/../../../../etc/passwd",
    "/images//etc/passwd",
    "/images/%2Fetc%2Fpasswd",
    "/images/1;/etc/passwd",
    "/images/1%00",
    "/images/0x1",
    "/images/1.0",
    "/images/-1",
    "/images/0",
    "/images/99999999999999999999999999",
    "/images/9223372036854775808",
    "/images/9223372036854775807",
    "/images/1/thumbnail/../../../etc/passwd",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/../../mmsearch/service.py",
    "/..%2F..%2Fetc%2Fpasswd",
]


def test_path_traversal_never_reads_outside_the_index(engine: Engine) -> None:
    with serve(create_app(engine)) as base:
        for target in TRAVERSALS:
            status, body = raw_get(base, target)
            assert status in (400, 404, 422), (target, status)
            assert b"root:" not in body and b"import" not in body, target
        status, body = raw_get(base, "/images/1")
        assert status == 200 and body[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")


def test_non_utf8_file_names_are_served_and_shown(colors_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    color_image("blue", seed=77).save(root / name, "PNG")
    build_index(root, tmp_path / "index", colors_model)
    with Engine.open(tmp_path / "index", device="cpu") as opened:
        client = TestClient(create_app(opened))
        hit = client.get("/search", params={"q": "a blue image", "k": 1}).json()["results"][0]
        assert hit["name"] == "caf\ufffd.png"
        assert client.get(hit["image_url"]).content == (root / name).read_bytes()


# -- safety: tokens, bind addresses, Host header ------------------------------------------------


def test_a_token_is_required_everywhere_but_health_and_the_page(engine: Engine) -> None:
    client = TestClient(create_app(engine, ServiceSettings(token=TOKEN)))
    assert client.get("/health").json()["auth_required"] is True
    assert client.get("/").status_code == 200
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/stats", {}),
        ("GET", "/stats/batching", {}),
        ("GET", "/search", {"params": {"q": "a red image"}}),
        ("GET", "/texts/search", {"params": {"q": "a red image"}}),
        ("POST", "/search/image", {"data": {"id": "1"}}),
        ("POST", "/search/vector", {"json": {"vector": [1.0]}}),
        ("POST", "/embed", {"json": {"texts": ["a red image"]}}),
        ("GET", "/images/1", {}),
        ("GET", "/images/1/thumbnail", {}),
        ("GET", "/images/1/info", {}),
        ("DELETE", "/images/1", {}),
        ("POST", "/index", {"json": {"paths": ["/tmp"]}}),
    ]
    for method, url, kwargs in requests:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
            response = client.request(method, url, headers=headers, **kwargs)
            assert_error(response, 401, "token")
            assert response.headers["www-authenticate"] == "Bearer"
            assert b"PNG" not in response.content
    good = {"authorization": f"Bearer {TOKEN}"}
    assert client.get("/search", params={"q": "a red image"}, headers=good).status_code == 200
    assert client.get("/images/1", headers=good).status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["paths"]["/search"]["get"]["security"] == [{"HTTPBearer": []}]


def test_binding_beyond_loopback_needs_a_token() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(ServiceConfigError, match="MMSEARCH_TOKEN"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(ServiceConfigError, match="shorter than"):
        check_bind("0.0.0.0", "short")
    assert settings_for("127.0.0.1", token=None).allowed_hosts == (*LOOPBACK_HOST_HEADERS, "127.0.0.1")
    assert settings_for("0.0.0.0", token=TOKEN).allowed_hosts is None


def test_serve_refuses_a_public_address_without_a_token(
    gallery: Gallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MMSEARCH_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--db", str(gallery.index_dir), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without a token" in result.output


def test_serve_wires_flags_and_token_into_the_app(
    writable: Writable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mmsearch serve` as a user runs it, with uvicorn.run replaced by a few requests."""
    seen: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        client = TestClient(app)
        seen["anonymous"] = client.get("/stats").status_code
        good = {"authorization": f"Bearer {TOKEN}"}
        seen["images"] = client.get("/stats", headers=good).json()["images"]
        seen["outside"] = client.post("/index", json={"paths": ["/etc"]}, headers=good).status_code
        inside = client.post("/index", json={"paths": [str(writable.photos)]}, headers=good)
        seen["inside"] = inside.status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("MMSEARCH_TOKEN", TOKEN)
    args = ["serve", "--db", str(writable.engine.index_dir), "--host", "0.0.0.0", "--port", "8123"]
    result = CliRunner().invoke(cli_app, [*args, "--root", str(writable.root), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "bearer token required" in result.output
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 8123)
    assert (seen["anonymous"], seen["images"], seen["outside"], seen["inside"]) == (401, 12, 403, 200)


def test_serve_without_the_server_extra_says_what_to_install(
    gallery: Gallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    result = CliRunner().invoke(cli_app, ["serve", "--db", str(gallery.index_dir)])
    assert result.exit_code == 1
    assert "pip install 'mmsearch[server]'" in result.output


def test_loopback_servers_reject_foreign_host_headers(engine: Engine) -> None:
    client = TestClient(
        create_app(engine, settings_for("127.0.0.1", token=None)), base_url="http://127.0.0.1:8000"
    )
    assert client.get("/health").status_code == 200
    assert client.get("/health", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/health", headers={"host": "[::1]:8000"}).status_code == 200
    assert_error(client.get("/search?q=red", headers={"host": "evil.example:8000"}), 400, "host")


# -- writing: POST /index and DELETE ------------------------------------------------------------


def test_post_index_adds_and_refreshes_folders_under_the_roots(writable: Writable) -> None:
    client = writable.client
    new = writable.root / "new" / "deeper"
    new.mkdir(parents=True)
    color_image("red", seed=999).save(new / "fresh red.png")
    (new / "notes.txt").write_text("not an image")

    report = client.post("/index", json={"paths": [str(writable.root / "new")]})
    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["new"], body["indexed"], body["skipped_count"]) == (1, 1, 1)
    assert body["skipped"][0]["path"].endswith("notes.txt")
    found = client.get("/search", params={"q": "a red image", "k": 50}).json()["results"]
    assert str(new / "fresh red.png") in {r["path"] for r in found}

    again = client.post("/index", json={"paths": [str(writable.photos)]}).json()
    assert (again["new"], again["unchanged"]) == (0, 12)


def test_post_index_refuses_paths_outside_the_roots(writable: Writable, tmp_path: Path) -> None:
    client, root = writable.client, writable.root
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    for path in (str(outside), "/", "/etc", f"{root}/../elsewhere", str(root / "escape"), f"{root}-sibling"):
        assert_error(client.post("/index", json={"paths": [path]}), 403, "outside")
    assert_error(client.post("/index", json={"paths": ["photos"]}), 422, "absolute")
    assert_error(client.post("/index", json={"paths": [str(root / "missing")]}), 422, "no such folder")
    assert_error(client.post("/index", json={"paths": [str(root / "a\x00b")]}), 422, "NUL")
    assert_error(client.post("/index", json={"paths": []}), 422, "paths")
    assert_error(client.post("/index", json={"paths": [str(root)], "extra": 1}), 422, "extra")
    assert_error(
        client.post("/index", content=b"{not json", headers={"content-type": "application/json"}), 422
    )

    no_roots = TestClient(create_app(writable.engine))
    assert_error(no_roots.post("/index", json={"paths": [str(root)]}), 403, "--root")


def test_a_second_writer_gets_409(writable: Writable, monkeypatch: pytest.MonkeyPatch) -> None:
    client, engine = writable.client, writable.engine
    # Another process holding the writer lock (as `mmsearch index` would).
    lock = WriterLock(engine.index_dir)
    lock.acquire()
    try:
        assert_error(client.post("/index", json={"paths": [str(writable.photos)]}), 409, "locked")
        assert_error(client.delete("/images/1"), 409, "locked")
    finally:
        lock.release()

    # A second POST /index while the first is still running in this server.
    started, release = threading.Event(), threading.Event()
    real_add = engine.add

    def slow_add(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert release.wait(20)
        return real_add(*args, **kwargs)

    monkeypatch.setattr(engine, "add", slow_add)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/index", json={"paths": [str(writable.photos)]})
        assert started.wait(20)
        assert_error(client.post("/index", json={"paths": [str(writable.photos)]}), 409, "index is locked")
        assert_error(client.delete("/images/1"), 409, "index is locked")
        assert client.get("/search", params={"q": "a red image"}).status_code == 200  # readers go on
        release.set()
        assert first.result(timeout=30).status_code == 200


def test_delete_removes_an_image_but_not_its_file(writable: Writable) -> None:
    client = writable.client
    top = client.get("/search", params={"q": "a green image", "k": 1}).json()["results"][0]
    deleted = client.delete(f"/images/{top['id']}")
    assert deleted.json() == {"id": top["id"], "path": top["path"]}
    assert Path(top["path"]).is_file()
    assert_error(client.get(f"/images/{top['id']}"), 404)
    assert_error(client.delete(f"/images/{top['id']}"), 404)
    assert_error(client.post("/search/image", data={"id": str(top["id"])}), 404)
    after = client.get("/search", params={"q": "a green image", "k": 50}).json()["results"]
    assert top["id"] not in {r["id"] for r in after}
    assert client.get("/stats").json()["images"] == 11


# -- concurrency --------------------------------------------------------------------------------

CLIENTS = 8
REQUESTS_PER_CLIENT = 20


def test_many_clients_get_the_engines_answers(engine: Engine, gallery: Gallery) -> None:
    """8 threads x 20 mixed requests against a real uvicorn: every answer equals the engine's."""
    queries = [caption_for(c) for c in COLORS] + ["a red or blue picture", "something yellow", "green"]
    ids = sorted({h.id for h in engine.search_text("a red image", k=MAX_K)})
    expected_text = {q: [asdict(h) for h in engine.search_text(q, k=5)] for q in queries}
    expected_texts = {q: [asdict(h) for h in engine.search_texts(q, k=3)] for q in queries}
    expected_id = {i: [asdict(h) for h in engine.search_by_id(i, k=5)] for i in ids}

    def work(worker: int, base: str) -> list[str]:
        problems = []
        with httpx.Client(base_url=base, timeout=30) as http:
            for n in range(REQUESTS_PER_CLIENT):
                pick = worker * REQUESTS_PER_CLIENT + n
                query = queries[pick % len(queries)]
                if pick % 3 == 0:
                    got = strip_urls(http.get("/search", params={"q": query, "k": 5}).json()["results"])
                    want = expected_text[query]
                elif pick % 3 == 1:
                    got = http.get("/texts/search", params={"q": query, "k": 3}).json()["results"]
                    want = expected_texts[query]
                else:
                    image_id = ids[pick % len(ids)]
                    body = http.post("/search/image", data={"id": str(image_id), "k": "5"}).json()
                    got, want = strip_urls(body["results"]), expected_id[image_id]
                if got != want:
                    problems.append(f"worker {worker} request {n}: {got} != {want}")
        return problems

    with serve(create_app(engine)) as base, ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda w: work(w, base), range(CLIENTS)))
    assert [p for worker in results for p in worker] == []


# Batching (mmsearch/service/batching.py). A long wait makes "arrived together" certain on a busy
# machine; max_batch caps the batch at the number of requests, so it closes as soon as all came.
TOGETHER = 8
LONG_WAIT_MS = 2000.0
LONE_WAIT_MS = 300.0
SLACK_S = 1.0  # scheduling slack on a shared two-core machine
# Scores agree to this: a batch's forward pass and FAISS batch may round the last float bit
# differently, which can move a 4-decimal score by one unit (the ids and their order stay).
SCORE_TOLERANCE = 1e-4


@dataclass
class Batches:
    """Every Engine.search_batch call an app made: when, and the sentences in it."""

    calls: list[tuple[float, list[str]]]

    @property
    def largest(self) -> int:
        return max((len(texts) for _, texts in self.calls), default=0)


def record_batches(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Batches:
    """Wrap the engine's search_batch (before create_app, which binds it) to record calls."""
    batches = Batches([])
    original = engine.search_batch

    def search_batch(queries: Any) -> Any:
        batches.calls.append((time.monotonic(), [str(q.terms[0].value) for q in queries]))
        return original(queries)

    monkeypatch.setattr(engine, "search_batch", search_batch)
    return batches


def same_answer(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    """Same hits in the same order, with scores equal to SCORE_TOLERANCE."""
    keys = [{k: v for k, v in hit.items() if k != "score"} for hit in got]
    if keys != [{k: v for k, v in hit.items() if k != "score"} for hit in want]:
        return False
    return all(abs(g["score"] - w["score"]) <= SCORE_TOLERANCE for g, w in zip(got, want, strict=True))


def ask_together(base: str, requests: list[tuple[str, str]]) -> list[httpx.Response]:
    """(path, sentence) requests sent by as many threads released at the same moment."""
    barrier = threading.Barrier(len(requests))

    def ask(request: tuple[str, str]) -> httpx.Response:
        path, sentence = request
        barrier.wait()
        return httpx.get(f"{base}{path}", params={"q": sentence, "k": 5}, timeout=60)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(ask, requests))


def test_sentences_arriving_together_are_encoded_together_and_answered_as_in_process(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 simultaneous /search and /texts/search requests against a real uvicorn: one batch
    answers several of them, and each answer is the in-process engine's."""
    sentences = [caption_for(c) for c in COLORS] + [
        "a red or blue picture",
        "something yellow",
        "green",
        "a cat",
    ]
    requests = [("/search" if n % 2 else "/texts/search", s) for n, s in enumerate(sentences)]
    expected = {("/search", s): [asdict(h) for h in engine.search_text(s, k=5)] for s in sentences} | {
        ("/texts/search", s): [asdict(h) for h in engine.search_texts(s, k=5)] for s in sentences
    }
    batches = record_batches(engine, monkeypatch)
    app = create_app(engine, ServiceSettings(max_batch=TOGETHER, batch_wait_ms=LONG_WAIT_MS))
    with serve(app) as base:
        responses = ask_together(base, requests)
        stats = httpx.get(f"{base}/stats/batching").json()
    for request, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        got = strip_urls(results) if request[0] == "/search" else results
        assert same_answer(got, expected[request]), (request, got, expected[request])
    assert batches.largest > 1, batches.calls
    assert sorted(t for _, texts in batches.calls for t in texts) == sorted(sentences)
    assert stats["queries"] == TOGETHER and stats["largest_batch"] == batches.largest
    assert stats["batches"] == len(batches.calls) and stats["max_batch"] == TOGETHER


def test_a_bad_sentence_gets_its_own_422_and_its_batch_mates_their_answers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blank sentence passes the schema (min_length 1) and is refused by the engine inside
    the batch: that request gets 422, the seven others 200 with the in-process answers."""
    good = [caption_for(c) for c in COLORS] + ["a red or blue picture", "something yellow", "green"]
    expected = {s: [asdict(h) for h in engine.search_text(s, k=5)] for s in good}
    batches = record_batches(engine, monkeypatch)
    app = create_app(engine, ServiceSettings(max_batch=TOGETHER, batch_wait_ms=LONG_WAIT_MS))
    bad = "   "
    sentences = [*good[:3], bad, *good[3:]]
    with serve(app) as base:
        responses = ask_together(base, [("/search", s) for s in sentences])
    for sentence, response in zip(sentences, responses, strict=True):
        if sentence == bad:
            assert_error(response, 422, "empty query")
        else:
            assert response.status_code == 200, response.text
            assert same_answer(strip_urls(response.json()["results"]), expected[sentence])
    shared = [texts for _, texts in batches.calls if bad in texts]
    assert shared and len(shared[0]) > 1, batches.calls  # refused inside a batch, not alone


def test_a_lone_sentence_waits_for_company_no_longer_than_the_bound(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = record_batches(engine, monkeypatch)
    app = create_app(engine, ServiceSettings(batch_wait_ms=LONE_WAIT_MS))
    bound_s = LONE_WAIT_MS / 1000
    with serve(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        assert http.get("/search", params={"q": "a red image"}).status_code == 200  # warm
        sent = time.monotonic()
        response = http.get("/search", params={"q": "a blue image"})
        answered = time.monotonic()
    assert response.status_code == 200
    called, texts = batches.calls[-1]
    assert texts == ["a blue image"]
    assert bound_s * 0.9 <= called - sent <= bound_s + SLACK_S  # waited for company, then gave up
    assert answered - sent <= bound_s + SLACK_S + 2.0  # + the search itself, on a busy machine


WORKERS = 2
WORKERS_START_TIMEOUT_S = 300  # three model loads (parent and two workers) on a busy machine


def worker_processes(parent: int) -> list[int]:
    """The processes uvicorn spawned for `serve --workers` (not a resource tracker beside them)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def test_worker_processes_share_one_index_on_disk(writable: Writable) -> None:
    """`serve --workers 2`: both processes answer as the in-process engine does, and after a
    DELETE through one of them no answer from either shows the removed image."""
    engine = writable.engine
    sentences = [caption_for(c) for c in COLORS] * 4
    expected = {s: [asdict(h) for h in engine.search_text(s, k=5)] for s in set(sentences)}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MMSEARCH_TOKEN"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    command = [sys.executable, "-m", "mmsearch.cli", "serve", "--db", str(engine.index_dir)]
    command += ["--port", str(port), "--workers", str(WORKERS), "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WORKERS_START_TIMEOUT_S
        while len(worker_processes(server.pid)) < WORKERS or not _answers(f"{base}/health"):
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            assert time.monotonic() < deadline, "serve --workers did not start"
            time.sleep(0.5)
        before = ask_together(base, [("/search", s) for s in sentences])
        for sentence, response in zip(sentences, before, strict=True):
            assert response.status_code == 200, response.text
            assert same_answer(strip_urls(response.json()["results"]), expected[sentence])
        removed = before[0].json()["results"][0]["id"]
        assert httpx.delete(f"{base}/images/{removed}", timeout=60).status_code == 200
        after = ask_together(base, [("/search", s) for s in sentences])
        assert all(r.status_code == 200 for r in after)
        assert all(removed not in {hit["id"] for hit in r.json()["results"]} for r in after)
        assert len(worker_processes(server.pid)) == WORKERS  # none died on the way
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_batching_defaults_match_the_service_settings() -> None:
    """The CLI repeats two defaults (the service package imports FastAPI; the CLI must not)."""
    from mmsearch.cli import SERVE_BATCH_WAIT_MS, SERVE_MAX_BATCH
    from mmsearch.service.settings import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS

    assert (SERVE_MAX_BATCH, SERVE_BATCH_WAIT_MS) == (DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS)
    assert ServiceSettings().max_batch == DEFAULT_MAX_BATCH


def test_readers_do_not_wait_for_a_writer_and_see_its_commit(writable: Writable) -> None:
    """While a writer holds the lock with rows inserted but not committed, searches answer at once;
    after it commits, the next search sees the new image (the FAISS snapshot is swapped in)."""
    engine, client = writable.engine, writable.client
    before = client.get("/search", params={"q": "a blue image", "k": 50}).json()["results"]
    new_dir = writable.photos / "late"
    new_dir.mkdir()
    color_image("blue", seed=4321).save(new_dir / "late blue.png")
    with IndexWriter(engine.index_dir, engine.encoder.info) as writer, writer.session() as session:
        session.execute(writer_row_insert(new_dir / "late blue.png"))
        session.flush()  # an open write transaction on the catalogue
        started = time.perf_counter()
        during = client.get("/search", params={"q": "a blue image", "k": 50}).json()["results"]
        assert time.perf_counter() - started < 5
        assert during == before
        session.rollback()
    report = client.post("/index", json={"paths": [str(new_dir)]}).json()
    assert report["new"] == 1
    after = client.get("/search", params={"q": "a blue image", "k": 50}).json()["results"]
    assert len(after) == len(before) + 1
    assert str(new_dir / "late blue.png") in {r["path"] for r in after}


def writer_row_insert(path: Path) -> Any:
    from sqlalchemy import insert

    from indexer.store.catalog import ImageRow

    return insert(ImageRow).values(
        path=str(path),
        root=str(path.parent),
        size=1,
        mtime_ns=1,
        content_hash="x",
        width=1,
        height=1,
        indexed_at=0.0,
    )


# -- property-based run against the OpenAPI schema -----------------------------------------------

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

FUZZ_EXAMPLES = 25  # per operation and mode: ~500 requests in all, a few seconds
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/stats"),
    ("GET", "/stats/batching"),
    ("GET", "/search"),
    ("POST", "/search/image"),
    ("POST", "/search/vector"),
    ("POST", "/embed"),
    ("GET", "/texts/search"),
    ("GET", "/images/{image_id}"),
    ("GET", "/images/{image_id}/thumbnail"),
    ("GET", "/images/{image_id}/info"),
    ("DELETE", "/images/{image_id}"),
    ("POST", "/index"),
]


@pytest.fixture(scope="module")
def fuzz_app(colors_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An app over its own index (the fuzzer deletes images and posts index requests)."""
    base = tmp_path_factory.mktemp("fuzz")
    write_gallery(base / "library" / "photos")
    build_index(base / "library" / "photos", base / "index", colors_model)
    with Engine.open(base / "index", device="cpu") as opened:
        roots = ((base / "library").resolve(),)
        yield create_app(opened, ServiceSettings(roots=roots, max_upload_bytes=200_000))


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_generated_requests_never_cause_a_server_error(fuzz_app: Any, method: str, path: str) -> None:
    """Requests generated from /openapi.json, valid and invalid: no 5xx, answers match the schema."""
    operation = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)[path][method]
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )

    @given(case=strategy)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        # A schema cannot say "bytes of a decodable image" or "not all zeros", so a schema-valid
        # upload of random bytes or a zero vector is rightly refused with 422; every other check
        # still runs for these operations.
        refused_though_valid = ("/search/image", "/embed", "/search/vector")
        skip = [positive_data_acceptance] if path in refused_though_valid else []
        case.call_and_validate(excluded_checks=skip)

    run()
