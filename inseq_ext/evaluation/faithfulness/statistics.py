"""Means and bootstrap confidence intervals over generated tokens and prompts.

Values come as one list per sequence (prompt) of one value per generated token. The mean weights every token
equally. Its confidence interval is a two-stage (cluster) percentile bootstrap (Davison & Hinkley, 1997,
"Bootstrap Methods and their Application", sec. 3.8): each resample draws the sequences with replacement, then,
within each drawn sequence, its tokens with replacement, and takes the pooled mean; the interval is the central
``confidence`` share of the resampled means. Tokens of one prompt are not independent, so resampling prompts as
well as tokens keeps the interval honest when a data set has many prompts; with one prompt it is the ordinary
bootstrap over its tokens. NaN values (undefined for that token) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Upper bound on the values drawn at once (memory of one chunk of resamples).
_CHUNK_VALUES = 2_000_000


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval (``low``/``high`` NaN when not computed)."""

    mean: float
    low: float
    high: float
    count: int

    def format(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def excludes(self, value: float) -> bool:
        """Whether the interval lies entirely above or below ``value``."""
        return not math.isnan(self.low) and (self.low > value or self.high < value)

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": _none(self.mean), "low": _none(self.low), "high": _none(self.high), "count": self.count}


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


def bootstrap_estimate(
    values: Sequence[Sequence[float]], resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """Pooled mean of ``values`` (per sequence, per token) and its two-stage percentile bootstrap interval.

    Args:
        values: One list per sequence of per-token values; NaN entries are ignored.
        resamples: Bootstrap resamples; 0 skips the interval.
        confidence: Coverage of the interval, e.g. 0.95.
        seed: Seed of the resampling.
    """
    arrays = [np.asarray([v for v in sequence if not math.isnan(v)], dtype=float) for sequence in values]
    arrays = [array for array in arrays if array.size]
    count = int(sum(array.size for array in arrays))
    if not count:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(np.concatenate(arrays).mean())
    if resamples < 1:
        return Estimate(mean, math.nan, math.nan, count)
    sizes = np.array([array.size for array in arrays])
    width = int(sizes.max())
    padded = np.zeros((len(arrays), width))
    for index, array in enumerate(arrays):
        padded[index, : array.size] = array
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, _CHUNK_VALUES // (len(arrays) * width))
    columns = np.arange(width)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        drawn = rng.integers(0, len(arrays), size=(stop - start, len(arrays)))  # sequences
        drawn_sizes = sizes[drawn]
        tokens = np.floor(rng.random((stop - start, len(arrays), width)) * drawn_sizes[..., None]).astype(int)
        valid = columns < drawn_sizes[..., None]
        picked = padded[drawn[..., None], tokens] * valid
        means[start:stop] = picked.sum(axis=(1, 2)) / valid.sum(axis=(1, 2))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(mean, float(low), float(high), count)


def paired_differences(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[list[float]]:
    """``a - b`` token by token (NaN where either is NaN): the input of a paired bootstrap."""
    return [[x - y for x, y in zip(row_a, row_b, strict=True)] for row_a, row_b in zip(a, b, strict=True)]
