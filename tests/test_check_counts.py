"""The counts check: one compiled pass over the values, with the errors it always gave."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome._core._count_scan import BLOCK, all_counts
from spatiome._core.validate import SpatiomeInputError, check_counts

FORMATS = {
    "dense": np.asarray,
    "csr": sp.csr_matrix,
    "csc": sp.csc_matrix,
}


def reference_all_counts(values: np.ndarray) -> bool:
    """The obvious numpy predicate."""
    values = np.asarray(values, dtype=np.float64)
    return bool(
        np.isfinite(values).all() and (values >= 0).all() and (np.mod(values, 1) == 0).all()
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("position", [0, 5, BLOCK - 1, BLOCK, 3 * BLOCK + 17, -1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0, -0.5, 0.5, 2.25, 1e7 + 0.5])
def test_scan_finds_one_bad_value_anywhere(dtype, position, bad):
    values = np.random.default_rng(0).poisson(4.0, 4 * BLOCK + 100).astype(dtype)
    values[position] = bad
    if dtype is np.float32 and bad == 1e7 + 0.5:
        # Rounds to an integer in float32: a count, for both predicates.
        assert all_counts(values) == reference_all_counts(values)
        return
    assert not all_counts(values)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_agrees_with_numpy_on_valid_and_edge_values(dtype):
    rng = np.random.default_rng(1)
    values = rng.negative_binomial(2, 0.1, 3 * BLOCK + 5).astype(dtype)
    assert all_counts(values) and reference_all_counts(values)
    edges = np.array([0.0, -0.0, 1.0, 2.0**52, 2.0**60, 1e30], dtype=dtype)
    assert all_counts(edges) == reference_all_counts(edges)
    assert all_counts(np.array([], dtype=dtype))


CASES = [
    (np.nan, "contains NaN or infinite values (1 entries)"),
    (np.inf, "contains NaN or infinite values (1 entries)"),
    (-3.0, "contains negative values (min -3)"),
    (0.5, "contains non-integer values (e.g. 0.5)"),
]


@pytest.mark.parametrize("layout", list(FORMATS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "message"), CASES)
def test_errors_unchanged(layout, dtype, bad, message):
    dense = np.arange(1, 3 * BLOCK + 1, dtype=dtype).reshape(-1, 8) % 7 + 1
    dense[-1, -1] = bad
    matrix = FORMATS[layout](dense)
    with pytest.raises(SpatiomeInputError) as err:
        check_counts(matrix, where="adata.layers['counts']")
    assert str(err.value).startswith(f"adata.layers['counts'] {message}")


@pytest.mark.parametrize("layout", list(FORMATS))
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_valid_counts_pass(layout, dtype):
    dense = np.random.default_rng(2).poisson(1.0, (60, 40)).astype(dtype)
    check_counts(FORMATS[layout](dense))


def test_sparkx_pvalues_identical_for_integer_and_float_storage():
    adata = sm.datasets.simulate_tissue(n_spots=400, n_genes=30, random_state=0)
    tables = []
    for dtype in (np.int32, np.float32, np.float64):
        adata.layers["counts"] = adata.layers["counts"].astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tables.append(sm.svg.sparkx(adata, layer="counts", copy=True))
    for table in tables[1:]:
        np.testing.assert_array_equal(table["pval"].to_numpy(), tables[0]["pval"].to_numpy())
