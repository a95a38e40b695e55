"""Statistics over each spot's spatial neighbourhood: the kernels behind spatial QC.

Spatial quality control (SpotSweeper-style local outliers and artifacts) and doublet
features compare each spot with its k nearest spatial neighbours. This module finds the
neighbours once (a KD-tree, as an (n_spots, k) index matrix) and computes robust and
classical summaries of one or several per-spot values over every neighbourhood in compiled
code, in blocks of spots run serially, on threads or on a Dask cluster.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from scipy.spatial import cKDTree

from .parallel import map_gene_chunks, resolve_n_jobs
from .validate import SpatiomeInputError, check_coordinates

#: Spots per block of the neighbourhood kernels (fixed, so results never depend on workers).
SPOT_BLOCK = 65_536


def spatial_knn(
    coordinates: np.ndarray, k: int, *, n_jobs: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest spatial neighbours of every spot, the spot itself excluded.

    Parameters
    ----------
    coordinates
        (n_spots, 2 or 3) positions.
    k
        Number of neighbours (must be below the number of spots).
    n_jobs
        Worker threads of the KD-tree query (-1: all cores).

    Returns
    -------
    indices, distances
        Two (n_spots, k) arrays, neighbours ordered by distance. When several spots share a
        position, the spot itself is still left out.

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
    >>> indices, distances = spatial_knn(xy, 2)
    >>> indices.tolist()
    [[1, 2], [0, 2], [1, 0], [2, 1]]
    """
    coords = check_coordinates(coordinates)
    n = coords.shape[0]
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1 or k >= n:
        raise SpatiomeInputError(
            f"k must be an integer between 1 and the number of spots - 1 ({n - 1}), got {k!r}"
        )
    workers = resolve_n_jobs(n_jobs)
    distances, indices = cKDTree(coords).query(coords, k=k + 1, workers=workers)
    indices = np.asarray(indices, dtype=np.int64)
    distances = np.asarray(distances)
    first_is_self = indices[:, 0] == np.arange(n)
    if first_is_self.all():  # the usual case: no two spots share a position
        return np.ascontiguousarray(indices[:, 1:]), np.ascontiguousarray(distances[:, 1:])
    keep = _drop_self(indices, k)
    rows = np.arange(n)[:, None]
    return indices[rows, keep], distances[rows, keep]


