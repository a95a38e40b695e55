"""domains.markers: Wilcoxon markers per domain, fractions, BISON columns; marker plots."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.domains import _wilcoxon as wilcoxon


@pytest.fixture(scope="module")
def tissue():
    adata = sm.datasets.simulate_tissue(
        n_spots=800, n_genes=120, n_domains=3, patterns=("domain",), frac_spatial=0.2,
        random_state=1,
    )  # fmt: skip
    sm.pp.normalize(adata)
    return adata


def _true_markers(adata):
    """Genes whose simulated mean differs between domains (pattern 'domain')."""
    return set(adata.var_names[adata.var["pattern"].astype(str) == "domain"])


def test_markers_rank_true_domain_genes_first(tissue):
    table = sm.domains.markers(tissue, "domain")
    assert set(table.columns) >= {
        "domain", "gene", "score", "logfoldchange", "pval", "qval", "fraction_in",
        "fraction_out",
    }  # fmt: skip
    assert len(table) == 3 * tissue.n_vars
    truth = _true_markers(tissue)
    assert truth, "the simulation should contain domain-level genes"
    top = {g for genes in sm.domains.top_markers(table, 5).values() for g in genes}
    assert len(top) >= 10
    # Every reported top marker is a simulated domain gene.
    assert top <= truth
    null = table[~table["gene"].isin(truth)]
    assert (null["qval"] < 0.05).mean() < 0.05


def test_fractions_match_a_direct_count(tissue):
    table = sm.domains.markers(tissue, "domain").set_index(["domain", "gene"])
    gene = tissue.var_names[7]
    column = np.asarray(tissue.X[:, 7].todense()).ravel() != 0
    for domain in tissue.obs["domain"].cat.categories:
        inside = (tissue.obs["domain"] == domain).to_numpy()
        row = table.loc[(str(domain), gene)]
        assert row["fraction_in"] == pytest.approx(column[inside].mean())
        assert row["fraction_out"] == pytest.approx(column[~inside].mean())


def test_markers_leave_adata_alone_except_uns(tissue):
    before = tissue.copy()
    sm.domains.markers(tissue, "domain", key_added="rg_test")
    assert "rg_test" in tissue.uns
    assert tissue.obs.equals(before.obs) and tissue.var.equals(before.var)
    assert (tissue.X != before.X).nnz == 0


def test_bison_columns_are_joined(tissue):
    adata = tissue.copy()
    rng = np.random.default_rng(0)
    adata.var["bison_prob_discriminating"] = rng.uniform(size=adata.n_vars)
    adata.var["bison_gene_group"] = rng.integers(0, 3, size=adata.n_vars)
    table = sm.domains.markers(adata, "domain")
    merged = table.drop_duplicates("gene").set_index("gene")["bison_prob_discriminating"]
    np.testing.assert_allclose(
        merged.loc[adata.var_names], adata.var["bison_prob_discriminating"].to_numpy()
    )
    with pytest.raises(SpatiomeInputError, match="other_prob_discriminating"):
        sm.domains.markers(tissue, "domain", bison_key="other")


def test_marker_errors(tissue):
    with pytest.raises(SpatiomeInputError, match="is missing"):
        sm.domains.markers(tissue, "nope")
    one = tissue.copy()
    one.obs["single"] = "a"
    with pytest.raises(SpatiomeInputError, match="at least two"):
        sm.domains.markers(one, "single")
    with pytest.raises(SpatiomeInputError, match="method must be one of"):
        sm.domains.markers(tissue, "domain", method="anova")


@pytest.mark.parametrize("kind", ["dotplot", "heatmap"])
def test_marker_plot_shows_top_genes(tissue, kind):
    table = sm.domains.markers(tissue, "domain")
    fig = sm.pl.markers(tissue, table, "domain", n_genes=2, kind=kind)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    expected = [g for genes in sm.domains.top_markers(table, 2).values() for g in genes]
    assert labels == list(dict.fromkeys(expected))
    plt.close(fig)


def test_module_scores_follow_module_genes(tissue):
    adata = tissue.copy()
    truth = sorted(_true_markers(adata))[:6]
    adata.var["test_module"] = ["m1" if g in truth else "-1" for g in adata.var_names]
    fig = sm.pl.module_scores(adata, "test_module")
    score = adata.obs["module_score_m1"].to_numpy()
    dense = np.asarray(adata[:, truth].X.todense(), dtype=np.float64)
    expected = ((dense - dense.mean(0)) / dense.std(0)).mean(1)
    np.testing.assert_allclose(score, expected, atol=1e-6)
    assert len([ax for ax in fig.axes if ax.get_visible()]) >= 1
    plt.close(fig)
    with pytest.raises(SpatiomeInputError, match="is missing"):
        sm.pl.module_scores(adata, "no_such_column")


# --- domains too small to test ----------------------------------------------------------


def _with_tiny_domains(adata):
    """The simulated domains plus a one-spot domain 'lone' and a two-spot domain 'pair'."""
    adata = adata.copy()
    labels = adata.obs["domain"].astype(str).to_numpy().copy()
    labels[0], labels[1], labels[2] = "lone", "pair", "pair"
    adata.obs["tiny"] = labels
    return adata


@pytest.mark.parametrize("method", ["wilcoxon", "t-test", "t-test_overestim_var", "logreg"])
def test_markers_skip_one_and_two_spot_domains(tissue, method):
    adata = _with_tiny_domains(tissue)
    with pytest.warns(UserWarning, match=r"2 domain\(s\) not tested: 'lone' \(1 spot\)"):
        table = sm.domains.markers(adata, "tiny", method=method)
    assert table.attrs["skipped_domains"] == {"lone": 1, "pair": 2}
    assert table.attrs["min_spots"] == 3 and "'pair' (2 spots)" in table.attrs["note"]
    assert set(table["domain"]) == {"Layer1", "Layer2", "Layer3"}
    assert len(table) == 3 * adata.n_vars
    record = adata.uns["spatiome"]["rank_genes_groups_tiny"]
    assert record["skipped_domains"] == {"lone": 1, "pair": 2}
    if method == "wilcoxon":
        # The large domains keep their true markers.
        top = {g for genes in sm.domains.top_markers(table, 5).values() for g in genes}
        assert len(top) >= 10 and top <= _true_markers(adata)


def test_min_spots_two_tests_the_pair_and_rest_keeps_skipped_spots(tissue):
    adata = _with_tiny_domains(tissue)
    with pytest.warns(UserWarning, match="'lone' \\(1 spot\\)"):
        table = sm.domains.markers(adata, "tiny", min_spots=2)
    assert table.attrs["skipped_domains"] == {"lone": 1}
    assert set(table["domain"]) == {"Layer1", "Layer2", "Layer3", "pair"}
    # The rest of a tested domain is the whole tissue, the skipped spot included.
    gene = adata.var_names[7]
    column = np.asarray(adata.X[:, 7].todense()).ravel() != 0
    inside = (adata.obs["tiny"] == "Layer1").to_numpy()
    row = table.set_index(["domain", "gene"]).loc[("Layer1", gene)]
    assert row["fraction_out"] == pytest.approx(column[~inside].mean())
    assert row["fraction_in"] == pytest.approx(column[inside].mean())


def test_no_testable_domain_gives_an_empty_table(tissue):
    adata = tissue.copy()
    adata.obs["almost_one"] = ["rare" if i == 0 else "bulk" for i in range(adata.n_obs)]
    adata.uns["rank_genes_groups_almost_one"] = {"stale": True}
    with pytest.warns(UserWarning, match="not tested"):
        table = sm.domains.markers(adata, "almost_one")
    assert table.empty and {"domain", "gene", "qval"} <= set(table.columns)
    assert table.attrs["skipped_domains"] == {"bulk": adata.n_obs - 1, "rare": 1}
    assert "rank_genes_groups_almost_one" not in adata.uns
    assert sm.domains.top_markers(table) == {}


def test_no_warning_and_empty_note_without_small_domains(tissue, recwarn):
    table = sm.domains.markers(tissue, "domain")
    assert table.attrs["skipped_domains"] == {} and table.attrs["note"] == ""
    assert not [w for w in recwarn if "not tested" in str(w.message)]


@pytest.mark.parametrize("bad", [1, 0, 2.5, True])
def test_min_spots_is_checked(tissue, bad):
    with pytest.raises(SpatiomeInputError, match="min_spots"):
        sm.domains.markers(tissue, "domain", min_spots=bad)


# --- the Wilcoxon kernel against scanpy and a dense reference ------------------------------


def _scanpy_wilcoxon(matrix, labels, var_names, groups):
    """scanpy's one-vs-rest Wilcoxon result (no tie correction) on the labelled spots."""
    sc = pytest.importorskip("scanpy")
    keep = ~pd.isna(labels)
    obs = pd.DataFrame({"g": pd.Categorical(labels[keep])}, index=np.flatnonzero(keep).astype(str))
    view = AnnData(X=matrix[keep], obs=obs)
    view.var_names = var_names
    view.uns["log1p"] = {"base": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            view, "g", groups=groups, method="wilcoxon", n_genes=len(var_names), pts=True
        )
    return view.uns["rank_genes_groups"], sc.get.rank_genes_groups_df(view, group=None)


