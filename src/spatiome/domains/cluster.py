"""Clustering of spots: Leiden, k-means and Ward, on expression or neighbourhood features."""

from __future__ import annotations

import logging
import numbers
import warnings

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from threadpoolctl import threadpool_limits

from .._core.near_empty import near_empty_checked, warn_near_empty
from .._core.validate import SpatiomeInputError, check_adata, get_matrix, get_spatial
from ._ward import ward_labels

logger = logging.getLogger("spatiome")

# Bisection over the resolution stops after this many Leiden runs.
_MAX_LEIDEN_RUNS = 40
_RESOLUTION_BOUNDS = (1e-4, 1e3)


def leiden(
    adata: AnnData,
    *,
    resolution: float = 1.0,
    n_clusters: int | None = None,
    key_added: str = "leiden",
    random_state: int = 0,
    use_rep: str = "X_pca",
    n_neighbors: int = 15,
    copy: bool = False,
) -> AnnData | None:
    """Leiden clustering of the spots on the expression kNN graph.

    Runs :func:`scanpy.tl.leiden` (``flavor="igraph"``, ``n_iterations=2``, undirected,
    weighted) on the kNN graph of ``adata.obsm[use_rep]``. The graph written by
    :func:`spatiome.pp.reduce` (``adata.obsp["connectivities"]``) is reused when it was
    built on ``use_rep``; otherwise :func:`scanpy.pp.neighbors` builds one (stored under
    ``adata.uns["neighbors"]``, or ``adata.uns[f"neighbors_{use_rep}"]`` when a graph on
    another representation is already there and must not be overwritten).

    With ``n_clusters``, the resolution is searched to give exactly that many clusters:
    starting at ``resolution``, it is doubled (or halved) until the number of clusters
    brackets the request, then the bracket is bisected on a log scale. The number of
    clusters grows with the resolution in practice but not strictly, so if no resolution
    within ``_MAX_LEIDEN_RUNS`` runs gives the exact number (for instance when the graph
    has more connected components than requested), the closest result is kept and a
    warning is issued.

    Parameters
    ----------
    adata
        Data with ``adata.obsm[use_rep]`` (run :func:`spatiome.pp.reduce` first).
    resolution
        Leiden resolution (higher gives more clusters); the starting point of the search
        when ``n_clusters`` is given.
    n_clusters
        Requested number of clusters; ``None`` uses ``resolution`` as is.
    key_added
        Column of ``adata.obs`` receiving the categorical labels ``"0"``, ``"1"``, ...
        (``"0"`` is the largest cluster).
    random_state
        Seed of the Leiden optimization.
    use_rep
        Representation in ``adata.obsm`` the kNN graph is built on.
    n_neighbors
        Neighbours per spot when the graph has to be built.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. The resolution used and the number of
        clusters go to ``adata.uns["spatiome"][key_added]``.

    References
    ----------
    Traag, Waltman and van Eck (2019). From Louvain to Leiden: guaranteeing well-connected
    communities. Scientific Reports 9, 5233.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> from spatiome.domains import leiden
    >>> rng = np.random.default_rng(0)
    >>> centers = np.repeat(np.eye(3) * 20, 40, axis=0)
    >>> adata = ad.AnnData(np.zeros((120, 1)))
    >>> adata.obsm["X_pca"] = centers + rng.normal(size=(120, 3))
    >>> leiden(adata, n_clusters=3)
    >>> adata.obs["leiden"].value_counts().tolist()
    [40, 40, 40]
    """
    check_adata(adata)
    if n_clusters is not None:
        _check_n_clusters(n_clusters, adata.n_obs)
    if not resolution > 0:
        raise SpatiomeInputError(f"resolution must be positive, got {resolution!r}")
    warn_near_empty(adata, caller="domains.leiden")
    random_state = 0 if random_state is None else int(random_state)
    adata = adata.copy() if copy else adata
    graph = _expression_graph(adata, use_rep, n_neighbors, random_state)

    def run(res: float) -> AnnData:
        # A bare AnnData holds the trial labels so the search never touches the user's object.
        shell = AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
        sc.tl.leiden(
            shell,
            resolution=res,
            adjacency=graph,
            key_added=key_added,
            random_state=random_state,
            flavor="igraph",
            n_iterations=2,
            directed=False,
        )
        return shell

    if n_clusters is None:
        chosen, used = run(resolution), float(resolution)
    else:
        chosen, used = _search_resolution(run, key_added, int(n_clusters), float(resolution))
    # Relabel by decreasing size, with numeric category order ("0", "1", ..., "10").
    adata.obs[key_added] = _labels_by_size(chosen.obs[key_added].cat.codes.to_numpy())
    adata.uns[key_added] = chosen.uns[key_added]
    found = int(adata.obs[key_added].nunique())
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][key_added] = {
        "method": "leiden",
        "resolution": used,
        "n_clusters": found,
        "requested_n_clusters": -1 if n_clusters is None else int(n_clusters),
        "use_rep": use_rep,
        "random_state": int(random_state),
    }
    logger.info("leiden: %d clusters at resolution %.4g", found, used)
    return adata if copy else None


def _search_resolution(run, key: str, target: int, start: float) -> tuple[AnnData, float]:
    tried: dict[float, AnnData] = {}

    def count(res: float) -> int:
        tried[res] = run(res)
        return int(tried[res].obs[key].nunique())

    low, high = _RESOLUTION_BOUNDS
    res, found = start, count(start)
    if found < target:
        low = res
        while found < target and res < _RESOLUTION_BOUNDS[1] and len(tried) < _MAX_LEIDEN_RUNS:
            low, res = res, res * 2.0
            found = count(res)
        high = res
    elif found > target:
        high = res
        while found > target and res > _RESOLUTION_BOUNDS[0] and len(tried) < _MAX_LEIDEN_RUNS:
            high, res = res, res / 2.0
            found = count(res)
        low = res
    while found != target and len(tried) < _MAX_LEIDEN_RUNS and high / low > 1.0001:
        res = float(np.sqrt(low * high))
        found = count(res)
        if found < target:
            low = res
        elif found > target:
            high = res

    def distance(item: tuple[float, AnnData]) -> tuple[int, float]:
        return abs(int(item[1].obs[key].nunique()) - target), item[0]

    best_res, best = min(tried.items(), key=distance)
    got = int(best.obs[key].nunique())
    if got != target:
        warnings.warn(
            f"leiden: no resolution gave {target} clusters after {len(tried)} runs; "
            f"using resolution {best_res:.4g} with {got} clusters",
            UserWarning,
            stacklevel=3,
        )
    return best, best_res


def _expression_graph(
    adata: AnnData, use_rep: str, n_neighbors: int, random_state: int
) -> sp.csr_matrix:
    _require_representation(adata, use_rep)
    for key in ("neighbors", f"neighbors_{use_rep}"):
        info = adata.uns.get(key)
        if isinstance(info, dict) and info.get("params", {}).get("use_rep") == use_rep:
            conn_key = info.get("connectivities_key", "connectivities")
            if conn_key in adata.obsp:
                return sp.csr_matrix(adata.obsp[conn_key])
    key_added = None if "neighbors" not in adata.uns else f"neighbors_{use_rep}"
    sc.pp.neighbors(
        adata,
        n_neighbors=int(min(max(n_neighbors, 2), adata.n_obs)),
        use_rep=use_rep,
        random_state=random_state,
        key_added=key_added,
    )
    info = adata.uns["neighbors" if key_added is None else key_added]
    return sp.csr_matrix(adata.obsp[info["connectivities_key"]])


