"""Spatial neighbour graphs: hand-checked cases, brute force, Visium lattice, squidpy layout."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from spatiome._core.validate import SpatiomeInputError
from spatiome.graph import build_graph, hex_offsets, row_normalize, spatial_neighbors, symmetrize


def make_adata(coords: np.ndarray, **obs) -> anndata.AnnData:
    adata = anndata.AnnData(np.ones((coords.shape[0], 2)), obsm={"spatial": coords})
    for key, value in obs.items():
        adata.obs[key] = value
    return adata


def square_grid(side: int = 3) -> np.ndarray:
    return np.array([[x, y] for y in range(side) for x in range(side)], dtype=float)


def visium_lattice(n_rows: int = 12, n_cols: int = 24) -> anndata.AnnData:
    """Hex lattice in Visium's doubled-column layout, rows of alternating parity."""
    positions = [(r, c) for r in range(n_rows) for c in range(n_cols) if (r + c) % 2 == 0]
    rows, cols = np.array(positions).T
    xy = np.column_stack([cols * 50.0, rows * 50.0 * np.sqrt(3.0)])
    order = np.random.default_rng(0).permutation(rows.size)  # barcodes are not sorted
    return make_adata(xy[order], array_row=rows[order], array_col=cols[order])


def neighbour_sets(graph: sp.csr_matrix) -> list[set[int]]:
    return [
        set(graph.indices[graph.indptr[i] : graph.indptr[i + 1]]) for i in range(graph.shape[0])
    ]


def test_radius_on_square_grid_gives_rook_and_queen_neighbours():
    adata = make_adata(square_grid())
    spatial_neighbors(adata, method="radius", radius=1.0)
    graph = adata.obsp["spatial_connectivities"]
    assert graph.nnz == 24  # 12 undirected edges of the 3x3 rook lattice
    assert np.diff(graph.indptr).tolist() == [2, 3, 2, 3, 4, 3, 2, 3, 2]
    assert neighbour_sets(graph)[4] == {1, 3, 5, 7}
    spatial_neighbors(adata, method="radius", radius=1.5)
    graph = adata.obsp["spatial_connectivities"]
    assert graph.nnz == 40  # rook edges + 8 diagonals, both directions
    assert neighbour_sets(graph)[4] == {0, 1, 2, 3, 5, 6, 7, 8}
    distances = adata.obsp["spatial_distances"]
    assert distances[4, 0] == pytest.approx(np.sqrt(2.0))
    assert distances[4, 1] == pytest.approx(1.0)


def test_knn_on_square_grid_centre_and_corner():
    adata = make_adata(square_grid())
    spatial_neighbors(adata, method="knn", n_neighbors=2, symmetric=False)
    sets = neighbour_sets(adata.obsp["spatial_connectivities"])
    assert sets[0] == {1, 3}
    assert sets[8] == {5, 7}
    assert all(len(s) == 2 for s in sets)


def test_delaunay_square_with_centre_and_pruning():
    coords = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]])
    adata = make_adata(coords)
    spatial_neighbors(adata, method="delaunay")
    graph = adata.obsp["spatial_connectivities"]
    assert graph.nnz == 16  # 4 sides + 4 spokes
    assert neighbour_sets(graph)[4] == {0, 1, 2, 3}
    assert neighbour_sets(graph)[0] == {1, 2, 4}
    spatial_neighbors(adata, method="delaunay", delaunay_max_quantile=0.5)
    graph = adata.obsp["spatial_connectivities"]
    assert graph.nnz == 8  # only the short spokes survive
    assert neighbour_sets(graph)[4] == {0, 1, 2, 3}


def test_delaunay_degenerate_input_is_a_clear_error():
    adata = make_adata(np.column_stack([np.arange(5.0), np.arange(5.0)]))
    with pytest.raises(SpatiomeInputError, match="Delaunay"):
        spatial_neighbors(adata, method="delaunay")


