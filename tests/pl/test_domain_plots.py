"""pl.markers, pl.module_scores and module labels: domain colours match the maps, and a
module of one gene is no module."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

import spatiome as sm
from spatiome.pl.domains import UNASSIGNED, module_labels, module_sizes


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tissue():
    adata = sm.datasets.simulate_tissue(n_spots=300, n_genes=30, n_domains=3, random_state=0)
    sm.pp.normalize(adata)
    return adata


@pytest.mark.parametrize(
    "values, genes, expected",
    [
        # Modules of one gene and "-1" are unassigned; missing values were not analysed.
        ([1.0, 1.0, 2.0, -1.0, np.nan], None, ["1", "1", UNASSIGNED, UNASSIGNED]),
        ([1.0, 1.0, 2.0, -1.0, np.nan], list("abcde"), ["1", "1", *[UNASSIGNED] * 3]),
        (["m1", "m1", "unassigned", "m2", None], None, ["m1", "m1", UNASSIGNED, UNASSIGNED]),
        (pd.array([3, 3, 3, pd.NA, 7], dtype="Int64"), None, ["3", "3", "3", UNASSIGNED]),
    ],
)
def test_module_labels(values, genes, expected):
    column = pd.Series(values, index=list("abcde"))
    assert module_labels(column, genes).tolist() == expected


def test_module_sizes_sort_numerically_with_unassigned_last():
    labels = pd.Series(["10", "2", "1", UNASSIGNED, "10", "2", "1", "11", "11"])
    assert list(module_sizes(labels).index) == ["1", "2", "10", "11", UNASSIGNED]


def test_module_scores_draw_modules_of_two_or_more_genes_only(tissue):
    adata = tissue.copy()
    module = np.full(adata.n_vars, np.nan)
    module[:7] = [1, 1, 1, 2, 5, 5, -1]  # module 2 has one gene
    adata.var["stihc_module"] = module
    fig = sm.pl.module_scores(adata, "stihc_module")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["module 1 (3 genes)", "module 5 (2 genes)"]
    fig = sm.pl.module_scores(adata, {"solo": [adata.var_names[0]]})
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["module solo (1 gene)"]


def test_marker_plot_labels_each_domain_on_its_map_colour(tissue):
    adata = tissue.copy()
    table = sm.domains.markers(adata, "domain")
    fig = sm.pl.markers(adata, table, "domain", n_genes=2)
    ax = fig.axes[0]
    spatial_ax = sm.pl.spatial(adata, "domain")
    legend = spatial_ax.get_legend()
    on_map = {
        t.get_text(): to_rgba(h.get_markerfacecolor())
        for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }
    labels = {t.get_text(): to_rgba(t.get_bbox_patch().get_facecolor()) for t in
              ax.get_yticklabels()}  # fmt: skip
    assert labels == on_map


def test_category_palette_is_fixed_by_the_names():
    palette = sm.pl.category_palette([str(i) for i in range(12)])
    subset = sm.pl.category_palette(["3", "11", "0"])
    assert list(palette)[:3] == ["0", "1", "2"] and len(set(palette.values())) == 12
    # A subset drawn on its own gets its own palette; drawn with the full set's, it keeps
    # the full set's colours: spatial() and the deconvolution plots pass the full mapping.
    assert set(subset) == {"0", "3", "11"}
    adata = sm.datasets.simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    adata.obs["label"] = pd.Categorical(np.where(np.arange(100) < 50, "3", "11"))
    ax = sm.pl.spatial(adata, "label", palette=palette)
    legend = ax.get_legend()
    shown = {t.get_text(): to_rgba(h.get_markerfacecolor()) for t, h in
             zip(legend.get_texts(), legend.legend_handles, strict=True)}  # fmt: skip
    assert shown == {"11": to_rgba(palette["11"]), "3": to_rgba(palette["3"])}
