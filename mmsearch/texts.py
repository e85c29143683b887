"""Reading a text collection for add-texts: plain lines or JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from mmsearch.engine import QueryError

TEXT_KEYS = ("caption", "text")


def read_texts(path: Path) -> list[str]:
    """Captions from a file: one per line, or JSONL objects with a "caption" or "text" field."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise QueryError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise QueryError(f"{path}: not UTF-8 text; re-save it as UTF-8") from None
    texts = [_text_of(line, path, n) for n, line in enumerate(lines, 1) if line.strip()]
    if not texts:
        raise QueryError(f"{path}: no texts (expected one caption per line, or JSONL)")
    return texts


def _text_of(line: str, path: Path, number: int) -> str:
    stripped = line.strip()
    if not stripped.startswith("{"):
        return stripped
    try:
        record = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise QueryError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
    for key in TEXT_KEYS:
        if isinstance(record.get(key), str) and record[key].strip():
            return str(record[key]).strip()
    raise QueryError(f'{path}:{number}: JSON line without a "caption" or "text" field')
