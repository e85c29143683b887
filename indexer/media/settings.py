"""Decoding and preprocessing settings: plain values, no imaging library imported.

The CLI builds its flags (defaults, help) from these at start-up, and a model's config stores a
PreprocessConfig; neither should cost Pillow or NumPy. images.py does the work they describe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# 100 MP admits every phone and nearly every camera (102 MP medium format is the rare exception)
# while refusing headers whose RGB decode would need more than ~300 MB per image.
DEFAULT_MAX_MEGAPIXELS = 100.0
PIXELS_PER_MEGAPIXEL = 1_000_000
MAX_MEGAPIXELS_FLAG = "--max-megapixels"
# A 100 MP TIFF or a full-size RAW demosaic takes a few seconds on two busy cores; a file that
# keeps a decoder busy ten times longer is broken or crafted, and must not stall a run.
DEFAULT_DECODE_TIMEOUT_S = 30.0
DECODE_TIMEOUT_FLAG = "--decode-timeout"
# Decode in worker processes instead of threads (indexer.indexing.decode_processes); the default
# is the faster of the two on the measured machine (benchmarks/RESULTS.md, "real-sized model").
DECODE_PROCESSES_FLAG = "--decode-processes"
DEFAULT_DECODE_PROCESSES = False

RESIZE_MODES = ("shorter_side_center_crop", "squash")


@dataclass(frozen=True)
class PreprocessConfig:
    """How an RGB image becomes a tensor; saved with the model so queries match training."""

    image_size: int = 64
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    resize: str = "shorter_side_center_crop"  # or "squash"

    def __post_init__(self) -> None:
        """Refuse a config that would fail or divide by zero at the first image."""
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of to_dict; missing keys take defaults, unknown keys are an error."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown PreprocessConfig keys: {', '.join(unknown)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**values)
