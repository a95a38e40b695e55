"""Global spatial autocorrelation of every gene: Moran's I and Geary's C.

For a gene x with mean m, z = x - m, a spatial weight matrix W with total weight S0,
row sums r and column sums c:

    I = n / S0 * z'Wz / z'z
    C = (n - 1) / (2 S0) * sum_ij w_ij (x_i - x_j)^2 / z'z

Nothing of size spots x genes is ever made dense. For a sparse matrix, every per-gene
quantity is assembled from the gene's non-zero entries only:

    z'Wz = x'Wx - m (r'x + c'x) + m^2 S0
    sum_ij w_ij (x_i - x_j)^2 = sum_i (r_i + c_i) x_i^2 - 2 x'Wx

where x'Wx = sum_i x_i (w_ii x_i + sum_{j>i} u_ij x_j), U the upper triangle of W + W^T, is
accumulated by a numba kernel that visits, for each non-zero x_i, the later neighbours of
spot i. That is the work of the sparse product W @ X without building it, each undirected
edge counted once: O(nnz(X) * mean degree / 2) time and O(n_spots) extra memory per worker.
Dense matrices are centred and multiplied by W in gene chunks. Genes are processed in chunks through
:func:`spatiome._core.parallel.map_gene_chunks`.

Analytic moments follow Cliff and Ord (1981) with S0, S1 and S2 of W, under normality and
under randomization (with the per-gene kurtosis b2).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats

from .._core.near_empty import warn_near_empty
from .._core.parallel import default_chunk_size, map_gene_chunks, resolve_n_jobs
from .._core.random import check_random_state
from .._core.stats import bh_adjust
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_finite,
    get_matrix,
    resolve_genes,
)
from ._depth import DEPTH_WARNING_PVALUE, has_negative_values, spot_depth
from ._result import add_qvalues, pvalue_columns, write_result

DEFAULT_CONNECTIVITY_KEY = "spatial_connectivities"
TRANSFORMATIONS = ("row", "none")
#: Where squidpy's ``sq.gr.spatial_autocorr`` keeps its table, and the statistic's column.
SQUIDPY_KEYS = {"moran": ("moranI", "I"), "geary": ("gearyC", "C")}
#: Permutations generated per random block; blocks have their own seeds, so results do
#: not depend on how genes are chunked or on the number of workers.
PERMUTATION_BLOCK = 64

# Per-gene sums returned by the kernels, one row per gene.
_MEAN, _M2, _M4, _ZWZ, _GEARY, _RANGE = range(6)
# Per-gene permutation summaries: permutations at least as extreme as observed (the
# p-value's tail), permutations >= observed, sum and sum of squares of (null - observed).
_EXTREME, _AT_LEAST, _SHIFT, _SHIFT2 = range(4)


@dataclass(frozen=True)
class _Weights:
    """The spatial weights and the moments of W used by both statistics."""

    matrix: sp.csr_matrix
    upper: sp.csr_matrix  # strict upper triangle of W + W^T: each undirected edge once
    diagonal: np.ndarray
    s0: float
    s1: float
    s2: float
    row_sums: np.ndarray
    col_sums: np.ndarray
    source: str


def moran(
    adata: AnnData,
    *,
    layer: str | None = None,
    genes: str | list[str] | None = None,
    connectivity_key: str = DEFAULT_CONNECTIVITY_KEY,
    transformation: str = "row",
    n_permutations: int = 0,
    two_tailed: bool = False,
    n_jobs: int = 1,
    random_state: int | np.random.Generator | None = 0,
    chunk_size: int | None = None,
    client: Any | None = None,
    check_depth: bool = True,
    copy: bool = False,
) -> pd.DataFrame:
    """Moran's I of every gene on the spatial neighbour graph.

    I = n / S0 * sum_ij w_ij z_i z_j / sum_i z_i^2 with z the gene's centred expression.
    Values near 1 mean neighbouring spots have similar expression (a spatial pattern),
    values near E[I] = -1/(n-1) mean no spatial structure.

    Parameters
    ----------
    adata
        Spots x genes, typically log-normalized (sparse CSR/CSC or dense).
    layer
        Use ``adata.layers[layer]`` instead of ``adata.X``.
    genes
        Gene names to test (default: all).
    connectivity_key
        Spatial weights in ``adata.obsp``. When the default key
        ``"spatial_connectivities"`` is missing, the default graph is built first (the
        Visium hex grid when ``obs`` has ``array_row``/``array_col``, else 6 nearest
        neighbours), stored in ``adata.obsp`` unless ``copy=True``, recorded as
        ``graph_built`` in the parameters, and announced with a warning. A missing custom
        key is an error.
    transformation
        ``"row"``: row-normalize the weights (each spot's weights sum to 1; squidpy's
        default ``transformation=True``); ``"none"``: use them as stored.
    n_permutations
        When > 0, also a permutation p-value ``pval_perm`` = (k + 1) / (n_permutations + 1),
        k = permutations (of the spots' values, shared across genes) with a statistic at
        least as extreme as the observed one.
    two_tailed
        Two-sided p-values (any autocorrelation) instead of one-sided in the direction of
        positive autocorrelation (I above its expectation).
    n_jobs
        Worker threads over gene chunks (-1: all cores).
    random_state
        Seed or generator for the permutations.
    chunk_size
        Genes per chunk (default: bounded memory, and balanced over ``n_jobs``).
    client
        Optional ``distributed.Client`` to run the gene chunks on a Dask cluster.
    check_depth
        When the values are non-negative (log-normalized counts) and the spots' total
        counts are known (``obs['total_counts']`` or ``layers['counts']``), test the log
        total counts on the same graph and warn when they are spatially autocorrelated
        (p < 1e-3): see Notes.
    copy
        When True, ``adata`` is left untouched and only the table is returned.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene:

        - ``statistic``: Moran's I;
        - ``expected``: E[I] = -1/(n-1);
        - ``variance_norm``, ``variance_rand``: variance of I under normality and under
          randomization (uses the gene's kurtosis);
        - ``zscore``: (I - E[I]) / sqrt(variance_norm);
        - ``pval``: normal p-value from ``zscore``. One-sided in the direction of positive
          autocorrelation (``norm.sf(zscore)``), so genes with negative autocorrelation get
          large p-values; squidpy's ``pval_norm`` instead takes the tail of the observed
          sign and equals this one whenever zscore > 0. Floored at the smallest positive
          normal double (``PVAL_FLOOR``, about 2.2e-308) so it is never exactly 0;
        - ``pval_rand``: the same under the randomization variance;
        - ``pval_perm``: permutation p-value, only when ``n_permutations > 0``;
        - ``log10_pval``: log10 of ``pval`` computed from the normal log survival function,
          finite even when ``pval`` hits the floor;
        - ``qval``: Benjamini-Hochberg adjusted ``pval``.

        Constant genes get NaN statistics and p-values. Unless ``copy=True`` the columns
        are also written to ``adata.var[f"moran_{column}"]`` and the parameters to
        ``adata.uns["spatiome"]["moran"]``, and ``adata.uns["moranI"]`` gets the table
        squidpy's ``sq.gr.spatial_autocorr`` writes (this module's ``squidpy_table``):
        ``I``, ``pval_norm``, ``var_norm``, with permutations
        ``pval_z_sim``, ``pval_sim``, ``var_sim``, and ``pval_*_fdr_bh``, sorted by I
        descending. Its ``var_sim`` comes
        from permuting the spots' values, so it estimates ``variance_rand``; squidpy
        shuffles the rows of W only and gets a different null.

    Notes
    -----
    Calibration (``benchmarks/svg_accuracy.py``, simulated tissues without spatial genes,
    log-normalized input): the type-I error at 0.05 is 0.048 when sequencing depth is
    spatially uniform, but 0.077 when library size varies e-fold across the tissue, because
    log1p of depth-normalized counts keeps part of the depth signal. Inputs without that
    signal fix it: Pearson residuals (``spatiome.pp.normalize(adata,
    method="pearson")``) gave 0.057 and log-normalized values with log total counts
    regressed out 0.052 on the same tissues. The function warns when ``check_depth``
    finds a depth pattern.

    References
    ----------
    Moran, P. A. P. (1950). Notes on continuous stochastic phenomena. Biometrika 37, 17-23.
    Cliff, A. D. and Ord, J. K. (1981). Spatial Processes: Models and Applications. Pion.

    Examples
    --------
    >>> import anndata, numpy as np, scipy.sparse as sp
    >>> import spatiome as sm
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.random((400, 2))
    >>> pattern = np.exp(-((xy - 0.5) ** 2).sum(1) / 0.05)
    >>> counts = rng.poisson(np.outer(1 + 5 * pattern, [1.0, 0.0]) + 1.0)
    >>> adata = anndata.AnnData(sp.csr_matrix(np.log1p(counts)), obsm={"spatial": xy})
    >>> adata.var_names = ["spatial_gene", "random_gene"]
    >>> sm.graph.spatial_neighbors(adata, n_neighbors=6)
    >>> table = sm.svg.moran(adata)
    >>> bool(table.loc["spatial_gene", "qval"] < 1e-10)
    True
    >>> bool(table.loc["random_gene", "pval"] > 0.01)
    True
    >>> "moran_statistic" in adata.var
    True
    >>> adata.uns["moranI"].columns.tolist()
    ['I', 'pval_norm', 'var_norm', 'pval_norm_fdr_bh']
    """
    return _autocorrelation(
        "moran",
        adata,
        layer=layer,
        genes=genes,
        connectivity_key=connectivity_key,
        transformation=transformation,
        n_permutations=n_permutations,
        two_tailed=two_tailed,
        n_jobs=n_jobs,
        random_state=random_state,
        chunk_size=chunk_size,
        client=client,
        check_depth=check_depth,
        copy=copy,
    )


def geary(
    adata: AnnData,
    *,
    layer: str | None = None,
    genes: str | list[str] | None = None,
    connectivity_key: str = DEFAULT_CONNECTIVITY_KEY,
    transformation: str = "row",
    n_permutations: int = 0,
    two_tailed: bool = False,
    n_jobs: int = 1,
    random_state: int | np.random.Generator | None = 0,
    chunk_size: int | None = None,
    client: Any | None = None,
    check_depth: bool = True,
    copy: bool = False,
) -> pd.DataFrame:
    """Geary's C of every gene on the spatial neighbour graph.

    C = (n - 1) / (2 S0) * sum_ij w_ij (x_i - x_j)^2 / sum_i z_i^2. Values below its
    expectation E[C] = 1 mean neighbouring spots are similar (positive autocorrelation);
    C is more sensitive than Moran's I to differences between individual neighbours.

    Parameters
    ----------
    adata, layer, genes, connectivity_key, transformation, n_permutations
        As for :func:`moran`.
    two_tailed, n_jobs, random_state, chunk_size, client, check_depth, copy
        As for :func:`moran`; one-sided p-values are in the direction of positive
        autocorrelation (C below 1).

    Returns
    -------
    pandas.DataFrame
        The same columns as :func:`moran`, with ``statistic`` = C and ``expected`` = 1.
        ``zscore`` = (C - 1) / sqrt(variance_norm), so positive autocorrelation gives
        negative z-scores; the one-sided ``pval`` is ``norm.cdf(zscore)`` (the tail of
        positive autocorrelation) and ``log10_pval`` its logarithm. Written to
        ``adata.var[f"geary_{column}"]`` and ``adata.uns["spatiome"]["geary"]`` unless
        ``copy=True``, and in squidpy's layout to ``adata.uns["gearyC"]`` (column ``C``,
        sorted ascending; see :func:`moran`).

    Notes
    -----
    Like Moran's I, Geary's C on log-normalized values is sensitive to a spatial depth
    pattern: type-I error 0.049 at 0.05 with uniform depth, 0.072 with an e-fold depth
    gradient (``benchmarks/svg_accuracy.py``); see :func:`moran` for the inputs that fix it.

    References
    ----------
    Geary, R. C. (1954). The contiguity ratio and statistical mapping. The Incorporated
    Statistician 5, 115-145.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> import spatiome as sm
    >>> rng = np.random.default_rng(1)
    >>> xy = rng.random((300, 2))
    >>> adata = anndata.AnnData(np.column_stack([xy[:, 0], rng.random(300)]),
    ...                         obsm={"spatial": xy})
    >>> sm.graph.spatial_neighbors(adata, n_neighbors=6)
    >>> table = sm.svg.geary(adata, n_permutations=99, random_state=0, copy=True)
    >>> bool(table["statistic"].iloc[0] < 0.2), float(table["pval_perm"].iloc[0])
    (True, 0.01)
    """
    return _autocorrelation(
        "geary",
        adata,
        layer=layer,
        genes=genes,
        connectivity_key=connectivity_key,
        transformation=transformation,
        n_permutations=n_permutations,
        two_tailed=two_tailed,
        n_jobs=n_jobs,
        random_state=random_state,
        chunk_size=chunk_size,
        client=client,
        check_depth=check_depth,
        copy=copy,
    )


def _autocorrelation(
    method: str,
    adata: AnnData,
    *,
    layer: str | None,
    genes: Any,
    connectivity_key: str,
    transformation: str,
    n_permutations: int,
    two_tailed: bool,
    n_jobs: int,
    random_state: Any,
    chunk_size: int | None,
    client: Any | None,
    check_depth: bool,
    copy: bool,
) -> pd.DataFrame:
    check_adata(adata)
    _check_options(adata, transformation, n_permutations, two_tailed, chunk_size)
    warn_near_empty(adata, layer=layer, caller=f"svg.{method}", stacklevel=4)
    workers = resolve_n_jobs(n_jobs)
    positions = resolve_genes(adata, genes)
    matrix = _gene_matrix(adata, layer, positions)
    weights, built = _weights(adata, connectivity_key, transformation, store=not copy)

    n_genes = matrix.shape[1]
    size = chunk_size or default_chunk_size(adata.n_obs, n_genes, workers)
    sums = np.vstack(
        map_gene_chunks(
            lambda start, stop: _chunk_sums(matrix, weights, start, stop),
            n_genes,
            chunk_size=size,
            n_jobs=workers,
            client=client,
        )
    )
    table = _table(method, sums, weights, adata.n_obs, two_tailed)
    permuted = None
    if n_permutations:
        seeds = _block_seeds(random_state, n_permutations)
        permuted = np.concatenate(
            map_gene_chunks(
                lambda start, stop: _chunk_permutation_summaries(
                    method, matrix, weights, sums, start, stop, seeds, n_permutations, two_tailed
                ),
                n_genes,
                chunk_size=size,
                n_jobs=workers,
                client=client,
            )
        )
        permuted[~np.isfinite(table["statistic"].to_numpy())] = np.nan
        pval_perm = (permuted[:, _EXTREME] + 1.0) / (n_permutations + 1.0)
        table.insert(table.columns.get_loc("log10_pval"), "pval_perm", pval_perm)
    add_qvalues(table)
    table.index = adata.var_names[positions]
    if check_depth:
        _warn_if_depth_patterned(method, adata, matrix, weights)

    if not copy:
        params = {
            "layer": layer,
            "connectivity_key": connectivity_key,
            "graph_built": built,
            "transformation": transformation,
            "n_permutations": int(n_permutations),
            "two_tailed": bool(two_tailed),
            "random_state": random_state if isinstance(random_state, int | None) else "Generator",
            "n_spots": int(adata.n_obs),
            "weights_s0": weights.s0,
        }
        write_result(adata, method, table, params, positions=positions)
        uns_key, _ = SQUIDPY_KEYS[method]
        variance_norm = _variance_norm(method, weights, adata.n_obs)
        adata.uns[uns_key] = squidpy_table(
            method, table, variance_norm, permuted, n_permutations, two_tailed
        )
    return table


def squidpy_table(
    method: str,
    table: pd.DataFrame,
    variance_norm: float,
    permuted: np.ndarray | None = None,
    n_permutations: int = 0,
    two_tailed: bool = False,
) -> pd.DataFrame:
    """The result in the layout of squidpy's ``sq.gr.spatial_autocorr``.

    squidpy stores ``uns["moranI"]``/``uns["gearyC"]``, a table indexed by gene with the
    columns ``I`` (or ``C``), ``pval_norm``, ``var_norm``, after permutations
    ``pval_z_sim``, ``pval_sim``, ``var_sim``, then the Benjamini-Hochberg adjusted
    ``{column}_fdr_bh`` of every p-value column in that order, sorted by the statistic
    (I descending, C ascending, NaN last). Its p-values are one-sided in the direction of
    the observed deviation and doubled when ``two_tailed``; ``pval_z_sim`` and
    ``pval_sim`` are always one-sided in that direction, as in squidpy.

    Parameters
    ----------
    method
        ``"moran"`` or ``"geary"``.
    table
        The table of :func:`moran` or :func:`geary`, indexed by gene.
    variance_norm
        Variance of the statistic under normality, the same for every gene.
    permuted
        Per-gene permutation summaries (columns: count at least as extreme, count >= the
        observed statistic, sum and sum of squares of the null minus the observed value),
        or None without permutations.
    n_permutations
        The number of permutations behind ``permuted``.
    two_tailed
        Whether the run asked for two-sided p-values.

    Returns
    -------
    pandas.DataFrame
        squidpy's table. Constant genes get NaN throughout (squidpy leaves their
        p-values undefined).

    Examples
    --------
    >>> table = pd.DataFrame({"statistic": [0.1, 0.6], "zscore": [1.0, 6.0]}, index=["a", "b"])
    >>> out = squidpy_table("moran", table, variance_norm=0.01)
    >>> list(out.columns), list(out.index)
    (['I', 'pval_norm', 'var_norm', 'pval_norm_fdr_bh'], ['b', 'a'])
    """
    _, statistic = SQUIDPY_KEYS[method]
    zscore = table["zscore"].to_numpy(dtype=np.float64)
    pval_norm = stats.norm.sf(np.abs(zscore)) * (2.0 if two_tailed else 1.0)
    columns = {
        statistic: table["statistic"].to_numpy(dtype=np.float64),
        "pval_norm": pval_norm,
        "var_norm": np.where(np.isnan(zscore), np.nan, variance_norm),
    }
    if permuted is not None:
        columns.update(_simulation_columns(permuted, n_permutations))
    frame = pd.DataFrame(columns, index=table.index)
    for column in [c for c in frame.columns if "pval" in c]:
        frame[f"{column}_fdr_bh"] = bh_adjust(frame[column].to_numpy())
    return frame.sort_values(statistic, ascending=method == "geary")


def _simulation_columns(permuted: np.ndarray, n_permutations: int) -> dict[str, np.ndarray]:
    """squidpy's ``pval_z_sim``, ``pval_sim`` and ``var_sim`` from permutation summaries."""
    mean_shift = permuted[:, _SHIFT] / n_permutations
    var_sim = np.maximum(permuted[:, _SHIFT2] / n_permutations - mean_shift**2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_sim = -mean_shift / np.sqrt(var_sim)
    at_least = permuted[:, _AT_LEAST]
    larger = np.minimum(at_least, n_permutations - at_least)
    return {
        "pval_z_sim": stats.norm.sf(np.abs(z_sim)),
        "pval_sim": (larger + 1.0) / (n_permutations + 1.0),
        "var_sim": var_sim,
    }


def _warn_if_depth_patterned(
    method: str, adata: AnnData, matrix: sp.csc_matrix | np.ndarray, weights: _Weights
) -> None:
    """Warn when log-normalized values meet spatially autocorrelated library sizes."""
    depth = spot_depth(adata)
    if depth is None or has_negative_values(matrix):
        return
    log_depth = np.log(np.maximum(depth, 1.0))[:, None]
    sums = _chunk_sums(log_depth, weights, 0, 1)
    moran_table = _table("moran", sums, weights, adata.n_obs, two_tailed=False)
    pvalue = float(moran_table["pval"].iloc[0])
    if pvalue < DEPTH_WARNING_PVALUE:
        name = "Moran's I" if method == "moran" else "Geary's C"
        warnings.warn(
            f"total counts per spot are spatially autocorrelated (Moran's I of log total "
            f"counts {float(moran_table['statistic'].iloc[0]):.3f}, p = {pvalue:.2g}): on "
            f"log-normalized values {name} then calls some null genes (type-I error 0.077 "
            "at 0.05 in benchmarks). Test Pearson residuals "
            "(spatiome.pp.normalize(adata, method='pearson')) or values with log total "
            "counts regressed out instead.",
            UserWarning,
            stacklevel=4,
        )


def _check_options(
    adata: AnnData,
    transformation: str,
    n_permutations: int,
    two_tailed: bool,
    chunk_size: int | None,
) -> None:
    if transformation not in TRANSFORMATIONS:
        raise SpatiomeInputError(
            f"transformation must be one of {TRANSFORMATIONS}, got {transformation!r}"
        )
    if (
        isinstance(n_permutations, bool)
        or not isinstance(n_permutations, numbers.Integral)
        or n_permutations < 0
    ):
        raise SpatiomeInputError(
            f"n_permutations must be a non-negative integer, got {n_permutations!r}"
        )
    if not isinstance(two_tailed, bool | np.bool_):
        raise SpatiomeInputError(f"two_tailed must be True or False, got {two_tailed!r}")
    if chunk_size is not None and (not isinstance(chunk_size, numbers.Integral) or chunk_size < 1):
        raise SpatiomeInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if adata.n_obs < 4:
        raise SpatiomeInputError(
            f"spatial autocorrelation needs at least 4 spots, got {adata.n_obs}"
        )


def _gene_matrix(
    adata: AnnData, layer: str | None, positions: np.ndarray
) -> sp.csc_matrix | np.ndarray:
    """The tested genes as canonical CSR or CSC, or a dense array.

    CSR stays CSR: each gene chunk is converted on its own (:func:`_csc_columns`), so no
    column-major copy of the whole matrix is ever held.
    """
    matrix = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    subset = positions.size != adata.n_vars or not np.array_equal(
        positions, np.arange(adata.n_vars)
    )
    if sp.issparse(matrix):
        selected = matrix[:, positions] if subset else matrix
        selected = sp.csr_matrix(selected) if selected.format == "csr" else sp.csc_matrix(selected)
        if not selected.has_canonical_format:
            # Canonicalizing works in place: never do that to the user's matrix.
            selected = selected.copy() if selected is matrix else selected
            selected.sum_duplicates()
        check_finite(selected, where=where)
        return selected
    dense = matrix[:, positions] if subset else matrix
    if not np.issubdtype(dense.dtype, np.number):
        raise SpatiomeInputError(f"{where} must be numeric, got dtype {dense.dtype}")
    check_finite(dense, where=where)
    return dense


def _weights(
    adata: AnnData, key: str, transformation: str, *, store: bool
) -> tuple[_Weights, str | None]:
    built = None
    if key in adata.obsp:
        matrix = adata.obsp[key]
    elif key == DEFAULT_CONNECTIVITY_KEY:
        from ..graph import build_graph, default_method

        built = default_method(adata)
        warnings.warn(
            f"adata.obsp[{key!r}] is missing: building the default spatial graph "
            f"(method={built!r}); call spatiome.graph.spatial_neighbors first to choose it",
            UserWarning,
            stacklevel=4,
        )
        matrix, distances, info = build_graph(adata, method=built)
        if store:
            adata.obsp["spatial_connectivities"] = matrix
            adata.obsp["spatial_distances"] = distances
            adata.uns["spatial_neighbors"] = {
                "connectivities_key": "spatial_connectivities",
                "distances_key": "spatial_distances",
                **info,
            }
    else:
        raise SpatiomeInputError(
            f"adata.obsp[{key!r}] is missing (available: {sorted(adata.obsp.keys())}): call "
            f"spatiome.graph.spatial_neighbors(adata, key_added=...) first"
        )
    return _prepare_weights(matrix, adata.n_obs, key, transformation), built


def _prepare_weights(matrix: Any, n_obs: int, key: str, transformation: str) -> _Weights:
    if matrix.shape != (n_obs, n_obs):
        raise SpatiomeInputError(
            f"adata.obsp[{key!r}] has shape {matrix.shape}, expected ({n_obs}, {n_obs})"
        )
    weights = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    weights.sum_duplicates()
    weights.eliminate_zeros()
    check_finite(weights, where=f"adata.obsp[{key!r}]")
    if transformation == "row":
        from ..graph import row_normalize

        weights = row_normalize(weights)
    s0 = float(weights.sum())
    if s0 == 0:
        raise SpatiomeInputError(
            f"adata.obsp[{key!r}] has no edges (total weight 0): rebuild the graph with "
            "spatiome.graph.spatial_neighbors"
        )
    row_sums = np.asarray(weights.sum(axis=1)).ravel()
    col_sums = np.asarray(weights.sum(axis=0)).ravel()
    both = weights + weights.T
    return _Weights(
        matrix=weights,
        upper=sp.triu(both, k=1, format="csr"),
        diagonal=weights.diagonal(),
        s0=s0,
        s1=float(both.multiply(both).sum()) / 2.0,
        s2=float(((row_sums + col_sums) ** 2).sum()),
        row_sums=row_sums,
        col_sums=col_sums,
        source=key,
    )


def _chunk_sums(
    matrix: sp.csc_matrix | np.ndarray, weights: _Weights, start: int, stop: int
) -> np.ndarray:
    """Per-gene mean, sum z^2, sum z^4, z'Wz, Geary numerator and value range."""
    w = weights.matrix
    if sp.issparse(matrix):
        out = np.empty((stop - start, 6))
        upper = weights.upper
        data, indices, indptr, first = matrix.data, matrix.indices, matrix.indptr, start
        if matrix.format == "csr":
            data, indices, indptr = _csc_columns(matrix, start, stop)
            first = 0
        _sparse_sums(
            data,
            indices,
            indptr,
            first,
            first + stop - start,
            matrix.shape[0],
            upper.indptr,
            upper.indices,
            upper.data,
            weights.diagonal,
            weights.row_sums,
            weights.col_sums,
            weights.s0,
            out,
        )
        return out
    block = np.asarray(matrix[:, start:stop], dtype=np.float64)
    mean = block.mean(axis=0)
    centred = block - mean
    zwz = np.einsum("ij,ij->j", centred, w @ centred)
    squares = centred * centred
    return np.column_stack(
        [
            mean,
            squares.sum(axis=0),
            (squares * squares).sum(axis=0),
            zwz,
            (weights.row_sums + weights.col_sums) @ squares - 2.0 * zwz,
            np.ptp(block, axis=0),
        ]
    )


def _csc_columns(
    matrix: sp.csr_matrix, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns ``start:stop`` of a canonical CSR matrix as CSC arrays (data, indices, indptr).

    Equal to ``matrix[:, start:stop].tocsc()`` (row indices ascending in each column), in
    two compiled passes that find each row's range by binary search.

    Examples
    --------
    >>> x = sp.random(6, 5, density=0.5, random_state=0, format="csr")
    >>> data, indices, indptr = _csc_columns(x, 1, 4)
    >>> block = sp.csc_matrix((data, indices, indptr), shape=(6, 3))
    >>> bool((block != x[:, 1:4]).nnz == 0)
    True
    """
    return _csc_columns_kernel(
        matrix.data, matrix.indices, matrix.indptr, int(start), int(stop), matrix.shape[0]
    )


@numba.njit(cache=True, nogil=True)
def _csc_columns_kernel(data, indices, indptr, start, stop, n_rows):  # pragma: no cover
    width = stop - start
    column_starts = np.zeros(width + 1, dtype=np.int64)
    first = np.empty(n_rows, dtype=np.int64)
    last = np.empty(n_rows, dtype=np.int64)
    for row in range(n_rows):
        lo, hi = indptr[row], indptr[row + 1]
        first[row] = lo + np.searchsorted(indices[lo:hi], start)
        last[row] = lo + np.searchsorted(indices[lo:hi], stop)
        for k in range(first[row], last[row]):
            column_starts[indices[k] - start + 1] += 1
    column_starts = np.cumsum(column_starts)
    out_data = np.empty(column_starts[-1], dtype=data.dtype)
    out_rows = np.empty(column_starts[-1], dtype=np.int64)
    cursor = column_starts[:-1].copy()
    for row in range(n_rows):
        for k in range(first[row], last[row]):
            column = indices[k] - start
            out_data[cursor[column]] = data[k]
            out_rows[cursor[column]] = row
            cursor[column] += 1
    return out_data, out_rows, column_starts


@numba.njit(cache=True, nogil=True)
def _sparse_sums(
    data,
    indices,
    indptr,
    start,
    stop,
    n_obs,
    u_indptr,
    u_indices,
    u_data,
    diagonal,
    rows,
    cols,
    s0,
    out,
):  # pragma: no cover - compiled
    # One gene (column) at a time: scatter its non-zeros into a dense spot buffer, then
    # x'Wx = sum_i x_i (d_i x_i + sum_{j>i} u_ij x_j) with U = upper triangle of W + W^T,
    # which visits each undirected edge once.
    dense = np.zeros(n_obs)
    for gene in range(start, stop):
        lo, hi = indptr[gene], indptr[gene + 1]
        total = 0.0
        for k in range(lo, hi):
            value = np.float64(data[k])
            dense[indices[k]] = value
            total += value
        mean = total / n_obs
        xwx = 0.0
        rx = 0.0
        cx = 0.0
        weighted_squares = 0.0
        m2 = 0.0
        m4 = 0.0
        low = np.inf
        high = -np.inf
        for k in range(lo, hi):
            i = indices[k]
            value = dense[i]
            neighbours = diagonal[i] * value
            for e in range(u_indptr[i], u_indptr[i + 1]):
                neighbours += u_data[e] * dense[u_indices[e]]
            xwx += value * neighbours
            rx += rows[i] * value
            cx += cols[i] * value
            weighted_squares += (rows[i] + cols[i]) * value * value
            d = value - mean
            m2 += d * d
            m4 += d * d * d * d
            low = min(low, value)
            high = max(high, value)
        n_zero = n_obs - (hi - lo)
        if n_zero > 0:
            m2 += n_zero * mean * mean
            m4 += n_zero * mean * mean * mean * mean
            low = min(low, 0.0)
            high = max(high, 0.0)
        for k in range(lo, hi):
            dense[indices[k]] = 0.0
        row = gene - start
        out[row, 0] = mean
        out[row, 1] = m2
        out[row, 2] = m4
        out[row, 3] = xwx - mean * (rx + cx) + mean * mean * s0
        out[row, 4] = weighted_squares - 2.0 * xwx
        out[row, 5] = high - low


def _variance_norm(method: str, weights: _Weights, n: int) -> float:
    """Variance of I or C under normality (Cliff and Ord 1981): it depends on W only."""
    s0, s1, s2 = weights.s0, weights.s1, weights.s2
    s02 = s0 * s0
    if method == "moran":
        return (n * n * s1 - n * s2 + 3 * s02) / ((n * n - 1) * s02) - 1.0 / (n - 1) ** 2
    return ((2 * s1 + s2) * (n - 1) - 4 * s02) / (2 * (n + 1) * s02)


def _moments(method: str, sums: np.ndarray, weights: _Weights, n: int) -> dict[str, np.ndarray]:
    """Statistic, expectation and variances under normality and randomization."""
    s0, s1, s2 = weights.s0, weights.s1, weights.s2
    constant = sums[:, _RANGE] == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        m2 = np.where(constant, np.nan, sums[:, _M2])
        kurtosis = n * sums[:, _M4] / (m2 * m2)
        s02 = s0 * s0
        var_norm = _variance_norm(method, weights, n)
        if method == "moran":
            statistic = n / s0 * sums[:, _ZWZ] / m2
            expected = -1.0 / (n - 1)
            var_rand = (
                n * ((n * n - 3 * n + 3) * s1 - n * s2 + 3 * s02)
                - kurtosis * ((n * n - n) * s1 - 2 * n * s2 + 6 * s02)
            ) / ((n - 1) * (n - 2) * (n - 3) * s02) - expected**2
        else:
            statistic = (n - 1) * sums[:, _GEARY] / (2.0 * s0 * m2)
            expected = 1.0
            var_rand = (
                (n - 1) * s1 * (n * n - 3 * n + 3 - (n - 1) * kurtosis)
                - 0.25 * (n - 1) * s2 * (n * n + 3 * n - 6 - (n * n - n + 2) * kurtosis)
                + s02 * (n * n - 3 - (n - 1) ** 2 * kurtosis)
            ) / (n * (n - 2) * (n - 3) * s02)
    var_rand = np.where(var_rand > 0, var_rand, np.nan)
    return {
        "statistic": statistic,
        "expected": np.full(statistic.shape, expected),
        "variance_norm": np.where(constant, np.nan, var_norm),
        "variance_rand": var_rand,
    }


def _table(
    method: str, sums: np.ndarray, weights: _Weights, n: int, two_tailed: bool
) -> pd.DataFrame:
    moments = _moments(method, sums, weights, n)
    # Signed so that positive values mean positive autocorrelation (C falls below 1).
    sign = 1.0 if method == "moran" else -1.0
    deviation = moments["statistic"] - moments["expected"]
    with np.errstate(divide="ignore", invalid="ignore"):
        zscore = deviation / np.sqrt(moments["variance_norm"])
        zscore_rand = deviation / np.sqrt(moments["variance_rand"])
    log_p = _log_pvalue(sign * zscore, two_tailed)
    table = pd.DataFrame(
        {
            **moments,
            "zscore": zscore,
            "pval": _pvalue(log_p),
            "pval_rand": _pvalue(_log_pvalue(sign * zscore_rand, two_tailed)),
            "log10_pval": log_p / np.log(10.0),
        }
    )
    return table


def _pvalue(log_p: np.ndarray) -> np.ndarray:
    """exp(log p), floored at PVAL_FLOOR (NaN stays NaN)."""
    return pvalue_columns(log_p)[0]


def _log_pvalue(signed_z: np.ndarray, two_tailed: bool) -> np.ndarray:
    """Natural log of the normal p-value, from the log survival function (no underflow)."""
    if two_tailed:
        return np.minimum(np.log(2.0) + stats.norm.logsf(np.abs(signed_z)), 0.0)
    return stats.norm.logsf(signed_z)


def _block_seeds(random_state: Any, n_permutations: int) -> np.ndarray:
    rng = check_random_state(random_state)
    n_blocks = -(-n_permutations // PERMUTATION_BLOCK)
    return rng.integers(0, np.iinfo(np.int64).max, size=n_blocks)


def _permutation_block(seed: int, n_obs: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n_obs, dtype=np.int64), (size, 1)), axis=1)


def _chunk_permutation_summaries(
    method: str,
    matrix: sp.csc_matrix | np.ndarray,
    weights: _Weights,
    sums: np.ndarray,
    start: int,
    stop: int,
    seeds: np.ndarray,
    n_permutations: int,
    two_tailed: bool,
) -> np.ndarray:
    """Per gene of the chunk: counts of extreme permutations and moments of the null.

    Columns ``_EXTREME`` (at least as extreme as observed, in the tail of ``pval``),
    ``_AT_LEAST`` (null >= observed), ``_SHIFT`` and ``_SHIFT2`` (sums of null - observed
    and of its square; shifted by the observed value so that the variance keeps its digits).
    """
    n_obs = weights.matrix.shape[0]
    chunk = sums[start:stop]
    centred = _centred_columns(matrix, chunk[:, _MEAN], start, stop)
    observed = _statistic_from_numerator(
        method, chunk, chunk[:, _ZWZ], chunk[:, _GEARY], n_obs, weights.s0
    )
    expected = -1.0 / (n_obs - 1) if method == "moran" else 1.0
    summaries = np.zeros((stop - start, 4))
    w = weights.matrix
    done = 0
    for seed in seeds:
        size = min(PERMUTATION_BLOCK, n_permutations - done)
        permutations = _permutation_block(int(seed), n_obs, size)
        zwz = np.empty((stop - start, size))
        geary = np.empty((stop - start, size))
        _permuted_numerators(centred, permutations, w.indptr, w.indices, w.data, zwz, geary)
        null = _statistic_from_numerator(method, chunk[:, None], zwz, geary, n_obs, weights.s0)
        summaries[:, _EXTREME] += _count_extreme(
            method, observed[:, None], null, expected, two_tailed
        )
        shift = null - observed[:, None]
        # Same tolerance as _count_extreme: the identity permutation counts as >= observed.
        summaries[:, _AT_LEAST] += (shift >= -1e-10 * (np.abs(observed[:, None]) + 1e-12)).sum(1)
        summaries[:, _SHIFT] += shift.sum(axis=1)
        summaries[:, _SHIFT2] += (shift * shift).sum(axis=1)
        done += size
    return summaries


def _centred_columns(
    matrix: sp.csc_matrix | np.ndarray, means: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """The chunk's genes, centred, as an (n_genes_chunk, n_obs) array for the kernel."""
    if sp.issparse(matrix):
        block = matrix[:, start:stop].T.toarray()
    else:
        block = np.asarray(matrix[:, start:stop], dtype=np.float64).T
    return np.ascontiguousarray(block - means[:, None], dtype=np.float64)


def _statistic_from_numerator(
    method: str, sums: np.ndarray, zwz: np.ndarray, geary: np.ndarray, n_obs: int, s0: float
) -> np.ndarray:
    m2 = np.where(sums[..., _RANGE] == 0, np.nan, sums[..., _M2])
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "moran":
            return n_obs / s0 * zwz / m2
        return (n_obs - 1) * geary / (2.0 * s0 * m2)


def _count_extreme(
    method: str, observed: np.ndarray, null: np.ndarray, expected: float, two_tailed: bool
) -> np.ndarray:
    # The observed value comes from the algebraic expansion and the permuted ones from a
    # direct sum, so the identity permutation can differ in the last bits: allow for it.
    tolerance = 1e-10 * (np.abs(observed) + 1e-12)
    if two_tailed:
        deviation = np.abs(observed - expected)
        return (np.abs(null - expected) >= deviation - tolerance).sum(axis=1)
    if method == "moran":
        return (null >= observed - tolerance).sum(axis=1)
    return (null <= observed + tolerance).sum(axis=1)


@numba.njit(cache=True, nogil=True)
def _permuted_numerators(
    centred, permutations, w_indptr, w_indices, w_data, zwz, geary
):  # pragma: no cover - compiled
    n_genes, n_obs = centred.shape
    shuffled = np.empty(n_obs)
    for gene in range(n_genes):
        z = centred[gene]
        for p in range(permutations.shape[0]):
            order = permutations[p]
            for i in range(n_obs):
                shuffled[i] = z[order[i]]
            cross = 0.0
            squares = 0.0
            for i in range(n_obs):
                zi = shuffled[i]
                neighbours = 0.0
                for e in range(w_indptr[i], w_indptr[i + 1]):
                    zj = shuffled[w_indices[e]]
                    neighbours += w_data[e] * zj
                    squares += w_data[e] * (zi - zj) * (zi - zj)
                cross += zi * neighbours
            zwz[gene, p] = cross
            geary[gene, p] = squares


__all__ = ["moran", "geary"]
