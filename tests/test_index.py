"""Indexing into real SQLite + FAISS files: skip-and-report, incremental runs, locks, repair."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.indexing.pipeline import IndexOptions, PipelineError, add_texts, index_folders, remove_images
from indexer.media.images import open_image
from indexer.models.config import load_named_config
from indexer.models.encoder import Encoder, load_encoder
from indexer.models.native import build_model, load_model_dir, save_model_dir
from indexer.store.catalog import CATALOG_FILE
from indexer.store.index_dir import (
    IMAGES_FAISS,
    TEXTS_FAISS,
    IndexLockedError,
    IndexMismatchError,
    IndexWriter,
)
from indexer.store.vectors import VectorStore, VectorStoreError
from mmsearch import Engine

if TYPE_CHECKING:
    from conftest import PhotoFolder


@pytest.fixture(scope="module")
def encoder(colors_model: Path) -> Encoder:
    return load_encoder(colors_model, device="cpu")


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


def sql(index_dir: Path, query: str, *params: object) -> list[tuple]:
    """Run one statement on the index's SQLite file directly (committed, connection closed)."""
    with closing(sqlite3.connect(index_dir / CATALOG_FILE)) as conn, conn:
        return conn.execute(query, params).fetchall()


def sql_images(index_dir: Path) -> dict[str, int]:
    """path -> id straight from the SQLite file."""
    return dict(sql(index_dir, "SELECT path, id FROM images"))


def faiss_ids(index_dir: Path, name: str = IMAGES_FAISS) -> set[int]:
    return {int(i) for i in VectorStore.load(index_dir / name, dim=32).ids()}


def snapshot(index_dir: Path) -> tuple[list[str], dict[str, bytes]]:
    """Everything an index holds: the SQL dump and the bytes of its FAISS files."""
    with closing(sqlite3.connect(index_dir / CATALOG_FILE)) as conn:
        dump = list(conn.iterdump())
    return dump, {p.name: p.read_bytes() for p in sorted(index_dir.glob("*.faiss"))}


def encode_files(encoder: Encoder, paths: list[Path]) -> np.ndarray:
    """Reference vectors (n, dim), decoded and encoded the way a query image is."""
    size = encoder.preprocess_config.image_size
    pixels = torch.stack([encoder.preprocess(open_image(p, target_size=size)) for p in paths])
    return encoder.encode_pixels(pixels)


# -- a folder of awkward files -----------------------------------------------------------------


