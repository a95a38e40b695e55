"""Spatial neighbour graphs: hand-checked cases, brute force, Visium lattices, squidpy layout."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

import spatiome as sm
from spatiome._core.neighbourhood import spatial_knn
from spatiome._core.validate import SpatiomeInputError, check_coordinates
from spatiome.graph import (
    build_graph,
    default_method,
    detect_lattice,
    hex_offsets,
    row_normalize,
    spatial_neighbors,
    square_offsets,
    symmetrize,
)
from spatiome.io import read_visium, read_visium_hd


def _fixture_writers():
    """The 10x layout writers of tests/io/conftest.py (a conftest is not importable by name)."""
    spec = importlib.util.spec_from_file_location(
        "_tenx_fixture_writers", Path(__file__).parent / "io" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.Builders


BUILD = _fixture_writers()


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
    with pytest.raises(SpatiomeInputError, match="Delaunay.*all 5 spots are: use method='knn'"):
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
    with pytest.warns(UserWarning, match="150 of 150 spots share their position"):
        spatial_neighbors(adata, method="knn", n_neighbors=4, symmetric=False)
    graph = adata.obsp["spatial_connectivities"]
    assert graph.diagonal().sum() == 0
    assert np.all(np.diff(graph.indptr) == 4)
    assert adata.uns["spatial_neighbors"]["n_colocated"] == 150


def test_knn_with_more_copies_than_candidates_excludes_self():
    # 20 spots per position: the first query holds fewer candidates than copies.
    coords = np.repeat(square_grid(4), 20, axis=0)
    connectivities, distances, info = build_graph(
        make_adata(coords), n_neighbors=3, symmetric=False
    )
    assert connectivities.diagonal().sum() == 0
    assert np.all(np.diff(connectivities.indptr) == 3)
    assert distances.data.max() == 0.0  # every spot's 3 nearest are copies of itself
    assert info["n_colocated"] == 320


def test_few_duplicated_positions_do_not_warn():
    coords = np.random.default_rng(4).random((100, 2))
    coords[1] = coords[0]
    adata = make_adata(coords)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spatial_neighbors(adata, n_neighbors=4)
    assert adata.uns["spatial_neighbors"]["n_colocated"] == 2


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


def test_hex_grid_rejects_mixed_parity_and_bad_options():
    adata = make_adata(square_grid(), array_row=np.repeat([0, 1, 2], 3), array_col=[0, 1, 2] * 3)
    with pytest.raises(SpatiomeInputError, match="lattice='hex' needs Visium's doubled"):
        spatial_neighbors(adata, method="grid", lattice="hex")
    with pytest.raises(SpatiomeInputError, match="lattice must be one of"):
        spatial_neighbors(adata, method="grid", lattice="hexagonal")
    with pytest.raises(SpatiomeInputError, match="square_neighbors must be 4"):
        spatial_neighbors(adata, method="grid", square_neighbors=6)


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
        ({"method": "knn", "n_neighbors": 40}, "smaller than the number of spots \\(40\\)"),
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


# --- square bins (Visium HD) and hex spots (Visium) read from 10x layouts ---------------


def rotated(rows: np.ndarray, cols: np.ndarray, col_step, row_step, angle=0.02) -> np.ndarray:
    """Full-resolution pixel (x, y) of array positions, slightly rotated as on a real slide."""
    x, y = cols * col_step, rows * row_step
    c, s = np.cos(angle), np.sin(angle)
    return np.column_stack([1500.0 + c * x - s * y, 900.0 + s * x + c * y])


def write_tenx(folder: Path, rows: np.ndarray, cols: np.ndarray, xy: np.ndarray, variant: str):
    """A filtered matrix and a tissue_positions table, rows shuffled like real barcodes."""
    barcodes = [f"s_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    BUILD.h5(
        folder / "filtered_feature_bc_matrix.h5",
        BUILD.counts(4, rows.size),
        barcodes,
        BUILD.features(4),
    )
    table = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": xy[:, 1],
            "pxl_col_in_fullres": xy[:, 0],
        }
    ).sample(frac=1.0, random_state=0)
    BUILD.positions(folder / "spatial", table, variant)


def read_hd_bins(tmp_path: Path, side: int = 20) -> anndata.AnnData:
    """8 um Visium HD bins on a side x side square with a hole (bins off the tissue)."""
    rows, cols = np.divmod(np.arange(side * side), side)
    tissue = (rows - side // 2) ** 2 + (cols - side // 2) ** 2 > 4
    rows, cols = rows[tissue], cols[tissue]
    pitch = 8.0 / 0.2738  # 8 um bins at 0.2738 um per full-resolution pixel
    folder = tmp_path / "outs" / "binned_outputs" / "square_008um"
    write_tenx(folder, rows, cols, rotated(rows, cols, pitch, pitch), "parquet")
    return read_visium_hd(tmp_path / "outs", bin_size=8)


def array_offsets(adata: anndata.AnnData, graph: sp.csr_matrix) -> list[set[tuple[int, int]]]:
    rows = adata.obs["array_row"].to_numpy()
    cols = adata.obs["array_col"].to_numpy()
    return [
        {(int(rows[j] - rows[i]), int(cols[j] - cols[i])) for j in neighbours}
        for i, neighbours in enumerate(neighbour_sets(graph))
    ]


def present_offsets(adata: anndata.AnnData, offsets: np.ndarray) -> list[set[tuple[int, int]]]:
    """For each spot, the offsets in ``offsets`` at which the data hold a spot."""
    rows = adata.obs["array_row"].to_numpy()
    cols = adata.obs["array_col"].to_numpy()
    occupied = set(zip(rows.tolist(), cols.tolist(), strict=True))
    return [
        {(dr, dc) for dr, dc in offsets.tolist() if (r + dr, c + dc) in occupied}
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
    ]


def test_visium_hd_bins_link_to_the_bins_sharing_an_edge(tmp_path):
    adata = read_hd_bins(tmp_path)
    assert default_method(adata) == "grid" and detect_lattice(adata) == "square"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spatial_neighbors(adata, method="auto")
    graph = adata.obsp["spatial_connectivities"]
    params = adata.uns["spatial_neighbors"]["params"]
    assert (params["method"], params["lattice"], params["square_neighbors"]) == (
        "grid",
        "square",
        4,
    )
    rook = {(-1, 0), (1, 0), (0, -1), (0, 1)}
    assert array_offsets(adata, graph) == present_offsets(adata, square_offsets(1))
    assert max(len(s) for s in array_offsets(adata, graph)) == 4
    assert all(found <= rook for found in array_offsets(adata, graph))
    assert connected_components(graph, directed=False)[0] == 1
    np.testing.assert_allclose(adata.obsp["spatial_distances"].data, 8.0 / 0.2738, rtol=1e-9)
    # Statistics that build their own graph get the same square grid.
    fresh = read_hd_bins(tmp_path)
    with pytest.warns(UserWarning, match="building the default spatial graph"):
        sm.svg.moran(fresh, check_depth=False)
    assert fresh.uns["spatial_neighbors"]["params"]["lattice"] == "square"
    assert (fresh.obsp["spatial_connectivities"] != graph).nnz == 0


@pytest.mark.parametrize(
    ("options", "degree"),
    [
        ({"square_neighbors": 8}, 8),
        ({"n_rings": 2}, 12),
        ({"n_rings": 2, "square_neighbors": 8}, 24),
    ],
)
def test_visium_hd_queen_and_rings(tmp_path, options, degree):
    adata = read_hd_bins(tmp_path)
    spatial_neighbors(adata, method="grid", **options)
    found = array_offsets(adata, adata.obsp["spatial_connectivities"])
    offsets = square_offsets(options.get("n_rings", 1), options.get("square_neighbors", 4))
    assert found == present_offsets(adata, offsets)
    assert max(len(s) for s in found) == degree


def test_visium_hex_spots_keep_their_six_neighbours(tmp_path):
    positions = [(r, c) for r in range(14) for c in range(28) if (r + c) % 2 == 0]
    rows, cols = (np.array(v) for v in zip(*positions, strict=True))
    pitch = 100.0 / 0.72  # 100 um between spot centres, in full-resolution pixels
    outs = tmp_path / "sample" / "outs"
    write_tenx(outs, rows, cols, rotated(rows, cols, pitch / 2, pitch * np.sqrt(3) / 2), "csv")
    adata = read_visium(outs)
    assert default_method(adata) == "grid" and detect_lattice(adata) == "hex"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spatial_neighbors(adata, method="auto")
    graph = adata.obsp["spatial_connectivities"]
    assert adata.uns["spatial_neighbors"]["params"]["lattice"] == "hex"
    assert array_offsets(adata, graph) == present_offsets(adata, hex_offsets(1))
    assert np.bincount(np.diff(graph.indptr)).argmax() == 6
    np.testing.assert_allclose(adata.obsp["spatial_distances"].data, pitch, rtol=1e-9)


def lattice_adata(kind: str, coords: str, **uns) -> anndata.AnnData:
    rows, cols = np.divmod(np.arange(64), 8)
    if kind == "hex":
        cols = 2 * cols + rows % 2
    steps = {
        "hex": (50.0, 50.0 * np.sqrt(3)),  # physical hex layout of doubled columns
        "square": (8.0, 8.0),
        "array": (1.0, 1.0),  # the array positions themselves used as coordinates
    }
    adata = make_adata(np.column_stack([cols, rows]) * 1.0, array_row=rows, array_col=cols)
    if coords == "none":
        del adata.obsm["spatial"]
    else:
        adata.obsm["spatial"] = rotated(rows, cols, *steps[coords])
    adata.uns.update(uns)
    return adata


@pytest.mark.parametrize(
    ("kind", "coords", "uns", "expected", "warns"),
    [
        ("hex", "hex", {}, "hex", False),
        ("hex", "none", {}, "hex", False),
        ("hex", "array", {"spatial_unit": "array"}, "hex", False),
        ("hex", "square", {}, "hex", True),  # one parity wins, but the layout is suspicious
        ("square", "square", {}, "square", False),
        ("square", "none", {}, "square", False),
        ("square", "hex", {}, "square", True),
        ("hex", "none", {"spatiome": {"source": {"format": "visium_hd"}}}, "square", False),
    ],
)
def test_lattice_detection(kind, coords, uns, expected, warns):
    adata = lattice_adata(kind, coords, **uns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert detect_lattice(adata) == expected
    assert bool(caught) == warns
    if warns:
        assert f"does not lay array_row/array_col out as a {expected} lattice" in str(
            caught[0].message
        )


def test_square_grid_without_coordinates_has_unit_spacing():
    adata = lattice_adata("square", "none")
    spatial_neighbors(adata, method="grid", square_neighbors=8)
    lengths = np.unique(np.round(adata.obsp["spatial_distances"].data, 9))
    np.testing.assert_allclose(lengths, [1.0, np.sqrt(2.0)])


def test_square_offsets_rings():
    assert {tuple(o) for o in square_offsets(1).tolist()} == {(-1, 0), (1, 0), (0, -1), (0, 1)}
    assert len(square_offsets(3)) == 24 and len(square_offsets(3, 8)) == 48
    with pytest.raises(SpatiomeInputError, match="4 or 8"):
        square_offsets(1, 6)


# --- degenerate coordinates ------------------------------------------------------------


def one_position(n: int = 500) -> anndata.AnnData:
    rng = np.random.default_rng(10)
    adata = anndata.AnnData(sp.csr_matrix(rng.poisson(2.0, (n, 5)).astype(np.float64)))
    adata.obsm["spatial"] = np.tile([[1.0, 1.0]], (n, 1))  # e.g. in_tissue picked twice
    return adata


@pytest.mark.parametrize(
    "call",
    [
        lambda a: spatial_neighbors(a),
        lambda a: spatial_neighbors(a, method="radius", radius=1.0),
        lambda a: sm.svg.sparkx(a, check_depth=False, copy=True),
        lambda a: sm.svg.moran(a, check_depth=False, copy=True),
        lambda a: spatial_knn(a.obsm["spatial"], 6),
    ],
    ids=["knn", "radius", "sparkx", "moran", "spatial_knn"],
)
@pytest.mark.filterwarnings("ignore:adata.obsp")
def test_all_spots_at_one_position_are_refused(call):
    with pytest.raises(SpatiomeInputError, match=r"all 500 spots share one position \(x=1, y=1\)"):
        call(one_position())


def test_one_position_after_rounding_and_what_stays_allowed():
    transformed = np.full((50, 2), 0.3)
    transformed[::2, 0] = np.nextafter(0.3, 1.0)  # one unit in the last place apart
    with pytest.raises(SpatiomeInputError, match="check which columns hold the coordinates"):
        check_coordinates(transformed)
    with pytest.raises(SpatiomeInputError, match="x=0, y=0, z=0"):
        check_coordinates(np.zeros((3, 3)))
    line = np.column_stack([np.arange(20.0), np.zeros(20)])  # a transect: allowed
    assert check_coordinates(line).shape == (20, 2)
    flat = np.column_stack([np.random.default_rng(0).random((20, 2)), np.zeros(20)])
    assert check_coordinates(flat).shape == (20, 3)
    assert check_coordinates([[2.0, 3.0]]).shape == (1, 2)  # one spot has one position
    spatial_neighbors(make_adata(line), n_neighbors=2)
    with pytest.raises(SpatiomeInputError, match="NaN or infinite"):
        check_coordinates([[0.0, 1.0], [np.inf, 2.0]])


# --- independence from the order of the spots -----------------------------------------


def grid_tissue(side: int = 20, seed: int = 0) -> anndata.AnnData:
    """A regular grid with a notch, and genes with smooth patterns plus noise."""
    xy = square_grid(side)
    xy = xy[~((xy[:, 0] > side - 6) & (xy[:, 1] > side - 6))]
    rng = np.random.default_rng(seed)
    pattern = np.column_stack([np.sin(xy[:, 0] / 3), xy[:, 1] / side, np.zeros(len(xy))])
    values = pattern[:, [0, 1, 2, 0, 1]] + rng.normal(0, 0.5, (len(xy), 5))
    adata = anndata.AnnData(values, obsm={"spatial": xy})
    adata.var_names = [f"g{i}" for i in range(5)]
    return adata


def edge_set(graph: sp.csr_matrix, labels: np.ndarray) -> set[tuple[int, int]]:
    coo = graph.tocoo()
    return set(zip(labels[coo.row].tolist(), labels[coo.col].tolist(), strict=True))


@pytest.mark.parametrize(
    "options",
    [
        {"method": "knn", "n_neighbors": 6},
        {"method": "knn", "n_neighbors": 6, "symmetric": False},
        {"method": "knn", "n_neighbors": 3, "symmetric": False},
        {"method": "knn", "n_neighbors": 10, "radius": 2.0},
        {"method": "radius", "radius": 1.0},
        {"method": "delaunay"},
        {"method": "delaunay", "delaunay_max_quantile": 0.9},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_graphs_do_not_depend_on_spot_order(options):
    adata = grid_tissue()
    labels = np.arange(adata.n_obs)
    reference, _, _ = build_graph(adata, **options)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(adata.n_obs)
        shuffled, _, _ = build_graph(adata[order].copy(), **options)
        assert edge_set(shuffled, labels[order]) == edge_set(reference, labels)


def brute_force_knn(xy: np.ndarray, k: int) -> list[set[int]]:
    """Nearest first; among equal distances the smaller x, then y (then z)."""
    dense = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(dense, np.inf)
    keys = tuple(xy[:, d] for d in reversed(range(xy.shape[1])))
    return [set(np.lexsort((*keys, dense[i]))[:k].tolist()) for i in range(len(xy))]


def test_knn_ties_follow_coordinates_like_brute_force():
    xy = square_grid(7)
    for k in range(1, 13):
        graph, _, _ = build_graph(make_adata(xy), n_neighbors=k, symmetric=False)
        assert neighbour_sets(graph) == brute_force_knn(xy, k), k


def test_knn_ties_in_mostly_irregular_data_and_in_3d():
    # Few ties: the first query holds one candidate past the k-th, tied spots are asked again.
    rng = np.random.default_rng(11)
    patch = np.column_stack([square_grid(5), np.zeros(25)]) + 100.0
    xy = np.vstack([np.column_stack([rng.random((600, 2)) * 40, np.zeros(600)]), patch])
    cube = np.stack(np.meshgrid(*[np.arange(5.0)] * 3), axis=-1).reshape(-1, 3)
    for coords, k in ((xy[:, :2], 6), (xy, 3), (cube, 8)):
        graph, _, _ = build_graph(make_adata(coords), n_neighbors=k, symmetric=False)
        assert neighbour_sets(graph) == brute_force_knn(coords, k)
        order = np.random.default_rng(0).permutation(len(coords))
        shuffled, _, _ = build_graph(make_adata(coords[order]), n_neighbors=k, symmetric=False)
        labels = np.arange(len(coords))
        assert edge_set(shuffled, labels[order]) == edge_set(graph, labels)


def test_moran_does_not_depend_on_spot_order():
    adata = grid_tissue()
    spatial_neighbors(adata, n_neighbors=6)
    reference = sm.svg.moran(adata, check_depth=False, copy=True)
    order = np.random.default_rng(1).permutation(adata.n_obs)
    shuffled = adata[order].copy()
    spatial_neighbors(shuffled, n_neighbors=6)
    result = sm.svg.moran(shuffled, check_depth=False, copy=True)
    columns = ["statistic", "zscore", "pval"]
    np.testing.assert_allclose(result[columns], reference[columns], rtol=1e-12, atol=1e-12)


# --- few spots -------------------------------------------------------------------------


def few_spots(n: int) -> anndata.AnnData:
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])[:n]
    return make_adata(xy, array_row=xy[:, 1].astype(int), array_col=xy[:, 0].astype(int))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("method", ["auto", "knn", "grid", "delaunay", "radius"])
def test_few_spots_work_or_say_what_is_needed(n, method):
    adata = few_spots(n)
    options = {"radius": 1.0} if method == "radius" else {}
    if n == 1:
        expected = "spatial_neighbors needs at least 2 spots, got 1"
    elif method == "knn":
        expected = rf"n_neighbors=6 must be smaller than the number of spots \({n}\): pass "
    elif method == "delaunay" and n < 3:
        expected = "needs at least 3 spots with 2-D coordinates, got 2"
    else:
        expected = None
    if expected is not None:
        with pytest.raises(SpatiomeInputError, match=expected):
            spatial_neighbors(adata, method=method, **options)
        return
    spatial_neighbors(adata, method=method, **options)
    graph = adata.obsp["spatial_connectivities"]
    assert graph.shape == (n, n) and graph.nnz > 0 and (graph != graph.T).nnz == 0
    if method in ("auto", "grid"):  # square bins: a spot and its edge-sharing neighbours
        assert adata.uns["spatial_neighbors"]["params"]["lattice"] == "square"
        assert set(np.round(adata.obsp["spatial_distances"].data, 12)) == {1.0}


@pytest.mark.parametrize("n", [2, 3, 5])
def test_few_spots_knn_with_a_possible_n_neighbors(n):
    adata = few_spots(n)
    spatial_neighbors(adata, n_neighbors=n - 1)
    assert adata.obsp["spatial_connectivities"].nnz == n * (n - 1)


def two_samples(seed=11, n=(70, 50)):
    """Two sections whose coordinates overlap, the second interleaved with the first."""
    rng = np.random.default_rng(seed)
    coords = rng.random((sum(n), 2))
    adata = make_adata(coords)
    sample = np.array(["a"] * n[0] + ["b"] * n[1])
    adata.obs["sample"] = pd.Categorical(rng.permutation(sample))
    return adata


def edges(graph):
    coo = sp.coo_matrix(graph)
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        # squidpy's kNN graph is directed: each row lists the spot's own k neighbours.
        ({"method": "knn", "n_neighbors": 6, "symmetric": False}, {"n_neighs": 6}),
        ({"method": "radius", "radius": 0.2}, {"radius": 0.2}),
        ({"method": "delaunay"}, {"delaunay": True}),
    ],
)
def test_library_key_matches_squidpy(ours, theirs):
    sq = pytest.importorskip("squidpy")
    adata = two_samples()
    reference = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spatial_neighbors(adata, library_key="sample", **ours)
        sq.gr.spatial_neighbors(reference, library_key="sample", coord_type="generic", **theirs)
    graph = adata.obsp["spatial_connectivities"]
    assert edges(graph) == edges(reference.obsp["spatial_connectivities"])
    distances = adata.obsp["spatial_distances"]
    assert np.allclose(
        distances.toarray(), reference.obsp["spatial_distances"].toarray(), atol=1e-12
    )
    sample = adata.obs["sample"].to_numpy()
    rows, cols = graph.nonzero()
    assert np.all(sample[rows] == sample[cols])
    assert adata.uns["spatial_neighbors"]["libraries"] == ["a", "b"]
    for name in ("a", "b"):
        alone = adata[sample == name].copy()
        spatial_neighbors(alone, **ours)
        block = graph[sample == name][:, sample == name]
        assert (block != alone.obsp["spatial_connectivities"]).nnz == 0


def test_library_key_keeps_grid_sections_apart():
    rows, cols = np.divmod(np.arange(36), 6)
    section = make_adata(np.c_[cols, rows] * 10.0)
    section.obs["array_row"], section.obs["array_col"] = rows, cols
    both = anndata.concat([section, section], label="sample", index_unique="-")
    with pytest.raises(SpatiomeInputError, match="library_key"):
        spatial_neighbors(both, method="grid")
    spatial_neighbors(both, method="grid", library_key="sample")
    graph = both.obsp["spatial_connectivities"]
    assert graph[:36, 36:].nnz == 0 and graph.nnz == 2 * 2 * (2 * 6 * 5)
    with pytest.raises(SpatiomeInputError, match="not a column"):
        spatial_neighbors(both, library_key="section")


@pytest.mark.parametrize("method", ["radius", "delaunay"])
def test_undirected_methods_list_both_directions_whatever_symmetric_says(method):
    rng = np.random.default_rng(4)
    adata = anndata.AnnData(np.zeros((60, 1)), obsm={"spatial": rng.uniform(0, 10, size=(60, 2))})
    options = {"radius": 2.0} if method == "radius" else {}
    one = build_graph(adata, method=method, symmetric=False, **options)[0]
    both = build_graph(adata, method=method, symmetric=True, **options)[0]
    assert (one != one.T).nnz == 0
    assert (one != both).nnz == 0
