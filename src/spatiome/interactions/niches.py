"""Cellular niches: clusters of cells or spots by the composition of their neighbourhood.

A niche is a recurring local mixture of cell types (a tumour border, a lymphoid follicle, a
crypt base), not a property of any one cell. :func:`niches` describes every cell by the
fractions of each group (cell type, domain, cluster) among its spatial neighbours, or, for
spots, by their deconvolved cell-type fractions averaged over the neighbourhood, and
clusters these composition vectors with k-means. This is the idea of Seurat's
``BuildNicheAssay`` (k-means on neighbourhood cell-type counts) and of CellCharter (clusters
of neighbourhood-aggregated features).

The neighbourhoods are a sparse graph (:func:`spatiome.graph.build_graph`), so the
composition of all cells is one sparse product ``W @ one_hot(groups)``: no n x n matrix is
formed. Above :data:`FIT_SAMPLE` cells the clusters are fitted on a random subsample and
every cell is then assigned to the nearest centre.

References
----------
Hao et al. (2024) Dictionary learning for integrative, multimodal and scalable single-cell
analysis. Nat. Biotechnol. 42, 293-304 (Seurat v5, ``BuildNicheAssay``).
Varrone et al. (2024) CellCharter reveals spatial cell niches associated with tissue
remodeling and cell plasticity. Nat. Genet. 56, 74-84.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.random import check_random_state
from .._core.validate import SpatiomeInputError
from ..graph import build_graph

__all__ = ["niches", "choose_n_niches"]

METHODS = ("kmeans", "gmm")
#: Neighbours per cell when neither ``n_neighbors`` nor ``radius`` is given, for cells
#: labelled by group and for spots with fractions (chosen across simulated tissues, see
#: ``benchmarks/niches.py``).
DEFAULT_NEIGHBORS_GROUPS = 30
DEFAULT_NEIGHBORS_FRACTIONS = 12
#: k-means initialisations.
N_INIT = 10
#: Cells used to fit the clusters; the others are assigned to the nearest centre.
FIT_SAMPLE = 100_000
#: Cells on which the silhouette of every candidate number of niches is computed.
SILHOUETTE_SAMPLE = 4_000
#: Candidate numbers of niches when ``n_niches`` is None: 2 to this.
MAX_NICHES = 12
#: Above this share of cells without any neighbour within ``radius`` the call is refused.
MAX_ISOLATED_FRACTION = 0.01
#: Groups above this count are refused (a continuous column given by mistake).
MAX_GROUPS = 1_000


def niches(
    adata: AnnData,
    groups: str | None = None,
    *,
    composition_key: str | None = None,
    radius: float | None = None,
    n_neighbors: int | None = None,
    n_niches: int | None = None,
    method: str = "kmeans",
    include_self: bool = True,
    max_niches: int = MAX_NICHES,
    spatial_key: str = "spatial",
    library_key: str | None = None,
    key_added: str = "niche",
    random_state: int | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Cluster cells or spots into niches by the composition of their neighbourhood.

    Parameters
    ----------
    adata
        Cells or spots with coordinates in ``adata.obsm[spatial_key]``.
    groups
        Categorical column of ``adata.obs`` (cell types, domains, clusters). A cell's
        composition is the fraction of each group among its neighbours.
    composition_key
        Instead of ``groups``: a matrix in ``adata.obsm`` of non-negative per-spot
        fractions or abundances (e.g. ``"cell_type_fractions"`` from
        :func:`spatiome.deconv.deconvolve`), one column per cell type. Rows are scaled to
        sum to 1 and averaged over the neighbourhood.
    radius
        Neighbours are all cells within this distance (coordinate units). Refused when
        more than 1% of the cells have none.
    n_neighbors
        Neighbours are the ``n_neighbors`` nearest cells. Default (when ``radius`` is not
        given either): 30 with ``groups``, 12 with ``composition_key`` (two rings of
        Visium spots).
    n_niches
        Number of niches. ``None``: chosen by :func:`choose_n_niches` (the largest mean
        silhouette among 2 to ``max_niches``).
    method
        ``"kmeans"`` (k-means++, ``n_init=10``, the lowest inertia kept) or ``"gmm"``
        (diagonal Gaussian mixture started from the k-means centres).
    include_self
        Count the cell itself in its neighbourhood.
    max_niches
        Largest number of niches tried when ``n_niches`` is None.
    spatial_key
        Coordinates in ``adata.obsm``.
    library_key
        Column of ``adata.obs`` naming each cell's sample: neighbourhoods never cross
        samples, and the niches are shared by all samples.
    key_added
        Names of the outputs (see Returns).
    random_state
        Seed of the subsamples and of the k-means initialisation.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``, otherwise None. Written:
        ``obs[key_added]``: categorical niche labels ``"0"``, ``"1"``, ... by decreasing
        size; ``obsm[f"{key_added}_composition"]``: every cell's neighbourhood
        composition (DataFrame, rows sum to 1); ``uns[key_added]``: ``"composition"``
        (DataFrame niches x groups, the mean composition of each niche), ``"params"``
        (the settings used, the number of neighbours, and how the number of niches was
        chosen) and, when it was chosen, ``"silhouette"`` (DataFrame: ``n_niches`` and
        the mean ``silhouette`` of each number tried).

    Examples
    --------
    >>> from spatiome.datasets.niches import simulate_niches
    >>> from sklearn.metrics import adjusted_rand_score
    >>> adata = simulate_niches(3_000, n_niches=4, random_state=0)
    >>> niches(adata, "cell_type", n_niches=4)
    >>> adata.uns["niche"]["composition"].shape
    (4, 8)
    >>> bool(adjusted_rand_score(adata.obs["planted_niche"], adata.obs["niche"]) > 0.8)
    True
    """
    _check_call(adata, groups, composition_key, radius, n_neighbors, n_niches, method,
                include_self, max_niches, key_added)  # fmt: skip
    features, names, source = _features(adata, groups, composition_key)
    if radius is None and n_neighbors is None:
        n_neighbors = (
            DEFAULT_NEIGHBORS_GROUPS if groups is not None else DEFAULT_NEIGHBORS_FRACTIONS
        )
    weights, mean_neighbours = _neighbourhood_weights(
        adata, radius, n_neighbors, include_self, spatial_key, library_key
    )
    composition = weights @ features
    composition = np.asarray(
        composition.toarray() if sp.issparse(composition) else composition, dtype=np.float64
    )
    rng = check_random_state(random_state)
    seed = int(rng.integers(2**31 - 1))
    silhouette = None
    if n_niches is None:
        n_niches, silhouette = choose_n_niches(
            composition, max_niches=max_niches, random_state=seed
        )
        chosen_by = "silhouette"
    else:
        chosen_by = "given"
    labels = _cluster(composition, int(n_niches), method, seed)
    labels = _by_size(labels)
    n_found = int(labels.max()) + 1
    profile = np.zeros((n_found, composition.shape[1]))
    np.add.at(profile, labels, composition)
    profile /= np.bincount(labels, minlength=n_found)[:, None]

    target = adata.copy() if copy else adata
    categories = [str(k) for k in range(n_found)]
    target.obs[key_added] = pd.Categorical.from_codes(labels, categories)
    target.obsm[f"{key_added}_composition"] = pd.DataFrame(
        composition, index=target.obs_names, columns=names
    )
    result: dict = {
        "composition": pd.DataFrame(
            profile, index=pd.Index(categories, name=key_added), columns=names
        ),
        "params": {
            "source": source,
            "groups": groups,
            "composition_key": composition_key,
            "radius": None if radius is None else float(radius),
            "n_neighbors": None if n_neighbors is None else int(n_neighbors),
            "mean_neighbours": float(mean_neighbours),
            "include_self": bool(include_self),
            "n_niches": n_found,
            "n_niches_chosen_by": chosen_by,
            "method": method,
            "n_init": N_INIT,
            "spatial_key": spatial_key,
            "library_key": library_key,
            "random_state": random_state,
        },
    }
    if silhouette is not None:  # a table, so that the AnnData can be written to h5ad
        result["silhouette"] = silhouette.reset_index()
    target.uns[key_added] = result
    return target if copy else None


