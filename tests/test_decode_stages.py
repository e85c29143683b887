"""The decode and encode stages run several ways (decoding in threads or in worker processes,
one batch encoded at a time or several at once) and every way gives the same batches: the same
pixels, content ids, sizes, own texts, skips and vectors, in the same order.

Skips, time limits and crashes over a folder of bad files are in test_bad_files.
"""

from __future__ import annotations

import io
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from support import camera_jpeg, save_random_model

from indexer.indexing import decode_pool
from indexer.indexing.decode_pool import EncodedBatch, encode_files
from indexer.media.scan import FileEntry, scan_folder
from indexer.models.encoder import Encoder, load_encoder

SEED = 11
BATCH = 3  # several batches from a dozen files, and a short last one
# Worker processes of a closed pool exit within this (they finish at most one small file).
EXIT_DEADLINE_S = 10.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    captions = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square", "star")]
    directory = save_random_model(tmp_path_factory.mktemp("model"), captions, vocab_size=48, seed=SEED)
    return load_encoder(directory, device="cpu")


def _png(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Camera JPEGs (preview and not, rotated), PNGs, a sidecar caption, and two bad files."""
    root = tmp_path_factory.mktemp("photos").resolve()
    rng = np.random.default_rng(SEED)
    for i in range(4):
        photo = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
        (root / f"camera{i}.jpg").write_bytes(camera_jpeg(photo, orientation=6 if i % 2 else 1))
    for i in range(5):
        (root / f"drawing{i}.png").write_bytes(_png(rng, (40 + i, 30)))
    (root / "drawing0.txt").write_text("a sidecar caption\n")
    (root / "cut.jpg").write_bytes(camera_jpeg(Image.new("RGB", (64, 48), "red"))[:300])
    (root / "list.jpg").write_text("milk, eggs\n")
    return root


def _entries(root: Path) -> list[FileEntry]:
    return sorted((e for e in scan_folder(root) if not e.path.endswith(".txt")), key=lambda e: e.path)


def _run(encoder: Encoder, root: Path, **options: Any) -> list[EncodedBatch]:
    sidecars = {str(root / "drawing0.txt")}
    captions = {str(root / "drawing1.png"): "a given caption"}
    batches = encode_files(
        _entries(root), encoder, batch_size=BATCH, sidecars=sidecars, captions=captions, workers=2, **options
    )
    return list(batches)


def _summary(batches: list[EncodedBatch]) -> list[Any]:
    """Everything a batch says except pixels and vectors (compared exactly below)."""
    return [
        (
            [(i.entry, i.content_hash, i.width, i.height, i.own_text, i.decoded_from) for i in b.images],
            b.skipped,
        )
        for b in batches
    ]


@pytest.fixture(scope="module")
def by_threads(encoder: Encoder, photos: Path) -> list[EncodedBatch]:
    return _run(encoder, photos)


@pytest.mark.parametrize(
    "options",
    [{"decode_processes": True}, {"encode_streams": 2}, {"decode_processes": True, "encode_streams": 2}],
    ids=["processes", "two-streams", "processes-two-streams"],
)
def test_every_way_gives_the_same_batches_as_threads(
    encoder: Encoder, photos: Path, by_threads: list[EncodedBatch], options: dict[str, Any]
) -> None:
    other = _run(encoder, photos, **options)
    assert _summary(other) == _summary(by_threads)
    for mine, theirs in zip(other, by_threads, strict=True):
        for a, b in zip(mine.images, theirs.images, strict=True):
            assert torch.equal(a.pixels, b.pixels), a.entry.path
        np.testing.assert_array_equal(mine.vectors, theirs.vectors)


def test_the_reference_run_covers_previews_rotation_own_texts_and_skips(
    by_threads: list[EncodedBatch], photos: Path
) -> None:
    images = {Path(i.entry.path).name: i for b in by_threads for i in b.images}
    skipped = {Path(s.path).name: s.reason for b in by_threads for s in b.skipped}
    assert images["camera0.jpg"].decoded_from == "exif thumbnail"
    assert (images["camera1.jpg"].width, images["camera1.jpg"].height) == (300, 400)  # shown upright
    assert images["drawing0.png"].own_text is not None
    assert images["drawing0.png"].own_text.text == "a sidecar caption"
    assert images["drawing1.png"].own_text is not None
    assert images["drawing1.png"].own_text.text == "a given caption"
    assert set(skipped) == {"cut.jpg", "list.jpg"}
    assert [len(b.images) + len(b.skipped) for b in by_threads] == [BATCH] * 3 + [2]


def _no_workers_left() -> bool:
    deadline = time.monotonic() + EXIT_DEADLINE_S
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


def test_stopping_after_the_first_batch_ends_every_worker(encoder: Encoder, photos: Path) -> None:
    batches: Iterator[EncodedBatch] = encode_files(
        _entries(photos), encoder, batch_size=BATCH, workers=2, decode_processes=True, encode_streams=2
    )
    first = next(batches)
    started = time.monotonic()
    batches.close()  # what an error or Ctrl-C in the consumer does
    assert time.monotonic() - started < EXIT_DEADLINE_S
    assert len(first.images) + len(first.skipped) == BATCH
    assert _no_workers_left()


def test_a_bug_in_a_worker_process_is_raised_with_its_traceback(
    encoder: Encoder, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_file = decode_pool.load_file

    def buggy(entry: FileEntry, *args: Any, **kwargs: Any) -> Any:
        if entry.path.endswith("drawing2.png"):
            raise KeyError("a bug, not a bad file")
        return load_file(entry, *args, **kwargs)

    monkeypatch.setattr(decode_pool, "load_file", buggy)
    with pytest.raises(RuntimeError, match=r"(?s)drawing2\.png.*KeyError: 'a bug, not a bad file'"):
        _run(encoder, photos, decode_processes=True)
    assert _no_workers_left()


def test_encode_streams_must_be_positive(encoder: Encoder, photos: Path) -> None:
    with pytest.raises(ValueError, match="encode_streams"):
        next(encode_files(_entries(photos), encoder, batch_size=BATCH, encode_streams=0))
