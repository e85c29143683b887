"""What an index run did: the summary line and `--json` of `mmsearch index`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from indexer.errors import InvalidInputError
from indexer.indexing.file_loading import Skipped

if TYPE_CHECKING:
    from indexer.store import index_upkeep


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
    rebuilt: index_upkeep.OptimizeReport | None = None
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


def _rebuild_summary(report: index_upkeep.OptimizeReport) -> dict[str, object]:
    return {
        "before": report.before,
        "after": report.after,
        "reason": report.reason,
        "recall": report.recall,
        "seconds": round(report.seconds, 3),
    }
