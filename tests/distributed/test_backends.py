"""Vectors in Milvus, the catalogue in PostgreSQL: chosen once, same answers as FAISS + SQLite.

The servers are real (servers.py): a throw-away PostgreSQL cluster and Milvus Lite on a file.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS, caption_for
from PIL import Image
from sqlalchemy import text
from typer.testing import CliRunner

from indexer.store.backends import BACKENDS_FILE
from indexer.store.index_dir import IndexLockedError, IndexWriter
from mmsearch.cli import app
from mmsearch.engine import Engine

pytest_plugins = ["servers"]  # the real PostgreSQL and Milvus fixtures
PHOTOS_PER_COLOR = 3


def run_cli(*args: object, ok: bool = True) -> str:
    """Invoke `mmsearch ARGS`; returns stdout (stderr when ok=False, the run must fail)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout
    assert result.exit_code != 0, result.output
    return result.stderr


@pytest.fixture
def photos(tmp_path: Path, make_color_image: Callable[..., Image.Image]) -> Path:
    """Three noisy pictures per colour in nested folders (2023/ holds one of each)."""
    root = tmp_path / "photos"
    for c, color in enumerate(COLORS):
        for i in range(PHOTOS_PER_COLOR):
            folder = root / "2023" if i == 0 else root / "misc" / color
            folder.mkdir(parents=True, exist_ok=True)
            make_color_image(color, seed=9000 + 10 * c + i, size=(48, 40)).save(folder / f"{color}{i}.png")
    return root


def search_json(db: Path, *args: object) -> list[tuple[int, str, float]]:
    hits = json.loads(run_cli("search", *args, "--db", db, "--json"))["results"]
    return [(h["id"], h.get("path") or h.get("text"), h["score"]) for h in hits]


