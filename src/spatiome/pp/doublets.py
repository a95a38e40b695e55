"""Doublets in single-cell-resolution spatial data (Xenium, MERFISH, segmented Visium HD).

In imaging and segmented data most multiplets are two *neighbouring* cells merged by the
segmentation, or a cell contaminated by its neighbour's transcripts. :func:`doublets`
simulates such merges (sums of spatially adjacent cells) next to random pairs, embeds
observed and simulated cells together, and scores every observed cell by the density of
simulated doublets around it in expression space (Scrublet's estimator). Spatial features
(counts and detected genes against the cell's spatial neighbours; whether the second cell
type of the best two-type fit of the profile is present next to the cell) and a
gradient-boosted classifier trained to tell observed from simulated cells (as scDblFinder
does) refine the score.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from threadpoolctl import threadpool_limits

from .._core.neighbourhood import neighbourhood_median_mad, spatial_knn
from .._core.parallel import map_gene_chunks, resolve_n_jobs
from .._core.progress import Progress
from .._core.random import check_random_state
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    get_spatial,
    resolve_counts_layer,
)

#: Fewest cells :func:`doublets` accepts.
MIN_CELLS = 100
#: Panels with more genes than this are reduced to their most variable genes.
MAX_PANEL_GENES = 1000
#: Share of the genes kept for whole-transcriptome data.
VARIABLE_GENE_FRACTION = 0.15
#: A gene is kept when at least ``MIN_CELLS_PER_GENE`` cells hold ``MIN_GENE_COUNT`` counts.
MIN_GENE_COUNT = 3
MIN_CELLS_PER_GENE = 3
#: Standard error of the expected doublet rate in Scrublet's error propagation.
RATE_SE = 0.02
#: Neighbourhood sizes (in the joint observed + simulated embedding) of the classifier's
#: doublet-fraction features.
FRACTION_KS = (3, 10, 25, 50)
#: Spatial neighbours of the local robust z-scores.
LOCAL_Z_K = 10
#: Phi^-1(0.75): turns a raw MAD into a standard-deviation scale.
MAD_TO_SD = 0.6745
#: Observed neighbours per cell in the first-pass clustering graph.
CLUSTER_NEIGHBOURS = 15
#: Folds of the out-of-fold classifier predictions, and the most cells one model learns
#: from (a random subset beyond that: the boundary is learnt long before, at a fraction of
#: the time).
N_FOLDS = 5
MAX_TRAINING_CELLS = 100_000
#: Cells per block of the compiled kernels (fixed, so results never depend on n_jobs).
ROW_BLOCK = 65_536
#: Up to this many genes the PCA comes from the gene x gene covariance.
GRAM_MAX_GENES = 2000
#: Points per list and fewest candidates per query in the inverted-file kNN search.
KNN_LIST_SIZE = 128
KNN_MIN_CANDIDATES = 2048
THRESHOLD_METHODS = ("auto", "otsu", "expected")
#: The phases :func:`doublets` reports as progress, in order; the classifier's two rounds
#: come between the spatial features and the threshold.
PHASES = (
    "simulated doublets",
    "embedding",
    "kNN score",
    "cell-type fits",
    "spatial features",
    "threshold",
)
CLASSIFIER_PHASES = ("classifier round 1", "classifier round 2")


def doublets(
    adata: AnnData,
    *,
    layer: str | None = None,
    expected_rate: float = 0.05,
    sim_ratio: float = 2.0,
    spatial_k: int = 6,
    n_pcs: int = 30,
    spatial_fraction: float = 0.5,
    threshold: str | float = "auto",
    classifier: bool = True,
    groupby: str | None = None,
    area_key: str | None = None,
    n_jobs: int | None = 1,
    random_state: int | np.random.Generator | None = 0,
    key_added: str = "doublet",
    copy: bool = False,
) -> AnnData | None:
    """Score and call doublets (merged neighbouring cells) in single-cell-resolution data.

    1. **Genes.** Genes with at least 3 counts in at least 3 cells; panels of more than
       1,000 genes are cut to the 15% most variable (:func:`scanpy.pp.highly_variable_genes`).
    2. **Simulated doublets.** ``sim_ratio * n_obs`` artificial cells, each the sum of the
       raw counts of two cells: a share ``spatial_fraction`` from pairs of spatial
       neighbours (edges of the ``spatial_k``-nearest-neighbour graph no longer than its
       90th percentile: a segmentation merge), the rest from uniform random pairs (as in
       Scrublet).
    3. **Embedding.** Counts scaled to the observed cells' median library size, log1p,
       genes scaled to unit variance with the observed cells' statistics; PCA fitted on the
       observed cells (centred implicitly, so the sparse matrix stays sparse) and applied
       to the simulated ones.
    4. **kNN score** (Scrublet). With ``k = round(0.5 sqrt(n_obs))`` and
       ``k_adj = round(k (1 + r))`` (``r = n_sim / n_obs``), the share ``q = (n_d + 1) /
       (k_adj + 2)`` of simulated doublets among each cell's ``k_adj`` neighbours in the joint
       embedding gives ``score = q rho / r / (1 - rho - q (1 - rho - rho / r))`` for the
       expected rate ``rho``, with its delta-method standard error (``se(rho) = 0.02``).
       Neighbours come from an approximate inverted-file search (exhaustive below about
       2,000 cells).
    5. **Spatial features.** Robust local z-scores ``0.6745 (v - median) / MAD`` of log
       counts, log detected genes (and log area) against the cell's 10 nearest spatial
       neighbours; a non-negative least-squares fit of the cell's normalized profile on
       cell-type centroids (``groupby``, or a first-pass Leiden clustering of the observed
       cells without its doublet-dominated clusters): the share explained by the best single
       type and by the best pair, the minor type's share, and whether the pair's second type
       is present among the ``spatial_k`` spatial neighbours. A simulated cell takes the
       neighbourhood of its first parent, without the second.
    6. **Classifier** (``classifier=True``, scDblFinder-style). Gradient-boosted trees
       (:class:`sklearn.ensemble.HistGradientBoostingClassifier`) learn observed (0) from
       simulated (1) cells on the features above plus the shares of simulated doublets
       among the 3, 10, 25 and 50 nearest cells, from out-of-fold predictions (5 folds).
       A second round drops the observed cells called in the first from the negatives.
       The out-of-fold probability ``p`` takes the place of ``q`` in the formula of step 4,
       so that both scores estimate P(doublet) at the expected rate.
    7. **Threshold.** ``"auto"``: the minimum between the two modes of the simulated
       doublets' score histogram; when the histogram has no two clear modes, or the minimum
       would call more than three times or less than a third of the expected rate, the
       ``expected_rate * n_obs`` highest-scoring cells are called instead.

    The end of each phase (:data:`PHASES`, and the classifier's two rounds) is reported as
    progress, to the ``"spatiome"`` logger at INFO level.

    Parameters
    ----------
    adata
        Cells x genes with raw counts and cell centroids in ``obsm['spatial']``.
    layer
        Layer holding raw integer counts. ``None`` (default): ``adata.layers["counts"]``
        when present, else ``adata.X`` when it holds counts.
    expected_rate
        Expected doublet rate, in (0, 0.5).
    sim_ratio
        Simulated doublets per observed cell, in [0.1, 20].
    spatial_k
        Spatial neighbours that may merge with a cell (1 to 50).
    n_pcs
        Principal components of the embedding (clipped to the number of genes - 1).
    spatial_fraction
        Share of the simulated doublets built from spatial neighbours, in [0, 1]; 0 gives
        Scrublet's random pairs only.
    threshold
        ``"auto"`` (see above), ``"otsu"`` (Otsu's threshold on the simulated doublets'
        scores), ``"expected"`` (the ``expected_rate * n_obs`` highest scores) or a number
        in [0, 1] compared with ``<key_added>_score``.
    classifier
        Refine the kNN score with the classifier; ``False`` reports the kNN score.
    groupby
        Column of ``adata.obs`` with cell-type labels whose centroids the mixture fit uses;
        ``None`` clusters the cells first.
    area_key
        Column of ``adata.obs`` with the segmented cell area (e.g. ``"cell_area"`` from
        :func:`spatiome.io.read_xenium`); adds its local z-score to the features.
    n_jobs
        Threads for the neighbour searches, the kernels and the classifier's folds (-1: all
        cores). BLAS and OpenMP are held to one thread each; results do not depend on
        ``n_jobs``.
    random_state
        Seed or generator for the simulated pairs, the PCA, the kNN search, the clustering
        and the classifier; the same seed gives the same result.
    key_added
        Prefix of the outputs.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Writes to ``adata.obs``:

        - ``<key>_score``: P(doublet) from the classifier, or the kNN score;
        - ``<key>``: the call (bool), score above the threshold;
        - ``<key>_knn_score``, ``<key>_knn_score_se``: Scrublet's estimator and its
          standard error;
        - ``<key>_type_1``, ``<key>_type_2``: the best pair of the mixture fit, major type
          first (categorical; ``type_2`` missing when one type explains the cell, both
          missing for cells without counts);
        - ``<key>_spatially_plausible``: called cells with more counts than their spatial
          neighbours and a neighbour of the second type (of the first, when one type
          explains them): a merge with a neighbour can explain them.

        The parameters, the threshold, the cell types of the fit, the classifier's features
        and the simulated doublets' scores go to ``adata.uns["spatiome"]["doublets"]``.

    Raises
    ------
    SpatiomeInputError
        If the counts are not raw counts, coordinates are missing, there are fewer than
        100 cells or an argument is out of range.

    References
    ----------
    Wolock, Lopez & Klein (2019), Scrublet, Cell Systems 8:281. Germain et al. (2021),
    scDblFinder, F1000Research 10:979. Totty et al. (2025), SpotSweeper, Nature Methods.

    Examples
    --------
    >>> import spatiome as sm
    >>> cells = sm.datasets.simulate_tissue(n_spots=1000, n_genes=100, layout="random",
    ...                                     n_cell_types=4, single_cells=True)
    >>> merged = sm.datasets.inject_artifacts(cells, dry_patch_fraction=0, edge_fraction=0,
    ...                                       doublet_fraction=0.05)
    >>> sm.pp.doublets(merged)
    >>> truth = merged.obs["injected"] == "doublet"
    >>> bool(merged.obs.loc[truth, "doublet_score"].mean()
    ...      > merged.obs.loc[~truth, "doublet_score"].mean())
    True
    >>> merged.uns["spatiome"]["doublets"]["threshold_method"] in {"histogram_minimum",
    ...                                                           "expected_rate"}
    True
    """
    check_adata(adata)
    layer = resolve_counts_layer(adata, layer)
    counts = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_counts(counts, where=where)
    coords = get_spatial(adata)
    _check_parameters(
        adata.n_obs, expected_rate, sim_ratio, spatial_k, n_pcs, spatial_fraction, threshold,
        classifier, random_state, key_added,
    )  # fmt: skip
    labels, type_names = _reference_labels(adata, groupby)
    area = _area(adata, area_key)
    workers = resolve_n_jobs(n_jobs)
    rng = check_random_state(random_state)
    counts = sp.csr_matrix(counts) if not sp.issparse(counts) else counts

    result = _score(
        counts,
        coords,
        area=area,
        labels=labels,
        type_names=type_names,
        expected_rate=float(expected_rate),
        sim_ratio=float(sim_ratio),
        spatial_k=int(spatial_k),
        n_pcs=int(n_pcs),
        spatial_fraction=float(spatial_fraction),
        threshold=threshold,
        classifier=bool(classifier),
        spatial_features=True,
        rng=rng,
        workers=workers,
    )

    adata = adata.copy() if copy else adata
    _write(adata, result, key_added)
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["doublets"] = {
        "layer": "X" if layer is None else layer,
        "expected_rate": float(expected_rate),
        "sim_ratio": float(sim_ratio),
        "spatial_k": int(spatial_k),
        "n_pcs": result.n_pcs,
        "spatial_fraction": float(spatial_fraction),
        "threshold": float(result.threshold),
        "threshold_method": result.threshold_method,
        "classifier": bool(classifier),
        "groupby": groupby,
        "area_key": area_key,
        "random_state": _describe_seed(random_state),
        "key_added": key_added,
        "n_genes": result.n_genes,
        "n_simulated": int(result.simulated_scores.size),
        "n_simulated_spatial": result.n_simulated_spatial,
        "k": result.k,
        "k_adj": result.k_adj,
        "types": list(result.type_names),
        "features": list(result.features),
        "call_rate": float(result.calls.mean()),
        "simulated_scores": result.simulated_scores,
    }
    return adata if copy else None


# ---------------------------------------------------------------------------------------
# Input checks


def _check_parameters(
    n_obs, expected_rate, sim_ratio, spatial_k, n_pcs, spatial_fraction, threshold,
    classifier, random_state, key_added,
) -> None:  # fmt: skip
    if n_obs < MIN_CELLS:
        raise SpatiomeInputError(
            f"doublets needs at least {MIN_CELLS} cells, got {n_obs}: doublet scores come "
            "from the density of simulated doublets among many cells"
        )
    _check_real("expected_rate", expected_rate, 0.0, 0.5, open_low=True, open_high=True)
    _check_real("sim_ratio", sim_ratio, 0.1, 20.0)
    _check_real("spatial_fraction", spatial_fraction, 0.0, 1.0)
    _check_int("spatial_k", spatial_k, 1, min(50, n_obs - 2))
    _check_int("n_pcs", n_pcs, 2, 500)
    if isinstance(threshold, str):
        if threshold not in THRESHOLD_METHODS:
            raise SpatiomeInputError(
                f"threshold must be one of {THRESHOLD_METHODS} or a number in [0, 1], "
                f"got {threshold!r}"
            )
    else:
        _check_real("threshold", threshold, 0.0, 1.0)
    if not isinstance(classifier, bool | np.bool_):
        raise SpatiomeInputError(f"classifier must be True or False, got {classifier!r}")
    if not (
        random_state is None
        or isinstance(random_state, np.random.Generator)
        or (isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool))
    ):
        raise SpatiomeInputError(
            f"random_state must be an int, a numpy Generator or None, got {random_state!r}"
        )
    if not isinstance(key_added, str) or not key_added:
        raise SpatiomeInputError(f"key_added must be a non-empty string, got {key_added!r}")


def _check_real(
    name: str, value, low: float, high: float, *, open_low=False, open_high=False
) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    ok = ok and (value < high if open_high else value <= high)
    if not ok:
        low_bracket = "(" if open_low else "["
        high_bracket = ")" if open_high else "]"
        raise SpatiomeInputError(
            f"{name} must be a number in {low_bracket}{low:g}, {high:g}{high_bracket}, "
            f"got {value!r}"
        )


def _check_int(name: str, value, low: int, high: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not (low <= int(value) <= high)
    ):
        raise SpatiomeInputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _reference_labels(adata: AnnData, groupby: str | None) -> tuple[np.ndarray | None, list]:
    if groupby is None:
        return None, []
    if groupby not in adata.obs.columns:
        raise SpatiomeInputError(
            f"adata.obs[{groupby!r}] is missing: pass the column with cell-type labels, or "
            "groupby=None to cluster the cells"
        )
    column = adata.obs[groupby]
    if column.isna().any():
        raise SpatiomeInputError(
            f"adata.obs[{groupby!r}] has {int(column.isna().sum())} missing labels: label "
            "every cell or pass groupby=None"
        )
    codes, names = pd.factorize(column.astype(str), sort=True)
    if len(names) < 2:
        raise SpatiomeInputError(
            f"adata.obs[{groupby!r}] holds a single label: the mixture fit needs at least two"
        )
    return codes.astype(np.int64), [str(name) for name in names]


def _area(adata: AnnData, area_key: str | None) -> np.ndarray | None:
    if area_key is None:
        return None
    if area_key not in adata.obs.columns:
        raise SpatiomeInputError(
            f"adata.obs[{area_key!r}] is missing: pass the column with cell areas "
            "(read_xenium writes 'cell_area') or area_key=None"
        )
    try:
        area = np.asarray(adata.obs[area_key], dtype=np.float64)
    except (TypeError, ValueError):
        raise SpatiomeInputError(f"adata.obs[{area_key!r}] must be numeric") from None
    if not np.isfinite(area).all() or (area <= 0).any():
        raise SpatiomeInputError(
            f"adata.obs[{area_key!r}] must hold positive, finite areas; fix or drop the "
            "cells without a segmentation"
        )
    return area


def _describe_seed(random_state) -> int | str:
    if random_state is None:
        return 0
    if isinstance(random_state, np.random.Generator):
        return "numpy.random.Generator"
    return int(random_state)


# ---------------------------------------------------------------------------------------
# The scoring pipeline


@dataclass
class _Result:
    score: np.ndarray
    calls: np.ndarray
    knn_score: np.ndarray
    knn_score_se: np.ndarray
    type_1: np.ndarray
    type_2: np.ndarray
    type_names: list
    plausible: np.ndarray
    threshold: float
    threshold_method: str
    simulated_scores: np.ndarray
    n_genes: int
    n_pcs: int
    k: int
    k_adj: int
    n_simulated_spatial: int
    features: list


def _score(counts: sp.csr_matrix, coords: np.ndarray, **options) -> _Result:
    """Everything behind :func:`doublets`, on validated inputs (options as :func:`_pipeline`).

    Parallel work runs on ``workers`` threads of the shared executor, while BLAS and OpenMP
    (the gradient boosting) are held to one thread each: an OpenMP team on a machine whose
    cores are busy spins and runs many times slower than one thread.
    """
    n_phases = len(PHASES) + (len(CLASSIFIER_PHASES) if options["classifier"] else 0)
    with threadpool_limits(limits=1), Progress("pp.doublets", n_phases, "phase") as progress:
        return _pipeline(counts, coords, progress=progress, **options)


def _phase_done(progress: Progress | None, name: str) -> None:
    if progress is not None:
        progress.advance(1, f"{name} done")


def _pipeline(
    counts: sp.csr_matrix,
    coords: np.ndarray,
    *,
    area: np.ndarray | None,
    labels: np.ndarray | None,
    type_names: list,
    expected_rate: float,
    sim_ratio: float,
    spatial_k: int,
    n_pcs: int,
    spatial_fraction: float,
    threshold: str | float,
    classifier: bool,
    spatial_features: bool,
    rng: np.random.Generator,
    workers: int,
    progress: Progress | None = None,
) -> _Result:
    """Steps 1-7 of :func:`doublets`.

    ``spatial_features=False`` leaves the spatial-plausibility features out of the
    classifier (an expression-only reference for benchmarks). ``progress`` is advanced by
    one at the end of each of :data:`PHASES` (and :data:`CLASSIFIER_PHASES`, in their
    place, with the classifier).
    """
    n_obs = counts.shape[0]
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    genes = _select_genes(counts, library)
    selected = sp.csr_matrix(counts[:, genes], dtype=np.float64)
    selected.sum_duplicates()  # sorted, unique column indices for the merging kernels

    n_sim = max(1, int(round(sim_ratio * n_obs)))
    n_spatial = int(round(spatial_fraction * n_sim))
    spatial_neighbours, _ = spatial_knn(
        coords, min(max(spatial_k, LOCAL_Z_K) + 1, n_obs - 1), n_jobs=workers
    )
    parents = np.concatenate(
        [
            _adjacent_pairs(coords, spatial_neighbours[:, :spatial_k], n_spatial, rng),
            _random_pairs(n_obs, n_sim - n_spatial, rng),
        ]
    )
    # every cell, observed then simulated, as one or two rows of the counts
    first = np.concatenate([np.arange(n_obs), parents[:, 0]])
    second = np.concatenate([np.full(n_obs, -1), parents[:, 1]])
    totals = np.concatenate([library, library[parents].sum(axis=1)])
    target = float(np.median(library[library > 0])) if (library > 0).any() else 1.0
    row_scale = np.divide(target, totals, out=np.zeros_like(totals), where=totals > 0)
    _phase_done(progress, PHASES[0])

    embedding, detected, n_pcs_used = _embed(
        selected, first, second, row_scale, n_pcs, rng, workers
    )
    _phase_done(progress, PHASES[1])

    ratio = n_sim / n_obs
    n_total = n_obs + n_sim
    k = max(1, int(round(0.5 * math.sqrt(n_obs))))
    k_adj = min(max(1, int(round(k * (1.0 + ratio)))), n_total - 1)
    fraction_ks = [min(value, n_total - 1) for value in FRACTION_KS]
    ks = sorted({*fraction_ks, k_adj})
    is_sim = np.arange(n_total) >= n_obs
    sim_counts, observed_neighbours = _knn_simulated_counts(
        embedding, is_sim, np.asarray(ks), rng, workers, n_observed=n_obs
    )
    knn_all, knn_se_all = _scrublet_score(
        sim_counts[:, ks.index(k_adj)], k_adj, ratio, expected_rate
    )
    first_cut, _ = _threshold(knn_all[:n_obs], knn_all[n_obs:], "auto", expected_rate)
    first_calls = knn_all[:n_obs] > first_cut
    _phase_done(progress, PHASES[2])

    # cell types: the given labels, or clusters without those made of doublets
    if labels is None:
        labels = _drop_doublet_clusters(_cluster(observed_neighbours, rng), first_calls)
    mixture, kept = _mixture_fit(selected, first, second, row_scale, labels, ~first_calls, workers)
    if type_names:
        type_names = [type_names[t] for t in kept]
    else:
        type_names = [f"cluster{t + 1}" for t in range(len(kept))]
    _phase_done(progress, PHASES[3])

    metrics = [np.log1p(totals), np.log1p(detected)]
    if area is not None:
        metrics.append(np.log(np.concatenate([area, area[parents].sum(axis=1)])))
    local_z = _local_z(np.column_stack(metrics), spatial_neighbours, parents, workers)
    # a merge partner: the pair's second type, or the cell's own type for one-type fits
    partner_type = np.where(mixture.type_2 >= 0, mixture.type_2, mixture.type_1)
    partner_nearby = _type_nearby(
        partner_type, mixture.best_single[:n_obs], spatial_neighbours, parents, spatial_k
    )
    _phase_done(progress, PHASES[4])

    features = {
        **{
            f"knn_fraction_{name}": sim_counts[:, ks.index(value)] / value
            for name, value in zip(FRACTION_KS, fraction_ks, strict=True)
        },
        "knn_score": knn_all,
        "log_counts": metrics[0],
        "log_genes": metrics[1],
        "single_fit": mixture.single_fit,
        "pair_fit": mixture.pair_fit,
        "pair_gain": mixture.pair_gain,
        "minor_share": mixture.minor_share,
    }
    if spatial_features:
        for i, name in enumerate(("counts", "genes", "area")[: local_z.shape[1]]):
            features[f"local_z_{name}"] = local_z[:, i]
        features["partner_nearby"] = partner_nearby.astype(np.float64)
        if area is not None:
            features["log_area"] = metrics[2]
    if classifier:
        probability = _classify(
            np.column_stack(list(features.values())),
            is_sim,
            expected_rate,
            ratio,
            rng,
            workers,
            progress,
        )
        score_all = _scrublet_posterior(probability, ratio, expected_rate)
    else:
        score_all = knn_all
    score_obs, score_sim = score_all[:n_obs], score_all[n_obs:]
    threshold_value, method = _threshold(score_obs, score_sim, threshold, expected_rate)
    calls = score_obs > threshold_value
    _phase_done(progress, PHASES[5])
    return _Result(
        score=score_obs,
        calls=calls,
        knn_score=knn_all[:n_obs],
        knn_score_se=knn_se_all[:n_obs],
        type_1=mixture.type_1[:n_obs],
        type_2=mixture.type_2[:n_obs],
        type_names=type_names,
        plausible=calls & partner_nearby[:n_obs] & (local_z[:n_obs, 0] > 0),
        threshold=threshold_value,
        threshold_method=method,
        simulated_scores=score_sim,
        n_genes=int(genes.size),
        n_pcs=n_pcs_used,
        k=k,
        k_adj=k_adj,
        n_simulated_spatial=n_spatial,
        features=list(features) if classifier else ["knn_score"],
    )


def _write(adata: AnnData, result: _Result, key: str) -> None:
    obs = adata.obs
    obs[f"{key}_score"] = result.score
    obs[key] = result.calls
    obs[f"{key}_knn_score"] = result.knn_score
    obs[f"{key}_knn_score_se"] = result.knn_score_se
    names = list(result.type_names)
    for column, codes in ((f"{key}_type_1", result.type_1), (f"{key}_type_2", result.type_2)):
        obs[column] = pd.Categorical.from_codes(codes, categories=names)
    obs[f"{key}_spatially_plausible"] = result.plausible


# ---------------------------------------------------------------------------------------
# Genes, simulated doublets and the embedding


def _select_genes(counts: sp.csr_matrix, library: np.ndarray) -> np.ndarray:
    """Genes with >= 3 counts in >= 3 cells; the 15% most variable of large panels."""
    high = np.bincount(counts.indices[counts.data >= MIN_GENE_COUNT], minlength=counts.shape[1])
    genes = np.flatnonzero(high >= MIN_CELLS_PER_GENE)
    if genes.size < 2:
        raise SpatiomeInputError(
            f"only {genes.size} genes have >= {MIN_GENE_COUNT} counts in >= "
            f"{MIN_CELLS_PER_GENE} cells: doublet detection needs expressed genes"
        )
    if genes.size <= MAX_PANEL_GENES:
        return genes
    import scanpy as sc

    subset = sp.csr_matrix(counts[:, genes], dtype=np.float32)
    scale = np.divide(1e4, library, out=np.zeros_like(library), where=library > 0)
    subset.data *= np.repeat(scale, np.diff(subset.indptr)).astype(np.float32)
    np.log1p(subset.data, out=subset.data)
    n_top = max(2, int(round(VARIABLE_GENE_FRACTION * genes.size)))
    table = sc.pp.highly_variable_genes(
        AnnData(subset), flavor="seurat", n_top_genes=n_top, inplace=False
    )
    return genes[np.flatnonzero(table["highly_variable"].to_numpy())]


def _adjacent_pairs(
    coords: np.ndarray, neighbours: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """Random edges of the spatial kNN graph no longer than its 90th percentile."""
    if n_pairs == 0:
        return np.empty((0, 2), dtype=np.int64)
    first = np.repeat(np.arange(coords.shape[0]), neighbours.shape[1])
    second = neighbours.ravel()
    length = np.sqrt(((coords[first] - coords[second]) ** 2).sum(axis=1))
    short = np.flatnonzero(length <= np.quantile(length, 0.9))
    edges = short[rng.integers(0, short.size, size=n_pairs)]
    return np.column_stack([first[edges], second[edges]]).astype(np.int64)


def _random_pairs(n_obs: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    first = rng.integers(0, n_obs, size=n_pairs)
    second = (first + rng.integers(1, n_obs, size=n_pairs)) % n_obs
    return np.column_stack([first, second]).astype(np.int64)


def _embed(
    selected: sp.csr_matrix,
    first: np.ndarray,
    second: np.ndarray,
    row_scale: np.ndarray,
    n_pcs: int,
    rng: np.random.Generator,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """PCA coordinates of every cell (observed then simulated) and its detected genes.

    Values are ``log1p(counts * row_scale)`` over the genes' standard deviation in the
    observed cells; the PCA is fitted on the observed cells (the first ``n_obs`` rows).
    """
    n_obs, n_genes = selected.shape
    observed = selected.copy()
    observed.data *= np.repeat(row_scale[:n_obs], np.diff(observed.indptr))
    np.log1p(observed.data, out=observed.data)
    mean = np.asarray(observed.mean(axis=0)).ravel()
    mean_square = np.asarray(observed.multiply(observed).mean(axis=0)).ravel()
    sd = np.sqrt(np.maximum(mean_square - mean**2, 0.0))
    sd[sd == 0] = 1.0
    observed.data /= sd[observed.indices]
    mean = mean / sd
    n_components = int(min(n_pcs, n_genes - 1, n_obs - 1))
    components = _principal_axes(observed, mean, n_components, rng, workers)
    projected, _, detected = _project(
        selected, first, second, row_scale, 1.0 / sd, True, components, workers
    )
    projected -= mean @ components
    return projected, detected, n_components


def _principal_axes(
    scaled: sp.csr_matrix,
    mean: np.ndarray,
    n_components: int,
    rng: np.random.Generator,
    workers: int,
) -> np.ndarray:
    """(n_genes, n_components) principal axes of the rows of ``scaled``, centred implicitly.

    Panels: eigenvectors of the covariance, whose gene x gene cross-product is summed in
    compiled code straight from the sparse rows. Larger gene sets: scikit-learn's ARPACK
    PCA, which also never centres the sparse matrix explicitly.
    """
    n_obs, n_genes = scaled.shape
    if n_genes > GRAM_MAX_GENES:
        from sklearn.decomposition import PCA

        pca = PCA(
            n_components=n_components,
            svd_solver="arpack",
            random_state=int(rng.integers(0, 2**31 - 1)),
        ).fit(scaled)
        axes = pca.components_.T
    else:

        def block(start: int, stop: int) -> np.ndarray:
            out = np.zeros((n_genes, n_genes))
            _cross_product_kernel(scaled.indptr, scaled.indices, scaled.data, start, stop, out)
            return out

        parts = map_gene_chunks(block, n_obs, chunk_size=ROW_BLOCK, n_jobs=workers)
        upper = np.sum(parts, axis=0)
        cross = upper + upper.T - np.diag(np.diag(upper))
        covariance = cross / n_obs - np.outer(mean, mean)
        values, vectors = np.linalg.eigh(covariance)
        axes = vectors[:, np.argsort(values)[::-1][:n_components]]
    # a fixed sign per axis: its largest loading is positive
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    return np.ascontiguousarray(axes * np.where(signs == 0, 1.0, signs))


def _project(
    selected: sp.csr_matrix,
    first: np.ndarray,
    second: np.ndarray,
    row_scale: np.ndarray,
    gene_scale: np.ndarray,
    log: bool,
    basis: np.ndarray,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project the transformed sum of rows ``first`` and ``second`` (-1: none) on ``basis``.

    A cell's value for gene g is ``counts * row_scale`` (through log1p if ``log``) times
    ``gene_scale[g]``, built one cell at a time so that no simulated doublet is stored.
    Returns the projections (n_cells, basis columns), the squared norms and the number of
    detected genes.
    """
    basis = np.ascontiguousarray(basis, dtype=np.float64)

    def block(start: int, stop: int):
        projected = np.zeros((stop - start, basis.shape[1]))
        squares = np.zeros(stop - start)
        detected = np.zeros(stop - start, dtype=np.int64)
        _pair_projection_kernel(
            selected.indptr, selected.indices, selected.data, first, second, row_scale,
            gene_scale, log, basis, start, stop, projected, squares, detected,
        )  # fmt: skip
        return projected, squares, detected

    parts = map_gene_chunks(block, first.size, chunk_size=ROW_BLOCK, n_jobs=workers)
    projected = np.concatenate([part[0] for part in parts])
    squares = np.concatenate([part[1] for part in parts])
    detected = np.concatenate([part[2] for part in parts])
    return projected, squares, detected


