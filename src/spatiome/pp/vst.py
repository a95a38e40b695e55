"""NaiveDE-style preprocessing for Gaussian models of counts (SpatialDE's recipe).

Two steps, as in the NaiveDE package that SpatialDE's analyses use:

1. :func:`stabilize` fits one negative binomial overdispersion ``phi`` across genes,
   ``var = mu + phi * mu**2`` by least squares over the genes' means and variances, and
   maps each count to ``log(y + 1 / (2 phi))`` (an Anscombe-like variance stabilization).
2. :func:`regress_out` removes the part of every gene explained by per-spot covariates
   (by default the log of the spot's total count) by ordinary least squares, keeping
   the intercept (limma's ``removeBatchEffect``).

Both produce dense layers: ``log(y + c)`` is not zero where ``y`` is, and regression
residuals are dense. Select genes first on large data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    check_finite,
    get_matrix,
    resolve_counts_layer,
)

#: The covariate name that is computed from the counts when it is not a column of ``obs``.
LOG_TOTAL_COUNTS = "log_total_counts"


def stabilize(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str = "stabilized",
    copy: bool = False,
) -> AnnData | None:
    """Variance-stabilize raw counts with one overdispersion fitted across genes.

    Fits ``phi`` in ``var_j = mu_j + phi * mu_j**2`` by least squares over the genes
    (``mu_j`` and ``var_j`` are the mean and the variance, with ``ddof=1``, of gene ``j``
    over spots), then writes ``log(y + 1 / (2 * phi))`` to ``adata.layers[key_added]``.
    This is NaiveDE's ``stabilize``, the first step of SpatialDE's preprocessing.

    The result is a dense float64 spots x genes layer (the offset makes zeros non-zero);
    on large data select genes first. Every gene of ``adata`` enters the fit of ``phi``:
    SpatialDE's recipe first drops genes with fewer than 3 counts in total.

    Parameters
    ----------
    adata
        Spots x genes data.
    layer
        Layer holding raw integer counts. ``None`` (default): ``adata.layers["counts"]``
        when present, else ``adata.X`` when it holds counts.
    key_added
        Name of the output layer.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. ``phi`` and the offset
        ``1 / (2 * phi)`` go to ``adata.uns["spatiome"]["stabilize"]``.

    References
    ----------
    Svensson, V., Teichmann, S. A. and Stegle, O. (2018). SpatialDE: identification of
    spatially variable genes. Nature Methods 15, 343-346.

    Examples
    --------
    >>> import anndata, numpy as np, scipy.sparse as sp
    >>> from spatiome.pp import stabilize
    >>> rng = np.random.default_rng(0)
    >>> mu = rng.lognormal(1.0, 1.0, size=40)
    >>> counts = rng.negative_binomial(5, 5 / (5 + mu), size=(300, 40))  # phi = 1/5
    >>> adata = anndata.AnnData(sp.csr_matrix(counts.astype(np.float32)))
    >>> adata.layers["counts"] = adata.X.copy()
    >>> stabilize(adata)
    >>> round(adata.uns["spatiome"]["stabilize"]["phi"], 1)
    0.2
    >>> adata.layers["stabilized"].shape
    (300, 40)
    """
    check_adata(adata)
    _check_key(key_added, "key_added")
    layer = resolve_counts_layer(adata, layer)
    counts = get_matrix(adata, layer)
    check_counts(counts, where=_where(layer))
    phi = fit_overdispersion(counts)
    offset = 1.0 / (2.0 * phi)
    dense = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    stabilized = np.log(dense.astype(np.float64) + offset)
    adata = adata.copy() if copy else adata
    adata.layers[key_added] = stabilized
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["stabilize"] = {
        "layer": "X" if layer is None else layer,
        "key_added": key_added,
        "phi": phi,
        "offset": offset,
    }
    return adata if copy else None


def regress_out(
    adata: AnnData,
    keys: str | Sequence[str] = LOG_TOTAL_COUNTS,
    *,
    layer: str | None = "stabilized",
    key_added: str = "regressed",
    counts_layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Remove per-spot covariates from every gene by least squares, keeping the intercept.

    For each gene ``y`` (a column of the layer), fits ``y ~ 1 + covariates`` by ordinary
    least squares and subtracts only the covariate part, so each gene keeps its mean level
    (NaiveDE's ``regress_out``, limma's ``removeBatchEffect``). This differs from
    :func:`scanpy.pp.regress_out`, which returns residuals around zero.

    The result is a dense float64 spots x genes layer.

    Parameters
    ----------
    adata
        Spots x genes data, typically after :func:`stabilize`.
    keys
        Numeric columns of ``adata.obs`` to regress out. The default
        ``"log_total_counts"``, when it is not an ``obs`` column, is the log of each
        spot's total count over all genes of ``counts_layer`` (SpatialDE's covariate;
        spots without counts are an error).
    layer
        Layer to correct; ``None`` uses ``adata.X``.
    key_added
        Name of the output layer.
    counts_layer
        Layer of raw counts used to compute ``"log_total_counts"``. ``None`` (default):
        ``adata.layers["counts"]`` when present, else ``adata.X`` when it holds counts.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. The keys go to
        ``adata.uns["spatiome"]["regress_out"]``.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> from spatiome.pp import regress_out
    >>> rng = np.random.default_rng(0)
    >>> depth = rng.normal(size=50)
    >>> values = 3.0 + np.outer(depth, [1.0, -2.0]) + 0.01 * rng.normal(size=(50, 2))
    >>> adata = anndata.AnnData(values)
    >>> adata.obs["depth"] = depth
    >>> regress_out(adata, "depth", layer=None)
    >>> corrected = adata.layers["regressed"]
    >>> bool(np.abs(corrected - 3.0).max() < 0.05)
    True
    """
    check_adata(adata)
    _check_key(key_added, "key_added")
    covariates = covariate_matrix(adata, keys, counts_layer=counts_layer)
    matrix = get_matrix(adata, layer)
    check_finite(matrix, where=_where(layer))
    values = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if not np.issubdtype(values.dtype, np.number):
        raise SpatiomeInputError(f"{_where(layer)} must be numeric, got dtype {values.dtype}")
    values = values.astype(np.float64)
    design = np.column_stack([np.ones(adata.n_obs), covariates])
    coefficients = np.linalg.lstsq(design, values, rcond=None)[0]
    corrected = values - covariates @ coefficients[1:]
    adata = adata.copy() if copy else adata
    adata.layers[key_added] = corrected
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["regress_out"] = {
        "keys": [keys] if isinstance(keys, str) else [str(k) for k in keys],
        "layer": "X" if layer is None else layer,
        "key_added": key_added,
    }
    return adata if copy else None


