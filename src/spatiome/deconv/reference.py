"""Cell-type signatures from a labelled single-cell reference."""

from __future__ import annotations

import logging
import math

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    resolve_counts_layer,
)

logger = logging.getLogger("spatiome")

_METHODS = ("mean", "nb")


def reference_signatures(
    adata_sc: AnnData,
    labels: str = "cell_type",
    *,
    layer: str | None = None,
    method: str = "mean",
    batch_key: str | None = None,
    select_genes: bool = True,
    min_expression: float = 1.25e-4,
    min_log_fold: float = 0.5,
    min_cells: int = 5,
) -> pd.DataFrame:
    """Expected counts of each gene in one cell of each type.

    ``"mean"`` averages the raw counts of the cells of each type (RCTD's and NNLS's
    reference). ``"nb"`` fits, for every gene at once, a negative binomial regression of
    the counts on cell type with each cell's library size (relative to its type's mean)
    as offset and, with ``batch_key``, an additive effect per batch on the log scale
    (cell2location's reference model); the signature is then the type's expression in an
    average batch, with batch effects removed.

    Gene selection (``select_genes``, RCTD's rule) keeps the genes that mark at least one
    type: a share of that type's counts of at least ``min_expression`` and a natural-log
    fold change of at least ``min_log_fold`` over the mean of the other types. Types with
    fewer than ``min_cells`` cells are dropped with a warning.

    Parameters
    ----------
    adata_sc
        Cells x genes raw counts (``adata_sc.X`` or ``layer``) with the cell type in
        ``adata_sc.obs[labels]``.
    labels
        Column of ``adata_sc.obs`` with the cell types.
    layer
        Layer holding raw counts. ``None`` (default): ``layers["counts"]`` when present,
        else ``X`` when it holds counts.
    method
        ``"mean"`` or ``"nb"``.
    batch_key
        Column of ``adata_sc.obs`` with the batch (donor, technology) of each cell; only
        with ``method="nb"``.
    select_genes
        Keep only the informative genes (rule above); ``False`` keeps every gene.
    min_expression, min_log_fold
        Thresholds of the gene selection.
    min_cells
        Smallest number of cells a type needs to get a signature.

    Returns
    -------
    pandas.DataFrame
        Genes x cell types, expected counts per cell. ``attrs`` records ``method``,
        ``n_cells`` (per type) and ``library_size`` (mean counts per cell of each type).

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> rng = np.random.default_rng(0)
    >>> profiles = rng.gamma(0.5, 2.0, size=(3, 60))
    >>> types = np.repeat(["A", "B", "C"], 40)
    >>> counts = rng.poisson(profiles[np.repeat(np.arange(3), 40)])
    >>> sc = anndata.AnnData(counts.astype(np.float32), obs=pd.DataFrame({"cell_type": types}))
    >>> signatures = reference_signatures(sc, "cell_type")
    >>> list(signatures.columns), signatures.shape[0] <= 60
    (['A', 'B', 'C'], True)
    """
    check_adata(adata_sc, name="adata_sc")
    counts, codes, names = _reference_inputs(adata_sc, labels, layer, min_cells)
    if method not in _METHODS:
        raise SpatiomeInputError(f"method must be one of {_METHODS}, got {method!r}")
    if batch_key is not None and method != "nb":
        raise SpatiomeInputError("batch_key needs method='nb' (the mean method has no batches)")
    library = np.asarray(counts.sum(axis=1)).ravel()
    n_types = len(names)
    indicator = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_types, len(codes))
    )
    n_cells = np.asarray(indicator.sum(axis=1)).ravel()
    mean_counts = np.asarray((indicator @ counts).todense()) / n_cells[:, None]
    share = np.asarray((indicator @ sp.diags(1.0 / np.maximum(library, 1.0)) @ counts).todense())
    share /= n_cells[:, None]
    keep = _informative(share, min_expression, min_log_fold) if select_genes else None
    if keep is None:
        keep = np.flatnonzero(mean_counts.sum(axis=0) > 0)
    if keep.size == 0:
        raise SpatiomeInputError(
            "no gene passes the selection (min_expression, min_log_fold): lower the "
            "thresholds or pass select_genes=False"
        )
    if method == "nb":
        batches = _batch_codes(adata_sc, batch_key)
        signature = _nb_signatures(counts[:, keep], codes, batches, library, n_types)
    else:
        signature = mean_counts[:, keep]
    frame = pd.DataFrame(
        signature.T, index=pd.Index(adata_sc.var_names[keep], name="gene"), columns=names
    )
    frame.attrs.update(
        method=method,
        n_cells={name: int(n) for name, n in zip(names, n_cells, strict=True)},
        library_size={
            name: float(v)
            for name, v in zip(names, library @ indicator.T.toarray() / n_cells, strict=True)
        },
    )
    return frame


