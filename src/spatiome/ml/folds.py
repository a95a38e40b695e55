"""Cross-validation folds that respect space: contiguous tissue blocks."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from sklearn.cluster import KMeans

from .._core.validate import SpatiomeInputError, check_adata, get_spatial


def spatial_folds(
    adata: AnnData,
    n_folds: int = 5,
    *,
    blocks_per_fold: int = 4,
    sample_key: str | None = None,
    spatial_key: str = "spatial",
    random_state: int = 0,
) -> np.ndarray:
    """Fold of every spot, made of contiguous tissue blocks.

    The tissue is cut into ``n_folds * blocks_per_fold`` compact blocks (k-means on the
    coordinates, per sample when ``sample_key`` is given) and the blocks are dealt to the
    folds largest first, each to the fold with the fewest spots so far. Neighbouring spots
    thus share a fold, except along block borders, so a model cannot score well by
    reading a test spot's neighbours in the training set.

    Parameters
    ----------
    adata
        Spots with coordinates in ``obsm[spatial_key]``.
    n_folds
        Number of folds (at least 2).
    blocks_per_fold
        Blocks per fold; more blocks spread each fold over the tissue.
    sample_key
        ``obs`` column of the sample: blocks never span two samples.
    spatial_key
        Coordinates in ``obsm``.
    random_state
        Seed of the k-means.

    Returns
    -------
    numpy.ndarray
        Fold index (0 .. n_folds - 1) per spot.

    Examples
    --------
    >>> import numpy as np, anndata
    >>> xy = np.array([(x, y) for x in range(20) for y in range(20)], dtype=float)
    >>> folds = spatial_folds(anndata.AnnData(np.zeros((400, 1)), obsm={"spatial": xy}), 4)
    >>> bool(np.bincount(folds).min() >= 60)
    True
    """
    check_adata(adata)
    if not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise SpatiomeInputError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    coords = get_spatial(adata, spatial_key)[:, :2]
    groups = np.zeros(adata.n_obs, dtype=np.int64)
    if sample_key is not None:
        if sample_key not in adata.obs:
            raise SpatiomeInputError(f"adata.obs[{sample_key!r}] is missing")
        groups = np.unique(adata.obs[sample_key].astype(str).to_numpy(), return_inverse=True)[1]
    n_blocks = n_folds * blocks_per_fold
    block = np.empty(adata.n_obs, dtype=np.int64)
    next_id = 0
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        k = int(min(n_blocks, rows.size))
        labels = KMeans(n_clusters=k, n_init=3, random_state=random_state).fit_predict(coords[rows])
        block[rows] = labels + next_id
        next_id += k
    if next_id < n_folds:
        raise SpatiomeInputError(f"{adata.n_obs} spots are too few for {n_folds} folds")
    sizes = np.bincount(block)
    fold_of_block = np.empty(sizes.size, dtype=np.int64)
    load = np.zeros(n_folds)
    for b in np.argsort(-sizes, kind="stable"):
        fold_of_block[b] = int(np.argmin(load))
        load[fold_of_block[b]] += sizes[b]
    return fold_of_block[block]
