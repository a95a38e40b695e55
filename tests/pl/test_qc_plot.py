"""pl.qc_violin: one panel per metric, one violin per group."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from spatiome._core.validate import SpatiomeInputError
from spatiome.pl import qc_violin


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((120, 1)))
    adata.obs["total_counts"] = rng.gamma(5.0, 100.0, size=120)
    adata.obs["n_genes_by_counts"] = rng.poisson(300, size=120).astype(float)
    adata.obs["pct_counts_mt"] = rng.uniform(0, 20, size=120)
    adata.obs["domain"] = pd.Categorical(np.repeat(["a", "b", "c", "d"], 30))
    return adata


def test_one_panel_per_metric_with_medians():
    adata = _adata()
    fig = qc_violin(adata)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    for ax, key in zip(
        fig.axes, ["total_counts", "n_genes_by_counts", "pct_counts_mt"], strict=True
    ):
        # Violin body + median dot; the dot sits at the median of the column.
        (dot,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        median_dot = dot.get_offsets()[0]
        assert median_dot[1] == pytest.approx(np.median(adata.obs[key]))
    assert fig.axes[2].get_title() == "Mitochondrial counts (%)"


def test_groupby_gives_one_violin_per_category():
    adata = _adata()
    fig = qc_violin(adata, keys=("total_counts",), groupby="domain")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    dots = [c.get_offsets()[0] for c in ax.collections if isinstance(c, PathCollection)]
    expected = adata.obs.groupby("domain", observed=True)["total_counts"].median()
    np.testing.assert_allclose([d[1] for d in dots], expected.to_numpy())
    np.testing.assert_allclose([d[0] for d in dots], [1, 2, 3, 4])


def test_missing_metric_names_the_fix():
    adata = _adata()
    with pytest.raises(SpatiomeInputError, match="qc_metrics"):
        qc_violin(adata, keys=("total_counts", "pct_counts_hb"))
