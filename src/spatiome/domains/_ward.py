"""Weighted Ward linkage of cluster centroids by the nearest-neighbour chain.

Ward's method on ``m`` points costs O(m^2) memory, so on large data the spots are first
summarized by many k-means centroids and the centroids are merged. Each centroid stands for
its ``n_i`` spots: the initial dissimilarity of two centroids is Ward's merge cost of their
spot sets, ``2 n_i n_j / (n_i + n_j) |c_i - c_j|^2`` (twice the rise of the within-cluster
sum of squares), which the Lance-Williams update keeps exact after every merge. Ward's
criterion is reducible, so the nearest-neighbour chain finds the same merges as the greedy
algorithm in O(m^2) time; sorted by height they form the dendrogram.
"""

from __future__ import annotations

import numba
import numpy as np


def ward_labels(centroids: np.ndarray, weights: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cut the weighted Ward dendrogram of ``centroids`` into ``n_clusters`` groups.

    Parameters
    ----------
    centroids
        ``(m, d)`` points (k-means centroids or the spots themselves).
    weights
        ``(m,)`` positive sizes (spots per centroid; ones for plain Ward).
    n_clusters
        Number of groups, between 1 and ``m``.

    Returns
    -------
    numpy.ndarray
        ``(m,)`` integer labels ``0 .. n_clusters - 1``.

    Examples
    --------
    >>> import numpy as np
    >>> points = np.array([[0.0], [0.1], [5.0], [5.2]])
    >>> ward_labels(points, np.ones(4), 2).tolist()
    [0, 0, 1, 1]
    """
    centroids = np.ascontiguousarray(centroids, dtype=np.float64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    m = centroids.shape[0]
    if m == 1 or n_clusters >= m:
        return np.arange(m, dtype=np.int64) if n_clusters >= m else np.zeros(1, np.int64)
    first, second, heights = _nn_chain(centroids, weights)
    # Children are never higher than their parent; the execution index breaks ties so a
    # child is still applied before its parent.
    order = np.lexsort((np.arange(heights.size), heights))
    parent = np.arange(m)
    for step in order[: m - n_clusters]:
        root_a, root_b = _find(parent, first[step]), _find(parent, second[step])
        parent[max(root_a, root_b)] = min(root_a, root_b)
    roots = np.array([_find(parent, i) for i in range(m)])
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64)


def _find(parent: np.ndarray, item: int) -> int:
    while parent[item] != item:
        parent[item] = parent[parent[item]]
        item = parent[item]
    return int(item)


@numba.njit(cache=True)
def _nn_chain(points, weights):  # pragma: no cover - compiled
    m = points.shape[0]
    dissimilarity = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            squared = 0.0
            for t in range(points.shape[1]):
                diff = points[i, t] - points[j, t]
                squared += diff * diff
            size = weights[i] * weights[j] / (weights[i] + weights[j])
            dissimilarity[i, j] = 2.0 * size * squared
    sizes = weights.copy()
    active = np.ones(m, dtype=np.bool_)
    chain = np.empty(m, dtype=np.int64)
    length = 0
    first = np.empty(m - 1, dtype=np.int64)
    second = np.empty(m - 1, dtype=np.int64)
    heights = np.empty(m - 1)
    for merge in range(m - 1):
        if length == 0:
            for i in range(m):
                if active[i]:
                    chain[0] = i
                    length = 1
                    break
        while True:
            a = chain[length - 1]
            previous = chain[length - 2] if length > 1 else -1
            best = -1
            best_value = np.inf
            if previous >= 0:
                best, best_value = previous, dissimilarity[a, previous]
            for k in range(m):
                if active[k] and k != a and dissimilarity[a, k] < best_value:
                    best, best_value = k, dissimilarity[a, k]
            if best == previous:
                break
            chain[length] = best
            length += 1
        length -= 2
        a, b = chain[length + 1], chain[length]
        low, high = min(a, b), max(a, b)
        first[merge], second[merge], heights[merge] = low, high, dissimilarity[a, b]
        size_low, size_high, joined = sizes[low], sizes[high], dissimilarity[a, b]
        for k in range(m):
            if active[k] and k != low and k != high:
                total = size_low + size_high + sizes[k]
                value = (
                    (size_low + sizes[k]) * dissimilarity[low, k]
                    + (size_high + sizes[k]) * dissimilarity[high, k]
                    - sizes[k] * joined
                ) / total
                dissimilarity[low, k] = value
                dissimilarity[k, low] = value
        active[high] = False
        sizes[low] = size_low + size_high
    return first, second, heights
