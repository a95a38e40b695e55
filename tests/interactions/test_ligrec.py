"""Ligand-receptor bivariate Moran's I: exact values, null moments, calibration, resources."""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.datasets.ligrec_simulation import simulate_interactions
from spatiome.interactions import resource as lr_resource
from spatiome.interactions.ligrec import (
    _graph,
    gene_symbols,
    ligrec,
    ligrec_local,
    permutation_moments,
)


def path_tissue():
    """Four spots on a line (0-1-2-3) and three genes; every number can be checked by hand."""
    values = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [2.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    adata = anndata.AnnData(sp.csr_matrix(values))
    adata.var_names = ["L", "R", "S"]
    edges = np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=float)
    adata.obsp["spatial_connectivities"] = sp.csr_matrix(edges)
    return adata


def random_tissue(n=600, n_genes=30, seed=0, density=0.3):
    """Spatially random, sparse expression on a kNN graph (the permutation null holds)."""
    rng = np.random.default_rng(seed)
    values = rng.gamma(1.0, 1.0, (n, n_genes)) * (rng.random((n, n_genes)) < density)
    adata = anndata.AnnData(sp.csr_matrix(values), obsm={"spatial": rng.random((n, 2))})
    adata.var_names = [f"G{j}" for j in range(n_genes)]
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    return adata


def test_exact_scores_on_a_path():
    adata = path_tissue()
    table = ligrec(adata, resource=[("L", "R")], min_expr_fraction=0.0, n_local=1, copy=True)
    # z_L = (0, -1, 1, 0) sqrt2 and z_R = (-1, 2, 0, -1) sqrt(2/3) (mean 0, sum z^2 = 4);
    # row-normalized W of the path has rows (0,1,0,0), (.5,0,.5,0), (0,.5,0,.5), (0,0,1,0),
    # so W z_R = (2, -1/2, 1/2, 0) sqrt(2/3), z_L' W z_R = 2 / sqrt3 and I = that / 4.
    expected = 1 / (2 * np.sqrt(3))
    assert table.loc[0, "score"] == pytest.approx(expected, rel=1e-12)
    local = ligrec_local(adata, [("L", "R")])["L^R"].to_numpy()
    np.testing.assert_allclose(local, [0, 1 / np.sqrt(3), 1 / np.sqrt(3), 0], atol=1e-7)
    assert local.sum() / 4 == pytest.approx(expected, rel=1e-6)


def test_scores_match_a_dense_reference():
    adata = random_tissue(n=200, n_genes=8, seed=3)
    pairs = list(itertools.permutations(adata.var_names[:4], 2))
    table = ligrec(adata, resource=pairs, min_expr_fraction=0.0, copy=True)
    dense = adata.X.toarray()
    z = (dense - dense.mean(0)) / dense.std(0)
    w = adata.obsp["spatial_connectivities"].toarray()
    w = w / w.sum(1, keepdims=True)
    index = {g: j for j, g in enumerate(adata.var_names)}
    for row in table.itertuples():
        expected = z[:, index[row.ligand]] @ w @ z[:, index[row.receptor]] / 200
        assert row.score == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("transformation", ["row", "none"])
def test_moments_equal_those_of_all_permutations(transformation):
    rng = np.random.default_rng(1)
    n = 7
    weights = (rng.random((n, n)) < 0.4) * rng.random((n, n))
    np.fill_diagonal(weights, 0.0)
    adata = anndata.AnnData(np.zeros((n, 1)))
    adata.obsp["w"] = sp.csr_matrix(weights)
    graph, _ = _graph(adata, "w", transformation)
    w = graph.matrix.toarray()
    x = rng.gamma(1.0, 1.0, n)
    y = rng.gamma(1.0, 1.0, n) + 0.5 * x  # correlated within spots
    zx, zy = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    null = np.array([zx[list(p)] @ w @ zy[list(p)] for p in itertools.permutations(range(n))])
    mean, variance = permutation_moments(graph, zx @ zy, (zx**2 * zy**2).sum(), n)
    assert mean == pytest.approx(null.mean(), rel=1e-10)
    assert variance == pytest.approx(null.var(), rel=1e-10)


