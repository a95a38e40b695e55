"""pl.qc_violin: one panel per metric, one violin per group; pl.qc_spatial: metrics on the
tissue with QC-flagged spots outlined."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import EllipseCollection, PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from spatiome._core.validate import SpatiomeInputError
from spatiome.pl import qc_spatial, qc_violin


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


def _tissue() -> ad.AnnData:
    adata = _adata()
    rows, cols = np.divmod(np.arange(adata.n_obs), 12)
    adata.obsm["spatial"] = np.column_stack([cols, rows]) * 100.0
    adata.obs["local_outlier"] = np.arange(adata.n_obs) % 10 == 0
    adata.obs["artifact"] = (rows < 2) & (cols < 3)
    return adata


def _outlines(ax) -> list[EllipseCollection]:
    return [
        c
        for c in ax.collections
        if isinstance(c, EllipseCollection) and len(c.get_facecolors()) == 0
    ]


def test_qc_spatial_outlines_each_flag_in_its_own_row():
    adata = _tissue()
    fig = qc_spatial(adata, flag_colors=("red", "blue"))
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 6  # 2 flags x 3 metrics; the other axes are colour bars
    for row, (flag, color) in enumerate((("local_outlier", "red"), ("artifact", "blue"))):
        mask = adata.obs[flag].to_numpy()
        for ax in panels[3 * row : 3 * row + 3]:
            (outline,) = _outlines(ax)
            np.testing.assert_allclose(outline.get_offsets(), adata.obsm["spatial"][mask])
            np.testing.assert_allclose(outline.get_edgecolors()[0], to_rgba(color))
            assert ax.get_title().splitlines()[1] == f"{flag}: {int(mask.sum())} spots"
    assert panels[2].get_title().splitlines()[0] == "Mitochondrial counts (%)"


def test_qc_spatial_flag_selection():
    adata = _tissue()
    del adata.obs["artifact"]
    fig = qc_spatial(adata, metrics="total_counts")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        "Total counts\nlocal_outlier: 12 spots"
    ]
    bare = qc_spatial(adata, metrics=("total_counts", "pct_counts_mt"), flags=())
    panels = [ax for ax in bare.axes if ax.get_title()]
    assert len(panels) == 2 and not any(_outlines(ax) for ax in panels)
    with pytest.raises(SpatiomeInputError, match="find_artifacts"):
        qc_spatial(adata, flags="artifact")
    del adata.obs["local_outlier"]
    with pytest.raises(SpatiomeInputError, match="local_outliers"):
        qc_spatial(adata)
    with pytest.raises(SpatiomeInputError, match="qc_metrics"):
        qc_spatial(adata, metrics=("pct_counts_hb",), flags=())
    adata.obs["score"] = np.arange(adata.n_obs, dtype=float)
    with pytest.raises(SpatiomeInputError, match="boolean"):
        qc_spatial(adata, flags="score")


@pytest.mark.parametrize("empty", [0.0, np.nan])
def test_metrics_zero_or_missing_everywhere_get_no_panel(empty):
    adata = _tissue()
    adata.obs["pct_counts_mt"] = empty  # no mitochondrial genes in the panel
    titles = [ax.get_title() for ax in qc_violin(adata).axes]
    assert titles == ["Total counts", "Detected genes"]
    panels = [ax.get_title().splitlines()[0] for ax in qc_spatial(adata).axes if ax.get_title()]
    assert "Mitochondrial counts (%)" not in panels and len(panels) == 4
    del adata.obs["pct_counts_mt"]  # a default metric that is absent is skipped too
    assert len(qc_violin(adata).axes) == 2
    adata.obs["pct_counts_mt"] = empty
    with pytest.raises(SpatiomeInputError, match="zero or missing"):
        qc_violin(adata, keys=("pct_counts_mt",))


def test_flag_titles_count_cells_for_single_cell_data():
    adata = _tissue()
    adata.uns["spatiome"] = {"observation": "cell"}
    fig = qc_spatial(adata, metrics="total_counts", flags="local_outlier")
    (panel,) = [ax for ax in fig.axes if ax.get_title()]
    assert panel.get_title().splitlines()[1] == "local_outlier: 12 cells"
