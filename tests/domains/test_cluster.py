"""domains.leiden and domains.kmeans on simulated tissues with known groups."""

from __future__ import annotations

import importlib

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
        adata, 4, method=method, neighbourhood_lambda=0.0, refine=0.0, n_top_genes=None,
        n_comps=10, copy=True,
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


# --- small domains: refits in cluster, merge_small_domains for any labels ---------------


def _blobs_with_outliers(seed: int = 0) -> ad.AnnData:
    """Four groups of 50 points and two far, lone points (a clusterer's one-spot domains)."""
    rng = np.random.default_rng(seed)
    centers = np.repeat(np.eye(4) * 8, 50, axis=0)
    lone = [[30.0, 30.0, 30.0, 30.0], [-30.0, 30.0, -30.0, 30.0]]
    adata = ad.AnnData(np.zeros((202, 1)))
    adata.obsm["X_feat"] = np.vstack([centers + rng.normal(size=(200, 4)), lone])
    adata.obs["group"] = pd.Categorical(np.repeat(["a", "b", "c", "d", "lone"], [50] * 4 + [2]))
    return adata


@pytest.mark.parametrize("method", ["gmm", "kmeans", "hierarchical"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cluster_refits_without_lone_spots(method, seed):
    from spatiome.domains import cluster

    adata = _blobs_with_outliers(seed)
    raw = cluster(adata, 6, method=method, use_rep="X_feat", min_domain_size=1, copy=True)
    # Without the refit the clusterer spends two of six domains on the two lone points.
    assert sorted(raw.obs["spatial_domain"].value_counts())[:2] == [1, 1]
    result = cluster(adata, 6, method=method, use_rep="X_feat", copy=True)
    sizes = result.obs["spatial_domain"].value_counts()
    assert len(sizes) == 6 and sizes.min() >= 5
    record = result.uns["spatiome"]["spatial_domain"]
    assert record["refits"] >= 1 and record["set_aside_spots"] == 2
    assert record["merged_domains"] == 0 and record["min_domain_size"] == 5
    # The four groups stay whole: each lies in domains that hold nothing of the others.
    core = result.obs.iloc[:200]
    crossed = pd.crosstab(core["spatial_domain"], core["group"].astype(str))
    assert ((crossed > 0).sum(axis=1) == 1).all()
    if method == "gmm":
        assert result.obs["spatial_domain_probability"].between(0, 1).all()


def test_cluster_merges_what_refits_cannot_fix():
    from spatiome.domains import cluster

    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((40, 1)))
    adata.obsm["X_feat"] = np.vstack([
        np.repeat([[0.0, 0.0], [10.0, 0.0]], 18, axis=0) + rng.normal(size=(36, 2)),
        [[50.0, 50.0], [51.0, 50.0], [50.0, 51.0], [51.0, 51.0]],
    ])  # fmt: skip
    # Three domains of at least 15 spots cannot come out of 36 spots: the four far
    # points are merged into the nearest domain, with a warning.
    with pytest.warns(UserWarning, match="merged into the nearest domain; 2 domains remain"):
        result = cluster(adata, 3, use_rep="X_feat", min_domain_size=15, copy=True)
    assert result.obs["spatial_domain"].value_counts().tolist() == [22, 18]
    assert result.uns["spatiome"]["spatial_domain"]["merged_domains"] == 1
    assert result.obs["spatial_domain_probability"].iloc[36:].isna().all()


def test_cluster_min_domain_size_is_checked(tissue):
    from spatiome.domains import cluster

    for bad in (0, 2.5, True):
        with pytest.raises(SpatiomeInputError, match="min_domain_size"):
            cluster(tissue, 4, use_rep="X_pca", min_domain_size=bad)


@pytest.mark.parametrize(
    ("name", "n_domains", "options"),
    # Measured: with min_domain_size=1 the mixture returns four one-cell domains on the
    # seqFISH field (cells with 10-15% of the median count); six refits clear them. (On
    # the breast cancer section the smoothed features give no domain under 17 spots.)
    [("seqfish_field43", 5, {}), ("seqfish_field43", 6, {}), ("seqfish_field43", 7, {})],
)  # fmt: skip
def test_cluster_returns_no_tiny_domain_on_real_sections(shared_data, name, n_domains, options):
    import spatiome as sm
    from spatiome.domains import cluster

    adata = sm.datasets.load(name, data_dir=shared_data, download=False)
    normalize(adata)
    raw = cluster(adata, n_domains, min_domain_size=1, copy=True, **options)
    assert raw.obs["spatial_domain"].value_counts().min() <= 2
    cluster(adata, n_domains, **options)
    sizes = adata.obs["spatial_domain"].value_counts()
    assert len(sizes) == n_domains and sizes.min() >= 5
    assert adata.uns["spatiome"]["spatial_domain"]["refits"] >= 1


def _line_of_domains() -> ad.AnnData:
    """Forty spots in a row: a (0-19) and b (20-39), with spot 5 relabelled 'c'."""
    adata = ad.AnnData(np.zeros((40, 1)))
    adata.obs_names = [f"s{i}" for i in range(40)]
    adata.obsm["spatial"] = np.column_stack([np.arange(40.0), np.zeros(40)])
    labels = np.repeat(["a", "b"], 20).astype(object)
    labels[5] = "c"
    labels[30] = np.nan
    adata.obs["domain"] = pd.Categorical(labels, categories=["a", "b", "c"])
    # Expression puts spot 5 next to b's centroid, far from a's.
    adata.obsm["X_feat"] = np.where(np.arange(40) < 20, 0.0, 10.0)[:, None]
    adata.obsm["X_feat"][5] = 9.0
    return adata


def test_merge_small_domains_by_space_and_by_expression():
    from spatiome.domains import merge_small_domains

    adata = _line_of_domains()
    merge_small_domains(adata, "domain", key_added="by_space")
    merge_small_domains(adata, "domain", by="expression", use_rep="X_feat", key_added="by_expr")
    assert adata.obs["by_space"].iloc[5] == "a" and adata.obs["by_expr"].iloc[5] == "b"
    for key in ("by_space", "by_expr"):
        assert list(adata.obs[key].cat.categories) == ["a", "b"]
        assert pd.isna(adata.obs[key].iloc[30])
        assert adata.uns["spatiome"][key]["merged_small_domains"] == {"c": 1}
    # Everything else is unchanged, the input column included.
    same = np.delete(np.arange(40), [5, 30])
    merged = adata.obs["by_space"].astype(str).iloc[same]
    assert (merged == adata.obs["domain"].astype(str).iloc[same]).all()
    assert adata.obs["domain"].iloc[5] == "c"


def test_merge_small_domains_votes_and_keeps_the_method_record():
    from spatiome.domains import merge_small_domains

    adata = _line_of_domains()
    adata.uns["spatiome"] = {"domain": {"method": "bison"}}
    # Spot 19, moved to x = 19.6 and relabelled: its 6 nearest larger-domain spots are
    # 20, 21, 18, 22, 17, 16 (3 of b, 3 of a), and the tie goes to the nearest, 20 in b.
    adata.obs["domain"] = adata.obs["domain"].cat.add_categories("d")
    adata.obs.loc["s19", "domain"] = "d"
    adata.obsm["spatial"][19, 0] = 19.6
    result = merge_small_domains(adata, "domain", copy=True)
    assert result.obs["domain"].iloc[19] == "b" and result.obs["domain"].iloc[5] == "a"
    record = result.uns["spatiome"]["domain"]
    assert record["method"] == "bison" and record["merged_small_domains"] == {"c": 1, "d": 1}
    assert "merged_small_domains" not in adata.uns["spatiome"]["domain"]
    untouched = merge_small_domains(adata, "domain", min_size=1, copy=True)
    assert untouched.obs["domain"].equals(adata.obs["domain"])


def test_merge_small_domains_errors_and_all_small():
    from spatiome.domains import merge_small_domains

    adata = _line_of_domains()
    with pytest.raises(SpatiomeInputError, match="is missing"):
        merge_small_domains(adata, "nope")
    with pytest.raises(SpatiomeInputError, match="by must be one of"):
        merge_small_domains(adata, "domain", by="graph")
    with pytest.raises(SpatiomeInputError, match="min_size"):
        merge_small_domains(adata, "domain", min_size=0)
    with pytest.raises(SpatiomeInputError, match="n_neighbors"):
        merge_small_domains(adata, "domain", n_neighbors=0)
    with pytest.warns(UserWarning, match="nothing was merged"):
        merge_small_domains(adata, "domain", min_size=100)
    assert adata.obs["domain"].iloc[5] == "c"


def test_smooth_features_is_a_random_walk_on_the_symmetric_knn_graph():
    from spatiome.domains.cluster import smooth_features

    rng = np.random.default_rng(0)
    xy = rng.uniform(size=(200, 2))
    features = rng.normal(size=(200, 3))
    # Constants stay constant, and the mean over spots moves little.
    np.testing.assert_allclose(smooth_features(np.ones((200, 2)), xy, 6, 3), 1.0)
    once = smooth_features(features, xy, 6, 1)
    twice = smooth_features(features, xy, 6, 2)
    np.testing.assert_allclose(smooth_features(once, xy, 6, 1), twice)
    # Each step averages: the spread shrinks.
    assert twice.std(axis=0).max() < once.std(axis=0).max() < features.std(axis=0).max()
    # By hand for one spot: itself, its 6 nearest, and spots that count it among theirs.
    from scipy.spatial import cKDTree

    near = cKDTree(xy).query(xy, 7)[1][:, 1:]
    linked = {0, *near[0], *np.flatnonzero((near == 0).any(axis=1))}
    np.testing.assert_allclose(once[0], features[sorted(linked)].mean(axis=0))


def test_cluster_feature_choices_are_recorded_and_checked(tissue):
    from spatiome.domains import cluster

    result = cluster(tissue, 4, copy=True)
    record = result.uns["spatiome"]["spatial_domain"]
    assert record["neighbourhood"] == {
        "lambda": 0.5, "n_spatial_neighbors": 6, "smoothing_steps": 3
    }  # fmt: skip
    assert record["hvg_flavor"] in ("seurat_v3", "all") and record["n_comps"] <= 30
    assert record["clusterer"]["covariance_type"] == "tied"
    assert result.obsm["X_spatial_domain"].shape[1] == 2 * record["n_comps"]
    for bad, match in (
        ({"smoothing_steps": 0}, "smoothing_steps"),
        ({"smoothing_steps": 1.5}, "smoothing_steps"),
        ({"n_init": 0}, "n_init"),
        ({"covariance_type": "EEE"}, "covariance_type"),
        ({"n_spatial_neighbors": 0}, "n_spatial_neighbors"),
    ):
        with pytest.raises(SpatiomeInputError, match=match):
            cluster(tissue, 4, **bad)


def test_cluster_target_sum_reads_the_counts(tissue):
    from spatiome.domains import cluster

    n_genes = tissue.n_vars - 5  # genes selected on the counts
    scaled = cluster(tissue, 4, n_top_genes=n_genes, target_sum=1e4, copy=True)
    as_normalized = cluster(tissue, 4, n_top_genes=n_genes, target_sum=None, copy=True)
    every_gene = cluster(tissue, 4, n_top_genes=None, target_sum=1e4, copy=True)
    assert every_gene.uns["spatiome"]["spatial_domain"]["target_sum"] is None
    assert scaled.uns["spatiome"]["spatial_domain"]["target_sum"] == 1e4
    assert as_normalized.uns["spatiome"]["spatial_domain"]["target_sum"] is None
    assert not np.allclose(scaled.obsm["X_spatial_domain"], as_normalized.obsm["X_spatial_domain"])


# --- scale: exact PCA from the gene covariance, mixture fitted on a sample --------------


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("target_sum", [None, 1e4])
def test_exact_pca_matches_arpack_up_to_sign(monkeypatch, dense, target_sum):
    from sklearn.decomposition import PCA

    module = importlib.import_module("spatiome.domains.cluster")  # the name is a function too
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(rng.gamma(0.5, 2.0, size=(300, 80))))
    genes = np.sort(rng.choice(80, size=60, replace=False))
    values = counts.toarray().astype(np.float64)
    if target_sum is not None:
        library = values.sum(axis=1, keepdims=True)
        values = np.log1p(values * (target_sum / np.maximum(library, 1.0)))
    reference = PCA(n_components=12, svd_solver="arpack", random_state=0).fit_transform(
        values[:, genes]
    )
    monkeypatch.setattr(module, "_PCA_BLOCK_ENTRIES", 60 * 70)  # five blocks of rows
    source = counts.toarray() if dense else counts
    blocks = module._ExpressionBlocks(source, genes, target_sum)
    scores = module._principal_components(blocks, 12)
    assert scores.shape == (300, 12)
    signs = np.sign((scores * reference).sum(axis=0))
    np.testing.assert_allclose(scores * signs, reference, atol=1e-8 * np.abs(reference).max())
    # The sign rule: each component's largest loading is positive, as svd_flip makes it.
    loadings = np.linalg.lstsq(values[:, genes] - values[:, genes].mean(axis=0), scores)[0]
    assert (loadings[np.abs(loadings).argmax(axis=0), np.arange(12)] > 0).all()


