"""Own texts (a given caption, a sidecar `.txt`, EXIF/XMP/IPTC text) kept in step with images.

New images get theirs staged with the image rows and committed in the same commit; an unchanged
image whose own text changed (a new caption, an edited sidecar) has only its text re-embedded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from indexer.indexing.changes import ChangePlan
from indexer.indexing.file_loading import EncodedBatch
from indexer.indexing.report import IndexReport
from indexer.media import own_text as doc_text
from indexer.store import catalog
from indexer.store.catalog import DocTextRow
from indexer.store.index_dir import IndexWriter

if TYPE_CHECKING:
    from indexer.models.protocol import Encoder


@dataclass
class PendingDocs:
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


def stage_own_texts(
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


def refresh_own_texts(
    writer: IndexWriter, encoder: Encoder, plan: ChangePlan, report: IndexReport
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


def caption_key(path: str) -> str:
    """A caption's image path spelled like the scan spells it: folders resolved, name kept."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def _own_text_stale(path: str, stored: DocTextRow | None, plan: ChangePlan) -> bool:
    caption = plan.captions.get(path)
    if caption is not None:
        return stored is None or (stored.source, stored.text) != ("caption", doc_text.clean_text(caption))
    if stored is not None and stored.source == "caption":
        return False  # a caption given earlier stays until another one is given
    sidecar_mtime = doc_text.sidecar_state(path, plan.sidecars)
    return sidecar_mtime != (stored.sidecar_mtime_ns if stored else None)
