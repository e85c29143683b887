"""Two `mmsearch serve` replicas on one Milvus + PostgreSQL index answer alike, and a write
through one is visible through the other on its next query (no snapshot to reload: both read the
catalogue and Milvus live, Milvus searches with Strong consistency)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import COLORS, caption_for
from PIL import Image
from typer.testing import CliRunner

from mmsearch.cli import app

pytest_plugins = ["servers"]  # the real PostgreSQL and Milvus fixtures
httpx = pytest.importorskip("httpx")
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
# What the docs promise: a write is visible through every replica on the first query after the
# writing request has answered; no cache or snapshot sits in between.
QUERIES_UNTIL_VISIBLE = 1


def start_replica(db: Path, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "mmsearch.cli", "serve", "--db", str(db), "--port", str(port),
               "--root", str(root), "--log-level", "warning"]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=REPO), f"http://127.0.0.1:{port}"


def wait_until_up(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "a replica exited"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail("a replica did not start")


@pytest.fixture
def replicas(
    tmp_path: Path,
    colors_model: Path,
    pg_catalog: str,
    milvus_server: str,
    make_color_image: Callable[..., Image.Image],
) -> Iterator[tuple[Path, list[str]]]:
    photos = tmp_path / "photos"
    for i, color in enumerate(COLORS):
        (photos / "base").mkdir(parents=True, exist_ok=True)
        make_color_image(color, seed=40 + i, size=(40, 32)).save(photos / "base" / f"{color}.png")
    (photos / "later").mkdir()
    make_color_image("red", seed=99, size=(40, 32)).save(photos / "later" / "another red.png")
    db = tmp_path / "index"
    args = ["index", str(photos / "base"), "--db", str(db), "--model", str(colors_model), "--quiet",
            "--vectors", milvus_server, "--catalog", pg_catalog]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with ExitStack() as stack:
        started = [start_replica(db, photos) for _ in range(2)]
        for proc, _ in started:
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
        for proc, url in started:
            wait_until_up(proc, url)
        yield photos, [url for _, url in started]


def ids_for(url: str, query: str) -> list[int]:
    response = httpx.get(f"{url}/search", params={"q": query, "k": 10}, timeout=30)
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


def queries_until(check: Callable[[], bool]) -> int:
    """How many queries it took until `check` held (fails past QUERIES_UNTIL_VISIBLE)."""
    for queries in range(1, QUERIES_UNTIL_VISIBLE + 1):
        if check():
            return queries
    pytest.fail(f"the write was not visible after {QUERIES_UNTIL_VISIBLE} queries")


def test_two_replicas_answer_alike_and_see_each_others_writes(replicas: tuple[Path, list[str]]) -> None:
    photos, (first, second) = replicas
    for color in COLORS:
        assert ids_for(first, caption_for(color)) == ids_for(second, caption_for(color))
    before = ids_for(second, caption_for("red"))
    assert len(before) == len(COLORS)

    added = httpx.post(f"{first}/index", json={"paths": [str(photos / "later")]}, timeout=120)
    assert added.status_code == 200 and added.json()["new"] == 1, added.text
    queries_until(lambda: len(ids_for(second, caption_for("red"))) == len(COLORS) + 1)
    new_id = (set(ids_for(second, caption_for("red"))) - set(before)).pop()
    assert httpx.get(f"{second}/stats", timeout=30).json()["images"] == len(COLORS) + 1

    removed = httpx.delete(f"{second}/images/{new_id}", timeout=60)
    assert removed.status_code == 200, removed.text
    queries_until(lambda: new_id not in ids_for(first, caption_for("red")))
    assert httpx.get(f"{first}/images/{new_id}/info", timeout=30).status_code == 404
