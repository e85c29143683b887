"""The indexing stages wired together: scan -> classify -> load/encode -> commit, with a report.

Re-running on the same folders encodes only new or changed files (size + mtime, confirmed by
content hash), recognises moved files by hash, and removes rows of files that disappeared.
Whether a file is an image is decided once, by its bytes, when it is new or changed (its
extension alone for known image types); the answer is remembered with the file's size and
mtime, as an image row or a skipped row, so an unchanged file is never opened again.
Progress is committed every few seconds, so a killed run loses at most that much work.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.errors import InvalidInputError
from indexer.indexing import calibration
from indexer.indexing.calibration import Calibration
from indexer.indexing.decode_pool import EncodedBatch, Skipped, encode_files
from indexer.indexing.fusion import DEFAULT_FUSION_METHOD, FusionMethod
from indexer.indexing.ray_encode import RayTarget, encode_files_ray
from indexer.media import caption_files, formats
from indexer.media import own_text as doc_text
from indexer.media.content_id import algorithm_key, content_id_like, file_content_id
from indexer.media.images import DEFAULT_DECODE_PROCESSES, DEFAULT_DECODE_TIMEOUT_S, DEFAULT_MAX_MEGAPIXELS
from indexer.media.scan import FileEntry, ScanOptions, scan_folder
from indexer.models.devices import indexing_threads, torch_threads
from indexer.models.fusion_head import FusionHead, FusionHeadError, NoFusionHeadError, load_fusion_head
from indexer.store import catalog, index_types
from indexer.store.catalog import DocTextRow, ImageRecord, ImageRow, SkippedRow, TextRow
from indexer.store.index_dir import FUSION_KEY, IndexWriter

if TYPE_CHECKING:
    from indexer.models.encoder import Encoder  # torch-free callers pass a LazyEncoder

# A killed run loses at most this much encoding; each commit rewrites the FAISS file.
COMMIT_INTERVAL_S = 5.0


class PipelineError(InvalidInputError):
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
    own_texts: int = 0  # images given (or given a new) own text: caption, sidecar or metadata
    captions_unmatched: int = 0  # given captions naming no image found under the folders
    calibrated: bool = False  # the random-pair score calibration was (re)computed
    fusion: str | None = None  # the fusion method the index records (None: none recorded, linear)
    # The image vectors were rebuilt into another index type (or re-tuned) at the end of the run.
    rebuilt: index_types.OptimizeReport | None = None
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
            "own_texts": self.own_texts,
            "captions_unmatched": self.captions_unmatched,
            "calibrated": self.calibrated,
            "fusion": self.fusion,
            "rebuilt": None if self.rebuilt is None else _rebuild_summary(self.rebuilt),
            "indexed": self.new + self.changed,
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.images_per_s, 2),
        }


def _rebuild_summary(report: index_types.OptimizeReport) -> dict[str, object]:
    return {
        "before": report.before,
        "after": report.after,
        "reason": report.reason,
        "recall": report.recall,
        "seconds": round(report.seconds, 3),
    }


@dataclass(frozen=True)
class IndexOptions:
    """Knobs of an index run."""

    batch_size: int = 64
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    scan: ScanOptions = field(default_factory=ScanOptions)
    workers: int | None = None
    # Encode a JPEG from its EXIF preview when that preview is big enough and matches the photo's
    # shape (see indexer.media.images); False decodes every photo, for folders edited by tools that
    # leave stale previews behind.
    exif_thumbnails: bool = True
    # Torch intra-op threads while encoding; None: indexer.models.devices.indexing_threads().
    torch_threads: int | None = None
    # A file whose read + decode takes longer is skipped and named (decode_pool.DecodePool).
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S
    # Decode and encode on Ray Data instead of this process's decode pool (same vectors, same ids).
    ray: RayTarget | None = None
    # Index type policy of a new index (index_types.POLICIES; None: auto for a new index, the
    # recorded one for an existing index) and the memory budget auto chooses by (bytes).
    index_type: str | None = None
    memory_budget: int | None = None
    faiss_gpu: bool = False  # build a new index type on the GPU when FAISS sees one
    # The fusion method to record (`--fusion`); None keeps the index's, and a new index gets
    # DEFAULT_FUSION_METHOD when its model has a fusion head, else linear.
    fusion: FusionMethod | None = None
    # Decode in forked worker processes instead of threads (indexer.indexing.decode_processes).
    decode_processes: bool = DEFAULT_DECODE_PROCESSES
    # Batches encoded at once, each on its own thread with `torch_threads` intra-op threads.
    encode_streams: int = 1


@dataclass
class _Plan:
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


ProgressFn = Callable[[int, int], None]  # (files done in this step, skipped so far)


def index_folders(
    roots: Sequence[Path],
    index_dir: Path,
    encoder: Encoder,
    *,
    options: IndexOptions = IndexOptions(),
    on_total: Callable[[int], None] | None = None,
    on_progress: ProgressFn | None = None,
    captions: Mapping[str, str] | None = None,
) -> IndexReport:
    """Bring the index in line with the folders: add, update, move and remove as needed.

    Each image's own text (captions[absolute path], else a sidecar .txt, else EXIF/XMP/IPTC
    text) is embedded with the text tower and stored beside its image vector.
    """
    started = time.perf_counter()
    if options.fusion == "learned":
        load_fusion_head(encoder.info.source, encoder.info.model_id)  # refuse before any work
    folders = [_check_folder(r) for r in roots]
    by_path: dict[str, FileEntry] = {}
    for folder in folders:
        for entry in _scan_nonempty(folder, options.scan):
            by_path.setdefault(entry.path, entry)  # overlapping folders must not list a file twice
    entries = list(by_path.values())
    report = IndexReport()
    new_index_info = index_types.policy_rows(options.index_type or index_types.AUTO, options.memory_budget)
    with IndexWriter(index_dir, encoder.info, new_index_info=new_index_info) as writer:
        _apply_index_type(writer, options)
        report.repaired = writer.repaired
        report.fusion = _record_fusion(writer, encoder, options.fusion)
        with writer.session() as session:
            plan = _classify(session, folders, entries, report)
            _apply_moves_and_removals(session, writer, plan, report)
        plan.captions = {_caption_key(k): v for k, v in (captions or {}).items()}
        report.captions_unmatched = len(set(plan.captions) - {e.path for e in entries})
        _refresh_own_texts(writer, encoder, plan, report)
        if on_total:
            on_total(len(plan.to_encode))
        _encode_and_commit(writer, encoder, plan, options, report, on_progress)
        report.rebuilt = index_types.maintain(writer, use_gpu=options.faiss_gpu)
        report.calibrated = _calibrate_if_needed(writer, encoder)
    report.elapsed_s = time.perf_counter() - started
    return report


def _apply_index_type(writer: IndexWriter, options: IndexOptions) -> None:
    """A new index got its policy when created; an existing one keeps its own (optimize changes
    it), and records a new memory budget."""
    if writer.created:
        return
    record = index_types.read_record(writer)
    if options.index_type is not None and options.index_type != record.policy:
        raise PipelineError(
            f"{writer.index_dir} uses --index-type {record.policy}; --index-type applies to a new "
            f"index: change this one with `mmsearch optimize --index-type {options.index_type}`"
        )
    if options.memory_budget is not None:
        index_types.set_policy(writer, record.policy, options.memory_budget)


def _record_fusion(writer: IndexWriter, encoder: Encoder, asked: FusionMethod | None) -> str | None:
    """Record the fusion method asked for; a new index gets the default its model allows.
    Returns what the index records now."""
    with writer.session() as session:
        recorded = catalog.read_info(session).get(FUSION_KEY)
        chosen = asked
        if chosen is None and writer.created:
            chosen = DEFAULT_FUSION_METHOD if _fusion_head(encoder) is not None else "linear"
        if chosen is None or chosen == recorded:
            return recorded
        catalog.write_info(session, {FUSION_KEY: chosen})
        session.commit()
    return chosen


def _fusion_head(encoder: Encoder) -> FusionHead | None:
    """The encoder's learned fusion head, or None when its model folder has no usable one."""
    try:
        return load_fusion_head(encoder.info.source, encoder.info.model_id)
    except (NoFusionHeadError, FusionHeadError):
        return None


