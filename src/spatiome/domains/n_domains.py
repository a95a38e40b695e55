"""How many spatial domains: the eigengap of the spots' feature graph, or the mixture's BIC."""

from __future__ import annotations

import logging
import numbers
import time

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._core.near_empty import warn_near_empty
from .._core.validate import SpatiomeInputError, check_adata
from .cluster import _domain_features, _representation

logger = logging.getLogger("spatiome")

_METHODS = ("auto", "eigengap", "bic", "bic_elbow")

# Largest eigengap over the median gap from which the gap is called clear. Measured with
# the defaults (benchmarks/n_domains.py): 2.3-5.0 on the three DLPFC sections, the
# olfactory bulb and the breast cancer section, 9.4 on the seqFISH field (257 cells, too
# few for a mixture: the eigengap decides there either way), 34-146 on eight simulated
# tissues with 4-7 distinct domains.
_CLEAR_GAP_RATIO = 7.0

# bic_elbow: the smallest k whose BIC is within this fraction of the BIC drop from one
# component to the lowest BIC. Leaving each of the four labelled tissues out in turn, the
# other three chose 0.4 every time (of 0.02-0.5; benchmarks/n_domains.py --loso, on the
# Seurat v3 genes of scanpy; shared-covariance mixtures keep lowering the BIC up to 15
# components, so small fractions pick 11-15).
_ELBOW_FRACTION = 0.4

# Fewest neighbours of a spot in the feature graph; otherwise sqrt(number of spots).
_MIN_GRAPH_NEIGHBORS = 10


