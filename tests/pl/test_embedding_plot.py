"""pl.embedding: points, colours and legends on UMAP / t-SNE / PCA coordinates."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from spatiome._core.validate import SpatiomeInputError
from spatiome.pl import embedding


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _adata(n_obs: int = 90) -> ad.AnnData:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2.0, size=(n_obs, 4)).astype(np.float32))
    adata.var_names = ["A", "B", "C", "D"]
    adata.obs_names = [f"s{i}" for i in range(n_obs)]
    adata.obsm["X_umap"] = rng.normal(size=(n_obs, 2))
    adata.obsm["X_pca"] = rng.normal(size=(n_obs, 5))
    adata.obs["cluster"] = pd.Categorical(np.repeat(["x", "y", "z"], n_obs // 3))
    return adata


def test_numeric_points_carry_the_values():
    adata = _adata()
    ax = embedding(adata, "B")
    (points,) = ax.collections
    assert points.get_offsets().shape == (adata.n_obs, 2)
    # Drawn low to high: the same multiset of (position, value) pairs, sorted by value.
    values = np.asarray(adata.X[:, 1], dtype=float)
    order = np.argsort(values, kind="stable")
    np.testing.assert_allclose(points.get_array(), values[order])
    np.testing.assert_allclose(points.get_offsets(), adata.obsm["X_umap"][order])
    assert ax.get_xlabel() == "UMAP1" and ax.get_title() == "B"


def test_categorical_legend_and_colours():
    adata = _adata()
    ax = embedding(adata, "cluster", basis="pca")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "y", "z"]
    (points,) = ax.collections
    # Every point keeps its category colour wherever it is drawn in the order.
    offsets = points.get_offsets()
    faces = points.get_facecolors()
    palette = {c: to_rgba(plt.get_cmap("tab10")(i)) for i, c in enumerate(["x", "y", "z"])}
    lookup = {
        tuple(np.round(p, 8)): c
        for p, c in zip(adata.obsm["X_pca"][:, :2], adata.obs["cluster"], strict=True)
    }
    for point, face in zip(offsets, faces, strict=True):
        np.testing.assert_allclose(face, palette[lookup[tuple(np.round(point, 8))]])
    assert ax.get_xlabel() == "PC1"


def test_grid_and_errors():
    adata = _adata()
    fig = embedding(adata, ["A", "cluster"])
    assert [a.get_title() for a in fig.axes if a.get_xlabel() == "UMAP1"] == ["A", "cluster"]
    with pytest.raises(SpatiomeInputError, match="X_tsne"):
        embedding(adata, "A", basis="tsne")
