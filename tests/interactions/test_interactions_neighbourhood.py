"""Neighbourhood statistics: exact null moments, and agreement with squidpy on the same graph."""

from __future__ import annotations

import itertools
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spatiome._core.validate import SpatiomeInputError
from spatiome.graph import spatial_neighbors
from spatiome.interactions.neighbourhood import (
    _analytic_moments,
    _library_moments,
    _pair_counts,
    co_occurrence,
    interaction_matrix,
    nhood_enrichment,
    ripley,
)


def _squidpy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("squidpy")


def _tissue(n: int = 2000, seed: int = 3) -> anndata.AnnData:
    """Cells on a 1/8 grid (exact in float32) in five bands, 30% of labels scrambled."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 400, (n, 2)) + rng.integers(0, 8, (n, 2)) / 8
    band = (xy[:, 0] // 100).astype(int) + (rng.random(n) < 0.3) * rng.integers(0, 5, n)
    adata = anndata.AnnData(np.zeros((n, 1)), obsm={"spatial": xy})
    adata.obs["group"] = pd.Categorical(np.array(list("abcde"))[band % 5])
    spatial_neighbors(adata, n_neighbors=6)
    return adata


@pytest.mark.parametrize(
    ("symmetric", "loops", "labels"),
    [
        (True, False, [0, 0, 0, 1, 1, 2, 2]),
        (False, False, [0, 1, 1, 1, 1, 1, 2]),
        (True, True, [0, 0, 1, 1, 1, 2, 2]),
        (False, True, [0, 0, 0, 0, 1, 2, 2]),
    ],
)
def test_analytic_moments_equal_enumeration_of_all_relabellings(symmetric, loops, labels):
    rng = np.random.default_rng(len(labels) + 2 * symmetric + loops)
    adjacency = rng.random((7, 7)) < 0.35
    if symmetric:
        adjacency |= adjacency.T
    if not loops:
        np.fill_diagonal(adjacency, False)
    rows, cols = np.nonzero(adjacency)
    codes = np.array(labels)
    counts = np.array(
        [
            _pair_counts(codes[list(order)][rows], codes[list(order)][cols], 3)
            for order in itertools.permutations(range(7))
        ],
        dtype=float,
    )
    mean, variance = _analytic_moments(rows, cols, codes, 3)
    np.testing.assert_allclose(mean, counts.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(variance, counts.var(axis=0), rtol=0, atol=1e-11)


def test_analytic_zscores_agree_with_permutations():
    adata = _tissue(1500)
    analytic = nhood_enrichment(adata, "group", copy=True)
    permuted = nhood_enrichment(adata, "group", method="permutation", n_perms=2000, copy=True)
    np.testing.assert_array_equal(analytic["count"], permuted["count"])
    z = analytic["zscore"]
    # Permutation error of a z-score: 1/sqrt(P) from the mean, |z|/sqrt(2P) from the sd.
    noise = np.sqrt(1 / 2000 + z**2 / (2 * 2000))
    assert np.all(np.abs(permuted["zscore"] - z) < 5 * noise)


def test_nhood_enrichment_matches_squidpy():
    squidpy = _squidpy()
    adata = _tissue()
    nhood_enrichment(adata, "group")
    ours = adata.uns["group_nhood_enrichment"]
    zscore, count = squidpy.gr.nhood_enrichment(
        adata, "group", n_perms=1000, seed=0, copy=True, show_progress_bar=False
    )
    np.testing.assert_array_equal(ours["count"], count)
    noise = np.sqrt(1 / 1000 + ours["zscore"] ** 2 / (2 * 1000))
    assert np.all(np.abs(zscore - ours["zscore"]) < 5 * noise)
    assert np.abs(zscore - ours["zscore"]).max() < 0.05 * np.abs(ours["zscore"]).max()


def test_nhood_enrichment_detects_segregation_and_leaves_out_unlabelled_cells():
    adata = _tissue(1000)
    adata.obs.loc[adata.obs_names[:50], "group"] = np.nan
    result = nhood_enrichment(adata, "group", copy=True)
    z = result["zscore"]
    bands = z[:4, :4]  # "e" only holds scrambled cells
    assert np.all(np.diag(bands) > 5) and np.all(bands[~np.eye(4, dtype=bool)] < 0)
    assert np.all(np.abs(z[4]) < 4)
    labelled = np.flatnonzero(adata.obs["group"].notna().to_numpy())
    sub = adata[labelled].copy()
    np.testing.assert_array_equal(result["count"], interaction_matrix(sub, "group", copy=True))


@pytest.mark.parametrize(
    ("normalized", "weights"), list(itertools.product([False, True], repeat=2))
)
def test_interaction_matrix_equals_squidpy(normalized, weights):
    squidpy = _squidpy()
    adata = _tissue(1500)
    adata.obs.loc[adata.obs_names[:20], "group"] = np.nan
    graph = adata.obsp["spatial_connectivities"].copy()
    graph.data = np.random.default_rng(0).random(graph.nnz)
    adata.obsp["spatial_connectivities"] = graph
    ours = interaction_matrix(adata, "group", normalized=normalized, weights=weights, copy=True)
    theirs = squidpy.gr.interaction_matrix(
        adata, "group", normalized=normalized, weights=weights, copy=True
    )
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)
    interaction_matrix(adata, "group", normalized=normalized, weights=weights)
    np.testing.assert_array_equal(adata.uns["group_interactions"], theirs)


def test_co_occurrence_equals_squidpy():
    squidpy = _squidpy()
    adata = _tissue(1500)
    interval = np.arange(0.0, 80.0, 5.0) + 0.5  # no pair at a threshold, exact in float32
    co_occurrence(adata, "group", interval=interval)
    ours = adata.uns["group_co_occurrence"]
    occ, thresholds = squidpy.gr.co_occurrence(adata, "group", interval=interval, copy=True)
    assert ours["occ"].shape == occ.shape == (5, 5, interval.size - 1)
    np.testing.assert_allclose(ours["occ"], occ, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(ours["interval"], thresholds)
    default = co_occurrence(adata, "group", interval=12, copy=True)
    occ, thresholds = squidpy.gr.co_occurrence(adata, "group", interval=12, copy=True)
    # squidpy's default thresholds are float32: the occ differ by that rounding only.
    np.testing.assert_allclose(default["interval"], thresholds, rtol=1e-6)
    np.testing.assert_allclose(default["occ"], occ, rtol=1e-4)


def _patterns(n: int = 500, seed: int = 11) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    uniform = rng.random((n, 2)) * 100
    parents = rng.random((12, 2)) * 80 + 10
    clustered = parents[rng.integers(0, 12, n)] + rng.normal(0, 2, (n, 2))
    adata = anndata.AnnData(np.zeros((2 * n, 1)), obsm={"spatial": np.vstack([uniform, clustered])})
    adata.obs["pattern"] = pd.Categorical(["csr"] * n + ["clustered"] * n)
    return adata


def test_ripley_l_is_r_under_csr_and_above_the_envelope_when_clustered():
    adata = _patterns()
    ripley(adata, "pattern", mode="L", n_simulations=39)
    result = adata.uns["pattern_ripley_L"]
    stat, envelope = result["L_stat"], result["envelope"]
    assert list(stat.columns) == ["bins", "pattern", "stats"]
    csr = stat[stat["pattern"] == "csr"]
    np.testing.assert_allclose(csr["stats"], csr["bins"], atol=0.06 * result["bins"][-1])
    for group, expected_inside in (("csr", 1.0), ("clustered", 0.0)):
        observed = stat.loc[stat["pattern"] == group, "stats"].to_numpy()[1:]
        band = envelope[envelope["pattern"] == group].iloc[1:]
        inside = (observed >= band["low"].to_numpy()) & (observed <= band["high"].to_numpy())
        assert inside.mean() == pytest.approx(expected_inside, abs=0.05)
    assert result["pvalue_global"]["csr"] > 0.1
    assert result["pvalue_global"]["clustered"] == pytest.approx(1 / 40)
    assert result["pvalues"].shape == (2, 50)
    clustered = list(result["pvalue_global"].index).index("clustered")
    assert (result["pvalues"][clustered, 1:] <= 2 / 40 + 1e-12).all()


@pytest.mark.parametrize("mode", ["K", "G", "F"])
def test_ripley_other_modes_separate_the_patterns(mode):
    adata = _patterns(300)
    support = np.linspace(0, 8, 17)
    result = ripley(adata, "pattern", mode=mode, support=support, n_simulations=19, copy=True)
    assert set(result) >= {f"{mode}_stat", "sims_stat", "bins", "pvalues"}
    assert result["sims_stat"].shape == (2 * 19 * 17, 4)
    assert result["pvalue_global"]["csr"] > 0.05
    assert result["pvalue_global"]["clustered"] == pytest.approx(1 / 20)
    if mode == "K":
        csr = result["K_stat"].query("pattern == 'csr'")
        np.testing.assert_allclose(csr["stats"], np.pi * support**2, atol=25)


def test_ripley_l_without_correction_equals_squidpy_up_to_n_over_n_minus_1():
    squidpy = _squidpy()
    adata = _patterns(400)
    adata = adata[adata.obs["pattern"] == "csr"].copy()
    adata.obs["pattern"] = adata.obs["pattern"].cat.remove_unused_categories()
    theirs = squidpy.gr.ripley(adata, "pattern", mode="L", n_simulations=2, seed=0, copy=True)
    ours = ripley(
        adata,
        "pattern",
        mode="L",
        support=theirs["bins"],
        edge_correction="none",
        n_simulations=2,
        copy=True,
    )
    scale = np.sqrt((adata.n_obs - 1) / adata.n_obs)
    np.testing.assert_allclose(
        ours["L_stat"]["stats"] * scale, theirs["L_stat"]["stats"], rtol=1e-12, atol=1e-12
    )


def test_copy_leaves_the_input_alone_and_results_repeat_under_a_seed():
    adata = _tissue(600)
    before = adata.copy()
    first = nhood_enrichment(adata, "group", method="permutation", n_perms=50, seed=4, copy=True)
    again = nhood_enrichment(adata, "group", method="permutation", n_perms=50, seed=4, copy=True)
    np.testing.assert_array_equal(first["zscore"], again["zscore"])
    co_occurrence(adata, "group", interval=5, copy=True)
    interaction_matrix(adata, "group", copy=True)
    one = ripley(adata, "group", mode="F", n_simulations=5, seed=1, copy=True)
    two = ripley(adata, "group", mode="F", n_simulations=5, seed=1, copy=True)
    pd.testing.assert_frame_equal(one["sims_stat"], two["sims_stat"])
    assert set(adata.uns) == set(before.uns)
    assert list(adata.obs.columns) == list(before.obs.columns)
    assert (adata.obsp["spatial_connectivities"] != before.obsp["spatial_connectivities"]).nnz == 0


def test_squidpy_plots_read_the_results():
    squidpy = _squidpy()
    adata = _tissue(500)
    nhood_enrichment(adata, "group")
    co_occurrence(adata, "group", interval=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        squidpy.pl.nhood_enrichment(adata, "group")
        squidpy.pl.co_occurrence(adata, "group", clusters=["a"])


def test_bad_input_gets_one_clear_error():
    adata = _tissue(200)
    with pytest.raises(SpatiomeInputError, match="cluster_key"):
        nhood_enrichment(adata, "cell_type")
    adata.obs["one"] = pd.Categorical(["x"] * adata.n_obs, categories=["x", "y"])
    for function in (nhood_enrichment, interaction_matrix, co_occurrence):
        with pytest.raises(SpatiomeInputError, match="at least 2"):
            function(adata, "one")
    with pytest.raises(SpatiomeInputError, match="spatiome.graph.spatial_neighbors"):
        nhood_enrichment(adata, "group", connectivity_key="other")
    with pytest.raises(SpatiomeInputError, match="spatiome.graph.spatial_neighbors"):
        interaction_matrix(adata, "group", connectivity_key="other_connectivities")
    with pytest.raises(SpatiomeInputError, match="method"):
        nhood_enrichment(adata, "group", method="exact")
    with pytest.raises(SpatiomeInputError, match="n_perms"):
        nhood_enrichment(adata, "group", method="permutation", n_perms=0)
    with pytest.raises(SpatiomeInputError, match="interval"):
        co_occurrence(adata, "group", interval=[3.0])
    with pytest.raises(SpatiomeInputError, match="mode"):
        ripley(adata, "group", mode="H")
    line = anndata.AnnData(
        np.zeros((10, 1)), obsm={"spatial": np.c_[np.arange(10.0), np.zeros(10)]}
    )
    line.obs["g"] = pd.Categorical(["a", "b"] * 5)
    with pytest.raises(SpatiomeInputError, match="one line"):
        ripley(line, "g")
    dense = adata.copy()
    dense.obsp["spatial_connectivities"] = sp.csr_matrix(dense.obsp["spatial_connectivities"])
    assert nhood_enrichment(dense, "group", copy=True)["count"].shape == (5, 5)


# --------------------------------------------------------------------------------------
# Several samples in one AnnData (library_key)
# --------------------------------------------------------------------------------------


def _two_sections(n: int = 800, seed: int = 5) -> anndata.AnnData:
    """Two sections on the same coordinates (so a pooled graph would join them)."""
    one = _tissue(n, seed)
    two = _tissue(n, seed + 1)
    two.obsm["spatial"] = one.obsm["spatial"].copy()
    both = anndata.concat([one, two], label="sample", keys=["s1", "s2"], index_unique="-")
    both.obs["group"] = pd.Categorical(both.obs["group"], categories=list("abcde"))
    spatial_neighbors(both, n_neighbors=6, library_key="sample")
    return both


def test_library_moments_equal_enumeration_of_relabellings_within_libraries():
    rng = np.random.default_rng(4)
    libraries = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    codes = np.array([0, 0, 1, 1, 2, 0, 1, 1, 2, 2])
    adjacency = (rng.random((10, 10)) < 0.5) & (libraries[:, None] == libraries[None, :])
    np.fill_diagonal(adjacency, False)
    rows, cols = np.nonzero(adjacency)
    first, second = np.arange(5), np.arange(5, 10)
    counts = []
    for a in itertools.permutations(first):
        for b in itertools.permutations(second):
            labels = codes[np.concatenate([a, b])]
            counts.append(_pair_counts(labels[rows], labels[cols], 3))
    counts = np.array(counts, dtype=float)
    mean, variance = _library_moments(rows, cols, codes, libraries, 3)
    np.testing.assert_allclose(mean, counts.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(variance, counts.var(axis=0), rtol=0, atol=1e-11)


def test_library_key_permutations_agree_and_one_library_is_no_library():
    adata = _two_sections()
    analytic = nhood_enrichment(adata, "group", library_key="sample", copy=True)
    permuted = nhood_enrichment(
        adata, "group", library_key="sample", method="permutation", n_perms=1000, copy=True
    )
    np.testing.assert_array_equal(analytic["count"], permuted["count"])
    z = analytic["zscore"]
    noise = np.sqrt(1 / 1000 + z**2 / (2 * 1000))
    assert np.all(np.abs(permuted["zscore"] - z) < 5 * noise)
    # The counts are the sums of the two sections' counts.
    parts = [adata[adata.obs["sample"] == s].copy() for s in ("s1", "s2")]
    summed = sum(nhood_enrichment(p, "group", copy=True)["count"] for p in parts)
    np.testing.assert_array_equal(analytic["count"], summed)
    single = parts[0]
    single.obs["sample"] = "only"
    for method in ("analytic", "permutation"):
        with_key = nhood_enrichment(
            single, "group", library_key="sample", method=method, n_perms=50, copy=True
        )
        without = nhood_enrichment(single, "group", method=method, n_perms=50, copy=True)
        np.testing.assert_array_equal(with_key["zscore"], without["zscore"])
    np.testing.assert_array_equal(
        interaction_matrix(single, "group", library_key="sample", copy=True),
        interaction_matrix(single, "group", copy=True),
    )
    interval = np.linspace(0.0, 40.0, 6)
    np.testing.assert_array_equal(
        co_occurrence(single, "group", library_key="sample", interval=interval, copy=True)["occ"],
        co_occurrence(single, "group", interval=interval, copy=True)["occ"],
    )
    for mode in ("L", "F"):
        with_key = ripley(
            single, "group", mode=mode, library_key="sample", n_simulations=9, copy=True
        )
        without = ripley(single, "group", mode=mode, n_simulations=9, copy=True)
        pd.testing.assert_frame_equal(with_key["sims_stat"], without["sims_stat"])
        np.testing.assert_array_equal(with_key["pvalues"], without["pvalues"])


def test_library_key_leaves_out_entries_between_sections():
    adata = _two_sections(400)
    parts = [adata[adata.obs["sample"] == s].copy() for s in ("s1", "s2")]
    np.testing.assert_array_equal(
        interaction_matrix(adata, "group", library_key="sample", copy=True),
        sum(interaction_matrix(p, "group", copy=True) for p in parts),
    )
    # A graph pooled over the shared coordinates joins cells of the two sections.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spatial_neighbors(adata, n_neighbors=6, key_added="pooled")
    kept = interaction_matrix(
        adata, "group", connectivity_key="pooled", library_key="sample", copy=True
    )
    pooled = interaction_matrix(adata, "group", connectivity_key="pooled", copy=True)
    assert np.all(kept <= pooled) and kept.sum() < pooled.sum()
    result = nhood_enrichment(
        adata, "group", connectivity_key="pooled", library_key="sample", copy=True
    )
    np.testing.assert_array_equal(result["count"], kept)


def test_identical_sections_pool_to_the_statistics_of_one():
    one = _tissue(600, 9)
    twice = anndata.concat([one, one], label="sample", keys=["a", "b"], index_unique="-")
    twice.obs["group"] = pd.Categorical(
        twice.obs["group"], categories=one.obs["group"].cat.categories
    )
    interval = np.linspace(0.0, 40.0, 6)
    np.testing.assert_allclose(
        co_occurrence(twice, "group", library_key="sample", interval=interval, copy=True)["occ"],
        co_occurrence(one, "group", interval=interval, copy=True)["occ"],
        rtol=1e-12,
    )
    pooled = ripley(twice, "group", mode="K", library_key="sample", n_simulations=5, copy=True)
    single = ripley(one, "group", mode="K", n_simulations=5, copy=True)
    pd.testing.assert_frame_equal(pooled["K_stat"], single["K_stat"], rtol=1e-12)


def test_bad_library_key_gets_one_clear_error():
    adata = _tissue(300)
    with pytest.raises(SpatiomeInputError, match="library_key"):
        nhood_enrichment(adata, "group", library_key="missing")
    adata.obs["sample"] = pd.Categorical(["a"] * 299 + [np.nan])
    with pytest.raises(SpatiomeInputError, match="missing values"):
        interaction_matrix(adata, "group", library_key="sample")
