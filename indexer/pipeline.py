"""The indexing stages wired together: scan -> classify -> load/encode -> commit, with a report.

Re-running on the same folders encodes only new or changed files (size + mtime, confirmed by
content hash), recognises moved files by hash, and removes rows of files that disappeared.
Progress is committed every few seconds, so a killed run loses at most that much work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer import catalog
from indexer.catalog import ImageRecord, ImageRow, SkippedRow, TextRow
from indexer.encode import EncodedBatch, Skipped, encode_files, hash_file
from indexer.encoders import Encoder
from indexer.images import DEFAULT_MAX_MEGAPIXELS
from indexer.index_store import IndexWriter
from indexer.scan import FileEntry, ScanOptions, scan_folder

# A killed run loses at most this much encoding; each commit rewrites the FAISS file.
COMMIT_INTERVAL_S = 5.0


class PipelineError(ValueError):
    """Input that cannot be indexed at all (not a folder, nothing to index)."""


@dataclass
class IndexReport:
    """What an index run did, for the summary line and --json."""

    new: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    repaired: int = 0
    encoded: int = 0
    elapsed_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Encoded images per second of wall time."""
        return self.encoded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "new": self.new,
            "changed": self.changed,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "repaired": self.repaired,
            "indexed": self.new + self.changed,
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.images_per_s, 2),
        }


@dataclass(frozen=True)
class IndexOptions:
    """Knobs of an index run."""

    batch_size: int = 64
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    scan: ScanOptions = field(default_factory=ScanOptions)
    workers: int | None = None


@dataclass
class _Plan:
    to_encode: list[FileEntry] = field(default_factory=list)
    replaced: dict[str, int] = field(default_factory=dict)  # path -> old row id (changed files)
    vanished: list[ImageRow] = field(default_factory=list)


ProgressFn = Callable[[int, int], None]  # (files done in this step, skipped so far)


def index_folders(
    roots: Sequence[Path],
    index_dir: Path,
    encoder: Encoder,
    *,
    options: IndexOptions = IndexOptions(),
    on_total: Callable[[int], None] | None = None,
    on_progress: ProgressFn | None = None,
) -> IndexReport:
    """Bring the index in line with the folders: add, update, move and remove as needed."""
    started = time.perf_counter()
    folders = [_check_folder(r) for r in roots]
    entries = [e for folder in folders for e in scan_folder(folder, options.scan)]
    report = IndexReport()
    with IndexWriter(index_dir, encoder.info) as writer:
        report.repaired = writer.repaired
        with writer.session() as session:
            plan = _classify(session, folders, entries, report)
            _apply_moves_and_removals(session, writer, plan, report)
        if on_total:
            on_total(len(plan.to_encode))
        _encode_and_commit(writer, encoder, plan, options, report, on_progress)
    report.elapsed_s = time.perf_counter() - started
    return report


def _check_folder(root: Path) -> Path:
    if not root.exists():
        raise PipelineError(f"{root}: no such folder")
    if not root.is_dir():
        raise PipelineError(f"{root}: not a folder (mmsearch index takes a folder of photos)")
    return root.resolve()


def _classify(
    session: Session, folders: list[Path], entries: list[FileEntry], report: IndexReport
) -> _Plan:
    """Split scanned files into unchanged / to encode, and find rows whose file disappeared."""
    known: dict[str, ImageRow] = {}
    for folder in folders:
        known.update({row.path: row for row in catalog.images_under(session, str(folder))})
    bad = {row.path: row for folder in folders for row in _skipped_under(session, str(folder))}
    seen = {e.path for e in entries}
    plan = _Plan(vanished=[row for path, row in known.items() if path not in seen])
    for path in [p for p in bad if p not in seen]:
        session.delete(bad[path])
    for entry in entries:
        if not entry.image_type:
            report.skipped.append(Skipped(entry.path, _not_image_reason(entry.path)))
            continue
        row = known.get(entry.path)
        if row is not None and (row.size, row.mtime_ns) == (entry.size, entry.mtime_ns):
            report.unchanged += 1
        elif row is not None and _same_content(entry, row):
            row.size, row.mtime_ns = entry.size, entry.mtime_ns  # touched, not edited
            report.unchanged += 1
        elif (old := bad.get(entry.path)) is not None and (old.size, old.mtime_ns) == (
            entry.size,
            entry.mtime_ns,
        ):
            report.skipped.append(Skipped(entry.path, old.reason))
        else:
            if row is not None:
                plan.replaced[entry.path] = row.id
            plan.to_encode.append(entry)
    session.commit()
    return plan


def _not_image_reason(path: str) -> str:
    return f"not an image file type ({os.path.splitext(path)[1] or 'no extension'})"


def _skipped_under(session: Session, root: str) -> list[SkippedRow]:
    prefix = root.rstrip("/") + "/"
    return list(
        session.scalars(
            select(SkippedRow).where(SkippedRow.path.startswith(prefix, autoescape=True))
        )
    )


def _same_content(entry: FileEntry, row: ImageRow) -> bool:
    try:
        return entry.size == row.size and hash_file(entry.path) == row.content_hash
    except OSError:
        return False


