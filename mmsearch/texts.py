"""Reading a text collection for add-texts: plain lines or JSONL (indexer.media.caption_files)."""

from __future__ import annotations

from pathlib import Path

from indexer.media import caption_files
from indexer.media.caption_files import CaptionFileError, Line

TEXT_KEYS = ("caption", "text")


def read_texts(path: Path) -> list[str]:
    """Captions from a file: one per line, or JSONL objects with a "caption" or "text" field."""
    texts = [_text_of(line, path) for line in caption_files.iter_lines(path)]
    if not texts:
        raise CaptionFileError(f"{path}: no texts (expected one caption per line, or JSONL)")
    return texts


def _text_of(line: Line, path: Path) -> str:
    if not caption_files.is_record(line):
        return line.text
    record = caption_files.parse_record(line, path)
    for key in TEXT_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise CaptionFileError(f'{path}:{line.number}: JSON line without a "caption" or "text" field')