def _check_folder(root: Path) -> Path:
    if not root.exists():
        raise PipelineError(f"{root}: no such folder")
    if not root.is_dir():
        raise PipelineError(f"{root}: not a folder (mmsearch index takes a folder of photos)")
    return root.resolve()


def _scan_nonempty(folder: Path, options: ScanOptions) -> list[FileEntry]:
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


def _classify(
    session: Session, folders: list[Path], entries: list[FileEntry], report: IndexReport
) -> _Plan:
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
    plan = _Plan(vanished=[row for path, row in known.items() if path not in seen])
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


def _apply_moves_and_removals(
    session: Session, writer: IndexWriter, plan: _Plan, report: IndexReport
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


def _encode_and_commit(
    writer: IndexWriter,
    encoder: Encoder,
    plan: _Plan,
    options: IndexOptions,
    report: IndexReport,
    on_progress: ProgressFn | None,
) -> None:
    """Encode in batches; commit vectors + catalogue together every COMMIT_INTERVAL_S."""
    if not plan.to_encode:
        return  # nothing to encode: the model (and torch) are not needed
    batches = (
        encode_files(
            plan.to_encode,
            encoder,
            batch_size=options.batch_size,
            max_megapixels=options.max_megapixels,
            embedded_thumbnail=options.exif_thumbnails,
            captions=plan.captions,
            sidecars=plan.sidecars,
            workers=options.workers,
            decode_timeout_s=options.decode_timeout_s,
            decode_processes=options.decode_processes,
            encode_streams=options.encode_streams,
        )
        if options.ray is None
        else encode_files_ray(
            plan.to_encode,
            encoder,
            target=options.ray,
            batch_size=options.batch_size,
            max_megapixels=options.max_megapixels,
            embedded_thumbnail=options.exif_thumbnails,
            captions=plan.captions,
            sidecars=plan.sidecars,
        )
    )
    session = writer.session()
    pending_ids: list[int] = []
    pending_vectors: list[np.ndarray] = []
    pending_removed: list[int] = []
    pending_docs = _PendingDocs()
    last_commit = time.perf_counter()
    threads = options.torch_threads or indexing_threads()
    try:
        with torch_threads(threads):
            for batch in batches:
                removed, ids = _stage_batch(session, batch, plan, report)
                pending_removed += removed
                pending_ids += ids
                pending_vectors.append(batch.vectors)
                pending_docs.extend(_stage_own_texts(session, encoder, batch, ids, report))
                if on_progress:
                    on_progress(len(batch.images) + len(batch.skipped), len(report.skipped))
                if time.perf_counter() - last_commit >= COMMIT_INTERVAL_S:
                    _commit(writer, session, pending_ids, pending_vectors, pending_removed, pending_docs)
                    pending_ids, pending_vectors, pending_removed = [], [], []
                    pending_docs = _PendingDocs()
                    last_commit = time.perf_counter()
        _commit(writer, session, pending_ids, pending_vectors, pending_removed, pending_docs)
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
    catalog.forget_skipped(session, [img.entry.path for img in batch.images])
    for skip in batch.skipped:
        _remember_skip(session, skip, plan.root_of(skip.path))
        if skip.path in plan.replaced:  # an indexed file that turned bad: drop the stale vector
            removed.append(plan.replaced[skip.path])
            catalog.delete_images(session, [plan.replaced[skip.path]])
    report.skipped += batch.skipped
    report.changed += len([i for i in batch.images if i.entry.path in plan.replaced])
    report.new += len([i for i in batch.images if i.entry.path not in plan.replaced])
    report.encoded += len(batch.images)
    return removed, ids


def _remember_skip(session: Session, skip: Skipped, root: str) -> None:
    if skip.retry:
        return  # a fixed permission or an installed extra changes no size or mtime: try again
    try:
        st = os.stat(skip.path)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        return  # vanished or unreadable: nothing stable to remember it by
    session.merge(
        SkippedRow(path=skip.path, root=root, size=size, mtime_ns=mtime_ns, reason=skip.reason)
    )


def _commit(
    writer: IndexWriter,
    session: Session,
    ids: list[int],
    vectors: list[np.ndarray],
    removed: list[int],
    docs: _PendingDocs | None = None,
) -> None:
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, writer.images.dim), np.float32)
    doc_texts = docs.stacked(writer.images.dim) if docs else None
    writer.commit_vectors(
        session, images=(ids, stacked), removed_images=removed, doc_texts=doc_texts
    )


