"""domains.leiden and domains.kmeans on simulated tissues with known groups."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from spatiome._core.validate import SpatiomeInputError
from spatiome.domains import kmeans, leiden
from spatiome.pp import normalize, reduce


def _tissue(n_domains: int = 4, n_side: int = 20, n_genes: int = 50, seed: int = 0) -> ad.AnnData:
    """Vertical stripes of domains, each with six marker genes at an 8x higher rate."""
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    domain = cols * n_domains // n_side
    rate = np.tile(np.exp(rng.uniform(np.log(0.5), np.log(5.0), n_genes)), (rows.size, 1))
    for d in range(n_domains):
        rate[domain == d, 6 * d : 6 * d + 6] *= 8.0
    counts = sp.csr_matrix(rng.poisson(rate))
    adata = ad.AnnData(counts.copy(), var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    adata.obs_names = [f"s{i}" for i in range(rows.size)]
    adata.layers["counts"] = counts
    adata.obsm["spatial"] = np.column_stack([cols, rows]) * 100.0
    adata.obs["domain"] = pd.Categorical(domain.astype(str))
    return adata


@pytest.fixture(scope="module")
def tissue() -> ad.AnnData:
    adata = _tissue()
    normalize(adata)
    reduce(adata, n_comps=10, n_top_genes=None, umap=False, random_state=0)
    return adata


@pytest.mark.parametrize("resolution", [0.05, 1.0, 8.0])
def test_leiden_hits_requested_number_and_recovers_domains(tissue, resolution):
    adata = tissue.copy()
    leiden(adata, n_clusters=4, resolution=resolution, random_state=0)
    labels = adata.obs["leiden"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert labels.nunique() == 4
    assert adjusted_rand_score(adata.obs["domain"], labels) > 0.9
    record = adata.uns["spatiome"]["leiden"]
    assert record["n_clusters"] == 4 and record["requested_n_clusters"] == 4
    # The recorded resolution reproduces the labels.
    again = tissue.copy()
    leiden(again, resolution=record["resolution"], random_state=0)
    assert (again.obs["leiden"] == labels).all()


@pytest.mark.parametrize("n_clusters", [5, 6, 8])
def test_leiden_search_reaches_other_targets(tissue, n_clusters):
    adata = tissue.copy()
    leiden(adata, n_clusters=n_clusters, key_added="clusters")
    assert adata.obs["clusters"].nunique() == n_clusters
    assert "leiden" not in adata.obs


def test_leiden_deterministic_and_sorted_by_size(tissue):
    first, second = tissue.copy(), tissue.copy()
    leiden(first, resolution=4.0, random_state=3)
    leiden(second, resolution=4.0, random_state=3)
    assert (first.obs["leiden"] == second.obs["leiden"]).all()
    n_found = first.obs["leiden"].nunique()
    assert n_found > 10, "the test needs two-digit labels"
    assert list(first.obs["leiden"].cat.categories) == [str(i) for i in range(n_found)]
    sizes = first.obs["leiden"].value_counts().reindex(first.obs["leiden"].cat.categories)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_leiden_builds_graph_when_missing_without_clobbering(tissue):
    bare = ad.AnnData(tissue.X.copy(), obs=tissue.obs[["domain"]].copy())
    bare.obsm["X_pca"] = tissue.obsm["X_pca"].copy()
    leiden(bare, n_clusters=4)
    assert "connectivities" in bare.obsp and bare.uns["neighbors"]["params"]["use_rep"] == "X_pca"
    assert adjusted_rand_score(bare.obs["domain"], bare.obs["leiden"]) > 0.9

    other = tissue.copy()
    other.obsm["X_other"] = other.obsm["X_pca"][:, :5].copy()
    graph_before = other.obsp["connectivities"].copy()
    leiden(other, use_rep="X_other", n_clusters=4)
    assert (other.obsp["connectivities"] != graph_before).nnz == 0
    assert "neighbors_X_other" in other.uns
    assert other.uns["spatiome"]["leiden"]["use_rep"] == "X_other"


def test_leiden_warns_when_target_is_unreachable():
    # Four far-apart groups of points: the kNN graph has four components, so no
    # resolution can merge them into two clusters.
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((80, 1)))
    adata.obsm["X_pca"] = np.repeat(np.eye(4) * 1000, 20, axis=0) + rng.normal(size=(80, 4))
    with pytest.warns(UserWarning, match="no resolution gave 2 clusters"):
        leiden(adata, n_clusters=2, n_neighbors=5)
    assert adata.obs["leiden"].nunique() == 4


def test_leiden_copy_leaves_input_untouched(tissue):
    adata = tissue.copy()
    result = leiden(adata, n_clusters=4, copy=True)
    assert "leiden" in result.obs and "leiden" not in adata.obs
    assert "leiden" not in adata.uns.get("spatiome", {})


def test_kmeans_recovers_domains_and_is_deterministic(tissue):
    adata = tissue.copy()
    kmeans(adata, 4, random_state=0)
    assert adata.obs["kmeans"].nunique() == 4
    assert adjusted_rand_score(adata.obs["domain"], adata.obs["kmeans"]) > 0.9
    copy = kmeans(tissue, 4, random_state=0, copy=True)
    assert (copy.obs["kmeans"] == adata.obs["kmeans"]).all()
    assert "kmeans" not in tissue.obs
    sizes = adata.obs["kmeans"].value_counts().reindex(adata.obs["kmeans"].cat.categories)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_bad_input():
    adata = ad.AnnData(np.zeros((10, 2)))
    with pytest.raises(SpatiomeInputError, match="pp.reduce"):
        leiden(adata)
    with pytest.raises(SpatiomeInputError, match="pp.reduce"):
        kmeans(adata, 2)
    adata.obsm["X_pca"] = np.zeros((10, 2))
    with pytest.raises(SpatiomeInputError, match="n_clusters"):
        leiden(adata, n_clusters=11)
    with pytest.raises(SpatiomeInputError, match="n_clusters"):
        kmeans(adata, 0)
