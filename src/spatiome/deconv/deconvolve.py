"""Cell-type fractions of each spot from a single-cell reference."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.progress import Progress
from .._core.random import check_random_state
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    resolve_counts_layer,
)
from ._irls import Penalty, fit_weights
from ._pln import log_probability, pln_table
from ._solvers import nnls_shared
from .reference import reference_signatures

logger = logging.getLogger("spatiome")

METHODS = ("nnls", "rctd", "nb_vi")
MODES = ("full", "doublet")
_MIN_SHARED_GENES = 10
_SIGMA_BOUNDS = (0.05, 1.5)
_SIGMA_SPOTS = 300
_SIGMA_ROUNDS = 4  # at most, of fitting the sampled spots then maximizing over sigma
_SIGMA_ENTRIES = 200_000  # spots x genes used to choose sigma
# RCTD's decision rules for doublet mode (negative log likelihood differences)
DOUBLET_THRESHOLD = 25.0
CONFIDENCE_THRESHOLD = 5.0
_CANDIDATE_SHARE = 0.01
_MAX_CANDIDATES = 6


@dataclass
class _Inputs:
    counts: sp.csr_matrix  # spots with counts x shared genes
    profiles: np.ndarray  # shared genes x types, expected counts per cell
    types: list[str]
    genes: pd.Index
    kept: np.ndarray  # positions of the spots that were fitted


def deconvolve(
    adata_sp: AnnData,
    reference: pd.DataFrame | AnnData,
    *,
    method: str = "rctd",
    labels: str = "cell_type",
    layer: str | None = None,
    mode: str = "full",
    smoothing: float = 0.0,
    n_neighbors: int = 6,
    unit: str = "cells",
    n_epochs: int | None = None,
    batch_size: int = 1024,
    cells_per_spot: float = 8.0,
    random_state: int | np.random.Generator | None = 0,
    key_added: str = "cell_type_fractions",
) -> pd.DataFrame:
    """Estimate the fraction of each cell type in every spot.

    Methods (``method``):

    - ``"nnls"``: non-negative least squares of the spot's counts on the signatures; the
      baseline that half the published methods fail to beat.
    - ``"rctd"``: RCTD's Poisson-log-normal model. Counts are Poisson with rate
      ``sum_t w_t A_gt`` times a log-normal per-gene random effect of scale ``sigma``;
      ``A`` is the signature matrix multiplied by a per-gene platform effect estimated
      from the pooled spots (observed over predicted pseudo-bulk), ``sigma`` is chosen by
      maximum likelihood on up to 300 spots (at most
      200,000 spot x gene entries, at least 30 spots), and each spot's weights are fitted by
      iteratively reweighted non-negative quadratic programs. The likelihood is tabulated
      per ``sigma`` where the fit needs it; the 8 most recently used tables (8 MB each at
      most) are kept for later calls in the process. ``mode="doublet"`` (for
      single-cell-resolution beads or cells) fits every singlet and pair of candidate
      types and classifies each spot as ``singlet``, ``doublet_certain``,
      ``doublet_uncertain`` or ``reject`` by RCTD's rules.
    - ``"nb_vi"``: a cell2location-style negative binomial model (per-spot cell
      abundances with a hierarchical gamma prior, per-gene platform effect, detection
      efficiency per spot, additive background, gene-wise overdispersion) fitted by
      minibatch variational inference with torch on the CPU (``spatiome[deep]``).

    ``smoothing > 0`` (``"nnls"`` and ``"rctd"``) adds a conditional autoregressive
    prior in the style of CARD: each spot's weights are pulled towards its
    ``n_neighbors`` spatial neighbours' fractions scaled to its own total, with a
    strength relative to the spot's own curvature (1 weighs the neighbours like the
    data), solved by a few rounds of Jacobi updates.

    Progress goes to the ``"spatiome"`` logger at INFO level: spots fitted (``"nnls"``,
    ``"rctd"``), rounds of the choice of sigma (``"rctd"``), smoothing rounds, spot x
    candidate fits of doublet mode, and epochs with the loss (``"nb_vi"``).

    Parameters
    ----------
    adata_sp
        Spots x genes raw counts; coordinates in ``obsm["spatial"]`` when smoothing.
    reference
        Signatures (genes x cell types, from :func:`reference_signatures`) or a labelled
        single-cell AnnData, turned into signatures with the default settings.
    method
        ``"nnls"``, ``"rctd"`` or ``"nb_vi"``.
    labels
        Cell-type column when ``reference`` is an AnnData.
    layer
        Layer of ``adata_sp`` with raw counts. ``None`` (default): ``layers["counts"]`` when
        present, else ``X`` when it holds counts.
    mode
        ``"full"`` (any number of types per spot) or ``"doublet"`` (``"rctd"`` only).
    smoothing
        Strength of the spatial prior (0 turns it off).
    n_neighbors
        Spatial neighbours of the smoothing graph.
    unit
        ``"cells"``: fractions of cells; ``"counts"``: fractions of the spot's counts
        (RCTD's weights), i.e. cells weighted by their type's library size.
    n_epochs, batch_size, cells_per_spot
        ``"nb_vi"`` only: passes over the spots (``None``: enough for about 3,000
        optimizer steps, at least 100 passes), spots per minibatch, and the prior mean
        number of cells in a spot (cell2location's ``N_cells_per_location``).
    random_state
        Seed (spots used to choose sigma, ``"nb_vi"`` initialization and minibatches).
    key_added
        ``adata_sp.obsm[key_added]`` receives the fractions and
        ``obsm[key_added + "_abundance"]`` the fitted weights (cells x relative depth).

    Returns
    -------
    pandas.DataFrame
        Spots x cell types fractions (rows sum to 1; NaN for spots with no counts in the
        shared genes). Parameters, genes used, sigma and the platform effect go to
        ``adata_sp.uns["spatiome"][key_added]``; doublet mode adds ``obs`` columns
        ``{key_added}_class``, ``_first_type`` and ``_second_type``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> rng = np.random.default_rng(0)
    >>> profiles = rng.gamma(0.4, 5.0, size=(3, 80))
    >>> sc = anndata.AnnData(rng.poisson(profiles[np.repeat(np.arange(3), 30)]).astype(float),
    ...                      obs=pd.DataFrame({"cell_type": np.repeat(["A", "B", "C"], 30)}))
    >>> truth = rng.dirichlet(np.ones(3), size=40)
    >>> spots = anndata.AnnData(rng.poisson(5 * truth @ profiles).astype(float))
    >>> fractions = deconvolve(spots, sc, method="rctd")
    >>> bool(np.abs(fractions.to_numpy() - truth).mean() < 0.1)
    True
    """
    _check_options(method, mode, smoothing, unit, n_neighbors)
    check_adata(adata_sp, name="adata_sp")
    signatures = _signatures(reference, labels)
    inputs = _inputs(adata_sp, signatures, layer)
    rng = check_random_state(random_state)
    info: dict = {
        "method": method,
        "mode": mode,
        "smoothing": float(smoothing),
        "unit": unit,
        "n_genes": int(inputs.genes.size),
        "genes": inputs.genes.tolist(),
    }
    neighbours = _neighbour_average(adata_sp, inputs.kept, n_neighbors) if smoothing else None
    extra_obs: dict[str, np.ndarray] = {}
    if method == "nnls":
        with Progress("deconv.nnls", inputs.counts.shape[0], "spot") as progress:
            weights = _nnls(inputs, progress=progress)
        if neighbours is not None:
            weights = _smooth_nnls(inputs, neighbours, smoothing, weights)
    elif method == "rctd":
        weights, extra_obs = _rctd(inputs, neighbours, smoothing, mode, rng, info)
    else:
        from ._nb_vi import fit_nb_vi

        weights, vi_info = fit_nb_vi(
            inputs.counts,
            inputs.profiles,
            n_epochs=n_epochs,
            batch_size=batch_size,
            cells_per_spot=cells_per_spot,
            rng=rng,
        )
        info.update(vi_info)
    return _store(adata_sp, inputs, weights, unit, key_added, info, extra_obs)


def _check_options(method, mode, smoothing, unit, n_neighbors) -> None:
    if method not in METHODS:
        raise SpatiomeInputError(f"method must be one of {METHODS}, got {method!r}")
    if mode not in MODES:
        raise SpatiomeInputError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "doublet" and method != "rctd":
        raise SpatiomeInputError("mode='doublet' is RCTD's: use method='rctd'")
    if not np.isfinite(smoothing) or smoothing < 0:
        raise SpatiomeInputError(f"smoothing must be >= 0, got {smoothing!r}")
    if smoothing > 0 and method == "nb_vi":
        raise SpatiomeInputError("smoothing is available for 'nnls' and 'rctd', not 'nb_vi'")
    if smoothing > 0 and mode == "doublet":
        raise SpatiomeInputError("smoothing applies to mode='full' only")
    if unit not in ("cells", "counts"):
        raise SpatiomeInputError(f"unit must be 'cells' or 'counts', got {unit!r}")
    if not isinstance(n_neighbors, int | np.integer) or n_neighbors < 1:
        raise SpatiomeInputError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")


def _signatures(reference, labels) -> pd.DataFrame:
    if isinstance(reference, AnnData):
        return reference_signatures(reference, labels)
    if not isinstance(reference, pd.DataFrame):
        raise SpatiomeInputError(
            "reference must be a genes x cell types DataFrame (deconv.reference_signatures) "
            f"or a labelled AnnData, got {type(reference).__name__}"
        )
    values = reference.to_numpy(dtype=np.float64)
    if reference.shape[1] < 2 or not np.isfinite(values).all() or (values < 0).any():
        raise SpatiomeInputError(
            "reference signatures need >= 2 cell-type columns of finite, non-negative values"
        )
    if not reference.index.is_unique or not reference.columns.is_unique:
        raise SpatiomeInputError("reference signatures have duplicated genes or cell types")
    return reference


def _inputs(adata_sp: AnnData, signatures: pd.DataFrame, layer: str | None) -> _Inputs:
    matrix = get_matrix(adata_sp, resolve_counts_layer(adata_sp, layer))
    check_counts(matrix, where="the spatial counts")
    if not adata_sp.var_names.is_unique:
        raise SpatiomeInputError("adata_sp has duplicated gene names: make var_names unique")
    position = adata_sp.var_names.get_indexer(signatures.index)
    shared = position >= 0
    if shared.sum() < _MIN_SHARED_GENES:
        raise SpatiomeInputError(
            f"only {int(shared.sum())} of the {signatures.shape[0]} reference genes are in "
            f"adata_sp (e.g. reference {signatures.index[:3].tolist()}, spatial "
            f"{adata_sp.var_names[:3].tolist()}): use the same gene identifiers in both"
        )
    counts = sp.csr_matrix(matrix, dtype=np.float64)[:, position[shared]]
    profiles = signatures.to_numpy(dtype=np.float64)[shared]
    seen = np.asarray(counts.sum(axis=0)).ravel() > 0
    expressed = profiles.sum(axis=1) > 0
    genes = seen & expressed
    counts, profiles = counts[:, genes].tocsr(), profiles[genes]
    if (profiles.sum(axis=0) == 0).any():
        empty = [t for t, s in zip(signatures.columns, profiles.sum(axis=0), strict=True) if s == 0]
        raise SpatiomeInputError(f"cell types {empty} have no counts in the shared genes")
    totals = np.asarray(counts.sum(axis=1)).ravel()
    kept = np.flatnonzero(totals > 0)
    if kept.size == 0:
        raise SpatiomeInputError("no spot has counts in the genes shared with the reference")
    if kept.size < adata_sp.n_obs:
        logger.warning(
            "%d spots have no counts in the shared genes; their fractions are NaN",
            adata_sp.n_obs - kept.size,
        )
    return _Inputs(
        counts[kept],
        profiles,
        [str(c) for c in signatures.columns],
        signatures.index[shared][genes],
        kept,
    )


def _neighbour_average(adata_sp: AnnData, kept: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    from ..graph import build_graph, row_normalize

    subset = AnnData(obs=pd.DataFrame(index=adata_sp.obs_names[kept]))
    if "spatial" not in adata_sp.obsm:
        raise SpatiomeInputError("smoothing needs coordinates in adata_sp.obsm['spatial']")
    subset.obsm["spatial"] = np.asarray(adata_sp.obsm["spatial"])[kept]
    connectivities, _, _ = build_graph(
        subset, method="knn", n_neighbors=min(n_neighbors, kept.size - 1)
    )
    return row_normalize(connectivities)


def _smoothing_target(weights: np.ndarray, neighbours: sp.csr_matrix) -> np.ndarray:
    totals = weights.sum(axis=1, keepdims=True)
    fractions = weights / np.maximum(totals, 1e-300)
    return (neighbours @ fractions) * totals


_SMOOTHING_ROUNDS = 10


def _nnls(inputs: _Inputs, chunk: int = 8192, progress: Progress | None = None) -> np.ndarray:
    """NNLS weights of every spot, in chunks of ``chunk`` spots, each reported to
    ``progress``."""
    gram = inputs.profiles.T @ inputs.profiles
    rhs = np.asarray(inputs.counts @ inputs.profiles)
    parts = []
    for lo in range(0, rhs.shape[0], chunk):
        parts.append(nnls_shared(gram, rhs[lo : lo + chunk]))
        if progress is not None:
            progress.update(min(lo + chunk, rhs.shape[0]))
    return np.vstack(parts)


def _smooth_nnls(
    inputs: _Inputs, neighbours: sp.csr_matrix, smoothing: float, weights: np.ndarray
) -> np.ndarray:
    """Jacobi rounds of NNLS with the spatial prior, starting from ``weights``."""
    gram = inputs.profiles.T @ inputs.profiles
    rhs = np.asarray(inputs.counts @ inputs.profiles)
    scale = smoothing * np.trace(gram) / gram.shape[0]
    with Progress("deconv.nnls smoothing", _SMOOTHING_ROUNDS, "round") as progress:
        for round_ in range(_SMOOTHING_ROUNDS):
            target = _smoothing_target(weights, neighbours)
            weights = nnls_shared(gram + scale * np.eye(gram.shape[0]), rhs + scale * target)
            progress.update(round_ + 1)
    return weights


# ------------------------------------------------------------------------------ RCTD


def _rctd(inputs: _Inputs, neighbours, smoothing, mode, rng, info):
    profiles = _platform_adjusted(inputs, info)
    start = _nnls(_Inputs(inputs.counts, profiles, inputs.types, inputs.genes, inputs.kept))
    start = np.maximum(start, 1e-3 * start.sum(axis=1, keepdims=True) / start.shape[1] + 1e-8)
    sigma = _choose_sigma(inputs.counts, profiles, start, rng)
    info["sigma"] = sigma
    with Progress("deconv.rctd", inputs.counts.shape[0], "spot") as progress:
        table = pln_table(sigma)
        weights, _ = fit_weights(inputs.counts, profiles, table, start, progress=progress)
    if neighbours is not None:
        strength = np.full(weights.shape[0], float(smoothing))
        with Progress("deconv.rctd smoothing", _SMOOTHING_ROUNDS, "round") as progress:
            for round_ in range(_SMOOTHING_ROUNDS):
                penalty = Penalty(strength, _smoothing_target(weights, neighbours))
                weights, _ = fit_weights(
                    inputs.counts, profiles, table, weights, penalty=penalty, max_iter=3
                )
                progress.update(round_ + 1)
    if mode == "full":
        return weights, {}
    return _doublet_mode(inputs.counts, profiles, table, weights, inputs.types)


def _platform_adjusted(inputs: _Inputs, info: dict) -> np.ndarray:
    """Signatures times the per-gene platform effect (observed / predicted pseudo-bulk)."""
    bulk = np.asarray(inputs.counts.sum(axis=0)).ravel()
    table = pln_table(0.0)
    start = np.full((1, inputs.profiles.shape[1]), bulk.sum() / inputs.profiles.sum())
    bulk_weights, _ = fit_weights(
        sp.csr_matrix(bulk[None, :]), inputs.profiles, table, start, max_iter=200, tol=1e-7
    )
    predicted = bulk_weights[0] @ inputs.profiles.T
    effect = np.log(bulk + 0.5) - np.log(predicted + 0.5)
    info["platform_effect_sd"] = float(np.std(effect))
    info["platform_effect"] = effect.round(4)  # aligned with info["genes"]
    return inputs.profiles * np.exp(effect)[:, None]


def _choose_sigma(counts, profiles, start, rng) -> float:
    """Alternate fitting a sample of spots and maximizing the likelihood over sigma."""
    n = counts.shape[0]
    n_sample = min(n, _SIGMA_SPOTS, max(30, _SIGMA_ENTRIES // counts.shape[1]))
    sample = np.sort(rng.choice(n, size=n_sample, replace=False))
    x = counts[sample]
    weights = start[sample].copy()
    sigma = 0.5
    # On small data choosing sigma takes longer than fitting every spot: it has its own task.
    with Progress("deconv.rctd sigma", _SIGMA_ROUNDS, "round") as progress:
        for round_ in range(_SIGMA_ROUNDS):
            weights, _ = fit_weights(x, profiles, pln_table(sigma), weights, max_iter=10)
            new = _golden_max(_sigma_objective(x.toarray(), weights @ profiles.T), *_SIGMA_BOUNDS)
            converged = abs(new - sigma) < 0.01
            sigma = new
            progress.update(round_ + 1, f"sigma {sigma:.3f}")
            if converged:
                break
    return round(float(sigma), 3)


def _sigma_objective(dense: np.ndarray, rates: np.ndarray):
    return lambda sigma: float(log_probability(dense, rates, sigma).sum())


def _golden_max(func, low: float, high: float, tol: float = 0.005) -> float:
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = func(c), func(d)
    while b - a > tol:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = func(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = func(d)
    return 0.5 * (a + b)


def _doublet_mode(counts, profiles, table, full_weights, types):
    """Best singlet and pair of candidate types per spot, classified by RCTD's rules."""
    n_spots, n_types = full_weights.shape
    shares = full_weights / np.maximum(full_weights.sum(axis=1, keepdims=True), 1e-300)
    order = np.argsort(-shares, axis=1)[:, :_MAX_CANDIDATES]
    candidates = [o[shares[i, o] > _CANDIDATE_SHARE] for i, o in enumerate(order)]
    candidates = [c if c.size else order[i, :1] for i, c in enumerate(candidates)]
    single_subsets = [[(t,) for t in c] for c in candidates]
    pair_subsets = [[(a, b) for j, a in enumerate(c) for b in c[j + 1 :]] for c in candidates]
    n_fits = sum(map(len, single_subsets)) + sum(map(len, pair_subsets))
    # One unit is the fit of one spot to one candidate type or pair of types.
    with Progress("deconv.rctd doublet mode", n_fits, "fit") as progress:
        singles = _subset_scores(counts, profiles, table, full_weights, single_subsets, progress)
        pairs = _subset_scores(counts, profiles, table, full_weights, pair_subsets, progress)
    weights = np.zeros_like(full_weights)
    klass = np.empty(n_spots, dtype=object)
    first = np.full(n_spots, -1)
    second = np.full(n_spots, -1)
    for i in range(n_spots):
        single_scores = singles[i]
        if not pairs[i]:
            (t,), (score, w) = next(iter(single_scores.items()))
            weights[i, t], klass[i], first[i] = w[0], "singlet", t
            continue
        (a, b), (min_score, pair_w) = min(pairs[i].items(), key=lambda kv: kv[1][0])
        if single_scores[(b,)][0] < single_scores[(a,)][0]:
            a, b, pair_w = b, a, pair_w[::-1]
        first[i], second[i] = a, b
        a_sure = _confident(pairs[i], a, min_score)
        b_sure = _confident(pairs[i], b, min_score)
        if single_scores[(a,)][0] - min_score < DOUBLET_THRESHOLD:
            klass[i] = "singlet" if a_sure else "reject"
            weights[i, a] = single_scores[(a,)][1][0]
            second[i] = -1 if a_sure else second[i]
        else:
            klass[i] = (
                "doublet_certain"
                if a_sure and b_sure
                else "doublet_uncertain"
                if a_sure or b_sure
                else "reject"
            )
            weights[i, a], weights[i, b] = pair_w
    names = np.asarray(types + [""], dtype=object)
    extra = {
        "class": pd.Categorical(
            klass, categories=["singlet", "doublet_certain", "doublet_uncertain", "reject"]
        ),
        "first_type": names[first],
        "second_type": names[second],
    }
    return weights, extra


def _confident(pair_scores: dict, kind: int, min_score: float) -> bool:
    """A type is confident when no pair without it comes within the confidence margin."""
    return all(
        score - min_score > CONFIDENCE_THRESHOLD
        for pair, (score, _) in pair_scores.items()
        if kind not in pair
    )


def _subset_scores(
    counts,
    profiles,
    table,
    full_weights,
    subsets_per_spot,
    progress: Progress | None = None,
):
    """Negative log likelihood and weights of each spot under each listed type subset.

    ``progress`` is advanced by one for every spot fitted to one subset.
    """
    out: list[dict] = [{} for _ in subsets_per_spot]
    jobs: dict[tuple, list[int]] = {}
    for i, subsets in enumerate(subsets_per_spot):
        for subset in subsets:
            jobs.setdefault(tuple(int(t) for t in subset), []).append(i)
    for subset, spots in jobs.items():
        rows = np.asarray(spots)
        cols = list(subset)
        start = np.maximum(full_weights[np.ix_(rows, cols)], 0.0)
        start += 0.1 * full_weights[rows].sum(axis=1, keepdims=True) / len(cols) + 1e-8
        w, ll = fit_weights(counts[rows], profiles[:, cols], table, start, progress=progress)
        for k, i in enumerate(spots):
            out[i][subset] = (-ll[k], w[k])
    return out


def _store(adata_sp, inputs, weights, unit, key_added, info, extra_obs) -> pd.DataFrame:
    if unit == "counts":
        library = inputs.profiles.sum(axis=0)
        shares = weights * library[None, :]
    else:
        shares = weights
    totals = shares.sum(axis=1, keepdims=True)
    fractions = np.full((adata_sp.n_obs, len(inputs.types)), np.nan)
    fractions[inputs.kept] = np.where(totals > 0, shares / np.where(totals > 0, totals, 1), 0.0)
    abundance = np.full_like(fractions, np.nan)
    abundance[inputs.kept] = weights
    frame = pd.DataFrame(fractions, index=adata_sp.obs_names, columns=inputs.types)
    adata_sp.obsm[key_added] = frame
    adata_sp.obsm[f"{key_added}_abundance"] = pd.DataFrame(
        abundance, index=adata_sp.obs_names, columns=inputs.types
    )
    for name, values in extra_obs.items():
        column = np.full(adata_sp.n_obs, None, dtype=object)
        column[inputs.kept] = np.asarray(values, dtype=object)
        if isinstance(values, pd.Categorical):
            column = pd.Categorical(column, categories=values.categories)
        adata_sp.obs[f"{key_added}_{name}"] = column
    adata_sp.uns.setdefault("spatiome", {})[key_added] = info
    return frame.copy()


__all__ = ["deconvolve"]
