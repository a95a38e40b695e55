"""Moran's I and Geary's C against naive dense implementations, moments and calibration."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.svg import geary, moran


def tissue(n_spots=120, n_genes=12, seed=0, sparse=True, n_neighbors=5, symmetric=True):
    """Random spots; half the genes follow a smooth gradient, one gene is constant."""
    rng = np.random.default_rng(seed)
    xy = rng.random((n_spots, 2))
    signal = np.sin(3 * xy[:, 0]) + xy[:, 1]
    rates = np.exp(rng.normal(0, 0.3, (n_spots, n_genes)))
    rates[:, : n_genes // 2] *= np.exp(signal)[:, None]
    values = np.log1p(rng.poisson(rates)).astype(np.float64)
    values[:, -1] = 0.0  # an all-zero gene
    adata = anndata.AnnData(sp.csr_matrix(values) if sparse else values, obsm={"spatial": xy})
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    sm.graph.spatial_neighbors(adata, n_neighbors=n_neighbors, symmetric=symmetric)
    return adata


def dense_weights(adata, transformation):
    w = adata.obsp["spatial_connectivities"].toarray().astype(float)
    if transformation == "row":
        sums = w.sum(1, keepdims=True)
        w = np.divide(w, sums, out=np.zeros_like(w), where=sums > 0)
    return w


def naive_moran(x, w):
    """Double loop over pairs."""
    n = x.size
    z = x - x.mean()
    cross = sum(w[i, j] * z[i] * z[j] for i in range(n) for j in range(n))
    return n / w.sum() * cross / (z @ z)


def naive_geary(x, w):
    n = x.size
    z = x - x.mean()
    squares = ((x[:, None] - x[None, :]) ** 2 * w).sum()
    return (n - 1) * squares / (2 * w.sum() * (z @ z))


def textbook_moments(w, x, method):
    """Cliff & Ord moments from the dense weight matrix."""
    n = x.size
    s0 = w.sum()
    s1 = 0.5 * ((w + w.T) ** 2).sum()
    s2 = ((w.sum(0) + w.sum(1)) ** 2).sum()
    z = x - x.mean()
    b2 = n * (z**4).sum() / (z**2).sum() ** 2
    if method == "moran":
        e = -1 / (n - 1)
        v_norm = (n**2 * s1 - n * s2 + 3 * s0**2) / ((n**2 - 1) * s0**2) - e**2
        a = n * ((n**2 - 3 * n + 3) * s1 - n * s2 + 3 * s0**2)
        b = b2 * ((n**2 - n) * s1 - 2 * n * s2 + 6 * s0**2)
        v_rand = (a - b) / ((n - 1) * (n - 2) * (n - 3) * s0**2) - e**2
        return e, v_norm, v_rand
    v_norm = ((2 * s1 + s2) * (n - 1) - 4 * s0**2) / (2 * (n + 1) * s0**2)
    v_rand = (
        (n - 1) * s1 * (n**2 - 3 * n + 3 - (n - 1) * b2)
        - 0.25 * (n - 1) * s2 * (n**2 + 3 * n - 6 - (n**2 - n + 2) * b2)
        + s0**2 * (n**2 - 3 - (n - 1) ** 2 * b2)
    ) / (n * (n - 2) * (n - 3) * s0**2)
    return 1.0, v_norm, v_rand


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("transformation", ["row", "none"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_statistics_equal_naive_implementation(sparse, transformation, symmetric):
    adata = tissue(sparse=sparse, symmetric=symmetric)
    w = dense_weights(adata, transformation)
    values = adata.X.toarray() if sparse else adata.X
    for func, naive, method in [(moran, naive_moran, "moran"), (geary, naive_geary, "geary")]:
        table = func(adata, transformation=transformation, copy=True)
        for j, gene in enumerate(adata.var_names[:-1]):
            x = values[:, j]
            row = table.loc[gene]
            assert row["statistic"] == pytest.approx(naive(x, w), abs=1e-10)
            expected, v_norm, v_rand = textbook_moments(w, x, method)
            assert row["expected"] == pytest.approx(expected, abs=1e-12)
            assert row["variance_norm"] == pytest.approx(v_norm, rel=1e-10)
            assert row["variance_rand"] == pytest.approx(v_rand, rel=1e-9)
            z = (row["statistic"] - expected) / np.sqrt(v_norm)
            assert row["zscore"] == pytest.approx(z, rel=1e-9, abs=1e-12)


def test_weighted_graph_with_self_loops_and_csc_input():
    adata = tissue(n_spots=60, n_genes=5)
    rng = np.random.default_rng(3)
    graph = adata.obsp["spatial_connectivities"].copy()
    graph.data = rng.random(graph.nnz)
    graph = graph + sp.diags(rng.random(60))
    adata.obsp["weighted"] = sp.csr_matrix(graph)
    adata.X = sp.csc_matrix(adata.X)
    w = graph.toarray()
    values = adata.X.toarray()
    table_i = moran(adata, connectivity_key="weighted", transformation="none", copy=True)
    table_c = geary(adata, connectivity_key="weighted", transformation="none", copy=True)
    for j in range(4):
        assert table_i["statistic"].iloc[j] == pytest.approx(
            naive_moran(values[:, j], w), abs=1e-10
        )
        assert table_c["statistic"].iloc[j] == pytest.approx(
            naive_geary(values[:, j], w), abs=1e-10
        )


def test_unsorted_sparse_input_is_not_modified():
    adata = tissue(n_spots=50, n_genes=4)
    matrix = adata.X.tocoo()
    order = np.random.default_rng(0).permutation(matrix.nnz)
    shuffled = sp.csc_matrix(
        (matrix.data[order], (matrix.row[order], matrix.col[order])), shape=matrix.shape
    )
    shuffled.has_sorted_indices = False
    reference = moran(adata, copy=True)
    adata.X = shuffled
    before = (shuffled.data.copy(), shuffled.indices.copy())
    table = moran(adata, copy=True)
    assert np.allclose(table["statistic"], reference["statistic"], equal_nan=True, atol=1e-12)
    assert np.array_equal(shuffled.data, before[0]) and np.array_equal(shuffled.indices, before[1])


@pytest.mark.parametrize("method", [moran, geary])
def test_csr_input_gives_the_same_table_as_csc_chunk_by_chunk(method):
    adata = tissue(n_spots=300, n_genes=23, seed=4)
    by_rows = method(adata, chunk_size=4, n_permutations=20, copy=True)  # CSR, 6 chunks
    adata.X = sp.csc_matrix(adata.X)
    by_columns = method(adata, chunk_size=4, n_permutations=20, copy=True)
    pd.testing.assert_frame_equal(by_rows, by_columns, check_exact=True)


def test_randomization_variance_matches_permutation_distribution():
    adata = tissue(n_spots=30, n_genes=3, n_neighbors=4)
    w = dense_weights(adata, "row")
    x = adata.X.toarray()[:, 0]
    rng = np.random.default_rng(0)
    perms = np.array([rng.permutation(x) for _ in range(40_000)])
    z = perms - x.mean()
    s0 = w.sum()
    moran_null = 30 / s0 * np.einsum("pi,ij,pj->p", z, w, z) / (z[0] @ z[0])
    geary_null = np.array([naive_geary(p, w) for p in perms[:8000]])
    table_i = moran(adata, copy=True)
    table_c = geary(adata, copy=True)
    assert moran_null.var() == pytest.approx(table_i["variance_rand"].iloc[0], rel=0.03)
    assert moran_null.mean() == pytest.approx(table_i["expected"].iloc[0], abs=0.005)
    assert geary_null.var() == pytest.approx(table_c["variance_rand"].iloc[0], rel=0.06)


def test_null_pvalues_are_uniform_and_patterns_are_significant():
    rng = np.random.default_rng(11)
    n, p = 500, 200
    xy = rng.random((n, 2))
    adata = anndata.AnnData(sp.csr_matrix(np.log1p(rng.poisson(2.0, (n, p)))), obsm={"spatial": xy})
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    for func in (moran, geary):
        table = func(adata, copy=True)
        assert stats.kstest(table["pval"], "uniform").statistic < 0.1
        assert stats.kstest(table["pval_rand"], "uniform").statistic < 0.1
    pattern = adata[:, :2].copy()
    pattern.X = sp.csr_matrix(np.column_stack([xy[:, 0] + 0.1 * rng.random(n), xy.sum(1)]))
    for func in (moran, geary):
        table = func(pattern, copy=True)
        assert (table["pval"] < 1e-10).all() and (table["pval_rand"] < 1e-10).all()


def test_extreme_significance_has_finite_log10_pval():
    rng = np.random.default_rng(12)
    xy = rng.random((4000, 2))
    adata = anndata.AnnData(np.column_stack([xy[:, 0], xy[:, 1] ** 2]), obsm={"spatial": xy})
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    for func in (moran, geary):
        table = func(adata, copy=True)
        assert np.isfinite(table["log10_pval"]).all()
        assert (table["log10_pval"] < -300).all()
        assert (table["pval"] > 0).all() and (table["pval"] <= 1e-300).all()
        assert (table["qval"] > 0).all()


def test_moderate_pvalue_log10_agrees_with_pval():
    adata = tissue()
    table = moran(adata, copy=True).dropna()
    assert np.allclose(table["log10_pval"], np.log10(table["pval"]), rtol=1e-10)
    assert np.allclose(table["pval"], stats.norm.sf(table["zscore"]), rtol=1e-10)


def test_two_tailed_pvalues():
    adata = tissue()
    one = moran(adata, copy=True)
    two = moran(adata, two_tailed=True, copy=True)
    expected = 2 * stats.norm.sf(np.abs(one["zscore"]))
    assert np.allclose(two["pval"], np.minimum(expected, 1.0), equal_nan=True)
    assert np.allclose(two["log10_pval"], np.log10(two["pval"]), equal_nan=True)
    g = geary(adata, copy=True)
    assert np.allclose(g["pval"], stats.norm.cdf(g["zscore"]), equal_nan=True)


def test_constant_genes_give_nan_not_a_crash():
    adata = tissue(sparse=False)
    adata.X[:, 3] = 2.5  # constant but non-zero
    for func in (moran, geary):
        table = func(adata, copy=True)
        for gene in ("g3", "g11"):
            assert table.loc[gene, ["statistic", "zscore", "pval", "qval"]].isna().all()
        assert table.drop(index=["g3", "g11"])["pval"].notna().all()


def test_results_written_to_var_and_uns_and_input_unchanged():
    adata = tissue()
    x_before = adata.X.copy()
    graph_before = adata.obsp["spatial_connectivities"].copy()
    table = moran(adata, n_permutations=19)
    assert (adata.X != x_before).nnz == 0
    assert (adata.obsp["spatial_connectivities"] != graph_before).nnz == 0
    for column in table.columns:
        assert np.allclose(adata.var[f"moran_{column}"], table[column], equal_nan=True)
    params = adata.uns["spatiome"]["moran"]
    assert params["transformation"] == "row" and params["n_permutations"] == 19
    assert params["graph_built"] is None
    # A re-run on fewer genes without permutations leaves no stale values behind.
    moran(adata, genes=["g0", "g1"])
    assert "moran_pval_perm" not in adata.var
    assert adata.var["moran_statistic"].notna().sum() == 2
    # copy=True writes nothing.
    var_before = adata.var.copy()
    geary(adata, copy=True)
    pd.testing.assert_frame_equal(adata.var, var_before)
    assert "geary" not in adata.uns["spatiome"]


def test_gene_subsets_and_chunks_give_the_same_numbers():
    adata = tissue(n_genes=20)
    full = moran(adata, copy=True)
    subset = moran(adata, genes=["g7", "g2"], copy=True)
    assert list(subset.index) == ["g7", "g2"]
    pd.testing.assert_frame_equal(
        subset.drop(columns="qval"), full.loc[["g7", "g2"]].drop(columns="qval")
    )
    chunked = moran(adata, chunk_size=3, n_jobs=2, copy=True)
    pd.testing.assert_frame_equal(chunked, full)


def test_permutation_pvalues_are_deterministic_and_sensible():
    adata = tissue(n_spots=150, n_genes=10)
    a = moran(adata, n_permutations=199, random_state=4, copy=True)
    b = moran(adata, n_permutations=199, random_state=4, copy=True, chunk_size=2, n_jobs=2)
    c = moran(adata, n_permutations=199, random_state=5, copy=True)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["pval_perm"].dropna(), c["pval_perm"].dropna())
    values = a["pval_perm"].dropna()
    assert values.between(1 / 200, 1).all()
    assert np.isnan(a.loc["g9", "pval_perm"])
    strong = a["pval_rand"] < 1e-4
    assert (a.loc[strong, "pval_perm"] == 1 / 200).all()
    # Where the permutation test is not at its floor it agrees with randomization.
    moderate = a["pval_rand"].between(0.02, 0.98)
    assert np.allclose(a.loc[moderate, "pval_perm"], a.loc[moderate, "pval_rand"], atol=0.1)
    g = geary(adata, n_permutations=99, random_state=4, two_tailed=True, copy=True)
    assert g["pval_perm"].dropna().between(0.01, 1).all()


def test_missing_graph_builds_the_default_and_records_it():
    adata = tissue()
    del adata.obsp["spatial_connectivities"]
    del adata.obsp["spatial_distances"]
    with pytest.warns(UserWarning, match="building the default spatial graph"):
        table = moran(adata, copy=True)
    assert "spatial_connectivities" not in adata.obsp
    with pytest.warns(UserWarning):
        stored = moran(adata)
    pd.testing.assert_frame_equal(table, stored)
    assert adata.uns["spatiome"]["moran"]["graph_built"] == "knn"
    assert adata.uns["spatial_neighbors"]["params"]["n_neighbors"] == 6
    with pytest.raises(SpatiomeInputError, match="obsp\\['other'\\] is missing"):
        moran(adata, connectivity_key="other")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transformation": "r"}, "transformation"),
        ({"n_permutations": -1}, "n_permutations"),
        ({"genes": ["nope"]}, "not in adata.var_names"),
        ({"layer": "missing"}, "layers"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"n_jobs": 0}, "n_jobs"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(SpatiomeInputError, match=message):
        moran(tissue(n_spots=40, n_genes=3), **kwargs)


def test_non_finite_values_are_rejected():
    adata = tissue(sparse=False, n_spots=40, n_genes=3)
    adata.X[0, 0] = np.nan
    with pytest.raises(SpatiomeInputError, match="NaN"):
        moran(adata)


def test_agrees_with_squidpy_when_installed():
    sq = pytest.importorskip("squidpy")
    adata = tissue(n_spots=200, n_genes=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = sq.gr.spatial_autocorr(
            adata, mode="moran", n_perms=None, copy=True, genes=list(adata.var_names[:-1])
        )
    table = moran(adata, copy=True)
    ref = reference.reindex(table.index[:-1])
    assert np.allclose(ref["I"], table["statistic"].iloc[:-1], atol=1e-10)
    assert np.allclose(ref["var_norm"], table["variance_norm"].iloc[:-1], rtol=1e-10)
    positive = table["zscore"].iloc[:-1] > 0
    assert np.allclose(ref["pval_norm"][positive], table["pval"].iloc[:-1][positive], rtol=1e-8)


@pytest.mark.parametrize(
    ("method", "key", "stat"), [("moran", "moranI", "I"), ("geary", "gearyC", "C")]
)
def test_uns_table_in_squidpys_layout(method, key, stat):
    """uns["moranI"]/uns["gearyC"] as sq.gr.spatial_autocorr writes them, on the same graph.

    The statistics agree to 1e-10 (they differ by summation order only). pval_norm agrees
    to rtol 1e-8 with atol 1e-15: squidpy computes the upper tail as 1 - norm.cdf(z), which
    has absolute rounding error of about 1e-16 and is 0 below it, where norm.sf keeps full
    relative precision. The permutation columns are compared by name only: squidpy shuffles
    the rows of W alone, a different null from permuting the spots' values.
    """
    sq = pytest.importorskip("squidpy")
    adata = tissue(n_spots=200, n_genes=8)
    getattr(sm.svg, method)(adata, check_depth=False)
    ours = adata.uns[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = sq.gr.spatial_autocorr(
            adata, mode=method, copy=True, genes=list(adata.var_names[:-1])
        )
    assert list(ours.columns) == list(reference.columns)
    assert set(ours.index) == set(adata.var_names)
    assert list(ours.index[:-1]) == list(reference.index)  # same order; the constant gene last
    assert np.isnan(ours.iloc[-1][stat])
    tested = ours.iloc[:-1]
    assert np.allclose(tested[stat], reference[stat], rtol=0, atol=1e-10)
    assert np.allclose(tested["pval_norm"], reference["pval_norm"], rtol=1e-8, atol=1e-15)
    assert np.allclose(tested["var_norm"], reference["var_norm"], rtol=1e-12)
    getattr(sm.svg, method)(adata, n_permutations=19, check_depth=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        permuted = sq.gr.spatial_autocorr(
            adata, mode=method, n_perms=19, seed=0, copy=True, show_progress_bar=False
        )
    assert list(adata.uns[key].columns) == list(permuted.columns)
    assert {"pval_z_sim", "pval_sim", "var_sim", "pval_sim_fdr_bh"} <= set(permuted.columns)
    assert adata.uns[key]["pval_sim"].min() >= 1 / 20


def test_uns_table_not_written_with_copy():
    adata = tissue(n_spots=60, n_genes=3)
    moran(adata, copy=True, check_depth=False)
    assert "moranI" not in adata.uns


def test_spatial_depth_pattern_warns_for_log_normalized_values_only():
    adata = sm.datasets.simulate_tissue(
        n_spots=800, n_genes=40, frac_spatial=0.0, depth_gradient=1.0, random_state=7
    )
    sm.graph.spatial_neighbors(adata)
    logged = adata.copy()
    sm.pp.normalize(logged)
    with pytest.warns(UserWarning, match="spatially autocorrelated"):
        moran(logged, copy=True)
    with pytest.warns(UserWarning, match="Geary's C"):
        geary(logged, copy=True)
    residuals = adata.copy()
    sm.pp.normalize(residuals, method="pearson")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moran(residuals, copy=True)
        moran(logged, copy=True, check_depth=False)
    flat = sm.datasets.simulate_tissue(n_spots=800, n_genes=40, frac_spatial=0.0, random_state=7)
    sm.graph.spatial_neighbors(flat)
    sm.pp.normalize(flat)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moran(flat, copy=True)