@dataclass
class _PendingDocs:
    """Own-text vectors staged with their images, committed in the same commit."""

    ids: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def extend(self, staged: tuple[list[int], np.ndarray]) -> None:
        """Add (image ids, own-text vectors (n, dim))."""
        self.ids += staged[0]
        self.vectors.append(staged[1])

    def stacked(self, dim: int) -> tuple[list[int], np.ndarray]:
        """(ids, (n, dim) float32) for commit_vectors."""
        vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, dim), np.float32)
        return self.ids, vectors


def _stage_own_texts(
    session: Session,
    encoder: Encoder,
    batch: EncodedBatch,
    ids: list[int],
    report: IndexReport,
) -> tuple[list[int], np.ndarray]:
    """Own-text rows for a batch's new image rows; returns (image ids, text vectors (n, dim))."""
    found = [
        (image_id, img.own_text)
        for img, image_id in zip(batch.images, ids, strict=True)
        if img.own_text is not None
    ]
    return _add_own_texts(session, encoder, found, report)


def _add_own_texts(
    session: Session,
    encoder: Encoder,
    texts: list[tuple[int, doc_text.OwnText]],
    report: IndexReport,
) -> tuple[list[int], np.ndarray]:
    for image_id, own in texts:
        session.add(
            DocTextRow(
                image_id=image_id,
                text=own.text,
                source=own.source,
                sidecar_mtime_ns=own.sidecar_mtime_ns,
            )
        )
    session.flush()
    report.own_texts += len(texts)
    if not texts:
        return [], np.zeros((0, encoder.info.dim), np.float32)
    return [i for i, _ in texts], encoder.encode_texts([own.text for _, own in texts])


