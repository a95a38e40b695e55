"""pp.reduce: gene selection, PCA, kNN graph and embeddings."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from spatiome._core.validate import SpatiomeInputError
from spatiome.pp import normalize, reduce


def _tissue(n_side: int = 18, n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Three expression groups, each with five marker genes at an 8x higher rate."""
    rng = np.random.default_rng(seed)
    n_obs = n_side * n_side
    group = np.arange(n_obs) % 3
    # Gene means spread over 1.5 decades, as in real data, so that the mean bins of the
    # seurat flavor hold markers and non-markers alike.
    rate = np.tile(np.exp(rng.uniform(np.log(0.3), np.log(10.0), n_genes)), (n_obs, 1))
    for g in range(3):
        rate[group == g, 5 * g : 5 * g + 5] *= 8.0
    counts = sp.csr_matrix(rng.poisson(rate))
    adata = ad.AnnData(counts.copy(), var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    adata.obs_names = [f"s{i}" for i in range(n_obs)]
    adata.layers["counts"] = counts
    adata.obs["group"] = pd.Categorical(group.astype(str))
    rows, cols = np.divmod(np.arange(n_obs), n_side)
    adata.obsm["spatial"] = np.column_stack([cols, rows]) * 100.0
    return adata


@pytest.fixture(scope="module")
def reduced() -> ad.AnnData:
    adata = _tissue()
    normalize(adata)
    reduce(adata, n_comps=10, n_top_genes=30, n_neighbors=10, random_state=0)
    return adata


def test_writes_standard_slots(reduced):
    n = reduced.n_obs
    assert reduced.obsm["X_pca"].shape == (n, 10)
    assert reduced.obsm["X_umap"].shape == (n, 2)
    assert reduced.obsp["connectivities"].shape == (n, n)
    assert reduced.obsp["distances"].shape == (n, n)
    assert int(reduced.var["highly_variable"].sum()) == 30
    # Most of the 15 marker genes are selected (seurat normalizes within mean bins, which
    # can rank a marker below a background gene of very different mean).
    assert reduced.var["highly_variable"].iloc[:15].sum() >= 12
    expected = sc.pp.highly_variable_genes(reduced, flavor="seurat", n_top_genes=30, inplace=False)[
        "highly_variable"
    ].to_numpy()
    np.testing.assert_array_equal(reduced.var["highly_variable"].to_numpy(), expected)
    assert reduced.uns["spatiome"]["reduce"] == {
        "n_comps": 10,
        "n_top_genes": 30,
        "hvg_flavor": "seurat",
        "n_neighbors": 10,
        "umap": True,
        "tsne": False,
        "random_state": 0,
    }
    # Each spot has n_neighbors - 1 neighbours besides itself in the distance graph.
    assert (np.diff(reduced.obsp["distances"].indptr) == 9).all()


def test_pca_matches_reference_on_selected_genes(reduced):
    mask = reduced.var["highly_variable"].to_numpy()
    dense = reduced.X[:, mask].toarray().astype(np.float64)
    centered = dense - dense.mean(axis=0)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    reference = centered @ vt[:10].T
    ours = reduced.obsm["X_pca"].astype(np.float64)
    for k in range(10):
        sign = np.sign(ours[:, k] @ reference[:, k])
        np.testing.assert_allclose(sign * ours[:, k], reference[:, k], atol=1e-3 * singular[0])


def test_deterministic_under_seed(reduced):
    again = _tissue()
    normalize(again)
    reduce(again, n_comps=10, n_top_genes=30, n_neighbors=10, random_state=0)
    np.testing.assert_array_equal(again.obsm["X_pca"], reduced.obsm["X_pca"])
    np.testing.assert_array_equal(again.obsm["X_umap"], reduced.obsm["X_umap"])
    assert (again.obsp["connectivities"] != reduced.obsp["connectivities"]).nnz == 0


def test_all_genes_clipped_components_and_tsne():
    adata = _tissue(n_side=10, n_genes=12)
    normalize(adata)
    reduce(adata, n_comps=50, n_top_genes=None, umap=False, tsne=True, n_neighbors=5)
    assert adata.var["highly_variable"].all()
    assert adata.obsm["X_pca"].shape == (100, 11)
    assert adata.obsm["X_tsne"].shape == (100, 2)
    assert "X_umap" not in adata.obsm
    assert adata.uns["spatiome"]["reduce"]["hvg_flavor"] == "all"


def test_pearson_normalized_input_uses_pearson_gene_selection():
    adata = _tissue(n_side=10)
    normalize(adata, method="pearson")
    reduce(adata, n_comps=5, n_top_genes=20, umap=False, n_neighbors=5)
    assert adata.uns["spatiome"]["reduce"]["hvg_flavor"] == "pearson_residuals"
    assert adata.var["highly_variable"].iloc[:15].sum() >= 12


def test_copy_leaves_input_untouched():
    adata = _tissue(n_side=10)
    normalize(adata)
    before = adata.copy()
    result = reduce(adata, n_comps=5, n_top_genes=20, umap=False, copy=True)
    assert "X_pca" in result.obsm and "X_pca" not in adata.obsm
    assert "highly_variable" not in adata.var
    assert adata.uns["spatiome"] == before.uns["spatiome"]


def test_rejects_raw_counts_and_bad_arguments():
    with pytest.raises(SpatiomeInputError, match="normalize"):
        reduce(_tissue(n_side=6), umap=False)
    adata = _tissue(n_side=6)
    normalize(adata)
    with pytest.raises(SpatiomeInputError, match="n_top_genes"):
        reduce(adata, n_top_genes=1, umap=False)
    with pytest.raises(SpatiomeInputError, match="n_comps"):
        reduce(adata, n_comps=0, umap=False)
