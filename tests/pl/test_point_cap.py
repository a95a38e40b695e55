"""Plots of many spots draw at most ``max_points`` of them: a seeded subsample, enlarged
markers, a note saying so, colours and legends from every spot."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.collections import (
    EllipseCollection,
    PatchCollection,
    PathCollection,
    PolyCollection,
)

from spatiome._core.validate import SpatiomeInputError
from spatiome.pl import (
    cell_type_maps,
    dominant_cell_type,
    embedding,
    ligrec_local,
    module_scores,
    qc_spatial,
    qc_violin,
    scatter_pies,
    spatial,
)
from spatiome.pl._points import GRID_COVER, RASTERIZE_ABOVE, sample_points, sample_spots
from spatiome.pl.spatial import _default_spot_size

N_SIDE = 60  # 3,600 spots
CAP = 1000


def _tissue(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(N_SIDE * N_SIDE), N_SIDE)
    coords = np.column_stack([cols * 100.0 + (rows % 2) * 50.0, rows * 86.6])
    counts = sp.csr_matrix(rng.poisson(2.0, size=(rows.size, 6)).astype(np.float32))
    adata = ad.AnnData(counts, var=pd.DataFrame(index=[f"G{i}" for i in range(6)]))
    adata.obs_names = [f"s{i}" for i in range(rows.size)]
    adata.obsm["spatial"] = coords
    adata.obsm["X_umap"] = rng.normal(size=(rows.size, 2))
    adata.uns["spatial_unit"] = "um"
    adata.obs["domain"] = pd.Categorical(np.where(cols < N_SIDE // 2, "left", "right"))
    adata.obs["total_counts"] = np.asarray(counts.sum(axis=1)).ravel()
    adata.obs["n_genes_by_counts"] = np.asarray((counts > 0).sum(axis=1)).ravel().astype(float)
    adata.obs["local_outlier"] = rng.random(rows.size) < 0.02
    fractions = rng.dirichlet([1.0, 1.0, 1.0], size=rows.size)
    adata.obsm["cell_type_fractions"] = pd.DataFrame(
        fractions, index=adata.obs_names, columns=["A", "B", "C"]
    )
    return adata


@pytest.fixture(scope="module")
def tissue() -> ad.AnnData:
    return _tissue()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _spots(ax) -> list[EllipseCollection]:
    return [c for c in ax.collections if isinstance(c, EllipseCollection)]


def _note(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def test_sample_is_seeded_sorted_and_without_repeats():
    first = sample_points(5000, max_points=CAP, random_state=3)
    again = sample_points(5000, max_points=CAP, random_state=3)
    other = sample_points(5000, max_points=CAP, random_state=4)
    np.testing.assert_array_equal(first.index, again.index)
    assert not np.array_equal(first.index, other.index)
    assert first.n_drawn == CAP and first.subsampled
    assert np.all(np.diff(first.index) > 0)
    assert first.size_factor == pytest.approx(np.sqrt(5.0))
    assert sample_points(CAP, max_points=CAP).index is None
    assert not sample_points(CAP, max_points=CAP).subsampled
    assert sample_points(5000, max_points=None).n_drawn == 5000


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "many"])
def test_bad_max_points_is_one_clear_error(tissue, bad):
    with pytest.raises(SpatiomeInputError, match="max_points must be a positive integer"):
        spatial(tissue, "G0", max_points=bad)


@pytest.mark.parametrize("color", ["G0", "domain", "total_counts"])
def test_spatial_draws_at_most_the_cap_the_same_spots_each_time(tissue, color):
    ax = spatial(tissue, color, max_points=CAP, random_state=7)
    (spots,) = _spots(ax)
    offsets = np.asarray(spots.get_offsets())
    assert 0.9 * CAP <= len(offsets) <= CAP
    again = np.asarray(
        _spots(spatial(tissue, color, max_points=CAP, random_state=7))[0].get_offsets()
    )
    np.testing.assert_array_equal(offsets, again)
    other = np.asarray(
        _spots(spatial(tissue, color, max_points=CAP, random_state=8))[0].get_offsets()
    )
    assert not np.array_equal(offsets, other)
    # The drawn spots are spots of the data, each once.
    index = sample_spots(tissue.obsm["spatial"], CAP, 7).index
    np.testing.assert_array_equal(offsets, tissue.obsm["spatial"][index])
    assert spots.get_rasterized() == (len(offsets) > RASTERIZE_ABOVE)
    assert f"{len(offsets):,} of 3,600 spots drawn" in _note(ax)


def test_subsampled_spots_are_enlarged_to_cover_the_same_area(tissue):
    full = _spots(spatial(tissue, "G0", spot_size=100.0, max_points=None))[0]
    part = _spots(spatial(tissue, "G0", spot_size=100.0, max_points=CAP))[0]
    # EllipseCollection stores half-widths; the drawn spots cover the area of all spots,
    # times GRID_COVER**2 for the gaps of their grid.
    ratio = part._widths[0] / full._widths[0]
    drawn = len(part.get_offsets())
    assert drawn * ratio**2 == pytest.approx(tissue.n_obs * GRID_COVER**2)


def test_maps_draw_spots_spread_over_the_tissue(tissue):
    """One spot per grid cell: every spot has a drawn spot nearer than a random subsample
    of the same size leaves it."""
    from scipy.spatial import cKDTree

    coords = tissue.obsm["spatial"]
    even = sample_spots(coords, 400, random_state=0)
    plain = sample_points(len(coords), even.n_drawn, random_state=0)
    gap_even = cKDTree(even.take(coords)).query(coords)[0].max()
    gap_plain = cKDTree(plain.take(coords)).query(coords)[0].max()
    assert gap_even < 0.75 * gap_plain
    # The cell side is about sqrt(area / 400): no spot is farther than a cell's diagonal.
    side = np.sqrt(np.prod(np.ptp(coords, axis=0)) / 400)
    assert gap_even <= np.sqrt(2) * side
    line = np.column_stack([np.arange(5000.0), np.zeros(5000)])  # a degenerate tissue
    assert sample_spots(line, 100).n_drawn <= 100


def test_colours_and_legend_come_from_every_spot(tissue):
    values = tissue.X[:, [0]].toarray().ravel()
    spots = _spots(spatial(tissue, "G0", max_points=50, random_state=0))[0]
    assert spots.get_clim() == (values.min(), values.max())
    index = sample_spots(tissue.obsm["spatial"], 50, 0).index
    np.testing.assert_allclose(spots.get_array(), values[index])
    ax = spatial(tissue, "domain", max_points=5, random_state=0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["left", "right"]


def test_below_the_cap_everything_is_drawn_as_before(tissue):
    ax = spatial(tissue, "domain")  # 3,600 spots, default cap 100,000
    np.testing.assert_array_equal(_spots(ax)[0].get_offsets(), tissue.obsm["spatial"])
    assert _note(ax) == ""
    full = _spots(spatial(tissue, "domain", max_points=None))[0]
    np.testing.assert_array_equal(full.get_facecolors(), _spots(ax)[0].get_facecolors())


def test_outlines_keep_every_flagged_spot(tissue):
    ax = spatial(tissue, "total_counts", outline="local_outlier", max_points=CAP)
    fill, outline = _spots(ax)
    flagged = tissue.obsm["spatial"][tissue.obs["local_outlier"].to_numpy()]
    assert len(fill.get_offsets()) <= CAP
    np.testing.assert_array_equal(outline.get_offsets(), flagged)


def test_list_of_colours_and_qc_panels_draw_the_same_spots(tissue):
    fig = spatial(tissue, ["G0", "G1"], max_points=CAP, random_state=1)
    panels = [np.asarray(_spots(ax)[0].get_offsets()) for ax in fig.axes if _spots(ax)]
    assert len(panels) == 2 and np.array_equal(panels[0], panels[1])
    qc = qc_spatial(tissue, ["total_counts", "n_genes_by_counts"], max_points=CAP)
    fills = [np.asarray(_spots(ax)[0].get_offsets()) for ax in qc.axes if _spots(ax)]
    assert len(fills) == 2 and all(len(f) <= CAP for f in fills)
    assert np.array_equal(fills[0], fills[1])


def test_embedding_draws_at_most_the_cap(tissue):
    for color in ("domain", "G0"):
        ax = embedding(tissue, color, max_points=CAP, random_state=2)
        (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        offsets = np.asarray(points.get_offsets())
        assert offsets.shape == (CAP, 2)
        drawn = tissue.obsm["X_umap"][sample_points(tissue.n_obs, CAP, 2).index]
        assert set(map(tuple, offsets)) == set(map(tuple, drawn))
        assert "1,000 of 3,600 spots drawn" in _note(ax)
        again = embedding(tissue, color, max_points=CAP, random_state=2)
        np.testing.assert_array_equal(offsets, again.collections[0].get_offsets())
    # The default marker area follows the points drawn.
    few = embedding(tissue, "domain", max_points=1200).collections[0].get_sizes()[0]
    assert few == pytest.approx(24000 / 1200)


def test_maps_of_other_plots_use_the_cap(tissue):
    tissue = tissue.copy()
    scores = pd.DataFrame({"L^R": np.arange(tissue.n_obs, dtype=float)}, index=tissue.obs_names)
    tissue.obsm["ligrec_local"] = scores
    figures = [
        cell_type_maps(tissue, max_points=CAP),
        dominant_cell_type(tissue, max_points=CAP).figure,
        ligrec_local(tissue, max_points=CAP),
        module_scores(tissue, {"m": ["G0", "G1"]}, max_points=CAP),
    ]
    for figure in figures:
        for ax in figure.axes:
            for spots in _spots(ax):
                assert 0.9 * CAP <= len(spots.get_offsets()) <= CAP


def test_scatter_pies_keep_their_subset_and_grow(tissue):
    ax = scatter_pies(tissue, max_spots=200, random_state=0)
    values = tissue.obsm["cell_type_fractions"].to_numpy()
    reference = np.sort(np.random.default_rng(0).choice(tissue.n_obs, 200, replace=False))
    (pies,) = [c for c in ax.collections if isinstance(c, PatchCollection)]
    assert len(pies.get_paths()) == int((values[reference] > 0).sum())
    assert "200 of 3,600 spots drawn" in _note(ax)


def test_violin_density_from_a_subsample_matches_the_exact_one():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((20_000, 1), dtype=np.float32))
    adata.obs["total_counts"] = rng.lognormal(7.0, 0.5, size=adata.n_obs)
    exact = qc_violin(adata, ["total_counts"], max_points=None).axes[0]
    sampled = qc_violin(adata, ["total_counts"], max_points=4000, random_state=0).axes[0]

    def body(ax) -> np.ndarray:
        (violin,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
        vertices = violin.get_paths()[0].vertices
        return vertices[vertices[:, 0] >= 1.0]  # the right half: (half-width, value)

    right_exact, right_sampled = body(exact), body(sampled)
    # The same value range, and widths within 8% of the widest point at every value.
    assert right_sampled[:, 1].min() >= right_exact[:, 1].min()
    grid = np.linspace(*np.percentile(adata.obs["total_counts"], [1, 99]), 200)
    order_e, order_s = np.argsort(right_exact[:, 1]), np.argsort(right_sampled[:, 1])
    width_e = np.interp(grid, right_exact[order_e, 1], right_exact[order_e, 0] - 1.0)
    width_s = np.interp(grid, right_sampled[order_s, 1], right_sampled[order_s, 0] - 1.0)
    assert np.max(np.abs(width_e - width_s)) < 0.08 * width_e.max()
    # Quartiles and median come from every value.
    median = [c for c in sampled.collections if isinstance(c, PathCollection)][0]
    assert median.get_offsets()[0][1] == pytest.approx(np.median(adata.obs["total_counts"]))
    below = qc_violin(adata, ["total_counts"], max_points=None).axes[0]
    np.testing.assert_array_equal(body(below), right_exact)


def test_gene_maps_read_the_matrix_once_and_give_the_same_values(tissue):
    fig = spatial(tissue, ["G0", "G3", "domain"], max_points=None)
    arrays = [_spots(ax)[0].get_array() for ax in fig.axes if _spots(ax)][:2]
    for gene, values in zip(["G0", "G3"], arrays, strict=True):
        single = _spots(spatial(tissue, gene, max_points=None))[0].get_array()
        np.testing.assert_array_equal(values, single)


def test_default_spot_size_from_a_subset_matches_the_exact_median():
    rng = np.random.default_rng(1)
    coords = rng.random((30_000, 2)) * 1000.0
    exact = _default_spot_size(coords, max_points=None)
    estimate = _default_spot_size(coords, max_points=3000)
    assert estimate != exact
    assert estimate == pytest.approx(exact, rel=0.03)
    grid = np.column_stack(np.divmod(np.arange(10_000), 100)).astype(float) * 55.0
    assert _default_spot_size(grid, max_points=500) == pytest.approx(55.0)