def kmeans(
    adata: AnnData,
    n_clusters: int,
    *,
    use_rep: str = "X_pca",
    key_added: str = "kmeans",
    random_state: int = 0,
    n_init: int = 10,
    copy: bool = False,
) -> AnnData | None:
    """k-means clustering of the spots on ``adata.obsm[use_rep]`` (scikit-learn).

    Parameters
    ----------
    adata
        Data with ``adata.obsm[use_rep]`` (run :func:`spatiome.pp.reduce` first).
    n_clusters
        Number of clusters.
    use_rep
        Representation in ``adata.obsm`` to cluster.
    key_added
        Column of ``adata.obs`` receiving categorical labels ``"0"``, ``"1"``, ...
        ordered by decreasing cluster size.
    random_state
        Seed of the k-means++ initialization.
    n_init
        Number of initializations; the best (lowest inertia) is kept.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Parameters and the inertia go to
        ``adata.uns["spatiome"][key_added]``.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> from spatiome.domains import kmeans
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(np.zeros((90, 1)))
    >>> adata.obsm["X_pca"] = np.repeat(np.eye(3) * 10, 30, axis=0) + rng.normal(size=(90, 3))
    >>> kmeans(adata, 3)
    >>> adata.obs["kmeans"].value_counts().tolist()
    [30, 30, 30]
    """
    from sklearn.cluster import KMeans

    check_adata(adata)
    _require_representation(adata, use_rep)
    _check_n_clusters(n_clusters, adata.n_obs)
    warn_near_empty(adata, caller="domains.kmeans")
    features = _representation(adata, use_rep)
    random_state = 0 if random_state is None else int(random_state)
    model = KMeans(n_clusters=int(n_clusters), n_init=n_init, random_state=random_state)
    labels = model.fit_predict(features)
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = _labels_by_size(labels)
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][key_added] = {
        "method": "kmeans",
        "n_clusters": int(n_clusters),
        "use_rep": use_rep,
        "random_state": int(random_state),
        "inertia": float(model.inertia_),
    }
    return adata if copy else None


