"""SpatialDE's automatic expression histology (AEH): genes grouped into spatial patterns.

Model (Svensson et al. 2018): each standardized gene ``y_g`` (N spots) belongs to one of
``C`` patterns, ``z_g ~ Categorical(pi)``; pattern fields have a squared-exponential
Gaussian-process prior ``mu_k ~ N(0, K)``, ``K = exp(-|x_i - x_j|^2 / (2 l^2)) + 1e-8 I``;
and ``y_g | z_g = k ~ N(mu_k, s2 I)``. A mean-field posterior ``q(z) q(mu)`` is fitted by
coordinate ascent on the evidence lower bound (ELBO).

How it is computed here: everything lives in the eigenbasis of the kernel. With
``K ~ U diag(S) U^T`` (the eigenpairs above the floor ``1e-8``; the other ``N - rank``
eigenvalues are the floor), the fields are ``m_k = U a_k`` with
``a_k = S / (S + s2 / n_k) * U^T ybar_k / n_k`` and every quantity of an iteration
(distances ``|y_g - m_k|^2 = N - 2 (U^T y_g) . a_k + |a_k|^2``, traces, log
determinants) needs only the projections ``U^T Y`` (rank x genes), computed once from
the sparse counts. An iteration costs ``O(rank * genes * C)``, independent of N. In the
``N - rank`` floor directions the posterior mean is the prior's (0): the exact update
would move it by a factor ``1e-8 n_k / s2`` (< 1e-5), which is dropped. The eigenpairs
come from :mod:`spatiome.svg.spatialde`'s kernel machinery: exact (pivoted Cholesky or
a full eigendecomposition) up to ``exact_max_spots``, else a Nystrom approximation on
farthest-point inducing points (no spots x spots matrix, no dense spots x genes matrix).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.special import xlogy

from .._core.random import check_random_state
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    get_matrix,
    get_spatial,
    resolve_counts_layer,
    resolve_genes,
)
from ..svg._result import write_result
from ..svg.spatialde import (
    EIGEN_FLOOR,
    LOWRANK_TOLERANCE,
    SPOT_CHUNK,
    _Expression,
    _expression,
    _farthest_points,
    _looks_like_counts,
    _nystrom_features,
    _pivoted_cholesky,
    _se_spectra,
    _select,
)

__all__ = ["aeh"]

MODES = ("recommended", "fidelity")
NORMALIZATIONS = ("auto", "naive_de", None)
#: The original's jitter on the kernel diagonal (also the eigenvalue floor).
JITTER = 1e-8
#: Fidelity: the original adds this to the unnormalized assignment weights.
RHO_OFFSET = 1e-12
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class _Basis:
    """Eigenpairs of ``K + 1e-8 I`` above the floor and the genes' projections on them."""

    values: np.ndarray  # (rank,) eigenvalues of K + jitter
    projections: np.ndarray  # (rank, n_genes) U^T y of the standardized genes
    n: int
    decomposition: str
    vectors: np.ndarray | None = None  # (n, rank) exact mode
    nystrom: dict[str, Any] = field(default_factory=dict)  # lowrank: inducing, lower, map

    @property
    def rank(self) -> int:
        return int(self.values.size)

    @property
    def tail(self) -> int:
        return self.n - self.rank


@dataclass
class _Fit:
    r: np.ndarray
    a: np.ndarray
    pi: np.ndarray
    s2: float
    elbo: list[float]
    converged: bool


