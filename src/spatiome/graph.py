"""Spatial neighbour graphs: k nearest neighbours, radius, Delaunay and array grids.

The grid graphs follow the array positions of 10x data: the hexagonal lattice of Visium
spots and the square lattice of Visium HD bins, told apart from the positions themselves.

Graphs are stored the way squidpy stores them, so squidpy and scanpy functions accept them
unchanged: a binary sparse CSR adjacency in ``adata.obsp["spatial_connectivities"]``, the
Euclidean length of every edge in ``adata.obsp["spatial_distances"]`` (same sparsity
pattern), and ``adata.uns["spatial_neighbors"]`` with the keys and parameters. No n x n dense
matrix is ever formed.

Every graph depends only on the positions, not on the order of the spots: kNN ties (equal
distances, common on regular grids) are broken by the neighbours' coordinates, and the
Delaunay triangulation sees the spots sorted by coordinates. Only spots at exactly the same
position cannot be told apart; among those the row order decides.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from ._core.validate import SpatiomeInputError, check_adata, get_spatial

METHODS = ("auto", "knn", "radius", "delaunay", "grid")
LATTICES = ("auto", "hex", "square")
GRID_COLUMNS = ("array_row", "array_col")
#: Extra kNN candidates per spot beyond ``n_neighbors + 1`` when ties are common (regular
#: grids): enough to see every neighbour tied with the k-th on a square or hex grid. Spots
#: whose ties reach past the candidates are queried again, so this only sets the speed.
KNN_EXTRA_CANDIDATES = 4
#: Warn when more than this fraction of the spots shares its position with another spot.
COLOCATED_WARNING_FRACTION = 0.1
#: Largest relative deviation of the fitted lattice steps from a hex or square lattice.
LATTICE_TOLERANCE = 0.15


def spatial_neighbors(
    adata: AnnData,
    *,
    method: str = "knn",
    n_neighbors: int = 6,
    radius: float | None = None,
    delaunay_max_quantile: float | None = None,
    n_rings: int = 1,
    lattice: str = "auto",
    square_neighbors: int = 4,
    symmetric: bool = True,
    spatial_key: str = "spatial",
    library_key: str | None = None,
    key_added: str = "spatial",
    copy: bool = False,
) -> AnnData | None:
    """Build a spatial neighbour graph of the spots and store it in ``adata.obsp``.

    Parameters
    ----------
    adata
        Spots x genes with coordinates in ``adata.obsm[spatial_key]`` (at least 2 spots).
    method
        ``"knn"``: each spot's ``n_neighbors`` nearest spots (scipy ``cKDTree``, all cores;
        among spots at the same distance the one with the smaller x, then y, comes first,
        so the graph does not depend on the order of the spots);
        ``"radius"``: all spots within ``radius``;
        ``"delaunay"``: edges of the Delaunay triangulation, optionally pruned (needs 3
        spots not on one line, 4 not on one plane in 3-D);
        ``"grid"``: neighbours on the 10x array grid from ``adata.obs["array_row"]`` and
        ``adata.obs["array_col"]``, by the rule of its ``lattice``: hexagonal Visium spots
        (same row, column +-2; rows +-1, column +-1: 6 neighbours) or square Visium HD bins
        (the 4 bins sharing an edge, or 8 with ``square_neighbors=8``);
        ``"auto"``: :func:`default_method` (``"grid"`` when ``obs`` has the array
        positions, else ``"knn"``).
    n_neighbors
        Neighbours per spot for ``"knn"`` (at most the number of spots - 1).
    radius
        Required for ``"radius"`` (edges of length <= radius, in coordinate units). With
        ``"knn"`` it is an optional cap: kNN edges longer than ``radius`` are dropped.
    delaunay_max_quantile
        For ``"delaunay"``: drop edges longer than this quantile (in (0, 1]) of all
        Delaunay edge lengths; removes the long edges across gaps and along the hull.
    n_rings
        For ``"grid"``: neighbours up to this many rings away (hex: 6, 18, 36, ... spots;
        square: 4, 12, 24, ... with 4 neighbours per ring one, 8, 24, 48, ... with 8).
    lattice
        For ``"grid"``: ``"hex"`` (Visium), ``"square"`` (Visium HD) or ``"auto"``
        (:func:`detect_lattice`, from the array positions).
    square_neighbors
        For a square lattice: 4 (the bins sharing an edge, the rook's rule) or 8 (also the
        bins sharing a corner, the queen's rule).
    symmetric
        Make the graph undirected (an edge when either spot lists the other). Only kNN
        graphs can be asymmetric; the other methods are symmetric by construction.
    spatial_key
        Coordinates in ``adata.obsm``. For ``"grid"`` they are optional: without them the
        distances are in units of the spot (or bin) centre-to-centre spacing.
    library_key
        Column of ``adata.obs`` naming each spot's sample (section, library). The graph is
        then built for every sample on its own and the graphs are joined block-diagonally:
        no edge links two samples, even when their coordinates overlap. squidpy's
        ``library_key`` does the same. ``None``: one graph over all spots.
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
        ``params`` (the method actually used, and the lattice for ``"grid"``),
        ``n_isolated`` (spots without any neighbour) and ``n_colocated`` (spots joined to
        another spot at the same position), and with ``library_key`` also
        ``params["library_key"]`` and ``libraries`` (the samples, in order). A warning
        gives the number of isolated spots when there are some, and of co-located ones
        when they are more than a tenth.

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

    Square bins (Visium HD) get their 4 edge-sharing neighbours:

    >>> rows, cols = np.divmod(np.arange(25), 5)
    >>> bins = anndata.AnnData(np.ones((25, 1)), obsm={"spatial": np.c_[cols, rows] * 8.0})
    >>> bins.obs["array_row"], bins.obs["array_col"] = rows, cols
    >>> spatial_neighbors(bins, method="auto")
    >>> params = bins.uns["spatial_neighbors"]["params"]
    >>> params["method"], params["lattice"]
    ('grid', 'square')
    >>> np.diff(bins.obsp["spatial_connectivities"].indptr).reshape(5, 5)[2].tolist()
    [3, 4, 4, 4, 3]

    Two sections on the same coordinates stay apart with ``library_key``:

    >>> both = anndata.concat([adata, adata], label="sample", index_unique="-")
    >>> spatial_neighbors(both, n_neighbors=6, library_key="sample")
    >>> graph = both.obsp["spatial_connectivities"]
    >>> int(graph[:100, 100:].nnz), int(graph.nnz) == 2 * int(adata.obsp[
    ...     "spatial_connectivities"].nnz)
    (0, True)
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
        lattice=lattice,
        square_neighbors=square_neighbors,
        symmetric=symmetric,
        spatial_key=spatial_key,
        library_key=library_key,
    )
    used = info["params"]["method"]
    if info["n_isolated"]:
        warnings.warn(
            f"{info['n_isolated']} of {adata.n_obs} spots have no spatial neighbours with "
            f"method={used!r}; they add nothing to neighbourhood statistics (raise "
            "n_neighbors, radius or delaunay_max_quantile, or remove those spots)",
            UserWarning,
            stacklevel=2,
        )
    if info["n_colocated"] > COLOCATED_WARNING_FRACTION * adata.n_obs:
        warnings.warn(
            f"{info['n_colocated']} of {adata.n_obs} spots share their position with another "
            f"spot (zero-length edges in the {used!r} graph): check that "
            f"adata.obsm[{spatial_key!r}] holds each spot's own coordinates (several sections "
            "on the same coordinates, or coordinates rounded too coarsely?)",
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
    lattice: str = "auto",
    square_neighbors: int = 4,
    symmetric: bool = True,
    spatial_key: str = "spatial",
    library_key: str | None = None,
) -> tuple[sp.csr_matrix, sp.csr_matrix, dict]:
    """Compute a spatial graph without storing it (parameters as :func:`spatial_neighbors`).

    Returns
    -------
    connectivities, distances, info
        Binary CSR adjacency, CSR edge lengths with the same pattern, and a dict with
        ``params``, ``n_isolated``, ``n_colocated`` and ``n_edges``. Nothing is written
        into ``adata``.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    >>> conn, dist, info = build_graph(anndata.AnnData(np.ones((4, 1)), obsm={"spatial": xy}),
    ...                                method="radius", radius=1.5)
    >>> int(conn.nnz), info["n_isolated"], float(dist[1, 2]).__round__(3)
    (6, 1, 1.414)
    """
    options = {
        "method": method,
        "n_neighbors": n_neighbors,
        "radius": radius,
        "delaunay_max_quantile": delaunay_max_quantile,
        "n_rings": n_rings,
        "lattice": lattice,
        "square_neighbors": square_neighbors,
        "symmetric": symmetric,
        "spatial_key": spatial_key,
    }
    if library_key is not None:
        return _library_graphs(adata, library_key, options)
    return _one_graph(adata, **options)


