"""pp.doublets: accuracy on injected doublets, kernels against slow references, input checks.

Accuracy is measured on simulated single-cell tissues (2,500 cells, 300 genes, 5 cell types,
one per cell) in which ``datasets.inject_artifacts`` merges 5% of the cells with their
nearest free neighbour (``adjacent``) or with a random cell (``random``). Over seeds 0-5 the
default score reached AUROC 0.988-0.992 on adjacent doublets (heterotypic 0.998-1.000,
homotypic 0.973-0.986) and 0.996-0.998 on random ones (heterotypic 0.998-1.000, homotypic
0.982-0.991); at the automatic threshold precision was 0.77-0.86 and recall 0.74-0.88
(adjacent), 0.74-0.86 and 0.94-0.98 (random). Scrublet's estimator on random pairs
(``spatial_fraction=0, classifier=False``: the expression-only score) reached AUROC
0.889-0.941 and 0.977-0.985, homotypic 0.81-0.88 and 0.87-0.93; the same estimator with half
of the simulated doublets from spatial neighbours reached 0.922-0.960 (above the
random-pair one on every seed) and 0.974-0.992. The bounds below keep a margin under those
figures.
"""

from __future__ import annotations

import importlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.pp import doublets
from spatiome.pp.doublets import (
    _cross_product_kernel,
    _histogram_minimum,
    _knn_simulated_counts,
    _pair_fit_kernel,
    _principal_axes,
    _project,
    _scrublet_posterior,
    _scrublet_score,
)

N_CELLS = 2_500
MODULE = importlib.import_module("spatiome.pp.doublets")


def _tissue(mode: str, seed: int = 0, n_cells: int = N_CELLS, n_genes: int = 300) -> ad.AnnData:
    cells = sm.datasets.simulate_tissue(
        n_spots=n_cells,
        n_genes=n_genes,
        layout="random",
        n_cell_types=5,
        single_cells=True,
        random_state=seed,
    )
    merged = sm.datasets.inject_artifacts(
        cells,
        dry_patch_fraction=0,
        edge_fraction=0,
        doublet_fraction=0.05,
        doublet_mode=mode,
        random_state=seed,
    )
    truth = (merged.obs["injected"] == "doublet").to_numpy()
    partner = merged.obs["doublet_partner"].to_numpy()
    own = merged.obs["cell_type"].astype(str).to_numpy()
    partner_type = np.full(merged.n_obs, "", dtype=object)
    partner_type[truth] = cells.obs["cell_type"].astype(str).loc[partner[truth]].to_numpy()
    merged.obs["truth"] = truth
    merged.obs["homotypic"] = truth & (own == partner_type)
    merged.obs["partner_type"] = partner_type
    return merged


def _aurocs(adata: ad.AnnData, score: np.ndarray) -> dict[str, float]:
    truth = adata.obs["truth"].to_numpy()
    homotypic = adata.obs["homotypic"].to_numpy()
    heterotypic = truth & ~homotypic
    return {
        "all": roc_auc_score(truth, score),
        "heterotypic": roc_auc_score(heterotypic[~homotypic], score[~homotypic]),
        "homotypic": roc_auc_score(homotypic[~heterotypic], score[~heterotypic]),
    }


@pytest.fixture(scope="module", params=["adjacent", "random"])
def scored(request):
    """A tissue with injected doublets, scored by the default call and by Scrublet's kNN."""
    adata = _tissue(request.param)
    doublets(adata)
    plain = doublets(adata, spatial_fraction=0.0, classifier=False, copy=True)
    return request.param, adata, plain


# ---------------------------------------------------------------------------------------
# Accuracy


def test_detects_injected_doublets(scored):
    mode, adata, _ = scored
    auroc = _aurocs(adata, adata.obs["doublet_score"].to_numpy())
    truth = adata.obs["truth"].to_numpy()
    calls = adata.obs["doublet"].to_numpy()
    precision = (calls & truth).sum() / calls.sum()
    recall = (calls & truth).sum() / truth.sum()
    print(f"{mode}: AUROC {auroc}, precision {precision:.3f}, recall {recall:.3f}")
    assert auroc["all"] >= 0.97
    assert auroc["heterotypic"] >= 0.98
    # homotypic merges share the expression profile: the summed counts give them away
    assert auroc["homotypic"] >= 0.9
    assert precision >= 0.6
    assert recall >= (0.6 if mode == "adjacent" else 0.8)


