"""Multiple-testing and p-value helpers shared by the per-gene methods."""

from __future__ import annotations

import numpy as np


def bh_adjust(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN kept as NaN).

    Examples
    --------
    >>> bh_adjust(np.array([0.01, 0.04, 0.03])).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    return _step_up(pvalues, by=False)


def by_adjust(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Yekutieli adjusted p-values (valid under any dependence)."""
    return _step_up(pvalues, by=True)


def _step_up(pvalues: np.ndarray, *, by: bool) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    m = int(finite.sum())
    if m == 0:
        return out
    values = p[finite]
    order = np.argsort(values, kind="mergesort")
    ranks = np.arange(1, m + 1, dtype=np.float64)
    factor = np.sum(1.0 / ranks) if by else 1.0
    adjusted = values[order] * m * factor / ranks
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    result = np.empty(m)
    result[order] = np.clip(adjusted, 0.0, 1.0)
    out[finite] = result
    return out
