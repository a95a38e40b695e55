"""Row and column sums of count matrices in float64, without a copy of the matrix.

scipy sums an integer sparse matrix by first converting it to int64 (``get_sum_dtype``):
a temporary twice the size of the stored values, 1.5 GB for 200,000 spots x 2,000 genes at
47% non-zero. These compiled loops read the stored values once and allocate only the
result.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


def row_sums(matrix) -> np.ndarray:
    """Sum of each row (spot) as float64; equal to ``matrix.sum(axis=1)`` for counts.

    Examples
    --------
    >>> x = sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [4, 5, 0]], dtype=np.int32))
    >>> row_sums(x).tolist(), row_sums(x.tocsc()).tolist(), row_sums(x.toarray()).tolist()
    ([3.0, 0.0, 9.0], [3.0, 0.0, 9.0], [3.0, 0.0, 9.0])
    """
    return _sums(matrix, axis=1)


def column_sums(matrix) -> np.ndarray:
    """Sum of each column (gene) as float64; equal to ``matrix.sum(axis=0)`` for counts.

    Examples
    --------
    >>> x = sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [4, 5, 0]], dtype=np.int32))
    >>> column_sums(x).tolist(), column_sums(x.tocsc()).tolist()
    ([5.0, 5.0, 2.0], [5.0, 5.0, 2.0])
    """
    return _sums(matrix, axis=0)


def _sums(matrix, axis: int) -> np.ndarray:
    if not sp.issparse(matrix) or matrix.format not in ("csr", "csc"):
        if sp.issparse(matrix):
            matrix = matrix.tocsr()
        else:
            return np.asarray(np.sum(matrix, axis=axis, dtype=np.float64)).ravel()
    along_major = (matrix.format == "csr") == (axis == 1)
    if along_major:
        return _major_sums(matrix.indptr, matrix.data)
    return _minor_sums(matrix.indices, matrix.data, matrix.shape[1 - axis])


@numba.njit(cache=True, nogil=True)
def _major_sums(indptr, data):  # pragma: no cover - compiled
    out = np.zeros(indptr.size - 1)
    for row in range(indptr.size - 1):
        total = 0.0
        for k in range(indptr[row], indptr[row + 1]):
            total += data[k]
        out[row] = total
    return out


@numba.njit(cache=True, nogil=True)
def _minor_sums(indices, data, size):  # pragma: no cover - compiled
    out = np.zeros(size)
    for k in range(indices.size):
        out[indices[k]] += data[k]
    return out
