"""SPARK-X against a dense textbook implementation, the original's output, and calibration."""

from __future__ import annotations

import sys
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.svg import sparkx
from spatiome.svg import sparkx as sparkx_function

sparkx_module = sys.modules[sparkx_function.__module__]
KERNELS = sparkx_module.MIXTURE_KERNELS


def counts_tissue(n_spots=300, n_genes=8, seed=0, dims=2, sparse=True):
    """Random spots; genes 0-2 follow a gradient, a ring and a hotspot, the rest are noise."""
    rng = np.random.default_rng(seed)
    xy = rng.random((n_spots, dims)) * 50
    rates = np.full((n_spots, n_genes), 3.0)
    rates[:, 0] *= np.exp(xy[:, 0] / 25)
    rates[:, 1] *= np.exp(np.cos(np.linalg.norm(xy - 25, axis=1) / 4))
    rates[:, 2] *= 1 + 4 * np.exp(-((xy - 10) ** 2).sum(1) / 50)
    counts = rng.poisson(rates)
    adata = anndata.AnnData(sp.csr_matrix(counts) if sparse else counts.astype(float))
    adata.obsm["spatial"] = xy
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    return adata


def textbook_statistics(y, xy, covariates=None):
    """Explicit n x n projection kernels, as written in the paper, one gene at a time."""
    n = len(y)
    design = np.ones((n, 1)) if covariates is None else np.column_stack([np.ones(n), covariates])
    hat = design @ np.linalg.pinv(design)
    centred = xy - xy.mean(0)
    out = []
    for name in KERNELS:
        if name == "projection":
            s = centred
        else:
            level = int(name[-1]) - 1
            scale = np.quantile(np.abs(centred), [0.2, 0.4, 0.6, 0.8, 1.0][level], axis=0)
            if name.startswith("gaus"):
                s = np.exp(-(centred**2) / (2 * scale**2))
            else:
                s = np.cos(2 * np.pi * centred / scale)
        s = s - hat @ s
        kernel = s @ np.linalg.inv(s.T @ s) @ s.T
        statistic = n * (y @ kernel @ y) / (y @ y)
        fraction = 1 - (y @ hat @ y) / (y @ y)
        out.append((statistic, stats.chi2.sf(statistic / fraction, s.shape[1])))
    return np.array(out)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("dims", [2, 3])
def test_statistics_and_pvalues_equal_textbook_kernels(sparse, dims):
    adata = counts_tissue(n_spots=150, n_genes=5, dims=dims, sparse=sparse)
    table = sparkx(adata, copy=True, check_depth=False)
    counts = adata.X.toarray() if sparse else adata.X
    for j, gene in enumerate(adata.var_names):
        expected = textbook_statistics(counts[:, j].astype(float), adata.obsm["spatial"])
        got_stats = table.loc[gene, [f"stat_{k}" for k in KERNELS]].to_numpy(float)
        got_p = table.loc[gene, [f"pval_{k}" for k in KERNELS]].to_numpy(float)
        np.testing.assert_allclose(got_stats, expected[:, 0], rtol=1e-9)
        np.testing.assert_allclose(got_p, expected[:, 1], rtol=1e-8, atol=1e-300)


def test_covariates_equal_textbook_projection_and_remove_a_covariate_effect():
    rng = np.random.default_rng(3)
    adata = counts_tissue(n_spots=200, n_genes=4, seed=3)
    depth = np.exp(adata.obsm["spatial"][:, 1] / 30 + rng.normal(0, 0.1, 200))
    counts = rng.poisson(np.outer(depth, [4.0, 4.0, 4.0, 4.0]))  # depth-driven only
    adata.X = sp.csr_matrix(counts)
    adata.obs["depth"] = depth
    unadjusted = sparkx(adata, copy=True, check_depth=False)
    adjusted = sparkx(adata, covariates="depth", copy=True)
    for j, gene in enumerate(adata.var_names):
        expected = textbook_statistics(counts[:, j].astype(float), adata.obsm["spatial"], depth)
        got = adjusted.loc[gene, [f"stat_{k}" for k in KERNELS]].to_numpy(float)
        np.testing.assert_allclose(got, expected[:, 0], rtol=1e-9)
    assert (unadjusted["pval"] < 1e-4).all()
    assert (adjusted["pval"] > 1e-3).all()


