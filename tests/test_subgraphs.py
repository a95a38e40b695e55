"""Spatial parts and halos for mini-batch graph training (spatiome._core.subgraphs)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spatiome._core.subgraphs import mixed_batches, spatial_parts, with_halo
from spatiome.datasets import simulate_tissue
from spatiome.graph import build_graph


@pytest.fixture(scope="module")
def hex_tissue():
    adata = simulate_tissue(n_spots=900, n_genes=10, random_state=0)
    graph, _, _ = build_graph(adata, method="knn", n_neighbors=6)
    return np.asarray(adata.obsm["spatial"]), sp.csr_matrix(graph)


@pytest.mark.parametrize("batch_size", [1, 50, 128, 899, 900, 5000])
@pytest.mark.parametrize("use_coordinates", [True, False])
def test_parts_cover_every_spot_once(hex_tissue, batch_size, use_coordinates):
    coordinates, graph = hex_tissue
    parts = spatial_parts(coordinates if use_coordinates else None, graph, batch_size)
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(900))
    assert max(part.size for part in parts) <= batch_size
    assert len(parts) == -(-900 // batch_size)
    assert all(np.all(np.diff(part) > 0) for part in parts)


def test_parts_are_compact(hex_tissue):
    coordinates, graph = hex_tissue
    parts = spatial_parts(coordinates, graph, 100)
    # A compact part's spots have most of their neighbours inside it: compare with random
    # parts of the same size, whose spots keep about 1/9 of them.
    labels = np.empty(900, dtype=np.int64)
    for index, part in enumerate(parts):
        labels[part] = index
    rows, cols = graph.nonzero()
    assert np.mean(labels[rows] == labels[cols]) > 0.6


def _halo_reference(graph, core, n_hops):
    reach = sp.identity(graph.shape[0], format="csr")
    step = sp.csr_matrix(graph + sp.identity(graph.shape[0]))
    for _ in range(n_hops):
        reach = sp.csr_matrix(reach @ step)
    vector = np.zeros(graph.shape[0])
    vector[core] = 1.0
    return np.flatnonzero(reach.T @ vector)


@pytest.mark.parametrize("n_hops", [0, 1, 2, 3])
def test_halo_matches_matrix_powers(hex_tissue, n_hops):
    _, graph = hex_tissue
    core = np.arange(0, 900, 97)
    np.testing.assert_array_equal(
        with_halo([graph], core, n_hops), _halo_reference(graph, core, n_hops)
    )


def test_halo_over_several_graphs():
    path = sp.diags([1.0, 1.0], [-1, 1], shape=(10, 10), format="csr")
    jump = sp.csr_matrix(([1.0, 1.0], ([0, 9], [9, 0])), shape=(10, 10))
    assert with_halo([path, jump], np.array([0]), 1).tolist() == [0, 1, 9]
    assert with_halo([path, jump], np.array([0]), 2).tolist() == [0, 1, 2, 8, 9]


def test_mixed_batches_partition_and_seed(hex_tissue):
    coordinates, graph = hex_tissue
    batches = mixed_batches(coordinates, graph, 200, 4, 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(900))
    assert len(batches) == 5
    again = mixed_batches(coordinates, graph, 200, 4, 0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = mixed_batches(coordinates, graph, 200, 4, 1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))
