"""Highly variable genes by the Seurat v3 rule on raw counts, computed by scanpy.

One gene selection serves every method that picks genes on the counts
(:func:`spatiome.domains.cluster` and the methods built on its features,
:func:`spatiome.domains.gnn`, :func:`spatiome.integrate.multimodal`) and
:func:`spatiome.pp.reduce` when the counts are kept in a layer:
:func:`scanpy.pp.highly_variable_genes` with ``flavor="seurat_v3"``, whose loess fit of
log10 variance on log10 mean comes from scikit-misc. Each gene's counts are standardized
by the variance the trend expects at its mean, clipped at ``sqrt(n_spots)`` standard
deviations, and genes are ranked by the variance of the standardized values (Stuart et al.
2019). With several samples, genes are ranked in each sample and ordered by their median
rank among the samples where they are in the top ``n_top_genes``, then by the number of
such samples (Seurat's ``SelectIntegrationFeatures``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import SpatiomeInputError

# scikit-misc's loess crashes the interpreter (instead of raising) on fewer points than this.
_MIN_VARYING_GENES = 4


def seurat_v3_genes(counts, n_top_genes: int, *, batch=None) -> np.ndarray:
    """Indices of the ``n_top_genes`` most variable genes of raw ``counts``, best first.

    The selection and order are those of :func:`scanpy.pp.highly_variable_genes` with
    ``flavor="seurat_v3"`` (see :func:`seurat_v3_table`).

    Parameters
    ----------
    counts
        Spots x genes raw counts (sparse or dense).
    n_top_genes
        Number of genes to select (at most the number of genes).
    batch
        Optional sample label per spot: genes are ranked within each sample and the ranks
        combined as Seurat's ``SelectIntegrationFeatures`` does (scanpy's ``batch_key``).

    Returns
    -------
    numpy.ndarray
        ``n_top_genes`` column indices, ordered by scanpy's ``highly_variable_rank``
        (then by ``highly_variable_nbatches``, highest first).

    Raises
    ------
    SpatiomeInputError
        When too few genes vary (in some sample) to fit the mean-variance trend.

    References
    ----------
    Stuart, Butler, Hoffman et al. (2019). Comprehensive integration of single-cell data.
    Cell 177, 1888-1902.

    Examples
    --------
    >>> import spatiome as sm
    >>> from spatiome.pp._hvg import seurat_v3_genes
    >>> tissue = sm.datasets.simulate_tissue(500, 100, random_state=0)
    >>> seurat_v3_genes(tissue.layers["counts"], 10).shape
    (10,)
    """
    table = seurat_v3_table(counts, n_top_genes, batch=batch)
    selected = np.flatnonzero(table["highly_variable"].to_numpy())
    rank = table["highly_variable_rank"].to_numpy()[selected]
    n_batches = (
        table["highly_variable_nbatches"].to_numpy()[selected]
        if "highly_variable_nbatches" in table
        else np.zeros(selected.size)
    )
    return selected[np.lexsort((-n_batches, rank))]


def seurat_v3_table(counts, n_top_genes: int, *, batch=None) -> pd.DataFrame:
    """scanpy's Seurat v3 table for raw ``counts``, one row per gene in column order.

    :func:`scanpy.pp.highly_variable_genes` (``flavor="seurat_v3"``, ``inplace=False``) is
    called on a throwaway AnnData that shares the matrix: nothing is copied from or written
    to the caller's object. Columns: ``means``, ``variances``, ``highly_variable_rank``,
    ``variances_norm``, ``highly_variable`` (and ``highly_variable_nbatches`` with
    ``batch``), indexed by the column positions as strings.

    Parameters
    ----------
    counts, n_top_genes, batch
        As in :func:`seurat_v3_genes`.

    Returns
    -------
    pandas.DataFrame
        scanpy's table.

    Examples
    --------
    >>> import spatiome as sm
    >>> from spatiome.pp._hvg import seurat_v3_table
    >>> tissue = sm.datasets.simulate_tissue(500, 100, random_state=0)
    >>> int(seurat_v3_table(tissue.layers["counts"], 10)["highly_variable"].sum())
    10
    """
    light = AnnData(X=counts)
    batch_key = None
    if batch is not None:
        batch_key = "batch"
        light.obs[batch_key] = pd.Categorical(np.asarray(batch).astype(str))
    _check_trend_fits(light.X, light.obs[batch_key] if batch_key else None)
    try:
        return sc.pp.highly_variable_genes(
            light,
            flavor="seurat_v3",
            n_top_genes=int(n_top_genes),
            batch_key=batch_key,
            inplace=False,
        )
    except ValueError as error:
        reason = error.args[0] if error.args else error
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        raise SpatiomeInputError(
            f"the Seurat v3 mean-variance trend (loess) could not be fitted ({reason}): the "
            "genes' means are too few or too alike; pass n_top_genes=None to keep every gene"
        ) from error


def _check_trend_fits(counts, batch: pd.Series | None) -> None:
    """Raise unless every sample has enough varying genes for scikit-misc's loess."""
    if batch is None:
        parts = [("", counts)]
    else:
        parts = [
            (f" in sample {name!r}", counts[(batch == name).to_numpy()]) for name in batch.unique()
        ]
    for where, part in parts:
        n_varying = _count_varying_genes(part)
        if n_varying < _MIN_VARYING_GENES:
            raise SpatiomeInputError(
                f"Seurat v3 gene selection needs at least {_MIN_VARYING_GENES} genes that vary "
                f"across spots{where}, found {n_varying}: pass n_top_genes=None to keep every "
                "gene"
            )


def _count_varying_genes(counts) -> int:
    """Number of genes not constant across the spots (a lower bound once it is enough)."""
    if counts.shape[0] == 0:
        return 0
    if not sp.issparse(counts):
        return int(np.count_nonzero(np.ptp(np.asarray(counts), axis=0) > 0))
    if counts.format != "csr":
        counts = sp.csr_matrix(counts)
    # A gene with zeros and non-zeros varies: a cheap count that settles almost every case.
    nonzero = np.bincount(counts.indices[counts.data != 0], minlength=counts.shape[1])
    n_mixed = int(np.count_nonzero((nonzero > 0) & (nonzero < counts.shape[0])))
    if n_mixed >= _MIN_VARYING_GENES:
        return n_mixed
    spread = counts.max(axis=0).toarray().ravel() - counts.min(axis=0).toarray().ravel()
    return int(np.count_nonzero(spread > 0))