def test_milvus_and_postgres_answer_like_faiss_and_sqlite(
    photos: Path, colors_model: Path, tmp_path: Path, pg_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_db, dist_db = tmp_path / "default", tmp_path / "dist"
    milvus = f"milvus://{tmp_path / 'vectors.db'}"
    run_cli("index", photos, "--db", default_db, "--model", colors_model, "--quiet")
    run_cli(
        "index",
        photos,
        "--db",
        dist_db,
        "--model",
        colors_model,
        "--quiet",
        "--vectors",
        milvus,
        "--catalog",
        pg_catalog,
    )

    recorded = json.loads((dist_db / BACKENDS_FILE).read_text())
    assert recorded["vectors"] == milvus and recorded["catalog"] == pg_catalog
    assert "test-only" not in (dist_db / BACKENDS_FILE).read_text()  # no password in the folder
    assert not list(dist_db.glob("*.faiss")) and not (dist_db / "catalog.sqlite3").exists()

    for color in COLORS:  # exact index types: the same ids, in the same order, same scores
        query = caption_for(color)
        want = search_json(default_db, query, "-k", 8)
        got = search_json(dist_db, query, "-k", 8)
        assert [h[:2] for h in got] == [h[:2] for h in want]
        assert np.allclose([h[2] for h in got], [h[2] for h in want], atol=1e-4)
        assert search_json(dist_db, query, "--under", photos / "2023") == search_json(
            default_db, query, "--under", photos / "2023"
        )
        image = photos / "2023" / f"{color}0.png"
        assert search_json(dist_db, "--image", image, "-k", 4) == search_json(
            default_db, "--image", image, "-k", 4
        )

    for db in (default_db, dist_db):
        (tmp_path / "captions.txt").write_text("\n".join(caption_for(c) for c in COLORS) + "\n")
        run_cli("add-texts", tmp_path / "captions.txt", "--db", db)
    image = photos / "2023" / "red0.png"
    assert search_json(dist_db, "--image", image, "--to", "text") == search_json(
        default_db, "--image", image, "--to", "text"
    )

    info = json.loads(run_cli("info", "--db", dist_db, "--json"))
    assert info["vectors_at"] == milvus and info["catalog_at"] == pg_catalog
    assert info["images"] == info["image_vectors"] == len(COLORS) * PHOTOS_PER_COLOR
    assert info["index_type"] == "milvus FLAT IP"
    assert json.loads(run_cli("info", "--db", default_db, "--json"))["vectors_at"].startswith("faiss")

    for db in (default_db, dist_db):  # removal, then an unchanged re-index
        assert "removed 4" in run_cli("remove", photos / "2023", "--db", db)
    assert search_json(dist_db, "a red image", "-k", 20) == search_json(default_db, "a red image", "-k", 20)
    again = json.loads(run_cli("index", photos, "--db", dist_db, "--json"))
    assert again["new"] == 4 and again["unchanged"] == 8 and again["repaired"] == 0

    with Engine.open(dist_db) as engine:  # the Python API needs only the folder too
        assert engine.stats().images == len(COLORS) * PHOTOS_PER_COLOR
        assert engine.search_text("a blue image", k=1)[0].path.endswith(".png")


def test_backends_are_chosen_once(photos: Path, colors_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "index"
    milvus = f"milvus://{tmp_path / 'v.db'}"
    run_cli("index", photos, "--db", db, "--model", colors_model, "--quiet", "--vectors", milvus)
    error = run_cli(
        "index",
        photos,
        "--db",
        db,
        "--vectors",
        "faiss",
        "--catalog",
        "postgresql+psycopg://u@localhost/x",
        ok=False,
    )
    assert "chosen when an index is created" in error and milvus in error
    assert json.loads(run_cli("index", photos, "--db", db, "--json"))["unchanged"] == 12

    plain = tmp_path / "plain"
    run_cli("index", photos, "--db", plain, "--model", colors_model, "--quiet")
    error = run_cli("index", photos, "--db", plain, "--vectors", milvus, ok=False)
    assert "chosen when an index is created" in error


@pytest.mark.parametrize(
    ("flags", "extra"),
    [
        (["--vectors", "milvus:///tmp/x.db"], "mmsearch[milvus]"),
        (["--catalog", "postgresql+psycopg://me@db.example/photos"], "mmsearch[postgres]"),
        (["--ray", "local"], "mmsearch[ray]"),
    ],
)
def test_a_flag_without_its_extra_fails_with_one_line(
    flags: list[str], extra: str, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    hidden = {"pymilvus", "psycopg", "ray"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    error = run_cli("index", photos, "--db", tmp_path / "db", *flags, ok=False)
    assert error.count("\n") == 1 and extra in error and error.startswith("error:")
    assert not (tmp_path / "db" / BACKENDS_FILE).exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--catalog", "postgresql+psycopg://me:secret@db.example/photos"], "leave the password out"),
        (["--vectors", "milvus://relative/path.db"], "HOST:PORT"),
        (["--vectors", "cassandra://x:1"], "use faiss, milvus"),
    ],
)
def test_bad_backend_values_fail_with_one_line(
    flags: list[str], words: str, photos: Path, tmp_path: Path
) -> None:
    error = run_cli("index", photos, "--db", tmp_path / "db", *flags, ok=False)
    assert words in error and error.count("\n") == 1


def test_postgres_writer_lock_excludes_writers_in_other_folders(
    photos: Path, colors_model: Path, tmp_path: Path, pg_catalog: str
) -> None:
    """Two folders naming one catalogue stand for two machines: a file lock could not see both."""
    here, there = tmp_path / "machine-a", tmp_path / "machine-b"
    run_cli(
        "index",
        photos,
        "--db",
        here,
        "--model",
        colors_model,
        "--quiet",
        "--vectors",
        f"milvus://{tmp_path / 'v.db'}",
        "--catalog",
        pg_catalog,
    )
    there.mkdir()
    shutil.copy(here / BACKENDS_FILE, there / BACKENDS_FILE)
    with IndexWriter(here, None) as writer:
        with pytest.raises(IndexLockedError, match="index is locked by mmsearch-writer"):
            IndexWriter(there, None).__enter__()
        error = run_cli("remove", photos / "2023", "--db", there, ok=False)
        assert "index is locked" in error
        with writer.session() as session:  # the lock is a real advisory lock in the database
            held = session.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))
            assert held.scalar() == 1
    assert "removed 4" in run_cli("remove", photos / "2023", "--db", there)  # released on exit


def test_optimize_refuses_a_milvus_index(photos: Path, colors_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "index"
    run_cli(
        "index",
        photos,
        "--db",
        db,
        "--model",
        colors_model,
        "--quiet",
        "--vectors",
        f"milvus://{tmp_path / 'v.db'}",
    )
    error = run_cli("optimize", "--ivf", "--db", db, ok=False)
    assert "chooses its own index type" in error and error.count("\n") == 1
