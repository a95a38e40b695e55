"""Cell-type fraction plots: maps per type, dominant type, scatter-pies."""

from __future__ import annotations

import anndata
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

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
