"""pp.normalize: library size + log1p and Pearson residuals."""

from __future__ import annotations

import importlib
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from spatiome._core.validate import SpatiomeInputError
from spatiome.pp import normalize


def _adata(seed: int = 0, n_obs: int = 50, n_vars: int = 30) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.poisson(rng.gamma(1.0, 2.0, size=(n_obs, 1)), size=(n_obs, n_vars)))
    adata = ad.AnnData(counts.copy())
    adata.layers["counts"] = counts
    return adata


def test_log1p_rows_sum_to_median_and_counts_untouched():
    adata = _adata()
    counts_before = adata.layers["counts"].copy()
    dense = counts_before.toarray().astype(float)
    totals = dense.sum(axis=1)
    normalize(adata)
    assert sp.issparse(adata.X)
    assert (adata.layers["counts"] != counts_before).nnz == 0
    assert adata.layers["counts"].dtype == counts_before.dtype
    target = np.median(totals[totals > 0])
    assert adata.uns["spatiome"]["normalize"] == {
        "method": "log1p",
        "layer": "counts",
        "target_sum": target,
    }
    recovered = np.expm1(adata.X.toarray().astype(float))
    np.testing.assert_allclose(recovered.sum(axis=1)[totals > 0], target, rtol=1e-5)
    with np.errstate(invalid="ignore"):
        expected = np.nan_to_num(np.log1p(dense / totals[:, None] * target))
    np.testing.assert_allclose(adata.X.toarray(), expected, rtol=1e-5, atol=1e-6)


def test_explicit_target_sum_and_zero_spot():
    adata = _adata()
    counts = adata.layers["counts"].tolil()
    counts[0, :] = 0
    adata.layers["counts"] = counts.tocsr()
    normalize(adata, target_sum=1e4)
    rows = np.expm1(adata.X.toarray().astype(float)).sum(axis=1)
    empty = adata.layers["counts"].sum(axis=1).A1 == 0
    assert empty[0] and rows[0] == 0
    np.testing.assert_array_equal(rows[empty], 0)
    np.testing.assert_allclose(rows[~empty], 1e4, rtol=1e-5)


def test_pearson_residuals_match_formula():
    adata = _adata()
    normalize(adata, method="pearson", theta=100.0)
    dense = adata.layers["counts"].toarray().astype(float)
    assert (dense.sum(axis=1) == 0).any(), "the test needs an empty spot"
    mu = dense.sum(axis=1, keepdims=True) * dense.sum(axis=0, keepdims=True) / dense.sum()
    with np.errstate(invalid="ignore"):
        residuals = np.nan_to_num((dense - mu) / np.sqrt(mu + mu**2 / 100.0))
    clip = np.sqrt(adata.n_obs)
    np.testing.assert_allclose(adata.X, np.clip(residuals, -clip, clip), rtol=1e-6, atol=1e-8)
    assert adata.uns["spatiome"]["normalize"]["method"] == "pearson"
    assert "log1p" not in adata.uns


def test_pearson_warns_when_dense_output_is_large(monkeypatch):
    # The package exports the function under the module's name, so fetch the module itself.
    module = importlib.import_module("spatiome.pp.normalize")
    monkeypatch.setattr(module, "DENSE_WARN_ENTRIES", 100)
    with pytest.warns(UserWarning, match="dense"):
        normalize(_adata(), method="pearson")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        monkeypatch.setattr(module, "DENSE_WARN_ENTRIES", 10**9)
        normalize(_adata(), method="pearson")


def test_copy_returns_new_object_and_leaves_input():
    adata = _adata()
    x_before = adata.X.copy()
    result = normalize(adata, copy=True)
    assert result is not adata
    assert (adata.X != x_before).nnz == 0
    assert "spatiome" not in adata.uns
    assert result.X.dtype == np.float32


def test_bad_arguments():
    with pytest.raises(SpatiomeInputError, match="method"):
        normalize(_adata(), method="scran")
    with pytest.raises(SpatiomeInputError, match="target_sum"):
        normalize(_adata(), target_sum=-1)
    adata = _adata()
    adata.X = adata.X.astype(float) * 0.3
    adata.layers["scaled"] = adata.X
    with pytest.raises(SpatiomeInputError, match="non-integer"):
        normalize(adata, layer="scaled")
    del adata.layers["counts"]
    with pytest.raises(SpatiomeInputError, match="no raw counts found.*non-integer"):
        normalize(adata)
