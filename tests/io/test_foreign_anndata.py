"""AnnData built outside spatiome.io: raw counts in X are found, and errors say what to do."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from spatiome import pp
from spatiome._core.validate import SpatiomeInputError, check_counts, get_matrix


def _foreign(values) -> ad.AnnData:
    return ad.AnnData(sp.csr_matrix(np.asarray(values, dtype=np.float32)))


@pytest.mark.parametrize("function", [pp.qc_metrics, pp.normalize])
def test_raw_counts_in_x_are_read_by_default_and_named_layers_get_both_fixes(function):
    adata = _foreign([[1, 0, 3], [2, 5, 0]])
    function(adata.copy())  # layer=None finds the counts in X
    with pytest.raises(SpatiomeInputError) as err:
        function(adata, layer="counts")
    message = str(err.value)
    assert "adata.layers['counts'] is missing" in message
    assert "not made by spatiome.io" in message
    assert "adata.layers['counts'] = adata.X.copy()" in message
    assert "layer=None" in message
    # both fixes the message gives work
    function(adata.copy(), layer=None)
    adata.layers["counts"] = adata.X.copy()
    function(adata, layer="counts")


def test_normalized_x_is_not_offered_as_counts():
    adata = _foreign([[0.5, 0.0], [1.2, 3.0]])
    adata.raw = adata.copy()
    with pytest.raises(SpatiomeInputError) as err:
        pp.qc_metrics(adata, layer="counts")
    message = str(err.value)
    assert "adata.X is not raw counts" in message and "layer=None would not do" in message
    assert "adata.raw.X.copy()" in message
    with pytest.raises(SpatiomeInputError) as err:
        pp.qc_metrics(adata)
    message = str(err.value)
    assert "no raw counts found for layer=None" in message
    assert "adata.X holds non-integer values (e.g. 0.5)" in message
    assert "adata.raw" not in message  # it holds the same normalized values
    adata.raw = _foreign([[1, 0], [2, 3]])
    with pytest.raises(SpatiomeInputError, match=r"= adata.raw.X.copy\(\) \(adata.raw holds"):
        pp.qc_metrics(adata)


def test_other_layers_are_listed_and_offered():
    adata = _foreign([[0.5, 0.0], [1.2, 3.0]])
    adata.layers["raw_counts"] = sp.csr_matrix(np.array([[1, 0], [2, 3]]))
    with pytest.raises(SpatiomeInputError, match=r"layers present: \['raw_counts'\]") as err:
        pp.normalize(adata)
    assert "layer='raw_counts'" in str(err.value)
    with pytest.raises(SpatiomeInputError, match="counts_layer=None"):
        get_matrix(_foreign([[1, 2]]), "counts", argument="counts_layer")
    with pytest.raises(SpatiomeInputError, match=r"adata.layers\['spliced'\] is missing"):
        get_matrix(adata, "spliced")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("adata.X", "pass layer='counts'"),
        ("adata.layers['counts']", "raw, unnormalized counts in this layer"),
        ("counts.csv: counts", "unnormalized counts"),
    ],
)
def test_non_integer_counts_name_an_example_and_the_fix(where, expected):
    with pytest.raises(SpatiomeInputError, match="non-integer values \\(e.g. 0.25\\)") as err:
        check_counts(np.array([[1.0, 0.25]]), where=where)
    assert expected in str(err.value) and str(err.value).startswith(where)