def test_analytic_agrees_with_permutations():
    adata = random_tissue(n=500, n_genes=10, seed=5)
    pairs = list(itertools.permutations(adata.var_names[:5], 2))
    table = ligrec(adata, resource=pairs, n_permutations=999, random_state=1, copy=True)
    assert (table["pvalue_perm"] >= 1 / 1000).all()
    np.testing.assert_allclose(table["pvalue_analytic"], table["pvalue_perm"], atol=0.05)
    assert table["pvalue"].equals(table["pvalue_perm"])


def test_calibration_under_the_null():
    adata = random_tissue(n=800, n_genes=40, seed=11)
    pairs = list(itertools.permutations(adata.var_names, 2))[::3]
    table = ligrec(adata, resource=pairs, copy=True)
    pvalues = table["pvalue_analytic"].to_numpy()
    assert stats.kstest(pvalues, "uniform").pvalue > 1e-3
    assert 0.02 <= (pvalues < 0.05).mean() <= 0.08
    two_sided = ligrec(adata, resource=pairs, two_tailed=True, copy=True)["pvalue"]
    assert 0.02 <= (two_sided < 0.05).mean() <= 0.08
    assert (pvalues > 0).all()


@pytest.fixture(scope="module")
def simulated():
    adata = simulate_interactions(n_cells=1500, random_state=2)
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    return adata


def test_planted_pairs_found_and_decoys_not(simulated):
    truth = simulated.uns["ligrec_truth"]
    table = ligrec(simulated, resource=truth, min_expr_fraction=0.01, copy=True)
    kinds = table.merge(truth, on=["ligand", "receptor"]).set_index(["ligand", "receptor"])
    planted = kinds[kinds["kind"] == "planted"]
    assert len(planted) == (truth["kind"] == "planted").sum()
    assert (planted["qvalue"] < 0.05).all()
    assert (kinds.loc[kinds["kind"] == "decoy", "qvalue"] > 0.05).all()
    assert (kinds.loc[kinds["kind"] == "null", "qvalue"] > 0.05).mean() > 0.9
    assert planted["receptor_complex"].sum() == 1


def test_groups_separate_interactions_from_colocalization(simulated):
    truth = simulated.uns["ligrec_truth"]
    resource = pd.concat(
        [truth[truth["kind"] == "planted"].head(2), truth[truth["kind"] == "decoy_colocalized"]]
    )
    adata = simulated.copy()
    ligrec(adata, resource=resource, groups="cell_type", n_permutations=99, n_local=2)
    groups = adata.uns["ligrec_groups"].merge(truth, on=["ligand", "receptor"])
    planted = groups[(groups["kind"] == "planted") & (groups["sender"] == "A")]
    assert (planted.loc[planted["receiver"] == "B", "pvalue"] <= 0.02).all()
    coloc = groups[(groups["kind"] == "decoy_colocalized") & (groups["sender"] == "C")]
    assert (coloc.loc[coloc["receiver"] == "D", "pvalue"] > 0.05).all()
    table = adata.uns["ligrec"]
    assert table.merge(truth).query("kind == 'decoy_colocalized'")["pvalue_analytic"].max() < 1e-6
    assert adata.obsm["ligrec_local"].shape == (adata.n_obs, 2)


def test_complex_takes_the_minimum_of_its_subunits():
    adata = path_tissue()
    table = ligrec(adata, resource=[("L", "R_S")], min_expr_fraction=0.0, copy=True)
    minimum = np.minimum(adata[:, "R"].X.toarray(), adata[:, "S"].X.toarray())
    reference = anndata.AnnData(
        np.column_stack([adata[:, "L"].X.toarray(), minimum]),
        obsp={"spatial_connectivities": adata.obsp["spatial_connectivities"]},
    )
    reference.var_names = ["L", "RS"]
    plain = ligrec(reference, resource=[("L", "RS")], min_expr_fraction=0.0, copy=True)
    assert bool(table.loc[0, "receptor_complex"])
    assert table.loc[0, "score"] == pytest.approx(plain.loc[0, "score"], rel=1e-12)


