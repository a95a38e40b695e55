"""SpatialDE: Gaussian-process tests for spatially variable genes (Svensson et al. 2018).

Each gene's (variance-stabilized) expression ``y`` is modelled as

    y ~ N(mu 1, s2 (K_l + delta I)),   K_l(i, j) = exp(-|x_i - x_j|^2 / (2 l^2)),

for ten length scales ``l``, against a constant model ``y ~ N(mu 1, s2 I)``.

With the eigendecomposition ``K = U diag(S) U^T`` (eigenvalues floored at ``EIGEN_FLOOR``),
``mu``, ``s2`` and the log-likelihood are closed-form functions of ``delta`` that only
need the projections ``U^T y`` and ``U^T 1``::

    mu(delta) = sum(u z / (S + delta)) / sum(u^2 / (S + delta)),  z = U^T y, u = U^T 1
    Q(delta)  = sum((z - u mu)^2 / (S + delta))
    LL(delta) = -(n log 2 pi + n log(Q / n) + sum(log(S + delta)) + n) / 2

How it is computed here:

- **All genes at once.** LL of every gene is evaluated on a grid of ``log delta`` in
  [-10, 20] (step 0.5) with three matrix products, then each gene's best grid point is
  refined by Newton's method on ``dLL / dlog delta`` (analytic derivatives, safeguarded
  by bisection; compiled, per gene) to 1e-7 in ``log delta``. This finds the global
  maximum on the interval unless two maxima lie within one grid step; the original's
  L-BFGS-B from ``log delta = 0`` with a loose tolerance can stop short of it or at a
  local one, so LL here is at least the original's.
- **Only the eigenpairs that matter.** Eigenvalues below the floor all count as the
  floor, so only eigenpairs above it are needed; the rest of the spectrum enters through
  ``|y|^2 - |U_r^T y|^2`` and ``n - |U_r^T 1|^2``. Large length scales have a numerically
  low rank: their eigenpairs come from a pivoted Cholesky factor ``K ~ F F^T`` (stopped
  when the largest residual variance is below ``PIVOTED_TOLERANCE``, so no eigenvalue is
  off by more than ``n * PIVOTED_TOLERANCE``) and the eigendecomposition of the r x r
  ``F^T F``, which costs ``O(n r^2)`` instead of the ``O(n^3)`` of a full
  eigendecomposition. Low ranks are factored from the coordinates without forming the
  kernel, middle ranks (up to ``FACTORED_MAX_FRACTION`` of the spots) by LAPACK's blocked
  ``dpstrf`` on the formed kernel. The full-rank small scales are reduced to
  tridiagonal form ``K = Q T Q^T`` and only T's eigenvectors V are computed: the genes
  are projected as ``V^T (Q^T y)`` through Q's Householder reflectors, which skips
  forming ``U = Q V`` (the O(n^3) half of ``eigh`` that the projections do not need).
- **Counts stay sparse.** With the default ``normalize="naive_de"``, raw counts are
  stabilized as ``log(y + c) = log c + log1p(y / c)`` (a sparse matrix plus a constant)
  and the log total count is regressed out, which adds a per-gene multiple of one spot
  vector; genes are densified one chunk at a time only.
- **Approximate mode** beyond ``exact_max_spots``: a Nystrom (inducing point) kernel per
  length scale, ``K ~ C W^+ C^T`` with ``C = K(spots, Z)``, built by streaming over spot
  chunks (no spots x spots or dense spots x genes matrix). The inducing points ``Z`` are
  the pivots of a pivoted Cholesky factorization over farthest-point samples of the spots.
- **One length scale at a time.** Each kernel is decomposed, every gene is fitted to it,
  and its eigenvectors are released before the next, so at most one ``n x rank`` basis is
  held; progress is reported per length scale.
- **Cores as BLAS threads.** With ``n_jobs > 1`` the decompositions and projections
  run one length scale after the other, each on ``n_jobs`` BLAS threads. (SciPy's LAPACK
  wrappers hold the GIL, so kernels reduced on separate Python threads would run one
  after the other anyway.) Kernel entries below ``exp(KERNEL_LOG_CUTOFF)`` are set to 0,
  which keeps subnormal numbers, and their slow arithmetic, out of LAPACK.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp
from anndata import AnnData
from scipy import interpolate
from scipy.linalg import lapack
from scipy.spatial import ConvexHull, QhullError, cKDTree
from scipy.spatial.distance import cdist
from threadpoolctl import threadpool_limits

from .._core.near_empty import warn_near_empty
from .._core.parallel import default_chunk_size, map_gene_chunks, resolve_n_jobs
from .._core.progress import Progress
from .._core.random import check_random_state
from .._core.stats import chi2_logsf
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    check_finite,
    get_matrix,
    get_spatial,
    resolve_counts_layer,
    resolve_genes,
)
from ..pp.vst import covariate_matrix, fit_overdispersion
from ._result import add_qvalues, pvalue_columns, write_result

#: Eigenvalues of the kernels are floored here (the original's ``np.clip(S, 1e-8, None)``).
EIGEN_FLOOR = 1e-8
#: Bounds of log(delta), delta = noise variance / spatial variance.
LOG_DELTA_BOUNDS = (-10.0, 20.0)
#: Grid of log(delta) on which every gene is evaluated before refinement.
LOG_DELTA_GRID = np.linspace(-10.0, 20.0, 61)
#: The refinement stops when log(delta) is known to this absolute precision.
LOG_DELTA_TOLERANCE = 1e-7
#: Pivoted Cholesky stops when every residual variance (diagonal of K - L L^T) is below this.
PIVOTED_TOLERANCE = 1e-14
#: A length scale uses a pivoted Cholesky factor computed from the coordinates (the kernel
#: is never formed) while its rank stays below this fraction of the spots.
PIVOTED_MAX_FRACTION = 0.3
#: Above that, the kernel is formed and factored by LAPACK's blocked pivoted Cholesky
#: (``dpstrf``) while the rank stays below this fraction; above it a tridiagonal reduction
#: of the whole kernel is cheaper.
FACTORED_MAX_FRACTION = 0.7
#: With ``n_jobs > 1``, the decompositions use several BLAS threads from this many spots
#: on (1,000 spots x 1,000 genes: 1.29 s on two threads, 0.95 s on one; 3,000: 7.9 s on
#: two, 12.1 s on one).
BLAS_THREADS_MIN_SPOTS = 2000
#: Kernel entries below exp(KERNEL_LOG_CUTOFF) (about 1.8e-35) are set to 0: this changes
#: K by less than n * 1.8e-35 in norm and keeps subnormal numbers, on which arithmetic is
#: many times slower, out of the decompositions.
KERNEL_LOG_CUTOFF = -80.0
#: Approximate mode: pivoted Cholesky over the inducing candidates stops at this residual.
LOWRANK_TOLERANCE = 1e-8
#: Spots per chunk when streaming kernel columns in approximate mode.
SPOT_CHUNK = 4096
#: Approximate mode densifies one chunk of spots x genes at a time, of at most this size.
CHUNK_ENTRIES = 8_000_000
#: Number of parameters in the BIC of each model (as in the original).
N_PARAMETERS = {"SE": 4, "PER": 4, "linear": 3, "const": 2}
N_LENGTH_SCALES = 10
METHODS = ("auto", "exact", "lowrank")
NORMALIZATIONS = ("naive_de", None)

# Columns of the per-gene fit arrays returned by the compiled kernel.
_LL, _LOGDELTA, _MU, _Q, _A0, _B0, _C0, _D1, _D2, _LL_UP, _LL_DOWN = range(11)
_N_FIT = 11


@dataclass
class _Expression:
    """The tested genes as ``y_j = intercept + A[:, j] - beta_j * covariate``.

    ``A`` stays as given (sparse CSC or dense); the intercept and ``beta`` are zero unless
    the NaiveDE recipe is applied internally. Everything downstream works on the centred
    genes (the likelihoods do not depend on a shift); ``mean`` restores the level.
    """

    matrix: sp.csc_matrix | np.ndarray
    column_means: np.ndarray
    beta: np.ndarray
    covariate: np.ndarray  # centred covariate, zeros when there is none
    mean: np.ndarray  # mean of y_j over spots
    rss: np.ndarray  # sum over spots of (y_j - mean_j)^2
    constant: np.ndarray

    @property
    def n_genes(self) -> int:
        return int(self.matrix.shape[1])

    def centred_columns(self, start: int, stop: int) -> np.ndarray:
        """Dense (n_spots, stop - start) block of centred genes."""
        block = self.matrix[:, start:stop]
        dense = block.toarray() if sp.issparse(block) else np.array(block, dtype=np.float64)
        dense = dense.astype(np.float64, copy=False)
        dense -= self.column_means[start:stop]
        dense -= np.outer(self.covariate, self.beta[start:stop])
        return dense

    def centred_rows(self, by_rows: sp.csr_matrix | np.ndarray, rows: slice) -> np.ndarray:
        """Dense (rows, n_genes) block of centred genes (``by_rows``: the matrix as CSR)."""
        block = by_rows[rows]
        dense = block.toarray() if sp.issparse(block) else np.array(block, dtype=np.float64)
        dense = dense.astype(np.float64, copy=False)
        dense -= self.column_means
        dense -= np.outer(self.covariate[rows], self.beta)
        return dense


@dataclass
class _Spectrum:
    """Eigenpairs above the floor of one kernel; the other n - rank eigenvalues = floor.

    The eigenvectors ``U`` are held either as ``vectors`` or, for kernels reduced to
    tridiagonal form ``K = Q T Q^T``, as Q's Householder reflectors and the eigenvectors
    ``V`` of T (``U = Q V``, never formed); :meth:`project` gives ``U^T y`` in both cases.
    """

    vectors: np.ndarray | None  # (n, rank), or None when the projections come precomputed
    values: np.ndarray  # (rank,), all > EIGEN_FLOOR
    ut1: np.ndarray  # U^T 1
    n: int
    gower: float
    decomposition: str
    pivoted_rank: int = 0
    projections: np.ndarray | None = None  # U^T y of every gene (rank, n_genes), lowrank
    householder: _Householder | None = None  # Q of K = Q T Q^T; then vectors = V

    @property
    def rank(self) -> int:
        return int(self.values.size)

    @property
    def tail_11(self) -> float:
        return max(float(self.n - self.ut1 @ self.ut1), 0.0)

    def project(self, block: np.ndarray) -> np.ndarray:
        """``U^T block`` for a dense (n, k) block."""
        if self.householder is None:
            return self.vectors.T @ block
        # Q leaves the first coordinate alone: V^T Q^T y = V[0] y[0] + V[1:]^T (Q^T y)[1:].
        projected = self.vectors[1:].T @ self.householder.transpose_tail(block)
        projected += np.outer(self.vectors[0], block[0])
        return projected

    def release(self) -> None:
        """Drop the basis; the summaries (values, ut1, gower) stay."""
        self.vectors = None
        self.projections = None
        self.householder = None


@dataclass
class _Householder:
    """The orthogonal Q of ``dsytrd`` (lower): ``K = Q T Q^T``, Q = H_1 ... H_{n-1}.

    Q leaves the first coordinate alone and acts on the others as the Q of a QR
    factorization whose reflectors are the columns of ``reflectors`` (LAPACK's ``dormtr``
    does the same through ``dormqr``), so ``Q^T Y`` costs about ``2 n^2 k`` flops for k columns,
    against ``4 n^3 / 3`` to form Q and ``2 n^3`` to form ``U = Q V``.
    """

    reflectors: np.ndarray  # (n - 1, n - 1), Fortran order
    tau: np.ndarray  # (n - 1,)

    def transpose_tail(self, block: np.ndarray) -> np.ndarray:
        """Rows 1: of ``Q^T block`` (row 0 is ``block[0]``) for a dense (n, k) block."""
        tail = np.array(block[1:], dtype=np.float64, order="F", copy=True)
        if self.tau.size == 0 or tail.shape[1] == 0:
            return tail
        _, work, _ = lapack.dormqr("L", "T", self.reflectors, self.tau, tail, -1)
        lwork = max(int(work[0]), 1)
        tail, _, info = lapack.dormqr(
            "L", "T", self.reflectors, self.tau, tail, lwork, overwrite_c=1
        )
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"LAPACK dormqr failed (info={info})")
        return tail


def spatialde(
    adata: AnnData,
    *,
    layer: str | None = None,
    genes: str | list[str] | None = None,
    normalize: str | None = "naive_de",
    total_counts_key: str | None = None,
    length_scales: Sequence[float] | None = None,
    method: str = "auto",
    exact_max_spots: int = 5000,
    n_inducing: int = 1000,
    fidelity: bool = False,
    spatial_key: str = "spatial",
    n_jobs: int = 1,
    random_state: int | np.random.Generator | None = 0,
    chunk_size: int | None = None,
    client: Any | None = None,
    copy: bool = False,
) -> pd.DataFrame:
    """Test every gene for spatial variation with SpatialDE's Gaussian-process model.

    For each of ten length scales ``l`` (log-spaced from half the smallest distance between
    spots to twice the largest), the gene is fitted with a squared-exponential spatial
    covariance plus noise, ``y ~ N(mu, s2 (K_l + delta I))``; the best length scale is
    compared with a constant model by the likelihood ratio ``LLR = LL - LL_null`` and
    ``pval = chi2.sf(LLR, df=1)`` (SpatialDE's test: LLR, not 2 LLR, which is
    conservative and offsets the choice among ten length scales). On simulated nulls
    (``benchmarks/svg_accuracy.py``) the type-I error at 0.05 is 0.001 with uniform and 0.003
    with spatially varying sequencing depth, while its power is the highest of the SVG
    tests there: read its p-values as a ranking, not as calibrated probabilities.

    Parameters
    ----------
    adata
        Spots x genes with coordinates in ``adata.obsm[spatial_key]``.
    layer
        Layer to use. With ``normalize="naive_de"`` (default) it must hold raw counts;
        ``None`` (default) then reads ``adata.layers["counts"]`` when present, else
        ``adata.X`` when it holds counts. With ``normalize=None`` it must hold already
        variance-stabilized values, e.g. the output of :func:`spatiome.pp.stabilize` and
        :func:`spatiome.pp.regress_out`, and ``None`` reads ``adata.X``.
    genes
        Gene names to test (default: all).
    normalize
        ``"naive_de"``: apply SpatialDE's preprocessing to the raw counts internally
        without densifying them: ``log(y + 1 / (2 phi))`` with ``phi`` fitted over all
        genes of ``adata`` (:func:`spatiome.pp.stabilize`), then the log total count of
        each spot regressed out of every gene, keeping its intercept
        (:func:`spatiome.pp.regress_out`). Raw counts are checked. ``None``: use the
        layer as is; a warning is given when it looks like raw counts. Filter genes and
        spots first (the original keeps genes with at least 3 counts and spots with more
        than 10).
    total_counts_key
        Column of ``adata.obs`` with each spot's total count for the regression (default:
        the sum over all genes of the layer). Only with ``normalize="naive_de"``.
    length_scales
        Length scales in the unit of the coordinates (default: SpatialDE's ten).
    method
        ``"exact"``: eigenpairs of the exact kernels; ``"lowrank"``: Nystrom kernels on
        at most ``n_inducing`` inducing points (approximate, for many spots); ``"auto"``:
        exact up to ``exact_max_spots`` spots.
    exact_max_spots
        Largest number of spots for ``method="auto"`` to choose the exact mode (it needs
        ``O(n^2)`` memory and up to ``O(n^3)`` time per length scale).
    n_inducing
        Approximate mode: most inducing points per length scale (fewer where the kernel's
        rank is lower).
    fidelity
        ``False`` (recommended): standard errors by the delta method with the observed
        information, ``var(log delta) = -1 / LL''`` and
        ``fsv_se = |dFSV / dlog delta| * sqrt(var(log delta))`` (analytic derivatives);
        ``s2_t_hat`` is the maximum-likelihood ``Q / n``; model probabilities (in
        :func:`spatialde_model_search`) are ``exp(-BIC / 2)`` normalized. ``True``:
        reproduce SpatialDE 1.1.3: ``s2_logdelta = 1 / LL''^2`` and
        ``s2_FSV = FSV'^2 * s2_logdelta``, both with central differences of step 1 in
        log delta; ``s2_t_hat = y^T (K + delta I)^-1 y / n`` (not centred on ``mu``);
        model probabilities ``exp(-BIC)`` normalized; and the length-scale limits from
        squared distances computed as ``|x|^2 + |y|^2 - 2 x.y`` (with coordinates of
        large magnitude, e.g. micrometres, rounding makes the smallest length scales
        collapse to almost 0; the rounding noise that the original then has on the
        diagonal of those kernels, which can give null genes sizeable LLRs, is not
        reproduced: kernels here use exact distances). With the same length scales, LL,
        LLR, FSV and the p- and q-values are the same in both modes. In both modes the maximum over
        ``log delta`` is global (the original's L-BFGS-B can stop at a lower, local one).
    spatial_key
        Coordinates in ``adata.obsm``.
    n_jobs
        Cores (-1: all). Without ``client`` they are the BLAS threads of the kernel
        decompositions and gene projections (one length scale after the other); with
        ``client`` the length scales run in turn and their gene chunks on the cluster.
    random_state
        Seed or generator for the choice of inducing points (approximate mode only).
    chunk_size
        Genes per chunk (default: bounded memory, balanced over ``n_jobs``).
    client
        Optional ``distributed.Client`` to fit the gene chunks on a Dask cluster.
    copy
        When True, ``adata`` is left untouched and only the table is returned.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene, for the best length scale of each gene:

        - ``statistic``, ``llr``: LLR = ``ll - ll_null``;
        - ``pval``: ``chi2.sf(llr, df=1)``, floored at the smallest positive double;
          ``log10_pval``: its log10, exact and never -inf (computed as a logarithm, so
          an LLR of 2,000 gives ``-437.2``, not ``log10(0)``); ``qval``:
          Benjamini-Hochberg; ``qval_storey``: Storey's q-value as SpatialDE computes it;
        - ``ll``, ``ll_null``: log-likelihoods of the spatial and the constant model
          (the latter with the ``ddof=1`` variance, as in the original);
        - ``length_scale``, ``delta``, ``log_delta``, ``mu_hat``, ``s2_t_hat``: the fit;
        - ``fsv``: fraction of spatial variance ``g / (g + delta)``, ``g`` the Gower
          factor of the kernel; ``fsv_se``, ``log_delta_se``: standard errors (see
          ``fidelity``; NaN where ``log delta`` is at a bound or the curvature does not
          identify it);
        - ``bic``: ``-2 ll + 4 log n``.

        Genes that are constant (after normalization) get NaN. Unless ``copy=True`` the
        columns are also written to ``adata.var[f"spatialde_{column}"]`` and the
        parameters (with the decomposition and rank used for each length scale) to
        ``adata.uns["spatiome"]["spatialde"]``.

    Notes
    -----
    Sensitivity to near-empty spots: large, as a spot with almost no counts stands apart
    from all others after the normalization. On the mouse olfactory bulb
    (``mouse_ob_rep11``: 262 spots, two of which hold 7 and 3 counts against a median of
    27,378), the defaults call 924 genes at q < 0.05 with all spots and 91 without those
    two. On the input of the original analysis (those 260 spots and the 14,859 genes with
    at least 3 counts) they call 67, of which 66 are among the original's 68 (Jaccard
    0.96, against 0.71 for the 91 calls and 0.07 for the 924). The function warns when a
    spot holds less than 1% of the median library size: remove such spots first
    (:func:`spatiome.pp.quality_flags`).

    Progress (one unit per length scale: its decomposition and the fit of every gene) is
    reported through :mod:`spatiome._core.progress` as task ``"svg.spatialde"``.

    References
    ----------
    Svensson, V., Teichmann, S. A. and Stegle, O. (2018). SpatialDE: identification of
    spatially variable genes. Nature Methods 15, 343-346.

    Examples
    --------
    >>> import spatiome as sm
    >>> adata = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, random_state=0)
    >>> table = sm.svg.spatialde(adata)
    >>> table[["statistic", "pval", "qval", "fsv", "length_scale"]].shape
    (40, 5)
    >>> called = set(table.index[table["qval"] < 0.05])
    >>> truth = set(adata.var_names[adata.var["is_spatial"]])
    >>> len(called & truth) / len(called) > 0.8
    True
    >>> adata.uns["spatiome"]["spatialde"]["method"]
    'exact'
    """
    check_adata(adata)
    _check_options(
        method=method,
        normalize=normalize,
        exact_max_spots=exact_max_spots,
        n_inducing=n_inducing,
        fidelity=fidelity,
        chunk_size=chunk_size,
    )
    if adata.n_obs < 4:
        raise SpatiomeInputError(f"SpatialDE needs at least 4 spots, got {adata.n_obs}")
    if normalize == "naive_de":
        layer = resolve_counts_layer(adata, layer)
    warn_near_empty(adata, layer=layer, caller="svg.spatialde")
    workers = resolve_n_jobs(n_jobs)
    coordinates = get_spatial(adata, spatial_key)
    positions = resolve_genes(adata, genes)
    expression, prep = _expression(adata, layer, positions, normalize, total_counts_key)
    scales = _length_scales(coordinates, length_scales, fidelity=fidelity)
    mode = (
        method if method != "auto" else ("exact" if adata.n_obs <= exact_max_spots else "lowrank")
    )
    builders = _se_builders(
        coordinates, scales, mode, n_inducing, random_state, expression, explicit_vectors=False
    )
    if workers > 1 and client is None:
        # The decompositions and projections take the cores as BLAS threads (from
        # BLAS_THREADS_MIN_SPOTS on: smaller kernels run faster on one); the genes are
        # chunked for memory only.
        size = chunk_size or default_chunk_size(adata.n_obs, expression.n_genes)
        threads = workers if adata.n_obs >= BLAS_THREADS_MIN_SPOTS else 1
        with threadpool_limits(limits=threads, user_api="blas"):
            by_scale = _fit_scales_in_turn(builders, scales, expression, size, 1, None)
    else:
        size = chunk_size or default_chunk_size(adata.n_obs, expression.n_genes, workers)
        by_scale = _fit_scales_in_turn(builders, scales, expression, size, workers, client)
    spectra = [by_scale[k][0] for k in range(scales.size)]
    fits = [by_scale[k][1] for k in range(scales.size)]
    table = _se_table(fits, spectra, scales, expression, adata.n_obs, fidelity)
    table.index = adata.var_names[positions]

    if not copy:
        params = {
            "layer": layer,
            "normalize": normalize,
            "total_counts_key": total_counts_key,
            "spatial_key": spatial_key,
            "method": mode,
            "fidelity": bool(fidelity),
            "length_scales": [float(v) for v in scales],
            "decompositions": [s.decomposition for s in spectra],
            "ranks": [s.rank for s in spectra],
            "n_inducing": int(n_inducing) if mode == "lowrank" else None,
            "random_state": random_state if isinstance(random_state, int | None) else "Generator",
            "n_spots": int(adata.n_obs),
            **prep,
        }
        write_result(adata, "spatialde", table, params, positions=positions)
    return table


def spatialde_model_search(
    adata: AnnData,
    *,
    layer: str | None = None,
    genes: str | list[str] | None = None,
    qval_threshold: float = 0.05,
    normalize: str | None = "naive_de",
    total_counts_key: str | None = None,
    length_scales: Sequence[float] | None = None,
    periods: Sequence[float] | None = None,
    fidelity: bool = False,
    exact_max_spots: int = 5000,
    spatial_key: str = "spatial",
    n_jobs: int = 1,
    chunk_size: int | None = None,
    client: Any | None = None,
    copy: bool = False,
) -> pd.DataFrame:
    """Classify spatial genes as smooth (SE), periodic or linear trends by BIC.

    Each gene is fitted with the squared-exponential kernels of :func:`spatialde`, with
    periodic kernels ``cos(2 pi |x_i - x_j| / p)`` over ten periods (on the same grid as
    the length scales) and with a linear kernel ``X X^T / max(X X^T)``; the model with the
    smallest ``BIC = -2 LL + M log n`` wins (M = 4 for SE and periodic, 3 for linear).
    This is SpatialDE's ``model_search``; it uses exact eigendecompositions, so it is
    meant for the significant genes of a data set with at most a few thousand spots.

    Parameters
    ----------
    adata, layer, normalize, total_counts_key, length_scales, spatial_key
        As for :func:`spatialde`.
    genes
        Genes to classify. Default: those with ``adata.var["spatialde_qval"]`` below
        ``qval_threshold`` (run :func:`spatialde` first).
    qval_threshold
        Significance threshold used when ``genes`` is None.
    periods
        Periods of the periodic kernels (default: the length-scale grid).
    fidelity
        As for :func:`spatialde`; also sets the model probabilities to ``exp(-BIC)``
        normalized (the original) instead of ``exp(-BIC / 2)``.
    exact_max_spots
        Largest number of spots accepted (the periodic kernels need dense
        eigendecompositions).
    n_jobs
        Worker threads over gene chunks (-1: all cores).
    chunk_size, client, copy
        As for :func:`spatialde`.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene: ``model`` (``"SE"``, ``"PER"`` or ``"linear"``), ``bic``, ``ll``,
        ``length_scale`` (the period for PER, NaN for linear), ``delta``, ``fsv`` of the
        chosen model; ``bic_se``, ``bic_per``, ``bic_linear`` and ``prob_se``,
        ``prob_per``, ``prob_linear``; and the spatial test ``statistic`` (LLR of the
        best SE model), ``pval``, ``log10_pval`` (as for :func:`spatialde`), ``qval``
        (BH over the genes searched). Written to
        ``adata.var[f"spatialde_model_search_{column}"]`` and ``adata.uns["spatiome"]
        ["spatialde_model_search"]`` unless ``copy=True``.

    References
    ----------
    Svensson, V., Teichmann, S. A. and Stegle, O. (2018). SpatialDE: identification of
    spatially variable genes. Nature Methods 15, 343-346.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> import spatiome as sm
    >>> rng = np.random.default_rng(0)
    >>> xy = np.array([(i, j) for i in range(15) for j in range(15)], dtype=float)
    >>> values = np.column_stack([
    ...     0.5 * xy[:, 0] + rng.normal(0, 0.3, 225),
    ...     np.cos(2 * np.pi * xy[:, 0] / 5) + rng.normal(0, 0.3, 225),
    ... ])
    >>> adata = anndata.AnnData(values, obsm={"spatial": xy})
    >>> adata.var_names = ["trend", "wave"]
    >>> table = sm.svg.spatialde_model_search(adata, layer=None, normalize=None,
    ...                                       genes=["trend", "wave"], copy=True)
    >>> table["model"].tolist()
    ['linear', 'PER']
    """
    check_adata(adata)
    _check_options(
        normalize=normalize,
        fidelity=fidelity,
        chunk_size=chunk_size,
        exact_max_spots=exact_max_spots,
    )
    if adata.n_obs < 4:
        raise SpatiomeInputError(f"SpatialDE needs at least 4 spots, got {adata.n_obs}")
    if adata.n_obs > exact_max_spots:
        raise SpatiomeInputError(
            f"the model search eigendecomposes dense {adata.n_obs} x {adata.n_obs} periodic "
            f"kernels, above exact_max_spots={exact_max_spots}: subsample the spots or raise "
            "exact_max_spots"
        )
    if normalize == "naive_de":
        layer = resolve_counts_layer(adata, layer)
    warn_near_empty(adata, layer=layer, caller="svg.spatialde_model_search")
    workers = resolve_n_jobs(n_jobs)
    coordinates = get_spatial(adata, spatial_key)
    if genes is None:
        genes = _significant_genes(adata, qval_threshold)
    positions = resolve_genes(adata, genes)
    expression, prep = _expression(adata, layer, positions, normalize, total_counts_key)
    scales = _length_scales(coordinates, length_scales, fidelity=fidelity)
    grid = _length_scales(coordinates, periods, fidelity=fidelity)
    size = chunk_size or default_chunk_size(adata.n_obs, expression.n_genes, workers)
    n = adata.n_obs

    se_spectra = _se_spectra(coordinates, scales, "exact", 0, None, explicit_vectors=False)
    se_fits = _fit_kernels(se_spectra, expression, size, workers, client)
    se = _se_table(se_fits, se_spectra, scales, expression, n, fidelity)
    per_spectra = [_periodic_spectrum(coordinates, p) for p in grid]
    per_fits = _fit_kernels(per_spectra, expression, size, workers, client)
    lin_spectrum = _linear_spectrum(coordinates)
    lin_fit = _fit_kernels([lin_spectrum], expression, size, workers, client)[0]

    per_ll = np.column_stack([f[:, _LL] for f in per_fits])
    with np.errstate(invalid="ignore"):
        best_per = np.nanargmax(np.where(np.isnan(per_ll), -np.inf, per_ll), axis=1)
    rows = np.arange(expression.n_genes)
    per_best = np.stack([per_fits[k][i] for i, k in zip(rows, best_per, strict=True)])
    log_n = math.log(n)
    bic = {
        "SE": se["bic"].to_numpy(),
        "PER": -2 * per_best[:, _LL] + N_PARAMETERS["PER"] * log_n,
        "linear": -2 * lin_fit[:, _LL] + N_PARAMETERS["linear"] * log_n,
    }
    stacked = np.column_stack(list(bic.values()))
    constant = expression.constant
    with np.errstate(invalid="ignore"):
        choice = np.argmin(np.where(np.isnan(stacked), np.inf, stacked), axis=1)
        weights = -stacked if fidelity else -stacked / 2
        weights = weights - weights.max(axis=1, keepdims=True)
        probabilities = np.exp(weights)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    models = np.array(list(bic))[choice].astype(object)
    models[constant] = None

    per_delta = np.exp(per_best[:, _LOGDELTA])
    per_gower = np.array([per_spectra[k].gower for k in best_per])
    lin_delta = np.exp(lin_fit[:, _LOGDELTA])
    chosen = {
        "SE": (se["ll"], se["length_scale"], se["delta"], se["fsv"]),
        "PER": (
            per_best[:, _LL],
            np.asarray(grid)[best_per],
            per_delta,
            per_gower / (per_gower + per_delta),
        ),
        "linear": (
            lin_fit[:, _LL],
            np.full(expression.n_genes, np.nan),
            lin_delta,
            lin_spectrum.gower / (lin_spectrum.gower + lin_delta),
        ),
    }
    columns: dict[str, Any] = {"model": models}
    for name, k in (("ll", 0), ("length_scale", 1), ("delta", 2), ("fsv", 3)):
        values = np.full(expression.n_genes, np.nan)
        for index, model in enumerate(bic):
            mask = choice == index
            values[mask] = np.asarray(chosen[model][k], dtype=np.float64)[mask]
        values[constant] = np.nan
        columns[name] = values
    columns["bic"] = np.where(constant, np.nan, stacked[rows, choice])
    for suffix, values in zip(("se", "per", "linear"), stacked.T, strict=True):
        columns[f"bic_{suffix}"] = values
    for suffix, values in zip(("se", "per", "linear"), probabilities.T, strict=True):
        columns[f"prob_{suffix}"] = np.where(constant, np.nan, values)
    table = pd.DataFrame(columns)
    table.insert(0, "statistic", se["statistic"].to_numpy())
    table.insert(1, "pval", se["pval"].to_numpy())
    table.insert(2, "log10_pval", se["log10_pval"].to_numpy())
    add_qvalues(table)
    table.insert(3, "qval", table.pop("qval"))
    table.index = adata.var_names[positions]

    if not copy:
        params = {
            "layer": layer,
            "normalize": normalize,
            "total_counts_key": total_counts_key,
            "spatial_key": spatial_key,
            "fidelity": bool(fidelity),
            "length_scales": [float(v) for v in scales],
            "periods": [float(v) for v in grid],
            "n_spots": int(n),
            **prep,
        }
        write_result(adata, "spatialde_model_search", table, params, positions=positions)
    return table


# --------------------------------------------------------------------------------------
# Input


def _check_options(
    *,
    normalize: str | None,
    fidelity: bool,
    chunk_size: int | None,
    exact_max_spots: int,
    method: str = "exact",
    n_inducing: int = 1,
) -> None:
    if method not in METHODS:
        raise SpatiomeInputError(f"method must be one of {METHODS}, got {method!r}")
    if normalize not in NORMALIZATIONS:
        raise SpatiomeInputError(
            f"normalize must be 'naive_de' (raw counts in) or None (stabilized values in), "
            f"got {normalize!r}"
        )
    for name, value in (("exact_max_spots", exact_max_spots), ("n_inducing", n_inducing)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise SpatiomeInputError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(fidelity, bool | np.bool_):
        raise SpatiomeInputError(f"fidelity must be True or False, got {fidelity!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise SpatiomeInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def _significant_genes(adata: AnnData, qval_threshold: float) -> list[str]:
    if "spatialde_qval" not in adata.var:
        raise SpatiomeInputError(
            "adata.var['spatialde_qval'] is missing: run spatiome.svg.spatialde(adata) first "
            "or pass genes=[...]"
        )
    mask = (adata.var["spatialde_qval"] < qval_threshold).to_numpy()
    if not mask.any():
        raise SpatiomeInputError(
            f"no gene has spatialde_qval < {qval_threshold}: nothing to classify; pass genes= "
            "or raise qval_threshold"
        )
    return list(adata.var_names[mask])


def _expression(
    adata: AnnData,
    layer: str | None,
    positions: np.ndarray,
    normalize: str | None,
    total_counts_key: str | None,
) -> tuple[_Expression, dict[str, Any]]:
    """The tested genes in the affine form of :class:`_Expression`, and what was done."""
    matrix = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    n = adata.n_obs
    if normalize == "naive_de":
        try:
            check_counts(matrix, where=where)
        except SpatiomeInputError as err:
            raise SpatiomeInputError(
                f"{err}. normalize='naive_de' expects raw counts; for values that are already "
                "variance-stabilized pass normalize=None"
            ) from None
        phi = fit_overdispersion(matrix)
        offset = 1.0 / (2.0 * phi)
        if total_counts_key is None:
            totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
            source = "sum over all genes"
        else:
            totals = covariate_matrix(adata, total_counts_key)[:, 0]
            source = f"adata.obs[{total_counts_key!r}]"
        if (totals <= 0).any():
            raise SpatiomeInputError(
                f"{int((totals <= 0).sum())} spots have total count 0 ({source}), so log total "
                "counts is undefined: remove spots without counts first"
            )
        covariate = np.log(totals)
        selected = _select(matrix, positions)
        if sp.issparse(selected):
            selected = sp.csc_matrix(selected, dtype=np.float64, copy=True)
            selected.sum_duplicates()
            selected.data = np.log1p(selected.data / offset)
        else:
            selected = np.log1p(np.asarray(selected, dtype=np.float64) / offset)
        prep = {"phi": phi, "offset": offset, "total_counts": source}
        expression = _affine(selected, covariate, n, intercept=math.log(offset))
    else:
        if total_counts_key is not None:
            raise SpatiomeInputError(
                "total_counts_key is only used with normalize='naive_de'; regress covariates "
                "out with spatiome.pp.regress_out before calling with normalize=None"
            )
        if not sp.issparse(matrix) and not np.issubdtype(matrix.dtype, np.number):
            raise SpatiomeInputError(f"{where} must be numeric, got dtype {matrix.dtype}")
        selected = _select(matrix, positions)
        check_finite(selected, where=where)
        if _looks_like_counts(selected):
            warnings.warn(
                f"{where} holds non-negative integers, which look like raw counts; SpatialDE's "
                "Gaussian model expects variance-stabilized values: pass normalize='naive_de' "
                "or run spatiome.pp.stabilize and spatiome.pp.regress_out first",
                UserWarning,
                stacklevel=3,
            )
        if sp.issparse(selected):
            selected = sp.csc_matrix(selected, dtype=np.float64, copy=True)
            selected.sum_duplicates()
        prep = {}
        expression = _affine(selected, None, n)
    return expression, prep


def _select(matrix: sp.spmatrix | np.ndarray, positions: np.ndarray) -> sp.spmatrix | np.ndarray:
    if positions.size == matrix.shape[1] and np.array_equal(positions, np.arange(matrix.shape[1])):
        return matrix
    return matrix[:, positions]


def _looks_like_counts(matrix: sp.spmatrix | np.ndarray) -> bool:
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    if values.size == 0:
        return False
    if np.issubdtype(values.dtype, np.integer):
        return bool(values.min() >= 0)
    sample = values[:: max(1, values.size // 100_000)]
    return bool(sample.min() >= 0 and np.all(sample == np.round(sample)) and sample.max() > 1)


def _affine(
    matrix: sp.csc_matrix | np.ndarray,
    covariate: np.ndarray | None,
    n: int,
    *,
    intercept: float = 0.0,
) -> _Expression:
    """Per-gene means, regression slopes on the covariate and centred sums of squares."""
    n_genes = matrix.shape[1]
    if sp.issparse(matrix):
        sums = np.asarray(matrix.sum(axis=0)).ravel()
        column_means = sums / n
        # Centred sums of squares in two passes (no cancellation): stored entries, then
        # the zeros, each of which is -mean away from the mean.
        counts = np.diff(matrix.indptr)
        columns = np.repeat(np.arange(n_genes), counts)
        deviations = matrix.data - column_means[columns]
        rss = np.bincount(columns, weights=deviations * deviations, minlength=n_genes)
        rss += (n - counts) * column_means * column_means
        squares = np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel()
    else:
        column_means = matrix.mean(axis=0)
        rss = ((matrix - column_means) ** 2).sum(axis=0)
        squares = (matrix * matrix).sum(axis=0)
    mean = intercept + column_means
    if covariate is None:
        beta = np.zeros(n_genes)
        centred = np.zeros(n)
    else:
        centred = covariate - covariate.mean()
        norm = float(centred @ centred)
        cross = np.asarray(matrix.T @ centred).ravel()
        beta = cross / norm if norm > 0 else np.zeros(n_genes)
        # Regressing out keeps the intercept: y - beta * covariate (not centred).
        mean = mean - beta * covariate.mean()
        rss = np.maximum(rss - beta * cross, 0.0)
    scale = np.maximum(squares / n, 1.0)
    constant = rss <= 1e-24 * n * scale
    return _Expression(
        matrix=matrix,
        column_means=column_means,
        beta=beta,
        covariate=centred,
        mean=mean,
        rss=rss,
        constant=constant,
    )


def _length_scales(
    coordinates: np.ndarray, given: Sequence[float] | None, *, fidelity: bool = False
) -> np.ndarray:
    """SpatialDE's grid: 10 values log-spaced from d_min / 2 to 2 d_max."""
    if given is not None:
        scales = np.atleast_1d(np.asarray(given, dtype=np.float64))
        if scales.ndim != 1 or scales.size == 0 or not np.all(np.isfinite(scales) & (scales > 0)):
            raise SpatiomeInputError(
                f"length scales and periods must be a non-empty list of positive numbers, "
                f"got {given!r}"
            )
        return scales
    limits = _expanded_distance_limits if fidelity else _distance_limits
    smallest, largest = limits(coordinates)
    return np.logspace(np.log10(smallest / 2.0), np.log10(largest * 2.0), N_LENGTH_SCALES)


