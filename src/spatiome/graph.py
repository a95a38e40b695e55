"""Spatial neighbour graphs: k nearest neighbours, radius, Delaunay and the Visium hex grid.

Graphs are stored the way squidpy stores them, so squidpy and scanpy functions accept them
unchanged: a binary sparse CSR adjacency in ``adata.obsp["spatial_connectivities"]``, the
Euclidean length of every edge in ``adata.obsp["spatial_distances"]`` (same sparsity
pattern), and ``adata.uns["spatial_neighbors"]`` with the keys and parameters. No n x n dense
matrix is ever formed.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from ._core.validate import SpatiomeInputError, check_adata, get_spatial

METHODS = ("knn", "radius", "delaunay", "grid")
GRID_COLUMNS = ("array_row", "array_col")


def spatial_neighbors(
    adata: AnnData,
    *,
    method: str = "knn",
    n_neighbors: int = 6,
    radius: float | None = None,
    delaunay_max_quantile: float | None = None,
    n_rings: int = 1,
    symmetric: bool = True,
    spatial_key: str = "spatial",
    key_added: str = "spatial",
    copy: bool = False,
) -> AnnData | None:
    """Build a spatial neighbour graph of the spots and store it in ``adata.obsp``.

    Parameters
    ----------
    adata
        Spots x genes with coordinates in ``adata.obsm[spatial_key]``.
    method
        ``"knn"``: each spot's ``n_neighbors`` nearest spots (scipy ``cKDTree``, all cores);
        ``"radius"``: all spots within ``radius``;
        ``"delaunay"``: edges of the Delaunay triangulation, optionally pruned;
        ``"grid"``: Visium hex-grid neighbours from ``adata.obs["array_row"]`` and
        ``adata.obs["array_col"]`` (same row, column +-2; rows +-1, column +-1), so every
        interior spot has exactly 6 neighbours in the first ring.
    n_neighbors
        Neighbours per spot for ``"knn"``.
    radius
        Required for ``"radius"`` (edges of length <= radius, in coordinate units). With
        ``"knn"`` it is an optional cap: kNN edges longer than ``radius`` are dropped.
    delaunay_max_quantile
        For ``"delaunay"``: drop edges longer than this quantile (in (0, 1]) of all
        Delaunay edge lengths; removes the long edges across gaps and along the hull.
    n_rings
        For ``"grid"``: neighbours up to this many hexagonal rings away (1 ring = 6
        neighbours, 2 rings = 18, ...).
    symmetric
        Make the graph undirected (an edge when either spot lists the other). Only kNN
        graphs can be asymmetric; the other methods are symmetric by construction.
    spatial_key
        Coordinates in ``adata.obsm``. For ``"grid"`` they are optional: without them the
        distances are in units of the spot centre-to-centre spacing.
    key_added
        Graph names: ``obsp[f"{key_added}_connectivities"]``,
        ``obsp[f"{key_added}_distances"]`` and ``uns[f"{key_added}_neighbors"]``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise ``adata`` is updated in place:
        ``obsp[f"{key_added}_connectivities"]`` (binary CSR, float64),
        ``obsp[f"{key_added}_distances"]`` (Euclidean edge lengths, CSR) and
        ``uns[f"{key_added}_neighbors"]`` with ``connectivities_key``, ``distances_key``,
        ``params`` and ``n_isolated`` (spots without any neighbour; a warning gives their
        number when there are some).

    Examples
    --------
    >>> import anndata, numpy as np
    >>> rng = np.random.default_rng(0)
    >>> adata = anndata.AnnData(np.ones((100, 3)), obsm={"spatial": rng.random((100, 2))})
    >>> spatial_neighbors(adata, method="knn", n_neighbors=6)
    >>> graph = adata.obsp["spatial_connectivities"]
    >>> graph.shape, bool((graph != graph.T).nnz == 0), int(graph.sum(1).min()) >= 6
    ((100, 100), True, True)
    >>> adata.uns["spatial_neighbors"]["distances_key"]
    'spatial_distances'
    """
    check_adata(adata)
    if not isinstance(key_added, str) or not key_added:
        raise SpatiomeInputError(f"key_added must be a non-empty string, got {key_added!r}")
    connectivities, distances, info = build_graph(
        adata,
        method=method,
        n_neighbors=n_neighbors,
        radius=radius,
        delaunay_max_quantile=delaunay_max_quantile,
        n_rings=n_rings,
        symmetric=symmetric,
        spatial_key=spatial_key,
    )
    if info["n_isolated"]:
        warnings.warn(
            f"{info['n_isolated']} of {adata.n_obs} spots have no spatial neighbours with "
            f"method={method!r}; they add nothing to neighbourhood statistics (raise "
            "n_neighbors, radius or delaunay_max_quantile, or remove those spots)",
            UserWarning,
            stacklevel=2,
        )
    target = adata.copy() if copy else adata
    conn_key, dist_key = f"{key_added}_connectivities", f"{key_added}_distances"
    target.obsp[conn_key] = connectivities
    target.obsp[dist_key] = distances
    target.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": conn_key,
        "distances_key": dist_key,
        **info,
    }
    return target if copy else None


def build_graph(
    adata: AnnData,
    *,
    method: str = "knn",
    n_neighbors: int = 6,
    radius: float | None = None,
    delaunay_max_quantile: float | None = None,
    n_rings: int = 1,
    symmetric: bool = True,
    spatial_key: str = "spatial",
) -> tuple[sp.csr_matrix, sp.csr_matrix, dict]:
    """Compute a spatial graph without storing it (parameters as :func:`spatial_neighbors`).

    Returns
    -------
    connectivities, distances, info
        Binary CSR adjacency, CSR edge lengths with the same pattern, and a dict with
        ``params``, ``n_isolated`` and ``n_edges``. Nothing is written into ``adata``.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    >>> conn, dist, info = build_graph(anndata.AnnData(np.ones((4, 1)), obsm={"spatial": xy}),
    ...                                method="radius", radius=1.5)
    >>> int(conn.nnz), info["n_isolated"], float(dist[1, 2]).__round__(3)
    (6, 1, 1.414)
    """
    method = _check_params(adata, method, n_neighbors, radius, delaunay_max_quantile, n_rings)
    coords = _coordinates(adata, method, spatial_key)
    if method == "knn":
        rows, cols = _knn_edges(coords, n_neighbors, radius)
    elif method == "radius":
        rows, cols = _radius_edges(coords, radius)
    elif method == "delaunay":
        rows, cols = _delaunay_edges(coords, delaunay_max_quantile)
    else:
        rows, cols = _grid_edges(_grid_positions(adata), n_rings)
    connectivities = _adjacency(rows, cols, adata.n_obs, symmetric=symmetric)
    distances = _edge_lengths(connectivities, coords)
    info = {
        "params": {
            "method": method,
            "n_neighbors": int(n_neighbors) if method == "knn" else None,
            "radius": None if radius is None else float(radius),
            "delaunay": method == "delaunay",
            "delaunay_max_quantile": delaunay_max_quantile,
            "n_rings": int(n_rings) if method == "grid" else None,
            "coord_type": "grid" if method == "grid" else "generic",
            "transform": None,
            "symmetric": bool(symmetric),
            "spatial_key": spatial_key,
        },
        "n_isolated": int(np.count_nonzero(np.diff(connectivities.indptr) == 0)),
        "n_edges": int(connectivities.nnz),
    }
    return connectivities, distances, info


def row_normalize(weights: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
    """Divide every row by its sum, so each spot's weights sum to 1 (rows of zeros stay zero).

    Parameters
    ----------
    weights
        Square sparse or dense weight matrix.

    Returns
    -------
    scipy.sparse.csr_matrix
        Row-stochastic float64 CSR copy; the input is not modified.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> w = sp.csr_matrix([[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    >>> row_normalize(w).toarray().tolist()
    [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    matrix = sp.csr_matrix(weights, dtype=np.float64, copy=True)
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums != 0)
    matrix.data *= np.repeat(scale, np.diff(matrix.indptr))
    return matrix


def symmetrize(weights: sp.spmatrix | np.ndarray, *, mode: str = "max") -> sp.csr_matrix:
    """Make a weight matrix symmetric.

    Parameters
    ----------
    weights
        Square sparse or dense weight matrix.
    mode
        ``"max"``: w_ij = max(w_ij, w_ji) (for binary graphs: an edge when either spot lists
        the other); ``"min"``: the minimum (binary: mutual neighbours only);
        ``"mean"``: (W + W^T) / 2.

    Returns
    -------
    scipy.sparse.csr_matrix
        Symmetric float64 CSR matrix; the input is not modified.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> w = sp.csr_matrix([[0, 1], [0, 0]])
    >>> symmetrize(w).toarray().tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    >>> symmetrize(w, mode="min").nnz
    0
    """
    matrix = sp.csr_matrix(weights, dtype=np.float64)
    if matrix.shape[0] != matrix.shape[1]:
        raise SpatiomeInputError(f"weights must be square, got shape {matrix.shape}")
    transposed = matrix.T.tocsr()
    if mode == "max":
        result = matrix.maximum(transposed)
    elif mode == "min":
        result = matrix.minimum(transposed)
    elif mode == "mean":
        result = (matrix + transposed) * 0.5
    else:
        raise SpatiomeInputError(f"mode must be 'max', 'min' or 'mean', got {mode!r}")
    result = sp.csr_matrix(result)
    result.eliminate_zeros()
    result.sort_indices()
    return result


def default_method(adata: AnnData) -> str:
    """``"grid"`` when ``obs`` has Visium ``array_row``/``array_col``, else ``"knn"``.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> default_method(anndata.AnnData(np.ones((2, 2))))
    'knn'
    """
    return "grid" if set(GRID_COLUMNS) <= set(adata.obs.columns) else "knn"


def _check_params(
    adata: AnnData,
    method: str,
    n_neighbors: int,
    radius: float | None,
    delaunay_max_quantile: float | None,
    n_rings: int,
) -> str:
    if method not in METHODS:
        raise SpatiomeInputError(f"method must be one of {METHODS}, got {method!r}")
    if method == "knn":
        _check_positive_int(n_neighbors, "n_neighbors")
        if n_neighbors >= adata.n_obs:
            raise SpatiomeInputError(
                f"n_neighbors={n_neighbors} must be smaller than the number of spots "
                f"({adata.n_obs})"
            )
    if method == "radius" and radius is None:
        raise SpatiomeInputError("method='radius' needs radius= (in coordinate units)")
    if radius is not None and not (np.isfinite(radius) and radius > 0):
        raise SpatiomeInputError(f"radius must be a positive finite number, got {radius!r}")
    if delaunay_max_quantile is not None and not 0 < delaunay_max_quantile <= 1:
        raise SpatiomeInputError(
            f"delaunay_max_quantile must be in (0, 1], got {delaunay_max_quantile!r}"
        )
    if method == "grid":
        _check_positive_int(n_rings, "n_rings")
    return method


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpatiomeInputError(f"{name} must be a positive integer, got {value!r}")


def _coordinates(adata: AnnData, method: str, spatial_key: str) -> np.ndarray:
    if method == "grid" and spatial_key not in adata.obsm:
        # Without coordinates, lay the hex lattice out with unit centre-to-centre spacing.
        lattice = _grid_positions(adata).astype(np.float64)
        return np.column_stack([lattice[:, 1] * 0.5, lattice[:, 0] * np.sqrt(3.0) / 2.0])
    return get_spatial(adata, spatial_key)


def _knn_edges(
    coords: np.ndarray, n_neighbors: int, radius: float | None
) -> tuple[np.ndarray, np.ndarray]:
    n_obs = coords.shape[0]
    tree = cKDTree(coords)
    distances, index = tree.query(coords, k=n_neighbors + 1, workers=-1)
    # Drop each spot itself; with duplicated coordinates the spot may not come first or
    # may be pushed out of the list, in which case the farthest hit is dropped instead.
    is_self = index == np.arange(n_obs)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    if radius is not None:
        keep &= distances <= radius
    rows = np.broadcast_to(np.arange(n_obs)[:, None], index.shape)[keep]
    return rows, index[keep]


def _radius_edges(coords: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    pairs = cKDTree(coords).query_pairs(r=radius, output_type="ndarray")
    return pairs[:, 0], pairs[:, 1]


def _delaunay_edges(
    coords: np.ndarray, max_quantile: float | None
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import Delaunay, QhullError

    try:
        simplices = Delaunay(coords).simplices
    except (QhullError, ValueError) as err:
        raise SpatiomeInputError(
            f"Delaunay triangulation failed ({str(err).splitlines()[0]}): the coordinates "
            "need at least 3 (2-D) or 4 (3-D) spots not all on one line/plane; use "
            "method='knn' instead"
        ) from None
    n_obs = coords.shape[0]
    corners = simplices.shape[1]
    pairs = [(a, b) for a in range(corners) for b in range(a + 1, corners)]
    first = np.concatenate([simplices[:, a] for a, _ in pairs]).astype(np.int64)
    second = np.concatenate([simplices[:, b] for _, b in pairs]).astype(np.int64)
    low, high = np.minimum(first, second), np.maximum(first, second)
    keys = np.unique(low * n_obs + high)
    low, high = keys // n_obs, keys % n_obs
    if max_quantile is not None and max_quantile < 1:
        lengths = np.linalg.norm(coords[low] - coords[high], axis=1)
        keep = lengths <= np.quantile(lengths, max_quantile)
        low, high = low[keep], high[keep]
    return low, high


def _grid_positions(adata: AnnData) -> np.ndarray:
    missing = [c for c in GRID_COLUMNS if c not in adata.obs.columns]
    if missing:
        raise SpatiomeInputError(
            f"method='grid' needs Visium array coordinates in adata.obs {list(GRID_COLUMNS)}; "
            f"missing {missing}: read the data with spatiome.io.read_visium or use "
            "method='knn' (n_neighbors=6 approximates the hex grid)"
        )
    values = adata.obs[list(GRID_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    if not np.isfinite(values).all() or not np.all(values == np.round(values)):
        raise SpatiomeInputError(
            "adata.obs['array_row'] and adata.obs['array_col'] must be finite integers "
            "(the Visium barcode grid positions)"
        )
    lattice = values.astype(np.int64)
    keys = _grid_keys(lattice[:, 0], lattice[:, 1], lattice)
    if np.unique(keys).size != keys.size:
        raise SpatiomeInputError(
            "adata.obs ['array_row', 'array_col'] has duplicated grid positions: each spot "
            "must occupy its own position (were several sections concatenated?)"
        )
    return lattice


def _grid_keys(row: np.ndarray, col: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    row_min, col_min = lattice.min(axis=0)
    width = int(lattice[:, 1].max() - col_min + 1)
    return (row - row_min) * width + (col - col_min)


def hex_offsets(n_rings: int) -> np.ndarray:
    """(row, col) offsets of the hex-grid neighbours within ``n_rings`` rings.

    Visium stores its hexagonal lattice in "doubled" columns: neighbours in the same row are
    2 columns apart, those in adjacent rows 1 column apart. The hex distance of an offset
    (dr, dc) is ``|dr| + max(0, (|dc| - |dr|) / 2)``.

    Examples
    --------
    >>> hex_offsets(1).tolist()
    [[-1, -1], [-1, 1], [0, -2], [0, 2], [1, -1], [1, 1]]
    >>> len(hex_offsets(2))
    18
    """
    offsets = [
        (dr, dc)
        for dr in range(-n_rings, n_rings + 1)
        for dc in range(-2 * n_rings, 2 * n_rings + 1)
        if (dr, dc) != (0, 0)
        and (dr + dc) % 2 == 0
        and abs(dr) + max(0, (abs(dc) - abs(dr)) // 2) <= n_rings
    ]
    return np.array(offsets, dtype=np.int64)


def _grid_edges(lattice: np.ndarray, n_rings: int) -> tuple[np.ndarray, np.ndarray]:
    keys = _grid_keys(lattice[:, 0], lattice[:, 1], lattice)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    low, high = lattice.min(axis=0), lattice.max(axis=0)
    all_rows, all_cols = [], []
    for d_row, d_col in hex_offsets(n_rings):
        row, col = lattice[:, 0] + d_row, lattice[:, 1] + d_col
        # Out-of-range positions would alias onto other rows in the flattened keys.
        inside = (row >= low[0]) & (row <= high[0]) & (col >= low[1]) & (col <= high[1])
        source = np.flatnonzero(inside)
        target = _grid_keys(row[source], col[source], lattice)
        pos = np.minimum(np.searchsorted(sorted_keys, target), keys.size - 1)
        found = sorted_keys[pos] == target
        all_rows.append(source[found])
        all_cols.append(order[pos[found]])
    return np.concatenate(all_rows), np.concatenate(all_cols)


def _adjacency(rows: np.ndarray, cols: np.ndarray, n_obs: int, *, symmetric: bool) -> sp.csr_matrix:
    if symmetric:
        rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    index_dtype = np.int32 if rows.size < 2**31 and n_obs < 2**31 else np.int64
    graph = sp.csr_matrix(
        (
            np.ones(rows.size, dtype=np.float64),
            (rows.astype(index_dtype, copy=False), cols.astype(index_dtype, copy=False)),
        ),
        shape=(n_obs, n_obs),
    )
    graph.sum_duplicates()
    graph.data[:] = 1.0
    graph.sort_indices()
    return graph


def _edge_lengths(connectivities: sp.csr_matrix, coords: np.ndarray) -> sp.csr_matrix:
    # Same sparsity pattern as the connectivities, including zero-length edges between
    # duplicated coordinates (kept as explicit zeros).
    rows = np.repeat(np.arange(connectivities.shape[0]), np.diff(connectivities.indptr))
    lengths = np.sqrt(((coords[rows] - coords[connectivities.indices]) ** 2).sum(axis=1))
    return sp.csr_matrix(
        (lengths, connectivities.indices.copy(), connectivities.indptr.copy()),
        shape=connectivities.shape,
    )


__all__ = [
    "spatial_neighbors",
    "build_graph",
    "row_normalize",
    "symmetrize",
    "default_method",
    "hex_offsets",
]