def _assert_same_as_scanpy(adata, key, groups="all"):
    labels = adata.obs[key].to_numpy()
    reference, reference_table = _scanpy_wilcoxon(adata.X, labels, adata.var_names.copy(), groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sm.domains.markers(adata, key)
    result = adata.uns[f"rank_genes_groups_{key}"]
    assert list(result) == list(reference)
    assert result["params"] == {**reference["params"], "groupby": key}
    for column in ("scores", "pvals", "pvals_adj", "logfoldchanges"):
        assert result[column].dtype == reference[column].dtype
        for group in reference[column].dtype.names:
            np.testing.assert_allclose(
                result[column][group], reference[column][group], rtol=1e-10, atol=0
            )
    for group in reference["names"].dtype.names:
        assert list(result["names"][group]) == list(reference["names"][group])
    for column in ("pts", "pts_rest"):
        pd.testing.assert_frame_equal(result[column], reference[column], rtol=1e-12)
    expected = reference_table.rename(
        columns={"group": "domain", "names": "gene", "scores": "score",
                 "logfoldchanges": "logfoldchange", "pvals": "pval", "pvals_adj": "qval",
                 "pct_nz_group": "fraction_in", "pct_nz_reference": "fraction_out"}
    )  # fmt: skip
    expected["domain"] = expected["domain"].astype(str)
    pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-10)