def test_spatial_variant_against_expression_only(scored):
    mode, adata, plain = scored
    expression = _aurocs(adata, plain.obs["doublet_score"].to_numpy())
    spatial = _aurocs(adata, adata.obs["doublet_score"].to_numpy())
    spatial_knn = _aurocs(adata, adata.obs["doublet_knn_score"].to_numpy())
    print(f"{mode}: expression-only {expression}, spatial {spatial}, kNN {spatial_knn}")
    if mode == "adjacent":
        assert spatial["all"] >= expression["all"] + 0.03
        # the same kNN estimator, with spatial neighbours among the simulated doublets
        assert spatial_knn["all"] >= expression["all"] - 0.005
    else:
        assert spatial["all"] >= expression["all"] - 0.005
        assert spatial_knn["all"] >= expression["all"] - 0.015


def test_outputs_and_parameters(scored):
    _, adata, _ = scored
    obs = adata.obs
    assert obs["doublet"].dtype == bool
    assert obs["doublet_spatially_plausible"].dtype == bool
    assert not (obs["doublet_spatially_plausible"] & ~obs["doublet"]).any()
    assert obs["doublet_score"].between(0, 1).all()
    assert (obs["doublet_knn_score_se"] > 0).all()
    params = adata.uns["spatiome"]["doublets"]
    threshold = params["threshold"]
    np.testing.assert_array_equal(obs["doublet"], obs["doublet_score"] > threshold)
    assert params["n_simulated"] == 2 * adata.n_obs
    assert params["n_simulated_spatial"] == adata.n_obs
    assert params["k"] == round(0.5 * np.sqrt(adata.n_obs))
    assert params["k_adj"] == round(params["k"] * 3)
    assert len(params["simulated_scores"]) == params["n_simulated"]
    assert set(obs["doublet_type_1"].cat.categories) == set(params["types"])
    # clusters recover the five simulated types, and heterotypic doublets get a second type
    assert len(params["types"]) >= 5
    heterotypic = obs["truth"] & ~obs["homotypic"] & obs["doublet"]
    assert obs.loc[heterotypic, "doublet_type_2"].notna().mean() > 0.8


def test_reference_labels_name_the_pair():
    adata = _tissue("adjacent", seed=1, n_cells=1_500)
    doublets(adata, groupby="cell_type")
    obs = adata.obs
    types = [f"CellType{t}" for t in range(1, 6)]
    assert list(adata.uns["spatiome"]["doublets"]["types"]) == types
    first = obs["doublet_type_1"].astype(str)
    second = obs["doublet_type_2"].astype(str)
    singlets = ~obs["truth"]
    assert (first[singlets] == obs.loc[singlets, "cell_type"]).mean() > 0.95
    found = obs["truth"] & ~obs["homotypic"] & obs["doublet"]
    named = [
        {a, b} == {c, d}
        for a, b, c, d in zip(
            first[found],
            second[found],
            obs.loc[found, "cell_type"],
            obs["partner_type"][found],
            strict=True,
        )
    ]
    assert len(named) > 20 and np.mean(named) > 0.8
    assert roc_auc_score(obs["truth"], obs["doublet_score"]) > 0.97


def test_area_feature_is_used():
    adata = _tissue("adjacent", seed=2, n_cells=1_000)
    rng = np.random.default_rng(0)
    area = rng.lognormal(np.log(80.0), 0.2, adata.n_obs)
    area[adata.obs["truth"].to_numpy()] *= 2.0  # a merge adds the partner's area
    adata.obs["cell_area"] = area
    doublets(adata, area_key="cell_area")
    params = adata.uns["spatiome"]["doublets"]
    assert {"local_z_area", "log_area"} <= set(params["features"])
    assert roc_auc_score(adata.obs["truth"], adata.obs["doublet_score"]) > 0.97


# ---------------------------------------------------------------------------------------
# Contract: inputs, copies, determinism