def _apply_moves_and_removals(
    session: Session, writer: IndexWriter, plan: _Plan, report: IndexReport
) -> None:
    """A new file whose content matches a vanished row is that row, moved: no re-encoding."""
    by_hash: dict[tuple[int, str], ImageRow] = {
        (row.size, row.content_hash): row for row in plan.vanished
    }
    sizes = {size for size, _ in by_hash}
    still_to_encode = []
    for entry in plan.to_encode:
        row = None
        if entry.path not in plan.replaced and entry.size in sizes:
            try:
                row = by_hash.pop((entry.size, hash_file(entry.path)), None)
            except OSError:
                row = None
        if row is None:
            still_to_encode.append(entry)
            continue
        row.path, row.root, row.mtime_ns = entry.path, entry.root, entry.mtime_ns
        report.moved += 1
    plan.to_encode = still_to_encode
    gone = [row.id for row in by_hash.values()]
    catalog.delete_images(session, gone)
    report.removed += len(gone)
    writer.commit_vectors(session, removed_images=gone)


def _encode_and_commit(
    writer: IndexWriter,
    encoder: Encoder,
    plan: _Plan,
    options: IndexOptions,
    report: IndexReport,
    on_progress: ProgressFn | None,
) -> None:
    """Encode in batches; commit FAISS + SQLite together every COMMIT_INTERVAL_S."""
    batches = encode_files(
        plan.to_encode,
        encoder,
        batch_size=options.batch_size,
        max_megapixels=options.max_megapixels,
        workers=options.workers,
    )
    session = writer.session()
    pending_ids: list[int] = []
    pending_vectors: list[np.ndarray] = []
    pending_removed: list[int] = []
    last_commit = time.perf_counter()
    try:
        for batch in batches:
            removed, ids = _stage_batch(session, batch, plan, report)
            pending_removed += removed
            pending_ids += ids
            pending_vectors.append(batch.vectors)
            if on_progress:
                on_progress(len(batch.images) + len(batch.skipped), len(report.skipped))
            if time.perf_counter() - last_commit >= COMMIT_INTERVAL_S:
                _commit(writer, session, pending_ids, pending_vectors, pending_removed)
                pending_ids, pending_vectors, pending_removed = [], [], []
                last_commit = time.perf_counter()
        _commit(writer, session, pending_ids, pending_vectors, pending_removed)
    finally:
        session.close()


def _stage_batch(
    session: Session, batch: EncodedBatch, plan: _Plan, report: IndexReport
) -> tuple[list[int], list[int]]:
    """Insert rows for a batch (ids assigned, not yet committed); returns (removed ids, new ids)."""
    removed = [
        plan.replaced[img.entry.path] for img in batch.images if img.entry.path in plan.replaced
    ]
    catalog.delete_images(session, removed)
    session.flush()
    records = [
        ImageRecord(
            img.entry.path,
            img.entry.root,
            img.entry.size,
            img.entry.mtime_ns,
            img.content_hash,
            img.width,
            img.height,
        )
        for img in batch.images
    ]
    ids = catalog.insert_images(session, records)
    for img in batch.images:
        if (bad := session.get(SkippedRow, img.entry.path)) is not None:
            session.delete(bad)
    for skip in batch.skipped:
        _remember_skip(session, skip, plan)
        if skip.path in plan.replaced:  # an indexed file that turned bad: drop the stale vector
            removed.append(plan.replaced[skip.path])
            catalog.delete_images(session, [plan.replaced[skip.path]])
    report.skipped += batch.skipped
    report.changed += len([i for i in batch.images if i.entry.path in plan.replaced])
    report.new += len([i for i in batch.images if i.entry.path not in plan.replaced])
    report.encoded += len(batch.images)
    return removed, ids


def _remember_skip(session: Session, skip: Skipped, plan: _Plan) -> None:
    try:
        st = os.stat(skip.path)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        return  # vanished or unreadable: nothing stable to remember it by
    root = next((e.root for e in plan.to_encode if e.path == skip.path), os.path.dirname(skip.path))
    session.merge(
        SkippedRow(path=skip.path, root=root, size=size, mtime_ns=mtime_ns, reason=skip.reason)
    )


def _commit(
    writer: IndexWriter,
    session: Session,
    ids: list[int],
    vectors: list[np.ndarray],
    removed: list[int],
) -> None:
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, writer.images.dim), np.float32)
    writer.commit_vectors(session, images=(ids, stacked), removed_images=removed)


def remove_images(index_dir: Path, paths: Sequence[Path]) -> int:
    """Remove indexed files (or every file under a folder) from FAISS and SQLite; returns the count."""
    with IndexWriter(index_dir, None) as writer, writer.session() as session:
        ids: list[int] = []
        for path in paths:
            absolute = os.path.abspath(path)
            rows = catalog.images_by_path(session, [absolute]).values() or catalog.images_under(
                session, absolute
            )
            ids += [row.id for row in rows]
        catalog.delete_images(session, ids)
        writer.commit_vectors(session, removed_images=ids)
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
