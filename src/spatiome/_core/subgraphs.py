"""Spatially compact parts of a spot graph, and their halos, for mini-batch graph training.

A graph network whose loss at a spot depends on its ``k``-hop neighbourhood can be trained
on one part of the tissue at a time: the part's spots (the *core*) plus every spot within
``k`` hops (the *halo*). Computed on that subgraph, the loss of the core spots is exactly
their loss on the whole graph, so each mini-batch step follows an unbiased piece of the
full-batch objective (cluster batches with a halo, as Cluster-GCN without dropped edges).

Parts come from recursive coordinate bisection: the spots are split at the median of the
longer side of their bounding box until each part holds at most ``batch_size`` spots.
This is a balanced, deterministic, METIS-like partition of a planar graph with short
boundaries, so the halos stay thin. Without coordinates, the spots are ordered by reverse
Cuthill-McKee (a bandwidth-reducing ordering of the graph) and cut into consecutive runs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def spatial_parts(
    coordinates: np.ndarray | None, graph: sp.csr_matrix, batch_size: int
) -> list[np.ndarray]:
    """Partition the spots into compact parts of at most ``batch_size`` spots.

    Parameters
    ----------
    coordinates
        ``(n_spots, n_dims)`` positions, or None to partition by the graph alone.
    graph
        The ``n_spots x n_spots`` spot graph (used without coordinates).
    batch_size
        Largest number of spots in a part.

    Returns
    -------
    list of numpy.ndarray
        Sorted spot indices of each part; every spot is in exactly one part.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> grid = np.c_[np.repeat(np.arange(4.0), 4), np.tile(np.arange(4.0), 4)]
    >>> [part.tolist() for part in spatial_parts(grid, sp.eye(16, format="csr"), 4)]
    [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    """
    n_obs = graph.shape[0]
    if coordinates is None:
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        order = reverse_cuthill_mckee(sp.csr_matrix(graph), symmetric_mode=False)
        n_parts = -(-n_obs // int(batch_size))
        return [np.sort(run) for run in np.array_split(order, n_parts)]
    coordinates = np.asarray(coordinates, dtype=np.float64)
    parts: list[np.ndarray] = []
    pending = [np.arange(n_obs)]
    while pending:
        index = pending.pop()
        if index.size <= batch_size:
            parts.append(np.sort(index))
            continue
        points = coordinates[index]
        axis = int(np.argmax(points.max(axis=0) - points.min(axis=0)))
        n_parts = -(-index.size // int(batch_size))
        split = int(round(index.size * (n_parts // 2) / n_parts))
        order = np.argsort(points[:, axis], kind="stable")
        pending.extend([index[order[split:]], index[order[:split]]])
    return parts


def with_halo(graphs: list[sp.csr_matrix], core: np.ndarray, n_hops: int) -> np.ndarray:
    """The sorted spots within ``n_hops`` steps of ``core`` along any of ``graphs``.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> path = sp.diags([1.0, 1.0], [-1, 1], shape=(6, 6), format="csr")
    >>> with_halo([path], np.array([0]), 2).tolist()
    [0, 1, 2]
    """
    nodes = np.unique(np.asarray(core, dtype=np.int64))
    frontier = nodes
    for _ in range(int(n_hops)):
        reached = [graph[frontier].indices for graph in graphs]
        frontier = np.setdiff1d(np.concatenate(reached), nodes)
        if frontier.size == 0:
            break
        nodes = np.union1d(nodes, frontier)
    return nodes


def mixed_batches(
    coordinates: np.ndarray | None,
    graph: sp.csr_matrix,
    batch_size: int,
    parts_per_batch: int,
    random_state: int,
) -> list[np.ndarray]:
    """Batches of about ``batch_size`` spots, each the union of ``parts_per_batch`` compact
    parts drawn at random from the whole tissue (Cluster-GCN's stochastic multiple
    partitions, drawn once).

    A batch made of one compact part holds only the domains of that region, so its
    gradient steps pull the model towards them; parts from all over the tissue keep each
    step close to the full-batch gradient, while each part's halo stays thin.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> grid = np.c_[np.repeat(np.arange(8.0), 8), np.tile(np.arange(8.0), 8)]
    >>> batches = mixed_batches(grid, sp.eye(64, format="csr"), 16, 4, 0)
    >>> len(batches), sorted(np.concatenate(batches).tolist()) == list(range(64))
    (4, True)
    """
    part_size = max(1, int(batch_size) // int(parts_per_batch))
    parts = spatial_parts(coordinates, graph, part_size)
    order = np.random.default_rng(random_state).permutation(len(parts))
    n_batches = -(-len(parts) // int(parts_per_batch))
    return [
        np.sort(np.concatenate([parts[i] for i in group]))
        for group in np.array_split(order, n_batches)
    ]
