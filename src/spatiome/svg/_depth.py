"""Spatially patterned sequencing depth: the confounder that inflates SVG type-I errors.

Benchmarks on simulated tissues (``benchmarks/svg_accuracy.py``) show that when library
size varies across the tissue, tests on raw counts (SPARK-X) call almost every gene, and
tests on log-normalized values (Moran's I, Geary's C) exceed their nominal type-I error.
The methods warn at run time when the data show such a depth pattern; this module holds
the shared pieces.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._core.sums import row_sums

#: Warn when the depth pattern is this significant.
DEPTH_WARNING_PVALUE = 1e-3


def spot_depth(adata: AnnData) -> np.ndarray | None:
    """Total counts per spot: ``obs['total_counts']`` or the row sums of the counts layer.

    Returns None when neither is available (nothing to check).

    Examples
    --------
    >>> import anndata, numpy as np
    >>> adata = anndata.AnnData(np.ones((3, 2)))
    >>> spot_depth(adata) is None
    True
    >>> adata.layers["counts"] = np.array([[1, 2], [0, 1], [3, 3]])
    >>> spot_depth(adata).tolist()
    [3.0, 1.0, 6.0]
    """
    if "total_counts" in adata.obs:
        values = np.asarray(adata.obs["total_counts"], dtype=np.float64)
    elif "counts" in adata.layers:
        values = row_sums(adata.layers["counts"])
    else:
        return None
    return values if np.isfinite(values).all() else None


def has_negative_values(matrix: sp.spmatrix | np.ndarray) -> bool:
    """True for residual-like inputs (Pearson residuals, regressed values), which carry
    no depth effect to warn about; log-normalized counts are never negative."""
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    return bool(values.size) and bool(np.nanmin(values) < 0)
