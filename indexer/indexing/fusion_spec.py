"""What a query asks of fusion (method, text weight) and what scoring returns: plain values.

The CLI and the query parser build these at start-up without NumPy; fusion.py does the scoring
they describe (the module docstring there explains both methods).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, get_args

from indexer.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np

QueryModality = Literal["text", "image"]
# Measured on the sample corpus (benchmarks/FUSION.md): the best text->image recall among the
# weights that leave images without own text at least as well found as image-only retrieval.
DEFAULT_TEXT_WEIGHT = 0.2
FusionAlign = Literal["none", "mean", "z"]
# How own-text similarities are aligned with image similarities before the weighted sum:
# "none" raw, "mean" shifted by the difference of random-pair means, "z" also rescaled by the
# ratio of their stds. "mean" measured best on the sample corpus (benchmarks/FUSION.md).
FUSION_ALIGN: FusionAlign = "mean"
FusionRule = Literal["linear", "lift"]
# "linear": (1-w) * image + w * text. "lift": the same, but never below the image score (own
# text as supporting evidence only). With the bundled model trained with caption agreement,
# "linear" measured best for documents with and without own text alike (benchmarks/FUSION.md):
# a document whose own text does not match the query drops, which lets the right text-less image
# rise, while "lift" only ever raises captioned documents over text-less look-alikes.
FUSION_RULE: FusionRule = "linear"
FusionMethod = Literal["linear", "learned"]
FUSION_METHODS: tuple[str, ...] = get_args(FusionMethod)
# What `mmsearch index` records for a new index whose model has a fusion head (without a head:
# linear). Measured in benchmarks/FUSION.md against linear at its best weight.
DEFAULT_FUSION_METHOD: FusionMethod = "linear"


_RULES: tuple[str, ...] = get_args(FusionRule)
_ALIGNS: tuple[str, ...] = get_args(FusionAlign)


class FusionError(InvalidInputError):
    """A fusion setting out of range (text weight outside 0..1, unknown method, rule or alignment)."""


@dataclass(frozen=True)
class Fusion:
    """How documents with own text are scored: the method, and the linear rule's text weight,
    rule and alignment.

    method None means the index's recorded method (`resolved`), linear if it records none. The
    calibration records fused null distributions for FUSION_RULE / FUSION_ALIGN only; other
    rules and alignments are for measurement (benchmarks/fusion.py).
    """

    text_weight: float = DEFAULT_TEXT_WEIGHT
    rule: FusionRule = FUSION_RULE
    align: FusionAlign = FUSION_ALIGN
    method: FusionMethod | None = None

    def __post_init__(self) -> None:
        try:
            weight = float(self.text_weight)
        except (TypeError, ValueError):
            weight = math.nan
        if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
            raise FusionError(f"text weight must be between 0 and 1, got {self.text_weight}")
        object.__setattr__(self, "text_weight", weight)  # numpy scalars and ints become a float
        if self.rule not in _RULES:
            raise FusionError(f"fusion rule must be one of {_RULES}, not {self.rule!r}")
        if self.align not in _ALIGNS:
            raise FusionError(f"fusion alignment must be one of {_ALIGNS}, not {self.align!r}")
        if self.method is not None and self.method not in FUSION_METHODS:
            raise FusionError(f"fusion must be one of {', '.join(FUSION_METHODS)}, not {self.method!r}")

    @classmethod
    def weighted(cls, text_weight: float | None, method: FusionMethod | None = None) -> Fusion:
        """The policy as the CLI's --text-weight/--fusion and the Python wrappers' text_weight=
        and fusion= give it. A text weight sets the linear rule, so it cannot go with "learned";
        with neither, the index's method at DEFAULT_TEXT_WEIGHT."""
        if text_weight is None:
            return _index_default(method) if cls is Fusion else cls(DEFAULT_TEXT_WEIGHT, method=method)
        if method == "learned":
            raise FusionError(
                "a text weight sets the linear fusion's mix; learned fusion picks its own: drop the "
                "text weight, or ask for linear fusion"
            )
        return cls(float(text_weight), method="linear")

    def resolved(self, recorded: str | None) -> Fusion:
        """This policy with a concrete method: its own, else the index's recorded one, else linear."""
        if self.method is not None:
            return self
        method = recorded if recorded in FUSION_METHODS else "linear"
        return replace(self, method=method)  # type: ignore[arg-type]

    @property
    def calibrated(self) -> bool:
        """True when the index's linear fused null distributions describe these scores."""
        return (self.rule, self.align) == (FUSION_RULE, FUSION_ALIGN) and self.method != "learned"


@functools.lru_cache(maxsize=len(FUSION_METHODS) + 1)
def _index_default(method: FusionMethod | None) -> Fusion:
    """Fusion.weighted(None, method): what nearly every query asks for, built once per method
    (a frozen value: one instance serves every search)."""
    return Fusion(DEFAULT_TEXT_WEIGHT, method=method)


@dataclass(frozen=True)
class Scored:
    """Candidates best first: ids (n,) int64, final scores (n,) float32, and the parts.

    text_scores is NaN where the document has no own text (or fusion was off).
    """

    ids: np.ndarray
    scores: np.ndarray
    image_scores: np.ndarray
    text_scores: np.ndarray

    def keep(self, mask: np.ndarray) -> Scored:
        """The candidates where mask (n,) bool is true, order kept."""
        return Scored(self.ids[mask], self.scores[mask], self.image_scores[mask], self.text_scores[mask])
