"""An index run wired together: scan -> classify -> load/encode -> commit, with a report.

The stages live beside it: changes.py (what changed, moves, removals), decode_pool.py (decode
and encode), own_texts.py, calibrate.py; edits that are not a run (remove, add texts) in edits.py.

Re-running on the same folders encodes only new or changed files (size + mtime, confirmed by
content hash), recognises moved files by hash, and removes rows of files that disappeared.
Whether a file is an image is decided once, by its bytes, when it is new or changed (its
extension alone for known image types); the answer is remembered with the file's size and
mtime, as an image row or a skipped row, so an unchanged file is never opened again.
Progress is committed every few seconds, so a killed run loses at most that much work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from indexer.indexing.calibrate import calibrate_if_needed
from indexer.indexing.calibrate import calibrate_index as calibrate_index  # re-exported: its home before
from indexer.indexing.changes import (
    ChangePlan,
    apply_moves_and_removals,
    check_folder,
    classify,
    scan_nonempty,
)
from indexer.indexing.decode_pool import encode_files
from indexer.indexing.edits import TextsReport as TextsReport  # re-exported, as the two below
from indexer.indexing.edits import add_texts as add_texts
from indexer.indexing.edits import remove_images as remove_images
from indexer.indexing.file_loading import EncodedBatch, Skipped
from indexer.indexing.fusion import DEFAULT_FUSION_METHOD, FusionMethod
from indexer.indexing.own_texts import PendingDocs, caption_key, refresh_own_texts, stage_own_texts
from indexer.indexing.ray_encode import RayTarget, encode_files_ray
from indexer.indexing.report import IndexReport as IndexReport  # re-exported, as PipelineError
from indexer.indexing.report import PipelineError as PipelineError
from indexer.media.images import DEFAULT_DECODE_PROCESSES, DEFAULT_DECODE_TIMEOUT_S, DEFAULT_MAX_MEGAPIXELS
from indexer.media.scan import FileEntry, ScanOptions
from indexer.models.devices import indexing_threads, torch_threads
from indexer.models.fusion_head import load_fusion_head, usable_fusion_head
from indexer.store import catalog, index_types, index_upkeep
from indexer.store.catalog import ImageRecord, SkippedRow
from indexer.store.index_dir import FUSION_KEY, IndexWriter

if TYPE_CHECKING:
    from indexer.models.encoder import Encoder  # torch-free callers pass a LazyEncoder

# A killed run loses at most this much encoding; each commit rewrites the FAISS file.
COMMIT_INTERVAL_S = 5.0


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
    folders = [check_folder(r) for r in roots]
    by_path: dict[str, FileEntry] = {}
    for folder in folders:
        for entry in scan_nonempty(folder, options.scan):
            by_path.setdefault(entry.path, entry)  # overlapping folders must not list a file twice
    entries = list(by_path.values())
    report = IndexReport()
    new_index_info = index_upkeep.policy_rows(options.index_type or index_types.AUTO, options.memory_budget)
    with IndexWriter(index_dir, encoder.info, new_index_info=new_index_info) as writer:
        _apply_index_type(writer, options)
        report.repaired = writer.repaired
        report.fusion = _record_fusion(writer, encoder, options.fusion)
        with writer.session() as session:
            plan = classify(session, folders, entries, report)
            apply_moves_and_removals(session, writer, plan, report)
        plan.captions = {caption_key(k): v for k, v in (captions or {}).items()}
        report.captions_unmatched = len(set(plan.captions) - {e.path for e in entries})
        refresh_own_texts(writer, encoder, plan, report)
        if on_total:
            on_total(len(plan.to_encode))
        _encode_and_commit(writer, encoder, plan, options, report, on_progress)
        report.rebuilt = index_upkeep.maintain(writer, use_gpu=options.faiss_gpu)
        report.calibrated = calibrate_if_needed(writer, encoder)
    report.elapsed_s = time.perf_counter() - started
    return report


def _apply_index_type(writer: IndexWriter, options: IndexOptions) -> None:
    """A new index got its policy when created; an existing one keeps its own (optimize changes
    it), and records a new memory budget."""
    if writer.created:
        return
    record = index_upkeep.read_record(writer)
    if options.index_type is not None and options.index_type != record.policy:
        raise PipelineError(
            f"{writer.index_dir} uses --index-type {record.policy}; --index-type applies to a new "
            f"index: change this one with `mmsearch optimize --index-type {options.index_type}`"
        )
    if options.memory_budget is not None:
        index_upkeep.set_policy(writer, record.policy, options.memory_budget)


def _record_fusion(writer: IndexWriter, encoder: Encoder, asked: FusionMethod | None) -> str | None:
    """Record the fusion method asked for; a new index gets the default its model allows.
    Returns what the index records now."""
    with writer.session() as session:
        recorded = catalog.read_info(session).get(FUSION_KEY)
        chosen = asked
        if chosen is None and writer.created:
            has_head = usable_fusion_head(encoder.info.source, encoder.info.model_id) is not None
            chosen = DEFAULT_FUSION_METHOD if has_head else "linear"
        if chosen is None or chosen == recorded:
            return recorded
        catalog.write_info(session, {FUSION_KEY: chosen})
        session.commit()
    return chosen


def _encode_and_commit(
    writer: IndexWriter,
    encoder: Encoder,
    plan: ChangePlan,
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
    pending_docs = PendingDocs()
    last_commit = time.perf_counter()
    threads = options.torch_threads or indexing_threads()
    try:
        with torch_threads(threads):
            for batch in batches:
                removed, ids = _stage_batch(session, batch, plan, report)
                pending_removed += removed
                pending_ids += ids
                pending_vectors.append(batch.vectors)
                pending_docs.extend(stage_own_texts(session, encoder, batch, ids, report))
                if on_progress:
                    on_progress(len(batch.images) + len(batch.skipped), len(report.skipped))
                if time.perf_counter() - last_commit >= COMMIT_INTERVAL_S:
                    _commit(writer, session, pending_ids, pending_vectors, pending_removed, pending_docs)
                    pending_ids, pending_vectors, pending_removed = [], [], []
                    pending_docs = PendingDocs()
                    last_commit = time.perf_counter()
        _commit(writer, session, pending_ids, pending_vectors, pending_removed, pending_docs)
    finally:
        session.close()


def _stage_batch(
    session: Session, batch: EncodedBatch, plan: ChangePlan, report: IndexReport
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
    docs: PendingDocs | None = None,
) -> None:
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, writer.images.dim), np.float32)
    doc_texts = docs.stacked(writer.images.dim) if docs else None
    writer.commit_vectors(
        session, images=(ids, stacked), removed_images=removed, doc_texts=doc_texts
    )


