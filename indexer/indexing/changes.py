"""What changed since the last run, decided without opening a file that did not change.

A file already known (as an image or as a skipped file) with the same size and mtime keeps its
verdict; a touched file with the same content stays; a new file whose content matches a vanished
row is that row, moved (no re-encoding); rows whose file is gone are removed. Everything else is
left for the decode workers, which decide by the bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.indexing.file_loading import Skipped
from indexer.indexing.report import IndexReport, PipelineError
from indexer.media import caption_files, formats
from indexer.media.content_id import algorithm_key, content_id_like, file_content_id
from indexer.media.scan import FileEntry, ScanOptions, scan_folder
from indexer.store import catalog
from indexer.store.catalog import ImageRow, SkippedRow
from indexer.store.index_dir import IndexWriter


@dataclass
class ChangePlan:
    to_encode: list[FileEntry] = field(default_factory=list)
    replaced: dict[str, int] = field(default_factory=dict)  # path -> old row id (changed files)
    vanished: list[ImageRow] = field(default_factory=list)
    unchanged: list[tuple[FileEntry, int]] = field(default_factory=list)  # (file, row id)
    sidecars: dict[str, int] = field(default_factory=dict)  # sidecar .txt path -> mtime_ns (scanned)
    captions: Mapping[str, str] = field(default_factory=dict)  # absolute path -> given caption
    _roots: dict[str, str] | None = None

    def root_of(self, path: str) -> str:
        """The walk root a file to encode came from (built once, looked up per skipped file)."""
        if self._roots is None:
            self._roots = {e.path: e.root for e in self.to_encode}
        return self._roots.get(path, os.path.dirname(path))


def check_folder(root: Path) -> Path:
    if not root.exists():
        raise PipelineError(f"{root}: no such folder")
    if not root.is_dir():
        raise PipelineError(f"{root}: not a folder (mmsearch index takes a folder of photos)")
    return root.resolve()


def scan_nonempty(folder: Path, options: ScanOptions) -> list[FileEntry]:
    """The folder's files; none that is an image is an error, not "everything was deleted".

    An unmounted drive or a mistyped path looks like an empty folder; indexing it would drop
    every row under it, so the index is left untouched and removal has to be asked for.
    """
    entries = list(scan_folder(folder, options))
    readable = [e for e in entries if e.problem is None]
    if not any(e.image_extension for e in readable) and not any(map(_header_says_image, readable)):
        raise PipelineError(
            f"{folder}: no image files found, nothing to index (the index is unchanged); "
            f"to drop this folder's images from the index run `mmsearch remove {folder}`"
        )
    return entries


def _header_says_image(entry: FileEntry) -> bool:
    """Read a file's first bytes (only when no file of a folder has an image extension)."""
    try:
        if not stat.S_ISREG(os.stat(entry.path).st_mode):
            return False
        with open(entry.path, "rb") as fh:
            return formats.looks_like_image(fh.read(formats.SNIFF_BYTES), formats.extension(entry.path))
    except OSError:
        return False


def classify(
    session: Session, folders: list[Path], entries: list[FileEntry], report: IndexReport
) -> ChangePlan:
    """Split scanned files into unchanged / to encode, and find rows whose file disappeared.

    Nothing is opened here: a file already known (as an image or as a skipped file) with the
    same size and mtime keeps that verdict; any other file is decided by the decode workers.
    """
    known: dict[str, ImageRow] = {}
    for folder in folders:
        known.update({row.path: row for row in catalog.images_under(session, str(folder))})
    bad = {row.path: row for folder in folders for row in _skipped_under(session, str(folder))}
    for entry in entries:
        if entry.problem is not None:  # a dangling link: named every run, remembered never
            report.skipped.append(Skipped(entry.path, entry.problem, retry=True))
    candidates = [e for e in entries if e.problem is None]
    seen = {e.path for e in candidates}
    plan = ChangePlan(vanished=[row for path, row in known.items() if path not in seen])
    for path in [p for p in bad if p not in seen]:
        session.delete(bad[path])
    plan.sidecars = _sidecars(candidates)
    for entry in candidates:
        if entry.path in plan.sidecars:
            continue  # an image's own text, not a file to index
        row = known.get(entry.path)
        if row is not None and (row.size, row.mtime_ns) == (entry.size, entry.mtime_ns):
            report.unchanged += 1
            plan.unchanged.append((entry, row.id))
        elif row is not None and _same_content(entry, row):
            row.size, row.mtime_ns = entry.size, entry.mtime_ns  # touched, not edited
            report.unchanged += 1
            plan.unchanged.append((entry, row.id))
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


def _sidecars(entries: list[FileEntry]) -> dict[str, int]:
    """Caption files (caption_files.sidecar_paths) of scanned files -> their mtime_ns.

    A .txt file is a sidecar when a file it can belong to was scanned beside it; any other
    .txt file is classified like every other file (and reported as not an image).
    """
    texts = {e.path: e.mtime_ns for e in entries if e.path.endswith(caption_files.SIDECAR_SUFFIX)}
    if not texts:
        return {}
    owned = (caption_files.sidecar_among(e.path, texts) for e in entries if e.path not in texts)
    return {path: texts[path] for path in owned if path is not None}


def _skipped_under(session: Session, root: str) -> list[SkippedRow]:
    prefix = root.rstrip("/") + "/"
    return list(
        session.scalars(
            select(SkippedRow).where(SkippedRow.path.startswith(prefix, autoescape=True))
        )
    )


def _same_content(entry: FileEntry, row: ImageRow) -> bool:
    try:
        return entry.size == row.size and (
            file_content_id(entry.path, like=row.content_hash) == row.content_hash
        )
    except OSError:
        return False


def apply_moves_and_removals(
    session: Session, writer: IndexWriter, plan: ChangePlan, report: IndexReport
) -> None:
    """A new file whose content matches a vanished row is that row, moved: no re-encoding."""
    by_hash: dict[tuple[int, str], list[ImageRow]] = {}
    # size -> one stored id per hash algorithm among the vanished rows of that size
    id_samples: dict[int, dict[str, str]] = {}
    for gone_row in plan.vanished:  # copies of one photo share a hash; each has its own row
        by_hash.setdefault((gone_row.size, gone_row.content_hash), []).append(gone_row)
        samples = id_samples.setdefault(gone_row.size, {})
        samples.setdefault(algorithm_key(gone_row.content_hash), gone_row.content_hash)
    still_to_encode: list[FileEntry] = []
    for entry in plan.to_encode:
        row: ImageRow | None = None
        if entry.path not in plan.replaced and entry.size in id_samples:
            row = _take_moved_row(entry, id_samples[entry.size].values(), by_hash)
        if row is None:
            still_to_encode.append(entry)
            continue
        row.path, row.root, row.mtime_ns = entry.path, entry.root, entry.mtime_ns
        report.moved += 1
    plan.to_encode = still_to_encode
    gone = [row.id for rows in by_hash.values() for row in rows]
    catalog.delete_images(session, gone)
    report.removed += len(gone)
    writer.commit_vectors(session, removed_images=gone)


def _take_moved_row(
    entry: FileEntry,
    id_samples: Iterable[str],
    by_hash: dict[tuple[int, str], list[ImageRow]],
) -> ImageRow | None:
    """The vanished row with this file's content, hashed as each candidate's id was hashed."""
    try:
        with open(entry.path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    for sample in id_samples:
        same = by_hash.get((entry.size, content_id_like(data, sample)))
        if same:
            return same.pop()
    return None
