"""Highly variable genes by the Seurat v3 variance-stabilizing rule, without scikit-misc.

:func:`scanpy.pp.highly_variable_genes` with ``flavor="seurat_v3"`` needs the optional
``scikit-misc`` package for its loess fit. The rule is short, so it is written out here on
the sparse counts: the fit of log10 variance on log10 mean is a local quadratic regression
with tricube weights over the nearest 30% of genes (loess, ``span=0.3``, ``degree=2``),
evaluated on a grid of means and interpolated, as R's loess does by default.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Fraction of the genes in each local fit, as Seurat's and scanpy's loess(span=0.3).
_SPAN = 0.3
# Points at which the local fits are evaluated before linear interpolation.
_GRID_POINTS = 200


def _loess(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fitted values of a degree-2 loess of ``y`` on ``x`` (span 0.3), at ``x``."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    n = xs.size
    width = min(n, max(3, int(np.ceil(_SPAN * n))))
    grid = np.linspace(xs[0], xs[-1], min(_GRID_POINTS, n))
    fitted = np.empty(grid.size)
    for index, centre in enumerate(grid):
        # The nearest `width` points in one dimension form a contiguous window.
        stop = int(np.searchsorted(xs, centre))
        start = max(0, min(stop - width // 2, n - width))
        while start > 0 and centre - xs[start - 1] < xs[start + width - 1] - centre:
            start -= 1
        while start + width < n and xs[start + width] - centre < centre - xs[start]:
            start += 1
        window = xs[start : start + width] - centre
        distance = np.abs(window)
        reach = distance.max()
        weights = (1.0 - (distance / reach) ** 3) ** 3 if reach > 0 else np.ones(width)
        root = np.sqrt(weights)
        design = np.stack([root, root * window, root * window**2], axis=1)
        coef = np.linalg.lstsq(design, root * ys[start : start + width], rcond=None)[0]
        fitted[index] = coef[0]
    return np.interp(x, grid, fitted)


def seurat_v3_genes(counts: sp.csr_matrix, n_top_genes: int) -> np.ndarray:
    """Indices (sorted) of the ``n_top_genes`` most variable genes of raw ``counts``.

    Each gene's counts are standardized by the variance expected from its mean (the loess
    trend), clipped at ``sqrt(n_spots)`` standard deviations, and genes are ranked by the
    variance of the standardized values, as in Stuart et al. (2019).
    """
    counts = sp.csr_matrix(counts)
    n_obs = counts.shape[0]
    mean = np.asarray(counts.mean(axis=0), dtype=np.float64).ravel()
    square = np.asarray(counts.multiply(counts).sum(axis=0), dtype=np.float64).ravel()
    variance = (square - n_obs * mean**2) / max(n_obs - 1, 1)
    varying = variance > 0
    trend = np.zeros_like(mean)
    if np.count_nonzero(varying) >= 3:
        trend[varying] = _loess(np.log10(mean[varying]), np.log10(variance[varying]))
    expected_sd = np.sqrt(10.0**trend)
    # Clip each count at mean + sqrt(n) expected standard deviations, then the variance of
    # the standardized values from the clipped sums (zeros are never clipped).
    by_gene = sp.csc_matrix(counts, dtype=np.float64)
    clip = mean + expected_sd * np.sqrt(n_obs)
    column = np.repeat(np.arange(by_gene.shape[1]), np.diff(by_gene.indptr))
    clipped = np.minimum(by_gene.data, clip[column])
    total = np.bincount(column, weights=clipped, minlength=by_gene.shape[1])
    total_sq = np.bincount(column, weights=clipped**2, minlength=by_gene.shape[1])
    spread = n_obs * mean**2 + total_sq - 2.0 * mean * total
    score = np.where(varying, spread / (max(n_obs - 1, 1) * expected_sd**2), -np.inf)
    top = np.argsort(-score, kind="stable")[: int(n_top_genes)]
    return np.sort(top)