def test_wilcoxon_equals_scanpy_with_skipped_and_unlabelled_spots(tissue):
    adata = _with_tiny_domains(tissue)
    adata.obs.loc[adata.obs_names[10:20], "tiny"] = np.nan
    tested = ["Layer1", "Layer2", "Layer3"]
    _assert_same_as_scanpy(adata, "tiny", groups=tested)
    _assert_same_as_scanpy(tissue.copy(), "domain")


def test_wilcoxon_equals_scanpy_on_a_dlpfc_section(shared_data):
    if not (shared_data / "dlpfc_151673").is_dir():
        pytest.skip("dlpfc_151673 not in the shared data")
    adata = sm.datasets.load("dlpfc_151673", data_dir=shared_data, download=False)
    sm.pp.normalize(adata)
    adata = adata[:, :800].copy()  # keeps the scanpy reference to a few seconds
    _assert_same_as_scanpy(adata, "layer_guess")


def _dense_rank_sums(dense, codes, n_groups):
    """Rank sums by scipy's rankdata on the dense matrix: slow but obviously right."""
    from scipy.stats import rankdata

    keep = codes >= 0
    ranks = rankdata(dense[keep], axis=0)
    return np.stack([ranks[codes[keep] == g].sum(axis=0) for g in range(n_groups)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_rank_sums_match_dense_ranks_with_ties_negatives_and_explicit_zeros(dtype, monkeypatch):
    rng = np.random.default_rng(3)
    dense = (rng.integers(-3, 6, size=(400, 37)) * (rng.random((400, 37)) < 0.4)).astype(dtype)
    dense[:, 5] = 0  # a gene never detected
    dense[:, 6] = 2  # a gene with one value everywhere
    matrix = sp.csr_matrix(dense)
    matrix.data[::7] = 0  # explicit zeros count as zeros
    dense = matrix.toarray()
    codes = rng.integers(-1, 4, size=400)
    for row in range(0, 400, 3):  # column indices out of order in some rows
        entries = slice(matrix.indptr[row], matrix.indptr[row + 1])
        matrix.indices[entries] = matrix.indices[entries][::-1]
        matrix.data[entries] = matrix.data[entries][::-1]
    matrix.has_sorted_indices = False
    monkeypatch.setattr(wilcoxon, "_BLOCK_ENTRIES", 500)  # several gene blocks
    result = wilcoxon.group_rank_sums(matrix, codes, 4)
    np.testing.assert_array_equal(result.rank_sums, _dense_rank_sums(dense, codes, 4))
    keep = codes >= 0
    for group in range(4):
        inside = dense[keep][codes[keep] == group]
        np.testing.assert_array_equal(result.nonzeros[group], (inside != 0).sum(axis=0))
        np.testing.assert_allclose(result.sums[group], inside.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(result.sizes, np.bincount(codes[keep], minlength=4))


def test_dense_input_and_a_layer_give_the_sparse_result(tissue):
    adata = tissue.copy()
    adata.layers["dense"] = adata.X.toarray()
    sparse_table = sm.domains.markers(adata, "domain")
    dense_table = sm.domains.markers(adata, "domain", layer="dense")
    pd.testing.assert_frame_equal(sparse_table, dense_table)


def test_nan_values_are_refused(tissue):
    adata = tissue.copy()
    adata.X = adata.X.copy()
    adata.X.data[3] = np.nan
    with pytest.raises(SpatiomeInputError, match="NaN"):
        sm.domains.markers(adata, "domain")
