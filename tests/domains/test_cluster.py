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


# --- Ward, Gaussian mixture and neighbourhood-augmented domains -------------------------


def test_ward_matches_scipy_on_unit_weights():
    from scipy.cluster.hierarchy import fcluster, ward

    from spatiome.domains._ward import _nn_chain, ward_labels

    rng = np.random.default_rng(3)
    points = rng.normal(size=(400, 4))
    linkage = ward(points)
    _, _, heights = _nn_chain(points, np.ones(400))
    np.testing.assert_allclose(np.sort(np.sqrt(heights)), linkage[:, 2], rtol=1e-9)
    for k in (2, 5, 11):
        expected = fcluster(linkage, k, criterion="maxclust")
        assert adjusted_rand_score(expected, ward_labels(points, np.ones(400), k)) == 1.0


def test_weighted_ward_equals_ward_on_repeated_points():
    from scipy.cluster.hierarchy import fcluster, ward

    from spatiome.domains._ward import ward_labels

    rng = np.random.default_rng(4)
    points, weights = rng.normal(size=(60, 2)), rng.integers(1, 6, size=60)
    repeated = np.repeat(points, weights, axis=0)
    # A jitter far below the point spacing only breaks ties among the copies.
    expected = fcluster(ward(repeated + rng.normal(scale=1e-9, size=repeated.shape)), 5, "maxclust")
    got = np.repeat(ward_labels(points, weights.astype(float), 5), weights)
    assert adjusted_rand_score(expected, got) == 1.0


@pytest.mark.parametrize("max_exact", [10_000, 100])
def test_hierarchical_recovers_domains_exact_and_summarized(tissue, max_exact):
    from spatiome.domains import hierarchical

    result = hierarchical(tissue, 4, max_exact=max_exact, n_micro=150, copy=True)
    assert adjusted_rand_score(tissue.obs["domain"], result.obs["hierarchical"]) > 0.9
    assert result.uns["spatiome"]["hierarchical"]["summarized"] is (max_exact == 100)


def test_gaussian_mixture_recovers_domains_and_is_deterministic(tissue):
    from spatiome.domains import gaussian_mixture

    first = gaussian_mixture(tissue, 4, copy=True)
    second = gaussian_mixture(tissue, 4, copy=True)
    assert adjusted_rand_score(tissue.obs["domain"], first.obs["gmm"]) > 0.9
    assert first.obs["gmm"].equals(second.obs["gmm"])
    assert first.obs["gmm_probability"].between(0, 1).all()


def _weak_domains(seed: int = 0) -> ad.AnnData:
    """Four stripes whose markers are too weak for single spots but clear over neighbours."""
    rng = np.random.default_rng(seed)
    n_side, n_genes = 30, 60
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    domain = cols * 4 // n_side
    rate = np.full((rows.size, n_genes), 1.0)
    for d in range(4):
        rate[domain == d, 10 * d : 10 * d + 10] *= 1.6
    counts = sp.csr_matrix(rng.poisson(rate))
    adata = ad.AnnData(counts.copy(), var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    adata.obs_names = [f"s{i}" for i in range(rows.size)]
    adata.layers["counts"] = counts
    adata.obsm["spatial"] = np.column_stack([cols, rows]) * 100.0
    adata.obs["domain"] = pd.Categorical(domain.astype(str))
    normalize(adata)
    return adata


@pytest.mark.parametrize("method", ["gmm", "kmeans", "hierarchical", "leiden"])
def test_cluster_with_neighbourhood_beats_expression_alone(method):
    from spatiome.domains import cluster

    adata = _weak_domains()
    before = adata.copy()
    spatial = cluster(adata, 4, method=method, n_top_genes=None, n_comps=10, copy=True)
    plain = cluster(
        adata, 4, method=method, neighbourhood_lambda=0.0, n_top_genes=None, n_comps=10,
        copy=True,
    )  # fmt: skip
    truth = adata.obs["domain"]
    assert adjusted_rand_score(truth, spatial.obs["spatial_domain"]) > 0.8
    assert adjusted_rand_score(truth, plain.obs["spatial_domain"]) < 0.3
    assert spatial.obs["spatial_domain"].nunique() == 4
    assert spatial.uns["spatiome"]["spatial_domain"]["clusterer"]["method"] in (
        method,
        "gaussian_mixture",
    )
    # copy=True leaves the input untouched, and no expression graph is built or replaced.
    assert adata.obs.equals(before.obs) and set(adata.obsm) == set(before.obsm)
    assert "connectivities" not in spatial.obsp or method == "leiden"


def test_cluster_in_place_keeps_existing_reduction(tissue):
    from spatiome.domains import cluster

    adata = tissue.copy()
    pca, graph = adata.obsm["X_pca"].copy(), adata.obsp["connectivities"].copy()
    cluster(adata, 4, method="kmeans", n_top_genes=None)
    np.testing.assert_array_equal(adata.obsm["X_pca"], pca)
    assert (adata.obsp["connectivities"] != graph).nnz == 0
    assert adjusted_rand_score(adata.obs["spatial_domain"], tissue.obs["domain"]) > 0.9


def test_cluster_on_existing_representation_and_errors(tissue):
    from spatiome.domains import cluster

    result = cluster(tissue, 4, method="kmeans", use_rep="X_pca", copy=True)
    assert adjusted_rand_score(tissue.obs["domain"], result.obs["spatial_domain"]) > 0.9
    with pytest.raises(SpatiomeInputError, match="method must be one of"):
        cluster(tissue, 4, method="dbscan")
    with pytest.raises(SpatiomeInputError, match="neighbourhood_lambda"):
        cluster(tissue, 4, neighbourhood_lambda=1.5)
    with pytest.raises(SpatiomeInputError, match="n_clusters must be between"):
        cluster(tissue, 0)
    raw = _tissue()
    with pytest.raises(SpatiomeInputError, match="raw counts"):
        cluster(raw, 4)


@pytest.mark.parametrize(
    ("name", "label", "min_ari"),
    # Measured with these defaults: 0.423 (DLPFC 151673, 7 layers) and 0.418 (mouse
    # olfactory bulb, 5 layers); expression alone (lambda 0) gives 0.23 on DLPFC.
    [("dlpfc_151673", "layer_guess", 0.38), ("mouse_ob_rep11", "layer", 0.35)],
)
def test_cluster_on_real_layers(shared_data, name, label, min_ari):
    import spatiome as sm
    from spatiome.domains import cluster

    if not (shared_data / name).is_dir():
        pytest.skip(f"{name} not in {shared_data}")
    adata = sm.datasets.load(name, data_dir=shared_data, download=False)
    normalize(adata)
    truth = adata.obs[label]
    n_domains = int(truth.dropna().nunique())
    cluster(adata, n_domains)
    plain = cluster(adata, n_domains, neighbourhood_lambda=0.0, copy=True)
    keep = truth.notna().to_numpy()
    spatial_ari = adjusted_rand_score(truth[keep], adata.obs["spatial_domain"][keep])
    assert spatial_ari >= min_ari
    if name == "dlpfc_151673":
        plain_ari = adjusted_rand_score(truth[keep], plain.obs["spatial_domain"][keep])
        assert spatial_ari > plain_ari + 0.1