def fit_overdispersion(counts: sp.spmatrix | np.ndarray) -> float:
    """Least-squares ``phi`` in ``var = mu + phi * mu**2`` over the columns (genes).

    The model is linear in ``phi``, so the least-squares fit has the closed form
    ``sum(mu**2 * (var - mu)) / sum(mu**4)``, with per-gene means and ``ddof=1``
    variances computed without densifying a sparse matrix.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.array([[0, 2], [4, 6], [2, 10]])
    >>> round(fit_overdispersion(counts), 4)
    0.2805
    """
    n = counts.shape[0]
    if n < 2:
        raise SpatiomeInputError(f"fitting the overdispersion needs at least 2 spots, got {n}")
    if sp.issparse(counts):
        sums = np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()
        squares = np.asarray(counts.multiply(counts).sum(axis=0), dtype=np.float64).ravel()
    else:
        values = np.asarray(counts, dtype=np.float64)
        sums = values.sum(axis=0)
        squares = (values * values).sum(axis=0)
    means = sums / n
    variances = (squares - n * means * means) / (n - 1)
    denominator = float(np.sum(means**4))
    if denominator == 0:
        raise SpatiomeInputError("every gene has zero counts: nothing to stabilize")
    phi = float(np.sum(means**2 * (variances - means)) / denominator)
    if not phi > 0:
        raise SpatiomeInputError(
            f"the counts are not overdispersed (fitted phi = {phi:.3g} <= 0), so "
            "log(y + 1 / (2 phi)) is undefined: check that the layer holds raw counts, or "
            "use spatiome.pp.normalize instead"
        )
    return phi


def covariate_matrix(
    adata: AnnData, keys: str | Sequence[str], *, counts_layer: str | None = None
) -> np.ndarray:
    """The (n_obs, n_keys) float64 covariates named by ``keys`` (see :func:`regress_out`)."""
    names = [keys] if isinstance(keys, str) else list(keys)
    if not names:
        raise SpatiomeInputError("keys is empty: name at least one adata.obs column")
    columns = []
    for name in names:
        if name in adata.obs.columns:
            column = adata.obs[name]
            if not pd.api.types.is_numeric_dtype(column):
                raise SpatiomeInputError(
                    f"adata.obs[{name!r}] must be numeric to be regressed out, got {column.dtype}"
                )
            values = column.to_numpy(dtype=np.float64)
            if not np.isfinite(values).all():
                raise SpatiomeInputError(f"adata.obs[{name!r}] contains NaN or infinite values")
            columns.append(values)
        elif name == LOG_TOTAL_COUNTS:
            columns.append(log_total_counts(adata, counts_layer))
        else:
            raise SpatiomeInputError(
                f"adata.obs[{name!r}] is missing: add the covariate to adata.obs or use "
                f"{LOG_TOTAL_COUNTS!r} (computed from the counts)"
            )
    return np.column_stack(columns)


def log_total_counts(adata: AnnData, counts_layer: str | None = None) -> np.ndarray:
    """Log of each spot's total count over all genes of ``counts_layer``.

    ``None``: ``adata.layers["counts"]`` when present, else ``adata.X`` when it holds counts.
    """
    counts_layer = resolve_counts_layer(adata, counts_layer, argument="counts_layer")
    counts = get_matrix(adata, counts_layer)
    check_counts(counts, where=_where(counts_layer))
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    if (totals <= 0).any():
        raise SpatiomeInputError(
            f"{int((totals <= 0).sum())} spots have no counts in {_where(counts_layer)}, so "
            "log(total counts) is undefined: remove them first (SpatialDE keeps spots with "
            "more than 10 counts)"
        )
    return np.log(totals)


def _check_key(key: object, name: str) -> None:
    if not isinstance(key, str) or not key:
        raise SpatiomeInputError(f"{name} must be a non-empty string, got {key!r}")


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


__all__ = ["stabilize", "regress_out", "fit_overdispersion"]