def hierarchical(
    adata: AnnData,
    n_clusters: int,
    *,
    use_rep: str = "X_pca",
    max_exact: int = 5_000,
    n_micro: int = 2_000,
    key_added: str = "hierarchical",
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Ward hierarchical clustering of the spots on ``adata.obsm[use_rep]``.

    Up to ``max_exact`` spots, Ward's method runs on the spots themselves. Beyond, the spots
    are first summarized by ``n_micro`` k-means centroids (scikit-learn's mini-batch
    k-means) and the centroids are merged by Ward's criterion weighted by their numbers of
    spots, which is exactly Ward's merge cost of the underlying spot sets; each spot takes
    its centroid's cluster. Memory is O(m^2) for m merged points (32 MB at m = 2,000), time
    O(n) for the summary, so a million spots take seconds.

    Parameters
    ----------
    adata
        Data with ``adata.obsm[use_rep]`` (run :func:`spatiome.pp.reduce` first).
    n_clusters
        Number of clusters.
    use_rep
        Representation in ``adata.obsm`` to cluster.
    max_exact
        Largest number of spots merged directly.
    n_micro
        Number of k-means centroids summarizing larger data.
    key_added
        Column of ``adata.obs`` receiving categorical labels ``"0"``, ``"1"``, ...
        ordered by decreasing cluster size.
    random_state
        Seed of the k-means summary (the exact mode is deterministic).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Parameters go to
        ``adata.uns["spatiome"][key_added]``.

    References
    ----------
    Ward (1963). Hierarchical grouping to optimize an objective function. Journal of the
    American Statistical Association 58, 236-244.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> from spatiome.domains import hierarchical
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(np.zeros((90, 1)))
    >>> adata.obsm["X_pca"] = np.repeat(np.eye(3) * 10, 30, axis=0) + rng.normal(size=(90, 3))
    >>> hierarchical(adata, 3)
    >>> adata.obs["hierarchical"].value_counts().tolist()
    [30, 30, 30]
    """
    check_adata(adata)
    features = _representation(adata, use_rep)
    _check_n_clusters(n_clusters, adata.n_obs)
    if max_exact < 2 or n_micro < 2:
        raise SpatiomeInputError(
            f"max_exact and n_micro must be at least 2, got {max_exact} and {n_micro}"
        )
    warn_near_empty(adata, caller="domains.hierarchical")
    random_state = 0 if random_state is None else int(random_state)
    n_obs = features.shape[0]
    if n_obs <= max_exact:
        labels = ward_labels(features, np.ones(n_obs), int(n_clusters))
        n_merged = n_obs
    else:
        from sklearn.cluster import MiniBatchKMeans

        n_merged = int(max(min(n_micro, n_obs), n_clusters))
        summary = MiniBatchKMeans(
            n_clusters=n_merged, random_state=random_state, n_init=1, batch_size=4096
        ).fit(features)
        assigned = summary.labels_
        sizes = np.bincount(assigned, minlength=n_merged).astype(np.float64)
        used = sizes > 0
        centre_labels = np.zeros(n_merged, dtype=np.int64)
        centre_labels[used] = ward_labels(
            summary.cluster_centers_[used], sizes[used], int(min(n_clusters, used.sum()))
        )
        labels = centre_labels[assigned]
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = _labels_by_size(labels)
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][key_added] = {
        "method": "hierarchical",
        "linkage": "ward",
        "n_clusters": int(n_clusters),
        "use_rep": use_rep,
        "n_merged_points": int(n_merged),
        "summarized": bool(n_obs > max_exact),
        "random_state": int(random_state),
    }
    return adata if copy else None


def _fit_gmm(
    features: np.ndarray,
    n_clusters: int,
    covariance_type: str,
    random_state: int | np.random.RandomState,
    n_init: int,
):
    """scikit-learn's mixture with the ridge of :func:`gaussian_mixture`."""
    from sklearn.mixture import GaussianMixture

    ridge = 1e-4 * float(np.mean(np.var(features, axis=0))) + 1e-12
    return GaussianMixture(
        n_components=n_clusters,
        covariance_type=covariance_type,
        reg_covar=ridge,
        n_init=n_init,
        random_state=random_state,
    ).fit(features)


def gaussian_mixture(
    adata: AnnData,
    n_clusters: int,
    *,
    use_rep: str = "X_pca",
    covariance_type: str = "full",
    key_added: str = "gmm",
    random_state: int = 0,
    n_init: int = 1,
    max_fit_spots: int | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Gaussian mixture clustering of the spots on ``adata.obsm[use_rep]`` (scikit-learn).

    The Python counterpart of the ``mclust`` step of STAGATE, GraphST and BASS-style
    pipelines (``covariance_type="full"`` is mclust's ``VVV``, ``"tied"`` its ``EEE``),
    with no R. A small ridge (1e-4 times the mean feature variance) keeps the
    covariances positive definite when a component collapses.

    Parameters
    ----------
    adata
        Data with ``adata.obsm[use_rep]``.
    n_clusters
        Number of mixture components.
    use_rep
        Representation in ``adata.obsm`` to cluster.
    covariance_type
        ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
    key_added
        Column of ``adata.obs`` receiving categorical labels ``"0"``, ``"1"``, ...
        ordered by decreasing cluster size; the posterior probability of the chosen
        component goes to ``adata.obs[f"{key_added}_probability"]``.
    random_state
        Seed of the k-means initialization.
    n_init
        Number of initializations; the best (highest likelihood) is kept.
    max_fit_spots
        Above this many spots, the mixture is fitted on this many spots drawn at random
        (under ``random_state``) and every spot is then assigned its most probable
        component; ``None`` fits on all spots.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Parameters, the BIC (of all spots),
        the number of spots fitted (``"fit_spots"``) and whether EM converged go to
        ``adata.uns["spatiome"][key_added]``.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> from spatiome.domains import gaussian_mixture
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(np.zeros((90, 1)))
    >>> adata.obsm["X_pca"] = np.repeat(np.eye(3) * 10, 30, axis=0) + rng.normal(size=(90, 3))
    >>> gaussian_mixture(adata, 3)
    >>> adata.obs["gmm"].value_counts().tolist()
    [30, 30, 30]
    """
    check_adata(adata)
    features = _representation(adata, use_rep)
    _check_n_clusters(n_clusters, adata.n_obs)
    _check_covariance(covariance_type)
    _check_max_fit_spots(max_fit_spots, int(n_clusters))
    warn_near_empty(adata, caller="domains.gaussian_mixture")
    random_state = 0 if random_state is None else int(random_state)
    fitted = _fit_sample(features, max_fit_spots, random_state)
    model = _fit_gmm(fitted, int(n_clusters), covariance_type, random_state, int(n_init))
    probabilities = model.predict_proba(features)
    labels = probabilities.argmax(axis=1)
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = _labels_by_size(labels)
    adata.obs[f"{key_added}_probability"] = probabilities.max(axis=1)
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][key_added] = {
        "method": "gaussian_mixture",
        "covariance_type": covariance_type,
        "n_clusters": int(n_clusters),
        "use_rep": use_rep,
        "random_state": int(random_state),
        "bic": float(model.bic(features)),
        "fit_spots": int(fitted.shape[0]),
        "max_fit_spots": max_fit_spots,
        "converged": bool(model.converged_),
    }
    return adata if copy else None


def _check_max_fit_spots(max_fit_spots: int | None, n_clusters: int) -> None:
    if max_fit_spots is None:
        return
    if not _is_count(max_fit_spots, minimum=max(2, n_clusters)):
        raise SpatiomeInputError(
            f"max_fit_spots must be None or an integer of at least the number of clusters "
            f"({n_clusters}) and 2, got {max_fit_spots!r}"
        )


def _fit_sample(features: np.ndarray, max_fit_spots: int | None, random_state: int) -> np.ndarray:
    """``features``, or ``max_fit_spots`` of its rows drawn at random, in their order."""
    n_obs = features.shape[0]
    if max_fit_spots is None or n_obs <= max_fit_spots:
        return features
    rng = np.random.default_rng(random_state)
    return features[np.sort(rng.choice(n_obs, size=int(max_fit_spots), replace=False))]


_CLUSTER_METHODS = ("kmeans", "gmm", "leiden", "hierarchical")

# Spots the mixture of cluster() is fitted on; larger data are assigned by the fitted mixture.
_MAX_FIT_SPOTS = 20_000
_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _check_covariance(covariance_type: str) -> None:
    if covariance_type not in _COVARIANCE_TYPES:
        raise SpatiomeInputError(
            f"covariance_type must be one of {_COVARIANCE_TYPES}, got {covariance_type!r}"
        )


def _is_count(value: object, *, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def cluster(
    adata: AnnData,
    n_domains: int,
    *,
    method: str = "gmm",
    neighbourhood_lambda: float = 0.5,
    smoothing_steps: int = 3,
    target_sum: float | None = 1e4,
    covariance_type: str = "tied",
    n_init: int = 40,
    use_rep: str | None = None,
    n_comps: int = 30,
    n_top_genes: int | None = 3000,
    n_spatial_neighbors: int = 6,
    spatial_key: str = "spatial",
    min_domain_size: int = 5,
    refine: float = 5.0,
    extra_features: str | np.ndarray | None = None,
    extra_weight: float = 1.0,
    max_fit_spots: int | None = _MAX_FIT_SPOTS,
    key_added: str = "spatial_domain",
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Spatial domains from spatially smoothed principal components and a Gaussian mixture.

    Features: the ``n_comps`` principal components ``P`` of the ``n_top_genes`` highly
    variable genes (scanpy's ``seurat_v3`` ranking of the raw counts, as in
    :func:`spatiome.pp.reduce`; the counts scaled to
    ``target_sum`` per spot and log1p-transformed, not scaled per gene), next to their
    neighbourhood mean ``S^t P``: ``S`` averages each spot with its
    ``n_spatial_neighbors`` nearest spots, applied ``smoothing_steps`` times (the
    propagation of a simplified graph convolution, :func:`smooth_features`), the two
    blocks weighted ``sqrt(1 - lambda)`` and ``sqrt(lambda)`` as in BANKSY. They go to
    ``adata.obsm[f"X_{key_added}"]`` and are clustered into ``n_domains`` domains, by
    default with a Gaussian mixture whose components share one covariance (mclust's
    ``EEE``, the clusterer of STAGATE and GraphST) and a Potts smoothing of the labels.

    Every default was chosen by leave-one-section-out on three DLPFC sections and the
    olfactory bulb (``benchmarks/domains_sections.py --loso``; 48 candidates): each held-out
    section's choice, made on the other two and the bulb, was this one; the mixture's 40
    starts were chosen the same way on scanpy's Seurat v3 genes, all four sections held
    out in turn (of 10, 20 and 40; ``--loso-n-init``). Measured, mean of 3 seeds: adjusted
    Rand index 0.600, 0.596 and 0.576 on DLPFC 151673, 151674 and 151675 (7 manual layers;
    seed standard deviation at most 0.009) and 0.586 on the olfactory bulb (5 layers;
    0.56-0.60 by seed); 40 starts take 1.5-1.7 times the time of 10 on a DLPFC section.
    What mattered, each alone (measured with the previous genes and 10 starts): the shared
    covariance (full covariances on the same features: 0.39-0.41;
    k-means: 0.36-0.37), counts scaled to 10,000 rather than to the median library size
    (+0.05 to +0.18), three smoothing steps rather than one (+0.01 to +0.03 on DLPFC, +0.11
    on the bulb); the Potts smoothing adds 0-0.004.

    Nothing in ``adata`` other than the outputs changes: genes are selected on a lightweight
    view, and the expression graph of :func:`spatiome.pp.reduce` is not replaced.

    At scale: the principal components are exact, from the gene-by-gene covariance summed
    over blocks of rows (no copy of the matrix; equal to ARPACK's up to rounding, and on
    the DLPFC sections and the bulb the domains are unchanged). Above ``max_fit_spots``
    (20,000) the mixture is fitted on a random sample of that many spots and every spot
    is assigned by it; the small-domain refits and the Potts smoothing work on all spots.
    On simulated tissues of 3,000 spots fitted on 500, the domains agreed with the fit on
    all spots at ARI 0.985-0.998 (4 seeds), and with the simulated truth as well as it did.

    A clusterer can spend a domain on a few outlying spots: on the breast cancer, seqFISH
    and olfactory bulb sections, every Gaussian-mixture component of one to three spots
    held spots with at most a third of the median library size, 2-8 times farther from
    their nearest neighbour in feature space than the median spot. Such spots are not a
    domain, so the spots of any domain smaller than ``min_domain_size`` are set aside, the
    clusterer is fitted again on the other spots (up to eight times; a refitted mixture
    keeps the most likely of its starts with no component under ``min_domain_size``), and
    the set-aside spots join their most probable component (``"gmm"``, ``"kmeans"``) or
    the nearest domain centroid (``"leiden"``, ``"hierarchical"``). The number of domains
    is kept; only if small domains remain after the refits are they merged into the
    nearest larger domain, with a warning.

    Parameters
    ----------
    adata
        Normalized data (run :func:`spatiome.pp.normalize` first) with coordinates.
    n_domains
        Number of domains.
    method
        ``"gmm"`` (default; a Gaussian mixture, the mclust step of STAGATE-style
        pipelines), ``"kmeans"``, ``"leiden"`` (resolution searched for the number of
        domains) or ``"hierarchical"`` (Ward).
    neighbourhood_lambda
        Weight in [0, 1] of the neighbourhood mean; ``0`` (with ``refine=0``) clusters
        expression alone.
    smoothing_steps
        Times the neighbourhood mean is taken (``t`` steps reach about ``t`` rings of
        spots).
    target_sum
        Counts per spot before ``log1p`` for the features, when the genes are selected on
        the raw counts (``n_top_genes`` below the number of genes, counts kept by
        :func:`spatiome.pp.normalize`); otherwise, or with ``None``, ``adata.X`` is used
        as normalized.
    covariance_type
        Covariance of the mixture's components: ``"tied"`` (default, one shared),
        ``"full"``, ``"diag"`` or ``"spherical"``.
    n_init
        Starts of the mixture (k-means initializations); the most likely fit is kept.
        40 by default, the number chosen leaving each labelled section out in turn (of
        10, 20 and 40; ``docs/domains.md``): with 10, DLPFC 151674 and the bulb often
        stopped at a less likely fit with a lower ARI.
    use_rep
        Cluster this existing ``adata.obsm`` representation instead of computing features.
    n_comps, n_top_genes, n_spatial_neighbors
        Principal components, highly variable genes (``None``: all genes) and spatial
        neighbours of the features.
    spatial_key
        Coordinates in ``adata.obsm``.
    min_domain_size
        Smallest number of spots in a returned domain (``1`` keeps whatever the clusterer
        gives).
    refine
        Strength (in log-likelihood units per fully agreeing neighbourhood) of a spatial
        Potts smoothing of the labels, an HMRF-EM step after the clusterer: each domain
        is modelled as a Gaussian of the features, and each spot takes the domain that
        maximizes its log-likelihood plus ``refine`` times the fraction of its six
        nearest spots in that domain (iterated conditional modes, alternated with
        refitting the Gaussians, see :func:`potts_refine`). ``0`` keeps the clusterer's
        labels. The labels stay unrefined when smoothing would erase a domain or shrink it
        below ``min_domain_size`` (thin layers of a few spots), or when there are no
        coordinates. On weak simulated domains with one smoothing step ``refine=10``
        raises the ARI from 0.35 to 0.40; three smoothing steps reach 0.52.
    extra_features
        Per-spot features appended to the principal components before clustering: an
        ``adata.obsm`` key or an ``(n_obs, m)`` array (for instance cell-type fractions or
        layer-marker scores). Each column is standardized, and the block is scaled to
        ``extra_weight`` times the total variance of the components (see
        ``benchmarks/domains_sections.py --signatures`` for layer scores from another
        DLPFC section).
    extra_weight
        Total variance of the ``extra_features`` block relative to the components'.
    max_fit_spots
        Above this many spots, the Gaussian mixture (``method="gmm"``, also in its refits)
        is fitted on this many spots drawn at random under ``random_state``, and every spot
        is assigned its most probable component; the small-domain handling and the Potts
        smoothing then work on all spots. ``None`` fits on all spots. The default is far
        above the sections the defaults were chosen on, whose domains it leaves unchanged.
    key_added
        Column of ``adata.obs`` receiving the domain labels ``"0"``, ``"1"``, ... (by
        decreasing size).
    random_state
        Seed of the clusterer and of the spots the mixture is fitted on (the principal
        components are exact).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Parameters go to
        ``adata.uns["spatiome"][key_added]``, with ``"refits"`` (fits made without the
        spots of small domains), ``"set_aside_spots"`` (spots left out of the last fit)
        and ``"merged_domains"``.

    References
    ----------
    Singhal, Chou, Lee et al. (2024). BANKSY unifies cell typing and tissue domain
    segmentation for scalable spatial omics data analysis. Nature Genetics 56, 431-441.
    Zhang, Brady and Smith (2001). Segmentation of brain MR images through a hidden Markov
    random field model and the expectation-maximization algorithm. IEEE Transactions on
    Medical Imaging 20, 45-57.

    Examples
    --------
    >>> import spatiome as sm
    >>> adata = sm.datasets.simulate_tissue(n_spots=600, n_genes=80, n_domains=3,
    ...                                     random_state=0)
    >>> sm.pp.normalize(adata)
    >>> sm.domains.cluster(adata, 3, n_top_genes=None)
    >>> adata.obs["spatial_domain"].nunique(), adata.obsm["X_spatial_domain"].shape[0]
    (3, 600)
    """
    check_adata(adata)
    if method not in _CLUSTER_METHODS:
        raise SpatiomeInputError(f"method must be one of {_CLUSTER_METHODS}, got {method!r}")
    _check_n_clusters(n_domains, adata.n_obs)
    _check_min_size(min_domain_size, "min_domain_size")
    if not 0.0 <= float(neighbourhood_lambda) <= 1.0:
        raise SpatiomeInputError(
            f"neighbourhood_lambda must be in [0, 1], got {neighbourhood_lambda!r}"
        )
    if not float(refine) >= 0.0:
        raise SpatiomeInputError(f"refine must be a non-negative number, got {refine!r}")
    if not _is_count(smoothing_steps, minimum=1):
        raise SpatiomeInputError(
            f"smoothing_steps must be an integer >= 1, got {smoothing_steps!r}"
        )
    if not _is_count(n_spatial_neighbors, minimum=1):
        raise SpatiomeInputError(
            f"n_spatial_neighbors must be an integer >= 1, got {n_spatial_neighbors!r}"
        )
    if not _is_count(n_init, minimum=1):
        raise SpatiomeInputError(f"n_init must be an integer >= 1, got {n_init!r}")
    _check_covariance(covariance_type)
    _check_max_fit_spots(max_fit_spots, int(n_domains))
    clusterer = {
        "covariance_type": covariance_type,
        "n_init": int(n_init),
        "max_fit_spots": None if max_fit_spots is None else int(max_fit_spots),
    }
    extra = None if extra_features is None else _extra_block(adata, extra_features)
    if not float(extra_weight) > 0.0:
        raise SpatiomeInputError(f"extra_weight must be positive, got {extra_weight!r}")
    warn_near_empty(adata, caller="domains.cluster")
    random_state = 0 if random_state is None else int(random_state)
    adata = adata.copy() if copy else adata
    record: dict = {"method": method, "n_domains": int(n_domains)}
    if use_rep is None:
        use_rep = f"X_{key_added}"
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
            caller="domains.cluster",
        )
        adata.obsm[use_rep] = features
        record.update(details, use_rep=use_rep)
    else:
        _representation(adata, use_rep)
        record["use_rep"] = use_rep
    if extra is not None:
        base = _representation(adata, use_rep)
        use_rep = f"X_{key_added}"
        adata.obsm[use_rep] = _append_scaled(base, extra, float(extra_weight))
        record.update(use_rep=use_rep, extra_features=int(extra.shape[1]))
    # The fits multiply matrices of a few dozen columns: a second BLAS thread only waits
    # there, and made the mixture ten times slower on a busy machine (as in the BIC scan);
    # the k-means starts' OpenMP threads likewise (one thread halved the time of 10
    # starts on a loaded DLPFC run, with the same fits).
    with near_empty_checked(), threadpool_limits(limits=1):
        # The clusterers are public: they would warn about near-empty spots again.
        _run_clusterer(adata, method, n_domains, use_rep, key_added, random_state, clusterer)
        record["clusterer"] = adata.uns["spatiome"][key_added]
        outcome = _drop_small_domains(
            adata, use_rep, method, int(n_domains), int(min_domain_size), key_added,
            random_state, clusterer,
        )  # fmt: skip
        record["refine"] = float(refine)
        if refine > 0:
            record.update(_refine_domains(adata, use_rep, key_added, spatial_key,
                                          float(refine), int(min_domain_size)))  # fmt: skip
    record.update(random_state=random_state, min_domain_size=int(min_domain_size), **outcome)
    adata.uns["spatiome"][key_added] = record
    return adata if copy else None


def _refine_domains(
    adata: AnnData,
    use_rep: str,
    key_added: str,
    spatial_key: str,
    strength: float,
    min_size: int,
) -> dict:
    """Potts-smooth ``obs[key_added]`` in place unless it would lose or shrink a domain.

    Returns what happened, for the record. Without coordinates (features passed with
    ``use_rep`` only) the labels stay as the clusterer gave them.
    """
    if spatial_key not in adata.obsm:
        logger.info("cluster: no adata.obsm[%r], the spatial refinement is skipped", spatial_key)
        return {"refine_changed_spots": 0, "refine_skipped": "no coordinates"}
    coords = get_spatial(adata, spatial_key)
    codes = adata.obs[key_added].cat.codes.to_numpy().astype(np.int64)
    refined = potts_refine(_representation(adata, use_rep), codes, coords, strength)
    sizes = np.bincount(refined, minlength=int(codes.max()) + 1)
    if (sizes < min(min_size, int(np.bincount(codes).min()))).any():
        # Smoothing erased or shrank a domain below the smallest kept size (thin layers
        # of a few spots): the clusterer's labels are kept.
        return {"refine_changed_spots": 0, "refine_skipped": "it would erase a domain"}
    adata.obs[key_added] = _labels_by_size(refined)
    return {"refine_changed_spots": int((refined != codes).sum()), "refine_skipped": ""}


def _extra_block(adata: AnnData, extra_features: str | np.ndarray) -> np.ndarray:
    """``extra_features`` as a finite ``(n_obs, m)`` float array, or one clear error."""
    if isinstance(extra_features, str):
        if extra_features not in adata.obsm:
            raise SpatiomeInputError(
                f"adata.obsm[{extra_features!r}] is missing: pass extra_features= one of "
                f"{sorted(adata.obsm.keys())} or an (n_obs, m) array"
            )
        extra_features = adata.obsm[extra_features]
    block = np.asarray(extra_features, dtype=np.float64)
    if block.ndim == 1:
        block = block[:, None]
    if block.ndim != 2 or block.shape[0] != adata.n_obs:
        raise SpatiomeInputError(
            f"extra_features must have one row per spot ({adata.n_obs}), got shape {block.shape}"
        )
    if not np.isfinite(block).all():
        raise SpatiomeInputError("extra_features contains NaN or infinite values")
    return block


def _append_scaled(base: np.ndarray, extra: np.ndarray, weight: float) -> np.ndarray:
    """``base`` next to standardized ``extra`` holding ``weight`` times its total variance."""
    spread = extra.std(axis=0)
    scaled = (extra - extra.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    total = float(base.var(axis=0).sum())
    scaled *= np.sqrt(weight * total / extra.shape[1])
    return np.hstack([base, scaled])


# Rounds of (refit the domain Gaussians, iterated conditional modes) in potts_refine.
_REFINE_ROUNDS = 5
_ICM_SWEEPS = 10


def potts_refine(
    features: np.ndarray,
    labels: np.ndarray,
    coords: np.ndarray,
    strength: float,
    *,
    n_neighbors: int = 6,
) -> np.ndarray:
    """Spatially smoothed labels: HMRF-EM with a Gaussian per domain and a Potts prior.

    Each round fits one Gaussian (full covariance, small ridge, weight = domain share) per
    domain to the features of its spots, then updates all labels together by iterated
    conditional modes: a spot takes the domain maximizing its log-likelihood plus
    ``strength`` times the fraction of its ``n_neighbors`` nearest spots in that domain.
    Rounds stop when no label changes; a domain that loses all its spots stays empty.

    Parameters
    ----------
    features
        ``(n_spots, d)`` features the domains were found on.
    labels
        ``(n_spots,)`` integer labels ``0 .. k-1``.
    coords
        ``(n_spots, 2)`` spot coordinates.
    strength
        Weight of the neighbourhood agreement (``0`` returns the Gaussian reassignment).
    n_neighbors
        Spatial neighbours of each spot (6 is the Visium hexagonal ring).

    Returns
    -------
    numpy.ndarray
        The refined integer labels.

    Examples
    --------
    >>> import numpy as np
    >>> from spatiome.domains.cluster import potts_refine
    >>> rng = np.random.default_rng(0)
    >>> coords = np.column_stack([np.repeat(np.arange(20.0), 20), np.tile(np.arange(20.0), 20)])
    >>> truth = (coords[:, 0] >= 10).astype(int)
    >>> features = truth[:, None] * 1.0 + rng.normal(scale=0.6, size=(400, 1))
    >>> noisy = (features[:, 0] > 0.5).astype(int)
    >>> refined = potts_refine(features, noisy, coords, 4.0)
    >>> bool((refined == truth).mean() > (noisy == truth).mean())
    True
    """
    from scipy.spatial import cKDTree

    labels = np.asarray(labels, dtype=np.int64).copy()
    n_spots, n_labels = labels.size, int(labels.max()) + 1
    k = int(min(n_neighbors, n_spots - 1))
    _, index = cKDTree(coords).query(coords, k=k + 1)
    rows = np.repeat(np.arange(n_spots), k)
    adjacency = sp.csr_matrix(
        (np.full(rows.size, 1.0 / k), (rows, np.asarray(index)[:, 1:].ravel())),
        shape=(n_spots, n_spots),
    )
    for _ in range(_REFINE_ROUNDS):
        loglik = _gaussian_loglik(features, labels, n_labels)
        before = labels.copy()
        for _ in range(_ICM_SWEEPS):
            onehot = sp.csr_matrix(
                (np.ones(n_spots), (np.arange(n_spots), labels)), shape=(n_spots, n_labels)
            )
            updated = (loglik + strength * (adjacency @ onehot).toarray()).argmax(axis=1)
            if np.array_equal(updated, labels):
                break
            labels = updated
        if np.array_equal(before, labels):
            break
    return labels


def _gaussian_loglik(features: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """``(n_spots, n_labels)`` log-density of each spot under each domain's Gaussian."""
    n_spots, dim = features.shape
    ridge = 1e-4 * float(np.mean(np.var(features, axis=0))) + 1e-12
    loglik = np.full((n_spots, n_labels), -np.inf)
    for label in range(n_labels):
        members = features[labels == label]
        if members.shape[0] == 0:
            continue
        centred = features - members.mean(axis=0)
        cov = np.zeros((dim, dim))
        if members.shape[0] > 1:
            cov = np.cov(members, rowvar=False).reshape(dim, dim)
        chol = np.linalg.cholesky(cov + ridge * np.eye(dim))
        solved = np.linalg.solve(chol, centred.T)
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        share = members.shape[0] / n_spots
        loglik[:, label] = -0.5 * ((solved**2).sum(axis=0) + log_det) + np.log(share)
    return loglik


def _run_clusterer(
    adata: AnnData,
    method: str,
    n_domains: int,
    use_rep: str,
    key_added: str,
    random_state: int,
    clusterer: dict,
) -> None:
    """Label the spots with :func:`cluster`'s ``method`` on ``adata.obsm[use_rep]``.

    ``clusterer`` holds the mixture's ``covariance_type`` and ``n_init``.
    """
    if method == "kmeans":
        kmeans(adata, n_domains, use_rep=use_rep, key_added=key_added, random_state=random_state)
    elif method == "gmm":
        gaussian_mixture(
            adata, n_domains, use_rep=use_rep, key_added=key_added, random_state=random_state,
            **clusterer,
        )  # fmt: skip
    elif method == "leiden":
        leiden(
            adata,
            n_clusters=n_domains,
            use_rep=use_rep,
            key_added=key_added,
            random_state=random_state,
        )
    else:
        hierarchical(
            adata, n_domains, use_rep=use_rep, key_added=key_added, random_state=random_state
        )


_MERGE_BY = ("spatial", "expression")


def merge_small_domains(
    adata: AnnData,
    key: str,
    *,
    min_size: int = 5,
    by: str = "spatial",
    use_rep: str | None = None,
    n_neighbors: int = 6,
    spatial_key: str = "spatial",
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Merge the domains with fewer than ``min_size`` spots into neighbouring domains.

    A post-processing step for the labels of any domain method (BISON, the graph
    autoencoder, an imported annotation): each spot of a small domain takes the label
    most common among its ``n_neighbors`` nearest spots of the larger domains in the
    tissue (``by="spatial"``; ties go to the label of the nearest spot), or the label of
    the nearest larger-domain centroid in ``adata.obsm[use_rep]`` (``by="expression"``).
    The other domains keep their names; spots without a label stay unlabelled.
    :func:`cluster` does the same by refitting its clusterer first, which keeps the
    requested number of domains.

    Parameters
    ----------
    adata
        Data with domain labels in ``adata.obs[key]``.
    key
        Column of ``adata.obs`` with the domains.
    min_size
        Smallest number of spots a domain keeps.
    by
        ``"spatial"`` (neighbours in the tissue) or ``"expression"`` (nearest centroid).
    use_rep
        Representation for ``by="expression"``; default ``f"X_{key}"`` when present
        (written by :func:`cluster`), else ``"X_pca"``.
    n_neighbors
        Spatial neighbours that vote for ``by="spatial"``.
    spatial_key
        Coordinates in ``adata.obsm``.
    key_added
        Column receiving the merged labels (default: ``key``, replaced).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. The merged domains and their sizes go
        to ``adata.uns["spatiome"][key_added]["merged_small_domains"]``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata as ad
    >>> from spatiome.domains import merge_small_domains
    >>> adata = ad.AnnData(np.zeros((40, 1)))
    >>> adata.obsm["spatial"] = np.column_stack([np.arange(40.0), np.zeros(40)])
    >>> labels = np.repeat(["a", "b"], 20)
    >>> labels[5] = "c"  # a one-spot domain inside domain a
    >>> adata.obs["domain"] = pd.Categorical(labels)
    >>> merge_small_domains(adata, "domain")
    >>> adata.obs["domain"].value_counts().to_dict()
    {'a': 20, 'b': 20}
    >>> adata.uns["spatiome"]["domain"]["merged_small_domains"]
    {'c': 1}
    """
    check_adata(adata)
    if key not in adata.obs:
        raise SpatiomeInputError(
            f"adata.obs[{key!r}] is missing: run a domain method first or pass key= one of "
            f"{list(adata.obs.columns)}"
        )
    _check_min_size(min_size, "min_size")
    if by not in _MERGE_BY:
        raise SpatiomeInputError(f"by must be one of {_MERGE_BY}, got {by!r}")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, numbers.Integral):
        raise SpatiomeInputError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if n_neighbors < 1:
        raise SpatiomeInputError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    labels = pd.Categorical(adata.obs[key].astype("category")).remove_unused_categories()
    codes = labels.codes.astype(np.int64)
    sizes = np.bincount(codes[codes >= 0], minlength=labels.categories.size)
    small = sizes < min_size
    merged = {str(labels.categories[i]): int(sizes[i]) for i in np.flatnonzero(small)}
    moving = np.isin(codes, np.flatnonzero(small))
    staying = (codes >= 0) & ~moving
    if merged and not staying.any():
        warnings.warn(
            f"merge_small_domains: every domain of adata.obs[{key!r}] has fewer than "
            f"{min_size} spots; nothing was merged",
            UserWarning,
            stacklevel=2,
        )
        merged = {}
    if merged and by == "spatial":
        from scipy.spatial import cKDTree

        coords = get_spatial(adata, spatial_key)
        n_votes = int(min(n_neighbors, staying.sum()))
        _, index = cKDTree(coords[staying]).query(coords[moving], k=n_votes)
        voters = codes[staying][np.asarray(index).reshape(int(moving.sum()), n_votes)]
        # One vote per neighbour, plus less than one vote in total to break ties by distance.
        weights = 1.0 + 0.5 * (n_votes - np.arange(n_votes)) / n_votes**2
        votes = np.zeros((voters.shape[0], labels.categories.size))
        np.add.at(votes, (np.arange(voters.shape[0])[:, None], voters), weights[None, :])
        codes[moving] = votes.argmax(axis=1)
    elif merged:
        if use_rep is None:
            use_rep = f"X_{key}" if f"X_{key}" in adata.obsm else "X_pca"
        features = _representation(adata, use_rep)
        codes = _nearest_centroid(features, np.where(moving, -1, codes), staying)
        codes = np.where(labels.codes < 0, -1, codes)
    result = pd.Categorical.from_codes(codes, categories=labels.categories)
    result = result.remove_categories([c for c in labels.categories if str(c) in merged])
    adata = adata.copy() if copy else adata
    key_added = key_added or key
    adata.obs[key_added] = result
    adata.uns.setdefault("spatiome", {})
    record = adata.uns["spatiome"].get(key_added)
    if not isinstance(record, dict):
        record = adata.uns["spatiome"][key_added] = {}
    record["merged_small_domains"] = merged
    record["merge"] = {"min_size": int(min_size), "by": by}
    if merged:
        logger.info("merge_small_domains: %d domain(s) merged by %s", len(merged), by)
    return adata if copy else None


# Fits of the clusterer without the spots of small domains, before those are merged.
_MAX_REFITS = 8


def _drop_small_domains(
    adata: AnnData,
    use_rep: str,
    method: str,
    n_domains: int,
    min_size: int,
    key_added: str,
    random_state: int,
    clusterer: dict,
) -> dict:
    """Refit the clusterer without the spots of small domains; merge what stays small."""
    labels = adata.obs[key_added].cat.codes.to_numpy().astype(np.int64)
    outcome = {"refits": 0, "set_aside_spots": 0, "merged_domains": 0}
    if _small_domains(labels, min_size).size == 0:
        return outcome
    features = _representation(adata, use_rep)
    keep = np.ones(labels.size, dtype=bool)
    probability = None
    if method == "gmm":
        probability = adata.obs[f"{key_added}_probability"].to_numpy(dtype=np.float64, copy=True)
    while outcome["refits"] < _MAX_REFITS:
        small = _small_domains(labels, min_size)
        if small.size == 0:
            break
        candidate = keep & ~np.isin(labels, small)
        if candidate.sum() < n_domains * min_size:
            break
        keep = candidate
        labels, probability = _refit(
            features, keep, method, n_domains, random_state, {**clusterer, "min_size": min_size}
        )
        outcome["refits"] += 1
    small = _small_domains(labels, min_size)
    merged = np.isin(labels, small)
    if small.size and not merged.all():
        labels = _nearest_centroid(features, labels, ~merged)
        if probability is not None:
            probability = np.where(merged, np.nan, probability)
        outcome["merged_domains"] = int(small.size)
        warnings.warn(
            f"cluster: {small.size} domain(s) stayed smaller than min_domain_size="
            f"{min_size} spots after {outcome['refits']} refit(s) and were merged into the "
            f"nearest domain; {np.unique(labels).size} domains remain",
            UserWarning,
            stacklevel=3,
        )
    outcome["set_aside_spots"] = int((~keep).sum())
    adata.obs[key_added] = _labels_by_size(labels)
    if probability is not None:
        adata.obs[f"{key_added}_probability"] = probability
    logger.info(
        "cluster: %d spot(s) in domains under %d spots set aside, %d refit(s)",
        outcome["set_aside_spots"],
        min_size,
        outcome["refits"],
    )
    return outcome


def _small_domains(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(labels)
    return np.flatnonzero((sizes > 0) & (sizes < min_size))


def _refit(
    features: np.ndarray,
    keep: np.ndarray,
    method: str,
    n_domains: int,
    random_state: int,
    clusterer: dict,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels of every spot from the clusterer fitted on the ``keep`` spots."""
    fitted = features[keep]
    if method == "gmm":
        sample = _fit_sample(fitted, clusterer.get("max_fit_spots"), random_state)
        model = _fit_gmm_sized(sample, fitted, n_domains, clusterer, random_state)
        posterior = model.predict_proba(features)
        return posterior.argmax(axis=1), posterior.max(axis=1)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=n_domains, n_init=10, random_state=random_state).fit(fitted)
        return model.predict(features), None
    shell = AnnData(X=np.zeros((fitted.shape[0], 1)))
    shell.obsm["features"] = fitted
    if method == "leiden":
        leiden(
            shell, n_clusters=n_domains, use_rep="features", key_added="refit",
            random_state=random_state,
        )  # fmt: skip
    else:
        hierarchical(
            shell, n_domains, use_rep="features", key_added="refit", random_state=random_state
        )
    labels = np.full(features.shape[0], -1, dtype=np.int64)
    labels[keep] = shell.obs["refit"].cat.codes.to_numpy()
    return _nearest_centroid(features, labels, keep), None


def _fit_gmm_sized(
    sample: np.ndarray, kept: np.ndarray, n_domains: int, clusterer: dict, random_state: int
):
    """The most likely of ``n_init`` mixture starts whose components hold ``min_size`` spots.

    The starts are fitted on ``sample`` (the ``kept`` spots, or a sample of them) and
    their components counted on ``kept``. A shared covariance lets a component settle on
    one or two outlying spots; a start that does not is preferred over a slightly more
    likely one that does. Without such a start, the most likely one.
    """
    state = np.random.RandomState(random_state)
    best, best_sized = None, None
    for _ in range(int(clusterer["n_init"])):
        model = _fit_gmm(sample, n_domains, clusterer["covariance_type"], state, 1)
        sizes = np.bincount(model.predict(kept), minlength=n_domains)
        sized = sizes.min() >= clusterer["min_size"]
        if best is None or model.lower_bound_ > best.lower_bound_:
            best = model
        if sized and (best_sized is None or model.lower_bound_ > best_sized.lower_bound_):
            best_sized = model
    return best if best_sized is None else best_sized


def _nearest_centroid(features: np.ndarray, labels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``labels`` with every spot outside ``known`` moved to the nearest centroid of ``known``."""
    names, codes = np.unique(labels[known], return_inverse=True)
    centroids = np.zeros((names.size, features.shape[1]))
    np.add.at(centroids, codes, features[known])
    centroids /= np.bincount(codes, minlength=names.size)[:, None]
    result = labels.copy()
    if (~known).any():
        distances = ((features[~known, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        result[~known] = names[distances.argmin(axis=1)]
    return result


def _check_min_size(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpatiomeInputError(f"{name} must be a positive integer, got {value!r}")


def _domain_features(
    adata: AnnData,
    *,
    neighbourhood_lambda: float,
    smoothing_steps: int,
    target_sum: float | None,
    n_comps: int,
    n_top_genes: int | None,
    n_spatial_neighbors: int,
    spatial_key: str,
    random_state: int,
    caller: str,
) -> tuple[np.ndarray, dict]:
    """The spatially smoothed principal components :func:`cluster` clusters.

    The principal components ``P`` of the (unscaled) normalized expression of the selected
    genes sit next to their ``smoothing_steps``-fold neighbourhood mean ``S^t P``, weighted
    ``sqrt(1 - lambda)`` and ``sqrt(lambda)``; ``S`` averages each spot with its
    ``n_spatial_neighbors`` nearest spots (a symmetric graph with self-loops). Where genes
    are selected on the raw counts, the expression is ``log1p`` of the counts scaled to
    ``target_sum`` per spot. The principal components are exact (see
    :func:`_principal_components`), so ``random_state`` does not change them.
    """
    from ..pp.reduce import _looks_like_counts, _select_genes

    coords = get_spatial(adata, spatial_key)
    matrix = get_matrix(adata)
    normalized = adata.uns.get("spatiome", {}).get("normalize")
    if normalized is None and _looks_like_counts(matrix):
        raise SpatiomeInputError(
            f"adata.X holds raw counts: run spatiome.pp.normalize(adata) before {caller}"
        )
    view = AnnData(X=matrix, obs=pd.DataFrame(index=adata.obs_names.copy()))
    view.var_names = adata.var_names.copy()
    if normalized is not None:
        view.uns["spatiome"] = {"normalize": normalized}
    layer = (normalized or {}).get("layer", "counts")
    if layer != "X" and layer in adata.layers:
        view.layers[layer] = adata.layers[layer]
    hvg_flavor = _select_genes(view, n_top_genes, normalized)
    # Only with genes selected on the raw counts: scaling the counts of low-depth data
    # (targeted panels, a few hundred counts per cell) up to 10,000 lost half the ARI on
    # simulated tissues that keep every gene.
    rescaled = hvg_flavor == "seurat_v3" and target_sum is not None
    genes = np.flatnonzero(view.var["highly_variable"].to_numpy())
    n_genes = int(genes.size)
    n_pcs = int(min(n_comps, adata.n_obs - 1, n_genes))
    source = view.layers[layer] if rescaled else view.X
    blocks = _ExpressionBlocks(source, genes, float(target_sum) if rescaled else None)
    # Rounded to float32 as the components have always been stored before smoothing.
    components = _principal_components(blocks, n_pcs).astype(np.float32).astype(np.float64)
    k = int(min(n_spatial_neighbors, adata.n_obs - 1))
    smoothed = smooth_features(components, coords, k, smoothing_steps)
    features = np.hstack(
        [np.sqrt(1.0 - neighbourhood_lambda) * components,
         np.sqrt(neighbourhood_lambda) * smoothed]
    )  # fmt: skip
    if neighbourhood_lambda in (0.0, 1.0):
        features = smoothed if neighbourhood_lambda == 1.0 else components
    details = {
        "neighbourhood": {
            "lambda": neighbourhood_lambda,
            "n_spatial_neighbors": k,
            "smoothing_steps": int(smoothing_steps),
        },
        "n_comps": n_pcs,
        "n_top_genes": n_genes,
        "hvg_flavor": hvg_flavor,
        "target_sum": float(target_sum) if rescaled else None,
    }
    return features.astype(np.float32), details


# Entries of one dense block of rows read by the exact PCA (64 MB of float64).
_PCA_BLOCK_ENTRIES = 8_000_000


class _ExpressionBlocks:
    """Dense float64 blocks of rows of the selected genes, read again on each iteration.

    With ``target_sum``, ``matrix`` holds counts and each block is ``log1p`` of the
    counts scaled to ``target_sum`` per spot over all genes (empty spots stay 0): the
    values of a normalized copy, without holding one.
    """

    def __init__(self, matrix, genes: np.ndarray, target_sum: float | None) -> None:
        self.matrix = matrix
        self.genes = None if genes.size == matrix.shape[1] else genes
        self.n_obs, self.n_genes = int(matrix.shape[0]), int(genes.size)
        self.factor = None
        if target_sum is not None:
            library = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
            self.factor = np.divide(
                target_sum, library, out=np.zeros_like(library), where=library > 0
            )
        self.rows = max(1, _PCA_BLOCK_ENTRIES // max(self.n_genes, 1))

    def __iter__(self):
        for start in range(0, self.n_obs, self.rows):
            yield self._block(start, min(start + self.rows, self.n_obs))

    def _block(self, start: int, stop: int) -> np.ndarray:
        part = self.matrix[start:stop]
        if self.genes is not None:
            part = part[:, self.genes]
        block = part.toarray() if sp.issparse(part) else part
        block = np.array(block, dtype=np.float64)
        if self.factor is not None:
            block *= self.factor[start:stop, None]
            np.log1p(block, out=block)
        return block


def _principal_components(blocks: _ExpressionBlocks, n_pcs: int) -> np.ndarray:
    """Scores ``(n_obs, n_pcs)`` of the exact PCA (centred, unscaled) of the blocks' rows.

    The gene-by-gene covariance is summed over dense blocks of rows and its leading
    eigenvectors are taken with LAPACK (scanpy's ``svd_solver="covariance_eigh"``): two
    passes over the data, memory of one block and one ``genes x genes`` matrix, where
    ARPACK needed hundreds of products with the whole matrix. Each component's largest
    loading is positive (scikit-learn's ``svd_flip`` on the loadings), so the scores equal
    ARPACK's (tested).
    """
    from scipy.linalg import eigh

    n_obs, n_genes = blocks.n_obs, blocks.n_genes
    total = np.zeros(n_genes)
    gram = np.zeros((n_genes, n_genes))
    for block in blocks:
        total += block.sum(axis=0)
        gram += block.T @ block
    mean = total / n_obs
    covariance = (gram - n_obs * np.outer(mean, mean)) / max(n_obs - 1, 1)
    # The reduction to tridiagonal form is a long series of small products: a second
    # BLAS thread only waits there, and made it ten times slower on a busy machine.
    with threadpool_limits(limits=1, user_api="blas"):
        _, loadings = eigh(covariance, subset_by_index=[n_genes - n_pcs, n_genes - 1])
    loadings = loadings[:, ::-1]
    largest = np.abs(loadings).argmax(axis=0)
    loadings *= np.sign(loadings[largest, np.arange(n_pcs)])
    shift = mean @ loadings
    return np.vstack([block @ loadings - shift for block in blocks])


def smooth_features(
    features: np.ndarray, coords: np.ndarray, n_neighbors: int, steps: int = 1
) -> np.ndarray:
    """Average each spot's features with its nearest spots' features, ``steps`` times.

    The averaging graph links each spot to its ``n_neighbors`` nearest spots and to
    itself, symmetrized (a link either way counts), with rows scaled to sum to one: one
    step of a random walk, the feature propagation of a simplified graph convolution.
    Memory is linear in the spots.

    Parameters
    ----------
    features
        ``(n_spots, m)`` features.
    coords
        ``(n_spots, d)`` coordinates.
    n_neighbors
        Nearest spots linked to each spot (6 is the first ring of a Visium hexagon).
    steps
        Number of averaging steps; ``t`` steps reach ``t`` rings.

    Returns
    -------
    numpy.ndarray
        The smoothed ``(n_spots, m)`` features (float64).

    Examples
    --------
    >>> import numpy as np
    >>> from spatiome.domains.cluster import smooth_features
    >>> xy = np.array([[0.0, 0], [1, 0], [2, 0]])
    >>> smooth_features(np.array([[0.0], [3.0], [6.0]]), xy, 1).ravel().tolist()
    [1.5, 3.0, 4.5]
    """
    from .._core.neighbourhood import spatial_knn

    n_spots = features.shape[0]
    if n_spots < 2:
        return np.asarray(features, dtype=np.float64).copy()
    k = int(min(n_neighbors, n_spots - 1))
    indices, _ = spatial_knn(np.asarray(coords, dtype=np.float64), k)
    rows = np.repeat(np.arange(n_spots), k)
    links = sp.csr_matrix((np.ones(rows.size), (rows, indices.ravel())), shape=(n_spots, n_spots))
    links = (links + links.T + sp.identity(n_spots, format="csr")).tocsr()
    links.data[:] = 1.0
    walk = sp.diags(1.0 / np.asarray(links.sum(axis=1)).ravel()) @ links
    out = np.asarray(features, dtype=np.float64)
    for _ in range(int(steps)):
        out = walk @ out
    return out


def _require_representation(adata: AnnData, use_rep: str) -> None:
    if use_rep not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{use_rep!r}] is missing: run spatiome.pp.reduce(adata) first or "
            f"pass use_rep= one of {sorted(adata.obsm.keys())}"
        )


def _representation(adata: AnnData, use_rep: str) -> np.ndarray:
    """``adata.obsm[use_rep]`` as finite float64, or one clear error."""
    _require_representation(adata, use_rep)
    features = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    if not np.isfinite(features).all():
        raise SpatiomeInputError(f"adata.obsm[{use_rep!r}] contains NaN or infinite values")
    return features


def _check_n_clusters(n_clusters: int, n_obs: int) -> None:
    if not 1 <= int(n_clusters) <= n_obs:
        raise SpatiomeInputError(
            f"n_clusters must be between 1 and the number of spots ({n_obs}), got {n_clusters}"
        )


def _labels_by_size(labels: np.ndarray) -> pd.Categorical:
    values, sizes = np.unique(labels, return_counts=True)
    order = values[np.argsort(-sizes, kind="stable")]
    rank = np.empty(values.max() + 1, dtype=np.int64)
    rank[order] = np.arange(order.size)
    names = [str(i) for i in range(order.size)]
    return pd.Categorical.from_codes(rank[labels], categories=names)