def _one_graph(
    adata: AnnData,
    *,
    method: str,
    n_neighbors: int,
    radius: float | None,
    delaunay_max_quantile: float | None,
    n_rings: int,
    lattice: str,
    square_neighbors: int,
    symmetric: bool,
    spatial_key: str,
) -> tuple[sp.csr_matrix, sp.csr_matrix, dict]:
    method = _check_params(
        adata,
        method,
        n_neighbors,
        radius,
        delaunay_max_quantile,
        n_rings,
        lattice,
        square_neighbors,
    )
    kind = None
    if method == "grid":
        positions = _grid_positions(adata)
        coords = get_spatial(adata, spatial_key) if spatial_key in adata.obsm else None
        kind = _grid_lattice(adata, positions, coords, lattice, spatial_key)
        if coords is None:
            coords = _lattice_coordinates(positions, kind)
        offsets = (
            hex_offsets(n_rings) if kind == "hex" else square_offsets(n_rings, square_neighbors)
        )
        rows, cols = _grid_edges(positions, offsets)
    else:
        coords = get_spatial(adata, spatial_key)
        if method == "knn":
            rows, cols = _knn_edges(coords, n_neighbors, radius)
        elif method == "radius":
            rows, cols = _radius_edges(coords, radius)
        else:
            rows, cols = _delaunay_edges(coords, delaunay_max_quantile)
    # radius and Delaunay list each pair once: only kNN (and its radius cap) is directed
    undirected = symmetric or method in ("radius", "delaunay")
    connectivities = _adjacency(rows, cols, adata.n_obs, symmetric=undirected)
    distances = _edge_lengths(connectivities, coords)
    info = {
        "params": {
            "method": method,
            "n_neighbors": int(n_neighbors) if method == "knn" else None,
            "radius": None if radius is None else float(radius),
            "delaunay": method == "delaunay",
            "delaunay_max_quantile": delaunay_max_quantile,
            "n_rings": int(n_rings) if method == "grid" else None,
            "lattice": kind,
            "square_neighbors": int(square_neighbors) if kind == "square" else None,
            "coord_type": "grid" if method == "grid" else "generic",
            "transform": None,
            "symmetric": bool(symmetric),
            "spatial_key": spatial_key,
        },
        "n_isolated": int(np.count_nonzero(np.diff(connectivities.indptr) == 0)),
        "n_colocated": _count_colocated(distances),
        "n_edges": int(connectivities.nnz),
    }
    return connectivities, distances, info