def choose_n_domains(
    adata: AnnData,
    *,
    method: str = "auto",
    k_range: tuple[int, int] = (2, 15),
    use_rep: str | None = None,
    neighbourhood_lambda: float = 0.5,
    smoothing_steps: int = 3,
    target_sum: float | None = 1e4,
    n_comps: int = 30,
    n_top_genes: int | None = 3000,
    n_spatial_neighbors: int = 6,
    spatial_key: str = "spatial",
    max_spots: int = 5000,
    key_added: str = "n_domains",
    random_state: int = 0,
) -> int:
    """Choose the number of domains for :func:`spatiome.domains.cluster` from the data.

    The spots are described by the features :func:`~spatiome.domains.cluster` clusters
    (each spot's principal components next to their spatial neighbourhood mean,
    reduced to ``n_comps`` principal components; the same parameters give the same
    features) or by ``adata.obsm[use_rep]``. Two criteria look at them:

    - ``"eigengap"``: every spot is linked to its ``sqrt(n)`` nearest spots in feature
      space (at least 10); of the eigenvalues ``0 = l_1 <= l_2 <= ...`` of the normalized
      Laplacian of this graph, the ``k`` after which the gap ``l_{k+1} - l_k`` is largest
      is chosen: ``k`` loosely joined groups of spots give ``k`` eigenvalues near 0, then
      a jump. The gap is clear when it is at least 7 times the median gap over
      ``k_range``.
    - ``"bic_elbow"``: Gaussian mixtures with one shared covariance (the clusterer of
      :func:`~spatiome.domains.cluster`) are fitted for every ``k``, each started from the
      cut of one Ward tree of the spots, and the smallest ``k`` whose BIC is within 40% of
      the drop from one component to the lowest BIC is chosen (the elbow that
      BayesSpace's ``qTune`` plot is read for). ``"bic"`` takes the lowest BIC
      (mclust's choice). Mixtures with more parameters than spots are left out.

    ``"auto"`` (default) takes the eigengap when it is clear, and the BIC elbow otherwise,
    provided every mixture in ``k_range`` has fewer parameters than there are spots
    (2,745 spots for 15 components in 60 dimensions); on smaller data the eigengap
    decides anyway. Where domains are distinct, the eigengap finds their number exactly
    (8 of 8 simulated tissues with 4-7 domains); where they grade into each other, as
    cortical layers do, its largest gap is one of many similar ones and jumps with the
    graph's size (2, 9 and 7 on the three DLPFC sections), while the elbow moves little
    and in one direction with its fraction. Measured with the defaults
    (``benchmarks/n_domains.py --loso``; the fraction, 0.4, chosen leaving each labelled
    tissue out): 7, 6 and 7 on the three DLPFC sections (7 manual layers; :func:`cluster`'s
    ARI at the chosen number 0.600, 0.500, 0.587 against 0.600, 0.592, 0.587 at 7) and 5 on the
    olfactory bulb (5 layers; by the eigengap, as no mixture fits 262 spots in 60
    dimensions). On tissues like these the number is uncertain by one or
    two either way; the stored reason says which case applies. Nothing is random but,
    above ``max_spots``, the spot sample (the features' principal components are exact);
    a DLPFC section (3,600 spots) took 15-28 s on two shared cores, features included.

    Above ``max_spots`` the features are computed on every spot (the neighbourhood mean
    needs the neighbours; the principal components come from the gene-by-gene covariance,
    two passes over the data), and the graph and the mixtures see a random sample of
    ``max_spots`` spots, so the criteria cost the same at any size.

    Parameters
    ----------
    adata
        Normalized data (run :func:`spatiome.pp.normalize` first) with coordinates, or any
        data with ``adata.obsm[use_rep]``.
    method
        ``"auto"``, ``"eigengap"``, ``"bic_elbow"`` or ``"bic"``.
    k_range
        Smallest and largest number of domains considered (inclusive).
    use_rep
        Use this ``adata.obsm`` representation instead of computing the features (for
        example ``"X_spatial_domain"`` written by an earlier :func:`cluster`).
    neighbourhood_lambda, n_comps, n_top_genes, n_spatial_neighbors, spatial_key
        The feature parameters of :func:`cluster`; keep them equal to the ones of the
        clustering the number is chosen for.
    max_spots
        Larger data are represented by this many spots drawn at random under
        ``random_state`` (for the eigengap's graph and the BIC scan alike).
    key_added
        Key of ``adata.uns["spatiome"]`` receiving the record.
    random_state
        Seed of the spot sample and of the eigensolver's start.

    Returns
    -------
    int
        The chosen number of domains. ``adata.uns["spatiome"][key_added]`` holds
        ``"n_domains"``, ``"method"``, ``"decided_by"`` (``"eigengap"``, ``"bic_elbow"``
        or ``"bic"``), ``"reason"`` (one sentence), ``"k"``, ``"score"`` (per ``k``, of
        the deciding criterion) and ``"score_name"``; with the eigengap, ``"eigengap"``
        (per ``k``), ``"eigenvalues"``, ``"gap_ratio"``, ``"clear_gap"`` and
        ``"n_neighbors"``; with a mixture, ``"bic"`` (per ``k``) and
        ``"bic_one_component"``; and ``"n_spots"``, ``"seconds"`` and the parameters.

    References
    ----------
    von Luxburg (2007). A tutorial on spectral clustering. Statistics and Computing 17,
    395-416 (section 8.3, the eigengap heuristic).

    Fraley and Raftery (2002). Model-based clustering, discriminant analysis, and density
    estimation. Journal of the American Statistical Association 97, 611-631.

    Examples
    --------
    >>> import spatiome as sm
    >>> adata = sm.datasets.simulate_tissue(n_spots=800, n_genes=200, n_domains=4,
    ...                                     patterns=("domain",), random_state=0)
    >>> sm.pp.normalize(adata)
    >>> sm.domains.choose_n_domains(adata)
    4
    >>> record = adata.uns["spatiome"]["n_domains"]
    >>> record["decided_by"], record["clear_gap"], len(record["k"]) == len(record["score"])
    ('eigengap', True, True)
    """
    start = time.perf_counter()
    check_adata(adata)
    if method not in _METHODS:
        raise SpatiomeInputError(f"method must be one of {_METHODS}, got {method!r}")
    low, high = _check_k_range(k_range, adata.n_obs)
    if isinstance(max_spots, bool) or not isinstance(max_spots, numbers.Integral):
        raise SpatiomeInputError(f"max_spots must be an integer, got {max_spots!r}")
    if max_spots < high + 2:
        raise SpatiomeInputError(
            f"max_spots must be at least k_range[1] + 2 = {high + 2}, got {max_spots}"
        )
    warn_near_empty(adata, caller="domains.choose_n_domains")
    random_state = 0 if random_state is None else int(random_state)
    record: dict = {"method": method, "k_range": [low, high], "random_state": random_state}
    if use_rep is None:
        features, details = _domain_features(
            adata,
            neighbourhood_lambda=float(neighbourhood_lambda),
            smoothing_steps=int(smoothing_steps),
            target_sum=target_sum,
            n_comps=n_comps,
            n_top_genes=n_top_genes,
            n_spatial_neighbors=n_spatial_neighbors,
            spatial_key=spatial_key,
            random_state=random_state,
            caller="domains.choose_n_domains",
        )
        record["features"] = details
    else:
        features = _representation(adata, use_rep)
        record["use_rep"] = use_rep
    features = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    if features.shape[0] > max_spots:
        features = features[np.sort(rng.choice(features.shape[0], max_spots, replace=False))]
    ks = np.arange(low, high + 1)
    decided_by = "bic" if method == "bic" else "bic_elbow"
    largest = _largest_mixture(*features.shape)
    if method in ("auto", "eigengap"):
        chosen, scores, extra = _eigengap(features, ks, rng)
        record.update(extra, eigengap=[float(v) for v in scores])
        if method == "eigengap" or extra["clear_gap"]:
            decided_by = "eigengap"
        elif largest < high:
            decided_by = "eigengap"
            record["reason"] = (
                f"{extra['reason']}; the BIC elbow could not decide instead: a mixture of "
                f"{high} components with a shared covariance in {features.shape[1]} dimensions "
                f"has more parameters than the {features.shape[0]} spots"
            )
    if decided_by != "eigengap":
        if largest < low:
            raise SpatiomeInputError(
                f"{features.shape[0]} spots cannot fit a mixture of {low} components with "
                f"a shared covariance in {features.shape[1]} dimensions (more parameters than "
                "spots): use method='eigengap' or fewer n_comps"
            )
        ks = ks[ks <= largest]
        chosen, scores, extra = _bic(features, ks, decided_by)
        if method == "auto":
            extra["reason"] = (
                f"{extra['reason']}; the largest eigengap (after eigenvalue "
                f"{record['eigengap_k']}) was only {record['gap_ratio']:.1f} times the median "
                f"gap, below {_CLEAR_GAP_RATIO:g}: the domains are not sharply separated and "
                "neighbouring numbers fit about as well"
            )
        elif ks[-1] < high:
            extra["reason"] += f" (above {ks[-1]} components it has more parameters than spots)"
        record.update(extra, bic=[float(v) for v in scores])
    record.update(
        n_domains=int(chosen),
        decided_by=decided_by,
        k=ks.tolist(),
        score=[float(v) for v in scores],
        score_name=decided_by if decided_by == "eigengap" else "bic",
        n_spots=int(features.shape[0]),
        seconds=float(time.perf_counter() - start),
    )
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][key_added] = record
    logger.info("choose_n_domains: %s", record["reason"])
    return int(chosen)