@numba.njit(cache=True, nogil=True)
def _cross_product_kernel(indptr, indices, data, start, stop, out):  # pragma: no cover
    """Upper triangle of X'X over rows start:stop (column indices sorted in every row).

    Dense rows are spread over one row-sized buffer, so the update runs along contiguous
    memory; sparse rows only touch their own pairs of genes.
    """
    n_genes = out.shape[0]
    buffer = np.zeros(n_genes)
    for row in range(start, stop):
        begin, end = indptr[row], indptr[row + 1]
        if 4 * (end - begin) > n_genes:
            for p in range(begin, end):
                buffer[indices[p]] = data[p]
            for p in range(begin, end):
                i = indices[p]
                value = data[p]
                for j in range(i, n_genes):
                    out[i, j] += value * buffer[j]
            for p in range(begin, end):
                buffer[indices[p]] = 0.0
        else:
            for p in range(begin, end):
                i = indices[p]
                value = data[p]
                for q in range(p, end):
                    out[i, indices[q]] += value * data[q]


@numba.njit(cache=True, nogil=True)
def _pair_projection_kernel(
    indptr, indices, data, first, second, row_scale, gene_scale, log, basis, start, stop,
    projected, squares, detected,
):  # pragma: no cover  # fmt: skip
    """Merge the sorted rows of each cell's parents, transform the values and project them."""
    n_out = basis.shape[1]
    for cell in range(start, stop):
        r = cell - start
        pa, ea = indptr[first[cell]], indptr[first[cell] + 1]
        pb, eb = 0, 0
        if second[cell] >= 0:
            pb, eb = indptr[second[cell]], indptr[second[cell] + 1]
        scale = row_scale[cell]
        while pa < ea or pb < eb:
            if pb >= eb or (pa < ea and indices[pa] < indices[pb]):
                gene = indices[pa]
                count = data[pa]
                pa += 1
            elif pa >= ea or indices[pb] < indices[pa]:
                gene = indices[pb]
                count = data[pb]
                pb += 1
            else:
                gene = indices[pa]
                count = data[pa] + data[pb]
                pa += 1
                pb += 1
            if count == 0:
                continue
            value = count * scale
            if log:
                value = math.log1p(value)
            value *= gene_scale[gene]
            for t in range(n_out):
                projected[r, t] += value * basis[gene, t]
            squares[r] += value * value
            detected[r] += 1