def _drop_self(indices: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the k neighbours in each row once the spot itself is removed."""
    n = indices.shape[0]
    is_self = indices == np.arange(n)[:, None]
    # Rows where the spot does not appear (ties at distance 0) drop their last neighbour.
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    order = np.argsort(is_self, axis=1, kind="stable")
    return order[:, :k]


def neighbourhood_median_mad(
    values: np.ndarray,
    neighbours: np.ndarray,
    *,
    include_self: bool = False,
    n_jobs: int = 1,
    client: Any | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Median and raw median absolute deviation of values over each spot's neighbourhood.

    Parameters
    ----------
    values
        (n_spots,) or (n_spots, n_metrics) values; NaN entries are ignored.
    neighbours
        (n_spots, k) neighbour indices (from :func:`spatial_knn`).
    include_self
        Add the spot's own value to its neighbourhood.
    n_jobs, client
        Threads over blocks of spots, or a ``distributed.Client``.

    Returns
    -------
    median, mad
        Arrays shaped like ``values``; MAD is the raw median of |v - median| (not scaled by
        1.4826). NaN where a neighbourhood has no finite value.

    Examples
    --------
    >>> values = np.array([1.0, 2.0, 3.0, 100.0])
    >>> neighbours = np.array([[1, 2], [0, 2], [0, 1], [1, 2]])
    >>> median, mad = neighbourhood_median_mad(values, neighbours, include_self=True)
    >>> median.tolist(), mad.tolist()
    ([2.0, 2.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0])
    """
    return _neighbourhood_pair(_median_mad_kernel, values, neighbours, include_self, n_jobs, client)


def neighbourhood_mean_variance(
    values: np.ndarray,
    neighbours: np.ndarray,
    *,
    include_self: bool = True,
    n_jobs: int = 1,
    client: Any | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample variance (ddof = 1) of values over each spot's neighbourhood.

    Parameters and returns as :func:`neighbourhood_median_mad`; by default the spot's own
    value is part of its neighbourhood, as in SpotSweeper's local variance.

    Examples
    --------
    >>> values = np.array([1.0, 2.0, 3.0, 100.0])
    >>> neighbours = np.array([[1, 2], [0, 2], [0, 1], [1, 2]])
    >>> mean, variance = neighbourhood_mean_variance(values, neighbours)
    >>> mean.tolist(), variance.tolist()
    ([2.0, 2.0, 2.0, 35.0], [1.0, 1.0, 1.0, 3169.0])
    """
    return _neighbourhood_pair(
        _mean_variance_kernel, values, neighbours, include_self, n_jobs, client
    )


def _neighbourhood_pair(kernel, values, neighbours, include_self, n_jobs, client):
    """Run a kernel that fills two statistics per spot and column, in blocks of spots."""
    matrix, squeeze = _as_matrix(values, neighbours)
    index = np.ascontiguousarray(neighbours, dtype=np.int64)

    def block(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        first = np.empty((stop - start, matrix.shape[1]))
        second = np.empty_like(first)
        kernel(matrix, index, start, stop, include_self, first, second)
        return first, second

    first, second = _run_blocks(block, matrix.shape[0], n_jobs, client)
    return (first[:, 0], second[:, 0]) if squeeze else (first, second)


def _as_matrix(values: np.ndarray, neighbours: np.ndarray) -> tuple[np.ndarray, bool]:
    array = np.asarray(values, dtype=np.float64)
    squeeze = array.ndim == 1
    matrix = np.ascontiguousarray(array[:, None] if squeeze else array)
    if matrix.ndim != 2:
        raise SpatiomeInputError(f"values must be 1-D or 2-D, got shape {array.shape}")
    index = np.asarray(neighbours)
    if index.ndim != 2 or index.shape[0] != matrix.shape[0]:
        raise SpatiomeInputError(
            f"neighbours must be (n_spots, k) with n_spots = {matrix.shape[0]}, "
            f"got shape {index.shape}"
        )
    if index.size and (index.min() < 0 or index.max() >= matrix.shape[0]):
        raise SpatiomeInputError("neighbours holds indices outside 0 .. n_spots - 1")
    return matrix, squeeze


def _run_blocks(block, n_spots: int, n_jobs: int, client: Any | None):
    parts = map_gene_chunks(
        block, n_spots, chunk_size=SPOT_BLOCK, n_jobs=resolve_n_jobs(n_jobs), client=client
    )
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(2))


@numba.njit(cache=True, nogil=True)
def _median_sorted(buffer, count):  # pragma: no cover - compiled
    half = count // 2
    if count % 2 == 1:
        return buffer[half]
    return 0.5 * (buffer[half - 1] + buffer[half])


@numba.njit(cache=True, nogil=True)
def _median_mad_kernel(
    values, neighbours, start, stop, include_self, median, mad
):  # pragma: no cover - compiled
    k = neighbours.shape[1]
    buffer = np.empty(k + 1)
    for row in range(start, stop):
        for m in range(values.shape[1]):
            count = 0
            if include_self and not np.isnan(values[row, m]):
                buffer[count] = values[row, m]
                count += 1
            for j in range(k):
                v = values[neighbours[row, j], m]
                if not np.isnan(v):
                    buffer[count] = v
                    count += 1
            out = row - start
            if count == 0:
                median[out, m] = np.nan
                mad[out, m] = np.nan
                continue
            part = np.sort(buffer[:count])
            centre = _median_sorted(part, count)
            for j in range(count):
                part[j] = abs(part[j] - centre)
            median[out, m] = centre
            mad[out, m] = _median_sorted(np.sort(part), count)


@numba.njit(cache=True, nogil=True)
def _mean_variance_kernel(
    values, neighbours, start, stop, include_self, mean, variance
):  # pragma: no cover - compiled
    k = neighbours.shape[1]
    for row in range(start, stop):
        for m in range(values.shape[1]):
            count = 0
            total = 0.0
            if include_self and not np.isnan(values[row, m]):
                total += values[row, m]
                count += 1
            for j in range(k):
                v = values[neighbours[row, j], m]
                if not np.isnan(v):
                    total += v
                    count += 1
            out = row - start
            if count == 0:
                mean[out, m] = np.nan
                variance[out, m] = np.nan
                continue
            centre = total / count
            squares = 0.0
            if include_self and not np.isnan(values[row, m]):
                squares += (values[row, m] - centre) ** 2
            for j in range(k):
                v = values[neighbours[row, j], m]
                if not np.isnan(v):
                    squares += (v - centre) ** 2
            mean[out, m] = centre
            variance[out, m] = squares / (count - 1) if count > 1 else np.nan


__all__ = ["spatial_knn", "neighbourhood_median_mad", "neighbourhood_mean_variance"]