def _library_graphs(
    adata: AnnData, library_key: str, options: dict
) -> tuple[sp.csr_matrix, sp.csr_matrix, dict]:
    """One graph per sample of ``obs[library_key]``, joined block-diagonally."""
    codes, names = _library_codes(adata, library_key)
    rows, cols, lengths, infos = [], [], [], []
    for code, name in enumerate(names):
        spots = np.flatnonzero(codes == code)
        try:
            conn, dist, info = _one_graph(adata[spots], **options)
        except SpatiomeInputError as err:
            raise SpatiomeInputError(f"sample {name!r} of obs[{library_key!r}]: {err}") from None
        rows.append(spots[np.repeat(np.arange(spots.size), np.diff(conn.indptr))])
        cols.append(spots[conn.indices])
        lengths.append(dist.data)
        infos.append(info)
    connectivities, distances = _joined(
        np.concatenate(rows), np.concatenate(cols), np.concatenate(lengths), adata.n_obs
    )
    params = {**infos[0]["params"], "library_key": library_key}
    if len({info["params"]["lattice"] for info in infos}) > 1:
        params["lattice"] = [info["params"]["lattice"] for info in infos]
    info = {
        "params": params,
        "libraries": [str(name) for name in names],
        "n_isolated": sum(info["n_isolated"] for info in infos),
        "n_colocated": sum(info["n_colocated"] for info in infos),
        "n_edges": int(connectivities.nnz),
    }
    return connectivities, distances, info


