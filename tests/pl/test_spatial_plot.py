"""pl.spatial: spots, colours, legends, outlines and axis conventions."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.collections import EllipseCollection
from matplotlib.colors import to_rgba

from spatiome._core.validate import SpatiomeInputError
from spatiome.pl import save, spatial


def _tissue(n_side: int = 12, unit: str = "um", seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    x = cols * 100.0 + (rows % 2) * 50.0
    y = rows * 86.6
    domain = np.where(cols < n_side // 3, "cortex", np.where(cols < 2 * n_side // 3, "mid", "core"))
    rate = np.ones((rows.size, 8))
    rate[domain == "core", 0] = 15.0
    counts = sp.csr_matrix(rng.poisson(rate))
    adata = ad.AnnData(counts.copy(), var=pd.DataFrame(index=[f"G{i}" for i in range(8)]))
    adata.obs_names = [f"s{i}" for i in range(rows.size)]
    adata.layers["counts"] = counts
    adata.X = sp.csr_matrix(np.log1p(counts.toarray().astype(np.float32)))
    adata.obsm["spatial"] = np.column_stack([x, y])
    adata.uns["spatial_unit"] = unit
    adata.obs["domain"] = pd.Categorical(domain, categories=["cortex", "mid", "core"])
    adata.obs["total_counts"] = counts.sum(axis=1).A1.astype(float)
    adata.obs["flagged"] = adata.obs["total_counts"] < np.quantile(adata.obs["total_counts"], 0.1)
    return adata


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _spots(ax) -> list[EllipseCollection]:
    return [c for c in ax.collections if isinstance(c, EllipseCollection)]


def test_gene_colours_match_the_data_and_sparse_x_stays_sparse():
    adata = _tissue()
    ax = spatial(adata, "G0")
    spots = _spots(ax)
    assert len(spots) == 1
    np.testing.assert_allclose(spots[0].get_offsets(), adata.obsm["spatial"])
    np.testing.assert_allclose(spots[0].get_array(), adata.X[:, 0].toarray().ravel())
    assert sp.issparse(adata.X)
    # Colour bar labelled with the quantity.
    assert len(ax.figure.axes) == 2
    assert ax.figure.axes[1].get_ylabel() == "expression"
    counts = spatial(adata, "G0", layer="counts")
    np.testing.assert_allclose(
        _spots(counts)[0].get_array(), adata.layers["counts"][:, 0].toarray().ravel()
    )
    assert counts.get_title() == "G0"


def test_spot_size_defaults_to_nearest_neighbour_distance():
    adata = _tissue()
    spots = _spots(spatial(adata, "G1"))[0]
    # Hexagonal grid with 100 um centre distance: spots are 100 um wide in data units.
    np.testing.assert_allclose(spots.get_widths(), 100.0, rtol=1e-4)
    np.testing.assert_allclose(spots.get_heights(), 100.0, rtol=1e-4)
    bigger = _spots(spatial(adata, "G1", spot_size=150.0))[0]
    np.testing.assert_allclose(bigger.get_widths(), 150.0)


def test_categorical_legend_and_face_colours():
    adata = _tissue()
    adata.uns["domain_colors"] = ["#111111", "#777777", "#eeeeee"]
    ax = spatial(adata, "domain")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["cortex", "mid", "core"]
    assert legend.get_title().get_text() == "domain"
    faces = _spots(ax)[0].get_facecolors()
    expected = np.array([to_rgba(c) for c in adata.uns["domain_colors"]])
    np.testing.assert_allclose(faces, expected[adata.obs["domain"].cat.codes.to_numpy()])
    # No colour bar for categories.
    assert len(ax.figure.axes) == 1


def test_string_and_boolean_columns_are_categorical():
    adata = _tissue()
    adata.obs["label"] = np.where(adata.obs["flagged"], "low", "ok")
    ax = spatial(adata, "label")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["low", "ok"]
    ax = spatial(adata, "flagged")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["False", "True"]


def test_numeric_obs_with_missing_values():
    adata = _tissue()
    values = adata.obs["total_counts"].to_numpy().copy()
    values[:5] = np.nan
    adata.obs["total_counts"] = values
    ax = spatial(adata, "total_counts", vmax=10.0)
    spots = _spots(ax)[0]
    np.testing.assert_array_equal(np.isnan(spots.get_array()), np.isnan(values))
    assert spots.get_clim()[1] == 10.0
    assert ax.figure.axes[1].get_ylabel() == "total counts"


def test_outline_draws_exactly_the_flagged_spots():
    adata = _tissue()
    flagged = adata.obs["flagged"].to_numpy()
    assert 0 < flagged.sum() < adata.n_obs
    ax = spatial(adata, "G0", outline="flagged")
    spots, outline = _spots(ax)
    np.testing.assert_allclose(outline.get_offsets(), adata.obsm["spatial"][flagged])
    assert outline.get_facecolors().size == 0 or outline.get_facecolors()[0][3] == 0
    mask_ax = spatial(adata, "domain", outline=flagged)
    assert len(_spots(mask_ax)[1].get_offsets()) == flagged.sum()
    with pytest.raises(SpatiomeInputError, match="boolean"):
        spatial(adata, "G0", outline="total_counts")


@pytest.mark.parametrize("unit, inverted", [("pixel", True), ("um", False), ("array", False)])
def test_y_axis_points_down_for_pixels(unit, inverted):
    ax = spatial(_tissue(unit=unit), "G0")
    assert bool(ax.yaxis_inverted()) is inverted
    assert ax.get_aspect() == 1.0


def test_list_of_colours_gives_a_grid_figure():
    adata = _tissue()
    fig = spatial(adata, ["G0", "domain", "total_counts", "G2"], ncols=2)
    panels = [a for a in fig.axes if _spots(a)]
    assert len(panels) == 4
    assert [a.get_title() for a in panels] == ["G0", "domain", "total_counts", "G2"]
    with pytest.raises(SpatiomeInputError, match="single color"):
        spatial(adata, ["G0"], ax=panels[0])


def test_tissue_image_underneath():
    adata = _tissue(unit="pixel")
    image = np.zeros((60, 80, 3))
    adata.uns["spatial"] = {
        "lib": {"images": {"hires": image}, "scalefactors": {"tissue_hires_scalef": 0.05}}
    }
    ax = spatial(adata, "G0", show_image=True)
    assert len(ax.images) == 1
    assert ax.images[0].get_extent() == [0, 80 / 0.05, 60 / 0.05, 0]
    with pytest.raises(SpatiomeInputError, match="show_image"):
        spatial(_tissue(), "G0", show_image=True)


def test_unknown_colour_and_missing_coordinates():
    adata = _tissue()
    with pytest.raises(SpatiomeInputError, match="neither"):
        spatial(adata, "NOT_A_GENE")
    del adata.obsm["spatial"]
    with pytest.raises(SpatiomeInputError, match="spatial"):
        spatial(adata, "G0")


def test_rendered_png_is_valid(tmp_path):
    adata = _tissue()
    path = save(spatial(adata, "domain", outline="flagged"), tmp_path / "tissue.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["tissue.png"]