def aeh(
    adata: AnnData,
    n_patterns: int,
    length_scale: float,
    *,
    layer: str | None = None,
    genes: str | Sequence[str] | None = None,
    normalize: str | None = "auto",
    total_counts_key: str | None = None,
    mode: str = "recommended",
    max_iter: int = 100,
    tol: float = 1e-2,
    n_init: int | None = None,
    approximate: bool | None = None,
    exact_max_spots: int = 5000,
    n_inducing: int = 1000,
    qval_threshold: float = 0.05,
    spatial_key: str = "spatial",
    random_state: int | np.random.Generator | None = 0,
    key_added: str = "aeh",
    copy: bool = False,
) -> pd.DataFrame:
    """Group spatially variable genes into spatial patterns (SpatialDE's AEH).

    Genes are standardized (mean 0, population SD 1 over spots: only the shape of the
    co-expression matters) and modelled as noisy copies ``y_g = mu_k + noise`` of one of
    ``n_patterns`` smooth fields with a squared-exponential Gaussian-process prior of
    length scale ``length_scale``. Variational updates, each iteration: the noise
    variance ``s2`` (its exact maximizer, which the original finds by Brent's method),
    the gene assignments ``r_gk`` (softmax of ``log pi_k - |y_g - m_k|^2 / (2 s2)``), the
    pattern fields ``m_k = K (K + s2 / n_k I)^-1 ybar_k`` with ``n_k = sum_g r_gk`` and
    ``ybar_k`` the ``r``-weighted mean gene, and ``pi_k = n_k / G``; until the ELBO
    changes by less than ``tol``.

    Parameters
    ----------
    adata
        Spots x genes with coordinates in ``adata.obsm[spatial_key]``.
    n_patterns
        Number of patterns ``C`` (required, as in the original).
    length_scale
        Length scale ``l`` of the pattern fields, in the unit of the coordinates. A value
        a bit above the median fitted SpatialDE length scale of the genes is typical.
    layer
        Layer to use. ``None`` (default): ``adata.X``; with ``normalize="naive_de"``,
        ``adata.layers["counts"]`` when present, else ``adata.X`` when it holds counts.
    genes
        Genes to group. Default: those with ``adata.var["spatialde_qval"] <
        qval_threshold`` when :func:`spatiome.svg.spatialde` has run, else all genes.
    normalize
        ``"naive_de"``: SpatialDE's preprocessing of raw counts, ``log(y + 1 / (2 phi))``
        with the log total count regressed out (:func:`spatiome.pp.stabilize` and
        :func:`spatiome.pp.regress_out`, applied without densifying the counts);
        ``None``: use the layer as is (already stabilized values); ``"auto"``:
        ``"naive_de"`` when the genes hold non-negative integers, else ``None``.
    total_counts_key
        Column of ``adata.obs`` with each spot's total count for the regression (default:
        the sum over all genes of the layer). Only with SpatialDE's preprocessing.
    mode
        ``"recommended"``: the correct mean-field ELBO and updates: the expected
        distance ``E|y_g - mu_k|^2 = |y_g - m_k|^2 + tr Sigma_k`` (with
        ``Sigma_k = (K^-1 + n_k / s2 I)^-1``) enters the assignments and ``s2``; the
        prior enters through ``log det K`` and the KL divergence of ``q(mu_k)`` from it;
        ``log pi`` is counted once; assignments are an exact softmax; the initial
        assignments are normalized per gene. Every update maximizes this ELBO, so its
        trace never decreases. ``"fidelity"``: reproduce SpatialDE 1.1.3's ELBO and
        updates: the prior term uses ``det(K)`` where ``log det K`` is meant; the
        ``q(mu)`` term is ``-1/2 sum_k (sum_i 1 / S_i + N n_k / s2) + C N log(2 pi) / 2``
        (``S`` the eigenvalues of ``K + 1e-8 I``, floored at ``1e-8``, so each floor
        eigenvalue adds ``-5e7``: this is why the original's ELBO is around ``-1e8``);
        ``sum r log pi`` is counted twice; the posterior covariance of the fields is
        ignored in the assignments and in ``s2``; ``1e-12`` is added to the
        unnormalized assignment weights; the initial assignments are normalized per
        pattern (columns). The fitted patterns usually agree; the ELBO values do not.
    max_iter
        Most iterations (the original: 100).
    tol
        Convergence when ``|delta ELBO| < tol`` (the original: 1e-2 in its wrapper).
    n_init
        Random starts; the fit with the highest final ELBO is kept. Default: 5 in the
        recommended mode, 1 in the fidelity mode. Each start draws, as the original,
        uniform random assignments and standard-normal fields (``N(0, I)`` on every spot)
        and sets ``s2 = 1``.
    approximate
        ``True``: Nystrom kernel on at most ``n_inducing`` inducing points;
        ``False``: exact eigenpairs (``O(N^2)`` memory, up to ``O(N^3)`` time);
        ``None``: approximate beyond ``exact_max_spots`` spots.
    exact_max_spots, n_inducing
        See ``approximate``.
    qval_threshold
        Significance threshold for the default genes.
    spatial_key
        Coordinates in ``adata.obsm``.
    random_state
        Seed or generator for the starts (and the inducing points).
    key_added
        Prefix of the outputs.
    copy
        When True, ``adata`` is left untouched and only the table is returned.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene: ``pattern`` (0 .. C-1, the most probable), ``membership`` (its
        probability) and ``prob_0`` .. ``prob_{C-1}``. Genes that are constant after
        preprocessing are left out (with a warning). Unless ``copy=True``: the columns in
        ``adata.var[f"{key_added}_{column}"]`` (``adata.var[f"{key_added}_pattern"]``),
        the posterior mean fields ``m_k`` in ``adata.obsm[f"{key_added}_patterns"]``
        (spots x C) and the parameters with the ELBO trace, ``s2``, ``pi``, the number of
        iterations and the decomposition used in ``adata.uns["spatiome"][key_added]``.

    Raises
    ------
    SpatiomeInputError
        For invalid arguments, fewer genes than patterns, or missing coordinates.

    References
    ----------
    Svensson, V., Teichmann, S. A. and Stegle, O. (2018). SpatialDE: identification of
    spatially variable genes. Nature Methods 15, 343-346.

    Examples
    --------
    >>> import numpy as np, anndata
    >>> from spatiome.modules.aeh import aeh
    >>> rng = np.random.default_rng(0)
    >>> xy = np.array([(i, j) for i in range(20) for j in range(20)], dtype=float)
    >>> fields = [np.sin(xy[:, 0] / 4), np.exp(-((xy - 10) ** 2).sum(1) / 20)]
    >>> values = np.column_stack([f + rng.normal(0, 0.5, 400) for f in fields for _ in range(4)])
    >>> adata = anndata.AnnData(values, obsm={"spatial": xy})
    >>> table = aeh(adata, n_patterns=2, length_scale=3.0)
    >>> table["pattern"].tolist()[:4] != table["pattern"].tolist()[4:]
    True
    >>> len(set(table["pattern"][:4])), len(set(table["pattern"][4:]))
    (1, 1)
    >>> adata.obsm["aeh_patterns"].shape
    (400, 2)
    """
    check_adata(adata)
    _check_options(n_patterns, length_scale, mode, normalize, max_iter, tol, n_init,
                   approximate, exact_max_spots, n_inducing, key_added)  # fmt: skip
    coordinates = get_spatial(adata, spatial_key)
    n = adata.n_obs
    if n < 4:
        raise SpatiomeInputError(f"AEH needs at least 4 spots, got {n}")
    positions = _default_genes(adata, genes, qval_threshold)
    if normalize == "naive_de":
        layer = resolve_counts_layer(adata, layer)
    matrix = get_matrix(adata, layer)
    if normalize == "auto":
        normalize = "naive_de" if _looks_like_counts(_select(matrix, positions)) else None
    expression, prep = _expression(adata, layer, positions, normalize, total_counts_key)
    keep = ~expression.constant
    if not keep.all():
        dropped = list(adata.var_names[positions[~keep]][:5])
        warnings.warn(
            f"{int((~keep).sum())} genes are constant after preprocessing and are left out "
            f"(e.g. {dropped})",
            UserWarning,
            stacklevel=2,
        )
        positions = positions[keep]
        expression, prep = _expression(adata, layer, positions, normalize, total_counts_key)
    n_genes = positions.size
    if n_genes < n_patterns:
        raise SpatiomeInputError(
            f"AEH groups {n_genes} genes into n_patterns={n_patterns} patterns: pass more "
            "genes or fewer patterns"
        )
    scale = np.sqrt(expression.rss / n)
    lowrank = n > exact_max_spots if approximate is None else bool(approximate)
    rng = check_random_state(random_state)
    n_starts = (5 if mode == "recommended" else 1) if n_init is None else int(n_init)
    fidelity = mode == "fidelity"

    # Every start's random fields, projected once (one pass over the spots).
    starts_r = [rng.uniform(size=(n_genes, n_patterns)) for _ in range(n_starts)]
    fields0 = rng.standard_normal((n, n_patterns * n_starts))
    if lowrank:
        basis, u_fields0 = _lowrank_basis(
            coordinates, float(length_scale), n_inducing, expression, scale, fields0, rng
        )
    else:
        basis = _exact_basis(coordinates, float(length_scale), expression, scale)
        u_fields0 = basis.vectors.T @ fields0
    cross0 = _gene_products(expression, scale, fields0)

    fits = []
    for start in range(n_starts):
        cols = slice(start * n_patterns, (start + 1) * n_patterns)
        init = (
            cross0[:, cols],
            np.einsum("ij,ij->j", fields0[:, cols], fields0[:, cols]),
            u_fields0[:, cols],
        )
        fits.append(_fit(basis, starts_r[start], init, fidelity, max_iter, tol))
    finals = [f.elbo[-1] for f in fits]
    best = fits[int(np.nanargmax(finals))]

    names = adata.var_names[positions]
    table = pd.DataFrame(
        {"pattern": best.r.argmax(axis=1).astype(np.int64), "membership": best.r.max(axis=1)},
        index=names,
    )
    for k in range(n_patterns):
        table[f"prob_{k}"] = best.r[:, k]
    if not copy:
        adata.obsm[f"{key_added}_patterns"] = _fields(basis, coordinates, best.a)
        params = {
            "n_patterns": int(n_patterns),
            "length_scale": float(length_scale),
            "layer": layer,
            "normalize": normalize,
            "total_counts_key": total_counts_key,
            "mode": mode,
            "max_iter": int(max_iter),
            "tol": float(tol),
            "n_init": n_starts,
            "approximate": lowrank,
            "decomposition": basis.decomposition,
            "rank": basis.rank,
            "spatial_key": spatial_key,
            "random_state": random_state if isinstance(random_state, int | None) else "Generator",
            "elbo": [float(v) for v in best.elbo],
            "elbo_starts": [float(v) for v in finals],
            "n_iter": len(best.elbo) - 1,
            "converged": bool(best.converged),
            "s2": float(best.s2),
            "pi": [float(v) for v in best.pi],
            **prep,
        }
        write_result(adata, key_added, table, params, positions=positions)
    return table


