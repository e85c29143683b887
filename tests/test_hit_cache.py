"""Searches name their hits from catalogue rows kept between searches (indexer.store.hit_cache):
a commit by any other connection, a rename above all, is seen by the very next search."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, insert
from sqlalchemy.exc import OperationalError

from indexer.indexing.pipeline import index_folders
from indexer.media.images import open_image
from indexer.models.encoder import Encoder, load_encoder
from indexer.store import catalog, hit_cache
from indexer.store.hit_cache import HitRowCache
from indexer.store.index_dir import IndexWriter
from mmsearch import Engine

if TYPE_CHECKING:
    from conftest import PhotoFolder

ROWS = 5


@pytest.fixture(scope="module")
def encoder(colors_model: Path) -> Encoder:
    return load_encoder(colors_model, device="cpu")


@pytest.fixture
def catalogue(tmp_path: Path, encoder: Encoder) -> Path:
    """An index folder whose catalogue holds images 1..ROWS at /photos/N.png and info note=one."""
    index_dir = tmp_path / "index"
    with IndexWriter(index_dir, encoder.info) as writer, writer.session() as session:
        session.execute(insert(catalog.ImageRow), [_image_row(i) for i in range(1, ROWS + 1)])
        session.execute(
            insert(catalog.TextRow), [{"id": 1, "text": "a caption", "source": "api", "added_at": 0.0}]
        )
        catalog.write_info(session, {"note": "one"})
        session.commit()
    return index_dir


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], list[int]]]:
    """The (image ids, text ids) of every catalogue read the cache makes, on its own connection
    or through the pool (calls go through to the real functions)."""
    seen: list[tuple[list[int], list[int]]] = []
    for name in ("hit_rows", "read_hit_rows"):
        real = getattr(hit_cache, name)

        def counted(*args, image_ids, text_ids, info_key, real=real):  # type: ignore[no-untyped-def]
            seen.append((list(image_ids), list(text_ids)))
            return real(*args, image_ids=image_ids, text_ids=text_ids, info_key=info_key)

        monkeypatch.setattr(hit_cache, name, counted)
    return seen


@pytest.fixture
def cache(catalogue: Path) -> Iterator[HitRowCache]:
    sql = catalog.open_catalog(catalogue, create=False)
    rows = HitRowCache(sql)
    yield rows
    rows.close()
    sql.dispose()


def _image_row(i: int, path: str | None = None) -> dict[str, object]:
    return {
        "id": i,
        "path": path or f"/photos/{i}.png",
        "root": "/photos",
        "size": 1,
        "mtime_ns": 0,
        "content_hash": str(i),
        "width": 1,
        "height": 1,
        "indexed_at": 0.0,
    }


def commit(index_dir: Path, statement: str, *params: object) -> None:
    """One statement committed from a connection of its own (as another process would)."""
    with closing(sqlite3.connect(index_dir / catalog.CATALOG_FILE)) as connection, connection:
        connection.execute(statement, params)


def test_rows_already_read_are_not_read_again_until_a_commit(
    catalogue: Path, cache: HitRowCache, statements: list[tuple[list[int], list[int]]]
) -> None:
    first = cache.read(image_ids=[1, 2], text_ids=[1], info_key="note")
    assert first == catalog.HitRows({1: "/photos/1.png", 2: "/photos/2.png"}, {1: "a caption"}, "one")
    assert cache.read(image_ids=[2, 1], text_ids=[1], info_key="note") == first
    assert len(statements) == 1
    # A search with an id not kept reads all of its rows (one snapshot); an id without a row is
    # remembered as such.
    absent = cache.read(image_ids=[1, 99], text_ids=[], info_key="note")
    assert absent.paths == {1: "/photos/1.png"} and statements[-1] == ([1, 99], [])
    cache.read(image_ids=[99], text_ids=[], info_key="note")
    assert len(statements) == 2

    commit(
        catalogue,
        "INSERT INTO images (id, path, root, size, mtime_ns, content_hash, width, height, "
        "indexed_at) VALUES (99, '/photos/new.png', '/photos', 1, 0, 'x', 1, 1, 0)",
    )
    assert cache.read(image_ids=[1, 99], text_ids=[], info_key="note").paths == {
        1: "/photos/1.png",
        99: "/photos/new.png",
    }
    commit(catalogue, "UPDATE index_info SET value = 'two' WHERE key = 'note'")
    assert cache.read(image_ids=[1], text_ids=[], info_key="note").info_value == "two"
    commit(catalogue, "DELETE FROM images WHERE id = 2")
    assert cache.read(image_ids=[1, 2], text_ids=[], info_key="note").paths == {1: "/photos/1.png"}


def test_a_catalogue_without_a_change_counter_is_read_by_every_search(
    statements: list[tuple[list[int], list[int]]],
) -> None:
    """A server catalogue (PostgreSQL) has no PRAGMA data_version: nothing may be kept. An
    in-memory SQLite database stands in for it here (it has no file to watch either)."""
    sql = create_engine("sqlite://")
    catalog.Base.metadata.create_all(sql)
    with sql.begin() as connection:
        connection.execute(insert(catalog.ImageRow), [_image_row(1)])
    rows = HitRowCache(sql)
    for _ in range(3):
        assert rows.read(image_ids=[1], text_ids=[], info_key="note").paths == {1: "/photos/1.png"}
    assert len(statements) == 3
    rows.close()
    sql.dispose()


def test_readers_never_see_a_path_older_than_one_they_saw(catalogue: Path, cache: HitRowCache) -> None:
    """Threads read while a writer renames one image 60 times, a commit each: each thread's
    answers only move forward, and the writer's own read after each commit sees that commit
    (rows a reader read before it must never be kept as if read after it)."""
    renames = 60
    failures: list[str] = []
    done = threading.Event()

    def reader() -> None:
        newest = -1
        while not done.is_set():
            path = cache.read(image_ids=[1, 2], text_ids=[], info_key="note").paths[1]
            step = -1 if path == "/photos/1.png" else int(path.rsplit("-", 1)[1].removesuffix(".png"))
            if step < newest:
                failures.append(f"saw rename {step} after rename {newest}")
            newest = max(newest, step)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for step in range(renames):
        commit(catalogue, "UPDATE images SET path = ? WHERE id = 1", f"/photos/renamed-{step}.png")
        seen = cache.read(image_ids=[1, 2], text_ids=[], info_key="note").paths[1]
        if seen != f"/photos/renamed-{step}.png":
            failures.append(f"rename {step} committed, the next read said {seen}")
    done.set()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert (
        cache.read(image_ids=[1], text_ids=[], info_key="note").paths[1]
        == f"/photos/renamed-{renames - 1}.png"
    )


def test_an_open_engine_names_a_renamed_file_by_its_new_path(
    photo_folder: PhotoFolder, tmp_path: Path, encoder: Encoder
) -> None:
    """A rename-only run rewrites paths and no vector file: the open engine's next search must
    still say where the file is now."""
    index_dir = tmp_path / "index"
    index_folders([photo_folder.root], index_dir, encoder)
    blue = photo_folder.valid["blue"]
    query = open_image(blue)
    with Engine.open(index_dir, model=encoder.info.source) as engine:
        before = engine.search_image(query, k=1)[0]
        assert before.path == str(blue.resolve())
        moved = photo_folder.root / "renamed blue.png"
        blue.rename(moved)
        report = index_folders([photo_folder.root], index_dir, encoder)
        assert (report.moved, report.encoded) == (1, 0)
        after = engine.search_image(query, k=1)[0]
        assert (after.id, after.path) == (before.id, str(moved.resolve()))


def test_a_commit_landing_while_rows_are_read_is_seen_by_the_next_read(
    catalogue: Path, cache: HitRowCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows a read returns are kept under the version of the snapshot they came from, never
    under a later one: here another connection commits a rename just after the cache's statement
    has read the old path (deterministically, from inside the read)."""
    real = hit_cache.read_hit_rows
    renamed = iter(["/photos/renamed.png"])

    def read_then_commit(*args, **kwargs):  # type: ignore[no-untyped-def]
        rows = real(*args, **kwargs)
        for path in renamed:  # only during the first read
            commit(catalogue, "UPDATE images SET path = ? WHERE id = 1", path)
        return rows

    monkeypatch.setattr(hit_cache, "read_hit_rows", read_then_commit)
    assert cache.read(image_ids=[1], text_ids=[], info_key="note").paths == {1: "/photos/1.png"}
    assert cache.read(image_ids=[1], text_ids=[], info_key="note").paths == {1: "/photos/renamed.png"}


def test_a_broken_catalogue_is_reported_as_sqlalchemy_reports_it(catalogue: Path, cache: HitRowCache) -> None:
    """The cache's own connection fails the way the pooled one does (an OperationalError the
    engine's callers already map), not with a bare sqlite3 error."""
    cache.read(image_ids=[1], text_ids=[], info_key="note")
    commit(catalogue, "ALTER TABLE images RENAME TO images_gone")
    with pytest.raises(OperationalError, match="no such table"):
        cache.read(image_ids=[1], text_ids=[], info_key="note")
