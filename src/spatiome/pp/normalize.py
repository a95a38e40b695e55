"""Normalization of raw counts into the working matrix ``adata.X`` (computed by scanpy)."""

from __future__ import annotations

import warnings

import numpy as np
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    resolve_counts_layer,
)

# Pearson residuals are dense: above this many matrix entries (about 400 MB as float64)
# the user is warned and pointed to gene selection first.
DENSE_WARN_ENTRIES = 50_000_000

_METHODS = ("log1p", "pearson")


def normalize(
    adata: AnnData,
    *,
    method: str = "log1p",
    target_sum: float | None = None,
    layer: str | None = None,
    theta: float = 100.0,
    clip: float | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Normalize raw counts into ``adata.X``, leaving the counts layer untouched.

    When the counts are read from ``adata.X`` (no counts layer, as in objects made by
    scanpy, squidpy or spatialdata-io), they are first moved to ``adata.layers["counts"]``
    so that the methods that need them still find them after ``adata.X`` is overwritten.

    ``method="log1p"`` scales each spot to ``target_sum`` total counts with
    :func:`scanpy.pp.normalize_total` and applies :func:`scanpy.pp.log1p`; the result stays
    sparse (float32). ``method="pearson"`` computes analytic Pearson residuals of a
    negative binomial model with :func:`scanpy.experimental.pp.normalize_pearson_residuals`;
    residuals are dense, so the output is a dense spots x genes float matrix (a warning is
    issued above ``DENSE_WARN_ENTRIES`` entries: select genes first on large data). Spots
    and genes without any count get residual 0.

    Parameters
    ----------
    adata
        Spots x genes data.
    method
        ``"log1p"`` (library size + log1p) or ``"pearson"`` (analytic Pearson residuals).
    target_sum
        Library size after scaling (``"log1p"`` only). ``None`` uses the median total count
        of the spots with at least one count.
    layer
        Layer holding raw integer counts. ``None`` (default): ``adata.layers["counts"]``
        when present, else ``adata.X`` when it holds counts.
    theta
        Negative binomial overdispersion for ``"pearson"`` (100 is near-Poisson).
    clip
        Clip Pearson residuals to ``[-clip, clip]``; ``None`` uses ``sqrt(n_obs)``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Parameters (including the target sum
        actually used) go to ``adata.uns["spatiome"]["normalize"]``.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, anndata as ad
    >>> from spatiome.pp import normalize
    >>> counts = sp.csr_matrix(np.array([[1, 3], [2, 2], [10, 0]]))
    >>> adata = ad.AnnData(counts.copy())
    >>> adata.layers["counts"] = counts
    >>> normalize(adata)
    >>> adata.uns["spatiome"]["normalize"]["target_sum"]
    4.0
    >>> np.expm1(adata.X.toarray()).sum(axis=1).round(4).tolist()
    [4.0, 4.0, 4.0]
    """
    check_adata(adata)
    if method not in _METHODS:
        raise SpatiomeInputError(f"method must be one of {_METHODS}, got {method!r}")
    layer = resolve_counts_layer(adata, layer)
    counts = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_counts(counts, where=where)
    adata = adata.copy() if copy else adata
    if layer is None:
        # The counts are about to be overwritten: keep them (the same matrix, no copy)
        # where every method that reads counts looks for them.
        adata.layers["counts"] = adata.X
        layer = "counts"
    if method == "log1p":
        matrix, params = _log1p(counts, target_sum)
        adata.uns["log1p"] = {"base": None}
    else:
        matrix, params = _pearson(counts, theta, clip)
        adata.uns.pop("log1p", None)
    adata.X = matrix
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["normalize"] = {
        "method": method,
        "layer": layer,
        **params,
    }
    return adata if copy else None


def _log1p(
    counts: sp.csr_matrix | np.ndarray, target_sum: float | None
) -> tuple[sp.csr_matrix | np.ndarray, dict[str, float]]:
    totals = np.asarray(counts.sum(axis=1)).ravel()
    if target_sum is None:
        positive = totals[totals > 0]
        if positive.size == 0:
            raise SpatiomeInputError("every spot has zero counts: nothing to normalize")
        target_sum = float(np.median(positive))
    elif not np.isfinite(target_sum) or target_sum <= 0:
        raise SpatiomeInputError(f"target_sum must be a positive number, got {target_sum!r}")
    # A private AnnData keeps scanpy from touching the user's object while it works.
    work = AnnData(counts.astype(np.float32, copy=True))
    sc.pp.normalize_total(work, target_sum=float(target_sum))
    sc.pp.log1p(work)
    return work.X, {"target_sum": float(target_sum)}


def _pearson(
    counts: sp.csr_matrix | np.ndarray, theta: float, clip: float | None
) -> tuple[np.ndarray, dict[str, float | str]]:
    if not theta > 0:
        raise SpatiomeInputError(f"theta must be positive, got {theta!r}")
    n_entries = counts.shape[0] * counts.shape[1]
    if n_entries > DENSE_WARN_ENTRIES:
        warnings.warn(
            f"Pearson residuals are dense: {counts.shape[0]:,} x {counts.shape[1]:,} "
            f"= {n_entries:,} values (about {n_entries * 8 / 1e9:.1f} GB); subset to highly "
            "variable genes first or use method='log1p'",
            UserWarning,
            stacklevel=3,
        )
    work = AnnData(counts.astype(np.float64, copy=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        sc.experimental.pp.normalize_pearson_residuals(work, theta=theta, clip=clip)
    residuals = np.asarray(work.X)
    # Spots or genes without any count have expectation 0 and observation 0 (0/0): they
    # deviate from nothing, so their residual is 0.
    residuals[np.isnan(residuals)] = 0.0
    params: dict[str, float | str] = {"theta": float(theta)}
    # uns must stay writable to h5ad, which has no None: record the default in words.
    params["clip"] = "sqrt(n_obs)" if clip is None else float(clip)
    return residuals, params
