"""Graph attention autoencoder domains (domains.gnn); skipped without the `deep` extra."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from spatiome._core.validate import SpatiomeInputError
from spatiome.datasets import simulate_tissue

torch = pytest.importorskip("torch")

from spatiome.domains.gnn import gnn  # noqa: E402

# Small and fast: a narrow model, few epochs, one thread (the suite shares 2 cores).
FAST = {"hidden_dims": (64, 8), "n_epochs": 120, "n_top_genes": None, "n_jobs": 1}
# The contrastive model is less accurate than the reconstruction on this small tissue
# (ARI about 0.6 over seeds): the test checks that it finds the domains well above chance.
CONTRASTIVE = {
    "hidden_dims": (64, 64), "n_epochs": 150, "n_pcs": 20, "n_top_genes": None, "n_jobs": 1,
}  # fmt: skip


@pytest.fixture(scope="module")
def tissue():
    return simulate_tissue(
        n_spots=600,
        n_genes=100,
        n_domains=4,
        patterns=("domain",),
        frac_spatial=0.3,
        random_state=3,
    )


@pytest.fixture(scope="module")
def fitted(tissue):
    return gnn(tissue, 4, copy=True, **FAST)


def test_recovers_simulated_domains(tissue, fitted):
    score = adjusted_rand_score(tissue.obs["domain"], fitted.obs["gnn"])
    assert score > 0.7
    assert fitted.obs["gnn"].cat.categories.tolist() == ["0", "1", "2", "3"]
    assert fitted.obsm["X_gnn"].shape == (600, 8)
    assert fitted.obsm["X_gnn"].dtype == np.float32
    record = fitted.uns["spatiome"]["gnn"]
    assert record["loss"].shape == (FAST["n_epochs"],)
    # Training lowers the reconstruction error.
    assert record["loss"][-10:].mean() < 0.9 * record["loss"][:10].mean()
    assert record["graph"]["n_edges"] > 0 and record["n_domains"] == 4


def test_input_untouched(tissue, fitted):
    assert "gnn" not in tissue.obs and "X_gnn" not in tissue.obsm
    assert "spatiome" not in tissue.uns or "gnn" not in tissue.uns["spatiome"]
    np.testing.assert_array_equal(tissue.X.toarray(), tissue.layers["counts"].toarray())
    assert set(fitted.obs.columns) - set(tissue.obs.columns) == {"gnn"}
    assert set(fitted.var.columns) == set(tissue.var.columns)
    assert set(fitted.obsm.keys()) - set(tissue.obsm.keys()) == {"X_gnn"}


def test_in_place_writes_outputs_only(tissue):
    adata = tissue.copy()
    before = adata.X.copy()
    assert gnn(adata, 4, key_added="dom", embedding_key="X_dom", **FAST) is None
    assert "dom" in adata.obs and "X_dom" in adata.obsm and "dom" in adata.uns["spatiome"]
    assert (adata.X != before).nnz == 0


def test_deterministic_under_seed(tissue, fitted):
    again = gnn(tissue, 4, copy=True, **FAST)
    np.testing.assert_array_equal(again.obsm["X_gnn"], fitted.obsm["X_gnn"])
    np.testing.assert_array_equal(again.obs["gnn"], fitted.obs["gnn"])
    np.testing.assert_array_equal(
        again.uns["spatiome"]["gnn"]["loss"], fitted.uns["spatiome"]["gnn"]["loss"]
    )
    other = gnn(tissue, 4, copy=True, random_state=1, **FAST)
    assert not np.allclose(other.obsm["X_gnn"], fitted.obsm["X_gnn"])


def test_global_torch_state_restored(tissue):
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    gnn(tissue, 2, copy=True, hidden_dims=(8, 2), n_epochs=2, n_jobs=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("method", ["kmeans", "leiden"])
def test_other_clusterings(tissue, method):
    out = gnn(
        tissue, 3, copy=True, cluster_method=method, hidden_dims=(16, 4), n_epochs=5, n_jobs=1
    )
    assert out.obs["gnn"].nunique() == 3


def test_extra_features_join_the_embedding(tissue):
    # A barely trained network (2 epochs) and strong per-spot domain scores: the scores
    # carry the clustering, and the embedding is the same with or without them.
    truth = tissue.obs["domain"].cat.codes.to_numpy()
    scores = np.eye(4)[truth] + np.random.default_rng(0).normal(scale=0.2, size=(600, 4))
    small = {"hidden_dims": (8, 2), "n_epochs": 2, "n_top_genes": None, "n_jobs": 1}
    plain = gnn(tissue, 4, copy=True, **small)
    guided = gnn(tissue, 4, copy=True, extra_features=scores, extra_weight=4.0, **small)
    assert adjusted_rand_score(truth, plain.obs["gnn"]) < 0.5
    assert adjusted_rand_score(truth, guided.obs["gnn"]) > 0.9
    np.testing.assert_array_equal(plain.obsm["X_gnn"], guided.obsm["X_gnn"])
    record = guided.uns["spatiome"]["gnn"]
    assert record["extra_features"] == 4 and record["extra_weight"] == 4.0


def test_precomputed_graph_and_radius(tissue):
    from spatiome.graph import spatial_neighbors

    adata = spatial_neighbors(tissue, method="knn", n_neighbors=4, copy=True)
    small = {"hidden_dims": (8, 2), "n_epochs": 2, "n_jobs": 1}
    out = gnn(adata, 2, graph_key="spatial_connectivities", copy=True, **small)
    assert (
        out.uns["spatiome"]["gnn"]["graph"]["n_edges"] == adata.obsp["spatial_connectivities"].nnz
    )
    out = gnn(tissue, 2, radius=150.0, copy=True, **small)
    assert out.uns["spatiome"]["gnn"]["graph"]["method"] == "radius"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_domains": 0}, "n_domains"),
        ({"n_domains": 601}, "n_domains"),
        ({"n_domains": 2.5}, "n_domains"),
        ({"n_domains": True}, "n_domains"),
        ({"hidden_dims": (16,)}, "hidden_dims"),
        ({"n_epochs": -1}, "n_epochs"),
        ({"cluster_method": "mclust"}, "cluster_method"),
        ({"covariance_type": "EEE"}, "covariance_type"),
        ({"n_pcs": 40}, "n_pcs"),
        ({"n_comps": 0}, "n_comps"),
        ({"objective": "dgi"}, "objective"),
        ({"hvg_flavor": "cell_ranger"}, "hvg_flavor"),
        ({"refine_neighbors": 0}, "refine_neighbors"),
        ({"refine_neighbors": 600}, "refine_neighbors"),
        ({"reconstruction_weight": -1.0}, "reconstruction_weight"),
        ({"graph_key": "nope"}, "obsp"),
        ({"layer": "nope"}, "layers"),
        ({"extra_features": "nope"}, "extra_features"),
        ({"extra_features": np.zeros((5, 2))}, "one row per spot"),
        ({"extra_features": np.zeros((600, 2)), "extra_weight": 0.0}, "extra_weight"),
    ],
)
def test_invalid_arguments(tissue, kwargs, match):
    kwargs = {"n_domains": 3, "n_epochs": 1, **kwargs}
    with pytest.raises(SpatiomeInputError, match=match):
        gnn(tissue, kwargs.pop("n_domains"), **kwargs)


def test_missing_coordinates_and_normalized_input(tissue):
    bare = tissue.copy()
    del bare.obsm["spatial"]
    bare.obs = bare.obs.drop(columns=["array_row", "array_col"], errors="ignore")
    with pytest.raises(SpatiomeInputError, match=r"obsm\['spatial'\] is missing"):
        gnn(bare, 3, n_epochs=1)
    normalized = tissue.copy()
    del normalized.layers["counts"]
    normalized.X = normalized.X.astype(np.float32) / 3.0
    with pytest.raises(SpatiomeInputError, match="counts"):
        gnn(normalized, 3, n_epochs=1)


def test_missing_torch_message(monkeypatch, tissue):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install "spatiome\[deep\]"'):
        gnn(tissue, 3, n_epochs=1)


def test_import_does_not_import_torch():
    code = (
        "import sys, spatiome, spatiome.domains, spatiome.domains.gnn; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _refine_reference(coordinates, labels, n_neighbors):
    """Slow refinement: full distance matrix, a loop over spots, explicit tie rule."""
    out = labels.copy()
    for i in range(labels.size):
        distance = np.linalg.norm(coordinates - coordinates[i], axis=1)
        distance[i] = np.inf
        nearest = np.argsort(distance, kind="stable")[:n_neighbors]
        counts = np.bincount(labels[nearest], minlength=labels.max() + 1)
        if counts[labels[i]] < counts.max():
            out[i] = int(np.argmax(counts))
    return out


@pytest.mark.parametrize(
    ("n_spots", "n_labels", "n_neighbors"), [(40, 2, 3), (80, 4, 6), (30, 3, 29)]
)
def test_refine_labels_matches_reference(n_spots, n_labels, n_neighbors):
    from spatiome.domains.gnn import refine_labels

    rng = np.random.default_rng(n_spots)
    # Distinct distances, so the neighbour sets are unambiguous.
    coordinates = rng.uniform(0, 10, size=(n_spots, 2))
    labels = rng.integers(0, n_labels, size=n_spots)
    refined = refine_labels(coordinates, labels, n_neighbors)
    np.testing.assert_array_equal(refined, _refine_reference(coordinates, labels, n_neighbors))
    assert refined.dtype == labels.dtype
    # A label already equal to its neighbourhood majority everywhere is a fixed point.
    constant = np.zeros(n_spots, dtype=int)
    np.testing.assert_array_equal(refine_labels(coordinates, constant, n_neighbors), constant)


def test_refinement_removes_isolated_labels(tissue):
    out = gnn(tissue, 4, copy=True, refine_neighbors=6, **FAST)
    raw = gnn(tissue, 4, copy=True, **FAST)
    truth = tissue.obs["domain"]
    assert adjusted_rand_score(truth, out.obs["gnn"]) >= adjusted_rand_score(truth, raw.obs["gnn"])
    assert out.uns["spatiome"]["gnn"]["refine_neighbors"] == 6


@pytest.fixture(scope="module")
def contrastive(tissue):
    return gnn(tissue, 4, copy=True, objective="contrastive", **CONTRASTIVE)


def test_contrastive_recovers_domains(tissue, contrastive):
    assert adjusted_rand_score(tissue.obs["domain"], contrastive.obs["gnn"]) > 0.5
    record = contrastive.uns["spatiome"]["gnn"]
    assert record["objective"] == "contrastive" and record["scale"]
    assert contrastive.obsm["X_gnn"].shape == (600, CONTRASTIVE["hidden_dims"][1])
    assert record["loss"][-10:].mean() < 0.9 * record["loss"][:10].mean()
    again = gnn(tissue, 4, copy=True, objective="contrastive", **CONTRASTIVE)
    np.testing.assert_array_equal(again.obsm["X_gnn"], contrastive.obsm["X_gnn"])
    np.testing.assert_array_equal(again.obs["gnn"], contrastive.obs["gnn"])


def test_decoded_scores_are_pca_of_the_product():
    from spatiome.domains._torch_gat import _decoded_scores

    rng = np.random.default_rng(0)
    smoothed, weight = rng.normal(size=(50, 4)), rng.normal(size=(4, 30))
    product = smoothed @ weight
    product -= product.mean(axis=0)
    _, values, right = np.linalg.svd(product, full_matrices=False)
    scores = _decoded_scores(smoothed, weight)
    # Same scores up to the sign of each component.
    expected = product @ right[:4].T
    np.testing.assert_allclose(np.abs(scores), np.abs(expected), atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(scores, axis=0), values[:4], rtol=1e-10)


# Mini-batch training: parts of the tissue with a 2-hop halo, and the device argument.
MINI = {**FAST, "minibatch": True, "batch_size": 200}


@pytest.mark.parametrize("objective", ["reconstruction", "contrastive"])
def test_minibatch_loss_and_embedding_are_exact_without_steps(tissue, objective):
    # With a zero learning rate the weights never move: each epoch's loss is the weighted
    # mean of the parts' losses, which must equal the full-graph loss (the contrastive
    # shuffles differ, so only its embedding is compared), and the embedding computed part
    # by part must equal the full-graph one.
    frozen = {**FAST, "hidden_dims": (32, 8), "n_epochs": 1, "learning_rate": 0.0}
    full = gnn(tissue, 4, copy=True, objective=objective, **frozen)
    parts = gnn(tissue, 4, copy=True, objective=objective, minibatch=True, batch_size=150,
                **frozen)  # fmt: skip
    record = parts.uns["spatiome"]["gnn"]
    assert record["minibatch"] and record["n_batches"] == 5
    np.testing.assert_allclose(parts.obsm["X_gnn"], full.obsm["X_gnn"], rtol=1e-5, atol=1e-5)
    if objective == "reconstruction":
        np.testing.assert_allclose(record["loss"], full.uns["spatiome"]["gnn"]["loss"], rtol=1e-6)


def test_minibatch_matches_full_batch_accuracy(tissue, fitted):
    out = gnn(tissue, 4, copy=True, **{**MINI, "n_epochs": 80})
    truth = tissue.obs["domain"]
    full_score = adjusted_rand_score(truth, fitted.obs["gnn"])
    assert adjusted_rand_score(truth, out.obs["gnn"]) > full_score - 0.1
    record = out.uns["spatiome"]["gnn"]
    assert record["n_batches"] == 3 and record["batch_size"] == 200
    assert record["loss"][-5:].mean() < 0.9 * record["loss"][:5].mean()


def test_minibatch_deterministic_under_seed(tissue):
    small = {**MINI, "hidden_dims": (16, 4), "n_epochs": 3}
    first, again = (gnn(tissue, 4, copy=True, **small) for _ in range(2))
    np.testing.assert_array_equal(first.obsm["X_gnn"], again.obsm["X_gnn"])
    np.testing.assert_array_equal(
        first.uns["spatiome"]["gnn"]["loss"], again.uns["spatiome"]["gnn"]["loss"]
    )
    other = gnn(tissue, 4, copy=True, random_state=1, **small)
    assert not np.allclose(other.obsm["X_gnn"], first.obsm["X_gnn"])


def test_minibatch_chosen_above_threshold(tissue, monkeypatch):
    module = sys.modules["spatiome.domains.gnn"]
    small = {"hidden_dims": (8, 2), "n_top_genes": None, "n_jobs": 1, "batch_size": 200}
    below = gnn(tissue, 2, copy=True, n_epochs=1, **small).uns["spatiome"]["gnn"]
    assert not below["minibatch"] and below["n_batches"] == 1
    monkeypatch.setattr(module, "MINIBATCH_MIN_SPOTS", 500)
    above = gnn(tissue, 2, copy=True, **small).uns["spatiome"]["gnn"]
    assert above["minibatch"] and above["n_batches"] == 3
    # The default epochs give as many Adam steps as the full-batch default (500).
    assert above["n_epochs"] == 167 and above["loss"].shape == (167,)


def test_device_auto_falls_back_to_cpu(tissue):
    out = gnn(tissue, 2, copy=True, device="auto", hidden_dims=(8, 2), n_epochs=2, n_jobs=1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert out.uns["spatiome"]["gnn"]["device"].startswith(expected)
    cpu = gnn(tissue, 2, copy=True, device="cpu", hidden_dims=(8, 2), n_epochs=2, n_jobs=1)
    if expected == "cpu":
        np.testing.assert_array_equal(out.obsm["X_gnn"], cpu.obsm["X_gnn"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_device_cuda_without_gpu_is_a_clear_error(tissue):
    with pytest.raises(SpatiomeInputError, match='device="cuda"'):
        gnn(tissue, 2, device="cuda", n_epochs=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("minibatch", [False, True])
def test_device_cuda_recovers_domains(tissue, fitted, minibatch):
    out = gnn(tissue, 4, copy=True, device="cuda", minibatch=minibatch, batch_size=200,
              **{**FAST, "n_epochs": 120 if not minibatch else 80})  # fmt: skip
    assert out.uns["spatiome"]["gnn"]["device"].startswith("cuda")
    assert out.obsm["X_gnn"].dtype == np.float32
    full_score = adjusted_rand_score(tissue.obs["domain"], fitted.obs["gnn"])
    assert adjusted_rand_score(tissue.obs["domain"], out.obs["gnn"]) > full_score - 0.1


def test_torch_sparse_products_match_scipy():
    # The GPU path multiplies with torch.sparse; on the CPU it must agree with scipy's.
    import scipy.sparse as sp

    from spatiome.domains._torch_gat import _Graph

    rng = np.random.default_rng(0)
    graph = sp.random(50, 50, density=0.1, random_state=1, format="csr", dtype=np.float32)
    graph = sp.csr_matrix(graph + sp.eye(50, dtype=np.float32))
    values = torch.from_numpy(rng.uniform(size=graph.nnz).astype(np.float32))
    features = torch.from_numpy(rng.normal(size=(50, 7)).astype(np.float32))
    with_scipy, with_torch = _Graph(graph), _Graph(graph, scipy_products=False)
    for transpose in (False, True):
        np.testing.assert_allclose(
            with_torch.multiply(values, features, transpose=transpose).numpy(),
            with_scipy.multiply(values, features, transpose=transpose).numpy(),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"minibatch": "yes"}, "minibatch"),
        ({"batch_size": 1}, "batch_size"),
        ({"batch_size": 10.5}, "batch_size"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_invalid_training_arguments(tissue, kwargs, match):
    with pytest.raises(SpatiomeInputError, match=match):
        gnn(tissue, 3, n_epochs=1, **kwargs)