@pytest.mark.parametrize("symmetric", [False, True])
def test_knn_matches_brute_force(symmetric):
    rng = np.random.default_rng(1)
    coords = rng.random((200, 2))
    adata = make_adata(coords)
    spatial_neighbors(adata, method="knn", n_neighbors=5, symmetric=symmetric)
    dense = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    np.fill_diagonal(dense, np.inf)
    expected = np.zeros((200, 200), dtype=bool)
    nearest = np.argsort(dense, axis=1)[:, :5]
    expected[np.repeat(np.arange(200), 5), nearest.ravel()] = True
    if symmetric:
        expected |= expected.T
    graph = adata.obsp["spatial_connectivities"]
    assert np.array_equal(graph.toarray() > 0, expected)
    assert set(np.unique(graph.data)) == {1.0}
    distances = adata.obsp["spatial_distances"].toarray()
    assert np.allclose(distances[expected], dense[expected], rtol=0, atol=1e-12)
    assert (adata.obsp["spatial_distances"] != 0).nnz == graph.nnz


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("knn", {"n_neighbors": 6}), ("radius", {"radius": 0.1}), ("delaunay", {})],
)
def test_graphs_are_symmetric_binary_csr(method, kwargs):
    coords = np.random.default_rng(2).random((300, 2))
    adata = make_adata(coords)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spatial_neighbors(adata, method=method, **kwargs)
    graph = adata.obsp["spatial_connectivities"]
    assert sp.issparse(graph) and graph.format == "csr"
    assert (graph != graph.T).nnz == 0
    assert graph.diagonal().sum() == 0
    assert np.all(graph.data == 1.0)
    distances = adata.obsp["spatial_distances"]
    assert (distances != distances.T).nnz == 0


def test_knn_radius_cap_drops_long_edges():
    coords = np.random.default_rng(3).random((200, 2))
    adata = make_adata(coords)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spatial_neighbors(adata, method="knn", n_neighbors=10, radius=0.05)
    assert adata.obsp["spatial_distances"].data.max() <= 0.05


def test_knn_with_duplicated_coordinates_excludes_self():
    coords = np.repeat(np.random.default_rng(4).random((50, 2)), 3, axis=0)
    adata = make_adata(coords)
    spatial_neighbors(adata, method="knn", n_neighbors=4, symmetric=False)
    graph = adata.obsp["spatial_connectivities"]
    assert graph.diagonal().sum() == 0
    assert np.all(np.diff(graph.indptr) == 4)


def test_hex_grid_interior_spots_have_six_neighbours():
    adata = visium_lattice()
    spatial_neighbors(adata, method="grid")
    graph = adata.obsp["spatial_connectivities"]
    rows = adata.obs["array_row"].to_numpy()
    cols = adata.obs["array_col"].to_numpy()
    interior = (rows > 0) & (rows < rows.max()) & (cols > 1) & (cols < cols.max() - 1)
    degree = np.diff(graph.indptr)
    assert interior.sum() > 50
    assert np.all(degree[interior] == 6)
    assert degree.max() == 6 and degree.min() >= 2
    # The neighbours are exactly the six lattice offsets.
    spot = np.flatnonzero(interior)[0]
    found = {(rows[j] - rows[spot], cols[j] - cols[spot]) for j in neighbour_sets(graph)[spot]}
    assert found == {tuple(o) for o in hex_offsets(1).tolist()}
    # All first-ring neighbours are one spot spacing (100 here) apart.
    assert np.allclose(adata.obsp["spatial_distances"].data, 100.0)
    assert (graph != graph.T).nnz == 0


def test_hex_grid_two_rings_and_lattice_units_without_coordinates():
    adata = visium_lattice()
    del adata.obsm["spatial"]
    spatial_neighbors(adata, method="grid", n_rings=2)
    rows = adata.obs["array_row"].to_numpy()
    cols = adata.obs["array_col"].to_numpy()
    deep = (rows > 1) & (rows < rows.max() - 1) & (cols > 3) & (cols < cols.max() - 3)
    assert np.all(np.diff(adata.obsp["spatial_connectivities"].indptr)[deep] == 18)
    lengths = np.unique(np.round(adata.obsp["spatial_distances"].data, 6))
    assert np.allclose(lengths, [1.0, np.sqrt(3.0), 2.0])


def test_hex_grid_needs_array_columns():
    adata = make_adata(square_grid())
    with pytest.raises(SpatiomeInputError, match="array_row"):
        spatial_neighbors(adata, method="grid")