def choose_n_niches(
    composition: np.ndarray,
    *,
    max_niches: int = MAX_NICHES,
    sample_size: int = SILHOUETTE_SAMPLE,
    random_state: int | None = 0,
) -> tuple[int, pd.Series]:
    """Number of niches with the largest mean silhouette width of k-means on a subsample.

    k-means (``n_init=10``) is fitted for every k from 2 to ``max_niches`` on the same
    random subsample of ``sample_size`` composition vectors; the silhouette (Euclidean) is
    computed on that subsample, and the k with the largest mean silhouette wins. On the
    simulated tissues of ``benchmarks/niches.py`` it finds the planted number (3, 5 or 7)
    in 70% of the runs; the misses are off by one or two, mostly below (two similar
    niches merged). Pass ``n_niches`` when it is known.

    Parameters
    ----------
    composition
        (n_cells, n_groups) composition vectors.
    max_niches
        Largest k tried (capped at the number of distinct vectors in the subsample - 1).
    sample_size
        Vectors in the subsample.
    random_state
        Seed of the subsample and of k-means.

    Returns
    -------
    n_niches, silhouette
        The chosen k and the mean silhouette width of every k tried.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> centres = np.eye(3)[rng.integers(0, 3, 600)]
    >>> choose_n_niches(centres + rng.normal(0, 0.05, (600, 3)))[0]
    3
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    composition = np.asarray(composition, dtype=np.float64)
    rng = check_random_state(random_state)
    n_obs = composition.shape[0]
    rows = np.sort(rng.choice(n_obs, sample_size, replace=False)) if n_obs > sample_size else None
    sample = composition if rows is None else composition[rows]
    distinct = np.unique(sample, axis=0).shape[0]
    top = min(int(max_niches), distinct - 1)
    if top < 2:
        raise SpatiomeInputError(
            f"only {distinct} distinct neighbourhood compositions: too few to choose a "
            "number of niches; pass n_niches, or widen the neighbourhoods"
        )
    scores = {}
    for k in range(2, top + 1):
        labels = KMeans(k, n_init=N_INIT, random_state=random_state).fit_predict(sample)
        scores[k] = float(silhouette_score(sample, labels))
    silhouette = pd.Series(scores, name="silhouette")
    silhouette.index.name = "n_niches"
    return int(silhouette.idxmax()), silhouette


def _check_call(adata, groups, composition_key, radius, n_neighbors, n_niches, method,
                include_self, max_niches, key_added) -> None:  # fmt: skip
    if not isinstance(adata, AnnData):
        raise SpatiomeInputError(
            f"adata must be an anndata.AnnData, got {type(adata).__name__}: read data with "
            "spatiome.io.read_* or build one with anndata.AnnData(...)"
        )
    if adata.n_obs < 3:
        raise SpatiomeInputError(f"niches needs at least 3 cells, got {adata.n_obs}")
    if (groups is None) == (composition_key is None):
        raise SpatiomeInputError(
            "pass exactly one of groups (a categorical column of adata.obs, e.g. "
            "'cell_type') or composition_key (a fractions matrix in adata.obsm, e.g. "
            f"'cell_type_fractions'); got groups={groups!r}, composition_key={composition_key!r}"
        )
    if radius is not None and n_neighbors is not None:
        raise SpatiomeInputError(
            "pass radius or n_neighbors, not both: radius takes every cell within a "
            "distance, n_neighbors a fixed number of nearest cells"
        )
    if radius is not None and (
        not isinstance(radius, numbers.Real) or not np.isfinite(radius) or radius <= 0
    ):
        raise SpatiomeInputError(f"radius must be a positive number, got {radius!r}")
    if n_neighbors is not None and not _is_int(n_neighbors, 1, adata.n_obs - 1):
        raise SpatiomeInputError(
            f"n_neighbors must be an integer from 1 to the number of cells - 1 "
            f"({adata.n_obs - 1}), got {n_neighbors!r}"
        )
    if n_niches is not None and not _is_int(n_niches, 1, adata.n_obs):
        raise SpatiomeInputError(
            f"n_niches must be an integer from 1 to the number of cells ({adata.n_obs}) "
            f"or None (chosen by silhouette), got {n_niches!r}"
        )
    if not _is_int(max_niches, 2, adata.n_obs - 1):
        raise SpatiomeInputError(f"max_niches must be an integer >= 2, got {max_niches!r}")
    if method not in METHODS:
        raise SpatiomeInputError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(include_self, bool | np.bool_):
        raise SpatiomeInputError(f"include_self must be True or False, got {include_self!r}")
    if not isinstance(key_added, str) or not key_added:
        raise SpatiomeInputError(f"key_added must be a non-empty string, got {key_added!r}")


def _is_int(value, low: int, high: int) -> bool:
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and low <= int(value) <= high
    )


def _features(adata: AnnData, groups, composition_key):
    """Per-cell vectors to average: one-hot groups (sparse) or row-scaled fractions."""
    if groups is not None:
        if groups not in adata.obs.columns:
            raise SpatiomeInputError(
                f"adata.obs[{groups!r}] is missing: pass one of the obs columns "
                f"{list(adata.obs.columns)[:20]}, e.g. cell types or clusters"
            )
        column = adata.obs[groups]
        if column.isna().any():
            raise SpatiomeInputError(
                f"adata.obs[{groups!r}] has {int(column.isna().sum())} missing values: fill "
                "them (e.g. with 'unknown') or remove those cells"
            )
        values = (
            column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
        )
        values = values.cat.remove_unused_categories()
        n_groups = len(values.cat.categories)
        if n_groups > MAX_GROUPS:
            raise SpatiomeInputError(
                f"adata.obs[{groups!r}] has {n_groups} distinct values: niches need a "
                "categorical column (cell types, clusters), not a continuous one"
            )
        codes = values.cat.codes.to_numpy()
        one_hot = sp.csr_matrix(
            (np.ones(codes.size), (np.arange(codes.size), codes)),
            shape=(codes.size, n_groups),
        )
        return one_hot, [str(c) for c in values.cat.categories], "groups"
    if composition_key not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{composition_key!r}] is missing: run spatiome.deconv.deconvolve "
            f"first or pass one of {list(adata.obsm.keys())}"
        )
    stored = adata.obsm[composition_key]
    names = (
        [str(c) for c in stored.columns]
        if isinstance(stored, pd.DataFrame)
        else [f"{composition_key}_{j}" for j in range(np.shape(stored)[1])]
    )
    values = stored.to_numpy() if isinstance(stored, pd.DataFrame) else stored
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    where = f"adata.obsm[{composition_key!r}]"
    try:
        values = values.astype(np.float64)
    except (TypeError, ValueError):
        raise SpatiomeInputError(f"{where} must be numeric fractions") from None
    if values.ndim != 2 or values.shape[1] < 2:
        raise SpatiomeInputError(
            f"{where} must be a (n_obs, n_types) matrix with at least 2 types, "
            f"got shape {values.shape}"
        )
    if not np.isfinite(values).all() or (values < 0).any():
        raise SpatiomeInputError(
            f"{where} must hold finite non-negative fractions or abundances "
            "(found NaN, infinite or negative values)"
        )
    totals = values.sum(axis=1)
    if (totals <= 0).any():
        raise SpatiomeInputError(
            f"{where} has {int((totals <= 0).sum())} rows that sum to 0: remove those spots"
        )
    return values / totals[:, None], names, "obsm"


def _neighbourhood_weights(adata, radius, n_neighbors, include_self, spatial_key, library_key):
    """Row-normalised sparse neighbourhood weights and the mean neighbourhood size."""
    if spatial_key not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{spatial_key!r}] is missing: set it to an (n_obs, 2) array of coordinates"
        )
    if library_key is not None and library_key not in adata.obs.columns:
        raise SpatiomeInputError(f"adata.obs[{library_key!r}] (library_key) is missing")
    method = "radius" if radius is not None else "knn"
    with warnings.catch_warnings():
        # Isolated cells are reported below with the fix that applies to niches.
        warnings.filterwarnings("ignore", message=".*no spatial neighbours.*")
        connectivities, _, info = build_graph(
            adata,
            method=method,
            n_neighbors=6 if n_neighbors is None else int(n_neighbors),
            radius=radius,
            # Directed kNN keeps exactly n_neighbors per cell; a radius graph is undirected
            # whatever this says.
            symmetric=False,
            spatial_key=spatial_key,
            library_key=library_key,
        )
    connectivities = sp.csr_matrix(connectivities, dtype=np.float64)
    connectivities.data[:] = 1.0
    sizes = np.diff(connectivities.indptr)
    isolated = int((sizes == 0).sum())
    if radius is not None and isolated:
        message = (
            f"{isolated} of {adata.n_obs} cells have no neighbour within radius={radius} "
            f"(median number of neighbours {float(np.median(sizes)):g}): raise radius or "
            "use n_neighbors"
        )
        if isolated > MAX_ISOLATED_FRACTION * adata.n_obs or not include_self:
            raise SpatiomeInputError(message)
        warnings.warn(message + "; their composition is their own group", UserWarning,
                      stacklevel=3)  # fmt: skip
    if include_self:
        connectivities = connectivities + sp.identity(adata.n_obs, format="csr")
        sizes = sizes + 1
    weights = sp.diags(1.0 / sizes) @ connectivities
    return sp.csr_matrix(weights), float(sizes.mean())


def _cluster(composition: np.ndarray, n_niches: int, method: str, seed: int) -> np.ndarray:
    """k-means (or a Gaussian mixture) fitted on at most FIT_SAMPLE rows, applied to all."""
    from sklearn.cluster import KMeans

    n_obs = composition.shape[0]
    if n_niches == 1:
        return np.zeros(n_obs, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit = composition
    if n_obs > FIT_SAMPLE:
        fit = composition[np.sort(rng.choice(n_obs, FIT_SAMPLE, replace=False))]
    kmeans = KMeans(n_niches, n_init=N_INIT, random_state=seed).fit(fit)
    if method == "kmeans":
        return np.asarray(kmeans.predict(composition), dtype=np.int64)
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(
        n_niches,
        covariance_type="diag",
        reg_covar=1e-4,
        means_init=kmeans.cluster_centers_,
        random_state=seed,
    ).fit(fit)
    return np.asarray(mixture.predict(composition), dtype=np.int64)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel 0, 1, ... by decreasing cluster size (ties by first label), drop empty ones."""
    counts = np.bincount(labels)
    order = np.lexsort((np.arange(counts.size), -counts))
    order = order[counts[order] > 0]
    relabel = np.empty(counts.size, dtype=np.int64)
    relabel[order] = np.arange(order.size)
    return relabel[labels]