def _library_codes(adata: AnnData, library_key: str) -> tuple[np.ndarray, list]:
    if not isinstance(library_key, str) or library_key not in adata.obs.columns:
        raise SpatiomeInputError(
            f"library_key {library_key!r} is not a column of adata.obs (columns: "
            f"{list(adata.obs.columns)[:10]}): name the column holding each spot's sample"
        )
    labels = pd.Categorical(adata.obs[library_key])
    if (labels.codes < 0).any():
        raise SpatiomeInputError(
            f"adata.obs[{library_key!r}] has {int((labels.codes < 0).sum())} missing values: "
            "every spot needs a sample"
        )
    used = np.unique(labels.codes)
    return np.searchsorted(used, labels.codes), [labels.categories[c] for c in used]


def _joined(
    rows: np.ndarray, cols: np.ndarray, lengths: np.ndarray, n_obs: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Binary adjacency and edge lengths, both CSR with one sorted sparsity pattern."""
    order = np.lexsort((cols, rows))
    index_dtype = np.int32 if rows.size < 2**31 and n_obs < 2**31 else np.int64
    cols = cols[order].astype(index_dtype)
    indptr = np.zeros(n_obs + 1, dtype=index_dtype)
    np.cumsum(np.bincount(rows, minlength=n_obs), out=indptr[1:])
    connectivities = sp.csr_matrix((np.ones(cols.size), cols, indptr), shape=(n_obs, n_obs))
    distances = sp.csr_matrix(
        (lengths[order].astype(np.float64), cols.copy(), indptr.copy()), shape=(n_obs, n_obs)
    )
    return connectivities, distances


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
    """The graph method for ``method="auto"``: ``"grid"`` on 10x array data, else ``"knn"``.

    ``"grid"`` when ``adata.obs`` has the array positions ``array_row`` and ``array_col``
    (Visium spots and Visium HD bins, as :func:`spatiome.io.read_visium` and
    :func:`spatiome.io.read_visium_hd` store them), else ``"knn"``. The grid's neighbour
    rule, hexagonal (6 neighbours) or square (4 or 8), is then chosen by
    :func:`detect_lattice` from the positions themselves.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> default_method(anndata.AnnData(np.ones((2, 2))))
    'knn'
    >>> bins = anndata.AnnData(np.ones((4, 2)))
    >>> bins.obs["array_row"], bins.obs["array_col"] = [0, 0, 1, 1], [0, 1, 0, 1]
    >>> default_method(bins), detect_lattice(bins)
    ('grid', 'square')
    """
    return "grid" if set(GRID_COLUMNS) <= set(adata.obs.columns) else "knn"


def detect_lattice(adata: AnnData, *, spatial_key: str = "spatial") -> str:
    """Whether ``obs['array_row']``/``obs['array_col']`` index a hex or a square lattice.

    Visium numbers its hexagonal lattice in doubled columns: ``array_row + array_col`` has
    the same parity in every spot. Visium HD numbers its square bins row by row, so both
    parities occur. The rule:

    - both parities present: ``"square"`` (a doubled-column hex lattice cannot have them);
    - one parity: ``"hex"``, unless the data were read by
      :func:`spatiome.io.read_visium_hd` (``uns['spatiome']['source']['format']`` is
      ``"visium_hd"``; this only matters for a handful of bins on one diagonal).

    The physical spacing checks the choice: when ``adata.obsm[spatial_key]`` follows the
    array positions closely (a least-squares affine fit), one row step must be sqrt(3) (hex)
    or 1 (square) column steps long, at right angles; a warning says when it is not, as
    the chosen rule would then link spots at unequal distances. Coordinates stored in array
    units (``uns['spatial_unit'] == "array"``) are not used.

    Parameters
    ----------
    adata
        Spots x genes with ``array_row`` and ``array_col`` in ``obs``.
    spatial_key
        Coordinates in ``adata.obsm`` used for the check (optional).

    Returns
    -------
    str
        ``"hex"`` or ``"square"``.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> spots = anndata.AnnData(np.ones((3, 1)))
    >>> spots.obs["array_row"], spots.obs["array_col"] = [0, 0, 1], [0, 2, 1]
    >>> detect_lattice(spots)
    'hex'
    """
    positions = _grid_positions(adata)
    coords = get_spatial(adata, spatial_key) if spatial_key in adata.obsm else None
    return _grid_lattice(adata, positions, coords, "auto", spatial_key)


def _check_params(
    adata: AnnData,
    method: str,
    n_neighbors: int,
    radius: float | None,
    delaunay_max_quantile: float | None,
    n_rings: int,
    lattice: str,
    square_neighbors: int,
) -> str:
    if method not in METHODS:
        raise SpatiomeInputError(f"method must be one of {METHODS}, got {method!r}")
    if adata.n_obs < 2:
        raise SpatiomeInputError(
            f"spatial_neighbors needs at least 2 spots, got {adata.n_obs}: a neighbour graph "
            "links spots to each other"
        )
    if method == "auto":
        method = default_method(adata)
    if method == "knn":
        _check_positive_int(n_neighbors, "n_neighbors")
        if n_neighbors >= adata.n_obs:
            raise SpatiomeInputError(
                f"n_neighbors={n_neighbors} must be smaller than the number of spots "
                f"({adata.n_obs}): pass n_neighbors={adata.n_obs - 1} or fewer"
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
        if lattice not in LATTICES:
            raise SpatiomeInputError(f"lattice must be one of {LATTICES}, got {lattice!r}")
        if isinstance(square_neighbors, bool) or square_neighbors not in (4, 8):
            raise SpatiomeInputError(
                "square_neighbors must be 4 (bins sharing an edge) or 8 (also bins sharing "
                f"a corner), got {square_neighbors!r}"
            )
    return method


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpatiomeInputError(f"{name} must be a positive integer, got {value!r}")


def _knn_edges(
    coords: np.ndarray, n_neighbors: int, radius: float | None
) -> tuple[np.ndarray, np.ndarray]:
    n_obs = coords.shape[0]
    tree = cKDTree(coords)
    width = _knn_width(tree, coords, n_neighbors)
    pending = np.arange(n_obs)
    distances, index = tree.query(coords, k=width, workers=-1)
    rank = None
    all_rows, all_cols, all_distances = [], [], []
    while True:
        cand_distances, cand_index, closed = _candidates(
            distances, index, pending, n_neighbors, complete=width == n_obs
        )
        if closed.any():
            if not closed.all():
                cand_distances, cand_index = cand_distances[closed], cand_index[closed]
            kept_index, rank = _nearest(coords, cand_distances, cand_index, n_neighbors, rank)
            all_rows.append(np.repeat(pending[closed], n_neighbors))
            all_cols.append(kept_index.ravel())
            if radius is not None:
                all_distances.append(cand_distances[:, :n_neighbors].ravel())
        pending = pending[~closed]
        if not pending.size:
            break
        # Ties (or co-located spots) reach past the candidates: ask for more.
        width = min(n_obs, 2 * width)
        distances, index = tree.query(coords[pending], k=width, workers=-1)
    rows, cols = np.concatenate(all_rows), np.concatenate(all_cols)
    if radius is not None:
        keep = np.concatenate(all_distances) <= radius
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def _knn_width(tree: cKDTree, coords: np.ndarray, k: int) -> int:
    """Candidates to ask for per spot: one beyond the k-th, more when ties are common.

    One extra candidate shows whether the k-th neighbour is tied with a farther one. On a
    regular grid nearly every spot is, and asking again for all of them would cost more
    than a few extra candidates up front; a probe of about 1000 spots tells which case
    this is. The result does not depend on it, only the time.
    """
    n_obs = coords.shape[0]
    narrow = min(n_obs, k + 2)
    wide = min(n_obs, k + 1 + KNN_EXTRA_CANDIDATES)
    if narrow == wide:
        return narrow
    probe, _ = tree.query(coords[:: max(1, n_obs // 1000)], k=narrow)
    return wide if np.mean(probe[:, k + 1] == probe[:, k]) > 0.05 else narrow


def _candidates(
    distances: np.ndarray, index: np.ndarray, spots: np.ndarray, k: int, *, complete: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each spot's neighbours by distance without the spot itself, and which rows are closed.

    A row is closed when the spot itself was found and every spot tied with its k-th
    neighbour is among the candidates (the last candidate is strictly farther), or when
    the query returned all spots.
    """
    if np.array_equal(index[:, 0], spots):  # the usual case: no two spots share a position
        cand_distances, cand_index = distances[:, 1:], index[:, 1:]
        found = np.ones(spots.size, dtype=bool)
    else:
        is_self = index == spots[:, None]
        found = is_self.any(axis=1)
        position = np.argmax(is_self, axis=1)
        columns = np.arange(index.shape[1] - 1)[None, :]
        columns = columns + (columns >= position[:, None])
        cand_distances = np.take_along_axis(distances, columns, axis=1)
        cand_index = np.take_along_axis(index, columns, axis=1)
    if complete:
        return cand_distances, cand_index, found
    closed = found & (cand_distances[:, -1] > cand_distances[:, k - 1])
    return cand_distances, cand_index, closed


def _nearest(
    coords: np.ndarray,
    cand_distances: np.ndarray,
    cand_index: np.ndarray,
    k: int,
    rank: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The k nearest candidates; among those tied with the k-th, the smallest coordinates.

    The distances of the chosen neighbours are ``cand_distances[:, :k]`` either way: the
    tie-break only swaps neighbours at the same distance.
    """
    kept_index = cand_index[:, :k]
    if cand_index.shape[1] == k:
        return kept_index, rank
    tied = np.flatnonzero(cand_distances[:, k] == cand_distances[:, k - 1])
    if not tied.size:
        return kept_index, rank
    n_obs = coords.shape[0]
    if rank is None:
        # Position of every spot in (x, y[, z]) order; the row index only separates
        # spots at the same position.
        rank = np.empty(n_obs, dtype=np.int32 if n_obs < 2**31 else np.int64)
        rank[np.lexsort(coords.T[::-1])] = np.arange(n_obs)
    index_tied, distances_tied = cand_index[tied], cand_distances[tied]
    kth = distances_tied[:, k - 1 : k]
    key = rank[index_tied]
    key[distances_tied < kth] = -1
    key[distances_tied > kth] = n_obs
    chosen = np.argsort(key, axis=1, kind="stable")[:, :k]
    kept_index = kept_index.copy()
    kept_index[tied] = np.take_along_axis(index_tied, chosen, axis=1)
    return kept_index, rank


def _radius_edges(coords: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    pairs = cKDTree(coords).query_pairs(r=radius, output_type="ndarray")
    return pairs[:, 0], pairs[:, 1]


def _delaunay_edges(
    coords: np.ndarray, max_quantile: float | None
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import Delaunay, QhullError

    n_obs, n_dims = coords.shape
    if n_obs < n_dims + 1:
        raise SpatiomeInputError(
            f"method='delaunay' needs at least {n_dims + 1} spots with {n_dims}-D "
            f"coordinates, got {n_obs}: use method='knn'"
        )
    centred = coords - coords.mean(axis=0)
    spread = np.linalg.eigvalsh(centred.T @ centred)
    if spread[0] <= 1e-12 * spread[-1]:
        shape = "line" if n_dims == 2 else "plane"
        raise SpatiomeInputError(
            f"a Delaunay triangulation needs spots that are not all on one {shape}, but all "
            f"{n_obs} spots are: use method='knn'"
        )
    # Qhull's choice among equally good triangulations (the two diagonals of a grid
    # square) follows the input order: triangulate the spots sorted by coordinates.
    order = np.lexsort(coords.T[::-1])
    try:
        simplices = order[Delaunay(coords[order]).simplices]
    except (QhullError, ValueError) as err:
        raise SpatiomeInputError(
            f"Delaunay triangulation failed ({str(err).splitlines()[0]}): the coordinates "
            "need at least 3 (2-D) or 4 (3-D) spots not all on one line/plane; use "
            "method='knn' instead"
        ) from None
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
            f"method='grid' needs the array positions in adata.obs {list(GRID_COLUMNS)}; "
            f"missing {missing}: read the data with spatiome.io.read_visium or "
            "spatiome.io.read_visium_hd, or use method='knn'"
        )
    values = adata.obs[list(GRID_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    if not np.isfinite(values).all() or not np.all(values == np.round(values)):
        raise SpatiomeInputError(
            "adata.obs['array_row'] and adata.obs['array_col'] must be finite integers "
            "(the array positions of the Visium spots or Visium HD bins)"
        )
    lattice = values.astype(np.int64)
    keys = _grid_keys(lattice[:, 0], lattice[:, 1], lattice)
    if np.unique(keys).size != keys.size:
        raise SpatiomeInputError(
            "adata.obs ['array_row', 'array_col'] has duplicated grid positions: each spot "
            "must occupy its own position (were several sections concatenated? then pass "
            "library_key=<the obs column of the sections>)"
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


def square_offsets(n_rings: int, n_neighbors: int = 4) -> np.ndarray:
    """(row, col) offsets of the square-grid neighbours within ``n_rings`` rings.

    Visium HD numbers its square bins by row and column. With ``n_neighbors=4`` (the rook's
    rule) the first ring holds the 4 bins sharing an edge and ring r the bins r steps away
    along rows and columns (``|dr| + |dc| <= r``); with ``n_neighbors=8`` (the queen's rule)
    the first ring also holds the 4 bins sharing a corner (``max(|dr|, |dc|) <= r``).

    Examples
    --------
    >>> square_offsets(1).tolist()
    [[-1, 0], [0, -1], [0, 1], [1, 0]]
    >>> len(square_offsets(1, 8)), len(square_offsets(2)), len(square_offsets(2, 8))
    (8, 12, 24)
    """
    if n_neighbors not in (4, 8):
        raise SpatiomeInputError(f"n_neighbors must be 4 or 8, got {n_neighbors!r}")
    offsets = [
        (dr, dc)
        for dr in range(-n_rings, n_rings + 1)
        for dc in range(-n_rings, n_rings + 1)
        if (dr, dc) != (0, 0)
        and (abs(dr) + abs(dc) if n_neighbors == 4 else max(abs(dr), abs(dc))) <= n_rings
    ]
    return np.array(offsets, dtype=np.int64)


def _grid_lattice(
    adata: AnnData,
    positions: np.ndarray,
    coords: np.ndarray | None,
    lattice: str,
    spatial_key: str,
) -> str:
    parity = (positions[:, 0] + positions[:, 1]) % 2
    n_odd = int(parity.sum())
    mixed = 0 < n_odd < parity.size
    if lattice == "hex" and mixed:
        raise SpatiomeInputError(
            "lattice='hex' needs Visium's doubled columns, where array_row + array_col has "
            f"the same parity in every spot, but {parity.size - n_odd} spots have an even "
            f"and {n_odd} an odd sum: these look like square bins (lattice='square')"
        )
    if lattice != "auto":
        return lattice
    source = adata.uns.get("spatiome", {})
    source = source.get("source", {}) if isinstance(source, Mapping) else {}
    from_hd = isinstance(source, Mapping) and source.get("format") == "visium_hd"
    if mixed:
        kind, reason = "square", "array_row + array_col takes both parities"
    elif from_hd:
        kind, reason = "square", "the data were read by read_visium_hd"
    else:
        kind, reason = "hex", "array_row + array_col has one parity in every spot"
    if coords is not None and adata.uns.get("spatial_unit") != "array":
        _check_lattice_geometry(positions, coords, kind, reason, spatial_key)
    return kind


def _check_lattice_geometry(
    positions: np.ndarray, coords: np.ndarray, kind: str, reason: str, spatial_key: str
) -> None:
    """Warn when the coordinates clearly follow the array positions, but not as ``kind``."""
    steps = _lattice_steps(positions, coords)
    if steps is None:
        return
    lengths = np.linalg.norm(steps, axis=1)
    ratio = lengths[0] / lengths[1]
    cosine = float(steps[0] @ steps[1]) / (lengths[0] * lengths[1])
    expected = np.sqrt(3.0) if kind == "hex" else 1.0
    if abs(ratio / expected - 1) <= LATTICE_TOLERANCE and abs(cosine) <= LATTICE_TOLERANCE:
        return
    angle = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    warnings.warn(
        f"adata.obsm[{spatial_key!r}] does not lay array_row/array_col out as a {kind} "
        f"lattice: one row step is {ratio:.2f} column steps long at {angle:.0f} degrees "
        f"(a {kind} lattice has {expected:.2f} at 90), so the {kind} neighbours are not all "
        f"equally far. The {kind} rule is used because {reason}; pass lattice='hex' or "
        "lattice='square' to choose, or method='knn' to follow the coordinates",
        UserWarning,
        stacklevel=4,
    )


def _lattice_steps(positions: np.ndarray, coords: np.ndarray) -> np.ndarray | None:
    """Coordinate steps of one array row and one array column (least squares), or None.

    None when the positions do not span two directions or the coordinates are not close
    to an affine image of them (residuals above ``LATTICE_TOLERANCE`` of a step): then the
    coordinates say nothing reliable about the lattice.
    """
    index = positions.astype(np.float64)
    index -= index.mean(axis=0)
    centred = coords - coords.mean(axis=0)
    gram = index.T @ index
    if np.linalg.det(gram) <= 1e-9 * np.trace(gram) ** 2:
        return None
    steps = np.linalg.solve(gram, index.T @ centred)
    shortest = np.linalg.norm(steps, axis=1).min()
    if shortest == 0:
        return None
    residual = centred - index @ steps
    if np.sqrt((residual**2).sum(axis=1).mean()) > LATTICE_TOLERANCE * shortest:
        return None
    return steps


def _lattice_coordinates(positions: np.ndarray, kind: str) -> np.ndarray:
    """Positions laid out with unit centre-to-centre spacing (when no coordinates exist)."""
    position = positions.astype(np.float64)
    if kind == "hex":
        return np.column_stack([position[:, 1] * 0.5, position[:, 0] * np.sqrt(3.0) / 2.0])
    return np.column_stack([position[:, 1], position[:, 0]])


def _grid_edges(lattice: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys = _grid_keys(lattice[:, 0], lattice[:, 1], lattice)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    low, high = lattice.min(axis=0), lattice.max(axis=0)
    all_rows, all_cols = [], []
    for d_row, d_col in offsets:
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


def _count_colocated(distances: sp.csr_matrix) -> int:
    """Spots with a zero-length edge, i.e. joined to another spot at the same position."""
    zero = distances.data == 0
    if not zero.any():
        return 0
    rows = np.repeat(np.arange(distances.shape[0]), np.diff(distances.indptr))
    return int(np.unique(rows[zero]).size)


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
    "detect_lattice",
    "hex_offsets",
    "square_offsets",
]
