"""RNA + second-modality integration (integrate.multimodal); skipped without the `deep` extra."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from spatiome._core.validate import SpatiomeInputError
from spatiome.datasets import simulate_tissue

torch = pytest.importorskip("torch")

from spatiome.integrate.multimodal import (  # noqa: E402
    _cluster,
    _feature_graph,
    _protein_features,
    _rna_features,
    multimodal,
)

# Six domains; the RNA separates only the pairs {0, 1}, {2, 3}, {4, 5} and the protein panel
# only the even from the odd domains: neither modality alone can find all six.
RNA_PAIRS = np.array([0, 0, 1, 1, 2, 2])
PROTEIN_PARITY = np.array([0, 1, 0, 1, 0, 1])
ALL_SIX = np.arange(6)
NONE = np.zeros(6, dtype=np.int64)
# SpatialGlue's preset for protein (200 epochs, learning rate 1e-4) on one thread.
FAST = {"n_epochs": 200, "n_jobs": 1}
QUICK = {"n_epochs": 60, "learning_rate": 1e-3, "n_jobs": 1}


def simulate_pair(rna_groups, protein_groups, *, n_spots=600, seed=0):
    """RNA counts and a protein panel on one simulated tissue, each from domain groups."""
    tissue = simulate_tissue(
        n_spots=n_spots, n_genes=20, n_domains=6, domains="blobs", frac_spatial=0.0,
        random_state=seed,
    )  # fmt: skip
    codes = tissue.obs["domain"].cat.codes.to_numpy()
    rng = np.random.default_rng(seed)
    n_genes, n_proteins = 80, 15
    groups = rna_groups[codes]
    base = rng.lognormal(0.0, 1.0, n_genes)
    base /= base.sum()
    fold = np.zeros((groups.max() + 1, n_genes))
    markers = rng.choice(
        n_genes, size=(fold.shape[0], n_genes // (2 * fold.shape[0])), replace=False
    )
    fold[np.arange(fold.shape[0])[:, None], markers] = 1.0
    size = rng.lognormal(np.log(1500.0), 0.3, n_spots)
    mean = size[:, None] * base[None, :] * np.exp(fold[groups])
    rna = anndata.AnnData(
        sp.csr_matrix(rng.poisson(rng.gamma(10.0, mean / 10.0)).astype(np.float32)),
        obs=tissue.obs[["domain"]].copy(),
        obsm={"spatial": tissue.obsm["spatial"].copy()},
    )
    rna.var_names = [f"G{i}" for i in range(n_genes)]
    panel = protein_groups[codes]
    protein_fold = rng.normal(0.0, 0.8, (panel.max() + 1, n_proteins))
    protein_mean = 30.0 * rng.lognormal(0.0, 0.5, n_proteins) * np.exp(protein_fold[panel])
    protein = anndata.AnnData(
        rng.poisson(rng.gamma(5.0, protein_mean / 5.0)).astype(np.float32),
        obs=rna.obs[[]].copy(),
    )
    protein.var_names = [f"P{i}" for i in range(n_proteins)]
    return rna, protein


@pytest.fixture(scope="module")
def pair():
    return simulate_pair(RNA_PAIRS, PROTEIN_PARITY)


@pytest.fixture(scope="module")
def fitted(pair):
    rna, protein = pair
    return multimodal(rna, protein, n_domains=6, copy=True, **FAST)


def test_integration_beats_each_modality(pair, fitted):
    rna, protein = pair
    truth = rna.obs["domain"]
    integrated = adjusted_rand_score(truth, fitted.obs["multimodal"])
    # Each modality alone: its own embedding from the same model (spatial and feature
    # graphs) and its preprocessed principal components, clustered the same way.
    single = {
        "rna_embedding": _cluster(fitted.obsm["X_multimodal_rna"], 6, "tied", 20, 1, 0),
        "protein_embedding": _cluster(fitted.obsm["X_multimodal_protein"], 6, "tied", 20, 1, 0),
        "rna_pca": _cluster(_rna_features(rna.X, rna.var_names, None, 10, 14, 0)[0],
                            6, "tied", None, 1, 0),
        "protein_pca": _cluster(_protein_features(protein.X, 14, 0), 6, "tied", None, 1, 0),
    }  # fmt: skip
    scores = {name: adjusted_rand_score(truth, labels) for name, labels in single.items()}
    # Measured over seeds 0-3: integrated 0.99-1.0; RNA alone 0.42-0.55 (it sees three
    # groups), protein alone 0.20-0.25 (two groups).
    assert integrated > 0.9
    assert max(scores.values()) < 0.65
    assert integrated > max(scores.values()) + 0.3


def test_outputs(pair, fitted):
    rna, protein = pair
    assert fitted.obsm["X_multimodal"].shape == (rna.n_obs, 64)
    assert fitted.obsm["X_multimodal"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fitted.obsm["X_multimodal"], axis=1), 1.0, rtol=1e-5)
    weights = fitted.obsm["X_multimodal_weights"]
    assert weights.columns.tolist() == ["rna", "protein"]
    assert weights.index.equals(rna.obs_names)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert ((weights > 0) & (weights < 1)).all().all()
    views = fitted.obsm["X_multimodal_view_weights"]
    assert views.columns.tolist() == [
        "rna_spatial", "rna_feature", "protein_spatial", "protein_feature",
    ]  # fmt: skip
    np.testing.assert_allclose(views.iloc[:, :2].sum(axis=1), 1.0, atol=1e-12)
    assert fitted.obs["multimodal"].cat.categories.tolist() == [str(i) for i in range(6)]
    record = fitted.uns["spatiome"]["X_multimodal"]
    assert record["loss"].shape == (FAST["n_epochs"], 4)
    assert record["n_comps"] == [protein.n_vars - 1, protein.n_vars - 1]
    # Training lowers the weighted loss.
    weighted = record["loss"] @ np.asarray(record["loss_weights"])
    assert weighted[-5:].mean() < 0.9 * weighted[:5].mean()


def test_inputs_untouched(pair, fitted):
    rna, protein = pair
    assert "X_multimodal" not in rna.obsm and "multimodal" not in rna.obs
    assert "spatiome" not in rna.uns and "spatiome" not in protein.uns
    assert len(protein.obsm) == 0 and protein.X.dtype == np.float32


def test_deterministic_under_seed(pair):
    rna, protein = pair
    small = {**QUICK, "n_epochs": 15, "latent_dim": 16, "n_pcs": None}
    first = multimodal(rna, protein, n_domains=6, copy=True, random_state=5, **small)
    again = multimodal(rna, protein, n_domains=6, copy=True, random_state=5, **small)
    other = multimodal(rna, protein, copy=True, random_state=6, **small)
    np.testing.assert_array_equal(first.obsm["X_multimodal"], again.obsm["X_multimodal"])
    np.testing.assert_array_equal(
        first.obsm["X_multimodal_weights"], again.obsm["X_multimodal_weights"]
    )
    assert first.obs["multimodal"].equals(again.obs["multimodal"])
    assert not np.allclose(first.obsm["X_multimodal"], other.obsm["X_multimodal"])


def test_spot_order_of_other_modality_is_aligned(pair):
    rna, protein = pair
    small = {**QUICK, "n_epochs": 5, "latent_dim": 8}
    shuffled = protein[np.random.default_rng(1).permutation(protein.n_obs)].copy()
    direct = multimodal(rna, protein, copy=True, **small)
    aligned = multimodal(rna, shuffled, copy=True, **small)
    np.testing.assert_allclose(
        direct.obsm["X_multimodal"], aligned.obsm["X_multimodal"], rtol=1e-4, atol=1e-5
    )


def test_weights_shift_towards_informative_modality():
    # Only one modality carries the six domains, the other is noise. The loss weights are
    # equal here: the defaults (1, 5, 1, 10) favour the protein whatever it carries.
    # Measured over seeds 0-2 (500 spots): RNA weight 0.62-0.71 when only the RNA is
    # informative, 0.43-0.45 when only the protein is.
    settings = {"n_epochs": 200, "learning_rate": 1e-3, "n_jobs": 1, "latent_dim": 32,
                "loss_weights": (1, 1, 1, 1)}  # fmt: skip
    rna_weight = {}
    for name, rna_groups, protein_groups in (("rna", ALL_SIX, NONE), ("protein", NONE, ALL_SIX)):
        rna, protein = simulate_pair(rna_groups, protein_groups, n_spots=500, seed=1)
        out = multimodal(rna, protein, copy=True, **settings)
        weights = out.obsm["X_multimodal_weights"]
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
        rna_weight[name] = float(weights["rna"].mean())
    assert rna_weight["rna"] > 0.55
    assert rna_weight["protein"] < 0.5
    assert rna_weight["rna"] > rna_weight["protein"] + 0.1


def test_atac_and_image_modalities(pair):
    rna, _ = pair
    rng = np.random.default_rng(0)
    codes = rna.obs["domain"].cat.codes.to_numpy()
    peaks = rng.poisson(0.3 * np.exp(np.eye(6)[codes] @ rng.normal(0, 1.5, (6, 200))))
    atac = anndata.AnnData(sp.csr_matrix(peaks.astype(np.float32)), obs=rna.obs[[]].copy())
    out = multimodal(rna, atac, modality="atac", n_domains=6, copy=True, n_comps=10, **QUICK)
    assert out.obsm["X_multimodal_weights"].columns.tolist() == ["rna", "atac"]
    assert out.uns["spatiome"]["X_multimodal"]["n_comps"] == [10, 10]
    assert adjusted_rand_score(rna.obs["domain"], out.obs["multimodal"]) > 0.5
    image = anndata.AnnData(rng.normal(size=(rna.n_obs, 12)), obs=rna.obs[[]].copy())
    image.X[:, 0] -= 3.0  # image features may be negative
    out = multimodal(rna, image, modality="image", copy=True, **{**QUICK, "n_epochs": 5})
    assert out.uns["spatiome"]["X_multimodal"]["n_comps"] == [11, 11]


def test_feature_graph_is_sparse_symmetric_without_dense_matrix():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 5)).astype(np.float32)
    graph = _feature_graph(features, 10)
    assert sp.issparse(graph) and graph.shape == (300, 300)
    assert abs(graph - graph.T).max() < 1e-6
    # At least k neighbours plus the self loop per spot, far from dense.
    assert (np.diff(graph.indptr) >= 11).all() and graph.nnz < 300 * 25
    # Correlation neighbours: the same profile scaled and shifted is at distance 0.
    twin = np.vstack([features, 3.0 * features[:1] + 2.0])
    graph = _feature_graph(twin, 1)
    assert graph[0, 300] > 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("ids", "same spots"),
        ("nan_coordinates", "NaN or infinite coordinates"),
        ("missing_coordinates", "obsm\\['spatial'\\] is missing"),
        ("negative_protein", "negative values"),
        ("nan_protein", "NaN or infinite"),
        ("one_feature", "at least 2 features"),
        ("normalized_rna", "non-integer"),
        ("duplicate_ids", "duplicated spot names"),
        ("modality", "modality must be one of"),
        ("loss_weights", "loss_weights must be four"),
        ("n_domains", "n_domains must be"),
    ],
)
def test_bad_input(pair, change, match):
    rna, protein = pair
    rna, protein = rna[:60].copy(), protein[:60].copy()
    kwargs = {"n_epochs": 1, "n_feature_neighbors": 5}
    if change == "ids":
        protein.obs_names = [f"x{i}" for i in range(protein.n_obs)]
    elif change == "nan_coordinates":
        rna.obsm["spatial"][3, 0] = np.nan
    elif change == "missing_coordinates":
        del rna.obsm["spatial"]
    elif change == "negative_protein":
        protein.X[0, 0] = -1.0
    elif change == "nan_protein":
        protein.X[0, 0] = np.nan
    elif change == "one_feature":
        protein = protein[:, :1].copy()
    elif change == "normalized_rna":
        rna.X = rna.X * 0.5
    elif change == "duplicate_ids":
        names = rna.obs_names.tolist()
        names[1] = names[0]
        rna.obs_names = names
    elif change == "modality":
        kwargs["modality"] = "rna"
    elif change == "loss_weights":
        kwargs["loss_weights"] = (1, 2, 3)
    elif change == "n_domains":
        kwargs["n_domains"] = 0
    with pytest.raises(SpatiomeInputError, match=match):
        multimodal(rna, protein, **kwargs)


def test_clear_error_without_torch(pair, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    rna, protein = pair
    with pytest.raises(ImportError, match=r"spatiome\[deep\]"):
        multimodal(rna, protein, n_epochs=1)


def test_import_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, spatiome, spatiome.integrate.multimodal, spatiome.integrate.image; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# Mini-batch training (parts of the tissue with the rows their loss needs) and devices.


def test_minibatch_loss_is_exact_without_steps(pair):
    # With a zero learning rate the weights never move: the epoch's loss terms, averaged
    # over the parts by their spots, must equal the full-graph terms.
    rna, protein = pair
    frozen = {"n_epochs": 1, "learning_rate": 0.0, "latent_dim": 16, "n_jobs": 1}
    full = multimodal(rna, protein, copy=True, **frozen)
    parts = multimodal(rna, protein, copy=True, minibatch=True, batch_size=150, **frozen)
    record = parts.uns["spatiome"]["X_multimodal"]
    assert record["minibatch"] and record["n_batches"] == 5
    np.testing.assert_allclose(
        record["loss"], full.uns["spatiome"]["X_multimodal"]["loss"], rtol=1e-5
    )
    np.testing.assert_array_equal(parts.obsm["X_multimodal"], full.obsm["X_multimodal"])


def test_minibatch_matches_full_batch(pair, fitted):
    rna, protein = pair
    out = multimodal(rna, protein, n_domains=6, copy=True, minibatch=True, batch_size=150, **FAST)
    record = out.uns["spatiome"]["X_multimodal"]
    assert record["n_batches"] == 5 and record["n_epochs"] == 200
    truth = rna.obs["domain"]
    full_score = adjusted_rand_score(truth, fitted.obs["multimodal"])
    assert adjusted_rand_score(truth, out.obs["multimodal"]) > full_score - 0.05
    again = multimodal(
        rna, protein, copy=True, minibatch=True, batch_size=150, **{**QUICK, "n_epochs": 3}
    )
    first = multimodal(
        rna, protein, copy=True, minibatch=True, batch_size=150, **{**QUICK, "n_epochs": 3}
    )
    np.testing.assert_array_equal(again.obsm["X_multimodal"], first.obsm["X_multimodal"])


def test_minibatch_chosen_above_threshold(pair, monkeypatch):
    import sys

    rna, protein = pair
    module = sys.modules["spatiome.integrate.multimodal"]
    small = {"latent_dim": 8, "n_jobs": 1, "batch_size": 300}
    below = multimodal(rna, protein, copy=True, n_epochs=1, **small)
    assert not below.uns["spatiome"]["X_multimodal"]["minibatch"]
    monkeypatch.setattr(module, "MINIBATCH_MIN_SPOTS", 500)
    above = multimodal(rna, protein, copy=True, **small).uns["spatiome"]["X_multimodal"]
    assert above["minibatch"] and above["n_batches"] == 3
    # As many Adam steps as the full-batch preset (200 epochs), in at least 10 epochs.
    assert above["n_epochs"] == 67 and above["loss"].shape == (67, 4)


def test_device_auto_falls_back_to_cpu(pair):
    rna, protein = pair
    small = {**QUICK, "n_epochs": 3, "latent_dim": 8}
    auto = multimodal(rna, protein, copy=True, device="auto", **small)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert auto.uns["spatiome"]["X_multimodal"]["device"].startswith(expected)
    if expected == "cpu":
        cpu = multimodal(rna, protein, copy=True, device="cpu", **small)
        np.testing.assert_array_equal(auto.obsm["X_multimodal"], cpu.obsm["X_multimodal"])
    else:
        with pytest.raises(SpatiomeInputError, match='device="cuda"'):
            multimodal(rna, protein, device="cuda", **small)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("minibatch", [False, True])
def test_device_cuda_integrates(pair, fitted, minibatch):
    rna, protein = pair
    out = multimodal(rna, protein, n_domains=6, copy=True, device="cuda", minibatch=minibatch,
                     batch_size=150, **FAST)  # fmt: skip
    assert out.uns["spatiome"]["X_multimodal"]["device"].startswith("cuda")
    full_score = adjusted_rand_score(rna.obs["domain"], fitted.obs["multimodal"])
    assert adjusted_rand_score(rna.obs["domain"], out.obs["multimodal"]) > full_score - 0.05


def test_torch_sparse_operator_matches_scipy():
    from spatiome.integrate._multimodal_torch import _Operator

    rng = np.random.default_rng(0)
    matrix = sp.random(40, 30, density=0.2, random_state=2, format="csr", dtype=np.float32)
    features = torch.from_numpy(rng.normal(size=(30, 5)).astype(np.float32))
    grad = torch.from_numpy(rng.normal(size=(40, 5)).astype(np.float32))
    with_scipy = _Operator(matrix, sp.csr_matrix(matrix.T))
    with_torch = _Operator(matrix, sp.csr_matrix(matrix.T), scipy_products=False)
    np.testing.assert_allclose(
        with_torch.apply(features).numpy(), with_scipy.apply(features).numpy(), rtol=1e-5,
        atol=1e-6,
    )  # fmt: skip
    np.testing.assert_allclose(
        with_torch.apply(grad, transpose=True).numpy(), matrix.T @ grad.numpy(), rtol=1e-5,
        atol=1e-6,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"minibatch": 1}, "minibatch"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_invalid_training_arguments(pair, kwargs, match):
    rna, protein = pair
    with pytest.raises(SpatiomeInputError, match=match):
        multimodal(rna, protein, n_epochs=1, **kwargs)
