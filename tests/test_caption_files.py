"""One caption-file reader and one sidecar convention, for add-texts, --captions, own texts and
the training corpora: the same lines, the same errors naming file and line, the same sidecars."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import color_image

from indexer.errors import InvalidInputError
from indexer.indexing.pipeline import index_folders
from indexer.media import caption_files
from indexer.media import own_text as doc_text
from indexer.media.caption_files import CaptionFileError, Line
from indexer.models.encoder import Encoder, load_encoder
from indexer.training.corpora import CorpusError, load_corpus
from mmsearch.texts import read_texts

LATIN1_LINE = "caf\xe9 au lait\n".encode("latin-1")  # a byte that is not UTF-8


def test_lines_are_stripped_numbered_and_a_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "captions.txt"
    path.write_bytes(caption_files.UTF8_BOM + "  a red square \n\n\tcafé ☕\r\n".encode())
    assert list(caption_files.iter_lines(path)) == [Line(1, "a red square"), Line(3, "café ☕")]


def test_jsonl_records_and_their_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.png", "caption": "x"}\n\n["not", "an object"]\n', encoding="utf-8")
    records = caption_files.iter_records(path)
    line, record = next(records)
    assert (line.number, record) == (1, {"image": "a.png", "caption": "x"})
    with pytest.raises(CaptionFileError, match=r"c\.jsonl:3: expected a JSON object, got list"):
        next(records)
    path.write_text('{"image": "a.png"\n', encoding="utf-8")
    with pytest.raises(CaptionFileError, match=r"c\.jsonl:1: invalid JSON \(.* at column \d+\)"):
        list(caption_files.iter_records(path))
    with pytest.raises(CaptionFileError, match=r"missing\.jsonl: no such file"):
        list(caption_files.iter_records(tmp_path / "missing.jsonl"))


def _with_bad_second_line(path: Path, first: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(first.encode() + b"\n" + LATIN1_LINE)
    return path


def test_every_reader_names_the_file_and_line_that_is_not_utf8(tmp_path: Path) -> None:
    record = json.dumps({"image": "a.png", "caption": "ok"})
    readers: list[tuple[Path, Any]] = [
        (_with_bad_second_line(tmp_path / "texts.txt", "a caption"), read_texts),
        (_with_bad_second_line(tmp_path / "captions.jsonl", record), doc_text.read_captions),
        (_with_bad_second_line(tmp_path / "corpus.jsonl", record), load_corpus),
    ]
    folder = tmp_path / "folder"
    _with_bad_second_line(folder / "a.txt", "a caption")
    color_image("red", seed=0).save(folder / "a.png")
    readers.append((folder, load_corpus))
    for path, read in readers:
        with pytest.raises(InvalidInputError) as info:
            read(path)
        where = folder / "a.txt" if path == folder else path
        assert str(info.value).startswith(f"{where}:2: not UTF-8 text"), (read, str(info.value))
        assert isinstance(info.value, CorpusError if read is load_corpus else CaptionFileError)


def test_a_sidecar_with_a_stray_byte_still_describes_its_photo(tmp_path: Path) -> None:
    color_image("red", seed=0).save(tmp_path / "a.png")
    _with_bad_second_line(tmp_path / "a.txt", "a red square")
    own = doc_text.own_text(str(tmp_path / "a.png"))
    assert own is not None and own.text == "a red square caf\ufffd au lait"


def test_one_sidecar_convention_for_corpora_and_own_texts(tmp_path: Path) -> None:
    for name in ("short", "long", "both"):
        color_image("red", seed=0).save(tmp_path / f"{name}.png")
    (tmp_path / "short.txt").write_text("from short.txt\n", encoding="utf-8")
    (tmp_path / "long.png.txt").write_text("from long.png.txt\n", encoding="utf-8")
    (tmp_path / "both.txt").write_text("from both.txt\n", encoding="utf-8")
    (tmp_path / "both.png.txt").write_text("from both.png.txt\n", encoding="utf-8")

    corpus = {p.image.name: p.caption for p in load_corpus(tmp_path).pairs}
    own = {
        name: doc_text.own_text(str(tmp_path / name)).text  # type: ignore[union-attr]
        for name in ("short.png", "long.png", "both.png")
    }
    expected = {"short.png": "from short.txt", "long.png": "from long.png.txt", "both.png": "from both.txt"}
    assert corpus == own == expected


@pytest.fixture(scope="module")
def encoder(colors_model: Path) -> Encoder:
    return load_encoder(colors_model, device="cpu")


@pytest.mark.usefixtures("one_torch_thread")
def test_indexing_opens_only_the_sidecars_the_scan_found(
    encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        color_image("green", seed=i).save(photos / f"photo{i}.png")
    (photos / "photo1.txt").write_text("a green field", encoding="utf-8")
    (photos / "photo2.png.txt").write_text("green paint", encoding="utf-8")
    touched: set[str] = set()  # .txt paths looked at (stat, isfile) or opened
    real_stat, real_open = os.stat, open

    def spy_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith(".txt"):
            touched.add(str(path))
        return real_stat(path, *args, **kwargs)

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        touched.add(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "stat", spy_stat)
    monkeypatch.setattr(caption_files, "open", spy_open, raising=False)
    report = index_folders([photos], tmp_path / "index", encoder)
    assert (report.new, report.own_texts, report.skipped) == (4, 2, [])
    resolved = photos.resolve()
    # Two sidecars were found by the scan and read; no other name was tried for any photo.
    assert touched == {str(resolved / "photo1.txt"), str(resolved / "photo2.png.txt")}