def test_ensembl_ids_map_through_a_symbol_column():
    adata = path_tissue()
    ids = ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"]
    adata.var["gene_name"] = adata.var_names.tolist()
    adata.var_names = ids
    assert gene_symbols(adata).tolist() == ["L", "R", "S"]
    table = ligrec(adata, resource=[("L", "R")], min_expr_fraction=0.0, copy=True)
    assert table.loc[0, "score"] == pytest.approx(1 / (2 * np.sqrt(3)))
    adata.var["ids_again"] = ids
    with pytest.raises(SpatiomeInputError, match="symbol_key"):
        ligrec(adata, resource=[("L", "R")], symbol_key="missing", copy=True)
    del adata.var["gene_name"]
    with pytest.raises(SpatiomeInputError, match="Ensembl IDs"):
        ligrec(adata, resource=[("L", "R")], copy=True)


def test_dlpfc_without_symbols_gives_one_clear_error(shared_data, monkeypatch):
    if not (shared_data / "dlpfc_151673").is_dir():
        pytest.skip("dlpfc_151673 not available")
    monkeypatch.setenv("SPATIOME_DATA", str(shared_data))
    adata = sm.datasets.load("dlpfc_151673")
    with pytest.raises(SpatiomeInputError, match="gene_symbol"):
        gene_symbols(adata)


def test_inputs_untouched():
    adata = random_tissue(n=200, n_genes=6, seed=2)
    before = adata.copy()
    pairs = pd.DataFrame({"ligand": ["G0", "G1"], "receptor": ["G2", "G3"]})
    kept = pairs.copy()
    ligrec(adata, resource=pairs, groups=None, min_expr_fraction=0.0, copy=True)
    assert (adata.X != before.X).nnz == 0
    assert set(adata.uns) == set(before.uns) and set(adata.obsm) == set(before.obsm)
    pd.testing.assert_frame_equal(pairs, kept)
    ligrec(adata, resource=pairs, min_expr_fraction=0.0)
    assert (adata.X != before.X).nnz == 0
    assert "ligrec" in adata.uns and adata.uns["spatiome"]["ligrec"]["n_pairs_tested"] == 2


def test_bad_inputs_raise():
    adata = path_tissue()
    with pytest.raises(SpatiomeInputError, match="spatial_neighbors"):
        ligrec(adata, resource=[("L", "R")], connectivity_key="other")
    with pytest.raises(SpatiomeInputError, match="none of the"):
        ligrec(adata, resource=[("Tgfb1", "Tgfbr1")])
    with pytest.raises(SpatiomeInputError, match="ligand"):
        ligrec(adata, resource=pd.DataFrame({"a": ["L"], "b": ["R"]}))


def test_resource_is_read_from_the_installed_liana():
    pytest.importorskip("liana")
    pairs = lr_resource.ligand_receptor_pairs()
    path = importlib.metadata.distribution("liana").locate_file(lr_resource.LIANA_TABLE)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert pairs.attrs["sha256"] == digest
    assert pairs.attrs["liana_version"] == importlib.metadata.version("liana")
    assert {"ligand", "receptor"} <= set(pairs.columns) and len(pairs) > 1000
    complexes = pairs[pairs["receptor_complex"]]
    assert complexes["receptor"].str.contains("_").all()
    mouse = lr_resource.ligand_receptor_pairs(organism="mouse")
    assert mouse.attrs["resource"] == "mouseconsensus"
    assert mouse["ligand"].str[1:].str.islower().mean() > 0.9