def test_finds_patterns_and_null_genes_are_calibrated():
    adata = sm.datasets.simulate_tissue(n_spots=1500, n_genes=300, frac_spatial=0.2, random_state=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sparkx(adata)
    truth = adata.var["is_spatial"].to_numpy()
    null_p = table["pval"].to_numpy()[~truth]
    assert abs((null_p < 0.05).mean() - 0.05) < 0.04
    assert stats.kstest(null_p, "uniform").pvalue > 1e-3
    assert (table["qval"].to_numpy()[truth] < 0.05).mean() > 0.6


def test_depth_gradient_triggers_the_warning_and_covariate_fixes_false_positives():
    adata = sm.datasets.simulate_tissue(
        n_spots=1500, n_genes=200, frac_spatial=0.0, depth_gradient=1.0, random_state=5
    )
    with pytest.warns(UserWarning, match="spatially patterned"):
        raw = sparkx(adata, copy=True)
    assert (raw["pval"] < 0.05).mean() > 0.3
    totals = np.asarray(adata.layers["counts"].sum(axis=1)).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adjusted = sparkx(adata, covariates=totals, copy=True)
    assert (adjusted["pval"] < 0.05).mean() < 0.1


def test_results_do_not_depend_on_blocks_workers_or_storage(monkeypatch):
    adata = counts_tissue(n_spots=400, n_genes=6)
    reference = sparkx(adata, copy=True, check_depth=False)
    monkeypatch.setattr(sparkx_module, "SPOT_BLOCK", 64)
    blocked = sparkx(adata, copy=True, check_depth=False)
    threaded = sparkx(adata, copy=True, check_depth=False, n_jobs=2)
    pd.testing.assert_frame_equal(blocked, threaded)
    pd.testing.assert_frame_equal(reference, blocked, rtol=1e-12)
    dense = adata.copy()
    dense.X = adata.X.toarray()
    pd.testing.assert_frame_equal(
        reference, sparkx(dense, copy=True, check_depth=False), rtol=1e-12
    )


def test_spots_without_counts_are_left_out_and_empty_genes_are_nan():
    adata = counts_tissue(n_spots=200, n_genes=5)
    counts = adata.X.toarray()
    counts[:10] = 0
    counts[:, 4] = 0
    padded = adata.copy()
    padded.X = sp.csr_matrix(counts)
    table = sparkx(padded, copy=True, check_depth=False)
    trimmed = padded[10:].copy()
    expected = sparkx(trimmed, copy=True, check_depth=False)
    pd.testing.assert_frame_equal(table.iloc[:4], expected.iloc[:4], rtol=1e-10)
    assert table.loc["g4"].drop(["n_spots_expressed", "note"]).isna().all()
    assert table.loc["g4", "n_spots_expressed"] == 0
    assert table.loc["g4", "note"] == "not tested: no counts"
    assert (table["note"].iloc[:4] == "").all()


def test_single_kernel_option_and_written_results():
    adata = counts_tissue()
    before = adata.X.copy()
    table = sparkx(adata, kernels="single", check_depth=False)
    assert [c for c in table if c.startswith("stat_")] == ["stat_projection"]
    np.testing.assert_allclose(table["pval"], table["pval_projection"], rtol=1e-8)
    assert "sparkx_pval" in adata.var and adata.uns["spatiome"]["sparkx"]["kernels"] == "single"
    assert (adata.X != before).nnz == 0
    kept = adata.copy()
    sparkx(kept, genes=["g0", "g3"], check_depth=False)
    assert kept.var["sparkx_pval"].isna().tolist() == [False, True, True, False, True, True,
                                                       True, True]  # fmt: skip


def test_extreme_signal_keeps_finite_log10_pval():
    rng = np.random.default_rng(0)
    xy = rng.random((3000, 2))
    strong = rng.poisson(1 + 200 * (xy[:, 0] > 0.5))
    adata = anndata.AnnData(sp.csr_matrix(strong[:, None]), obsm={"spatial": xy})
    table = sparkx(adata, copy=True, check_depth=False)
    assert table["pval"].iloc[0] > 0
    assert np.isfinite(table["log10_pval"].iloc[0]) and table["log10_pval"].iloc[0] < -300


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernels": "all"}, "kernels must be"),
        ({"pvalue_method": "mc"}, "pvalue_method must be"),
        ({"covariates": "nope"}, "covariates not in adata.obs"),
        ({"covariates": np.zeros((3, 1))}, "one row per spot"),
        ({"covariates": np.full(300, np.nan)}, "NaN"),
        ({"covariates": np.ones(300)}, "collinear"),
        ({"genes": ["zzz"]}, "not in adata.var_names"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(SpatiomeInputError, match=message):
        sparkx(counts_tissue(), copy=True, **kwargs)


def test_normalized_input_is_rejected_with_a_fix():
    adata = counts_tissue()
    normalized = anndata.AnnData(adata.X / 3.0, obsm={"spatial": adata.obsm["spatial"]})
    normalized.var_names = adata.var_names
    with pytest.raises(SpatiomeInputError, match="no raw counts found.*require_counts=False"):
        sparkx(normalized, copy=True)
    normalized.layers["scaled"] = normalized.X
    with pytest.raises(SpatiomeInputError, match="raw counts.*layer='counts'"):
        sparkx(normalized, layer="scaled", copy=True)
    with pytest.raises(SpatiomeInputError, match="missing_layer"):
        sparkx(adata, layer="missing_layer", copy=True)
    # With a counts layer, it is used by default even when X is normalized.
    normalized.layers["counts"] = adata.X.copy()
    expected = sparkx(adata, copy=True, check_depth=False)
    got = sparkx(normalized, copy=True, check_depth=False)
    pd.testing.assert_frame_equal(expected, got)


def test_nan_coordinates_are_rejected():
    adata = counts_tissue()
    adata.obsm["spatial"][3, 0] = np.nan
    with pytest.raises(SpatiomeInputError, match="NaN"):
        sparkx(adata, copy=True)


def test_matches_the_original_r_output_on_mouse_olfactory_bulb(shared_data):
    reference_file = shared_data / "mouse_ob_rep11" / "reference" / "sparkx_r_reference.csv.gz"
    adata = sm.datasets.load("mouse_ob_rep11", data_dir=shared_data)
    reference = pd.read_csv(reference_file, index_col=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sparkx(adata, copy=True).loc[reference.index]
    for name in KERNELS:
        np.testing.assert_allclose(table[f"stat_{name}"], reference[f"stat_{name}"], rtol=1e-6)
    rho = stats.spearmanr(table["log10_pval"], np.log10(reference["combined_pvalue"]))
    assert rho.statistic >= 0.999
    ours = set(table.index[table["qval_by"] < 0.05])
    theirs = set(reference.index[reference["adjusted_pvalue"] < 0.05])
    assert len(theirs) == 2086
    assert len(ours & theirs) / len(ours | theirs) >= 0.98


def test_davies_mode_reproduces_the_original_calls(shared_data):
    reference_file = shared_data / "mouse_ob_rep11" / "reference" / "sparkx_r_reference.csv.gz"
    adata = sm.datasets.load("mouse_ob_rep11", data_dir=shared_data)
    reference = pd.read_csv(reference_file, index_col=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sparkx(adata, pvalue_method="davies", n_jobs=2, copy=True).loc[reference.index]
    for name in KERNELS:
        np.testing.assert_allclose(table[f"pval_{name}"], reference[f"pval_{name}"], atol=1e-10)
    np.testing.assert_allclose(table["qval_by"], reference["adjusted_pvalue"], atol=1e-10)
    ours = set(table.index[table["qval_by"] < 0.05])
    assert ours == set(reference.index[reference["adjusted_pvalue"] < 0.05])


def test_normalized_values_are_accepted_when_asked_and_negative_ones_never():
    adata = counts_tissue()
    normalized = adata.copy()
    normalized.X = adata.X.multiply(1.0 / 3.0).tocsr()
    # Scaling every value leaves the statistic unchanged (it is scale free per gene).
    expected = sparkx(adata, copy=True, check_depth=False)
    got = sparkx(normalized, require_counts=False, copy=True, check_depth=False)
    pd.testing.assert_frame_equal(expected, got, rtol=1e-9)
    negative = adata.copy()
    negative.X = adata.X.toarray() - 1.0
    with pytest.raises(SpatiomeInputError, match="negative"):
        sparkx(negative, require_counts=False, copy=True)