def _eigengap(
    features: np.ndarray, ks: np.ndarray, rng: np.random.Generator
) -> tuple[int, np.ndarray, dict]:
    n_obs = features.shape[0]
    n_neighbors = int(min(max(_MIN_GRAPH_NEIGHBORS, round(np.sqrt(n_obs))), n_obs - 1))
    eigenvalues = _laplacian_spectrum(features, n_neighbors, int(ks[-1]) + 1, rng)
    # gaps[k - 1] = l_{k+1} - l_k with l_1 the smallest eigenvalue.
    gaps = np.diff(eigenvalues)[ks - 1]
    best = int(np.argmax(gaps))
    median = float(np.median(gaps))
    ratio = float(gaps[best] / median) if median > 0 else float("inf")
    clear = bool(ratio >= _CLEAR_GAP_RATIO)
    chosen = int(ks[best])
    strength = (
        "a clear gap: the spots form well separated groups"
        if clear
        else f"a weak gap (below {_CLEAR_GAP_RATIO:g} times the median): the tissue has no "
        "sharply separated domains and neighbouring numbers fit about as well"
    )
    reason = (
        f"{chosen} domains: the normalized Laplacian of the {n_neighbors}-nearest-neighbour "
        f"graph of {n_obs} spots in feature space has its largest eigengap for k in "
        f"{ks[0]}..{ks[-1]} after eigenvalue {chosen}, {ratio:.1f} times the median gap, "
        f"{strength}"
    )
    extra = {
        "eigengap_k": chosen,
        "eigenvalues": [float(v) for v in eigenvalues],
        "gap_ratio": ratio,
        "clear_gap": clear,
        "n_neighbors": n_neighbors,
        "reason": reason,
    }
    return chosen, gaps, extra


def _laplacian_spectrum(
    features: np.ndarray, n_neighbors: int, n_eigenvalues: int, rng: np.random.Generator
) -> np.ndarray:
    """The ``n_eigenvalues`` smallest eigenvalues of the normalized kNN-graph Laplacian."""
    from scipy.sparse.linalg import eigsh
    from sklearn.neighbors import NearestNeighbors

    n_obs = features.shape[0]
    index = (
        NearestNeighbors(n_neighbors=n_neighbors + 1)
        .fit(features)
        .kneighbors(features, return_distance=False)
    )
    rows = np.repeat(np.arange(n_obs), n_neighbors + 1)
    knn = sp.csr_matrix((np.ones(rows.size), (rows, index.ravel())), shape=(n_obs, n_obs))
    knn.setdiag(0)
    adjacency = ((knn + knn.T) > 0).astype(np.float64)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    scale = sp.diags(1.0 / np.sqrt(np.maximum(degree, 1.0)))
    normalized = (scale @ adjacency @ scale).tocsr()
    if n_obs <= 4 * n_eigenvalues + 50:
        top = np.linalg.eigvalsh(normalized.toarray())[::-1][:n_eigenvalues]
    else:
        # The largest eigenvalues of D^-1/2 W D^-1/2 are 1 minus the smallest of the
        # Laplacian; Lanczos finds them without factorizing the matrix.
        values = eigsh(
            normalized, k=n_eigenvalues, which="LA", tol=1e-8, v0=rng.uniform(0.5, 1.5, n_obs)
        )[0]
        top = np.sort(values)[::-1]
    return np.clip(1.0 - top, 0.0, None)


