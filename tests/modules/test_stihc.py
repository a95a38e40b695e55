"""stIHC: module recovery on the paper's three simulation designs and on many random
patterns with uneven expression levels, FEM smoother, contract."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

import spatiome as sm
from spatiome._core.progress import listen
from spatiome._core.validate import SpatiomeInputError
from spatiome.modules._simulate import coexpression_modules, pattern_modules
from spatiome.modules.stihc import _ihc, _penalty_matrix, _standard_ranks, stihc


@pytest.fixture(scope="module")
def designs():
    return {d: coexpression_modules(d, random_state=0) for d in ("equal", "imbalanced", "sparse")}


@pytest.mark.parametrize(
    ("design", "shape"),
    [("equal", (2696, 100)), ("imbalanced", (2696, 49)), ("sparse", (260, 49))],
)
def test_recovers_simulated_modules(designs, design, shape):
    adata = designs[design].copy()
    assert adata.shape == shape
    table = stihc(adata)
    ari = adjusted_rand_score(adata.var["module"], table["module"])
    assert ari >= 0.9, f"{design}: ARI {ari:.3f}"
    assert adata.var["stihc_module"].notna().all()
    n_modules = table["module"][table["module"] > 0].nunique()
    assert adata.obsm["stihc_profiles"].shape == (adata.n_obs, n_modules)
    params = adata.uns["spatiome"]["stihc"]
    assert params["n_modules"] == n_modules
    assert 0 < params["alpha"] < 1 and params["penalty"] > 0
    assert len(params["alpha_grid"]) == 20


def test_second_seed_sparse_design():
    adata = coexpression_modules("sparse", random_state=1)
    table = stihc(adata, copy=True)
    assert adjusted_rand_score(adata.var["module"], table["module"]) >= 0.9


def _ari_with_loners(truth, labels):
    """ARI where every gene without a module (-1) is a cluster of its own."""
    truth, labels = np.asarray(truth), np.asarray(labels)
    own = -1000 - np.arange(truth.size)
    return adjusted_rand_score(np.where(truth >= 0, truth, own), np.where(labels > 0, labels, own))


def test_many_patterns_with_uneven_levels():
    # Levels differing by orders of magnitude made the original's Euclidean silhouette
    # prefer leaving almost every gene alone or lumping unrelated ones (ARI 0.17 here).
    adata = pattern_modules(random_state=1)
    table = stihc(adata, copy=True)
    assert _ari_with_loners(adata.var["module"], table["module"]) >= 0.6
    assert table["module"][table["module"] > 0].nunique() >= 6


def test_demo_tissue_modules_follow_shared_patterns():
    # The pipeline's recipe on a simulated tissue: normalize, Moran's I on the grid graph,
    # the significant genes, most significant first. Each spatial gene there has its own
    # random pattern, so genes belong together when their true patterns correlate.
    from spatiome.datasets.simulate import _pattern_values

    adata = sm.datasets.simulate_tissue(n_spots=1500, n_genes=200, random_state=0)
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata, method="grid")
    moran = sm.svg.moran(adata, copy=True).sort_values(["qval", "log10_pval"], kind="stable")
    genes = list(moran.index[moran["qval"] < 0.05])
    table = stihc(adata, genes=genes, copy=True)
    labels = table["module"].to_numpy()
    truth = _standard_ranks(np.column_stack([_pattern_values(adata, g) for g in genes]))
    rho = truth.T @ truth / truth.shape[0]
    together = (labels[:, None] == labels[None, :]) & (labels[:, None] > 0)
    pairs = np.triu(together, k=1)
    # Before: 72 clusters of 77 genes on the 3,000-spot demo, or a few giant modules of
    # unrelated genes (here: 40% of the pairs put together had correlated patterns).
    assert (labels > 0).mean() >= 0.5
    assert len(set(labels[labels > 0])) >= 5
    assert (rho[pairs] > 0.5).mean() >= 0.75


def test_genes_alone_are_unassigned_and_dropped_by_module_labels():
    from spatiome.pl.domains import module_labels

    adata = _grid_adata(n_genes_per=4)
    xy = adata.obsm["spatial"]
    # Two genes with patterns of their own: a corner hot spot and a fine diagonal wave.
    own = [np.exp(-((xy - [3, 16]) ** 2).sum(1) / 8), np.sin((xy[:, 0] + xy[:, 1]) / 1.5)]
    rng = np.random.default_rng(5)
    extra = np.column_stack([f + rng.normal(0, 0.3, 400) for f in own])
    lone = anndata.AnnData(np.column_stack([adata.X, extra]), obsm=dict(adata.obsm))
    lone.var_names = [*adata.var_names, "own0", "own1"]
    table = stihc(lone)
    assert table.loc[["own0", "own1"], "module"].tolist() == [-1, -1]
    assert table.loc[["own0", "own1"], "module_size"].tolist() == [0, 0]
    assert table.loc[["own0", "own1"], "module_correlation"].isna().all()
    assert sorted(set(table["module"])) == [-1, 1, 2, 3]
    assert list(lone.obsm["stihc_profiles"].columns) == ["1", "2", "3"]
    assert lone.uns["spatiome"]["stihc"]["n_unassigned"] == 2
    labels = module_labels(lone.var["stihc_module"])
    assert set(labels.drop(["own0", "own1"], errors="ignore")) == {"1", "2", "3"}
    assert {labels.get("own0"), labels.get("own1")}.isdisjoint({"1", "2", "3"})


@pytest.mark.parametrize("kwargs", [{}, {"alpha": 0.5, "penalty": 5.0}])
def test_progress_reaches_the_total(kwargs):
    seen = []
    with listen(lambda task, done, total, unit, details: seen.append((task, done, total))):
        stihc(_grid_adata(), copy=True, **kwargs)
    steps = [done for task, done, _ in seen if task == "modules.stihc"]
    assert len(steps) >= 3
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))
    assert steps[-1] == seen[-1][2]


def test_original_silhouette_and_mode_remain_available():
    adata = _grid_adata()
    table = stihc(adata, silhouette_metric="euclidean", alpha_selection="mode")
    assert table["module"].nunique() == 3
    assert adata.uns["spatiome"]["stihc"]["silhouette_metric"] == "euclidean"


def test_penalty_matrix_is_a_laplacian_squared():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, size=(300, 2))
    penalty, n_triangles = _penalty_matrix(xy, None)
    assert n_triangles > 500
    dense = penalty.toarray()
    np.testing.assert_allclose(dense, dense.T, atol=1e-10)
    # Constants are not penalized and the matrix is positive semi-definite.
    np.testing.assert_allclose(dense @ np.ones(300), 0.0, atol=1e-8)
    assert np.linalg.eigvalsh(dense).min() > -1e-8
    # Scaling the coordinates does not change it (units are the median edge length).
    np.testing.assert_allclose(_penalty_matrix(xy * 250.0, None)[0].toarray(), dense, atol=1e-8)


def test_stiffness_annihilates_linear_functions_inside():
    xy = np.array([(i + 0.5 * (j % 2), j * np.sqrt(3) / 2) for j in range(12) for i in range(12)])
    penalty, _ = _penalty_matrix(xy, 3.0)
    linear = 2.0 * xy[:, 0] - xy[:, 1]
    # P = R1 M^-1 R1 and R1 x vanishes at interior nodes, so P x is zero two rings inside.
    inner = (xy[:, 0] > 2.5) & (xy[:, 0] < 8.5) & (xy[:, 1] > 2.5) & (xy[:, 1] < 7)
    assert np.abs((penalty @ linear)[inner]).max() < 1e-8


def test_ihc_separates_anticorrelated_blocks():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 2))
    profiles = np.column_stack([base[:, k] + 0.1 * rng.normal(size=200) for k in (0, 0, 1, 1, 1)])
    ranks = _standard_ranks(profiles)
    labels = _ihc(profiles, ranks, ranks.T @ ranks / 200, 0.5)
    assert labels.tolist()[:2] == [labels[0]] * 2 and len(set(labels[2:])) == 1
    assert labels[0] != labels[2]


def _grid_adata(n_genes_per=4, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    xy = np.array([(i, j) for i in range(20) for j in range(20)], dtype=float)
    fields = [np.sin(xy[:, 0] / 4), np.cos(xy[:, 1] / 3), np.exp(-((xy - 10) ** 2).sum(1) / 20)]
    values = np.column_stack(
        [f + rng.normal(0, noise, 400) for f in fields for _ in range(n_genes_per)]
    )
    adata = anndata.AnnData(values, obsm={"spatial": xy})
    adata.var_names = [f"g{i}" for i in range(adata.n_vars)]
    return adata


def test_deterministic_and_input_untouched():
    adata = _grid_adata()
    before = adata.X.copy()
    first = stihc(adata, copy=True)
    assert "stihc_module" not in adata.var and "spatiome" not in adata.uns
    np.testing.assert_array_equal(adata.X, before)
    second = stihc(adata, copy=True)
    assert first.equals(second)
    sparse = adata.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    assert stihc(sparse, copy=True)["module"].tolist() == first["module"].tolist()


def test_options_and_subsets():
    adata = _grid_adata()
    genes = list(adata.var_names[:8])
    table = stihc(adata, genes=genes, alpha=0.5, penalty=5.0, penalty_mean="geometric")
    assert list(table.index) == genes
    assert adata.var["stihc_module"].isna().sum() == adata.n_vars - 8
    assert adata.uns["spatiome"]["stihc"]["alpha_chosen_by"] == "given"
    legacy = stihc(adata, legacy_alpha_range=True, alpha_selection="silhouette", copy=True)
    assert legacy["module"].nunique() == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"penalty": -1.0}, "penalty"),
        ({"penalties": []}, "penalties"),
        ({"penalty_mean": "median"}, "penalty_mean"),
        ({"alpha_selection": "best"}, "alpha_selection"),
        ({"silhouette_metric": "cosine"}, "silhouette_metric"),
        ({"n_probes": 0}, "n_probes"),
        ({"max_edge": 0.5}, "max_edge"),
        ({"min_dof": 0}, "min_dof"),
        ({"genes": ["g0", "g1"]}, "at least 3"),
        ({"genes": ["nope"]}, "not in adata.var_names"),
    ],
)
def test_clear_errors(kwargs, match):
    with pytest.raises(SpatiomeInputError, match=match):
        stihc(_grid_adata(), **kwargs)


def test_errors_on_data():
    adata = _grid_adata()
    adata.X[:, 0] = 1.0
    with pytest.raises(SpatiomeInputError, match="constant"):
        stihc(adata)
    bad = _grid_adata()
    bad.X[3, 2] = np.nan
    with pytest.raises(SpatiomeInputError, match="NaN"):
        stihc(bad)
    line = _grid_adata()
    line.obsm["spatial"] = np.column_stack([np.arange(400.0), np.zeros(400)])
    with pytest.raises(SpatiomeInputError, match="triangulated"):
        stihc(line)
    del line.obsm["spatial"]
    with pytest.raises(SpatiomeInputError, match="obsm"):
        stihc(line)
