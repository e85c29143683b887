"""Caption files, read one way everywhere: UTF-8 text as numbered lines or JSONL records.

Used by `mmsearch index --captions` (JSONL), `mmsearch add-texts` (lines or JSONL), sidecar own
texts, and the folder-of-images training corpus. Errors name the file and the line.

One sidecar convention: the captions of `photo.jpg` are in `photo.txt` beside it, one caption
per line. `photo.jpg.txt` is accepted too (some tools write that name, and it keeps `photo.jpg`
and `photo.png` apart); when both exist `photo.txt` wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.errors import InvalidInputError

SIDECAR_SUFFIX = ".txt"
UTF8_BOM = b"\xef\xbb\xbf"  # editors on Windows start UTF-8 files with it


class CaptionFileError(InvalidInputError):
    """A caption file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Line:
    """One non-blank line of a caption file, stripped, with its 1-based number."""

    number: int
    text: str


def iter_lines(path: Path | str, *, strict: bool = True, max_bytes: int | None = None) -> Iterator[Line]:
    """The file's non-blank lines, stripped, read as UTF-8 one line at a time.

    strict=False replaces undecodable bytes instead of raising (a sidecar with a stray Latin-1
    byte still describes its photo); max_bytes stops reading after that many bytes.
    """
    try:
        with open(path, "rb") as handle:
            read = 0
            for number, raw in enumerate(handle, start=1):
                if max_bytes is not None:
                    raw = raw[: max(0, max_bytes - read)]
                    read += len(raw)
                if number == 1:
                    raw = raw.removeprefix(UTF8_BOM)
                text = _decode(raw, path, number, strict=strict).strip()
                if text:
                    yield Line(number, text)
                if max_bytes is not None and read >= max_bytes:
                    return
    except FileNotFoundError:
        raise CaptionFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaptionFileError(f"{path}: is a folder, not a text file") from None
    except OSError as exc:
        raise CaptionFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _decode(raw: bytes, path: Path | str, number: int, *, strict: bool) -> str:
    if not strict:
        return raw.decode("utf-8", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaptionFileError(
            f"{path}:{number}: not UTF-8 text (byte {exc.start + 1} of the line); re-save it as UTF-8"
        ) from None


def is_record(line: Line) -> bool:
    """True for a line holding a JSON object (a JSONL record), not plain caption text."""
    return line.text.startswith("{")


def parse_record(line: Line, path: Path | str) -> dict[str, Any]:
    """A JSONL line as an object, or a CaptionFileError naming file, line and what is wrong."""
    try:
        record = json.loads(line.text)
    except json.JSONDecodeError as exc:
        raise CaptionFileError(
            f"{path}:{line.number}: invalid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(record, dict):
        raise CaptionFileError(
            f"{path}:{line.number}: expected a JSON object, got {type(record).__name__}"
        )
    return record


def iter_records(path: Path | str) -> Iterator[tuple[Line, dict[str, Any]]]:
    """Each non-blank line of a JSONL file, parsed: (the line, its object)."""
    for line in iter_lines(path):
        yield line, parse_record(line, path)


def sidecar_paths(image_path: str) -> tuple[str, str]:
    """Where the captions of `photo.jpg` may be: `photo.txt`, then `photo.jpg.txt`."""
    stem, _ = os.path.splitext(image_path)
    return stem + SIDECAR_SUFFIX, image_path + SIDECAR_SUFFIX


def sidecar_among(image_path: str, existing: Container[str]) -> str | None:
    """The image's sidecar among files already listed (a scan), without touching the disk."""
    return next((p for p in sidecar_paths(image_path) if p in existing and p != image_path), None)


def find_sidecar(image_path: str) -> str | None:
    """The image's sidecar on disk, for callers that have not listed the folder."""
    return next((p for p in sidecar_paths(image_path) if os.path.isfile(p)), None)


def sidecar_captions(sidecar: Path | str, *, strict: bool = True, max_bytes: int | None = None) -> list[str]:
    """The captions in a sidecar file: one per non-blank line."""
    return [line.text for line in iter_lines(sidecar, strict=strict, max_bytes=max_bytes)]
