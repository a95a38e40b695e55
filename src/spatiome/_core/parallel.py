"""One executor for per-gene work: chunks of genes, run serially, on threads or on Dask.

Every per-gene method splits its genes into contiguous chunks and hands a function of
``(start, stop)`` to :func:`map_gene_chunks`. The same call then runs in one thread, on a
local thread pool (numba kernels compiled with ``nogil=True`` and numpy/scipy release the
GIL, so threads scale without copying data), or on a Dask cluster when a
``distributed.Client`` is passed. Results always come back in chunk order, so the outcome
does not depend on ``n_jobs`` or on the scheduler.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .validate import SpatiomeInputError

T = TypeVar("T")

#: Default number of matrix entries (spots x genes) processed by one chunk.
DEFAULT_CHUNK_ENTRIES = 10_000_000


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Number of workers for ``n_jobs`` (None or 1: serial; -1: all cores; -2: all but one).

    Examples
    --------
    >>> resolve_n_jobs(1)
    1
    >>> resolve_n_jobs(-1) == (os.cpu_count() or 1)
    True
    """
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise SpatiomeInputError(
            f"n_jobs must be a non-zero integer (1 = serial, -1 = all cores), got {n_jobs!r}"
        )
    cores = os.cpu_count() or 1
    return int(n_jobs) if n_jobs > 0 else max(1, cores + 1 + int(n_jobs))


def gene_chunks(n_genes: int, chunk_size: int) -> list[tuple[int, int]]:
    """Split ``range(n_genes)`` into contiguous ``(start, stop)`` chunks of ``chunk_size``.

    Examples
    --------
    >>> gene_chunks(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    if chunk_size < 1:
        raise SpatiomeInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return [(start, min(start + chunk_size, n_genes)) for start in range(0, n_genes, chunk_size)]


def default_chunk_size(n_obs: int, n_genes: int, n_jobs: int = 1) -> int:
    """Genes per chunk so that one chunk holds at most ~``DEFAULT_CHUNK_ENTRIES`` values.

    With several workers the genes are also split into at least ``4 * n_jobs`` chunks so
    the load stays balanced.

    Examples
    --------
    >>> default_chunk_size(1_000, 200)
    200
    >>> default_chunk_size(1_000, 200, n_jobs=2)
    25
    """
    by_memory = max(1, DEFAULT_CHUNK_ENTRIES // max(n_obs, 1))
    size = min(n_genes, by_memory)
    if n_jobs > 1:
        size = min(size, -(-n_genes // (4 * n_jobs)))
    return max(1, size)


def map_gene_chunks(
    func: Callable[[int, int], T],
    n_genes: int,
    *,
    chunk_size: int,
    n_jobs: int | None = 1,
    client: Any | None = None,
) -> list[T]:
    """Apply ``func(start, stop)`` to contiguous gene chunks; results in chunk order.

    Parameters
    ----------
    func
        Called once per chunk with the first and one-past-last gene position. On a Dask
        client it is pickled and shipped to the workers, so it should close over arrays
        rather than open files.
    n_genes
        Number of genes to split.
    chunk_size
        Genes per chunk (see :func:`default_chunk_size`).
    n_jobs
        1: run in this thread; > 1: a thread pool of that size; -1: one thread per core.
        Ignored when ``client`` is given.
    client
        Optional ``distributed.Client``; chunks are submitted with ``client.map`` and
        gathered in order. Dask is only needed when a client is passed.

    Returns
    -------
    list
        One result per chunk, in gene order.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(10.0)
    >>> map_gene_chunks(lambda a, b: float(x[a:b].sum()), 10, chunk_size=4, n_jobs=2)
    [6.0, 22.0, 17.0]
    """
    chunks = gene_chunks(n_genes, chunk_size)
    if not chunks:
        return []
    if client is not None:
        if not hasattr(client, "map") or not hasattr(client, "gather"):
            raise SpatiomeInputError(
                f"client must be a distributed.Client (with map and gather), "
                f"got {type(client).__name__}"
            )
        starts, stops = zip(*chunks, strict=True)
        # Ship the function (and the arrays it closes over) to each worker once, instead
        # of embedding it in every task.
        shared = client.scatter(func, broadcast=True, hash=False)
        futures = client.map(_call_chunk, [shared] * len(chunks), starts, stops, pure=False)
        return list(client.gather(futures))
    workers = min(resolve_n_jobs(n_jobs), len(chunks))
    if workers == 1:
        return [func(start, stop) for start, stop in chunks]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda chunk: func(*chunk), chunks))


def _call_chunk(func: Callable[[int, int], T], start: int, stop: int) -> T:
    return func(start, stop)


__all__ = ["map_gene_chunks", "gene_chunks", "default_chunk_size", "resolve_n_jobs"]