# ---------------------------------------------------------------------------------------
# kNN in the joint embedding: an inverted-file search


def _knn_simulated_counts(
    points: np.ndarray,
    is_sim: np.ndarray,
    ks: np.ndarray,
    rng: np.random.Generator,
    workers: int,
    *,
    n_observed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulated points among each point's ``k`` nearest others, for every ``k`` in ``ks``.

    Approximate search by an inverted file: points are assigned to the nearest of
    ``n / 128`` pivots drawn from the data (so lists are about equally full where the data
    are dense), and each list is searched against the lists of its nearest pivots until at
    least ``max(2048, 6 k)`` candidates are in hand. Small inputs are searched exhaustively.

    Returns the (n_points, len(ks)) counts and, for the first ``n_observed`` points, up to
    15 nearest observed neighbours (-1 where fewer were among the candidates).
    """
    # single precision: distances only rank neighbours, and the products run twice as fast
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = points.shape[0]
    k_max = int(ks.max())
    wanted = max(KNN_MIN_CANDIDATES, 6 * k_max)
    n_lists = max(1, n // KNN_LIST_SIZE)
    pivots_index = np.sort(rng.choice(n, size=n_lists, replace=False))
    pivots = points[pivots_index]
    squares = np.einsum("ij,ij->i", points, points)
    assignment = _nearest_rows(points, squares, pivots)
    order = np.argsort(assignment, kind="stable")
    offsets = np.zeros(n_lists + 1, dtype=np.int64)
    np.cumsum(np.bincount(assignment, minlength=n_lists), out=offsets[1:])
    sizes = np.diff(offsets)
    probes = _probe_lists(pivots, sizes, wanted)

    def search(first: int, last: int):
        out = []
        for lst in range(first, last):
            queries = order[offsets[lst] : offsets[lst + 1]]
            if queries.size == 0:
                continue
            candidates = np.concatenate([order[offsets[p] : offsets[p + 1]] for p in probes[lst]])
            distance = (
                squares[queries][:, None]
                - 2.0 * (points[queries] @ points[candidates].T)
                + squares[candidates][None, :]
            )
            # the list itself comes first among its probes: the queries lead the candidates
            distance[np.arange(queries.size), np.arange(queries.size)] = np.inf
            kk = min(k_max, candidates.size - 1)
            part = np.argpartition(distance, kk - 1, axis=1)[:, :kk]
            ranked = np.take_along_axis(
                part, np.argsort(np.take_along_axis(distance, part, axis=1), axis=1), axis=1
            )
            nearest = candidates[ranked]
            simulated = is_sim[nearest]
            cumulative = np.cumsum(simulated, axis=1, dtype=np.int32)
            columns = np.minimum(ks, kk) - 1
            found = cumulative[:, columns]
            observed_rows = queries < n_observed
            neighbours = np.full((queries.size, CLUSTER_NEIGHBOURS), -1, dtype=np.int64)
            if observed_rows.any():
                observed_rank = np.cumsum(~simulated, axis=1)
                keep = ~simulated & (observed_rank <= CLUSTER_NEIGHBOURS)
                row, col = np.nonzero(keep)
                neighbours[row, observed_rank[row, col] - 1] = nearest[row, col]
            out.append((queries, found, neighbours))
        return out

    per_block = max(1, n_lists // (8 * workers))
    parts = map_gene_chunks(search, n_lists, chunk_size=per_block, n_jobs=workers)
    counts = np.zeros((n, ks.size), dtype=np.int32)
    observed_neighbours = np.full((n_observed, CLUSTER_NEIGHBOURS), -1, dtype=np.int64)
    for part in parts:
        for queries, found, neighbours in part:
            counts[queries] = found
            mask = queries < n_observed
            observed_neighbours[queries[mask]] = neighbours[mask]
    return counts, observed_neighbours


def _nearest_rows(points: np.ndarray, squares: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """Index of the nearest pivot of every point (blocked, squared Euclidean)."""
    pivot_squares = np.einsum("ij,ij->i", pivots, pivots)
    nearest = np.empty(points.shape[0], dtype=np.int64)
    block = max(1, 2**24 // max(1, pivots.shape[0]))
    for start in range(0, points.shape[0], block):
        stop = min(start + block, points.shape[0])
        distance = pivot_squares[None, :] - 2.0 * (points[start:stop] @ pivots.T)
        nearest[start:stop] = np.argmin(distance, axis=1)
    return nearest


def _probe_lists(pivots: np.ndarray, sizes: np.ndarray, wanted: int) -> list[np.ndarray]:
    """For every list: itself, then the lists of the nearest pivots until ``wanted`` points."""
    n_lists = pivots.shape[0]
    if sizes.sum() <= wanted:
        everything = np.arange(n_lists)
        return [np.concatenate([[lst], np.delete(everything, lst)]) for lst in range(n_lists)]
    mean_size = max(1.0, sizes.sum() / n_lists)
    depth = int(min(n_lists, 4 * math.ceil(wanted / mean_size)))
    squares = np.einsum("ij,ij->i", pivots, pivots)
    probes: list[np.ndarray] = []
    block = max(1, 2**24 // n_lists)
    for start in range(0, n_lists, block):
        stop = min(start + block, n_lists)
        distance = squares[start:stop, None] - 2.0 * (pivots[start:stop] @ pivots.T) + squares
        distance[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        if depth < n_lists:
            nearest = np.argpartition(distance, depth - 1, axis=1)[:, :depth]
        else:
            nearest = np.tile(np.arange(n_lists), (stop - start, 1))
        nearest = np.take_along_axis(
            nearest, np.argsort(np.take_along_axis(distance, nearest, axis=1), axis=1), axis=1
        )
        filled = np.cumsum(sizes[nearest], axis=1)
        for row in range(stop - start):
            enough = int(np.searchsorted(filled[row], wanted)) + 1
            probes.append(nearest[row, : min(enough, depth)])
    return probes


def _scrublet_score(
    n_simulated: np.ndarray, k_adj: int, ratio: float, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scrublet's doublet score from the simulated neighbours, and its standard error."""
    q = (n_simulated + 1.0) / (k_adj + 2.0)
    se_q = np.sqrt(q * (1.0 - q) / (k_adj + 3.0))
    # delta method: the partial derivatives of the score in q and in the rate
    denominator = 1.0 - rate - q * (1.0 - rate - rate / ratio)
    relative = np.sqrt((se_q / q * (1.0 - rate)) ** 2 + (RATE_SE / rate * (1.0 - q)) ** 2)
    return _scrublet_posterior(q, ratio, rate), q * rate / ratio / denominator**2 * relative


def _scrublet_posterior(q: np.ndarray, ratio: float, rate: float) -> np.ndarray:
    """P(doublet) of a cell whose neighbourhood is a share ``q`` simulated doublets.

    Simulated doublets make ``ratio`` times as many points as the observed cells, of which
    a share ``rate`` are doublets: ``q rate / ratio / (1 - rate - q (1 - rate - rate /
    ratio))``.
    """
    return q * rate / ratio / (1.0 - rate - q * (1.0 - rate - rate / ratio))


# ---------------------------------------------------------------------------------------
# Cell types and the two-type mixture fit


def _cluster(observed_neighbours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Leiden clusters of the observed cells on their expression kNN graph."""
    import scanpy as sc

    n = observed_neighbours.shape[0]
    rows = np.repeat(np.arange(n), observed_neighbours.shape[1])
    cols = observed_neighbours.ravel()
    keep = cols >= 0
    graph = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n))
    graph = ((graph + graph.T) > 0).astype(np.float64)
    holder = AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)))
    sc.tl.leiden(
        holder,
        adjacency=sp.csr_matrix(graph),
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=int(rng.integers(0, 2**31 - 1)),
    )
    return holder.obs["leiden"].cat.codes.to_numpy().astype(np.int64)


def _drop_doublet_clusters(labels: np.ndarray, called: np.ndarray) -> np.ndarray:
    """Labels with the clusters made mostly of first-pass doublets set to -1.

    Doublets of a frequent pair of types can form a cluster of their own, whose centroid
    would then explain them as one type.
    """
    n_types = int(labels.max()) + 1
    size = np.bincount(labels, minlength=n_types)
    share = np.bincount(labels, weights=called.astype(np.float64), minlength=n_types)
    doublet_cluster = share > 0.5 * size
    if doublet_cluster.all():
        return labels
    return np.where(doublet_cluster[labels], -1, labels)


@dataclass
class _Mixture:
    single_fit: np.ndarray
    pair_fit: np.ndarray
    pair_gain: np.ndarray
    minor_share: np.ndarray
    best_single: np.ndarray
    type_1: np.ndarray
    type_2: np.ndarray


def _mixture_fit(
    selected: sp.csr_matrix,
    first: np.ndarray,
    second: np.ndarray,
    row_scale: np.ndarray,
    labels: np.ndarray,
    clean: np.ndarray,
    workers: int,
) -> tuple[_Mixture, list[int]]:
    """Best one- and two-type fits of every cell on the type centroids.

    Profiles are counts scaled to the common library size, each gene weighted by
    1 / sqrt(its mean) so that abundant genes do not dominate the fit. A type's centroid is
    the mean profile of its ``clean`` observed cells; types with fewer than 10 such cells
    are left out. Returns the fits and the label codes of the centroids kept.
    """
    n_obs = selected.shape[0]
    observed = selected.copy()
    observed.data *= np.repeat(row_scale[:n_obs], np.diff(observed.indptr))
    weight = 1.0 / np.sqrt(np.maximum(np.asarray(observed.mean(axis=0)).ravel(), 1e-12))
    observed.data *= weight[observed.indices]

    n_types = int(labels.max()) + 1
    members = np.flatnonzero((labels >= 0) & clean)
    size = np.bincount(labels[members], minlength=n_types)
    kept = [t for t in range(n_types) if size[t] >= 10] or [int(np.argmax(size))]
    code = np.full(n_types, -1)
    code[kept] = np.arange(len(kept))
    members = members[code[labels[members]] >= 0]
    indicator = sp.csr_matrix(
        (np.ones(members.size), (code[labels[members]], members)), shape=(len(kept), n_obs)
    )
    centroids = (indicator @ observed).toarray() / size[kept][:, None]

    projection, squares, _ = _project(
        selected, first, second, row_scale, weight, False, centroids.T, workers
    )
    gram = centroids @ centroids.T

    def block(start: int, stop: int):
        values = np.empty((stop - start, 4))
        types = np.empty((stop - start, 3), dtype=np.int64)
        _pair_fit_kernel(projection, squares, gram, start, stop, values, types)
        return values, types

    parts = map_gene_chunks(block, first.size, chunk_size=ROW_BLOCK, n_jobs=workers)
    values = np.concatenate([part[0] for part in parts])
    types = np.concatenate([part[1] for part in parts])
    mixture = _Mixture(
        single_fit=values[:, 0],
        pair_fit=values[:, 1],
        pair_gain=values[:, 2],
        minor_share=values[:, 3],
        best_single=types[:, 0],
        type_1=types[:, 1],
        type_2=types[:, 2],
    )
    return mixture, kept


@numba.njit(cache=True, nogil=True)
def _pair_fit_kernel(projection, norm, gram, start, stop, out, types):  # pragma: no cover
    """Best one- and two-type non-negative least-squares fits from inner products.

    ``projection[i, t]`` is <x_i, c_t>, ``norm[i]`` is |x_i|^2 and ``gram`` holds
    <c_s, c_t>. The explained share of |x|^2 of a non-negative fit on types S is
    b_S' G_S^-1 b_S when the unconstrained solution is positive.
    """
    n_types = gram.shape[0]
    for row in range(start, stop):
        r = row - start
        best_single = 0.0
        best_type = -1  # no type fits an empty profile
        for t in range(n_types):
            b = projection[row, t]
            if b > 0 and gram[t, t] > 0:
                value = b * b / gram[t, t]
                if value > best_single:
                    best_single = value
                    best_type = t
        best_pair = best_single
        first = best_type
        second = -1
        share = 0.0
        for s in range(n_types):
            for t in range(s + 1, n_types):
                det = gram[s, s] * gram[t, t] - gram[s, t] * gram[s, t]
                if det <= 1e-12 * gram[s, s] * gram[t, t]:
                    continue
                bs = projection[row, s]
                bt = projection[row, t]
                a = (gram[t, t] * bs - gram[s, t] * bt) / det
                c = (gram[s, s] * bt - gram[s, t] * bs) / det
                if a <= 0 or c <= 0:
                    continue
                value = a * bs + c * bt
                if value > best_pair:
                    best_pair = value
                    if a >= c:
                        first, second, share = s, t, c / (a + c)
                    else:
                        first, second, share = t, s, a / (a + c)
        total = norm[row]
        if total > 0:
            out[r, 0] = best_single / total
            out[r, 1] = best_pair / total
            residual_single = max(total - best_single, 1e-12 * total)
            residual_pair = max(total - best_pair, 1e-12 * total)
            out[r, 2] = math.log(residual_single / residual_pair)
        else:
            out[r, 0] = 0.0
            out[r, 1] = 0.0
            out[r, 2] = 0.0
        out[r, 3] = share
        types[r, 0] = best_type
        types[r, 1] = first
        types[r, 2] = second


# ---------------------------------------------------------------------------------------
# Spatial features


def _local_z(
    values: np.ndarray, neighbours: np.ndarray, parents: np.ndarray, workers: int
) -> np.ndarray:
    """Robust z of every value against the cell's spatial neighbours (SpotSweeper).

    ``0.6745 (v - median) / MAD`` over the ``LOCAL_Z_K`` nearest neighbours, 0 where the
    MAD is 0. A simulated cell is compared with the neighbours of its first parent, less
    the second parent (merged into it).
    """
    k = min(LOCAL_Z_K, neighbours.shape[1] - 1)
    around = np.vstack(
        [neighbours[:, :k], _without_partner(neighbours[parents[:, 0]], parents[:, 1], k)]
    )
    median, mad = neighbourhood_median_mad(values, around, n_jobs=workers)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = MAD_TO_SD * (values - median) / mad
    z[~np.isfinite(z)] = 0.0
    return z


def _without_partner(neighbours: np.ndarray, partner: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` neighbours of each row that are not ``partner``."""
    columns = np.argsort(neighbours == partner[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(neighbours, columns, axis=1)


def _type_nearby(
    wanted: np.ndarray,
    observed_types: np.ndarray,
    neighbours: np.ndarray,
    parents: np.ndarray,
    spatial_k: int,
) -> np.ndarray:
    """Whether one of the ``spatial_k`` spatial neighbours has the ``wanted`` type.

    For observed then simulated cells; simulated ones use their first parent's neighbours
    less the second parent, as in :func:`_local_z`.
    """
    k = min(spatial_k, neighbours.shape[1] - 1)
    around = np.vstack(
        [neighbours[:, :k], _without_partner(neighbours[parents[:, 0]], parents[:, 1], k)]
    )
    return (observed_types[around] == wanted[:, None]).any(axis=1) & (wanted >= 0)


# ---------------------------------------------------------------------------------------
# Classifier and threshold


def _classify(
    features: np.ndarray,
    is_sim: np.ndarray,
    expected_rate: float,
    ratio: float,
    rng: np.random.Generator,
    workers: int,
    progress: Progress | None = None,
) -> np.ndarray:
    """Out-of-fold P(simulated) in two rounds; round 2 drops round-1 calls from training.

    The folds' models are fitted on ``workers`` threads; their seeds and training subsets
    are drawn beforehand, so the result does not depend on the number of threads.
    """
    n = features.shape[0]
    fold = rng.permutation(n) % N_FOLDS
    target = is_sim.astype(np.int64)
    excluded = np.zeros(n, dtype=bool)
    score = np.zeros(n)
    for round_ in range(2):
        plans = []
        for f in range(N_FOLDS):
            train = np.flatnonzero((fold != f) & ~excluded)
            if train.size > MAX_TRAINING_CELLS:
                train = np.sort(rng.choice(train, MAX_TRAINING_CELLS, replace=False))
            plans.append((train, int(rng.integers(0, 2**31 - 1))))

        predictions = _fit_folds(features, target, fold, plans, workers)
        for f, part in enumerate(predictions):
            score[fold == f] = part
        _phase_done(progress, CLASSIFIER_PHASES[round_])
        if round_ == 0:
            observed = ~is_sim
            posterior = _scrublet_posterior(score, ratio, expected_rate)
            cut, _ = _threshold(posterior[observed], posterior[is_sim], "auto", expected_rate)
            excluded = observed & (posterior > cut)
    return score


def _fit_folds(
    features: np.ndarray,
    target: np.ndarray,
    fold: np.ndarray,
    plans: list[tuple[np.ndarray, int]],
    workers: int,
) -> list[np.ndarray]:
    """Predictions for each fold's cells by a model fitted on that fold's training rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    def fit(start: int, stop: int) -> np.ndarray:
        train, seed = plans[start]
        model = HistGradientBoostingClassifier(
            max_iter=100,
            learning_rate=0.1,
            max_leaf_nodes=31,
            early_stopping=False,
            random_state=seed,
        )
        # the OpenMP limit belongs to the calling thread: set it in every worker
        with threadpool_limits(limits=1, user_api="openmp"):
            model.fit(features[train], target[train])
            return model.predict_proba(features[fold == start])[:, 1]

    return map_gene_chunks(fit, len(plans), chunk_size=1, n_jobs=workers)


def _threshold(
    observed: np.ndarray, simulated: np.ndarray, method: str | float, rate: float
) -> tuple[float, str]:
    """The score above which a cell is called, and how it was found."""
    if not isinstance(method, str):
        return float(method), "manual"
    expected = _expected_rate_threshold(observed, rate)
    if method == "expected":
        return expected, "expected_rate"
    if method == "otsu":
        return _otsu(simulated), "otsu"
    cut = _histogram_minimum(simulated)
    if cut is not None:
        called = float((observed > cut).mean())
        if rate / 3.0 <= called <= 3.0 * rate:
            return cut, "histogram_minimum"
    return expected, "expected_rate"


def _expected_rate_threshold(observed: np.ndarray, rate: float) -> float:
    """A cut that calls the ``rate * n`` highest scores."""
    n_called = int(round(rate * observed.size))
    if n_called <= 0:
        return float(observed.max())
    ranked = np.sort(observed)[::-1]
    if n_called >= ranked.size:
        return float(np.nextafter(ranked[-1], -np.inf))
    return float(0.5 * (ranked[n_called - 1] + ranked[n_called]))


def _histogram_minimum(values: np.ndarray, bins: int = 256) -> float | None:
    """The lowest point between the two modes of the smoothed histogram (None if unimodal).

    The histogram is smoothed by a running mean of three bins until at most two local
    maxima remain (at most 10,000 passes); a valley above half the lower peak does not
    count as one.
    """
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return None
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    smooth = counts.astype(np.float64)
    for _ in range(10_000):
        peaks = _local_maxima(smooth)
        if peaks.size <= 2:
            break
        padded = np.concatenate([[smooth[0]], smooth, [smooth[-1]]])
        smooth = (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0
    peaks = _local_maxima(smooth)
    if peaks.size != 2:
        return None
    valley = peaks[0] + int(np.argmin(smooth[peaks[0] : peaks[1] + 1]))
    # a shallow dip (a bump in one mode's tail) does not separate two modes
    if smooth[valley] > 0.5 * smooth[peaks].min():
        return None
    return float(0.5 * (edges[valley] + edges[valley + 1]))


def _local_maxima(values: np.ndarray) -> np.ndarray:
    """Positions of the local maxima, the two ends included (a flat top counts once).

    Scores are bounded, so a mode often sits in the first or last bin.
    """
    change = np.diff(np.concatenate([[-np.inf], values, [-np.inf]]))
    moving = np.flatnonzero(change != 0)
    signs = np.sign(change[moving])
    peaks = [moving[i + 1] - 1 for i in range(signs.size - 1) if signs[i] > 0 > signs[i + 1]]
    return np.asarray(peaks, dtype=np.int64)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximizes the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(counts * centres) / np.maximum(weight_low, 1)
    mean_high = ((counts * centres).sum() - np.cumsum(counts * centres)) / np.maximum(
        weight_high, 1
    )
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    best = int(np.argmax(between[:-1]))
    return float(edges[best + 1])


__all__ = ["doublets"]
