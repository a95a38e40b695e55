"""domains.markers: Wilcoxon markers per domain, fractions, BISON columns; marker plots."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError


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
