"""Cell-type fraction plots: maps per type, dominant type, scatter-pies."""

from __future__ import annotations

import anndata
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError


@pytest.fixture
def fractions_data():
    rng = np.random.default_rng(0)
    adata = anndata.AnnData(np.zeros((40, 2), dtype=np.float32))
    adata.obsm["spatial"] = rng.uniform(0, 1000, (40, 2))
    adata.uns["spatial_unit"] = "um"
    values = rng.dirichlet([1.0, 1.0, 1.0], 40)
    values[0] = np.nan  # a spot without an estimate
    adata.obsm["cell_type_fractions"] = pd.DataFrame(
        values, index=adata.obs_names, columns=["Astro", "Neuron", "Oligo"]
    )
    return adata


def test_cell_type_maps_share_one_scale(fractions_data):
    fig = sm.pl.cell_type_maps(fractions_data, cell_types=["Neuron", "Oligo"], ncols=2)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["Neuron", "Oligo"]
    limits = {tuple(ax.collections[0].get_clim()) for ax in titled}
    assert limits == {(0.0, 1.0)}
    plt.close(fig)


def test_dominant_type_and_missing_spots(fractions_data):
    ax = sm.pl.dominant_cell_type(fractions_data, min_fraction=0.5)
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert labels <= {"Astro", "Neuron", "Oligo"} and labels
    plt.close(ax.figure)


def test_scatter_pies_draw_one_wedge_per_present_type(fractions_data):
    ax = sm.pl.scatter_pies(fractions_data)
    expected = int((fractions_data.obsm["cell_type_fractions"].iloc[1:] > 0).to_numpy().sum())
    assert len(ax.collections[0].get_paths()) == expected
    plt.close(ax.figure)
    ax = sm.pl.scatter_pies(fractions_data, max_spots=10)
    assert len(ax.collections[0].get_paths()) <= 30
    plt.close(ax.figure)


def test_missing_fractions_is_a_clear_error(fractions_data):
    with pytest.raises(SpatiomeInputError, match="deconvolve"):
        sm.pl.cell_type_maps(fractions_data, key="absent")
    with pytest.raises(SpatiomeInputError, match="not in"):
        sm.pl.cell_type_maps(fractions_data, cell_types=["Microglia"])


def _legend_colors(ax) -> dict[str, tuple]:
    legend = ax.get_legend()
    return {
        text.get_text(): to_rgba(handle.get_markerfacecolor())
        for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }


def test_a_cell_type_has_one_colour_in_every_figure(fractions_data):
    # "Neuron" dominates nowhere: the dominant map must not shift the others' colours.
    values = fractions_data.obsm["cell_type_fractions"].to_numpy().copy()
    values[1:, 1] = 0.0
    fractions_data.obsm["cell_type_fractions"].iloc[:, :] = values
    dominant = _legend_colors(sm.pl.dominant_cell_type(fractions_data))
    pies = _legend_colors(sm.pl.scatter_pies(fractions_data))
    assert set(dominant) == {"Astro", "Oligo"} and set(pies) == {"Astro", "Neuron", "Oligo"}
    assert all(dominant[name] == pies[name] for name in dominant)
    expected = sm.pl.category_palette(["Astro", "Neuron", "Oligo"])
    assert pies == {name: to_rgba(color) for name, color in expected.items()}


def test_stored_cell_type_colours_win(fractions_data):
    fractions_data.uns["cell_type_fractions_colors"] = ["#000000", "#ff0000", "#00ff00"]
    pies = _legend_colors(sm.pl.scatter_pies(fractions_data))
    dominant = _legend_colors(sm.pl.dominant_cell_type(fractions_data))
    assert pies["Neuron"] == to_rgba("#ff0000")
    assert all(dominant[name] == pies[name] for name in dominant)
    plt.close("all")


def test_cell_types_absent_everywhere_get_no_map(fractions_data):
    fractions_data.obsm["cell_type_fractions"]["Oligo"] = 0.0
    fig = sm.pl.cell_type_maps(fractions_data)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["Astro", "Neuron"]