def test_missing_liana_says_how_to_install(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(lr_resource.importlib.metadata, "distribution", absent)
    with pytest.raises(ImportError, match=r"spatiome\[interactions\]"):
        lr_resource.ligand_receptor_pairs()


@pytest.fixture(scope="module")
def patterned_depth():
    """No interaction, e-fold depth gradient, normalized as the pipeline does."""
    adata = simulate_interactions(
        n_cells=1200,
        interaction_strength=0.0,
        depth_gradient=1.5,
        n_null_pairs=200,
        random_state=4,
    )
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    return adata


def test_default_is_pearson_residuals_of_the_counts(patterned_depth):
    adata = patterned_depth.copy()
    truth = adata.uns["ligrec_truth"]
    table = ligrec(adata, resource=truth, min_expr_fraction=0.01, n_local=2)
    assert adata.uns["spatiome"]["ligrec"]["normalization"] == "pearson"
    residuals = sm.pp.normalize(adata.copy(), method="pearson", copy=True)
    reference = ligrec(
        residuals, resource=truth, normalization="none", min_expr_fraction=0.01, copy=True
    )
    both = table.merge(reference, on=["ligand", "receptor"], suffixes=("", "_ref"))
    assert len(both) == len(table) == len(reference)
    np.testing.assert_allclose(both["score"], both["score_ref"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(both["zscore"], both["zscore_ref"], rtol=1e-9, atol=1e-9)
    local = ligrec_local(adata, [tuple(table.loc[0, ["ligand", "receptor"]])])
    np.testing.assert_allclose(local.iloc[:, 0], adata.obsm["ligrec_local"].iloc[:, 0], atol=1e-5)
    # Without a counts layer (or with an explicit layer) the values are used as given.
    del adata.layers["counts"]
    ligrec(adata, resource=truth, min_expr_fraction=0.01, n_local=0)
    assert adata.uns["spatiome"]["ligrec"]["normalization"] == "none"


def test_default_holds_type1_error_where_log1p_does_not(patterned_depth):
    truth = patterned_depth.uns["ligrec_truth"]
    nulls = truth[truth["kind"] == "null"]
    rates = {}
    for normalization in ("auto", "none"):
        table = ligrec(
            patterned_depth,
            resource=nulls,
            normalization=normalization,
            min_expr_fraction=0.01,
            copy=True,
        )
        rates[normalization] = (table["pvalue_analytic"] < 0.05).mean()
    assert rates["auto"] <= 0.075
    assert rates["none"] > 2 * rates["auto"]


def test_normalization_errors():
    adata = path_tissue()
    with pytest.raises(SpatiomeInputError, match="counts_layer"):
        ligrec(adata, resource=[("L", "R")], normalization="pearson")
    with pytest.raises(SpatiomeInputError, match="normalization must be"):
        ligrec(adata, resource=[("L", "R")], normalization="log")
    adata.layers["counts"] = adata.X.copy()
    with pytest.raises(SpatiomeInputError, match="theta"):
        ligrec(adata, resource=[("L", "R")], theta=0.0)
    adata.layers["counts"] = -adata.X
    with pytest.raises(SpatiomeInputError, match="negative values"):
        ligrec(adata, resource=[("L", "R")], min_expr_fraction=0.0)


def test_identical_on_a_dask_cluster():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is a dev extra")
    adata = random_tissue(n=300, n_genes=8, seed=6)
    adata.obs["type"] = pd.Categorical(np.arange(adata.n_obs) % 3)
    pairs = list(itertools.permutations(adata.var_names[:5], 2))
    options = dict(
        resource=pairs, groups="type", n_permutations=20, chunk_size=2, min_expr_fraction=0.0
    )
    local = adata.copy()
    ligrec(local, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with (
            distributed.LocalCluster(
                n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            remote = adata.copy()
            ligrec(remote, client=client, **options)
    pd.testing.assert_frame_equal(local.uns["ligrec"], remote.uns["ligrec"], check_exact=True)
    pd.testing.assert_frame_equal(
        local.uns["ligrec_groups"], remote.uns["ligrec_groups"], check_exact=True
    )


def test_global_pvalue_analytic_keeps_the_group_permutations():
    adata = simulate_interactions(n_cells=600, random_state=3)
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    truth = adata.uns["ligrec_truth"]
    both = ligrec(adata, resource=truth, groups="cell_type", n_permutations=49, copy=True)
    groups_both = adata.uns.get("ligrec_groups")
    analytic = ligrec(
        adata, resource=truth, groups="cell_type", n_permutations=49, global_pvalue="analytic"
    )
    assert "pvalue_perm" not in analytic
    np.testing.assert_array_equal(analytic["pvalue"], analytic["pvalue_analytic"])
    merged = both.merge(analytic, on=["ligand", "receptor"], suffixes=("_both", "_analytic"))
    np.testing.assert_allclose(merged["pvalue_analytic_both"], merged["pvalue_analytic_analytic"])
    assert groups_both is None  # copy=True wrote nothing
    groups = adata.uns["ligrec_groups"]
    assert groups["pvalue"].min() == pytest.approx(1 / 50)  # group test still permuted
    assert adata.uns["spatiome"]["ligrec"]["global_pvalue"] == "analytic"
    with pytest.raises(SpatiomeInputError, match="needs n_permutations > 0"):
        ligrec(adata, resource=truth, global_pvalue="permutation", copy=True)
    with pytest.raises(SpatiomeInputError, match="global_pvalue must be one of"):
        ligrec(adata, resource=truth, global_pvalue="exact", copy=True)
