"""One index run over a folder holding every kind of bad file: good files are indexed, each bad one
is skipped exactly once with a reason, OS junk is ignored, links never hang the walk; then the
CLI summary, a second run served from the skipped table, and --json.

Files are real; monkeypatch only stands in for what cannot be made for real here (a file that
vanishes between scan and load, an unreadable file when the tests run as root).
"""

from __future__ import annotations

import builtins
import contextlib
import faulthandler
import io
import json
import os
import re
import signal
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import image_files
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session
from support import save_random_model
from typer.testing import CliRunner

from indexer.indexing import decode_pool as encode
from indexer.indexing import file_loading
from indexer.indexing.pipeline import IndexOptions, index_folders
from indexer.media import images
from indexer.media.scan import ScanOptions, scan_folder
from indexer.models.encoder import Encoder, load_encoder
from indexer.store import catalog
from indexer.store.catalog import ImageRow
from mmsearch.cli import app

SEED = 7
SIDE = 48
MAX_MEGAPIXELS = 50
BOMB_SIDE = 8000  # 64 MP: over --max-megapixels 50, under Pillow's own 89 MP warning
EXCLUDES = ("drafts/*", "*.tmp.jpg")
OPTIONS = IndexOptions(batch_size=4, max_megapixels=MAX_MEGAPIXELS, scan=ScanOptions(exclude=EXCLUDES))
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6
HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
# A walk that follows a symlink loop never ends; a healthy one takes well under a second.
DEADLINE_S = 60
NON_UTF8_GOOD = b"good\xff.png"
NON_UTF8_BAD = b"broken\xfe.jpg"


@dataclass
class BadFolder:
    """A photo folder and what indexing it must do with each file."""

    root: Path
    good: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (width, height)
    bad: dict[str, str] = field(default_factory=dict)  # path -> fragment of the skip reason
    ignored: list[str] = field(default_factory=list)  # never indexed, never reported
    locked: str = ""
    vanishing: str = ""
    heic: str = ""


def _noise(rng: np.random.Generator, size: tuple[int, int] = (SIDE, SIDE)) -> Image.Image:
    width, height = size
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _bomb_png() -> bytes:
    """A valid 1x1 PNG whose IHDR (and its CRC) claims BOMB_SIDE x BOMB_SIDE pixels."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", BOMB_SIDE, BOMB_SIDE)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))  # over type + 13 data bytes
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _animated_gif(rng: np.random.Generator) -> bytes:
    frames = [_noise(rng).convert("P") for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def _sixteen_bit_png(rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 65536, (SIDE, SIDE), dtype=np.uint16)
    return _encode(Image.fromarray(pixels), "PNG")  # mode I;16


def _palette_png_with_transparency(rng: np.random.Generator) -> bytes:
    image = _noise(rng).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(image, "PNG", transparency=0)


def _rotated_jpeg(rng: np.random.Generator) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    return _encode(_noise(rng, (SIDE, 32)), "JPEG", exif=exif.tobytes())


def _write(path: Path | bytes, data: bytes) -> str:
    """Write a file (a bytes path for names that are not UTF-8); returns its str path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return os.fsdecode(path)