def _expanded_distance_limits(coordinates: np.ndarray) -> tuple[float, float]:
    """The original's limits: squared distances as |x|^2 + |y|^2 - 2 x.y, values > 1e-8.

    With large coordinates (e.g. micrometres) the rounding of this expansion leaves
    values just above 1e-8 for pairs of identical points, so the smallest "distance" and
    with it the small length scales collapse; ``fidelity=True`` reproduces that.
    """
    norms = (coordinates * coordinates).sum(axis=1)
    smallest = np.inf
    largest = 0.0
    for start in range(0, coordinates.shape[0], 1024):
        block = coordinates[start : start + 1024]
        d2 = -2.0 * (block @ coordinates.T) + (norms[start : start + 1024, None] + norms[None, :])
        d2 = d2[d2 > 1e-8]
        if d2.size:
            smallest = min(smallest, float(d2.min()))
            largest = max(largest, float(d2.max()))
    if not np.isfinite(smallest):
        raise SpatiomeInputError(
            "all spots have the same coordinates: SpatialDE needs distinct positions"
        )
    return math.sqrt(smallest), math.sqrt(largest)


def _distance_limits(coordinates: np.ndarray) -> tuple[float, float]:
    """Smallest and largest distance between spots, ignoring squared distances <= 1e-8."""
    unique = np.unique(coordinates, axis=0)
    if unique.shape[0] < 2:
        raise SpatiomeInputError(
            "all spots have the same coordinates: SpatialDE needs distinct positions"
        )
    tree = cKDTree(unique)
    k = min(8, unique.shape[0])
    distances, _ = tree.query(unique, k=k)
    positive = distances[:, 1:][distances[:, 1:] ** 2 > 1e-8]
    if positive.size == 0:
        raise SpatiomeInputError("all spots lie within 1e-4 of each other: check the coordinates")
    smallest = float(positive.min())
    try:
        hull = unique[ConvexHull(unique).vertices]
    except (QhullError, ValueError):
        hull = unique
    largest2 = 0.0
    for start in range(0, hull.shape[0], 2048):
        block = hull[start : start + 2048]
        d2 = ((block[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
        largest2 = max(largest2, float(d2.max()))
    return smallest, math.sqrt(largest2)


# --------------------------------------------------------------------------------------
# Kernels and their spectra


def _squared_distances(coordinates: np.ndarray) -> np.ndarray:
    # From differences, not |x|^2 + |y|^2 - 2 x.y, which loses digits for large coordinates.
    return cdist(coordinates, coordinates, "sqeuclidean")


def _se_spectra(
    coordinates: np.ndarray,
    scales: np.ndarray,
    mode: str,
    n_inducing: int,
    random_state: Any,
    expression: _Expression | None = None,
    *,
    explicit_vectors: bool = True,
) -> list[_Spectrum]:
    """One spectrum per length scale, in the order of ``scales``."""
    spectra = dict(
        _iter_se_spectra(
            coordinates,
            scales,
            mode,
            n_inducing,
            random_state,
            expression,
            explicit_vectors=explicit_vectors,
        )
    )
    return [spectra[k] for k in range(scales.size)]


def _iter_se_spectra(
    coordinates: np.ndarray,
    scales: np.ndarray,
    mode: str,
    n_inducing: int,
    random_state: Any,
    expression: _Expression | None = None,
    *,
    explicit_vectors: bool = True,
) -> Iterator[tuple[int, _Spectrum]]:
    """``(k, spectrum of scales[k])`` for every length scale, largest first (those have the
    lowest rank, which predicts when the next needs a full eigendecomposition).

    In approximate mode the genes' projections are computed in the same pass over the
    spots, so ``expression`` is needed there. With ``explicit_vectors=False`` the dense
    kernels keep their eigenvectors in factored form (only :meth:`_Spectrum.project`
    works), which is faster when only the projections of the genes are needed.
    """
    for builder in _se_builders(
        coordinates,
        scales,
        mode,
        n_inducing,
        random_state,
        expression,
        explicit_vectors=explicit_vectors,
    ):
        yield builder.index, builder.build()


@dataclass
class _ScaleBuilder:
    """How to obtain the spectrum of ``scales[index]``: ``build()`` computes it."""

    index: int
    scale: float
    build: Callable[[], _Spectrum]


def _se_builders(
    coordinates: np.ndarray,
    scales: np.ndarray,
    mode: str,
    n_inducing: int,
    random_state: Any,
    expression: _Expression | None = None,
    *,
    explicit_vectors: bool = True,
) -> Iterator[_ScaleBuilder]:
    """A :class:`_ScaleBuilder` for every length scale, largest first (see
    :func:`_iter_se_spectra`).

    In exact mode the rank of the kernel grows as the length scale shrinks, and each
    kernel takes the cheapest route that its rank allows: a pivoted Cholesky factor from
    the coordinates (rank up to ``PIVOTED_MAX_FRACTION`` of the spots), LAPACK's pivoted
    Cholesky of the formed kernel (up to ``FACTORED_MAX_FRACTION``), then a tridiagonal
    reduction. The factored spectra are computed while the builders are listed, since
    their ranks predict the route of the next length scale.
    """
    order = np.argsort(scales)[::-1]
    if mode == "lowrank":
        assert expression is not None
        m = min(n_inducing, coordinates.shape[0])
        candidates = _farthest_points(coordinates, m, random_state)
        matrix = expression.matrix
        by_rows = sp.csr_matrix(matrix) if sp.issparse(matrix) else matrix
        for k in order:
            build = functools.partial(
                _nystrom_spectrum, coordinates, candidates, float(scales[k]), expression, by_rows
            )
            yield _ScaleBuilder(int(k), float(scales[k]), build)
        return
    n, dim = coordinates.shape
    limits = {
        "pivoted": max(1, int(PIVOTED_MAX_FRACTION * n)),
        "factored": max(1, int(FACTORED_MAX_FRACTION * n)),
    }
    route = "pivoted"
    squared = None
    previous: tuple[float, int] | None = None
    for k in order:
        scale = float(scales[k])
        spectrum = None
        if previous is not None:
            # The rank grows about like (1 / l)^dim: skip attempts that would overrun.
            predicted = 0.7 * previous[1] * (previous[0] / scale) ** dim
            while route != "dense" and predicted > limits[route]:
                route = "factored" if route == "pivoted" else "dense"
        if route == "pivoted":
            spectrum = _pivoted_spectrum(coordinates, scale, limits["pivoted"])
            route = "pivoted" if spectrum is not None else "factored"
        if route == "factored":
            if squared is None:
                squared = _squared_distances(coordinates)
            spectrum = _factored_spectrum(squared, scale, limits["factored"])
            route = "factored" if spectrum is not None else "dense"
        if spectrum is not None:
            previous = (scale, spectrum.pivoted_rank)
            yield _ScaleBuilder(int(k), scale, functools.partial(_given, spectrum))
            continue
        if squared is None:
            squared = _squared_distances(coordinates)
        build = functools.partial(_dense_spectrum, squared, scale, explicit_vectors)
        yield _ScaleBuilder(int(k), scale, build)


def _given(spectrum: _Spectrum) -> _Spectrum:
    return spectrum


def _se_kernel(squared: np.ndarray, scale: float) -> np.ndarray:
    """``exp(-squared / (2 scale^2))``, entries below ``exp(KERNEL_LOG_CUTOFF)`` set to 0."""
    kernel = np.multiply(squared, -0.5 / (scale * scale))
    np.maximum(kernel, KERNEL_LOG_CUTOFF, out=kernel)
    np.exp(kernel, out=kernel)
    kernel[kernel <= math.exp(KERNEL_LOG_CUTOFF)] = 0.0
    return kernel


def _dense_spectrum(squared: np.ndarray, scale: float, explicit_vectors: bool) -> _Spectrum:
    """Spectrum of the dense kernel ``exp(-squared / (2 scale^2))``."""
    kernel = _se_kernel(squared, scale)
    if explicit_vectors:
        return _eigen_spectrum(kernel, "eigh")
    return _tridiagonal_spectrum(kernel, "tridiagonal")


def _eigen_spectrum(kernel: np.ndarray, name: str) -> _Spectrum:
    """Eigenpairs above the floor of a dense symmetric kernel (overwritten)."""
    n = kernel.shape[0]
    ones_sum = float(kernel.sum())
    trace = float(np.trace(kernel))
    values, vectors = sla.eigh(kernel, overwrite_a=True, check_finite=False, driver="evd")
    keep = values > EIGEN_FLOOR
    vectors = np.ascontiguousarray(vectors[:, keep])
    values = values[keep]
    return _Spectrum(
        vectors=vectors,
        values=values,
        ut1=vectors.sum(axis=0),
        n=n,
        gower=_gower(trace, ones_sum, n),
        decomposition=name,
    )


def _tridiagonal_spectrum(kernel: np.ndarray, name: str) -> _Spectrum:
    """Eigenvalues above the floor of a dense symmetric kernel (overwritten), without U.

    ``K = Q T Q^T`` (``dsytrd``), then the eigenpairs of the tridiagonal T (``dstevd``),
    ``T = V S V^T``, of which those above the floor are kept. ``U = Q V`` is never
    formed: the genes are projected as ``U^T y = V^T (Q^T y)`` (:meth:`_Spectrum.project`).
    These are ``eigh``'s own first steps, so the accuracy is the same; what is saved is
    forming Q and multiplying it by V (``2 n^3`` flops), for ``2 n^2`` per gene.
    """
    n = kernel.shape[0]
    ones_sum = float(kernel.sum())
    trace = float(np.trace(kernel))
    work, info = lapack.dsytrd_lwork(n, lower=1)
    # The transpose of the symmetric kernel is the same matrix in Fortran order, which
    # LAPACK then overwrites instead of copying.
    reduced, diagonal, off_diagonal, tau, info = lapack.dsytrd(
        kernel.T, lower=1, lwork=max(int(work), 1), overwrite_a=1
    )
    if info != 0:  # pragma: no cover - LAPACK argument error
        raise RuntimeError(f"LAPACK dsytrd failed (info={info})")
    # Divide and conquer for all eigenpairs of T beats MRRR for the ones above the floor.
    values, rotation, info = lapack.dstevd(diagonal, off_diagonal, compute_v=1)
    if info != 0:  # pragma: no cover - convergence failure
        raise RuntimeError(f"LAPACK dstevd failed (info={info})")
    householder = _Householder(
        reflectors=np.asfortranarray(reduced[1:, : n - 1]), tau=np.asarray(tau)
    )
    del reduced
    # The eigenvalues ascend: those above the floor are the last columns (a view).
    first = int(np.searchsorted(values, EIGEN_FLOOR, side="right"))
    spectrum = _Spectrum(
        vectors=rotation[:, first:],
        values=values[first:],
        ut1=np.empty(0),
        n=n,
        gower=_gower(trace, ones_sum, n),
        decomposition=name,
        householder=householder,
    )
    spectrum.ut1 = spectrum.project(np.ones((n, 1)))[:, 0]
    return spectrum


def _gower(trace: float, ones_sum: float, n: int) -> float:
    """tr(P K P) / (n - 1) with P the centring matrix."""
    return (trace - ones_sum / n) / (n - 1)


def _pivoted_spectrum(coordinates: np.ndarray, scale: float, limit: int) -> _Spectrum | None:
    """Eigenpairs from a pivoted Cholesky factor, or None if the rank exceeds ``limit``."""
    n = coordinates.shape[0]
    factor, pivots, rank = _pivoted_cholesky(
        np.ascontiguousarray(coordinates), -0.5 / (scale * scale), PIVOTED_TOLERANCE, limit
    )
    if rank >= limit and limit < n:
        return None
    features = factor[:rank].T
    column_sums = features.sum(axis=0)
    gower = _gower(float(n), float(column_sums @ column_sums), n)
    return _factor_spectrum(features, gower, f"pivoted_cholesky(rank={rank})")


def _factored_spectrum(squared: np.ndarray, scale: float, limit: int) -> _Spectrum | None:
    """Eigenpairs from LAPACK's pivoted Cholesky (``dpstrf``, blocked) of the formed kernel,
    with the same stopping rule as :func:`_pivoted_cholesky`; None if the rank reaches
    ``limit``."""
    n = squared.shape[0]
    kernel = _se_kernel(squared, scale)
    gower = _gower(float(np.trace(kernel)), float(kernel.sum()), n)
    # The transpose of the symmetric kernel is the same matrix in Fortran order, which
    # LAPACK then overwrites instead of copying.
    factor, pivots, rank, info = lapack.dpstrf(
        kernel.T, tol=PIVOTED_TOLERANCE, lower=1, overwrite_a=1
    )
    if info < 0:  # pragma: no cover - LAPACK argument error
        raise RuntimeError(f"LAPACK dpstrf failed (info={info})")
    if rank >= limit and limit < n:
        return None
    # P^T K P = L L^T, so K = F F^T with the rows of L put back in the spots' order.
    features = np.empty((n, rank))
    features[pivots - 1] = np.tril(factor[:, :rank])
    del factor, kernel
    return _factor_spectrum(features, gower, f"pivoted_cholesky(rank={rank})")


def _factor_spectrum(features: np.ndarray, gower: float, name: str) -> _Spectrum:
    """Eigenpairs above the floor of ``K = F F^T`` (F: n x r) from the r x r Gram matrix.

    ``F^T F = W S W^T`` gives ``K = U S U^T`` with ``U = F W S^(-1/2)``; the eigenvalues
    carry an absolute error of about machine epsilon times ``|K|``, as those of a dense
    ``eigh`` of K, and only the eigenpairs above the floor (``S > 1e-8``) are formed.
    """
    n, rank = features.shape
    values, rotation = np.linalg.eigh(features.T @ features)
    keep = values > EIGEN_FLOOR
    values = values[keep]
    vectors = features @ (rotation[:, keep] / np.sqrt(values))
    return _Spectrum(
        vectors=vectors,
        values=values,
        ut1=vectors.sum(axis=0),
        n=n,
        gower=gower,
        decomposition=name,
        pivoted_rank=rank,
    )


@numba.njit(cache=True, nogil=True)
def _pivoted_cholesky(coordinates, factor_scale, tolerance, max_rank):  # pragma: no cover
    # Greedy pivoting on the largest residual variance; rows of `factor` are the factors,
    # so K ~ factor[:rank].T @ factor[:rank] and K - that is PSD with diagonal `residual`.
    n, dim = coordinates.shape
    max_rank = min(max_rank, n)
    factor = np.zeros((max_rank, n))
    residual = np.ones(n)
    pivots = np.empty(max_rank, dtype=np.int64)
    rank = 0
    for k in range(max_rank):
        p = 0
        best = -1.0
        for i in range(n):
            if residual[i] > best:
                best = residual[i]
                p = i
        if best <= tolerance:
            break
        pivots[k] = p
        row = factor[k]
        for i in range(n):
            d2 = 0.0
            for a in range(dim):
                diff = coordinates[i, a] - coordinates[p, a]
                d2 += diff * diff
            row[i] = math.exp(factor_scale * d2)
        for j in range(k):
            weight = factor[j, p]
            if weight != 0.0:
                previous = factor[j]
                for i in range(n):
                    row[i] -= weight * previous[i]
        inverse = 1.0 / math.sqrt(best)
        for i in range(n):
            row[i] *= inverse
            residual[i] -= row[i] * row[i]
        residual[p] = 0.0
        rank = k + 1
    return factor, pivots, rank


@numba.njit(cache=True, nogil=True)
def _farthest_order(coordinates, start, m):  # pragma: no cover
    n, dim = coordinates.shape
    order = np.empty(m, dtype=np.int64)
    nearest = np.full(n, np.inf)
    current = start
    for k in range(m):
        order[k] = current
        best = -1.0
        nxt = 0
        for i in range(n):
            d2 = 0.0
            for a in range(dim):
                diff = coordinates[i, a] - coordinates[current, a]
                d2 += diff * diff
            if d2 < nearest[i]:
                nearest[i] = d2
            if nearest[i] > best:
                best = nearest[i]
                nxt = i
        current = nxt
    return order


def _farthest_points(coordinates: np.ndarray, m: int, random_state: Any) -> np.ndarray:
    """``m`` spread-out spots: farthest-point sampling from a spot drawn by random_state."""
    rng = check_random_state(random_state)
    start = int(rng.integers(coordinates.shape[0]))
    order = _farthest_order(np.ascontiguousarray(coordinates), start, m)
    return coordinates[order]


def _nystrom_spectrum(
    coordinates: np.ndarray,
    candidates: np.ndarray,
    scale: float,
    expression: _Expression,
    by_rows: sp.csr_matrix | np.ndarray,
) -> _Spectrum:
    """Eigenpairs of the Nystrom kernel C W^-1 C^T on pivoted inducing points, with U^T y.

    One pass over spot chunks accumulates F^T F, F^T 1 and F^T Y for the features
    ``F = C L^-T`` (``F F^T`` is the Nystrom kernel, ``L L^T = W``); with
    ``F^T F = V diag(S) V^T`` the eigenvectors are ``U = F V / sqrt(S)``, so
    ``U^T y = (V^T F^T y) / sqrt(S)`` without forming U.
    """
    n = coordinates.shape[0]
    factor_scale = -0.5 / (scale * scale)
    factor, pivots, rank = _pivoted_cholesky(
        np.ascontiguousarray(candidates), factor_scale, LOWRANK_TOLERANCE, candidates.shape[0]
    )
    inducing = candidates[pivots[:rank]]
    lower = np.ascontiguousarray(factor[:rank][:, pivots[:rank]].T)  # chol(W), W = K(Z, Z)
    gram = np.zeros((rank, rank))
    column_sums = np.zeros(rank)
    cross = np.zeros((rank, expression.n_genes))
    # Spots per chunk: at most SPOT_CHUNK, and a dense block of at most ~CHUNK_ENTRIES.
    step = max(64, min(SPOT_CHUNK, CHUNK_ENTRIES // max(expression.n_genes, 1)))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        features = _nystrom_features(coordinates[rows], inducing, lower, factor_scale)
        gram += features.T @ features
        column_sums += features.sum(axis=0)
        cross += features.T @ expression.centred_rows(by_rows, rows)
    values, rotation = np.linalg.eigh(gram)
    keep = values > max(EIGEN_FLOOR, values[-1] * 1e-13)
    values, rotation = values[keep], rotation[:, keep]
    projection = rotation / np.sqrt(values)
    return _Spectrum(
        vectors=None,
        values=values,
        ut1=projection.T @ column_sums,
        n=n,
        gower=_gower(float(values.sum()), float(column_sums @ column_sums), n),
        decomposition=f"nystrom(inducing={rank})",
        projections=projection.T @ cross,
    )


def _nystrom_features(
    points: np.ndarray, inducing: np.ndarray, lower: np.ndarray, factor_scale: float
) -> np.ndarray:
    cross = _squared_cross(points, inducing)
    np.exp(cross * factor_scale, out=cross)
    return sla.solve_triangular(lower, cross.T, lower=True, check_finite=False).T


def _squared_cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cdist(a, b, "sqeuclidean")


def _periodic_spectrum(coordinates: np.ndarray, period: float) -> _Spectrum:
    distances = np.sqrt(_squared_distances(coordinates))
    kernel = np.cos(distances * (2.0 * np.pi / period))
    return _eigen_spectrum(kernel, "eigh")


def _linear_spectrum(coordinates: np.ndarray) -> _Spectrum:
    """X X^T / max(X X^T): rank <= dimension, so from the SVD of X."""
    n = coordinates.shape[0]
    largest = -np.inf
    for start in range(0, n, 2048):
        largest = max(largest, float((coordinates[start : start + 2048] @ coordinates.T).max()))
    if not largest > 0:
        raise SpatiomeInputError(
            "the linear kernel X X^T / max(X X^T) is undefined for these coordinates "
            "(no positive inner product): shift them to positive values"
        )
    features = coordinates / math.sqrt(largest)
    left, singular, _ = np.linalg.svd(features, full_matrices=False)
    values = singular * singular
    keep = values > EIGEN_FLOOR
    vectors = np.ascontiguousarray(left[:, keep])
    sums = features.sum(axis=0)
    return _Spectrum(
        vectors=vectors,
        values=values[keep],
        ut1=vectors.sum(axis=0),
        n=n,
        gower=_gower(float((features * features).sum()), float(sums @ sums), n),
        decomposition="svd",
    )


# --------------------------------------------------------------------------------------
# Fitting


def _fit_scales_in_turn(
    builders: Iterator[_ScaleBuilder],
    scales: np.ndarray,
    expression: _Expression,
    chunk_size: int,
    workers: int,
    client: Any | None,
) -> dict[int, tuple[_Spectrum, np.ndarray]]:
    """Each length scale decomposed, then fitted over gene chunks, one after the other.

    The basis of each kernel is released before the next one is decomposed, so at most
    one ``n x n`` kernel is held; progress is reported per length scale.
    """
    by_scale: dict[int, tuple[_Spectrum, np.ndarray]] = {}
    with Progress("svg.spatialde", scales.size, "length scale") as bar:
        for done, builder in enumerate(builders, start=1):
            spectrum = builder.build()
            fit = _fit_kernels([spectrum], expression, chunk_size, workers, client)[0]
            # The table needs only the spectrum's summaries: release the basis now.
            spectrum.release()
            by_scale[builder.index] = (spectrum, fit)
            bar.update(done, f"l = {builder.scale:.4g} ({spectrum.decomposition})")
    return by_scale


def _fit_kernels(
    spectra: list[_Spectrum],
    expression: _Expression,
    chunk_size: int,
    workers: int,
    client: Any | None,
) -> list[np.ndarray]:
    """Per kernel, an (n_genes, _N_FIT) array of each gene's best fit."""
    fits = []
    n_genes = expression.n_genes
    for spectrum in spectra:
        if spectrum.projections is not None:

            def fit_chunk(start, stop, spectrum=spectrum):
                projected = spectrum.projections[:, start:stop]
                return _fit_projected(spectrum, projected, expression, start, stop)

        else:

            def fit_chunk(start, stop, spectrum=spectrum):
                block = expression.centred_columns(start, stop)
                projected = spectrum.project(block)
                norms = np.einsum("ij,ij->j", block, block)
                return _fit_projected(spectrum, projected, expression, start, stop, norms)

        parts = map_gene_chunks(
            fit_chunk, n_genes, chunk_size=chunk_size, n_jobs=workers, client=client
        )
        fits.append(np.vstack(parts) if parts else np.empty((0, _N_FIT)))
    return fits


def _fit_projected(
    spectrum: _Spectrum,
    projected: np.ndarray,
    expression: _Expression,
    start: int,
    stop: int,
    norms: np.ndarray | None = None,
) -> np.ndarray:
    """Best log(delta) of each gene of a chunk, from its projections U^T y (rank x genes).

    ``norms`` are the squared norms of the centred genes (default: from ``expression``).
    """
    n = spectrum.n
    values = spectrum.values
    ut1 = spectrum.ut1
    tail_count = n - spectrum.rank
    if tail_count > 0:
        tail_11 = spectrum.tail_11
        squared = expression.rss[start:stop] if norms is None else norms
        tail_yy = np.maximum(squared - np.einsum("ij,ij->j", projected, projected), 0.0)
        tail_1y = -(ut1 @ projected)
    else:
        # A complete eigenbasis: what is left is rounding, which 1 / (floor + delta) would
        # magnify.
        tail_11 = 0.0
        tail_yy = np.zeros(stop - start)
        tail_1y = np.zeros(stop - start)

    deltas = np.exp(LOG_DELTA_GRID)
    weights = 1.0 / (values[None, :] + deltas[:, None])
    tail_w = 1.0 / (EIGEN_FLOOR + deltas)
    a = weights @ (ut1 * ut1) + tail_w * tail_11
    b = weights @ (ut1[:, None] * projected) + tail_w[:, None] * tail_1y[None, :]
    c = weights @ (projected * projected) + tail_w[:, None] * tail_yy[None, :]
    q = np.maximum(c - b * b / a[:, None], 1e-300)
    logdet = np.log(values[None, :] + deltas[:, None]).sum(axis=1) + tail_count * np.log(
        EIGEN_FLOOR + deltas
    )
    ll = -0.5 * (n * math.log(2 * math.pi) + n * np.log(q / n) + logdet[:, None] + n)
    best = np.argmax(ll, axis=0)

    out = np.empty((stop - start, _N_FIT))
    _refine(
        values,
        ut1,
        np.ascontiguousarray(projected.T),
        float(tail_count),
        tail_11,
        tail_yy,
        tail_1y,
        float(n),
        LOG_DELTA_GRID,
        best,
        ll[best, np.arange(stop - start)],
        LOG_DELTA_TOLERANCE,
        True,
        expression.constant[start:stop],
        out,
    )
    return out


@numba.njit(cache=True, nogil=True)
def _logdet(values, tail_count, delta):  # pragma: no cover
    total = tail_count * math.log(EIGEN_FLOOR + delta)
    for i in range(values.size):
        total += math.log(values[i] + delta)
    return total


@numba.njit(cache=True, nogil=True)
def _profile(values, ut1, z, tail_count, tail_11, tail_yy, tail_1y, n, delta):  # pragma: no cover
    """mu, Q, the weighted sums at power 1 and dLL/dlog(delta), d2LL/dlog(delta)^2.

    With w = 1 / (S + delta) and r = z - u mu: dQ/ddelta = -sum w^2 r^2 and
    d2Q/ddelta2 = 2 sum w^3 r^2 - 2 (sum w^2 u r)^2 / sum w u^2 (mu minimizes Q, so
    its own derivative drops out of dQ).
    """
    a0 = 0.0
    b0 = 0.0
    c0 = 0.0
    a1 = 0.0
    b1 = 0.0
    c1 = 0.0
    a2 = 0.0
    b2 = 0.0
    c2 = 0.0
    t1 = 0.0
    t2 = 0.0
    for i in range(values.size):
        w = 1.0 / (values[i] + delta)
        w2 = w * w
        w3 = w2 * w
        uu = ut1[i] * ut1[i]
        uz = ut1[i] * z[i]
        zz = z[i] * z[i]
        a0 += w * uu
        b0 += w * uz
        c0 += w * zz
        a1 += w2 * uu
        b1 += w2 * uz
        c1 += w2 * zz
        a2 += w3 * uu
        b2 += w3 * uz
        c2 += w3 * zz
        t1 += w
        t2 += w2
    w = 1.0 / (EIGEN_FLOOR + delta)
    w2 = w * w
    w3 = w2 * w
    a0 += w * tail_11
    b0 += w * tail_1y
    c0 += w * tail_yy
    a1 += w2 * tail_11
    b1 += w2 * tail_1y
    c1 += w2 * tail_yy
    a2 += w3 * tail_11
    b2 += w3 * tail_1y
    c2 += w3 * tail_yy
    t1 += tail_count * w
    t2 += tail_count * w2
    mu = b0 / a0
    q = max(c0 - b0 * b0 / a0, 1e-300)
    dq = -(c1 - 2.0 * mu * b1 + mu * mu * a1)
    w2ur = b1 - mu * a1
    d2q = 2.0 * (c2 - 2.0 * mu * b2 + mu * mu * a2) - 2.0 * w2ur * w2ur / a0
    dll = -0.5 * (n * dq / q + t1)
    d2ll = -0.5 * (n * (d2q * q - dq * dq) / (q * q) - t2)
    return mu, q, a0, b0, c0, delta * dll, delta * dll + delta * delta * d2ll


@numba.njit(cache=True, nogil=True)
def _loglik(
    values, ut1, z, tail_count, tail_11, tail_yy, tail_1y, n, log_delta
):  # pragma: no cover
    delta = math.exp(log_delta)
    a = tail_11 / (EIGEN_FLOOR + delta)
    b = tail_1y / (EIGEN_FLOOR + delta)
    c = tail_yy / (EIGEN_FLOOR + delta)
    for i in range(values.size):
        w = 1.0 / (values[i] + delta)
        a += w * ut1[i] * ut1[i]
        b += w * ut1[i] * z[i]
        c += w * z[i] * z[i]
    q = max(c - b * b / a, 1e-300)
    logdet = _logdet(values, tail_count, delta)
    return -0.5 * (n * math.log(2 * math.pi) + n * math.log(q / n) + logdet + n)


@numba.njit(cache=True, nogil=True)
def _refine(
    values,
    ut1,
    projected,
    tail_count,
    tail_11,
    tail_yy,
    tail_1y,
    n,
    grid,
    best,
    best_ll,
    tolerance,
    steps,
    skip,
    out,
):  # pragma: no cover
    # The best grid point brackets the maximum between its neighbours. There, Newton's
    # method on dLL/dlog(delta) = 0, falling back to bisection whenever a step leaves the
    # bracket or the curvature is not negative, keeps the bracket and converges fast.
    last = grid.size - 1
    for g in range(projected.shape[0]):
        if skip[g]:
            out[g, :] = np.nan
            continue
        z = projected[g]
        tyy = tail_yy[g]
        t1y = tail_1y[g]
        k = best[g]
        x = grid[k]
        prof = _profile(values, ut1, z, tail_count, tail_11, tyy, t1y, n, math.exp(x))
        slope = prof[5]
        lo = x
        hi = x
        if slope > 0.0 and k < last:
            hi = grid[k + 1]
        elif slope < 0.0 and k > 0:
            lo = grid[k - 1]
        if hi > lo:
            for _ in range(100):
                curvature = prof[6]
                step = -slope / curvature if curvature < 0.0 else np.inf
                candidate = x + step
                if not (lo < candidate < hi):
                    candidate = 0.5 * (lo + hi)
                moved = abs(candidate - x)
                x = candidate
                prof = _profile(values, ut1, z, tail_count, tail_11, tyy, t1y, n, math.exp(x))
                slope = prof[5]
                if slope > 0.0:
                    lo = x
                else:
                    hi = x
                if moved < tolerance or hi - lo < tolerance:
                    break
        ll = _loglik(values, ut1, z, tail_count, tail_11, tyy, t1y, n, x)
        if best_ll[g] > ll:
            x = grid[k]
            ll = best_ll[g]
            prof = _profile(values, ut1, z, tail_count, tail_11, tyy, t1y, n, math.exp(x))
        out[g, 0] = ll
        out[g, 1] = x
        for j in range(5):
            out[g, 2 + j] = prof[j]
        out[g, 7] = prof[5]
        out[g, 8] = prof[6]
        if steps:
            out[g, 9] = _loglik(values, ut1, z, tail_count, tail_11, tyy, t1y, n, x + 1.0)
            out[g, 10] = _loglik(values, ut1, z, tail_count, tail_11, tyy, t1y, n, x - 1.0)
        else:
            out[g, 9] = np.nan
            out[g, 10] = np.nan


# --------------------------------------------------------------------------------------
# Results


def _se_table(
    fits: list[np.ndarray],
    spectra: list[_Spectrum],
    scales: np.ndarray,
    expression: _Expression,
    n: int,
    fidelity: bool,
) -> pd.DataFrame:
    n_genes = expression.n_genes
    ll_all = np.column_stack([f[:, _LL] for f in fits])
    constant = expression.constant
    choice = np.argmax(np.where(np.isnan(ll_all), -np.inf, ll_all), axis=1)
    rows = np.arange(n_genes)
    best = (
        np.stack([fits[k][i] for i, k in zip(rows, choice, strict=True)])
        if n_genes
        else (np.empty((0, _N_FIT)))
    )
    gower = np.array([spectra[k].gower for k in choice])
    ll = best[:, _LL]
    log_delta = best[:, _LOGDELTA]
    delta = np.exp(log_delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2_null = expression.rss / (n - 1)
        ll_null = -0.5 * (n * np.log(s2_null) + (n - 1) + n * math.log(2 * math.pi))
        llr = ll - ll_null
        fsv = gower / (gower + delta)
        mean = expression.mean
        mu_hat = mean + best[:, _MU]
        if fidelity:
            # y^T (K + delta I)^-1 y / n with y not centred (y = centred + mean).
            s2_t_hat = (best[:, _C0] + 2 * mean * best[:, _B0] + mean**2 * best[:, _A0]) / n
            up = gower / (gower + delta * math.e)
            down = gower / (gower + delta / math.e)
            second = best[:, _LL_UP] - 2 * ll + best[:, _LL_DOWN]
            s2_logdelta = 1.0 / second**2
            s2_fsv = (0.5 * (up - down)) ** 2 * s2_logdelta
            log_delta_se = np.sqrt(s2_logdelta)
            fsv_se = np.sqrt(s2_fsv)
        else:
            s2_t_hat = best[:, _Q] / n
            curvature = -best[:, _D2]
            # At a bound of log(delta) the delta method does not apply (and the curvature
            # there is ~0, its inverse all rounding).
            low, high = LOG_DELTA_BOUNDS
            inside = (log_delta > low + 1e-6) & (log_delta < high - 1e-6)
            variance = np.where((curvature > 0) & inside, 1.0 / curvature, np.nan)
            log_delta_se = np.sqrt(variance)
            fsv_se = gower * delta / (gower + delta) ** 2 * log_delta_se
    # A slightly negative LLR (the null's variance uses n - 1) has p = 1, as chi2.sf gives.
    pval, log10_pval = pvalue_columns(chi2_logsf(np.maximum(llr, 0.0), 1))
    table = pd.DataFrame(
        {
            "statistic": llr,
            "pval": pval,
            "log10_pval": log10_pval,
            "qval": np.nan,
            "qval_storey": _storey_qvalues(pval),
            "llr": llr,
            "ll": ll,
            "ll_null": ll_null,
            "length_scale": scales[choice],
            "delta": delta,
            "log_delta": log_delta,
            "log_delta_se": log_delta_se,
            "fsv": fsv,
            "fsv_se": fsv_se,
            "mu_hat": mu_hat,
            "s2_t_hat": s2_t_hat,
            "bic": -2 * ll + N_PARAMETERS["SE"] * math.log(n),
        }
    )
    table.loc[constant, :] = np.nan
    add_qvalues(table)
    table["qval_storey"] = _storey_qvalues(table["pval"].to_numpy())
    return table


def _storey_qvalues(pvalues: np.ndarray) -> np.ndarray:
    """Storey's q-values as SpatialDE computes them (NaN kept as NaN).

    pi0 is the fraction of p-values above lambda, divided by 1 - lambda, on the grid
    lambda = 0, 0.01, ..., 0.89, smoothed by a cubic spline and read at the last lambda
    (capped at 1); with fewer than 100 tests pi0 = 1 (Benjamini-Hochberg).

    Examples
    --------
    >>> _storey_qvalues(np.array([0.01, 0.02, 0.5])).round(3).tolist()
    [0.03, 0.03, 0.5]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    values = p[finite]
    m = values.size
    if m == 0:
        return out
    if m < 100:
        pi0 = 1.0
    else:
        lambdas = np.arange(0, 0.90, 0.01)
        counts = np.array([(values > lam).sum() for lam in lambdas])
        estimates = counts / (m * (1.0 - lambdas))
        spline = interpolate.splrep(lambdas, estimates, k=3)
        pi0 = min(float(interpolate.splev(lambdas[-1], spline)), 1.0)
    order = np.argsort(values, kind="mergesort")
    ranked = values[order]
    q = pi0 * m * ranked / np.arange(1, m + 1)
    q[-1] = min(q[-1], 1.0)
    q = np.minimum.accumulate(q[::-1])[::-1]
    result = np.empty(m)
    result[order] = q
    out[finite] = result
    return out


__all__ = ["spatialde", "spatialde_model_search"]
