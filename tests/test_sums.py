"""Row and column sums of count matrices without a widened copy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from spatiome._core.sums import column_sums, row_sums


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("form", ["csr", "csc", "coo", "dense"])
def test_sums_equal_numpy_on_every_storage(dtype, form):
    rng = np.random.default_rng(0)
    dense = (rng.poisson(0.7, (60, 9)) * (rng.random((60, 9)) < 0.4)).astype(dtype)
    matrix = dense if form == "dense" else sp.csr_matrix(dense).asformat(form)
    np.testing.assert_allclose(row_sums(matrix), dense.sum(axis=1, dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(column_sums(matrix), dense.sum(axis=0, dtype=np.float64), rtol=1e-12)
    assert row_sums(matrix).dtype == np.float64


def test_integer_sums_allocate_only_the_result():
    counts = sp.random(20_000, 300, density=0.3, format="csr", random_state=1)
    counts.data = np.ceil(counts.data * 20).astype(np.int32)
    row_sums(counts[:10]), column_sums(counts[:10])  # compile outside the trace
    tracemalloc.start()
    rows, columns = row_sums(counts), column_sums(counts)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.1 * counts.data.nbytes, peak  # scipy's sum widens a copy to int64: 2x
    assert rows.sum() == columns.sum() == counts.data.sum(dtype=np.int64)
