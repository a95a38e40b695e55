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
        ({"graph_key": "nope"}, "obsp"),
        ({"layer": "nope"}, "layers"),
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
