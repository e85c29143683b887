"""Recording the calibration in an index: when it is due, and computing it from the index's
own vectors (the statistics themselves are in calibration.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.indexing import calibration
from indexer.indexing.calibration import Calibration
from indexer.indexing.report import PipelineError
from indexer.models.fusion_head import usable_fusion_head
from indexer.store.catalog import TextRow
from indexer.store.index_dir import IndexWriter

if TYPE_CHECKING:
    from indexer.models.protocol import Encoder


def calibrate_if_needed(writer: IndexWriter, encoder: Encoder) -> bool:
    """Record random-pair score statistics when the index has none or changed meaningfully."""
    with writer.session() as session:
        current = calibration.read_calibration(session)
        if not calibration.needs_calibration(
            current,
            images=len(writer.images),
            doc_texts=len(writer.doc_texts),
            learned=usable_fusion_head(encoder.info.source, encoder.info.model_id) is not None,
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
    head = usable_fusion_head(encoder.info.source, encoder.info.model_id)
    result = calibration.compute_calibration(sample, head=head)
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