def test_cluster_features_are_the_principal_components_of_the_selected_genes(tissue):
    from sklearn.decomposition import PCA

    from spatiome.domains import cluster

    result = cluster(tissue, 4, neighbourhood_lambda=0.0, n_top_genes=None, n_comps=8, copy=True)
    reference = PCA(n_components=8, svd_solver="arpack", random_state=0).fit_transform(
        np.asarray(tissue.X.toarray(), dtype=np.float64)
    )
    features = result.obsm["X_spatial_domain"].astype(np.float64)
    signs = np.sign((features * reference).sum(axis=0))
    np.testing.assert_allclose(features * signs, reference, atol=1e-5 * np.abs(reference).max())


def test_cluster_above_the_fit_cap_agrees_with_the_full_fit():
    import spatiome as sm
    from spatiome.domains import cluster

    adata = sm.datasets.simulate_tissue(n_spots=3000, n_genes=200, n_domains=5, random_state=1)
    normalize(adata)
    capped = cluster(adata, 5, n_comps=10, n_top_genes=None, max_fit_spots=500, copy=True)
    full = cluster(capped, 5, use_rep="X_spatial_domain", max_fit_spots=None, copy=True)
    record = capped.uns["spatiome"]["spatial_domain"]["clusterer"]
    assert record["fit_spots"] == 500 and record["max_fit_spots"] == 500
    assert full.uns["spatiome"]["spatial_domain"]["clusterer"]["fit_spots"] == 3000
    # Measured on simulated seeds 0-3 with a cap of 500 of 3,000 spots: ARI 0.985-0.998
    # against the fit on all spots, and within 0.01 of its ARI against the truth (0.96
    # here). Every spot is labelled, and the small-domain rule still holds.
    labels, reference = capped.obs["spatial_domain"], full.obs["spatial_domain"]
    assert labels.notna().all() and labels.value_counts().min() >= 5
    assert adjusted_rand_score(reference, labels) > 0.97
    assert adjusted_rand_score(adata.obs["domain"], labels) > 0.93
    # The sample is drawn under the seed: the same call gives the same domains.
    again = cluster(capped, 5, use_rep="X_spatial_domain", max_fit_spots=500, copy=True)
    assert again.obs["spatial_domain"].equals(labels)
    with pytest.raises(SpatiomeInputError, match="max_fit_spots"):
        cluster(capped, 5, use_rep="X_spatial_domain", max_fit_spots=3)