# --------------------------------------------------------------------------------------
# Input


def _check_options(n_patterns, length_scale, mode, normalize, max_iter, tol, n_init,
                   approximate, exact_max_spots, n_inducing, key_added) -> None:  # fmt: skip
    for name, value, low in (
        ("n_patterns", n_patterns, 1),
        ("max_iter", max_iter, 1),
        ("exact_max_spots", exact_max_spots, 1),
        ("n_inducing", n_inducing, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise SpatiomeInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if n_init is not None and (
        isinstance(n_init, bool) or not isinstance(n_init, numbers.Integral) or n_init < 1
    ):
        raise SpatiomeInputError(f"n_init must be a positive integer or None, got {n_init!r}")
    for name, value in (("length_scale", length_scale), ("tol", tol)):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not (np.isfinite(value) and value > 0)
        ):
            raise SpatiomeInputError(f"{name} must be a positive number, got {value!r}")
    if mode not in MODES:
        raise SpatiomeInputError(f"mode must be one of {MODES}, got {mode!r}")
    if normalize not in NORMALIZATIONS:
        raise SpatiomeInputError(
            f"normalize must be 'auto', 'naive_de' (raw counts in) or None (stabilized "
            f"values in), got {normalize!r}"
        )
    if approximate is not None and not isinstance(approximate, bool | np.bool_):
        raise SpatiomeInputError(f"approximate must be True, False or None, got {approximate!r}")
    if not isinstance(key_added, str) or not key_added:
        raise SpatiomeInputError(f"key_added must be a non-empty string, got {key_added!r}")


def _default_genes(adata: AnnData, genes, qval_threshold: float) -> np.ndarray:
    if genes is not None:
        return resolve_genes(adata, genes)
    if "spatialde_qval" not in adata.var:
        return np.arange(adata.n_vars)
    mask = (adata.var["spatialde_qval"] < qval_threshold).to_numpy()
    if not mask.any():
        raise SpatiomeInputError(
            f"no gene has spatialde_qval < {qval_threshold}: there are no spatial genes to "
            "group; pass genes= or raise qval_threshold"
        )
    return np.flatnonzero(mask)


# --------------------------------------------------------------------------------------
# Kernel eigenbasis


def _gene_products(expression: _Expression, scale: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """``Y^T B`` for the standardized genes ``Y`` and a dense (spots, k) ``B``."""
    matrix = expression.matrix
    raw = np.asarray(matrix.T @ fields)
    raw -= np.outer(expression.column_means, fields.sum(axis=0))
    raw -= np.outer(expression.beta, expression.covariate @ fields)
    return raw / scale[:, None]


def _exact_basis(
    coordinates: np.ndarray, length_scale: float, expression: _Expression, scale: np.ndarray
) -> _Basis:
    spectrum = _se_spectra(coordinates, np.array([length_scale]), "exact", 0, None)[0]
    vectors = spectrum.vectors
    return _Basis(
        values=spectrum.values + JITTER,
        projections=_gene_products(expression, scale, vectors).T,
        n=coordinates.shape[0],
        decomposition=spectrum.decomposition,
        vectors=vectors,
    )


def _lowrank_basis(
    coordinates: np.ndarray,
    length_scale: float,
    n_inducing: int,
    expression: _Expression,
    scale: np.ndarray,
    fields0: np.ndarray,
    rng: np.random.Generator,
) -> tuple[_Basis, np.ndarray]:
    """Nystrom eigenbasis ``U = F V / sqrt(S)`` (``F^T F = V S V^T``), with ``U^T Y``.

    The same construction as SpatialDE's approximate mode (pivoted inducing points among
    farthest-point samples, features ``F = K(spots, Z) L^-T``); the map from features to
    the eigenbasis is kept so that the fitted fields can be evaluated on every spot.
    """
    n = coordinates.shape[0]
    factor_scale = -0.5 / (length_scale * length_scale)
    candidates = _farthest_points(coordinates, min(n_inducing, n), rng)
    factor, pivots, rank = _pivoted_cholesky(
        np.ascontiguousarray(candidates), factor_scale, LOWRANK_TOLERANCE, candidates.shape[0]
    )
    inducing = candidates[pivots[:rank]]
    lower = np.ascontiguousarray(factor[:rank][:, pivots[:rank]].T)
    matrix = expression.matrix
    by_rows = sp.csr_matrix(matrix) if sp.issparse(matrix) else np.asarray(matrix)
    gram = np.zeros((rank, rank))
    sums = np.zeros(rank)
    cov = np.zeros(rank)
    cross = np.zeros((rank, expression.n_genes))
    cross_fields = np.zeros((rank, fields0.shape[1]))
    for start in range(0, n, SPOT_CHUNK):
        rows = slice(start, min(start + SPOT_CHUNK, n))
        features = _nystrom_features(coordinates[rows], inducing, lower, factor_scale)
        gram += features.T @ features
        sums += features.sum(axis=0)
        cov += features.T @ expression.covariate[rows]
        cross += np.asarray(by_rows[rows].T @ features).T
        cross_fields += features.T @ fields0[rows]
    cross -= np.outer(sums, expression.column_means) + np.outer(cov, expression.beta)
    values, rotation = np.linalg.eigh(gram)
    keep = values > max(EIGEN_FLOOR, values[-1] * 1e-13)
    values, rotation = values[keep], rotation[:, keep]
    feature_map = rotation / np.sqrt(values)
    basis = _Basis(
        values=values + JITTER,
        projections=(feature_map.T @ cross) / scale[None, :],
        n=n,
        decomposition=f"nystrom(inducing={rank})",
        nystrom={"inducing": inducing, "lower": lower, "map": feature_map, "scale": factor_scale},
    )
    return basis, feature_map.T @ cross_fields


def _fields(basis: _Basis, coordinates: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Posterior mean fields ``U a`` on every spot, (spots, C)."""
    if basis.vectors is not None:
        return basis.vectors @ coefficients
    info = basis.nystrom
    weights = info["map"] @ coefficients
    out = np.empty((basis.n, coefficients.shape[1]))
    for start in range(0, basis.n, SPOT_CHUNK):
        rows = slice(start, min(start + SPOT_CHUNK, basis.n))
        features = _nystrom_features(
            coordinates[rows], info["inducing"], info["lower"], info["scale"]
        )
        out[rows] = features @ weights
    return out


# --------------------------------------------------------------------------------------
# Variational inference


def _fit(
    basis: _Basis,
    r0: np.ndarray,
    init: tuple[np.ndarray, np.ndarray, np.ndarray],
    fidelity: bool,
    max_iter: int,
    tol: float,
) -> _Fit:
    n = basis.n
    values = basis.values
    z = basis.projections
    n_genes, n_patterns = r0.shape
    tail = basis.tail
    log_values = np.log(values)
    # K^-1 sum and det(K) of the fidelity ELBO (eigenvalues floored at 1e-8 as the original).
    inverse_sum = float((1.0 / values).sum()) + tail / JITTER
    with np.errstate(over="ignore", under="ignore"):
        det = math.exp(min(float(log_values.sum()) + tail * math.log(JITTER), 709.0))

    cross, mm, u_fields = init
    # m^T K^-1 m, with the random start's component outside the eigenbasis at the floor.
    outside = np.maximum(mm - np.einsum("ij,ij->j", u_fields, u_fields), 0.0)
    quad = np.einsum("ij,ij->j", u_fields * u_fields, 1.0 / values[:, None]) + outside / JITTER
    if fidelity:
        r = r0 / r0.sum(axis=0)
    else:
        r = r0 / r0.sum(axis=1, keepdims=True)
    pi = r.sum(axis=0) / n_genes
    s2 = 1.0
    a = np.zeros((basis.rank, n_patterns))
    sigma = (r.sum(axis=0), s2)  # q(mu) covariance (n_k, s2) of the recommended mode

    def distances() -> np.ndarray:
        return n - 2.0 * cross + mm[None, :]

    def posterior(counts: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
        """tr Sigma_k and the variance part of KL(q(mu_k) || p(mu_k))."""
        ratio = noise / (noise + counts[None, :] * values[:, None])  # v / lambda
        tail_ratio = noise / (noise + counts * JITTER)
        trace = (ratio * values[:, None]).sum(axis=0) + tail * tail_ratio * JITTER
        kl = 0.5 * ((ratio - 1.0 - np.log(ratio)).sum(axis=0)) + 0.5 * tail * (
            tail_ratio - 1.0 - np.log(tail_ratio)
        )
        return trace, kl

    def elbo() -> float:
        d = distances()
        counts = r.sum(axis=0)
        with np.errstate(divide="ignore"):
            log_pi = np.log(pi)
        prior_z = float(xlogy(counts, pi).sum()) if not fidelity else float(counts @ log_pi)
        entropy = -float(xlogy(r, r).sum())
        if fidelity:
            likelihood = prior_z - float(
                (r * (0.5 * n * math.log(s2) + d / (2.0 * s2) + 0.5 * n * _LOG_2PI)).sum()
            )
            prior_mu = -0.5 * (n_patterns * det + float(quad.sum()) + n_patterns * n * _LOG_2PI)
            q_mu = 0.5 * (n_patterns * inverse_sum + n * float(counts.sum()) / s2)
            q_mu -= 0.5 * n_patterns * n * _LOG_2PI
            return likelihood + prior_z + prior_mu + entropy - q_mu
        trace, kl = posterior(*sigma)
        likelihood = -float(
            (r * (0.5 * n * (_LOG_2PI + math.log(s2)) + (d + trace[None, :]) / (2.0 * s2))).sum()
        )
        return likelihood + prior_z + entropy - float((kl + 0.5 * quad).sum())

    trace_elbo = [elbo()]
    converged = False
    for _ in range(max_iter):
        d = distances()
        extra = 0.0 if fidelity else posterior(*sigma)[0][None, :]
        s2 = float((r * (d + extra)).sum() / (n * r.sum()))
        with np.errstate(divide="ignore"):
            log_rho = np.log(pi)[None, :] - (d + extra) / (2.0 * s2)
        log_rho -= log_rho.max(axis=1, keepdims=True)
        rho = np.exp(log_rho)
        if fidelity:
            rho += RHO_OFFSET
        r = rho / rho.sum(axis=1, keepdims=True)
        counts = r.sum(axis=0)
        b = z @ r
        a = values[:, None] * b / (counts[None, :] * values[:, None] + s2)
        cross = z.T @ a
        mm = np.einsum("ij,ij->j", a, a)
        quad = np.einsum("ij,ij->j", a * a, 1.0 / values[:, None])
        sigma = (counts, s2)
        pi = counts / n_genes
        trace_elbo.append(elbo())
        if abs(trace_elbo[-1] - trace_elbo[-2]) < tol:
            converged = True
            break
    return _Fit(r=r, a=a, pi=pi, s2=s2, elbo=trace_elbo, converged=converged)
