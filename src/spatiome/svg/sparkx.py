"""SPARK-X: a scalable non-parametric covariance test for spatially variable genes.

For a gene with raw counts y over n spots and a coordinate transform S (n x d), centred
(projected off the intercept and any covariates, giving S~), SPARK-X tests the projection
kernel K = S~ (S~'S~)^-1 S~' with

    T = n y'Ky / y'y = n (S~'y)' (S~'S~)^-1 (S~'y) / y'y.

Under the null of no spatial pattern T is approximately a mixture of d chi-square(1)
variables with weights lambda_y * lambda_K. The kernel's eigenvalues lambda_K are all 1 (it
is a projection), and lambda_y = 1 - ||Hy||^2 / y'y with H the projection onto the
intercept (and covariates): the share of y'y that is not explained by the mean. So

    T / lambda_y ~ chi-square(d)

exactly in the mixture approximation, and the p-value is computed in closed form. The
original evaluates the same mixture with Davies' numerical inversion at accuracy 1e-4
(falling back to Liu's moment matching), which this module also offers for fidelity.

Eleven transforms are tested ("mixture"): the coordinates themselves, and for each centred
axis five Gaussian transforms exp(-s^2 / (2 l^2)) and five cosine transforms cos(2 pi s / l),
with l the 20/40/60/80/100% quantiles of |s|. The eleven p-values are combined with the
Cauchy combination test and adjusted across genes with Benjamini-Yekutieli as in the
original, and Benjamini-Hochberg for the shared ``qval`` column.

Every quantity comes from one pass over the non-zero counts: the products Y'B of the
counts with the transformed coordinates B = [S_1, ..., S_11, Q] (Q an orthonormal basis of
the intercept and covariates), and the per-gene sums of squares. The pass runs over
contiguous blocks of spots (cheap row slices of CSR), in parallel threads or on a Dask
cluster; the partial sums are added in block order, so the result does not depend on the
number of workers. Time O(nnz x 11 d), memory O(n x 11 d + genes x 11 d); the counts are
never densified.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.near_empty import warn_near_empty
from .._core.parallel import map_gene_chunks, resolve_n_jobs
from .._core.stats import bh_adjust, by_adjust, cauchy_combination, chi2_logsf
from .._core.sums import row_sums
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    get_spatial,
    resolve_counts_layer,
    resolve_genes,
)
from ._depth import DEPTH_WARNING_PVALUE
from ._result import finite_statistic, pvalue_columns, write_result

#: Kernel names in the original's order.
MIXTURE_KERNELS = (
    ("projection",) + tuple(f"gaus{k}" for k in range(1, 6)) + tuple(f"cos{k}" for k in range(1, 6))
)
KERNEL_OPTIONS = ("mixture", "single")
PVALUE_METHODS = ("exact", "davies")
#: Quantiles of |centred coordinate| that set the Gaussian widths and cosine periods.
TRANSFORM_QUANTILES = (0.2, 0.4, 0.6, 0.8, 1.0)
#: Spots per block of the pass over the counts; fixed so that the partial sums, and hence
#: the results, are the same for any number of workers.
SPOT_BLOCK = 65_536


def sparkx(
    adata: AnnData,
    *,
    layer: str | None = None,
    genes: str | list[str] | None = None,
    covariates: str | Sequence[str] | np.ndarray | None = None,
    kernels: str = "mixture",
    pvalue_method: str = "exact",
    spatial_key: str = "spatial",
    n_jobs: int = 1,
    random_state: int | np.random.Generator | None = 0,
    client: Any | None = None,
    check_depth: bool = True,
    require_counts: bool = True,
    copy: bool = False,
) -> pd.DataFrame:
    """Test every gene for spatial expression with SPARK-X.

    Parameters
    ----------
    adata
        Spots x genes with coordinates in ``adata.obsm[spatial_key]`` (2-D or 3-D).
    layer
        Raw integer counts: ``adata.layers[layer]``. ``None`` (default):
        ``adata.layers["counts"]`` when present, else ``adata.X`` when it holds counts
        (with ``require_counts=False``: whatever it holds). SPARK-X is defined on raw
        counts; normalized values are rejected with an error naming the layer to use.
    genes
        Gene names to test (default: all).
    covariates
        Spot covariates to adjust for: names of numeric or categorical ``adata.obs``
        columns (categories become indicator columns), or an (n_spots, k) array. The
        coordinates and the counts' mean structure are projected off an intercept plus
        these columns (the original projects off the covariates as given; with an
        intercept among them the two agree).
    kernels
        ``"mixture"``: the eleven coordinate transforms of the original (default);
        ``"single"``: the projection kernel of the raw coordinates only.
    pvalue_method
        ``"exact"``: the closed-form chi-square p-value of the mixture (its weights are
        equal, see the module notes); ``"davies"``: the original's numerical route
        (Davies' method at accuracy 1e-4, Liu's approximation where Davies fails), whose
        p-values are off by up to ~1e-4 in absolute terms, and which underflow to 0
        for strong genes, where the closed form is used; use it only to reproduce
        published SPARK-X output.
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    n_jobs
        Worker threads for the pass over the counts (-1: all cores).
    random_state
        Unused: SPARK-X is deterministic. Accepted so that all SVG methods share one
        signature.
    client
        Optional ``distributed.Client``: the blocks of spots are processed on the cluster.
    check_depth
        Test the spots' total counts with the same kernels and warn when they are
        spatially patterned (p < 1e-3 and no covariates): SPARK-X then also calls genes
        that only follow sequencing depth (see Notes).
    require_counts
        True (default): the layer must hold raw integer counts, as the original expects.
        False: test any finite non-negative values, e.g. the output of
        :func:`spatiome.pp.spanorm` or log-normalized counts; the statistic and its null
        are computed the same way (the test needs no count model), but its calibration
        on such inputs is the user's to check.
    copy
        When True, ``adata`` is left untouched and only the table is returned.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene:

        - ``statistic``: the Cauchy combination statistic ``C = mean_k tan((0.5 - p_k)
          pi)`` of the kernels' p-values; about ``1 / (pi p)`` for a small combined
          ``p``, so beyond the largest double (``1.8e308``) when ``p`` is below about
          ``1.8e-309``: it is then shown as the largest double and ``note`` gives its
          size (its log10, from the log p-values);
        - ``pval``: combined p-value (Cauchy combination of the kernels), floored at the
          smallest positive double; ``log10_pval``: its log10, exact and never -inf;
        - ``note``: empty, or why ``statistic`` was replaced or the gene not tested;
        - ``qval``: Benjamini-Hochberg adjusted ``pval``; ``qval_by``: Benjamini-Yekutieli
          (the original's ``adjustedPval``);
        - ``stat_<kernel>``, ``pval_<kernel>`` for kernels projection, gaus1-5, cos1-5
          (p-values floored at the smallest positive double like ``pval``);
        - ``variance_fraction``: lambda_y, the share of y'y not explained by the mean
          (and covariates);
        - ``n_spots_expressed``: spots with a non-zero count.

        Genes without counts (or fully explained by the covariates) get NaN. Spots
        without counts in the tested genes are left out, as in the original. Unless
        ``copy=True`` the columns are also written to ``adata.var[f"sparkx_{column}"]``
        and the parameters to ``adata.uns["spatiome"]["sparkx"]``.

    Notes
    -----
    Calibration: on simulated tissues without spatial genes, the type-I error at 0.05 is
    close to nominal when sequencing depth is spatially uniform, but SPARK-X on raw counts
    detects genes that follow a spatially varying library size (see
    ``benchmarks/svg_accuracy.py``). Pass the spots' total counts as a covariate
    (``covariates="total_counts"`` after :func:`spatiome.pp.qc_metrics`) to test for
    spatial patterns beyond depth: counts grow linearly with depth, so the linear
    adjustment removes it (log totals leave part of it behind). The function warns when
    ``check_depth`` finds a spatial depth pattern.

    Sensitivity to near-empty spots: small. On the mouse olfactory bulb
    (``mouse_ob_rep11``: 262 spots, two of which hold 7 and 3 counts against a median of
    27,378), the defaults call 3,714 genes at q < 0.05 with all spots and 3,712 without
    those two (Jaccard 0.97 between the two sets). With the original's
    Benjamini-Yekutieli ``qval_by`` the calls are 2,119 and 2,076, against the R
    package's 2,086 on all 262 spots (Jaccard 0.98 and 0.97). The function still warns
    when a spot holds less than 1% of the median library size, as other steps of an
    analysis are not as robust (:func:`spatiome.pp.quality_flags` flags such spots).

    References
    ----------
    Zhu, J., Sun, S. and Zhou, X. (2021). SPARK-X: non-parametric modeling enables
    scalable and robust detection of spatial expression patterns for large spatial
    transcriptomic studies. Genome Biology 22, 184.

    Examples
    --------
    >>> import anndata, numpy as np, scipy.sparse as sp
    >>> import spatiome as sm
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.random((500, 2)) * 100
    >>> gradient = rng.poisson(1 + 0.1 * xy[:, 0])
    >>> noise = rng.poisson(5, 500)
    >>> adata = anndata.AnnData(sp.csr_matrix(np.column_stack([gradient, noise])),
    ...                         obsm={"spatial": xy})
    >>> adata.var_names = ["gradient", "noise"]
    >>> # With two genes the spot totals follow the gradient gene: skip the depth check.
    >>> table = sm.svg.sparkx(adata, check_depth=False)
    >>> bool(table.loc["gradient", "pval"] < 1e-10), bool(table.loc["noise", "pval"] > 0.01)
    (True, True)
    >>> "sparkx_qval" in adata.var
    True
    """
    check_adata(adata)
    if kernels not in KERNEL_OPTIONS:
        raise SpatiomeInputError(f"kernels must be one of {KERNEL_OPTIONS}, got {kernels!r}")
    if pvalue_method not in PVALUE_METHODS:
        raise SpatiomeInputError(
            f"pvalue_method must be one of {PVALUE_METHODS}, got {pvalue_method!r}"
        )
    workers = resolve_n_jobs(n_jobs)
    try:
        layer_used = resolve_counts_layer(adata, layer, require_counts=require_counts)
    except SpatiomeInputError as err:
        if layer is not None:
            raise
        raise SpatiomeInputError(
            f"{err}; or pass require_counts=False to test normalized values"
        ) from None
    # Spots without counts are left out of the test below, so only the others count.
    warn_near_empty(adata, layer=layer_used, caller="svg.sparkx", ignore_below=1)
    positions = resolve_genes(adata, genes)
    counts = _count_matrix(adata, layer_used, positions, require_counts)
    coordinates = get_spatial(adata, spatial_key)
    covariate_matrix = _covariate_matrix(adata, covariates)

    spot_totals = _spot_totals(counts)
    kept = spot_totals > 0
    if kept.sum() < 3 + (0 if covariate_matrix is None else covariate_matrix.shape[1]):
        raise SpatiomeInputError(
            f"only {int(kept.sum())} spots have counts in the tested genes: SPARK-X needs "
            "more spots than covariates + 2"
        )
    names = MIXTURE_KERNELS if kernels == "mixture" else MIXTURE_KERNELS[:1]
    design = _design(coordinates, kept, covariate_matrix, names)
    sums = _crossproducts(counts, design.basis, workers, client)
    table = _table(sums, design, names, pvalue_method, workers)
    table.index = adata.var_names[positions]

    depth_pvalue = None
    if check_depth and covariate_matrix is None:
        depth_pvalue = _depth_pvalue(spot_totals, design, names)
        if depth_pvalue < DEPTH_WARNING_PVALUE:
            warnings.warn(
                f"total counts per spot are spatially patterned (SPARK-X p = "
                f"{depth_pvalue:.2g}): genes that only follow sequencing depth will be "
                "called spatially variable. Pass covariates=<total counts per spot> (e.g. "
                "'total_counts' after spatiome.pp.qc_metrics) to test for patterns beyond "
                "depth.",
                UserWarning,
                stacklevel=2,
            )
    if not copy:
        params = {
            "layer": layer_used,
            "kernels": kernels,
            "kernel_names": list(names),
            "pvalue_method": pvalue_method,
            "covariates": _describe_covariates(covariates),
            "spatial_key": spatial_key,
            "require_counts": bool(require_counts),
            "n_spots": int(adata.n_obs),
            "n_spots_used": int(kept.sum()),
            "depth_pvalue": depth_pvalue,
        }
        write_result(adata, "sparkx", table, params, positions=positions)
    return table


class _Design:
    """Transformed coordinates of the kept spots and the pieces of each kernel's test."""

    def __init__(self, basis: np.ndarray, blocks: list[slice], q_columns: slice, n: int):
        self.basis = basis  # all spots x (sum of kernel widths + Q columns), zero rows dropped
        self.blocks = blocks  # columns of each kernel's raw transform in ``basis``
        self.q_columns = q_columns  # columns of Q
        self.n = n  # number of spots used
        self.inverse: list[np.ndarray] = []  # (S~'S~)^+ per kernel
        self.projection: list[np.ndarray] = []  # Q'S per kernel
        self.rank: list[int] = []


def _design(
    coordinates: np.ndarray,
    kept: np.ndarray,
    covariates: np.ndarray | None,
    names: Sequence[str],
) -> _Design:
    xy = coordinates[kept] if not kept.all() else coordinates
    centred = xy - xy.mean(axis=0)
    columns = [np.ones(len(xy))]
    if covariates is not None:
        columns.extend(covariates[kept].T)
    q = _orthonormal_basis(np.column_stack(columns))

    width = centred.shape[1]
    n_transform = width * len(names)
    kept_basis = np.empty((len(xy), n_transform + q.shape[1]))
    _fill_transforms(centred, names, kept_basis)
    kept_basis[:, n_transform:] = q
    if kept.all():
        basis = kept_basis
    else:
        basis = np.zeros((coordinates.shape[0], kept_basis.shape[1]))
        basis[kept] = kept_basis
    blocks = [slice(k * width, (k + 1) * width) for k in range(len(names))]
    design = _Design(basis, blocks, slice(n_transform, basis.shape[1]), int(kept.sum()))
    transforms = kept_basis[:, :n_transform]
    # S~'S~ = S'S - (Q'S)'(Q'S): the residual coordinates are never formed.
    projection = q.T @ transforms
    gram = transforms.T @ transforms - projection.T @ projection
    for columns_k in blocks:
        inverse, rank = _pseudo_inverse(gram[columns_k, columns_k])
        design.projection.append(projection[:, columns_k])
        design.inverse.append(inverse)
        design.rank.append(rank)
    return design


def _fill_transforms(centred: np.ndarray, names: Sequence[str], out: np.ndarray) -> None:
    """Write the kernels' coordinate transforms side by side (per axis) into ``out``.

    As in the original, Gaussian widths and cosine periods are quantiles of the absolute
    centred coordinate of each axis.
    """
    scales = np.quantile(np.abs(centred), TRANSFORM_QUANTILES, axis=0)
    scales = np.where(scales > 0, scales, 1.0)
    width = centred.shape[1]
    axes = np.ascontiguousarray(centred.T)
    # Contiguous rows per axis let numpy vectorize exp and cos; one transposed copy at the end.
    rows = np.empty((len(names) * width, axes.shape[1]))
    for k, name in enumerate(names):
        for j in range(width):
            target = rows[k * width + j]
            if name == "projection":
                target[:] = axes[j]
                continue
            scale = scales[int(name[-1]) - 1, j]
            if name.startswith("gaus"):
                np.multiply(axes[j], axes[j], out=target)
                target *= -1.0 / (2.0 * scale**2)
                np.exp(target, out=target)
            else:
                np.multiply(axes[j], 2.0 * np.pi / scale, out=target)
                np.cos(target, out=target)
    out[:, : rows.shape[0]] = rows.T


def _orthonormal_basis(columns: np.ndarray) -> np.ndarray:
    q, r = np.linalg.qr(columns)
    keep = np.abs(np.diag(r)) > 1e-10 * max(np.abs(np.diag(r)).max(), 1e-300)
    if not keep.all():
        raise SpatiomeInputError(
            f"covariates are collinear with the intercept or each other "
            f"({int((~keep).sum())} redundant columns): drop constant or duplicated columns"
        )
    return q


def _pseudo_inverse(gram: np.ndarray) -> tuple[np.ndarray, int]:
    values, vectors = np.linalg.eigh(gram)
    keep = values > 1e-10 * max(values.max(), 1e-300)
    inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
    return inverse, int(keep.sum())


def _crossproducts(
    counts: sp.csr_matrix | np.ndarray, basis: np.ndarray, workers: int, client: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y'B, per-gene sum of squares and non-zero counts, summed over spot blocks in order."""
    n_obs, n_genes = counts.shape

    def block(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if sp.issparse(counts):
            cross = np.zeros((n_genes, basis.shape[1]))
            squares = np.zeros(n_genes)
            nonzero = np.zeros(n_genes, dtype=np.int64)
            _sparse_block(
                counts.indptr, counts.indices, counts.data, start, stop, basis,
                cross, squares, nonzero,
            )  # fmt: skip
            return cross, squares, nonzero
        values = np.asarray(counts[start:stop], dtype=np.float64)
        return (
            values.T @ basis[start:stop],
            np.einsum("ij,ij->j", values, values),
            np.count_nonzero(values, axis=0).astype(np.int64),
        )

    parts = map_gene_chunks(block, n_obs, chunk_size=SPOT_BLOCK, n_jobs=workers, client=client)
    cross, squares, nonzero = parts[0]
    cross, squares, nonzero = cross.copy(), squares.copy(), nonzero.copy()
    for more_cross, more_squares, more_nonzero in parts[1:]:
        cross += more_cross
        squares += more_squares
        nonzero += more_nonzero
    return cross, squares, nonzero


@numba.njit(cache=True, nogil=True)
def _sparse_block(
    indptr, indices, data, start, stop, basis, cross, squares, nonzero
):  # pragma: no cover - compiled
    width = basis.shape[1]
    for row in range(start, stop):
        for k in range(indptr[row], indptr[row + 1]):
            gene = indices[k]
            value = np.float64(data[k])
            if value == 0.0:
                continue
            squares[gene] += value * value
            nonzero[gene] += 1
            for c in range(width):
                cross[gene, c] += value * basis[row, c]


def _table(
    sums: tuple[np.ndarray, np.ndarray, np.ndarray],
    design: _Design,
    names: Sequence[str],
    pvalue_method: str,
    workers: int,
) -> pd.DataFrame:
    cross, squares, nonzero = sums
    statistics, log_pvalues, variance_fraction = _kernel_tests(
        cross, squares, design, pvalue_method, workers
    )
    statistic, log_combined = cauchy_combination(log_pvalues)
    statistic, note = finite_statistic(
        statistic, _log10_cauchy_statistic(log_pvalues, statistic), name="Cauchy statistic"
    )
    untested = np.isnan(variance_fraction)
    note[untested & (squares == 0)] = "not tested: no counts"
    note[untested & (squares > 0)] = "not tested: no variance beyond the mean and covariates"
    pval, log10_pval = pvalue_columns(log_combined)
    columns: dict[str, np.ndarray] = {
        "statistic": statistic,
        "pval": pval,
        "log10_pval": log10_pval,
        "qval": bh_adjust(pval),
        "qval_by": by_adjust(pval),
        "note": note,
    }
    for k, name in enumerate(names):
        columns[f"stat_{name}"] = statistics[:, k]
    for k, name in enumerate(names):
        columns[f"pval_{name}"] = pvalue_columns(log_pvalues[:, k])[0]
    columns["variance_fraction"] = variance_fraction
    columns["n_spots_expressed"] = nonzero
    return pd.DataFrame(columns)


def _log10_cauchy_statistic(log_pvalues: np.ndarray, statistic: np.ndarray) -> np.ndarray:
    """log10 of the Cauchy statistic where it overflowed (NaN elsewhere).

    It overflows only when some kernel's p-value is below about 1e-308, where its term
    ``w tan((0.5 - p) pi)`` is ``w / (p pi)``; the bounded terms of the other kernels
    (below 1e16 in size) are then negligible, and the sum is taken in log space.
    """
    out = np.full(statistic.shape, np.nan)
    rows = np.flatnonzero(np.isinf(statistic))
    if rows.size:
        weight = 1.0 / log_pvalues.shape[1]
        terms = np.log(weight) - log_pvalues[rows] - np.log(np.pi)
        peak = terms.max(axis=1)
        out[rows] = (peak + np.log(np.exp(terms - peak[:, None]).sum(axis=1))) / np.log(10.0)
    return out


def _kernel_tests(
    cross: np.ndarray,
    squares: np.ndarray,
    design: _Design,
    pvalue_method: str,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-gene statistics, log p-values (genes x kernels) and lambda_y."""
    q_cross = cross[:, design.q_columns]
    with np.errstate(divide="ignore", invalid="ignore"):
        explained = np.einsum("gj,gj->g", q_cross, q_cross)
        variance_fraction = 1.0 - explained / squares
        testable = (squares > 0) & (variance_fraction > 1e-12)
        variance_fraction = np.where(testable, variance_fraction, np.nan)
        n_kernels = len(design.blocks)
        statistics = np.full((cross.shape[0], n_kernels), np.nan)
        log_pvalues = np.full((cross.shape[0], n_kernels), np.nan)
        for k, columns in enumerate(design.blocks):
            # S~'y = S'y - (Q'S)'(Q'y): centring applied after the pass over the counts.
            projected = cross[:, columns] - q_cross @ design.projection[k]
            quadratic = np.einsum("gi,ij,gj->g", projected, design.inverse[k], projected)
            statistic = design.n * quadratic / squares
            statistics[:, k] = np.where(testable, statistic, np.nan)
            log_pvalues[:, k] = _log_pvalues(
                statistics[:, k], variance_fraction, design.rank[k], pvalue_method, workers
            )
    return statistics, log_pvalues, variance_fraction


def _log_pvalues(
    statistic: np.ndarray,
    variance_fraction: np.ndarray,
    dof: int,
    pvalue_method: str,
    workers: int = 1,
) -> np.ndarray:
    if pvalue_method == "exact":
        return chi2_logsf(statistic / variance_fraction, dof)
    from .._core.chi2mix import mixture_pvalue

    out = np.full(statistic.shape, np.nan)
    ok = np.isfinite(statistic) & np.isfinite(variance_fraction)
    weights = np.repeat(variance_fraction[ok, None], dof, axis=1)
    # Davies' inversion can overshoot 1 by up to its accuracy; keep p-values valid.
    pvalues = mixture_pvalue(statistic[ok], weights, method="davies", n_jobs=workers)
    with np.errstate(divide="ignore"):
        out[ok] = np.log(np.clip(pvalues, 0.0, 1.0))
    # Where Davies and Liu underflow to 0, the closed form (the same mixture) still has
    # the logarithm.
    underflow = np.isneginf(out)
    if underflow.any():
        out[underflow] = chi2_logsf(statistic[underflow] / variance_fraction[underflow], dof)
    return out


def _depth_pvalue(spot_totals: np.ndarray, design: _Design, names: Sequence[str]) -> float:
    """SPARK-X combined p-value of the spots' total counts treated as one gene."""
    totals = spot_totals.astype(np.float64)[:, None]
    cross = totals.T @ design.basis
    squares = np.array([float(totals[:, 0] @ totals[:, 0])])
    _, log_pvalues, _ = _kernel_tests(cross, squares, design, "exact")
    _, log_combined = cauchy_combination(log_pvalues)
    return float(np.exp(log_combined[0]))


def _count_matrix(
    adata: AnnData, layer: str | None, positions: np.ndarray, require_counts: bool = True
) -> sp.csr_matrix | np.ndarray:
    matrix = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if not sp.issparse(matrix) and not np.issubdtype(np.asarray(matrix).dtype, np.number):
        raise SpatiomeInputError(f"{where} must be numeric, got dtype {matrix.dtype}")
    subset = positions.size != adata.n_vars or not np.array_equal(
        positions, np.arange(adata.n_vars)
    )
    selected = matrix[:, positions] if subset else matrix
    try:
        if require_counts:
            check_counts(selected, where=where)
        else:
            _check_non_negative(selected, where)
    except SpatiomeInputError as err:
        raise SpatiomeInputError(
            f"{err}. SPARK-X tests raw counts: pass layer='counts' (or the layer holding "
            "the unnormalized counts), or require_counts=False for normalized values"
        ) from None
    if sp.issparse(selected) and not selected.has_canonical_format:
        selected = selected.copy() if selected is matrix else selected
        selected.sum_duplicates()
    return selected


def _check_non_negative(matrix: sp.spmatrix | np.ndarray, where: str) -> None:
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.size and not np.isfinite(values).all():
        raise SpatiomeInputError(f"{where} contains NaN or infinite values")
    if values.size and values.min() < 0:
        raise SpatiomeInputError(
            f"{where} contains negative values (min {values.min():g}); SPARK-X needs "
            "non-negative expression"
        )


def _spot_totals(counts: sp.csr_matrix | np.ndarray) -> np.ndarray:
    return row_sums(counts)


def _covariate_matrix(
    adata: AnnData, covariates: str | Sequence[str] | np.ndarray | None
) -> np.ndarray | None:
    if covariates is None:
        return None
    if isinstance(covariates, str) or (
        isinstance(covariates, Sequence) and all(isinstance(c, str) for c in covariates)
    ):
        keys = [covariates] if isinstance(covariates, str) else list(covariates)
        missing = [key for key in keys if key not in adata.obs]
        if missing:
            raise SpatiomeInputError(
                f"covariates not in adata.obs: {missing} (available: {list(adata.obs)[:10]})"
            )
        frame = pd.get_dummies(adata.obs[keys], drop_first=True, dtype=float)
        values = frame.to_numpy(dtype=np.float64)
    else:
        values = np.asarray(covariates, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
    if values.ndim != 2 or values.shape[0] != adata.n_obs:
        raise SpatiomeInputError(
            f"covariates must have one row per spot ({adata.n_obs}), got shape {values.shape}"
        )
    if not np.isfinite(values).all():
        raise SpatiomeInputError(
            "covariates contain NaN or infinite values: fill or drop those spots first"
        )
    return values


def _describe_covariates(covariates: Any) -> Any:
    if covariates is None or isinstance(covariates, str):
        return covariates
    if isinstance(covariates, Sequence) and all(isinstance(c, str) for c in covariates):
        return list(covariates)
    return f"array of shape {np.shape(covariates)}"


__all__ = ["sparkx", "MIXTURE_KERNELS"]