@pytest.fixture(scope="module")
def small():
    return _tissue("adjacent", seed=3, n_cells=600, n_genes=80)


def test_deterministic_and_leaves_inputs_alone(small):
    before = small.copy()
    first = doublets(small, random_state=7, copy=True)
    second = doublets(small, random_state=7, n_jobs=2, copy=True)
    other = doublets(small, random_state=8, copy=True)
    pd.testing.assert_frame_equal(first.obs, second.obs)
    assert not np.array_equal(first.obs["doublet_score"], other.obs["doublet_score"])
    # the input is untouched; the copy holds only new obs columns and uns entries
    pd.testing.assert_frame_equal(small.obs, before.obs)
    assert "spatiome" not in small.uns or "doublets" not in small.uns["spatiome"]
    for name in ("X", "counts"):
        old = before.X if name == "X" else before.layers[name]
        new = first.X if name == "X" else first.layers[name]
        assert (old != new).nnz == 0
    np.testing.assert_array_equal(first.obsm["spatial"], before.obsm["spatial"])
    new_columns = set(first.obs.columns) - set(before.obs.columns)
    assert new_columns == {
        "doublet_score", "doublet", "doublet_knn_score", "doublet_knn_score_se",
        "doublet_type_1", "doublet_type_2", "doublet_spatially_plausible",
    }  # fmt: skip