def test_hex_grid_rejects_duplicated_positions():
    adata = make_adata(square_grid(2), array_row=[0, 0, 1, 1], array_col=[0, 0, 1, 3])
    with pytest.raises(SpatiomeInputError, match="duplicated"):
        spatial_neighbors(adata, method="grid")


def test_isolated_spots_are_reported():
    coords = np.vstack([square_grid(), [[100.0, 100.0], [-50.0, 0.0]]])
    adata = make_adata(coords)
    with pytest.warns(UserWarning, match="2 of 11 spots have no spatial neighbours"):
        spatial_neighbors(adata, method="radius", radius=1.0)
    assert adata.uns["spatial_neighbors"]["n_isolated"] == 2


def test_squidpy_layout_and_key_added(tmp_path):
    adata = make_adata(np.random.default_rng(5).random((60, 2)))
    spatial_neighbors(adata, key_added="hood", n_neighbors=4)
    assert "hood_connectivities" in adata.obsp and "hood_distances" in adata.obsp
    entry = adata.uns["hood_neighbors"]
    assert entry["connectivities_key"] == "hood_connectivities"
    assert entry["distances_key"] == "hood_distances"
    assert entry["params"]["n_neighbors"] == 4
    assert entry["params"]["coord_type"] == "generic"
    spatial_neighbors(adata)
    assert adata.uns["spatial_neighbors"]["connectivities_key"] == "spatial_connectivities"
    path = tmp_path / "graph.h5ad"
    adata.write_h5ad(path)
    back = anndata.read_h5ad(path)
    assert (back.obsp["spatial_connectivities"] != adata.obsp["spatial_connectivities"]).nnz == 0
    assert back.uns["spatial_neighbors"]["params"]["method"] == "knn"


def test_copy_leaves_input_untouched():
    adata = make_adata(np.random.default_rng(6).random((40, 2)))
    coords = adata.obsm["spatial"].copy()
    result = spatial_neighbors(adata, copy=True)
    assert "spatial_connectivities" not in adata.obsp
    assert "spatial_connectivities" in result.obsp
    assert np.array_equal(adata.obsm["spatial"], coords)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "bogus"}, "method must be one of"),
        ({"method": "knn", "n_neighbors": 0}, "n_neighbors"),
        ({"method": "knn", "n_neighbors": 40}, "smaller than the number of spots"),
        ({"method": "radius"}, "needs radius"),
        ({"method": "radius", "radius": -1.0}, "radius must be"),
        ({"method": "delaunay", "delaunay_max_quantile": 1.5}, "delaunay_max_quantile"),
    ],
)
def test_bad_parameters(kwargs, message):
    adata = make_adata(np.random.default_rng(7).random((40, 2)))
    with pytest.raises(SpatiomeInputError, match=message):
        spatial_neighbors(adata, **kwargs)


def test_nan_coordinates_are_rejected():
    coords = np.random.default_rng(8).random((20, 2))
    coords[3, 1] = np.nan
    with pytest.raises(SpatiomeInputError, match="NaN"):
        spatial_neighbors(make_adata(coords))


def test_build_graph_writes_nothing():
    adata = make_adata(np.random.default_rng(9).random((30, 2)))
    connectivities, distances, info = build_graph(adata, n_neighbors=3)
    assert connectivities.shape == (30, 30) and info["params"]["method"] == "knn"
    assert len(adata.obsp) == 0 and "spatial_neighbors" not in adata.uns


def test_row_normalize_and_symmetrize():
    weights = sp.csr_matrix(np.array([[0, 2, 2], [1, 0, 0], [0, 0, 0]], dtype=float))
    original = weights.copy()
    normalized = row_normalize(weights)
    assert np.allclose(normalized.toarray(), [[0, 0.5, 0.5], [1, 0, 0], [0, 0, 0]])
    assert (weights != original).nnz == 0
    directed = sp.csr_matrix(np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=float))
    assert np.array_equal(symmetrize(directed).toarray(), [[0, 1, 1], [1, 0, 0], [1, 0, 0]])
    assert np.array_equal(
        symmetrize(directed, mode="min").toarray(), [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    )
    assert np.allclose(
        symmetrize(directed, mode="mean").toarray(), [[0, 0.5, 1], [0.5, 0, 0], [1, 0, 0]]
    )
    with pytest.raises(SpatiomeInputError):
        symmetrize(directed, mode="other")
