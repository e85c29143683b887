"""Edits of an index that are not a folder run: removing files, adding free texts."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from indexer.store import catalog, index_upkeep
from indexer.store.catalog import TextRow
from indexer.store.index_dir import IndexWriter

if TYPE_CHECKING:
    from indexer.models.protocol import Encoder


def _indexed_spellings(path: Path) -> list[str]:
    """The path as given and as index_folders stored it (it resolves symlinks in the indexed folder)."""
    absolute = os.path.abspath(path)
    if os.path.isdir(absolute):
        resolved = os.path.realpath(absolute)
    else:  # the file may be gone already, and a symlinked file is stored under its own name
        folder, name = os.path.split(absolute)
        resolved = os.path.join(os.path.realpath(folder), name)
    return list(dict.fromkeys([absolute, resolved]))


def remove_images(index_dir: Path, paths: Sequence[Path]) -> int:
    """Remove indexed files (or every file under a folder) from FAISS and SQLite; returns the count."""
    with IndexWriter(index_dir, None) as writer, writer.session() as session:
        ids: list[int] = []
        for path in paths:
            spellings = _indexed_spellings(Path(path))
            rows = list(catalog.images_by_path(session, spellings).values()) or [
                row for s in spellings for row in catalog.images_under(session, s)
            ]
            ids += [row.id for row in rows]
        ids = list(dict.fromkeys(ids))  # a file named twice (or inside a named folder) counts once
        catalog.delete_images(session, ids)
        writer.commit_vectors(session, removed_images=ids)
        if ids:
            index_upkeep.maintain(writer)  # e.g. HNSW past its tombstone share
    return len(ids)


@dataclass(frozen=True)
class TextsReport:
    """What add-texts did."""

    added: int
    duplicates: int


def add_texts(
    index_dir: Path, encoder: Encoder, texts: Sequence[str], *, source: str, batch_size: int = 256
) -> TextsReport:
    """Embed texts with the text tower and add them to the text index (exact duplicates skipped)."""
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    with IndexWriter(index_dir, encoder.info) as writer, writer.session() as session:
        existing = set(session.scalars(select(TextRow.text).where(TextRow.text.in_(unique[:900]))))
        for i in range(900, len(unique), 900):
            existing |= set(
                session.scalars(select(TextRow.text).where(TextRow.text.in_(unique[i : i + 900])))
            )
        fresh = [t for t in unique if t not in existing]
        for start in range(0, len(fresh), batch_size * 8):
            chunk = fresh[start : start + batch_size * 8]
            rows = [TextRow(text=t, source=source, added_at=time.time()) for t in chunk]
            session.add_all(rows)
            session.flush()
            writer.commit_vectors(
                session, texts=([r.id for r in rows], encoder.encode_texts(chunk))
            )
    return TextsReport(added=len(fresh), duplicates=len(texts) - len(fresh))