def test_in_place_returns_none_and_key_added(small, tmp_path):
    adata = small.copy()
    assert doublets(adata, key_added="multiplet", classifier=False, threshold="expected") is None
    assert "multiplet_score" in adata.obs
    params = adata.uns["spatiome"]["doublets"]
    assert params["threshold_method"] == "expected_rate"
    assert params["features"] == ["knn_score"]
    # kNN scores are discrete: ties at the cut are left uncalled
    assert 0.5 * 0.05 * adata.n_obs < adata.obs["multiplet"].sum() <= round(0.05 * adata.n_obs)
    np.testing.assert_allclose(adata.obs["multiplet_score"], adata.obs["multiplet_knn_score"])
    # the results survive a round trip through h5ad
    adata.write_h5ad(tmp_path / "scored.h5ad")
    back = ad.read_h5ad(tmp_path / "scored.h5ad")
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    # dense counts in X give the same scores as the sparse counts layer
    dense = small.copy()
    dense.X = dense.layers["counts"].toarray()
    doublets(dense, layer=None, key_added="multiplet", classifier=False, threshold="expected")
    np.testing.assert_allclose(dense.obs["multiplet_score"], adata.obs["multiplet_score"])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"layer": "lognorm"}, "non-integer"),
        ({"expected_rate": 0.0}, "expected_rate"),
        ({"expected_rate": 0.6}, "expected_rate"),
        ({"sim_ratio": 0.0}, "sim_ratio"),
        ({"spatial_fraction": 1.5}, "spatial_fraction"),
        ({"spatial_k": 0}, "spatial_k"),
        ({"n_pcs": 1}, "n_pcs"),
        ({"threshold": "median"}, "threshold"),
        ({"threshold": 2.0}, "threshold"),
        ({"classifier": "yes"}, "classifier"),
        ({"key_added": ""}, "key_added"),
        ({"groupby": "missing"}, "groupby|missing"),
        ({"area_key": "missing"}, "missing"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_bad_input_is_rejected(small, change, match):
    adata = small.copy()
    adata.layers["lognorm"] = sp.csr_matrix(np.log1p(adata.layers["counts"].astype(float)))
    with pytest.raises(SpatiomeInputError, match=match):
        doublets(adata, **change)


def test_too_few_cells_and_missing_coordinates(small):
    with pytest.raises(SpatiomeInputError, match="at least 100 cells"):
        doublets(small[:60].copy())
    adata = small.copy()
    del adata.obsm["spatial"]
    with pytest.raises(SpatiomeInputError, match="spatial"):
        doublets(adata)
    adata = small.copy()
    adata.obs["cell_area"] = -1.0
    with pytest.raises(SpatiomeInputError, match="positive"):
        doublets(adata, area_key="cell_area")


def test_empty_cells_get_no_type(small):
    adata = small.copy()
    counts = adata.layers["counts"].tolil()
    counts[:3] = 0
    adata.layers["counts"] = counts.tocsr()
    doublets(adata, classifier=False)
    obs = adata.obs
    assert obs["doublet_type_1"].iloc[:3].isna().all()
    assert obs["doublet_type_1"].iloc[3:].notna().all()
    assert not obs["doublet"].iloc[:3].any()


def test_large_panels_use_variable_genes():
    adata = _tissue("adjacent", seed=4, n_cells=600, n_genes=1_200)
    doublets(adata, classifier=False)
    n_genes = adata.uns["spatiome"]["doublets"]["n_genes"]
    assert 100 <= n_genes <= 0.15 * 1_200 + 1
    assert roc_auc_score(adata.obs["truth"], adata.obs["doublet_score"]) > 0.8


def test_public_name():
    assert sm.pp.doublets is MODULE.doublets


# ---------------------------------------------------------------------------------------
# Kernels against slow but obviously correct references


def test_scrublet_score_and_delta_method_error():
    q_counts = np.array([0, 3, 10, 40])
    k_adj, ratio, rate = 60, 2.0, 0.05
    score, se = _scrublet_score(q_counts, k_adj, ratio, rate)
    q = (q_counts + 1) / (k_adj + 2)
    np.testing.assert_allclose(score, q * rate / ratio / (1 - rate - q * (1 - rate - rate / ratio)))
    # delta method by finite differences
    step = 1e-6
    d_q = (_scrublet_posterior(q + step, ratio, rate) - score) / step
    d_rate = (_scrublet_posterior(q, ratio, rate + step) - score) / step
    se_q = np.sqrt(q * (1 - q) / (k_adj + 3))
    np.testing.assert_allclose(se, np.hypot(d_q * se_q, d_rate * 0.02), rtol=1e-4)
    ends = _scrublet_posterior(np.array([0.0, 1.0]), ratio, rate)
    np.testing.assert_allclose(ends, [0.0, 1.0])


def test_pair_fit_matches_nnls():
    rng = np.random.default_rng(0)
    centroids = rng.gamma(1.0, 1.0, size=(4, 30))
    cells = np.vstack(
        [
            0.7 * centroids[1] + 0.3 * centroids[3] + rng.normal(0, 0.05, 30),
            centroids[2] + rng.normal(0, 0.05, 30),
            rng.gamma(1.0, 1.0, size=(6, 30)),
        ]
    )
    gram = centroids @ centroids.T
    projection = cells @ centroids.T
    squares = (cells**2).sum(axis=1)
    values = np.empty((len(cells), 4))
    types = np.empty((len(cells), 3), dtype=np.int64)
    _pair_fit_kernel(projection, squares, gram, 0, len(cells), values, types)
    for i, cell in enumerate(cells):
        single = max(1 - nnls(centroids[[t]].T, cell)[1] ** 2 / squares[i] for t in range(4))
        pairs = [
            1 - nnls(centroids[[s, t]].T, cell)[1] ** 2 / squares[i]
            for s in range(4)
            for t in range(s + 1, 4)
        ]
        np.testing.assert_allclose(values[i, 0], single, atol=1e-9)
        np.testing.assert_allclose(values[i, 1], max(max(pairs), single), atol=1e-9)
    assert types[0, 1] == 1 and types[0, 2] == 3
    np.testing.assert_allclose(values[0, 3], 0.3, atol=0.05)
    assert types[1, 0] == 2


def test_cross_product_and_projection_kernels():
    rng = np.random.default_rng(1)
    dense = rng.poisson(0.4, size=(50, 12)).astype(float)
    dense[:5] = rng.poisson(5.0, size=(5, 12))  # dense rows take the buffered path
    matrix = sp.csr_matrix(dense)
    upper = np.zeros((12, 12))
    _cross_product_kernel(matrix.indptr, matrix.indices, matrix.data, 0, 50, upper)
    np.testing.assert_allclose(np.triu(upper), np.triu(dense.T @ dense))

    first = np.array([0, 3, 7, 10])
    second = np.array([-1, 4, 9, 10])
    row_scale = np.array([0.5, 1.0, 2.0, 0.1])
    gene_scale = rng.random(12)
    basis = rng.normal(size=(12, 3))
    summed = dense[first] + np.where(second[:, None] >= 0, dense[second], 0.0)
    values = np.log1p(summed * row_scale[:, None]) * gene_scale
    projected, squares, detected = _project(
        matrix, first, second, row_scale, gene_scale, True, basis, 1
    )
    np.testing.assert_allclose(projected, values @ basis)
    np.testing.assert_allclose(squares, (values**2).sum(axis=1))
    np.testing.assert_array_equal(detected, (summed > 0).sum(axis=1))


def test_principal_axes_eigh_and_arpack_agree(monkeypatch):
    rng = np.random.default_rng(2)
    matrix = sp.csr_matrix(rng.poisson(1.0, size=(300, 25)) * rng.gamma(1, 1, size=25))
    mean = np.asarray(matrix.mean(axis=0)).ravel()
    exact = _principal_axes(matrix, mean, 5, rng, 1)
    reference = np.linalg.svd(matrix.toarray() - mean, full_matrices=False)[2][:5].T
    np.testing.assert_allclose(np.abs(exact.T @ reference), np.eye(5), atol=1e-6)
    monkeypatch.setattr(MODULE, "GRAM_MAX_GENES", 10)
    iterative = _principal_axes(matrix, mean, 5, rng, 1)
    np.testing.assert_allclose(iterative, exact, atol=1e-6)


@pytest.mark.parametrize("n_points", [400, 4_000])
def test_knn_counts_against_brute_force(n_points):
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 4, size=(6, 5))
    points = centres[rng.integers(0, 6, n_points)] + rng.normal(size=(n_points, 5))
    is_sim = rng.random(n_points) < 0.6
    ks = np.array([3, 10, 40])
    counts, neighbours = _knn_simulated_counts(
        points, is_sim, ks, np.random.default_rng(0), 1, n_observed=50
    )
    order = NearestNeighbors(n_neighbors=41).fit(points).kneighbors(points)[1][:, 1:]
    expected = np.cumsum(is_sim[order], axis=1)[:, ks - 1]
    exact_rows = (counts == expected).all(axis=1).mean()
    if n_points <= 2048:
        assert exact_rows == 1.0
        # up to 15 observed cells among the 40 nearest, -1 beyond those found
        for row, nearest in zip(neighbours, order[:50], strict=True):
            want = nearest[~is_sim[nearest]][:15]
            np.testing.assert_array_equal(row[: want.size], want)
            assert (row[want.size :] == -1).all()
    else:
        # inverted-file search: approximate, but nearly every neighbourhood is found
        assert exact_rows > 0.9
        assert np.abs(counts - expected).mean() < 0.5