def _largest_mixture(n_obs: int, n_features: int) -> int:
    """Most components of a tied-covariance mixture with fewer parameters than spots."""
    # k components: k * (mean, weight) - 1 + one shared covariance.
    shared = n_features * (n_features + 1) // 2
    return int(max(n_obs - shared, 0) // (n_features + 1))


def _bic(features: np.ndarray, ks: np.ndarray, method: str) -> tuple[int, np.ndarray, dict]:
    scores, one = _bic_scan(features, ks)
    best = int(np.argmin(scores))
    if method == "bic":
        chosen = int(ks[best])
        rule = f"the lowest BIC for k in {ks[0]}..{ks[-1]}"
    else:
        drop = one - float(scores[best])
        within = scores - scores[best] <= _ELBOW_FRACTION * max(drop, 0.0)
        chosen = int(ks[np.argmax(within)])
        rule = (
            f"the smallest k in {ks[0]}..{ks[-1]} whose BIC is within "
            f"{_ELBOW_FRACTION:.0%} of the drop from 1 component to the lowest BIC "
            f"(at k = {int(ks[best])})"
        )
    reason = (
        f"{chosen} domains: {rule} of Gaussian mixtures with a shared covariance on "
        f"{features.shape[0]} spots"
    )
    return chosen, scores, {"bic_one_component": one, "reason": reason}


def _bic_scan(features: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, float]:
    """BIC of the mixture at each k (and at 1), started from the cuts of one Ward tree.

    Nested starts, as in mclust, make the BIC curve smooth in k and independent of any
    seed; from k-means starts (one per k) the curve jumped by up to 20% of its range
    between seeds on the DLPFC sections.
    """
    from scipy.cluster.hierarchy import cut_tree, ward
    from threadpoolctl import threadpool_limits

    ridge = 1e-4 * float(np.mean(np.var(features, axis=0))) + 1e-12
    cuts = cut_tree(ward(features), n_clusters=[1, *ks.tolist()])
    # Each fit multiplies matrices of n_comps columns: extra BLAS threads only wait on
    # each other there, and slowed the scan down many times on a busy machine.
    with threadpool_limits(limits=1, user_api="blas"):
        bic = [_mixture_from(features, cuts[:, i], ridge).bic(features) for i in range(len(ks) + 1)]
    return np.asarray(bic[1:]), float(bic[0])


def _mixture_from(features: np.ndarray, labels: np.ndarray, ridge: float):
    """Gaussian mixture (one shared covariance) fitted by EM from the groups in ``labels``."""
    from sklearn.mixture import GaussianMixture

    _, labels = np.unique(labels, return_inverse=True)
    n_groups, n_features = int(labels.max()) + 1, features.shape[1]
    sizes = np.bincount(labels, minlength=n_groups).astype(np.float64)
    means = np.zeros((n_groups, n_features))
    np.add.at(means, labels, features)
    means /= sizes[:, None]
    centred = features - means[labels]
    covariance = centred.T @ centred / features.shape[0] + ridge * np.eye(n_features)
    precisions = np.linalg.inv(covariance)
    return GaussianMixture(
        n_components=n_groups,
        covariance_type="tied",
        reg_covar=ridge,
        weights_init=sizes / sizes.sum(),
        means_init=means,
        precisions_init=precisions,
    ).fit(features)


def _check_k_range(k_range: tuple[int, int], n_obs: int) -> tuple[int, int]:
    try:
        low, high = k_range
    except (TypeError, ValueError):
        raise SpatiomeInputError(
            f"k_range must be a pair (smallest, largest), got {k_range!r}"
        ) from None
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SpatiomeInputError(f"k_range must hold two integers, got {k_range!r}")
    if not 2 <= low <= high:
        raise SpatiomeInputError(f"k_range must satisfy 2 <= smallest <= largest, got {k_range!r}")
    if high + 2 > n_obs:
        raise SpatiomeInputError(
            f"k_range[1] = {high} needs at least {high + 2} spots, the data have {n_obs}"
        )
    return int(low), int(high)
