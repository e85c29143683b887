"""Crash safety on Milvus + PostgreSQL: a SIGKILL mid-run, and reconcile after hand-made damage.

The commit order is the default backend's: vectors first (Milvus upserts, durable when
acknowledged), the catalogue last; reconcile on the next writer's open repairs both directions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS
from PIL import Image
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from indexer.store.backends import Backends, catalog_url, read_backends
from indexer.store.catalog import DocTextRow, ImageRow
from indexer.store.index_dir import IndexWriter
from indexer.store.milvus import MilvusVectors
from mmsearch.cli import app

pytest_plugins = ["servers"]  # the real PostgreSQL and Milvus fixtures
REPO = Path(__file__).resolve().parents[2]
N_PHOTOS = 48
KILL_AFTER_ROWS = 4  # committed rows seen in PostgreSQL before the SIGKILL
RUN_TIMEOUT_S = 180.0
# The child commits after every batch, so a kill lands between a Milvus write and a commit, and
# pauses before each commit so the run lasts long enough to be killed on a busy machine.
SLOW_COMMIT_S = 0.1
CHILD = (
    "import sys, time, indexer.indexing.pipeline as p; p.COMMIT_INTERVAL_S = 0.0\n"
    "commit = p._commit\n"
    f"p._commit = lambda *a, **k: (time.sleep({SLOW_COMMIT_S}), commit(*a, **k))[1]\n"
    "from mmsearch.cli import app\n"
    "app(sys.argv[1:])\n"
)


@pytest.fixture
def many_photos(tmp_path: Path, make_color_image: Callable[..., Image.Image]) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(N_PHOTOS):
        color = list(COLORS)[i % len(COLORS)]
        make_color_image(color, seed=500 + i, size=(40, 32)).save(root / f"{i:03d}-{color}.png")
        if i % 3 == 0:
            (root / f"{i:03d}-{color}.txt").write_text(f"a {color} picture number {i}\n")  # own text
    return root


def committed_rows(url: str) -> int:
    engine = create_engine(catalog_url(Backends(catalog=url)))
    try:
        with Session(engine) as session:
            return int(session.scalar(select(func.count()).select_from(ImageRow)) or 0)
    except Exception:  # tables not created yet
        return 0
    finally:
        engine.dispose()


def consistent(db: Path) -> tuple[set[int], set[int]]:
    """(image ids, own-text ids) after asserting that catalogue rows and Milvus vectors agree."""
    backends = read_backends(db)
    vectors = MilvusVectors(backends.vectors, prefix=backends.collection_prefix)
    engine = create_engine(catalog_url(backends))
    try:
        with Session(engine) as session:
            rows = set(session.scalars(select(ImageRow.id)))
            doc_rows = set(session.scalars(select(DocTextRow.image_id)))
        dim = 32
        image_ids = set(vectors.load("images", dim).ids().tolist())
        doc_ids = set(vectors.load("doc_texts", dim).ids().tolist())
    finally:
        engine.dispose()
        vectors.close()
    assert rows == image_ids
    assert doc_rows == doc_ids
    return rows, doc_rows


def test_sigkill_mid_run_then_the_next_run_finishes_consistently(
    many_photos: Path, colors_model: Path, tmp_path: Path, pg_catalog: str, milvus_server: str
) -> None:
    db = tmp_path / "index"
    args = ["index", str(many_photos), "--db", str(db), "--model", str(colors_model), "--batch-size", "2",
            "--vectors", milvus_server, "--catalog", pg_catalog, "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, cwd=REPO)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (
        committed_rows(pg_catalog) < KILL_AFTER_ROWS and child.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert child.poll() is None, "the run finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 0 < committed_rows(pg_catalog) < N_PHOTOS

    with IndexWriter(db, None) as writer:  # reconcile on open
        assert writer.repaired >= 0
    partial, _ = consistent(db)
    report = json.loads(
        CliRunner().invoke(app, ["index", str(many_photos), "--db", str(db), "--json"]).stdout
    )
    assert report["new"] + report["unchanged"] == N_PHOTOS and report["unchanged"] == len(partial)
    rows, doc_rows = consistent(db)
    assert len(rows) == N_PHOTOS and len(doc_rows) == N_PHOTOS // 3


def test_reconcile_repairs_both_directions(
    many_photos: Path, colors_model: Path, tmp_path: Path, pg_catalog: str
) -> None:
    db = tmp_path / "index"
    milvus = f"milvus://{tmp_path / 'v.db'}"
    result = CliRunner().invoke(
        app, ["index", str(many_photos), "--db", str(db), "--model", str(colors_model), "--quiet",
              "--vectors", milvus, "--catalog", pg_catalog],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows, doc_rows = consistent(db)
    lost = min(rows - doc_rows)  # an image without own text: one row, one vector
    with IndexWriter(db, None) as writer:  # damage as a crash between the two commits leaves it
        writer.images.add(np.array([10**9], np.int64), np.ones((1, 32), np.float32) / np.sqrt(32))
        writer.images.remove([lost])  # a row whose vector is gone
    with IndexWriter(db, None) as writer:
        assert writer.repaired == 2
    after, _ = consistent(db)
    assert after == rows - {lost}
    report = json.loads(
        CliRunner().invoke(app, ["index", str(many_photos), "--db", str(db), "--json"]).stdout
    )
    assert report["new"] == 1  # the row without a vector was dropped, so its file is encoded again
    assert len(consistent(db)[0]) == N_PHOTOS
