"""Neighbourhood statistics between groups of cells.

Four questions about where the groups of ``adata.obs[cluster_key]`` (cell types, clusters,
domains) sit relative to each other:

- :func:`nhood_enrichment`: are groups a and b joined by more edges of the spatial graph than
  a random relabelling of the cells would give? (z-scores, analytic or by permutation)
- :func:`interaction_matrix`: how many edges join each pair of groups?
- :func:`co_occurrence`: how much likelier is group a within distance r of group b than
  anywhere? (over a range of distances, from KD-tree pair counts)
- :func:`ripley`: is each group clustered, random or regular (Ripley's K and L, the
  nearest-neighbour G and the empty-space F, with edge correction and a simulated envelope
  of complete spatial randomness)?

Results go to ``adata.uns`` under squidpy's keys and in squidpy's shapes, so squidpy's plots
(``squidpy.pl.nhood_enrichment``, ``co_occurrence``, ``ripley``, ``interaction_matrix``)
read them unchanged. Graphs are read from ``adata.obsp`` as
:func:`spatiome.graph.spatial_neighbors` (or squidpy) writes them; no function forms an
n x n matrix.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import ConvexHull, QhullError, cKDTree

from .._core.random import check_random_state
from .._core.validate import SpatiomeInputError, check_adata, get_spatial

__all__ = ["co_occurrence", "interaction_matrix", "nhood_enrichment", "ripley"]

NHOOD_METHODS = ("analytic", "permutation")
RIPLEY_MODES = ("F", "G", "K", "L")
#: Default Ripley support: up to this fraction of the square root of the window's area ...
RIPLEY_AREA_FRACTION = 0.25
#: ... and at most this fraction of the largest distance of a cell to the window's edge,
#: so that the border correction keeps enough cells at every distance.
RIPLEY_BORDER_FRACTION = 0.5


# --------------------------------------------------------------------------------------
# Neighbourhood enrichment and the interaction matrix
# --------------------------------------------------------------------------------------


def nhood_enrichment(
    adata: AnnData,
    cluster_key: str,
    *,
    library_key: str | None = None,
    connectivity_key: str = "spatial",
    method: str = "analytic",
    n_perms: int = 1000,
    seed: int | np.random.Generator | None = 0,
    copy: bool = False,
) -> dict[str, np.ndarray] | None:
    r"""Neighbourhood enrichment: z-scores of the edges between every pair of groups.

    ``count[a, b]`` is the number of stored entries (i, j) of the connectivity matrix with
    cell i in group a and cell j in group b, counted exactly as squidpy counts them: a
    symmetric graph counts each edge between a and b once in ``count[a, b]`` and once in
    ``count[b, a]``, and each edge within a twice in ``count[a, a]``; the edge weights are
    ignored. The null hypothesis is a random relabelling of the cells (the group sizes are
    kept, the graph is fixed), and ``zscore[a, b] = (count[a, b] - mean) / sd`` under it.

    Parameters
    ----------
    adata
        Cells x genes with the groups in ``adata.obs[cluster_key]`` and a spatial graph in
        ``adata.obsp[f"{connectivity_key}_connectivities"]``.
    cluster_key
        Column of ``adata.obs`` with the groups (categorical, or any values, whose sorted
        unique values then become the groups). Cells without a group (NaN) are left out:
        their edges are not counted and they take no part in the relabelling.
    library_key
        Column of ``adata.obs`` naming the sample (library) of each cell, when one AnnData
        holds several sections. Cells of different libraries are never neighbours: graph
        entries joining two libraries are left out (build the graph with
        ``spatial_neighbors(..., library_key=...)``), and the relabelling happens within
        each library. The counts, and their means and variances, add over libraries.
    connectivity_key
        Graph name (``"spatial"`` reads ``obsp["spatial_connectivities"]``; a full key ending
        in ``"_connectivities"`` is used as is).
    method
        ``"analytic"``: the exact mean and variance of each count under the relabelling
        (see Notes), in one pass over the graph. ``"permutation"``: the mean and standard
        deviation over ``n_perms`` relabellings, as squidpy does.
    n_perms
        Relabellings for ``method="permutation"``.
    seed
        Seed (or numpy Generator) of the relabellings.
    copy
        Return the result instead of writing it into ``adata``.

    Returns
    -------
    dict or None
        ``{"zscore": (n_groups, n_groups) float, "count": (n_groups, n_groups) int}``, rows
        and columns in the order of the categories, returned when ``copy=True`` and
        otherwise stored in ``adata.uns[f"{cluster_key}_nhood_enrichment"]``. A group
        without cells, or one whose count cannot vary, has a NaN (or infinite) z-score.

    Notes
    -----
    Write L for the random labelling (a uniform permutation of the observed labels over the
    N labelled cells; n_a cells in group a) and E for the m stored entries (i, j), i != j,
    of the graph. Then C_ab = sum over E of 1[L_i = a] 1[L_j = b]. Any k distinct cells
    receive k given labels with probability n_a^(k_a) n_b^(k_b) / N^(k) (falling
    factorials: sampling without replacement), so

        E[C_ab] = m n_a n_b / N^(2)    (a != b),    m n_a^(2) / N^(2)    (a = b).

    E[C_ab^2] sums P(both entries match) over the m^2 ordered pairs of entries (e, f), which
    depends only on how e = (i, j) and f = (k, l) share cells: the same entry (m pairs); f
    the reverse of e (R, the entries whose reverse is stored; R = m for an undirected
    graph); a common source i = k (S_out = sum_i d_out(i) (d_out(i) - 1)); a common target
    j = l (S_in, likewise with in-degrees); a path j = k or i = l (T - R each, with
    T = sum_i d_in(i) d_out(i)); four distinct cells (the rest). With q_x the probability
    of a pattern and q_4 = n_a^(2) n_b^(2) / N^(4) that of four distinct cells,

        Var C_ab = m (q_2 - q_4) + S_out (q_abb - q_4) + S_in (q_aab - q_4)
                   - (2T - R) q_4 + m^2 (q_4 - q_2^2)              (a != b),
        Var C_aa = (m + R)(f_2 - f_4) + (S_out + S_in + 2(T - R))(f_3 - f_4)
                   + m^2 (f_4 - f_2^2)                              (a = b),

    with q_2 = n_a n_b / N^(2), q_abb = n_a n_b^(2) / N^(3), q_aab = n_a^(2) n_b / N^(3)
    and f_k = n_a^(k) / N^(k); a path or a reversed entry cannot join two different groups.
    The m^2 terms are evaluated in closed form so that nothing cancels. Stored diagonal
    entries (self-loops, which squidpy also counts) add the hypergeometric count of looped
    cells in a to C_aa, with its own variance and its covariance with the edge count. The
    count of an undirected graph is twice the count of its edges, which doubles the mean and
    the standard deviation alike: the z-scores do not depend on the convention.

    The permutation estimate of the standard deviation differs from the exact one by about
    1 / sqrt(2 n_perms) relatively (2% at 1,000 relabellings), hence the z-scores of
    squidpy, which permutes, by that fraction of themselves.

    References
    ----------
    Schapiro et al. (2017), histoCAT, Nature Methods 14: 873-876 (the permutation test);
    Palla et al. (2022), Squidpy, Nature Methods 19: 171-178.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> from spatiome.graph import spatial_neighbors
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.random((400, 2)) * 100
    >>> adata = anndata.AnnData(np.zeros((400, 1)), obsm={"spatial": xy})
    >>> adata.obs["side"] = pd.Categorical(np.where(xy[:, 0] < 50, "left", "right"))
    >>> spatial_neighbors(adata, n_neighbors=6)
    >>> nhood_enrichment(adata, "side")
    >>> result = adata.uns["side_nhood_enrichment"]
    >>> result["count"].shape, bool(result["zscore"][0, 0] > 10 > -10 > result["zscore"][0, 1])
    ((2, 2), True)
    """
    check_adata(adata)
    if method not in NHOOD_METHODS:
        raise SpatiomeInputError(f"method must be one of {NHOOD_METHODS}, got {method!r}")
    if method == "permutation":
        _check_positive_int("n_perms", n_perms)
    codes, categories = _group_codes(adata, cluster_key)
    libraries = _library_codes(adata, library_key)
    graph = _connectivities(adata, connectivity_key)
    n_groups = len(categories)
    rows, cols, codes, libraries = _labelled_edges(graph, codes, libraries)
    count = _pair_counts(codes[rows], codes[cols], n_groups)
    mean, variance = _library_moments(rows, cols, codes, libraries, n_groups)
    if method == "permutation":
        mean, variance = _permutation_moments(
            rows,
            cols,
            codes,
            n_groups,
            n_perms,
            check_random_state(seed),
            shift=mean,
            libraries=libraries,
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        zscore = (count - mean) / np.sqrt(variance)
    result = {"zscore": zscore, "count": count}
    if copy:
        return result
    adata.uns[f"{cluster_key}_nhood_enrichment"] = result
    return None


def interaction_matrix(
    adata: AnnData,
    cluster_key: str,
    *,
    library_key: str | None = None,
    connectivity_key: str = "spatial",
    normalized: bool = False,
    weights: bool = False,
    copy: bool = False,
) -> np.ndarray | None:
    """Edges of the spatial graph between every pair of groups.

    ``matrix[a, b]`` counts the stored entries (i, j) of the connectivity matrix with cell i
    in group a and cell j in group b (so a symmetric graph counts an edge between a and b in
    both ``[a, b]`` and ``[b, a]``), or sums their weights; squidpy's
    ``interaction_matrix`` gives the same numbers.

    Parameters
    ----------
    adata
        Cells x genes with the groups in ``adata.obs[cluster_key]`` and a spatial graph in
        ``adata.obsp[f"{connectivity_key}_connectivities"]``.
    cluster_key
        Column of ``adata.obs`` with the groups; cells without a group (NaN) are left out.
    library_key
        Column of ``adata.obs`` with the sample of each cell: entries joining two samples
        are left out, and the matrix sums the samples' matrices.
    connectivity_key
        Graph name, as in :func:`nhood_enrichment`.
    normalized
        Divide each row by its sum (a group without edges gets a row of NaN).
    weights
        Sum the stored edge weights instead of counting the edges.
    copy
        Return the matrix instead of writing it into ``adata``.

    Returns
    -------
    numpy.ndarray or None
        The (n_groups, n_groups) matrix, in the order of the categories (integers when the
        graph has an integer or boolean dtype and nothing is normalized, floats otherwise,
        as in squidpy), returned when ``copy=True`` and otherwise stored in
        ``adata.uns[f"{cluster_key}_interactions"]``.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd, scipy.sparse as sp
    >>> adata = anndata.AnnData(np.zeros((4, 1)))
    >>> adata.obs["group"] = pd.Categorical(["a", "a", "b", "b"])
    >>> path = sp.csr_matrix(np.eye(4, k=1) + np.eye(4, k=-1))  # 0 - 1 - 2 - 3
    >>> adata.obsp["spatial_connectivities"] = path
    >>> interaction_matrix(adata, "group", copy=True).tolist()
    [[2.0, 1.0], [1.0, 2.0]]
    """
    check_adata(adata)
    codes, categories = _group_codes(adata, cluster_key)
    libraries = _library_codes(adata, library_key)
    graph = _connectivities(adata, connectivity_key)
    n_groups = len(categories)
    source = np.repeat(codes, np.diff(graph.indptr))
    target = codes[graph.indices]
    keep = (source >= 0) & (target >= 0)
    if libraries is not None:
        keep &= np.repeat(libraries, np.diff(graph.indptr)) == libraries[graph.indices]
    edge_weights = graph.data[keep] if weights else None
    pairs = source[keep] * n_groups + target[keep]
    matrix = np.bincount(pairs, weights=edge_weights, minlength=n_groups * n_groups)
    integer = np.issubdtype(graph.dtype, np.integer) or graph.dtype == np.bool_
    matrix = matrix.reshape(n_groups, n_groups).astype(np.int64 if integer else np.float64)
    if normalized:
        with np.errstate(divide="ignore", invalid="ignore"):
            matrix = matrix / matrix.sum(axis=1, keepdims=True)
    if copy:
        return matrix
    adata.uns[f"{cluster_key}_interactions"] = matrix
    return None


def _labelled_edges(
    graph: sp.csr_matrix, codes: np.ndarray, libraries: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Entries between labelled cells (of one library), renumbered over the labelled cells."""
    labelled = codes >= 0
    index = np.full(codes.size, -1, dtype=np.int64)
    index[labelled] = np.arange(int(labelled.sum()))
    rows = np.repeat(index, np.diff(graph.indptr))
    cols = index[graph.indices]
    keep = (rows >= 0) & (cols >= 0)
    if libraries is None:
        return rows[keep], cols[keep], codes[labelled], None
    libraries = libraries[labelled]
    rows, cols = rows[keep], cols[keep]
    same = libraries[rows] == libraries[cols]
    return rows[same], cols[same], codes[labelled], libraries


