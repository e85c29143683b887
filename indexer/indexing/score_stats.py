"""A score distribution summarised: what a calibration records per kind of random pair and what
fusion shifts text scores by. Its own module (numpy only) so that fusion and calibration, which
both need it, do not import each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoreStats:
    """A score distribution summarised: sample size, mean, std and quantiles."""

    n: int
    mean: float
    std: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, scores: np.ndarray) -> ScoreStats:
        """Summarise scores (n,) float."""
        p50, p90, p99 = (float(q) for q in np.quantile(scores, [0.5, 0.9, 0.99]))
        return cls(len(scores), float(scores.mean()), float(scores.std()), p50, p90, p99)

    def z(self, score: float) -> float:
        """Standard deviations above the mean of random pairs."""
        return (score - self.mean) / max(self.std, 1e-6)

    @staticmethod
    def blend(a: ScoreStats, b: ScoreStats, t: float) -> ScoreStats:
        """Linear interpolation between two summaries (t=0 -> a, t=1 -> b)."""
        mix = [(1 - t) * x + t * y for x, y in zip(astuple(a)[1:], astuple(b)[1:], strict=True)]
        return ScoreStats(min(a.n, b.n), *mix)


def astuple(stats: ScoreStats) -> tuple[float, ...]:
    """Fields in declaration order."""
    return (stats.n, stats.mean, stats.std, stats.p50, stats.p90, stats.p99)
