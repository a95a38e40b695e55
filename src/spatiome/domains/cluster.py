"""Expression clustering of spots: Leiden on the expression kNN graph, and k-means."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import SpatiomeInputError, check_adata

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
    if n_clusters is not None and not 1 <= int(n_clusters) <= adata.n_obs:
        raise SpatiomeInputError(
            f"n_clusters must be between 1 and the number of spots ({adata.n_obs}), "
            f"got {n_clusters}"
        )
    if not resolution > 0:
        raise SpatiomeInputError(f"resolution must be positive, got {resolution!r}")
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
    if use_rep not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{use_rep!r}] is missing: run spatiome.pp.reduce(adata) first or "
            f"pass use_rep= one of {sorted(adata.obsm.keys())}"
        )
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
    if use_rep not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{use_rep!r}] is missing: run spatiome.pp.reduce(adata) first or "
            f"pass use_rep= one of {sorted(adata.obsm.keys())}"
        )
    if not 1 <= int(n_clusters) <= adata.n_obs:
        raise SpatiomeInputError(
            f"n_clusters must be between 1 and the number of spots ({adata.n_obs}), "
            f"got {n_clusters}"
        )
    features = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    if not np.isfinite(features).all():
        raise SpatiomeInputError(f"adata.obsm[{use_rep!r}] contains NaN or infinite values")
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


def _labels_by_size(labels: np.ndarray) -> pd.Categorical:
    values, sizes = np.unique(labels, return_counts=True)
    order = values[np.argsort(-sizes, kind="stable")]
    rank = np.empty(values.max() + 1, dtype=np.int64)
    rank[order] = np.arange(order.size)
    names = [str(i) for i in range(order.size)]
    return pd.Categorical.from_codes(rank[labels], categories=names)