def build_bad_folder(root: Path) -> BadFolder:
    """Every kind of file a photo folder holds in the wild, good and bad."""
    root = root.resolve()
    folder = BadFolder(root)
    rng = np.random.default_rng(SEED)
    png = lambda: _encode(_noise(rng), "PNG")  # noqa: E731
    jpeg = lambda: _encode(_noise(rng), "JPEG", quality=90)  # noqa: E731

    square = (SIDE, SIDE)
    for name, data, size in [
        ("plain.png", png(), square),
        ("plain.jpg", jpeg(), square),
        ("nested/deeper/nested.png", png(), square),
        ("фото 日本 ☀.png", png(), square),
        ("real_png_named.jpg", png(), square),
        ("animated.gif", _animated_gif(rng), square),
        ("cmyk.jpg", _encode(_noise(rng).convert("CMYK"), "JPEG"), square),
        ("sixteen_bit.png", _sixteen_bit_png(rng), square),
        ("palette_transparent.png", _palette_png_with_transparency(rng), square),
        ("exif_rotated.jpg", _rotated_jpeg(rng), (32, SIDE)),  # stored 48x32, shown upright
        ("png_without_extension", png(), square),  # classified by its bytes, not its name
        ("export.dat", _encode(_noise(rng), "QOI"), square),
    ]:
        folder.good[_write(root / name, data)] = size
    folder.good[_write(os.path.join(os.fsencode(root), NON_UTF8_GOOD), png())] = square

    truncated_jpeg, truncated_png = jpeg(), png()
    for name, data, reason in [
        ("truncated.jpg", truncated_jpeg[: len(truncated_jpeg) * 2 // 3], "truncated or corrupt"),
        ("truncated.png", truncated_png[: len(truncated_png) * 2 // 3], "truncated or corrupt"),
        ("empty.jpg", b"", "empty file"),
        ("text_named.jpg", b"shopping list: milk, eggs\n", "not an image"),
        ("random_bytes.png", b"\x00" + rng.bytes(2047), "not an image"),
        ("bomb.png", _bomb_png(), f"exceeds --max-megapixels {MAX_MEGAPIXELS}"),
        ("notes.txt", b"not a photo\n", "not an image file type (.txt: text)"),
        ("manual.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "(.pdf: PDF document)"),
        ("film.grade.cube", b'TITLE "warm"\nLUT_3D_SIZE 2\n0 0 0\n', "(.cube: text)"),
        ("colours.gpl", b"GIMP Palette\nName: sea\n 12  34  56 deep\n", "(.gpl: text)"),
        ("swatches.aco", b"\x00\x01\x00\x02" + bytes(16), "(.aco: unrecognised content)"),
        ("scan.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n", "(.eps: PostScript/EPS"),
        ("locked.png", png(), "permission denied"),
        ("vanishing.png", png(), "vanished"),
        ("photo.heic", HEIC_HEADER + rng.bytes(512), "mmsearch[heif]"),
    ]:
        folder.bad[_write(root / name, data)] = reason
    bad_name = os.path.join(os.fsencode(root), NON_UTF8_BAD)
    folder.bad[_write(bad_name, truncated_jpeg[:200])] = "truncated or corrupt"
    folder.locked, folder.vanishing, folder.heic = (
        str(root / "locked.png"),
        str(root / "vanishing.png"),
        str(root / "photo.heic"),
    )
    os.chmod(folder.locked, 0)

    for name, data in [
        (".hidden.png", png()),
        (".DS_Store", b"\x00\x00\x00\x01Bud1"),
        ("._plain.jpg", b"\x00\x05\x16\x07AppleDouble junk"),
        ("@eaDir/plain.jpg/SYNOPHOTO_THUMB_M.jpg", b"thumbnail junk"),
        ("Thumbs.db", b"thumbnail cache"),
        ("drafts/draft.png", png()),  # --exclude drafts/*
        ("holiday.tmp.jpg", b"half-copied"),  # --exclude *.tmp.jpg
    ]:
        folder.ignored.append(_write(root / name, data))
    os.symlink(root, root / "loop")  # a folder that contains itself
    os.symlink(root / "moved-away.jpg", root / "dangling.jpg")
    folder.bad[str(root / "dangling.jpg")] = "broken symbolic link (-> "
    return folder


def shown(path: str) -> str:
    """How the CLI prints a path: bytes that are not UTF-8 as \\xNN escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging (SIGALRM interrupts the walk in the main thread)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds}s: a walk that never ends?")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def simulate_locked_and_vanishing(monkeypatch: pytest.MonkeyPatch, folder: BadFolder) -> None:
    """Delete the vanishing file between scan and load; refuse to read the locked one as root."""
    load_file = encode.load_file

    def load_after_delete(entry: Any, *args: Any, **kwargs: Any) -> Any:
        if entry.path == folder.vanishing and os.path.exists(entry.path):
            os.remove(entry.path)
        return load_file(entry, *args, **kwargs)

    monkeypatch.setattr(encode, "load_file", load_after_delete)
    if os.access(folder.locked, os.R_OK):  # root reads anything: refuse the way the OS would
        real_open = builtins.open

        def open_refusing_locked(file: Any, *args: Any, **kwargs: Any) -> Any:
            if os.fspath(file) == folder.locked:
                raise PermissionError(13, "Permission denied", folder.locked)
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(file_loading, "open", open_refusing_locked, raising=False)


def indexed_rows(index_dir: Path) -> dict[str, tuple[int, int]]:
    """path -> (width, height) of every catalogue row."""
    engine = catalog.open_catalog(index_dir, create=False)
    try:
        with Session(engine) as session:
            return {r.path: (r.width, r.height) for r in session.scalars(select(ImageRow))}
    finally:
        engine.dispose()


# Tiny convolutions run far faster on one thread when other processes share the cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bad_files_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init model of the tiny-test config (ranking does not matter here)."""
    captions = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square", "star")]
    directory = tmp_path_factory.mktemp("bad-files-model")
    return save_random_model(directory, captions, vocab_size=48, seed=SEED)


@pytest.fixture(scope="module")
def encoder(bad_files_model_dir: Path) -> Encoder:
    return load_encoder(bad_files_model_dir, device="cpu")


@pytest.fixture
def bad_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BadFolder:
    folder = build_bad_folder(tmp_path / "photos")
    if images._register_heif():  # the extra is installed here: index as if it were not
        monkeypatch.setattr(images, "_register_heif", lambda: False)
    simulate_locked_and_vanishing(monkeypatch, folder)
    return folder


def cli_index(folder: BadFolder, index_dir: Path, model_dir: Path, *extra: str) -> Any:
    excludes = [arg for pattern in EXCLUDES for arg in ("--exclude", pattern)]
    args = ["index", str(folder.root), "--db", str(index_dir), "--model", str(model_dir)]
    args += ["--device", "cpu", "--max-megapixels", str(MAX_MEGAPIXELS), *excludes, *extra]
    with deadline(DEADLINE_S):
        return CliRunner().invoke(app, args)


@pytest.mark.parametrize("decode_processes", [False, True], ids=["threads", "processes"])
def test_one_run_indexes_every_good_file_and_skips_each_bad_file_once(
    bad_folder: BadFolder, encoder: Encoder, tmp_path: Path, decode_processes: bool
) -> None:
    index_dir = tmp_path / "index"
    options = replace(OPTIONS, decode_processes=decode_processes)
    with deadline(DEADLINE_S):
        report = index_folders([bad_folder.root], index_dir, encoder, options=options)

    skipped = {s.path: s.reason for s in report.skipped}
    assert len(skipped) == len(report.skipped), "a file was reported twice"
    assert sorted(skipped) == sorted(bad_folder.bad)
    for path, fragment in bad_folder.bad.items():
        assert fragment in skipped[path], (path, skipped[path])
    assert "\n" not in "".join(skipped.values()), "a reason must fit on one line"

    assert report.new == len(bad_folder.good)
    assert (report.changed, report.moved, report.removed, report.unchanged) == (0, 0, 0, 0)
    # Every good file once, upright (the EXIF-rotated one is recorded as displayed).
    assert indexed_rows(index_dir) == bad_folder.good
    assert not set(bad_folder.ignored) & set(skipped)


def test_symlink_loop_and_dangling_link_end_the_walk_without_duplicates(
    bad_folder: BadFolder,
) -> None:
    with deadline(DEADLINE_S):
        found = [e.path for e in scan_folder(bad_folder.root, ScanOptions(exclude=EXCLUDES))]
    assert len(found) == len(set(found))
    assert not any("/loop/" in p for p in found)
    # A dangling link is listed with its problem, so the run can name it like any bad file.
    problems = {e.path: e.problem for e in scan_folder(bad_folder.root, ScanOptions(exclude=EXCLUDES))}
    dangling = str(bad_folder.root / "dangling.jpg")
    assert problems.pop(dangling) == (
        f"broken symbolic link (-> {bad_folder.root / 'moved-away.jpg'}: No such file or directory)"
    )
    assert set(problems.values()) == {None}
    assert sorted(found) == sorted([*bad_folder.good, *bad_folder.bad])


@pytest.mark.parametrize("decoders", [[], ["--decode-processes"]], ids=["threads", "processes"])
def test_cli_summary_prints_one_line_per_skipped_file_and_exits_zero(
    bad_folder: BadFolder, bad_files_model_dir: Path, tmp_path: Path, decoders: list[str]
) -> None:
    result = cli_index(bad_folder, tmp_path / "index", bad_files_model_dir, *decoders)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    lines = [line for line in result.stdout.splitlines() if line.startswith("skipped ")]
    assert len(lines) == len(bad_folder.bad), lines
    for path, fragment in bad_folder.bad.items():
        mine = [line for line in lines if line.startswith(f"skipped {shown(path)}: ")]
        assert len(mine) == 1, (path, lines)
        assert fragment in mine[0]
    summary = result.stdout.splitlines()[-1]
    assert re.search(rf"\(new {len(bad_folder.good)}, changed 0\)", summary), summary
    assert re.search(rf"skipped {len(bad_folder.bad)} in ", summary), summary


def test_second_run_serves_bad_files_from_the_skipped_table_and_prints_json(
    bad_folder: BadFolder,
    bad_files_model_dir: Path,
    encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index_dir = tmp_path / "index"
    with deadline(DEADLINE_S):
        first = index_folders([bad_folder.root], index_dir, encoder, options=OPTIONS)
    loaded: list[str] = []
    load_file = encode.load_file

    def spy(entry: Any, *args: Any, **kwargs: Any) -> Any:
        loaded.append(entry.path)
        return load_file(entry, *args, **kwargs)

    monkeypatch.setattr(encode, "load_file", spy)
    result = cli_index(bad_folder, index_dir, bad_files_model_dir, "--json")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    data = json.loads(result.stdout)
    assert {"new", "changed", "moved", "removed", "unchanged", "skipped"} <= data.keys()
    assert (data["new"], data["changed"], data["moved"], data["removed"]) == (0, 0, 0, 0)
    assert data["unchanged"] == len(bad_folder.good)
    again = {s["path"]: s["reason"] for s in data["skipped"]}
    assert len(again) == len(data["skipped"])
    # The vanished file is gone; every other bad file is reported again, for the same reason.
    assert again == {s.path: s.reason for s in first.skipped if s.path != bad_folder.vanishing}
    # Only failures that are not about the bytes are tried again: a permission that may have
    # been fixed, a format whose optional extra may have been installed since.
    assert sorted(loaded) == sorted([bad_folder.locked, bad_folder.heic])


def test_a_file_that_was_unreadable_is_indexed_once_it_is_readable(
    encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chmod changes no size or mtime: a skip remembered by those would outlive the fix.
    folder = BadFolder((tmp_path / "photos").resolve())
    rng = np.random.default_rng(SEED + 1)
    _write(folder.root / "ok.png", _encode(_noise(rng), "PNG"))
    folder.locked = _write(folder.root / "locked.png", _encode(_noise(rng), "PNG"))
    os.chmod(folder.locked, 0)
    folder.vanishing = str(folder.root / "absent.png")
    index_dir = tmp_path / "index"
    with monkeypatch.context() as patch:
        simulate_locked_and_vanishing(patch, folder)
        first = index_folders([folder.root], index_dir, encoder, options=OPTIONS)
    assert [(s.path, s.reason) for s in first.skipped] == [(folder.locked, "permission denied")]

    os.chmod(folder.locked, 0o644)
    second = index_folders([folder.root], index_dir, encoder, options=OPTIONS)
    assert second.skipped == []
    assert (second.new, second.unchanged) == (1, 1)
    assert folder.locked in indexed_rows(index_dir)


class FifoWatchdog:
    """After `after_s`, feeds EOF to anything stuck opening the FIFO, and records that it had to."""

    def __init__(self, path: Path, after_s: float) -> None:
        self.path = path
        self.after_s = after_s
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self.after_s):
            return
        self.fired = True
        while not self._stop.is_set():
            with contextlib.suppress(OSError):  # ENXIO: no reader is waiting (yet)
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.01)

    def __enter__(self) -> FifoWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_fifo_named_like_a_photo_is_skipped_not_read_forever(encoder: Encoder, tmp_path: Path) -> None:
    root = (tmp_path / "photos").resolve()
    _write(root / "ok.png", _encode(_noise(np.random.default_rng(SEED)), "PNG"))
    os.mkfifo(root / "pipe.jpg")
    with FifoWatchdog(root / "pipe.jpg", after_s=10) as watchdog:
        report = index_folders([root], tmp_path / "index", encoder, options=OPTIONS)
    assert not watchdog.fired, "indexing blocked opening a FIFO"
    assert [(s.path, s.reason) for s in report.skipped] == [(str(root / "pipe.jpg"), "not a regular file")]
    assert report.new == 1
    assert stat.S_ISFIFO(os.stat(root / "pipe.jpg").st_mode)


def test_cli_search_prints_a_non_utf8_file_name(
    bad_files_model_dir: Path, encoder: Encoder, tmp_path: Path
) -> None:
    root = (tmp_path / "photos").resolve()
    path = _write(
        os.path.join(os.fsencode(root), NON_UTF8_GOOD), _encode(_noise(np.random.default_rng(1)), "PNG")
    )
    index_dir = tmp_path / "index"
    index_folders([root], index_dir, encoder)
    result = CliRunner().invoke(
        app, ["search", "a red circle", "--db", str(index_dir), "-k", "1", "--device", "cpu"]
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert result.stdout.rstrip().endswith(shown(path))
    as_json = CliRunner().invoke(
        app, ["search", "a red circle", "--db", str(index_dir), "--json", "--device", "cpu"]
    )
    assert json.loads(as_json.stdout)["results"][0]["path"] == path


# -- every format, by content -------------------------------------------------------------------


def test_every_format_is_indexed_whatever_its_name_and_non_images_are_named(
    encoder: Encoder, tmp_path: Path
) -> None:
    root = (tmp_path / "photos").resolve()
    expected: dict[str, tuple[int, int]] = {}
    for case in image_files.PILLOW_CASES:
        data = image_files.written(case)
        expected[_write(root / f"{case.name}{case.suffix}", data)] = image_files.PICTURE_SIZE
        if case.suffix != ".tga":  # TGA has no signature: only its extension can name it
            expected[_write(root / "renamed" / f"{case.name}.bin", data)] = image_files.PICTURE_SIZE
    expected[_write(root / "IMG_0001.HEIC", image_files.heic_bytes())] = image_files.PICTURE_SIZE
    expected[_write(root / "photo.jxl", image_files.jxl_bytes())] = image_files.PICTURE_SIZE
    expected[str(image_files.write_dng(root / "IMG_0002.dng", (256, 192)))] = image_files.RAW_SIZE
    not_images = {
        _write(root / "manual.pdf", b"%PDF-1.7\n"): "not an image file type (.pdf: PDF document)",
        _write(root / "warm.cube", b"LUT_3D_SIZE 2\n"): "not an image file type (.cube: text)",
    }
    report = index_folders([root], tmp_path / "index", encoder, options=OPTIONS)
    assert {s.path: s.reason for s in report.skipped} == not_images
    assert indexed_rows(tmp_path / "index") == expected
    assert report.new == len(expected)


# -- decode time limit ------------------------------------------------------------------------


@pytest.fixture
def slow_decoder(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Make decoding any file named slow*.png hang until the returned event is set."""
    release = threading.Event()
    decode_bytes = file_loading.decode_bytes

    def decode_slowly(data: bytes, *, name: str = "<bytes>", **kwargs: Any) -> Any:
        if os.path.basename(name).startswith("slow"):
            release.wait(DEADLINE_S)  # a decoder stuck on a crafted file
        return decode_bytes(data, name=name, **kwargs)

    monkeypatch.setattr(file_loading, "decode_bytes", decode_slowly)
    yield release
    release.set()  # let the abandoned decoders finish


@pytest.mark.parametrize("decode_processes", [False, True], ids=["threads", "processes"])
def test_a_file_that_decodes_too_slowly_is_skipped_and_the_run_goes_on(
    encoder: Encoder, tmp_path: Path, slow_decoder: threading.Event, decode_processes: bool
) -> None:
    root = (tmp_path / "photos").resolve()
    rng = np.random.default_rng(SEED)
    good = [_write(root / f"photo{i}.png", _encode(_noise(rng), "PNG")) for i in range(6)]
    slow = _write(root / "slow.png", _encode(_noise(rng), "PNG"))
    options = replace(OPTIONS, workers=2, decode_timeout_s=0.5, decode_processes=decode_processes)
    started = time.monotonic()
    with deadline(DEADLINE_S):
        report = index_folders([root], tmp_path / "index", encoder, options=options)
    assert time.monotonic() - started < DEADLINE_S / 2
    assert [(s.path, s.reason) for s in report.skipped] == [
        (slow, "decoding took longer than --decode-timeout 0.5 s")
    ]
    assert sorted(indexed_rows(tmp_path / "index")) == sorted(good)

    # Not remembered as bad: once it decodes in time (the decoder freed), the next run takes it.
    # (Worker processes are forked per run: the next run's see the event set.)
    slow_decoder.set()
    again = index_folders([root], tmp_path / "index", encoder, options=options)
    assert (again.new, again.skipped) == (1, [])


def test_decoders_stuck_beyond_the_spare_threads_still_let_the_run_end(
    encoder: Encoder, tmp_path: Path, slow_decoder: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode, "MAX_ABANDONED_DECODERS", 1)
    root = (tmp_path / "photos").resolve()
    rng = np.random.default_rng(SEED)
    stuck = [_write(root / f"slow{i}.png", _encode(_noise(rng), "PNG")) for i in range(2)]
    queued = [_write(root / f"then{i}.png", _encode(_noise(rng), "PNG")) for i in range(3)]
    options = replace(OPTIONS, workers=1, decode_timeout_s=0.3)
    with deadline(DEADLINE_S):
        report = index_folders([root], tmp_path / "index", encoder, options=options)
    reasons = {s.path: s.reason for s in report.skipped}
    # One thread, one spare: both are stuck, so the files behind them are named, not waited for.
    assert {reasons[p] for p in stuck} == {"decoding took longer than --decode-timeout 0.3 s"}
    for path in queued:
        assert reasons[path].startswith("not decoded: 2 decoders are still busy"), reasons[path]
    assert report.new == 0


def test_stuck_decoder_processes_are_killed_so_the_files_behind_them_are_decoded(
    encoder: Encoder, tmp_path: Path, slow_decoder: threading.Event
) -> None:
    root = (tmp_path / "photos").resolve()
    rng = np.random.default_rng(SEED)
    stuck = [_write(root / f"slow{i}.png", _encode(_noise(rng), "PNG")) for i in range(3)]
    queued = [_write(root / f"then{i}.png", _encode(_noise(rng), "PNG")) for i in range(3)]
    options = replace(OPTIONS, workers=1, decode_timeout_s=0.3, decode_processes=True)
    with deadline(DEADLINE_S):
        report = index_folders([root], tmp_path / "index", encoder, options=options)
    # One process, three stuck files: each is killed at its limit and a fresh one takes the next
    # file, where threads would run out of spares and name the rest "not decoded".
    assert {s.path: s.reason for s in report.skipped} == {
        p: "decoding took longer than --decode-timeout 0.3 s" for p in stuck
    }
    assert sorted(indexed_rows(tmp_path / "index")) == sorted(queued)


def test_a_decoder_that_crashes_costs_one_file_not_the_run(
    encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode_bytes = file_loading.decode_bytes

    def crash_on_some(data: bytes, *, name: str = "<bytes>", **kwargs: Any) -> Any:
        if os.path.basename(name).startswith("crash"):
            faulthandler.disable()  # in the worker only: no traceback dump in the test output
            os.kill(os.getpid(), signal.SIGSEGV)  # a C decoder's fault
        return decode_bytes(data, name=name, **kwargs)

    monkeypatch.setattr(file_loading, "decode_bytes", crash_on_some)
    root = (tmp_path / "photos").resolve()
    rng = np.random.default_rng(SEED)
    good = [_write(root / f"photo{i}.png", _encode(_noise(rng), "PNG")) for i in range(4)]
    crash = _write(root / "crash.png", _encode(_noise(rng), "PNG"))
    options = replace(OPTIONS, workers=1, decode_processes=True)
    with deadline(DEADLINE_S):
        report = index_folders([root], tmp_path / "index", encoder, options=options)
    assert [(s.path, s.reason) for s in report.skipped] == [
        (crash, "the decoder crashed on this file (killed by SIGSEGV)")
    ]
    assert sorted(indexed_rows(tmp_path / "index")) == sorted(good)
    # Not remembered: a crash may come from the machine (memory), so the next run tries again.
    again = index_folders([root], tmp_path / "index", encoder, options=options)
    assert [s.path for s in again.skipped] == [crash]