def _refresh_own_texts(
    writer: IndexWriter, encoder: Encoder, plan: _Plan, report: IndexReport
) -> None:
    """Unchanged images whose own text changed (a new caption, an edited sidecar): re-embed only
    the text, not the image."""
    with writer.session() as session:
        stored = catalog.doc_text_rows(session, [row_id for _, row_id in plan.unchanged])
        stale = [
            (entry, row_id)
            for entry, row_id in plan.unchanged
            if _own_text_stale(entry.path, stored.get(row_id), plan)
        ]
        if not stale:
            return
        old = [row_id for _, row_id in stale if row_id in stored]
        catalog.delete_doc_texts(session, old)
        found = [
            (
                row_id,
                doc_text.own_text(
                    entry.path, caption=plan.captions.get(entry.path), sidecars=plan.sidecars
                ),
            )
            for entry, row_id in stale
        ]
        fresh = _add_own_texts(session, encoder, [(i, t) for i, t in found if t], report)
        writer.commit_vectors(session, doc_texts=fresh, removed_doc_texts=old)


def _caption_key(path: str) -> str:
    """A caption's image path spelled like the scan spells it: folders resolved, name kept."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def _own_text_stale(path: str, stored: DocTextRow | None, plan: _Plan) -> bool:
    caption = plan.captions.get(path)
    if caption is not None:
        return stored is None or (stored.source, stored.text) != ("caption", doc_text.clean_text(caption))
    if stored is not None and stored.source == "caption":
        return False  # a caption given earlier stays until another one is given
    sidecar_mtime = doc_text.sidecar_state(path, plan.sidecars)
    return sidecar_mtime != (stored.sidecar_mtime_ns if stored else None)


def _calibrate_if_needed(writer: IndexWriter, encoder: Encoder) -> bool:
    """Record random-pair score statistics when the index has none or changed meaningfully."""
    with writer.session() as session:
        current = calibration.read_calibration(session)
        if not calibration.needs_calibration(
            current,
            images=len(writer.images),
            doc_texts=len(writer.doc_texts),
            learned=_fusion_head(encoder) is not None,
        ):
            return False
        _write_calibration(writer, session, encoder)
    return True


def _write_calibration(writer: IndexWriter, session: Session, encoder: Encoder) -> Calibration:
    query = select(TextRow.id, TextRow.image_id).where(TextRow.image_id.is_not(None))
    owners = {text_id: image_id for text_id, image_id in session.execute(query)}
    sample = calibration.sample_index(
        writer.images,
        writer.texts,
        writer.doc_texts,
        text_owners={int(k): int(v) for k, v in owners.items() if v is not None},
        encode_probes=encoder.encode_texts,
    )
    result = calibration.compute_calibration(sample, head=_fusion_head(encoder))
    calibration.write_calibration(session, result)
    session.commit()
    return result


def calibrate_index(index_dir: Path, encoder: Encoder) -> Calibration:
    """(Re)compute the index's random-pair score calibration now, whatever changed."""
    with IndexWriter(index_dir, encoder.info) as writer, writer.session() as session:
        if len(writer.images) < calibration.MIN_CALIBRATION_IMAGES:
            raise PipelineError(
                f"{index_dir} holds {len(writer.images)} images; calibration needs at least "
                f"{calibration.MIN_CALIBRATION_IMAGES}: index more with `mmsearch index`"
            )
        return _write_calibration(writer, session, encoder)


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
            index_types.maintain(writer)  # e.g. HNSW past its tombstone share
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