def test_indexes_exactly_the_valid_images_and_names_each_bad_file(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    report = index_folders([photo_folder.root], index_dir, encoder)

    assert set(sql_images(index_dir)) == photo_folder.valid_paths  # nested, unicode, .PNG
    assert report.new == report.encoded == len(photo_folder.valid)
    assert (report.changed, report.moved, report.removed, report.unchanged) == (0, 0, 0, 0)
    reasons = {s.path: s.reason for s in report.skipped}
    expected = {str(p.resolve()): reason for p, reason in photo_folder.skipped.items()}
    assert reasons == expected
    indexed_or_reported = set(sql_images(index_dir)) | set(reasons)
    for ignored in photo_folder.ignored:  # hidden files, .DS_Store, hidden folders
        assert str(ignored.resolve()) not in indexed_or_reported
    assert faiss_ids(index_dir) == set(sql_images(index_dir).values())


def test_rerun_encodes_nothing(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    before = sql_images(index_dir)

    def must_not_encode(pixels: torch.Tensor) -> np.ndarray:
        raise AssertionError("an unchanged folder must not be encoded again")

    monkeypatch.setattr(encoder, "encode_pixels", must_not_encode)
    report = index_folders([photo_folder.root], index_dir, encoder)
    assert report.unchanged == len(photo_folder.valid)
    assert (report.new, report.changed, report.moved, report.removed, report.encoded) == (0,) * 5
    # Bad files are still reported (from the catalogue, without decoding them again).
    assert {s.path for s in report.skipped} == {str(p.resolve()) for p in photo_folder.skipped}
    assert sql_images(index_dir) == before


def test_touched_file_is_unchanged(photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    path = photo_folder.valid["green"]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    before = sql_images(index_dir)

    report = index_folders([photo_folder.root], index_dir, encoder)
    assert report.unchanged == len(photo_folder.valid) and report.encoded == 0
    assert sql_images(index_dir) == before
    [(mtime,)] = sql(index_dir, "SELECT mtime_ns FROM images WHERE path = ?", str(path.resolve()))
    assert mtime == path.stat().st_mtime_ns  # recorded, so the next run need not hash it


def test_edited_file_is_changed_and_reencoded(
    photo_folder: PhotoFolder,
    index_dir: Path,
    encoder: Encoder,
    make_color_image: Callable[..., Image.Image],
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    path = photo_folder.valid["red"]
    make_color_image("blue", seed=999, size=(48, 40)).save(path)  # same name, new picture

    report = index_folders([photo_folder.root], index_dir, encoder)
    assert (report.changed, report.encoded, report.new) == (1, 1, 0)
    rows = sql_images(index_dir)
    assert set(rows) == photo_folder.valid_paths
    assert faiss_ids(index_dir) == set(rows.values())
    store = VectorStore.load(index_dir / IMAGES_FAISS, dim=32)
    stored = store.reconstruct(rows[str(path.resolve())])
    assert np.allclose(stored, encode_files(encoder, [path])[0], atol=1e-5)


def test_renamed_file_is_moved_not_reencoded(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    old = photo_folder.valid["blue"]
    new = photo_folder.root / "sub" / "renamed blue.png"
    old_id = sql_images(index_dir)[str(old.resolve())]
    vector = VectorStore.load(index_dir / IMAGES_FAISS, dim=32).reconstruct(old_id)
    old.rename(new)

    monkeypatch.setattr(encoder, "encode_pixels", lambda pixels: pytest.fail("re-encoded"))
    report = index_folders([photo_folder.root], index_dir, encoder)
    assert (report.moved, report.new, report.removed, report.encoded) == (1, 0, 0, 0)
    rows = sql_images(index_dir)
    assert rows[str(new.resolve())] == old_id and str(old.resolve()) not in rows
    assert np.array_equal(VectorStore.load(index_dir / IMAGES_FAISS, dim=32).reconstruct(old_id), vector)


def test_deleted_file_is_removed_and_never_found(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    gone = photo_folder.valid["yellow"]
    gone_id = sql_images(index_dir)[str(gone.resolve())]
    query = open_image(gone)  # the same picture, kept in memory: it would be the top hit
    gone.unlink()

    report = index_folders([photo_folder.root], index_dir, encoder)
    assert report.removed == 1
    assert gone_id not in faiss_ids(index_dir)
    assert str(gone.resolve()) not in sql_images(index_dir)
    with Engine.open(index_dir) as engine:
        hits = engine.search_image(query, k=100)
        assert hits and all(h.id != gone_id and h.path != str(gone.resolve()) for h in hits)
        assert len(hits) == len(photo_folder.valid) - 1


def test_remove_images_drops_files_and_folders_from_faiss_and_sqlite(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    red = photo_folder.valid["red"]
    assert remove_images(index_dir, [red]) == 1
    assert remove_images(index_dir, [red]) == 0  # already gone
    assert remove_images(index_dir, [photo_folder.root / "sub"]) == 2  # green.jpg, deeper/blue.PNG
    rows = sql_images(index_dir)
    assert set(rows) == {str(photo_folder.valid["yellow"].resolve())}
    assert faiss_ids(index_dir) == set(rows.values())
    assert red.exists()  # the files themselves are untouched


def test_faiss_ids_are_sqlite_primary_keys(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    rows = sql_images(index_dir)
    store = VectorStore.load(index_dir / IMAGES_FAISS, dim=32)
    assert sorted(int(i) for i in store.ids()) == sorted(rows.values())
    # Each id's vector is the vector of that row's file.
    paths = sorted(rows)
    reference = encode_files(encoder, [Path(p) for p in paths])
    for path, want in zip(paths, reference, strict=True):
        assert np.allclose(store.reconstruct(rows[path]), want, atol=1e-5), path


def test_hit_rows_reads_any_number_of_ids_and_one_info_value(index_dir: Path, encoder: Encoder) -> None:
    """catalog.hit_rows: paths (undecodable names as os.scandir gives them) and texts by id past
    one statement's id limit, ids without a row left out, the info value or None."""
    from sqlalchemy import insert

    from indexer.store import catalog

    odd = os.fsdecode(b"/photos/caf\xe9.png")  # a Latin-1 name: a lone surrogate in the str
    count = catalog.IDS_PER_STATEMENT * 2 + 5
    with IndexWriter(index_dir, encoder.info) as writer, writer.session() as session:
        session.execute(
            insert(catalog.ImageRow),
            [
                {"id": i, "path": odd if i == 7 else f"/photos/{i}.png", "root": "/photos", "size": 1,
                 "mtime_ns": 0, "content_hash": str(i), "width": 1, "height": 1, "indexed_at": 0.0}
                for i in range(1, count + 1)
            ],
        )
        session.execute(
            insert(catalog.TextRow),
            [{"id": i, "text": f"caption {i}", "source": "api", "added_at": 0.0} for i in (1, 2, 3)],
        )
        catalog.write_info(session, {"note": "kept"})
        session.commit()
    sql_engine = catalog.open_catalog(index_dir, create=False)
    try:
        wanted = [*range(1, count + 1), count + 1, count + 2]  # the last two have no row
        rows = catalog.hit_rows(sql_engine, image_ids=wanted, text_ids=[3, 1, 99], info_key="note")
        assert rows.paths == {i: odd if i == 7 else f"/photos/{i}.png" for i in range(1, count + 1)}
        assert rows.texts == {1: "caption 1", 3: "caption 3"} and rows.info_value == "kept"
        none = catalog.hit_rows(sql_engine, image_ids=[], text_ids=[], info_key="absent")
        assert none == catalog.HitRows({}, {}, None)
    finally:
        sql_engine.dispose()


def test_remove_accepts_the_path_spelled_through_a_symlink(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder, tmp_path: Path
) -> None:
    # e.g. a symlinked home folder: the user indexes and removes through the same link.
    link = tmp_path / "link-to-photos"
    link.symlink_to(photo_folder.root, target_is_directory=True)
    index_folders([link], index_dir, encoder)
    assert remove_images(index_dir, [link / "red.png"]) == 1
    assert remove_images(index_dir, [link / "sub"]) == 2
    assert set(sql_images(index_dir)) == {str(photo_folder.valid["yellow"].resolve())}
    assert faiss_ids(index_dir) == set(sql_images(index_dir).values())


def test_bad_file_fixed_is_indexed_and_good_file_broken_is_dropped(
    photo_folder: PhotoFolder,
    index_dir: Path,
    encoder: Encoder,
    make_color_image: Callable[..., Image.Image],
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    corrupt = photo_folder.root / "corrupt.png"
    make_color_image("green", seed=4242).save(corrupt)  # the user repaired it
    red = photo_folder.valid["red"]
    red.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # and broke another one

    report = index_folders([photo_folder.root], index_dir, encoder)
    assert report.new == 1 and report.encoded == 1
    reasons = {s.path: s.reason for s in report.skipped}
    assert str(corrupt.resolve()) not in reasons
    assert str(red.resolve()) in reasons
    rows = sql_images(index_dir)
    assert str(corrupt.resolve()) in rows and str(red.resolve()) not in rows
    assert faiss_ids(index_dir) == set(rows.values())


def test_duplicate_files_are_tracked_one_row_each(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    # Copies of one photo share a content hash; each copy is still its own row.
    red = photo_folder.valid["red"]
    copies = [photo_folder.root / "copy 1.png", photo_folder.root / "sub" / "copy 2.png"]
    for copy in copies:
        copy.write_bytes(red.read_bytes())
    index_folders([photo_folder.root], index_dir, encoder)
    assert len(sql_images(index_dir)) == len(photo_folder.valid) + 2

    # One copy renamed, the original and the other copy deleted: one move, two removals.
    renamed = photo_folder.root / "renamed copy.png"
    copies[0].rename(renamed)
    red.unlink()
    copies[1].unlink()
    report = index_folders([photo_folder.root], index_dir, encoder)
    assert (report.moved, report.removed, report.encoded) == (1, 2, 0)
    rows = sql_images(index_dir)
    assert all(Path(p).exists() for p in rows)  # no row left pointing at a deleted file
    assert len(rows) == len(photo_folder.valid) and str(renamed.resolve()) in rows
    assert faiss_ids(index_dir) == set(rows.values())


def test_overlapping_folders_index_each_file_once(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    # e.g. `mmsearch index photos photos/sub` or the same folder named twice
    roots = [photo_folder.root, photo_folder.root / "sub", photo_folder.root]
    report = index_folders(roots, index_dir, encoder)
    assert report.new == len(photo_folder.valid)
    assert set(sql_images(index_dir)) == photo_folder.valid_paths
    assert index_folders(roots, index_dir, encoder).unchanged == len(photo_folder.valid)


# -- FAISS against NumPy -----------------------------------------------------------------------


def test_vector_store_matches_numpy_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, q, dim = 60, 7, 16
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(q, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 7 + 1000  # sparse ids, as after deletions

    store = VectorStore.create(dim)
    store.add(ids, vectors)
    store.save(tmp_path / "v.faiss")
    store = VectorStore.load(tmp_path / "v.faiss", dim=dim)

    scores = queries @ vectors.T  # (q, n)
    order = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 10, n):
        for row, result in enumerate(store.search(queries, k)):
            assert np.array_equal(result.ids, ids[order[row, :k]])
            assert np.allclose(result.scores, scores[row, order[row, :k]], atol=1e-5)

    # k > n: exactly n hits, no -1 padding.
    store.remove(ids[: n - 3])
    for result in store.search(queries, 10):
        assert len(result.ids) == 3 and (result.ids >= 0).all()
        assert set(result.ids) == set(ids[n - 3 :])
    with pytest.raises(VectorStoreError):
        store.add(np.array([1]), np.zeros((1, dim + 1), np.float32))
    with pytest.raises(VectorStoreError, match="dimension"):
        VectorStore.load(tmp_path / "v.faiss", dim=dim + 1)


def test_index_search_matches_numpy_on_real_vectors(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    rows = sql_images(index_dir)
    paths = sorted(rows)
    gallery = encode_files(encoder, [Path(p) for p in paths])  # (n, dim)
    gallery_ids = np.array([rows[p] for p in paths])
    texts = encoder.encode_texts(["a red image", "a blue image", "a yellow image", "anything"])
    queries = np.concatenate([texts, gallery[:2]])  # (q, dim): text and image queries

    store = VectorStore.load(index_dir / IMAGES_FAISS, dim=32)
    scores = queries @ gallery.T
    order = np.argsort(-scores, axis=1)
    for row, result in enumerate(store.search(queries, 10)):
        assert len(result.ids) == len(paths)  # k > n: padding dropped
        assert np.array_equal(result.ids, gallery_ids[order[row]])
        assert np.allclose(result.scores, scores[row, order[row]], atol=1e-5)


# -- refusing bad input without touching the index ---------------------------------------------


def test_bad_input_folder_leaves_the_index_untouched(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder, tmp_path: Path
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    before = snapshot(index_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = photo_folder.valid["red"]
    for bad, message in (
        (empty, "no image files"),
        (tmp_path / "missing", "no such folder"),
        (a_file, "not a folder"),
    ):
        with pytest.raises(PipelineError, match=message):
            index_folders([bad], index_dir, encoder)
        # Also when listed next to a good folder: nothing is half-done.
        with pytest.raises(PipelineError):
            index_folders([photo_folder.root, bad], index_dir, encoder)
        assert snapshot(index_dir) == before, bad


def test_empty_folder_does_not_wipe_its_rows(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    # An unmounted drive looks like an empty folder: refusing keeps its images indexed.
    index_folders([photo_folder.root], index_dir, encoder)
    before = snapshot(index_dir)
    for path in [*photo_folder.valid.values(), *photo_folder.skipped]:
        path.unlink()
    with pytest.raises(PipelineError, match="mmsearch remove"):
        index_folders([photo_folder.root], index_dir, encoder)
    assert snapshot(index_dir) == before


@pytest.fixture(scope="module")
def other_encoders(colors_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Encoder]:
    """Untrained models: one with a 16-dim space, one with the same 32 dims but other weights."""
    tokenizer = load_model_dir(colors_model).tokenizer
    base = load_named_config("tiny-test")
    base = replace(base, text=replace(base.text, vocab_size=len(tokenizer)))
    out = {}
    for name, config in (("dim16", replace(base, embed_dim=16)), ("dim32", base)):
        torch.manual_seed(123)
        folder = tmp_path_factory.mktemp(name)
        save_model_dir(build_model(config), tokenizer, folder)
        out[name] = load_encoder(folder, device="cpu")
    return out


@pytest.mark.parametrize("which", ["dim16", "dim32"])
def test_other_model_is_refused_and_nothing_changes(
    photo_folder: PhotoFolder,
    index_dir: Path,
    encoder: Encoder,
    other_encoders: dict[str, Encoder],
    which: str,
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    before = snapshot(index_dir)
    other = other_encoders[which]
    with pytest.raises(IndexMismatchError, match="--model"):
        index_folders([photo_folder.root], index_dir, other)
    with pytest.raises(IndexMismatchError):
        add_texts(index_dir, other, ["a red image"], source="test")
    assert snapshot(index_dir) == before
    # The lock was released: the right model can still write.
    assert index_folders([photo_folder.root], index_dir, encoder).unchanged == len(photo_folder.valid)


def test_second_writer_is_refused_while_one_holds_the_lock(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    with IndexWriter(index_dir, encoder.info):
        with pytest.raises(IndexLockedError, match=f"locked by PID {os.getpid()}"):
            IndexWriter(index_dir, encoder.info).__enter__()
        with pytest.raises(IndexLockedError, match="locked by PID"):
            index_folders([photo_folder.root], index_dir, encoder)
        with pytest.raises(IndexLockedError):
            remove_images(index_dir, [photo_folder.valid["red"]])
    assert remove_images(index_dir, [photo_folder.valid["red"]]) == 1  # released on exit


# -- crash repair ------------------------------------------------------------------------------


def test_orphan_vector_is_never_returned_and_is_repaired(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    query = encode_files(encoder, [photo_folder.valid["green"]])[0]
    orphan = 10_000
    store = VectorStore.load(index_dir / IMAGES_FAISS, dim=32)
    store.add(np.array([orphan]), query[None, :])  # would be the best hit: an exact match
    store.save(index_dir / IMAGES_FAISS)
    rows = sql_images(index_dir)

    with Engine.open(index_dir) as engine:
        hits = engine.search_image(photo_folder.valid["green"], k=10)
    assert [h.id for h in hits if h.id not in rows.values()] == []
    assert hits[0].path == str(photo_folder.valid["green"].resolve())

    with IndexWriter(index_dir, encoder.info) as writer:
        assert writer.repaired == 1
    assert faiss_ids(index_dir) == set(rows.values())


def test_row_deleted_behind_the_index_is_repaired(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    red = str(photo_folder.valid["red"].resolve())
    red_id = sql_images(index_dir)[red]
    sql(index_dir, "DELETE FROM images WHERE id = ?", red_id)

    with Engine.open(index_dir) as engine:
        hits = engine.search_image(photo_folder.valid["red"], k=10)
    assert red_id not in {h.id for h in hits}
    assert len(hits) == len(photo_folder.valid) - 1

    report = index_folders([photo_folder.root], index_dir, encoder)
    assert report.repaired == 1 and report.new == 1  # the orphan vector went; the file came back
    rows = sql_images(index_dir)
    assert set(rows) == photo_folder.valid_paths
    assert faiss_ids(index_dir) == set(rows.values())


def test_row_without_vector_is_dropped_and_reencoded(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder
) -> None:
    index_folders([photo_folder.root], index_dir, encoder)
    blue = str(photo_folder.valid["blue"].resolve())
    store = VectorStore.load(index_dir / IMAGES_FAISS, dim=32)
    store.remove([sql_images(index_dir)[blue]])
    store.save(index_dir / IMAGES_FAISS)

    report = index_folders([photo_folder.root], index_dir, encoder)
    assert report.repaired == 1 and report.new == 1 and report.encoded == 1
    rows = sql_images(index_dir)
    assert set(rows) == photo_folder.valid_paths
    assert faiss_ids(index_dir) == set(rows.values())


# -- texts ---------------------------------------------------------------------------------------


def test_add_texts_skips_duplicates_and_keys_vectors_by_row(index_dir: Path, encoder: Encoder) -> None:
    report = add_texts(index_dir, encoder, ["a red image", " a red image ", "a blue image"], source="t")
    assert (report.added, report.duplicates) == (2, 1)
    report = add_texts(index_dir, encoder, ["a blue image", "a green image"], source="t")
    assert (report.added, report.duplicates) == (1, 1)
    rows = dict(sql(index_dir, "SELECT text, id FROM texts"))
    assert set(rows) == {"a red image", "a blue image", "a green image"}
    assert faiss_ids(index_dir, TEXTS_FAISS) == set(rows.values())
    store = VectorStore.load(index_dir / TEXTS_FAISS, dim=32)
    for text, id_ in rows.items():
        assert np.allclose(store.reconstruct(id_), encoder.encode_texts([text])[0], atol=1e-5)


def test_encoding_uses_the_requested_torch_threads_and_restores_them(
    photo_folder: PhotoFolder, index_dir: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    encode = encoder.encode_pixels

    def spy(pixels: torch.Tensor) -> np.ndarray:
        seen.append(torch.get_num_threads())
        return encode(pixels)

    monkeypatch.setattr(encoder, "encode_pixels", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        index_folders([photo_folder.root], index_dir, encoder, options=IndexOptions(torch_threads=1))
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
