"""stIHC on large tissues: spots pooled into at most ``max_nodes`` mesh nodes, checked
against the exact run on every spot; and the exact building blocks that make it fast
(ranks, triangular solves) against scipy."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve
from scipy.stats import rankdata
from sklearn.metrics import adjusted_rand_score

from spatiome._core.validate import SpatiomeInputError
from spatiome.modules._simulate import pattern_modules
from spatiome.modules.stihc import (
    _average_ranks,
    _bin_spots,
    _Factorization,
    _penalty_matrix,
    _pooled_genes,
    _spot_values,
    stihc,
)


def _ari_with_loners(truth, labels):
    """ARI where every gene without a module (-1) is a cluster of its own."""
    truth, labels = np.asarray(truth), np.asarray(labels)
    own = -1000 - np.arange(truth.size)
    return adjusted_rand_score(np.where(truth > 0, truth, own), np.where(labels > 0, labels, own))


def test_pooled_run_agrees_with_exact_run():
    # 4,000 spots pooled into <= 1,000 nodes. Measured on seeds 0-3: ARI (genes without a
    # module alone) against the exact run 0.948-0.959; against the truth 0.76 / 0.57 / 0.97
    # / 0.71 pooled and 0.74 / 0.53 / 0.94 / 0.72 exact.
    adata = pattern_modules(n_spots=4000, random_state=0)
    truth = adata.var["module"].to_numpy() + 1  # -1 (no module) becomes 0
    exact = stihc(adata, max_nodes=None, copy=True)["module"].to_numpy()
    pooled = stihc(adata, max_nodes=1000)["module"].to_numpy()
    assert _ari_with_loners(exact, pooled) >= 0.9
    assert _ari_with_loners(truth, pooled) >= 0.7
    params = adata.uns["spatiome"]["stihc"]
    assert 950 <= params["n_nodes"] <= 1000 and params["bin_size"] > 0
    assert params["max_nodes"] == 1000
    profiles = adata.obsm["stihc_profiles"]
    assert profiles.shape == (4000, params["n_modules"])
    assert np.isfinite(profiles.to_numpy()).all()


def test_below_the_cap_every_spot_is_a_node():
    adata = pattern_modules(n_spots=600, n_modules=3, n_unassigned=2, random_state=0)
    table = stihc(adata, max_nodes=600)
    params = adata.uns["spatiome"]["stihc"]
    assert params["n_nodes"] == 600 and params["bin_size"] is None
    pd.testing.assert_frame_equal(table, stihc(adata, max_nodes=None, copy=True))


def test_bins_hold_about_max_nodes_and_pool_means():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(5000, 2))
    xy = xy[((xy - 50) ** 2).sum(axis=1) < 50**2]  # a disc: many bins of the box are empty
    bins = _bin_spots(xy, 700)
    assert 0.95 * 700 <= bins.counts.size <= 700
    assert bins.counts.sum() == xy.shape[0]
    values = sp.random(xy.shape[0], 6, density=0.4, format="csr", random_state=1)
    adata = anndata.AnnData(values, obsm={"spatial": xy})
    expected = pd.DataFrame(values.toarray()).groupby(bins.spot_node).mean().to_numpy()
    positions = np.array([4, 0, 2])
    for matrix in (values, values.tocsc(), values.toarray()):
        adata.X = matrix
        pooled = _pooled_genes(adata, None, positions, bins)
        np.testing.assert_allclose(pooled, expected[:, positions], rtol=1e-12, atol=1e-15)
    centres = pd.DataFrame(xy).groupby(bins.spot_node).mean().to_numpy()
    np.testing.assert_allclose(bins.coordinates, centres)


def test_spot_values_interpolate_linear_fields_exactly():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 30, size=(3000, 2))
    bins = _bin_spots(xy, 300)
    x, y = bins.coordinates.T
    node_values = np.column_stack([2.0 * x - y, np.ones(bins.counts.size)])
    spot_values = _spot_values(bins, node_values, xy, max_edge=3.0)
    linear = 2.0 * xy[:, 0] - xy[:, 1]
    inside = np.abs(spot_values[:, 0] - linear) < 1e-9
    # Spots outside the hull of the node centres keep their own node's value.
    assert inside.mean() > 0.9
    np.testing.assert_array_equal(spot_values[~inside, 0], node_values[bins.spot_node[~inside], 0])
    np.testing.assert_allclose(spot_values[:, 1], 1.0)


def test_average_ranks_match_scipy_to_the_bit():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2000, 7))
    values[:700, 0] = 1.0
    values[:, 1] = np.round(values[:, 1] * 2)
    values[:, 2] = 3.0
    assert np.array_equal(_average_ranks(values), rankdata(values, axis=0))
    assert np.array_equal(_average_ranks(values[:1]), np.ones((1, 7)))


def test_factorization_matches_a_direct_solve():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 20, size=(800, 2))
    penalty, _ = _penalty_matrix(xy, 3.0)
    system = (sp.identity(800) + 40.0 * penalty).tocsc()
    rhs = rng.normal(size=(800, 5))
    solution = _Factorization(system).solve(rhs)
    np.testing.assert_allclose(solution, spsolve(system, rhs), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(system @ solution, rhs, atol=1e-8)


@pytest.mark.parametrize("max_nodes", [50, 1.5e4, True, "many"])
def test_max_nodes_is_checked(max_nodes):
    adata = pattern_modules(n_spots=200, n_modules=2, n_unassigned=1, random_state=0)
    with pytest.raises(SpatiomeInputError, match="max_nodes must be an integer >= 100"):
        stihc(adata, max_nodes=max_nodes, copy=True)
