"""pp.stabilize and pp.regress_out against NaiveDE's formulas written out directly."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import optimize

from spatiome._core.validate import SpatiomeInputError
from spatiome.pp import regress_out, stabilize


def _adata(seed: int = 0, n_obs: int = 80, n_vars: int = 25, sparse: bool = True) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    depth = rng.gamma(4.0, 0.5, size=(n_obs, 1))
    means = rng.lognormal(0.5, 1.0, size=n_vars) * depth
    counts = rng.negative_binomial(4, 4 / (4 + means)).astype(np.float64)
    counts[:, 0] += 1  # no spot without counts
    matrix = sp.csr_matrix(counts) if sparse else counts
    adata = ad.AnnData(matrix.copy())
    adata.layers["counts"] = matrix
    adata.obs["depth"] = depth.ravel()
    return adata


@pytest.mark.parametrize("sparse", [True, False])
def test_stabilize_matches_curve_fit_and_anscombe_offset(sparse):
    adata = _adata(sparse=sparse)
    before = adata.layers["counts"].copy()
    stabilize(adata)
    dense = before.toarray() if sparse else before
    frame = pd.DataFrame(dense.T)  # genes x spots, as NaiveDE expects
    phi, _ = optimize.curve_fit(
        lambda mu, phi: mu + phi * mu**2, frame.mean(1), frame.var(1), p0=[1.0]
    )
    params = adata.uns["spatiome"]["stabilize"]
    assert params["phi"] == pytest.approx(phi[0], rel=1e-6)
    assert params["offset"] == pytest.approx(1 / (2 * params["phi"]))
    expected = np.log(dense + 1 / (2 * params["phi"]))
    np.testing.assert_allclose(adata.layers["stabilized"], expected, rtol=1e-12)
    counts_after = adata.layers["counts"]
    if sparse:
        assert (counts_after != before).nnz == 0
    else:
        np.testing.assert_array_equal(counts_after, before)


def test_stabilize_copy_and_key_added():
    adata = _adata()
    out = stabilize(adata, key_added="vst", copy=True)
    assert "vst" not in adata.layers and "spatiome" not in adata.uns
    assert out is not None and out.layers["vst"].shape == adata.shape


def test_regress_out_keeps_intercept_and_removes_the_covariate():
    adata = _adata(seed=1)
    stabilize(adata)
    values = adata.layers["stabilized"].copy()
    covariate = np.log(np.asarray(adata.layers["counts"].sum(axis=1)).ravel())
    regress_out(adata)
    design = np.column_stack([np.ones(adata.n_obs), covariate])
    beta = np.linalg.lstsq(design, values, rcond=None)[0]
    expected = values - np.outer(covariate, beta[1])
    np.testing.assert_allclose(adata.layers["regressed"], expected, atol=1e-10)
    np.testing.assert_allclose(
        adata.layers["regressed"].mean(0), values.mean(0) - beta[1] * covariate.mean()
    )
    residual_slope = np.linalg.lstsq(design, adata.layers["regressed"], rcond=None)[0][1]
    np.testing.assert_allclose(residual_slope, 0, atol=1e-10)
    np.testing.assert_array_equal(adata.layers["stabilized"], values)
    assert adata.uns["spatiome"]["regress_out"]["keys"] == ["log_total_counts"]


def test_regress_out_uses_obs_columns_when_present():
    adata = _adata(seed=2)
    stabilize(adata)
    adata.obs["log_total_counts"] = 0.5 * np.log(adata.obs["depth"])
    both = regress_out(adata, ["log_total_counts", "depth"], copy=True)
    design = np.column_stack(
        [np.ones(adata.n_obs), adata.obs["log_total_counts"], adata.obs["depth"]]
    )
    values = adata.layers["stabilized"]
    beta = np.linalg.lstsq(design, values, rcond=None)[0]
    np.testing.assert_allclose(
        both.layers["regressed"], values - design[:, 1:] @ beta[1:], atol=1e-10
    )


def test_bad_inputs_say_what_to_fix():
    adata = _adata()
    adata.layers["logged"] = np.log1p(adata.layers["counts"].toarray())
    with pytest.raises(SpatiomeInputError, match="non-integer"):
        stabilize(adata, layer="logged")
    flat = ad.AnnData(np.tile(np.arange(5.0), (40, 1)))
    flat.layers["counts"] = flat.X.copy()
    with pytest.raises(SpatiomeInputError, match="not overdispersed"):
        stabilize(flat)
    with pytest.raises(SpatiomeInputError, match="obs\\['nope'\\] is missing"):
        regress_out(adata, "nope", layer="counts")
    adata.obs["label"] = "a"
    with pytest.raises(SpatiomeInputError, match="numeric"):
        regress_out(adata, "label", layer="counts")
    empty = _adata()
    counts = empty.layers["counts"].tolil()
    counts[3, :] = 0
    empty.layers["counts"] = counts.tocsr()
    with pytest.raises(SpatiomeInputError, match="no counts"):
        regress_out(empty, layer="counts")
    with pytest.raises(SpatiomeInputError, match="key_added"):
        stabilize(adata, key_added="")
