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
    # Most of the 15 marker genes are selected.
    assert reduced.var["highly_variable"].iloc[:15].sum() >= 12
    # Seurat v3 on the counts layer (tests/pp/test_hvg.py checks it in detail).
    expected = sc.pp.highly_variable_genes(
        reduced, flavor="seurat_v3", layer="counts", n_top_genes=30, inplace=False
    )["highly_variable"].to_numpy()
    np.testing.assert_array_equal(reduced.var["highly_variable"].to_numpy(), expected)
    assert reduced.uns["spatiome"]["reduce"] == {
        "n_comps": 10,
        "n_top_genes": 30,
        "hvg_flavor": "seurat_v3",
        "n_neighbors": 10,
        "pca_solver": "covariance",
        "umap": True,
        "tsne": False,
        "random_state": 0,
        "key_added": "X_pca",
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


# --- neighbourhood-augmented PCA (BANKSY) --------------------------------------------------


def _reference_weights(xy: np.ndarray, k: int, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours and kernel weights from the full distance matrix (no ties in xy)."""
    full = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(full, np.inf)
    index = np.argsort(full, axis=1)[:, :k]
    dist = np.take_along_axis(full, index, axis=1)
    if kernel == "uniform":
        weights = np.ones_like(dist)
    else:
        width = np.median(dist, axis=1, keepdims=True)
        weights = np.exp(-(dist**2) / (2 * width**2))
    return index, weights / weights.sum(axis=1, keepdims=True)


def _reference_features(xy, expression, lam, k, kernel, agf):
    """The augmented matrix written out spot by spot, as BANKSY defines it."""
    n = expression.shape[0]
    index, weights = _reference_weights(xy, k, kernel)
    mean = np.stack([weights[i] @ expression[index[i]] for i in range(n)])
    if not agf:
        return np.hstack([np.sqrt(1 - lam) * expression, np.sqrt(lam) * mean])
    index2, weights2 = _reference_weights(xy, 2 * k, kernel)
    gabor = np.empty_like(expression)
    for i in range(n):
        offset = xy[index2[i]] - xy[i]
        phase = np.exp(1j * np.arctan2(offset[:, 1], offset[:, 0]))
        local = expression[index2[i]]
        centred = local - weights2[i] @ local
        gabor[i] = np.abs((weights2[i] * phase) @ centred)
    return np.hstack(
        [np.sqrt(1 - lam) * expression, np.sqrt(lam / 1.5) * mean, np.sqrt(lam / 3) * gabor]
    )


@pytest.mark.parametrize(
    ("lam", "kernel", "agf"),
    [(0.3, "gaussian", False), (0.8, "uniform", True), (0.5, "gaussian", True)],
)
def test_neighbourhood_pca_matches_dense_reference(lam, kernel, agf):
    adata = _tissue(n_side=10, n_genes=30)
    adata.obsm["spatial"] = np.random.default_rng(3).uniform(0, 1000, size=(adata.n_obs, 2))
    normalize(adata)
    reduce(
        adata,
        n_comps=6,
        n_top_genes=None,
        umap=False,
        n_neighbors=5,
        neighbourhood_lambda=lam,
        n_spatial_neighbors=8,
        spatial_kernel=kernel,
        agf=agf,
    )
    features = _reference_features(
        adata.obsm["spatial"], adata.X.toarray().astype(np.float64), lam, 8, kernel, agf
    )
    centred = features - features.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:6].T
    ours = adata.obsm["X_pca"].astype(np.float64)
    for k in range(6):
        sign = np.sign(ours[:, k] @ reference[:, k])
        np.testing.assert_allclose(sign * ours[:, k], reference[:, k], atol=1e-4 * singular[0])
    ratio = singular[:6] ** 2 / (centred**2).sum()
    np.testing.assert_allclose(adata.uns["pca"]["variance_ratio"], ratio, rtol=1e-5)
    assert "PCs" not in adata.varm  # loadings of augmented features are not per gene
    record = adata.uns["spatiome"]["reduce"]["neighbourhood"]
    assert record["lambda"] == lam and record["kernel"] == kernel and record["agf"] is agf
    assert record["agf_n_neighbors"] == (16 if agf else 0)


def test_lambda_zero_is_plain_pca(reduced):
    again = reduce(
        reduced, n_comps=10, n_top_genes=30, n_neighbors=10, umap=False,
        neighbourhood_lambda=0.0, key_added="X_lambda0", copy=True,
    )  # fmt: skip
    plain = reduced.obsm["X_pca"].astype(np.float64)
    augmented = again.obsm["X_lambda0"].astype(np.float64)
    for k in range(10):
        sign = np.sign(plain[:, k] @ augmented[:, k])
        np.testing.assert_allclose(sign * augmented[:, k], plain[:, k], atol=1e-3)
    # The plain embedding and its loadings stay where they were.
    np.testing.assert_array_equal(again.obsm["X_pca"], reduced.obsm["X_pca"])
    assert "PCs" in again.varm and "X_lambda0" in again.uns


@pytest.fixture(scope="module")
def layered_tissue() -> ad.AnnData:
    """Five layered domains told apart by a few weak domain genes among noisy ones."""
    from spatiome.datasets import simulate_tissue

    adata = simulate_tissue(
        n_spots=1500, n_genes=100, patterns=("domain",), effect_size=0.7, mean_depth=1000,
        frac_spatial=0.15, random_state=0,
    )  # fmt: skip
    normalize(adata)
    return adata


def _ari(truth, labels) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels))


def test_neighbourhood_embedding_recovers_domains_better(layered_tissue):
    from spatiome.domains import kmeans, leiden

    adata = layered_tissue.copy()
    options = dict(n_comps=10, n_top_genes=50, umap=False, random_state=0)
    reduce(adata, **options)
    reduce(adata, **options, neighbourhood_lambda=0.8, key_added="X_banksy")
    truth = adata.obs["domain"].cat.codes.to_numpy()
    kmeans(adata, 5, use_rep="X_pca", key_added="plain")
    kmeans(adata, 5, use_rep="X_banksy", key_added="banksy")
    plain, augmented = _ari(truth, adata.obs["plain"]), _ari(truth, adata.obs["banksy"])
    # Measured ARI: plain 0.31 (k-means) and 0.28 (Leiden); augmented 0.94 and 0.92.
    assert plain < 0.5
    assert augmented > 0.85 and augmented > plain + 0.4
    leiden(adata, n_clusters=5, use_rep="X_banksy", key_added="banksy_leiden")
    assert _ari(truth, adata.obs["banksy_leiden"]) > plain + 0.4


def test_neighbourhood_embedding_deterministic_under_seed(layered_tissue):
    options = dict(
        n_comps=8, n_top_genes=40, n_neighbors=10, neighbourhood_lambda=0.2, agf=True,
        random_state=3, copy=True,
    )  # fmt: skip
    first = reduce(layered_tissue, **options)
    second = reduce(layered_tissue, **options)
    np.testing.assert_array_equal(first.obsm["X_pca"], second.obsm["X_pca"])
    np.testing.assert_array_equal(first.obsm["X_umap"], second.obsm["X_umap"])
    assert (first.obsp["connectivities"] != second.obsp["connectivities"]).nnz == 0
    assert "X_pca" not in layered_tissue.obsm  # copy=True left the input alone


def test_neighbourhood_rejects_bad_arguments():
    adata = _tissue(n_side=6)
    normalize(adata)
    options = dict(n_comps=3, n_top_genes=None, umap=False)
    for bad in (-0.1, 1.5, True, "high"):
        with pytest.raises(SpatiomeInputError, match="neighbourhood_lambda"):
            reduce(adata, neighbourhood_lambda=bad, **options)
    with pytest.raises(SpatiomeInputError, match="also pass neighbourhood_lambda"):
        reduce(adata, agf=True, **options)
    with pytest.raises(SpatiomeInputError, match="spatial_kernel"):
        reduce(adata, neighbourhood_lambda=0.2, spatial_kernel="box", **options)
    with pytest.raises(SpatiomeInputError, match="n_spatial_neighbors"):
        reduce(adata, neighbourhood_lambda=0.2, n_spatial_neighbors=0, **options)
    with pytest.raises(SpatiomeInputError, match="tsne_backend"):
        reduce(adata, tsne_backend="bh", **options)
    with pytest.raises(SpatiomeInputError, match="obsm\\['xy'\\]"):
        reduce(adata, neighbourhood_lambda=0.2, spatial_key="xy", **options)
    adata.obsm["xyz"] = np.column_stack([adata.obsm["spatial"], np.zeros(adata.n_obs)])
    with pytest.raises(SpatiomeInputError, match="2-D"):
        reduce(adata, neighbourhood_lambda=0.2, agf=True, spatial_key="xyz", **options)
    reduce(adata, neighbourhood_lambda=0.2, spatial_key="xyz", **options)  # 3-D mean is fine
    assert adata.obsm["X_pca"].shape == (36, 3)


# --- t-SNE backends ---------------------------------------------------------------------


class _FakeTSNE:
    """Stands in for openTSNE.TSNE: records its arguments, returns the first two columns."""

    calls: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def fit(self, points):
        _FakeTSNE.calls.append((self.kwargs, points.shape))
        return points[:, :2] * 2.0


def test_tsne_uses_opentsne_when_asked(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "openTSNE", types.SimpleNamespace(TSNE=_FakeTSNE))
    _FakeTSNE.calls.clear()
    adata = _tissue(n_side=10, n_genes=12)
    normalize(adata)
    reduce(adata, n_comps=5, n_top_genes=None, umap=False, tsne=True, tsne_backend="auto")
    assert _FakeTSNE.calls == [({"perplexity": 30.0, "random_state": 0}, (100, 5))]
    np.testing.assert_allclose(adata.obsm["X_tsne"], adata.obsm["X_pca"][:, :2] * 2.0)
    assert adata.uns["spatiome"]["reduce"]["tsne_backend"] == "opentsne"
    assert adata.uns["tsne"]["params"]["backend"] == "opentsne"


def test_tsne_falls_back_to_scanpy_without_opentsne(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openTSNE", None)  # import now raises ImportError
    adata = _tissue(n_side=10, n_genes=12)
    normalize(adata)
    with pytest.warns(UserWarning, match="openTSNE is not installed"):
        reduce(adata, n_comps=5, n_top_genes=None, umap=False, tsne=True, tsne_backend="opentsne")
    assert adata.obsm["X_tsne"].shape == (100, 2)
    assert adata.uns["spatiome"]["reduce"]["tsne_backend"] == "scanpy"


def test_covariance_pca_equals_scanpy_arpack(reduced):
    """The exact covariance PCA gives scanpy's ARPACK components, loadings and variances."""
    reference = sc.pp.pca(
        reduced, n_comps=10, mask_var="highly_variable", svd_solver="arpack", copy=True
    )
    ours, theirs = reduced.obsm["X_pca"].astype(np.float64), reference.obsm["X_pca"]
    scale = np.abs(theirs).max()
    for k in range(10):
        sign = np.sign(ours[:, k] @ theirs[:, k])
        np.testing.assert_allclose(sign * ours[:, k], theirs[:, k], atol=1e-4 * scale)
        np.testing.assert_allclose(
            sign * reduced.varm["PCs"][:, k], reference.varm["PCs"][:, k], atol=1e-5
        )
    for key in ("variance", "variance_ratio"):
        np.testing.assert_allclose(reduced.uns["pca"][key], reference.uns["pca"][key], rtol=1e-4)


def test_covariance_pca_blocks_and_dense_input():
    """Blocks of rows (forced small) and a dense input give the one-block result."""
    import importlib

    module = importlib.import_module("spatiome.pp.reduce")

    x = sp.random(700, 50, density=0.2, random_state=1, format="csr", dtype=np.float32)
    whole = module.covariance_pca(x, 6)
    original = module._GRAM_BLOCK_ENTRIES
    module._GRAM_BLOCK_ENTRIES = 50 * 64  # 64 rows per block
    try:
        blocked = module.covariance_pca(x.toarray(), 6)
    finally:
        module._GRAM_BLOCK_ENTRIES = original
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    dense = x.toarray().astype(np.float64)
    centred = dense - dense.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(whole[2], singular[:6] ** 2 / 699, rtol=1e-8)
    np.testing.assert_allclose(np.abs(whole[1].T @ vt[:6].T), np.eye(6), atol=1e-6)


def test_umap_on_a_subsample_places_every_spot():
    """Above umap_max_spots the layout is fitted on a subsample; the rest sit among their
    expression neighbours, so the groups stay apart and every spot has a position."""
    adata = _tissue(n_side=30, n_genes=60)
    normalize(adata)
    reduce(adata, n_comps=10, n_top_genes=30, n_neighbors=10, umap_max_spots=300)
    embedding = adata.obsm["X_umap"]
    assert np.isfinite(embedding).all()
    record = adata.uns["spatiome"]["reduce"]["umap_subsample"]
    assert record == {"fitted": 300, "placed": adata.n_obs - 300, "unplaced": 0}
    # Each spot's nearest group centroid in the layout is its own group, as for the fit.
    groups = adata.obs["group"].to_numpy()
    centroids = np.stack([embedding[groups == g].mean(0) for g in ("0", "1", "2")])
    nearest = np.argmin(((embedding[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest.astype(str) == groups).mean() >= 0.95
    again = reduce(adata, n_comps=10, n_top_genes=30, n_neighbors=10, umap_max_spots=300, copy=True)
    np.testing.assert_array_equal(again.obsm["X_umap"], embedding)
    with pytest.raises(SpatiomeInputError, match="umap_max_spots"):
        reduce(adata, umap_max_spots=2, copy=True)