def _reference_inputs(adata_sc: AnnData, labels: str, layer: str | None, min_cells: int):
    if labels not in adata_sc.obs:
        raise SpatiomeInputError(
            f"adata_sc.obs[{labels!r}] is missing: pass labels= naming the cell-type column "
            f"(columns: {list(adata_sc.obs.columns)[:10]})"
        )
    counts = get_matrix(adata_sc, resolve_counts_layer(adata_sc, layer))
    check_counts(counts, where="the reference counts")
    counts = sp.csr_matrix(counts, dtype=np.float64)
    series = adata_sc.obs[labels]
    if series.isna().any():
        raise SpatiomeInputError(
            f"adata_sc.obs[{labels!r}] has {int(series.isna().sum())} missing labels: "
            "drop those cells or label them"
        )
    values = series.astype(str).to_numpy()
    names, codes = np.unique(values, return_inverse=True)
    sizes = np.bincount(codes, minlength=len(names))
    small = sizes < min_cells
    if small.any():
        logger.warning(
            "reference types with fewer than %d cells dropped: %s", min_cells, names[small].tolist()
        )
        kept = ~small[codes]
        counts, codes = counts[kept], codes[kept]
        names, codes = np.unique(names[codes], return_inverse=True)
    if len(names) < 2:
        raise SpatiomeInputError(
            f"the reference needs at least 2 cell types with >= {min_cells} cells each, "
            f"found {len(names)}"
        )
    return counts, codes.astype(np.int64), [str(n) for n in names]


def _informative(share: np.ndarray, min_expression: float, min_log_fold: float) -> np.ndarray:
    """Genes that mark at least one type (RCTD's differential-expression rule)."""
    n_types = share.shape[0]
    others = (share.sum(axis=0, keepdims=True) - share) / (n_types - 1)
    eps = 1e-9
    fold = np.log(share + eps) - np.log(others + eps)
    return np.flatnonzero(((share >= min_expression) & (fold >= min_log_fold)).any(axis=0))


def _batch_codes(adata_sc: AnnData, batch_key: str | None) -> np.ndarray:
    if batch_key is None:
        return np.zeros(adata_sc.n_obs, dtype=np.int64)
    if batch_key not in adata_sc.obs:
        raise SpatiomeInputError(f"adata_sc.obs[{batch_key!r}] (batch_key) is missing")
    return np.unique(adata_sc.obs[batch_key].astype(str).to_numpy(), return_inverse=True)[1]


def _nb_signatures(counts, codes, batches, library, n_types) -> np.ndarray:
    """Negative binomial regression on type (+ batch), all genes at once (numba)."""
    n_batches = int(batches.max()) + 1
    type_library = np.bincount(codes, weights=library, minlength=n_types) / np.bincount(
        codes, minlength=n_types
    )
    offset = np.log(np.maximum(library, 1.0) / type_library[codes])
    csc = sp.csc_matrix(counts)
    log_type, log_batch = _nb_fit(
        csc.indptr,
        csc.indices,
        csc.data,
        csc.shape[1],
        codes,
        batches,
        offset,
        n_types,
        n_batches,
    )
    # average batch: weight the batch effects by their share of the cells
    share = np.bincount(batches, minlength=n_batches) / len(batches)
    return np.exp(log_type + (share @ log_batch)[None, :])


@numba.njit(cache=True, parallel=True)
def _nb_fit(indptr, indices, data, n_genes, codes, batches, offset, n_types, n_batches):
    n_cells = codes.shape[0]
    log_type = np.zeros((n_types, n_genes))
    log_batch = np.zeros((n_batches, n_genes))
    for g in numba.prange(n_genes):
        x = np.zeros(n_cells)
        for k in range(indptr[g], indptr[g + 1]):
            x[indices[k]] = data[k]
        a = np.zeros(n_types)
        b = np.zeros(n_batches)
        # start: per-type log mean
        sums = np.zeros(n_types)
        expo = np.zeros(n_types)
        for c in range(n_cells):
            sums[codes[c]] += x[c]
            expo[codes[c]] += math.exp(offset[c])
        for t in range(n_types):
            a[t] = math.log((sums[t] + 0.01) / expo[t])
        phi = 0.0
        for _outer in range(30):
            # dispersion by moments of the current fit
            num = 0.0
            den = 0.0
            for c in range(n_cells):
                mu = math.exp(a[codes[c]] + b[batches[c]] + offset[c])
                num += (x[c] - mu) ** 2 - mu
                den += mu * mu
            phi = max(0.0, num / den) if den > 0 else 0.0
            change = 0.0
            for _block in range(2):
                score_t = np.zeros(n_types)
                info_t = np.zeros(n_types)
                score_b = np.zeros(n_batches)
                info_b = np.zeros(n_batches)
                for c in range(n_cells):
                    mu = math.exp(a[codes[c]] + b[batches[c]] + offset[c])
                    denom = 1.0 + phi * mu
                    s = (x[c] - mu) / denom
                    i = mu / denom
                    score_t[codes[c]] += s
                    info_t[codes[c]] += i
                    score_b[batches[c]] += s
                    info_b[batches[c]] += i
                if _block == 0:
                    for t in range(n_types):
                        step = score_t[t] / max(info_t[t], 1e-12)
                        step = max(-5.0, min(5.0, step))
                        a[t] = max(a[t] + step, -30.0)
                        change = max(change, abs(step))
                elif n_batches > 1:
                    for k in range(1, n_batches):
                        step = score_b[k] / max(info_b[k], 1e-12)
                        step = max(-5.0, min(5.0, step))
                        b[k] += step
                        change = max(change, abs(step))
            if change < 1e-6:
                break
        for t in range(n_types):
            log_type[t, g] = a[t]
        for k in range(n_batches):
            log_batch[k, g] = b[k]
    return log_type, log_batch
