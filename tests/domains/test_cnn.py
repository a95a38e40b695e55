import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.domains.cnn import lattice_positions

torch = pytest.importorskip("torch")


def _visium_like(n_rows: int = 30, n_cols: int = 30) -> AnnData:
    """A hexagonal Visium-style array: row r holds the columns of r's parity."""
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(0, 2 * n_cols, 2), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel() + rows.ravel() % 2
    adata = AnnData(np.zeros((rows.size, 1)))
    adata.obs["array_row"] = rows
    adata.obs["array_col"] = cols
    adata.obsm["spatial"] = np.column_stack([cols * 50.0, rows * 86.6])
    return adata


def test_hexagonal_array_folds_so_the_six_neighbours_are_in_the_3x3_window():
    adata = _visium_like()
    rows, cols, kind = lattice_positions(adata)
    assert kind == "hexagonal"
    assert np.unique(rows * 1000 + cols).size == adata.n_obs  # one spot per pixel
    assert cols.max() == 29  # 60 array columns fold to 30
    # The six hexagonal neighbours of an interior spot, by array coordinates.
    r, c = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    centre = np.flatnonzero((r == 10) & (c == 20))[0]
    ring = [(10, 18), (10, 22), (9, 19), (9, 21), (11, 19), (11, 21)]
    for nr, nc in ring:
        spot = np.flatnonzero((r == nr) & (c == nc))[0]
        assert abs(rows[spot] - rows[centre]) <= 1 and abs(cols[spot] - cols[centre]) <= 1


def test_square_bins_and_bare_coordinates():
    adata = AnnData(np.zeros((6, 1)))
    adata.obs["array_row"] = [0, 0, 0, 1, 1, 1]
    adata.obs["array_col"] = [0, 1, 2, 0, 1, 2]
    adata.obsm["spatial"] = np.zeros((6, 2))
    assert lattice_positions(adata)[2] == "square"
    bare = AnnData(np.zeros((3, 1)))
    bare.obsm["spatial"] = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
    rows, cols, kind = lattice_positions(bare)
    assert kind == "rasterized" and cols.tolist() == [0, 1, 2] and rows.tolist() == [0, 0, 0]


@pytest.fixture(scope="module")
def layered():
    adata = sm.datasets.simulate_tissue(
        n_spots=900, n_genes=100, n_domains=3, domains="layers", random_state=0
    )
    sm.pp.normalize(adata)
    return adata


def test_cnn_finds_simulated_layers_deterministically(layered):
    before = layered.copy()
    options = {"n_epochs": 100, "n_top_genes": None, "n_comps": 10, "n_jobs": 1}
    first = sm.domains.cnn(layered, 3, copy=True, **options)
    second = sm.domains.cnn(layered, 3, copy=True, **options)
    assert adjusted_rand_score(layered.obs["domain"], first.obs["cnn"]) > 0.8
    assert first.obs["cnn"].equals(second.obs["cnn"])
    assert np.array_equal(first.obsm["X_cnn"], second.obsm["X_cnn"])
    record = first.uns["spatiome"]["cnn"]
    assert record["loss"].size == 100 and record["loss"][-1] < record["loss"][0]
    assert record["lattice"] == "hexagonal" and record["device"] == "cpu"  # simulated Visium
    # The input is left as it was.
    assert layered.obs.equals(before.obs) and set(layered.obsm) == set(before.obsm)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"n_epochs": 0}, "n_epochs"), ({"hide_fraction": 1.0}, "hide_fraction"),
     ({"device": "tpu"}, "device"), ({"learning_rate": -1.0}, "learning_rate")],
)  # fmt: skip
def test_cnn_rejects_bad_parameters(layered, options, match):
    with pytest.raises(SpatiomeInputError, match=match):
        sm.domains.cnn(layered, 3, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cnn_asks_for_a_gpu_only_when_told_to(layered):
    with pytest.raises(SpatiomeInputError, match="no CUDA GPU"):
        sm.domains.cnn(layered, 3, device="cuda")
    result = sm.domains.cnn(
        layered, 3, device="auto", n_epochs=5, n_top_genes=None, n_comps=5, copy=True
    )
    assert result.uns["spatiome"]["cnn"]["device"] == "cpu"


def test_cnn_refuses_a_layout_too_sparse_for_a_grid():
    rng = np.random.default_rng(0)
    adata = AnnData(rng.poisson(2.0, size=(40, 20)).astype(np.float32))
    adata.layers["counts"] = adata.X.copy()
    # Two tight clusters of spots very far apart: a lattice of ~1e10 pixels.
    xy = rng.normal(size=(40, 2))
    xy[20:] += 1e5
    adata.obsm["spatial"] = xy
    adata.obs_names = [f"s{i}" for i in range(40)]
    adata.var = pd.DataFrame(index=[f"g{i}" for i in range(20)])
    sm.pp.normalize(adata)
    with pytest.raises(SpatiomeInputError, match="too sparse for a grid"):
        sm.domains.cnn(adata, 2, n_top_genes=None, n_comps=5)