def _library_codes(adata: AnnData, library_key: str | None) -> np.ndarray | None:
    """Library code of every cell (None without ``library_key``)."""
    if library_key is None:
        return None
    if not isinstance(library_key, str) or library_key not in adata.obs:
        columns = ", ".join(map(repr, list(adata.obs.columns)[:10])) or "none"
        raise SpatiomeInputError(
            f"adata.obs[{library_key!r}] is missing (columns: {columns}): pass the column "
            "that names each cell's sample as library_key, or library_key=None"
        )
    values = adata.obs[library_key]
    if values.isna().any():
        raise SpatiomeInputError(
            f"adata.obs[{library_key!r}] has {int(values.isna().sum())} missing values: every "
            "cell needs a library; fill them or drop those cells"
        )
    return pd.Categorical(values).codes.astype(np.int64)


def _library_moments(
    rows: np.ndarray,
    cols: np.ndarray,
    codes: np.ndarray,
    libraries: np.ndarray | None,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact moments of the counts: relabelling within libraries is independent across
    them, so the libraries' means and variances add."""
    if libraries is None:
        return _analytic_moments(rows, cols, codes, n_groups)
    mean = np.zeros((n_groups, n_groups))
    variance = np.zeros((n_groups, n_groups))
    cell_order = np.argsort(libraries, kind="stable")
    cell_bounds = np.searchsorted(libraries[cell_order], np.arange(libraries.max() + 2))
    entry_order = np.argsort(libraries[rows], kind="stable")
    entry_bounds = np.searchsorted(libraries[rows][entry_order], np.arange(libraries.max() + 2))
    local = np.empty(codes.size, dtype=np.int64)
    for library in range(libraries.max() + 1):
        cells = cell_order[cell_bounds[library] : cell_bounds[library + 1]]
        if cells.size == 0:
            continue
        local[cells] = np.arange(cells.size)
        entries = entry_order[entry_bounds[library] : entry_bounds[library + 1]]
        part_mean, part_variance = _analytic_moments(
            local[rows[entries]], local[cols[entries]], codes[cells], n_groups
        )
        mean += part_mean
        variance += part_variance
    return mean, variance


def _pair_counts(source: np.ndarray, target: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, n_groups) counts of the (source group, target group) pairs."""
    pairs = source.astype(np.int64) * n_groups + target
    return np.bincount(pairs, minlength=n_groups * n_groups).reshape(n_groups, n_groups)


def _falling(x: np.ndarray, k: int) -> np.ndarray:
    """Falling factorial x (x - 1) ... (x - k + 1), as floats."""
    out = np.ones_like(x, dtype=np.float64)
    for step in range(k):
        out = out * (x - step)
    return out


def _analytic_moments(
    rows: np.ndarray, cols: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of every group-pair count under random relabelling.

    ``rows``, ``cols``: the graph's entries over the N labelled cells; ``codes``: their
    groups. The formulas are those of :func:`nhood_enrichment`'s Notes.
    """
    n_cells = codes.size
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    total = float(n_cells)
    loop = rows == cols
    looped = np.zeros(n_cells, dtype=bool)
    looped[rows[loop]] = True
    rows, cols = rows[~loop], cols[~loop]
    m = float(rows.size)
    out_degree = np.bincount(rows, minlength=n_cells).astype(np.float64)
    in_degree = np.bincount(cols, minlength=n_cells).astype(np.float64)
    s_out = float(out_degree @ (out_degree - 1))
    s_in = float(in_degree @ (in_degree - 1))
    through = float(out_degree @ in_degree)
    binary = sp.csr_matrix(
        (np.ones(rows.size), (rows, cols)), shape=(n_cells, n_cells), dtype=np.float64
    )
    reverse = float(binary.multiply(binary.T).nnz)

    def ratio(numerator: np.ndarray, k: int) -> np.ndarray:
        denominator = _falling(np.float64(total), k)
        return numerator / denominator if denominator > 0 else np.zeros_like(numerator)

    n_a, n_b = sizes[:, None], sizes[None, :]
    q2 = ratio(n_a * n_b, 2)
    q_abb = ratio(n_a * _falling(n_b, 2), 3)
    q_aab = ratio(_falling(n_a, 2) * n_b, 3)
    q4 = ratio(_falling(n_a, 2) * _falling(n_b, 2), 4)
    # q4 - q2^2 without cancellation: q2 [n_a n_b (4N - 6) - (n_a + n_b - 1) N (N - 1)] / N^(4)
    spread = ratio(n_a * n_b * (4 * total - 6) - (n_a + n_b - 1) * total * (total - 1), 4)
    between = q4 - q2**2 if total < 4 else q2 * spread
    mean = m * q2
    variance = (
        m * (q2 - q4)
        + s_out * (q_abb - q4)
        + s_in * (q_aab - q4)
        - (2 * through - reverse) * q4
        + m * m * between
    )

    f1, f2, f3, f4 = (ratio(_falling(sizes, k), k) for k in (1, 2, 3, 4))
    # f4 - f2^2 = f2 (N - n)(6 (N + n - 1) - 4 n N) / N^(4)
    within = (
        f4 - f2**2
        if total < 4
        else f2 * ratio((total - sizes) * (6 * (total + sizes - 1) - 4 * sizes * total), 4)
    )
    diagonal_mean = m * f2
    diagonal_variance = (
        (m + reverse) * (f2 - f4)
        + (s_out + s_in + 2 * (through - reverse)) * (f3 - f4)
        + m * m * within
    )
    n_loops = float(looped.sum())
    if n_loops:
        # Looped cells of group a: hypergeometric, and correlated with the edge count.
        touching = float(looped[rows].sum() + looped[cols].sum())
        f1_f1 = sizes * (sizes - total) / (total * total * (total - 1)) if total > 1 else 0.0
        f3_f1f2 = f2 * 2 * (sizes - total) / (total * (total - 2)) if total > 2 else -f1 * f2
        diagonal_mean = diagonal_mean + n_loops * f1
        diagonal_variance = (
            diagonal_variance
            + n_loops * n_loops * f1_f1
            + n_loops * (f1 - f2)
            + 2 * (touching * (f2 - f3) + m * n_loops * f3_f1f2)
        )
    diagonal = np.diag_indices(n_groups)
    mean[diagonal] = diagonal_mean
    variance[diagonal] = diagonal_variance
    return mean, np.maximum(variance, 0.0)


def _permutation_moments(
    rows: np.ndarray,
    cols: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    n_perms: int,
    rng: np.random.Generator,
    *,
    shift: np.ndarray,
    libraries: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof 0) of the counts over ``n_perms`` random relabellings.

    Sums are taken around ``shift`` (the exact mean) so that squaring large counts loses
    no precision. With ``libraries``, labels move only within a library.
    """
    first = np.zeros((n_groups, n_groups))
    second = np.zeros((n_groups, n_groups))
    members = (
        [np.arange(codes.size)]
        if libraries is None
        else [np.flatnonzero(libraries == lib) for lib in np.unique(libraries)]
    )
    labels = codes.copy()
    for _ in range(n_perms):
        for cells in members:
            labels[cells] = rng.permutation(codes[cells])
        deviation = _pair_counts(labels[rows], labels[cols], n_groups) - shift
        first += deviation
        second += deviation * deviation
    first /= n_perms
    return shift + first, np.maximum(second / n_perms - first * first, 0.0)


# --------------------------------------------------------------------------------------
# Co-occurrence
# --------------------------------------------------------------------------------------


def co_occurrence(
    adata: AnnData,
    cluster_key: str,
    *,
    library_key: str | None = None,
    spatial_key: str = "spatial",
    interval: int | np.ndarray = 50,
    copy: bool = False,
) -> dict[str, np.ndarray] | None:
    """Co-occurrence ratio of every pair of groups over a range of distances.

    For each threshold d, pairs of distinct cells at distance <= d are counted by group:
    ``occ[a, b, k] = p(a | b) / p(a)``, where p(a | b) is the share of the pairs with one
    cell in b whose other cell is in a, and p(a) the share of all pairs with a cell in a,
    both among pairs within ``interval[k + 1]``. This is squidpy's ``co_occurrence``; the
    pairs are counted with KD-trees, one dual-tree pass per pair of groups, so memory stays
    linear in the number of cells.

    Parameters
    ----------
    adata
        Cells x genes with coordinates in ``adata.obsm[spatial_key]`` and the groups in
        ``adata.obs[cluster_key]`` (cells without a group are left out).
    cluster_key
        Column of ``adata.obs`` with the groups.
    library_key
        Column of ``adata.obs`` with the sample of each cell: pairs are counted within each
        sample only (sections may share coordinates) and summed over samples before the
        ratios are taken; the default thresholds span the samples' ranges.
    spatial_key
        Coordinates in ``adata.obsm`` (2-D or 3-D, all columns are used).
    interval
        Distance thresholds (at least 2, sorted here), or their number: evenly spaced from
        the distance between the two cells with the smallest x + y to half the distance
        from that cell to the cell with the largest x + y (squidpy's default range).
    copy
        Return the result instead of writing it into ``adata``.

    Returns
    -------
    dict or None
        ``{"occ": (n_groups, n_groups, len(interval) - 1), "interval": thresholds}``,
        returned when ``copy=True`` and otherwise stored in
        ``adata.uns[f"{cluster_key}_co_occurrence"]``. Entries whose group has no pair
        within a threshold are 0, as in squidpy.

    Notes
    -----
    squidpy computes the distances in float32; here they are float64, so a pair within
    float32 rounding of a threshold may fall on the other side. squidpy also sizes the
    result by the groups present rather than by all categories.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.random((500, 2)) * 100
    >>> adata = anndata.AnnData(np.zeros((500, 1)), obsm={"spatial": xy})
    >>> adata.obs["side"] = pd.Categorical(np.where(xy[:, 0] < 50, "left", "right"))
    >>> co_occurrence(adata, "side", interval=np.array([0.0, 5.0, 20.0, 80.0]))
    >>> occ = adata.uns["side_co_occurrence"]["occ"]
    >>> occ.shape, bool(occ[0, 0, 0] > 1.5 > 0.5 > occ[0, 1, 0])
    ((2, 2, 3), True)
    """
    check_adata(adata)
    codes, categories = _group_codes(adata, cluster_key)
    libraries = _library_codes(adata, library_key)
    coords = get_spatial(adata, spatial_key)
    labelled = codes >= 0
    coords, codes = coords[labelled], codes[labelled]
    libraries = np.zeros(codes.size, dtype=np.int64) if libraries is None else libraries[labelled]
    sections = [libraries == library for library in np.unique(libraries)]
    thresholds = _co_occurrence_interval([coords[cells] for cells in sections], interval)
    n_groups = len(categories)
    counts = np.zeros((n_groups, n_groups, thresholds.size - 1))
    for cells in sections:
        counts += _co_occurrence_counts(coords[cells], codes[cells], n_groups, thresholds)
    with_group = counts.sum(axis=1)  # (group, threshold): pairs with a cell in the group
    share = with_group / np.maximum(with_group.sum(axis=0), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = counts / with_group[:, None, :]  # [b, a]: p(a | b)
        occ = np.transpose(conditional, (1, 0, 2)) / share[:, None, :]
    defined = (share[:, None, :] > 0) & (with_group[None, :, :] > 0)
    occ = np.where(defined, occ, 0.0)
    result = {"occ": occ, "interval": thresholds}
    if copy:
        return result
    adata.uns[f"{cluster_key}_co_occurrence"] = result
    return None


def _co_occurrence_counts(
    coords: np.ndarray, codes: np.ndarray, n_groups: int, thresholds: np.ndarray
) -> np.ndarray:
    """Pairs of distinct cells within each threshold (but the first), by pair of groups."""
    counts = np.zeros((n_groups, n_groups, thresholds.size - 1))
    members = [coords[codes == group] for group in range(n_groups)]
    trees = [cKDTree(points) if len(points) else None for points in members]
    for a in range(n_groups):
        for b in range(a, n_groups):
            if trees[a] is None or trees[b] is None:
                continue
            pairs = trees[a].count_neighbors(trees[b], thresholds[1:]).astype(np.float64)
            if a == b:
                pairs -= len(members[a])  # each cell with itself, at distance 0
            counts[a, b] = counts[b, a] = pairs
    return counts


def _co_occurrence_interval(sections: list[np.ndarray], interval: Any) -> np.ndarray:
    """The distance thresholds: given ones sorted, or squidpy's default range (from the
    smallest start to the largest stop over the sections)."""
    if isinstance(interval, numbers.Integral) and not isinstance(interval, bool):
        if interval < 2:
            raise SpatiomeInputError(f"interval must give at least 2 thresholds, got {interval}")
        starts, stops = [], []
        for coords in sections:
            if len(coords) < 2:
                continue
            coordinate_sum = coords.sum(axis=1)
            lowest, second = np.argsort(coordinate_sum, kind="stable")[:2]
            highest = int(np.argmax(coordinate_sum))
            starts.append(float(np.linalg.norm(coords[lowest] - coords[second])))
            stops.append(float(np.linalg.norm(coords[lowest] - coords[highest])) / 2)
        if not starts:
            raise SpatiomeInputError("co-occurrence needs at least 2 labelled cells")
        return np.linspace(min(starts), max(stops), int(interval))
    try:
        thresholds = np.sort(np.asarray(interval, dtype=np.float64).ravel())
    except (TypeError, ValueError):
        raise SpatiomeInputError(
            f"interval must be a number of thresholds or an array of distances, got {interval!r}"
        ) from None
    if thresholds.size < 2 or not np.isfinite(thresholds).all():
        raise SpatiomeInputError(
            f"interval must hold at least 2 finite distances, got {thresholds.tolist()}"
        )
    return thresholds


# --------------------------------------------------------------------------------------
# Ripley's statistics
# --------------------------------------------------------------------------------------


def ripley(
    adata: AnnData,
    cluster_key: str,
    *,
    mode: str = "L",
    library_key: str | None = None,
    spatial_key: str = "spatial",
    support: np.ndarray | None = None,
    n_simulations: int = 100,
    n_observations: int = 1000,
    max_dist: float | None = None,
    n_steps: int = 50,
    edge_correction: str = "border",
    seed: int | None = 0,
    copy: bool = False,
) -> dict[str, Any] | None:
    r"""Ripley's K, L, G or F function of every group, against complete spatial randomness.

    The window W is the convex hull of the labelled cells (as in squidpy), of area |W|;
    each group is a point pattern in W.

    - ``"K"``: K(r) = |W| / (n - 1) * (mean over cells i of the number of other cells of
      the group within r of i); pi r^2 under complete spatial randomness (CSR).
    - ``"L"``: L(r) = sqrt(K(r) / pi), which is r under CSR.
    - ``"G"``: share of the cells whose nearest other cell of the group is within r.
    - ``"F"``: share of ``n_observations`` uniform points of W with a cell of the group
      within r (the empty-space function).

    Parameters
    ----------
    adata
        Cells x genes with 2-D coordinates in ``adata.obsm[spatial_key]`` and the groups in
        ``adata.obs[cluster_key]`` (cells without a group are left out).
    cluster_key
        Column of ``adata.obs`` with the groups.
    mode
        ``"L"``, ``"K"``, ``"G"`` or ``"F"``.
    library_key
        Column of ``adata.obs`` with the sample of each cell. Each sample is its own
        pattern in its own window (the convex hull of its labelled cells), simulated in
        that window; the samples are pooled as replicated patterns (Baddeley et al. 2015,
        ch. 16): the numerators and the denominators of K, G and F (pair counts, cells at
        risk) add over samples before the ratio is taken, for the data and for each
        simulation alike. The default support is computed over the samples together.
    spatial_key
        Coordinates in ``adata.obsm``.
    support
        Distances r at which to evaluate (sorted, >= 0). Default: ``n_steps`` values from 0
        to ``max_dist``.
    n_simulations
        CSR patterns simulated per group size for the envelope and the p-values.
    n_observations
        ``"F"``: uniform test points. ``"K"``/``"L"``: a group with more cells is estimated
        from this many of them drawn at random (K is unchanged by random thinning), which
        bounds the pairs to count.
    max_dist
        Largest distance of the default support. Default: the smaller of
        ``0.25 * sqrt(|W|)`` and half the largest distance of a cell to the edge of W, the
        range over which the border correction keeps enough cells (squidpy's default,
        ``sqrt(|W| / 2)``, reaches beyond the centre of a square window).
    n_steps
        Number of distances of the default support.
    edge_correction
        ``"border"`` (reduced sample, the default): at distance r only cells (or test
        points) at least r from the edge of W are the centres of the counts, so circles
        that leave the window do not bias the estimate down. ``"none"``: every cell is a
        centre (biased down at large r; closest to squidpy's L).
    seed
        Seed of the simulations, the test points and the thinning.
    copy
        Return the result instead of writing it into ``adata``.

    Returns
    -------
    dict or None
        Returned when ``copy=True``, otherwise stored in
        ``adata.uns[f"{cluster_key}_ripley_{mode}"]``; squidpy's keys, plus two:

        - ``f"{mode}_stat"``: DataFrame with columns ``bins`` (r), ``cluster_key`` (the
          group, categorical) and ``stats``;
        - ``"sims_stat"``: DataFrame with ``bins``, ``simulations`` (categorical),
          ``stats`` and ``cluster_key``: each group's simulations, with as many CSR points
          as the group (as many as it was thinned to for K and L);
        - ``"bins"``: the support;
        - ``"pvalues"``: (n_groups, n_steps) two-sided pointwise Monte-Carlo p-values,
          ``min(1, 2 * (1 + min(#sims >= obs, #sims <= obs)) / (n_simulations + 1))``;
        - ``"envelope"``: DataFrame with ``bins``, ``cluster_key``, ``low``, ``high`` and
          ``mean``: the pointwise range and mean of the simulations;
        - ``"pvalue_global"``: Series per group, the global envelope test of the largest
          deviation over r from the simulations' mean (Loosmore and Ford's maximum
          absolute deviation test): ``(1 + #sims deviating as much) / (n_simulations + 1)``.

        Groups without cells are left out. A statistic is NaN where no cell (or test point)
        lies at least r from the edge, or for a group of one cell (K, L, G).

    Notes
    -----
    squidpy (1.8) differs in its definitions: its L divides the pair count of a group by
    the square of the number of *all* cells, its G uses the distances from the cells of the
    other groups to the two nearest cells of the group, its F the distances to the two
    nearest cells, none has an edge correction, and its simulations share one seed (so
    they coincide). With ``edge_correction="none"`` and one group, this L equals squidpy's
    times sqrt(n / (n - 1)), except for pairs exactly at a distance of the support (here
    counted from r = d, in squidpy from the next step).

    References
    ----------
    Ripley (1977), Modelling spatial patterns, J. R. Stat. Soc. B 39: 172-212;
    Baddeley, Rubak and Turner (2015), Spatial Point Patterns, CRC Press (ch. 7-8, border
    correction); Loosmore and Ford (2006), Ecology 87: 1925-1931.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.random((300, 2)) * 100
    >>> adata = anndata.AnnData(np.zeros((300, 1)), obsm={"spatial": xy})
    >>> adata.obs["group"] = pd.Categorical(["a"] * 300)
    >>> result = ripley(adata, "group", mode="L", n_simulations=19, copy=True)
    >>> stat = result["L_stat"]
    >>> list(stat.columns), bool(np.allclose(stat["stats"], stat["bins"], atol=2.5))
    (['bins', 'group', 'stats'], True)
    >>> bool(result["pvalue_global"]["a"] > 0.05)
    True
    """
    check_adata(adata)
    if mode not in RIPLEY_MODES:
        raise SpatiomeInputError(f"mode must be one of {RIPLEY_MODES}, got {mode!r}")
    if edge_correction not in ("border", "none"):
        raise SpatiomeInputError(
            f"edge_correction must be 'border' or 'none', got {edge_correction!r}"
        )
    _check_positive_int("n_simulations", n_simulations)
    _check_positive_int("n_observations", n_observations)
    codes, categories = _group_codes(adata, cluster_key, min_groups=1)
    libraries = _library_codes(adata, library_key)
    coords = get_spatial(adata, spatial_key)
    if coords.shape[1] != 2:
        raise SpatiomeInputError(
            f"ripley needs 2-D coordinates, adata.obsm[{spatial_key!r}] has "
            f"{coords.shape[1]} columns: pass the two in-plane columns"
        )
    labelled = codes >= 0
    coords, codes = coords[labelled], codes[labelled]
    libraries = np.zeros(codes.size, dtype=np.int64) if libraries is None else libraries[labelled]
    sections = [_Section(coords, codes, libraries == lib) for lib in np.unique(libraries)]
    bins = _ripley_support(
        support,
        max_dist,
        n_steps,
        min(section.window.area for section in sections),
        np.concatenate([section.border for section in sections]),
    )
    corrected = edge_correction == "border"
    # Separate streams for thinning, test points and simulations, none of them the plain
    # default_rng(seed) stream that may well have generated the data being tested; the
    # first sample keeps the streams of a single pattern.
    base = _seed_int(seed)
    rng = np.random.default_rng([base, 0])
    for index, section in enumerate(sections):
        section.test_points = (
            section.window.uniform(
                n_observations, np.random.default_rng([base, 1, *([index] if index else [])])
            )
            if mode == "F"
            else None
        )

    present = [g for g in range(len(categories)) if np.any(codes == g)]
    observed, simulated = [], []
    for group in present:
        numerator, denominator = np.zeros(bins.size), np.zeros(bins.size)
        simulated_numerator = np.zeros((n_simulations, bins.size))
        simulated_denominator = np.zeros((n_simulations, bins.size))
        for index, section in enumerate(sections):
            points = section.coords[section.codes == group]
            if len(points) == 0:
                continue
            if mode in ("K", "L") and len(points) > n_observations:
                points = points[np.sort(rng.choice(len(points), n_observations, replace=False))]
            parts = _ripley_parts(mode, points, section, bins, corrected)
            numerator += parts[0]
            denominator += parts[1]
            sims = section.simulations(
                mode, len(points), bins, corrected, n_simulations, [base, 2, len(points)], index
            )
            simulated_numerator += sims[0]
            simulated_denominator += sims[1]
        observed.append(_ripley_value(mode, numerator, denominator))
        simulated.append(_ripley_value(mode, simulated_numerator, simulated_denominator))
    result = _ripley_result(
        mode, cluster_key, categories[present], bins, np.array(observed), simulated
    )
    if copy:
        return result
    adata.uns[f"{cluster_key}_ripley_{mode}"] = result
    return None


class _Section:
    """One sample's labelled cells, its window, and its cached CSR simulations."""

    def __init__(self, coords: np.ndarray, codes: np.ndarray, cells: np.ndarray) -> None:
        self.coords, self.codes = coords[cells], codes[cells]
        self.window = _Window(self.coords)
        self.border = self.window.border(self.coords)
        self.test_points: np.ndarray | None = None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def simulations(
        self,
        mode: str,
        n_points: int,
        bins: np.ndarray,
        corrected: bool,
        n_simulations: int,
        stream: list[int],
        index: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Numerators and denominators of ``n_simulations`` CSR patterns of ``n_points``."""
        if n_points not in self._cache:
            rng = np.random.default_rng([*stream, *([index] if index else [])])
            parts = [
                _ripley_parts(mode, self.window.uniform(n_points, rng), self, bins, corrected)
                for _ in range(n_simulations)
            ]
            self._cache[n_points] = (
                np.array([part[0] for part in parts]),
                np.array([part[1] for part in parts]),
            )
        return self._cache[n_points]


class _Window:
    """The convex hull of the cells: area, distance to the edge, uniform points inside."""

    def __init__(self, coords: np.ndarray) -> None:
        try:
            hull = ConvexHull(coords)
        except QhullError:
            raise SpatiomeInputError(
                "the cells lie on one line (no window of positive area): Ripley's "
                "statistics need cells spread over an area"
            ) from None
        self.area = float(hull.volume)
        self.normals = hull.equations[:, :2]
        self.offsets = hull.equations[:, 2]
        self.low, self.high = hull.min_bound, hull.max_bound

    def border(self, points: np.ndarray) -> np.ndarray:
        """Distance of each point inside the window to its edge (unit facet normals)."""
        return np.maximum(-(points @ self.normals.T + self.offsets).max(axis=1), 0.0)

    def uniform(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` independent uniform points in the window (rejection from the box)."""
        box = float(np.prod(self.high - self.low))
        accepted, found = [], 0
        while found < n:
            draws = int((n - found) * box / self.area * 1.2) + 16
            candidates = rng.uniform(self.low, self.high, size=(draws, 2))
            inside = candidates[(candidates @ self.normals.T + self.offsets).max(axis=1) <= 0]
            accepted.append(inside)
            found += len(inside)
        return np.concatenate(accepted)[:n]


def _ripley_support(
    support: Any, max_dist: float | None, n_steps: int, area: float, border: np.ndarray
) -> np.ndarray:
    """The distances at which the statistics are evaluated."""
    if support is not None:
        bins = np.sort(np.asarray(support, dtype=np.float64).ravel())
        if bins.size < 1 or not np.isfinite(bins).all() or bins[0] < 0:
            raise SpatiomeInputError("support must hold finite distances >= 0")
        return bins
    _check_positive_int("n_steps", n_steps)
    if max_dist is None:
        max_dist = min(
            RIPLEY_AREA_FRACTION * np.sqrt(area), RIPLEY_BORDER_FRACTION * float(border.max())
        )
    if not np.isfinite(max_dist) or max_dist <= 0:
        raise SpatiomeInputError(f"max_dist must be a positive distance, got {max_dist!r}")
    return np.linspace(0.0, float(max_dist), int(n_steps))


def _ripley_parts(
    mode: str, points: np.ndarray, section: _Section, bins: np.ndarray, corrected: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Numerator and denominator of one pattern's statistic at every distance of ``bins``.

    K = numerator / denominator (L = sqrt(K / pi)); G and F are shares, numerator /
    denominator. Both add over replicated patterns.
    """
    window = section.window
    if mode == "F":
        centres = section.test_points
        reach, _ = cKDTree(points).query(centres, k=1)
        return _share_parts(reach, window.border(centres), bins, corrected)
    if len(points) < 2:
        return np.zeros(bins.size), np.zeros(bins.size)
    border = window.border(points) if corrected else np.full(len(points), np.inf)
    tree = cKDTree(points)
    if mode == "G":
        reach, _ = tree.query(points, k=2)
        return _share_parts(reach[:, 1], border, bins, corrected)
    pairs = tree.query_pairs(float(bins[-1]), output_type="ndarray")
    lengths = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
    centres = np.concatenate([pairs[:, 0], pairs[:, 1]])
    neighbours = _interval_counts(np.tile(lengths, 2), border[centres], bins)
    return window.area / (len(points) - 1) * neighbours, _at_least(border, bins)


def _ripley_value(mode: str, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """The statistic from its pooled parts (NaN where nothing is at risk)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = numerator / denominator
    return np.sqrt(value / np.pi) if mode == "L" else value


def _interval_counts(start: np.ndarray, stop: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """For every r in ``bins``: how many of the intervals [start, stop] contain r."""
    first = np.searchsorted(bins, start, side="left")
    after = np.searchsorted(bins, stop, side="right")
    keep = first < after
    steps = np.bincount(first[keep], minlength=bins.size + 1) - np.bincount(
        after[keep], minlength=bins.size + 1
    )
    return np.cumsum(steps)[: bins.size].astype(np.float64)


def _at_least(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """For every r in ``bins``: how many ``values`` are >= r."""
    return (values.size - np.searchsorted(np.sort(values), bins, side="left")).astype(np.float64)


def _share_parts(
    reach: np.ndarray, border: np.ndarray, bins: np.ndarray, corrected: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Centres within r of the pattern, and centres r or more from the edge."""
    if not corrected:
        border = np.full(reach.size, np.inf)
    return _interval_counts(reach, border, bins), _at_least(border, bins)


def _ripley_result(
    mode: str,
    cluster_key: str,
    names: pd.Index,
    bins: np.ndarray,
    observed: np.ndarray,
    simulated: list[np.ndarray],
) -> dict[str, Any]:
    """squidpy's result layout, with per-group simulations, envelope and global test."""
    n_groups, n_steps = observed.shape
    n_simulations = simulated[0].shape[0]
    group_column = pd.Categorical(np.repeat(np.asarray(names), n_steps), categories=names)
    stat = pd.DataFrame(
        {"bins": np.tile(bins, n_groups), cluster_key: group_column, "stats": observed.ravel()}
    )
    sims = np.stack(simulated)  # (group, simulation, r)
    sims_stat = pd.DataFrame(
        {
            "bins": np.tile(bins, n_groups * n_simulations),
            "simulations": pd.Categorical(
                np.tile(np.repeat(np.arange(n_simulations), n_steps), n_groups)
            ),
            "stats": sims.ravel(),
            cluster_key: pd.Categorical(
                np.repeat(np.asarray(names), n_simulations * n_steps), categories=names
            ),
        }
    )
    with np.errstate(invalid="ignore"):
        above = (sims >= observed[:, None, :]).sum(axis=1)
        below = (sims <= observed[:, None, :]).sum(axis=1)
    pvalues = np.minimum(1.0, 2 * (1 + np.minimum(above, below)) / (n_simulations + 1))
    pvalues[np.isnan(observed)] = np.nan
    centre = np.nanmean(sims, axis=1) if np.isfinite(sims).any() else sims.mean(axis=1)
    envelope = pd.DataFrame(
        {
            "bins": np.tile(bins, n_groups),
            cluster_key: group_column,
            "low": np.nanmin(sims, axis=1).ravel() if np.isfinite(sims).any() else np.nan,
            "high": np.nanmax(sims, axis=1).ravel() if np.isfinite(sims).any() else np.nan,
            "mean": centre.ravel(),
        }
    )
    observed_deviation = _max_deviation(observed - centre)
    simulated_deviation = _max_deviation(sims - centre[:, None, :])  # (group, simulation)
    exceed = (simulated_deviation >= observed_deviation[:, None]).sum(axis=1)
    pvalue_global = pd.Series((1 + exceed) / (n_simulations + 1), index=names, name="pvalue")
    return {
        f"{mode}_stat": stat,
        "sims_stat": sims_stat,
        "bins": bins,
        "pvalues": pvalues,
        "envelope": envelope,
        "pvalue_global": pvalue_global,
    }


def _max_deviation(differences: np.ndarray) -> np.ndarray:
    """Largest absolute value over the last axis, ignoring NaN (0 when all are NaN)."""
    return np.where(np.isnan(differences), 0.0, np.abs(differences)).max(axis=-1)


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _group_codes(
    adata: AnnData, cluster_key: str, *, min_groups: int = 2
) -> tuple[np.ndarray, pd.Index]:
    """Group code of every cell (-1 for none) and the group names, in category order."""
    if not isinstance(cluster_key, str) or cluster_key not in adata.obs:
        columns = ", ".join(map(repr, list(adata.obs.columns)[:10])) or "none"
        raise SpatiomeInputError(
            f"adata.obs[{cluster_key!r}] is missing (columns: {columns}): pass the column "
            "that holds the cell types or clusters as cluster_key"
        )
    values = adata.obs[cluster_key]
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("category")
    codes = values.cat.codes.to_numpy().astype(np.int64)
    n_present = np.unique(codes[codes >= 0]).size
    if n_present < min_groups:
        raise SpatiomeInputError(
            f"adata.obs[{cluster_key!r}] has {n_present} group(s) with cells, this statistic "
            f"needs at least {min_groups}: check cluster_key, or that the clustering found "
            "more than one group"
        )
    return codes, values.cat.categories


def _connectivities(adata: AnnData, connectivity_key: str) -> sp.csr_matrix:
    """The graph of ``adata.obsp``, as canonical CSR (no copy when it already is)."""
    if not isinstance(connectivity_key, str) or not connectivity_key:
        raise SpatiomeInputError(
            f"connectivity_key must be a non-empty string, got {connectivity_key!r}"
        )
    key = (
        connectivity_key
        if connectivity_key.endswith("_connectivities")
        else f"{connectivity_key}_connectivities"
    )
    if key not in adata.obsp:
        name = key.removesuffix("_connectivities")
        raise SpatiomeInputError(
            f"adata.obsp[{key!r}] is missing: build the spatial graph first with "
            f"spatiome.graph.spatial_neighbors(adata, key_added={name!r})"
        )
    graph = adata.obsp[key]
    if not sp.issparse(graph):
        graph = sp.csr_matrix(np.asarray(graph))
    elif graph.format != "csr":
        graph = sp.csr_matrix(graph)
    if not graph.has_canonical_format:
        graph = graph.copy()
        graph.sum_duplicates()
    return graph


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpatiomeInputError(f"{name} must be a positive integer, got {value!r}")


def _seed_int(seed: Any) -> int:
    """The seed as a non-negative integer (None: 0, as everywhere in spatiome)."""
    if seed is None:
        return 0
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise SpatiomeInputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)