def test_thresholds():
    rng = np.random.default_rng(5)
    scores = rng.random(1000)
    cut = MODULE._expected_rate_threshold(scores, 0.05)
    assert (scores > cut).sum() == 50
    bimodal = np.concatenate([rng.normal(0.1, 0.05, 5000), rng.normal(0.8, 0.05, 2000)])
    otsu = MODULE._otsu(bimodal)
    assert 0.25 < otsu < 0.65
    # the histogram minimum is kept only when it calls a plausible share of the cells
    observed = np.concatenate([rng.normal(0.1, 0.05, 950), rng.normal(0.8, 0.05, 50)])
    value, method = MODULE._threshold(observed, bimodal, "auto", 0.05)
    assert method == "histogram_minimum" and 0.3 < value < 0.6
    value, method = MODULE._threshold(observed, bimodal, "auto", 0.005)
    assert method == "expected_rate" and (observed > value).sum() == 5
    assert MODULE._threshold(observed, bimodal, 0.25, 0.05) == (0.25, "manual")


def test_histogram_minimum():
    rng = np.random.default_rng(4)
    bimodal = np.concatenate([rng.normal(0.1, 0.05, 5000), rng.normal(0.8, 0.05, 2000)])
    cut = _histogram_minimum(bimodal)
    assert cut is not None and 0.3 < cut < 0.6
    assert _histogram_minimum(rng.normal(0.5, 0.1, 5000)) is None
