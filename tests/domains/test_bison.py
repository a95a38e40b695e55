"""BISON: recovery on simulations, discriminating genes, the collapsed conditionals, inputs."""

from __future__ import annotations

import importlib
import math
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, roc_auc_score

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.domains import bison
from spatiome.domains._simulate import paper_design
from spatiome.graph import spatial_neighbors

bison_module = importlib.import_module("spatiome.domains.bison")


PAPER_FIT = {
    "size_factors": "s_true",
    "gene_factors": "g_true",
    "n_top_genes": None,
    "min_spot_counts": 0,
    "min_gene_fraction": 0.0,
    "min_gene_max": 0,
    "n_iterations": 200,
}


@pytest.mark.parametrize(("delta", "seed", "min_ari"), [(1.0, 1, 0.95), (1.5, 2, 0.95)])
def test_paper_design_recovers_domains_groups_and_discriminating_genes(delta, seed, min_ari):
    adata = paper_design(delta=delta, seed=seed)
    bison(adata, 4, 3, random_state=seed, **PAPER_FIT)
    assert adjusted_rand_score(adata.obs["domain"], adata.obs["bison"]) >= min_ari
    truth = adata.var["group"].to_numpy()
    found = adata.var["bison_gene_group"].to_numpy()
    discriminating = truth >= 0
    assert roc_auc_score(discriminating, adata.var["bison_prob_discriminating"]) >= 0.99
    assert (found[discriminating] > 0).mean() >= 0.95  # sensitivity
    assert (found[~discriminating] == 0).mean() >= 0.95  # specificity
    assert adjusted_rand_score(truth[discriminating], found[discriminating]) >= 0.9


@pytest.mark.parametrize(("seed", "dispersion"), [(0, 0.0), (1, 0.2)])
def test_simulated_tissue_domains_and_domain_genes(seed, dispersion):
    adata = sm.datasets.simulate_tissue(
        n_spots=600,
        n_genes=200,
        n_domains=4,
        patterns=("domain",),
        frac_spatial=0.3,
        effect_size=1.0,
        dispersion=dispersion,
        random_state=seed,
    )
    bison(adata, 4, 4, n_top_genes=None, min_gene_fraction=0.0, n_iterations=300)
    assert adjusted_rand_score(adata.obs["domain"], adata.obs["bison"]) >= 0.9
    var = adata.var
    modelled = var["bison_gene_group"] >= 0
    domain_gene = (var["pattern"] == "domain")[modelled]
    null_gene = (var["pattern"] == "none")[modelled]
    prob = var.loc[modelled, "bison_prob_discriminating"]
    keep = domain_gene | null_gene
    assert roc_auc_score(domain_gene[keep], prob[keep]) >= 0.9
    assert (var.loc[modelled & (var["pattern"] == "none"), "bison_gene_group"] == 0).mean() >= 0.9


def test_outputs_and_same_seed_same_chain():
    adata = sm.datasets.simulate_tissue(n_spots=300, n_genes=60, n_domains=3, random_state=3)
    first = bison(adata, 3, 2, n_iterations=60, min_gene_fraction=0.0, random_state=7, copy=True)
    second = bison(adata, 3, 2, n_iterations=60, min_gene_fraction=0.0, random_state=7, copy=True)
    other = bison(adata, 3, 2, n_iterations=60, min_gene_fraction=0.0, random_state=8, copy=True)
    info = first.uns["spatiome"]["bison"]
    np.testing.assert_array_equal(
        info["log_posterior"], second.uns["spatiome"]["bison"]["log_posterior"]
    )
    assert not np.array_equal(
        info["log_posterior"], other.uns["spatiome"]["bison"]["log_posterior"]
    )
    pd.testing.assert_series_equal(first.obs["bison"], second.obs["bison"])
    pd.testing.assert_frame_equal(first.var, second.var)
    labels = first.obs["bison"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert labels.cat.categories.tolist() == ["0", "1", "2"]
    assert labels.value_counts().is_monotonic_decreasing
    groups = first.var["bison_gene_group"]
    assert groups.dtype == np.int64 and set(groups) <= {-1, 0, 1, 2}
    prob = first.var["bison_prob_discriminating"]
    assert prob[groups >= 0].between(0, 1).all() and prob[groups < 0].isna().all()
    assert info["log_posterior"].shape == (60,) and np.isfinite(info["log_posterior"]).all()
    assert info["block_rates"].shape == (2, 3)
    assert info["n_genes_modelled"] == int((groups >= 0).sum())


def test_original_initialisation_and_last_draw():
    adata = sm.datasets.simulate_tissue(
        n_spots=400, n_genes=60, n_domains=3, patterns=("domain",), frac_spatial=0.3,
        effect_size=1.5, dispersion=0.0, random_state=0,
    )  # fmt: skip
    options = {"n_top_genes": None, "min_gene_fraction": 0.0, "n_iterations": 100}
    bison(adata, 3, 2, init="random", estimate="last", key_added="last", **options)
    bison(adata, 3, 2, init="random", **options)
    assert adjusted_rand_score(adata.obs["domain"], adata.obs["last"]) >= 0.9
    assert adjusted_rand_score(adata.obs["last"], adata.obs["bison"]) >= 0.95
    info = adata.uns["spatiome"]["last"]
    assert info["init"] == "random" and info["estimate"] == "last"
    assert info["spot_agreement"].shape == (400,) and info["spot_agreement"].mean() > 0.9


def test_input_is_not_modified_beyond_the_output_slots():
    adata = sm.datasets.simulate_tissue(n_spots=300, n_genes=60, n_domains=3, random_state=4)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.astype(np.float64) * 0.5  # a non-count working matrix
    before = adata.copy()
    result = bison(adata, 3, 2, layer="counts", n_iterations=20, min_gene_fraction=0, copy=True)
    assert "bison" not in adata.obs and "bison" not in adata.uns["spatiome"]
    assert (adata.X != before.X).nnz == 0
    bison(adata, 3, 2, layer="counts", n_iterations=20, min_gene_fraction=0)
    assert (adata.X != before.X).nnz == 0
    assert (adata.layers["counts"] != before.layers["counts"]).nnz == 0
    pd.testing.assert_frame_equal(adata.obs.drop(columns="bison"), before.obs)
    new_var = ["bison_gene_group", "bison_prob_discriminating"]
    pd.testing.assert_frame_equal(adata.var.drop(columns=new_var), before.var)
    assert list(adata.obsp.keys()) == list(before.obsp.keys())
    np.testing.assert_array_equal(adata.obsm["spatial"], before.obsm["spatial"])
    assert set(adata.uns) == set(before.uns)
    assert set(adata.uns["spatiome"]) == set(before.uns["spatiome"]) | {"bison"}
    pd.testing.assert_series_equal(adata.obs["bison"], result.obs["bison"])


def test_spots_left_out_get_missing_labels():
    adata = sm.datasets.simulate_tissue(n_spots=300, n_genes=60, n_domains=3, random_state=5)
    counts = adata.X.tolil()
    counts[:5] = 0
    adata.X = counts.tocsr()
    adata.layers["counts"] = adata.X  # the layer bison reads by default
    bison(adata, 3, 2, n_iterations=20, min_gene_fraction=0.0, genes=adata.var_names[:40])
    assert adata.obs["bison"].isna().sum() == 5
    assert adata.obs["bison"].iloc[:5].isna().all()
    assert (adata.var["bison_gene_group"].iloc[40:] == -1).all()
    assert adata.uns["spatiome"]["bison"]["n_spots_modelled"] == 295


@pytest.fixture(scope="module")
def small():
    return sm.datasets.simulate_tissue(n_spots=200, n_genes=40, n_domains=3, random_state=2)


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ("fractions", {}, "non-integer values"),
        ("negative", {}, "negative values"),
        (None, {"n_domains": 1}, "n_domains must be between 2"),
        (None, {"n_domains": 500}, "n_domains must be between 2 and 200"),
        (None, {"n_gene_groups": 0}, "n_gene_groups must be between 1"),
        (None, {"burn_in": 50, "n_iterations": 50}, "burn_in must be between 0 and 49"),
        (None, {"init": "spectral"}, "init must be one of"),
        (None, {"potts_beta": -1.0}, "potts_beta must be finite"),
        (None, {"min_spot_counts": 1e9}, "lower min_spot_counts"),
        (None, {"min_gene_max": 1e9}, "lower min_gene_fraction or min_gene_max"),
        (None, {"genes": ["nope"]}, "not in adata.var_names"),
        (None, {"size_factors": "missing"}, "not a column of adata.obs"),
        ("no_coordinates", {}, "adata.obsm['spatial'] is missing"),
    ],
)
def test_errors_say_what_to_fix(small, change, kwargs, message):
    adata = small.copy()
    if change == "fractions":
        adata.layers["counts"] = adata.X * 0.5
    elif change == "negative":
        adata.layers["counts"] = adata.X.copy()
        adata.layers["counts"].data[0] = -1
    elif change == "no_coordinates":
        del adata.obsm["spatial"]
        adata.obs = adata.obs.drop(columns=["array_row", "array_col"])
    arguments = {"n_domains": 3, "n_gene_groups": 2, "n_iterations": 10, **kwargs}
    with pytest.raises(SpatiomeInputError, match=re.escape(message)):
        bison(adata, **arguments)


def test_not_an_anndata():
    with pytest.raises(SpatiomeInputError, match="anndata.AnnData"):
        bison(np.ones((3, 3)), 2, 1)


# ---------------------------------------------------------------------------------------
# The collapsed conditionals against a direct computation on a dense toy


def _marginal(total, exposure, shape, rate):
    return (
        shape * math.log(rate)
        - math.lgamma(shape)
        + math.lgamma(shape + total)
        - (shape + total) * math.log(rate + exposure)
    )


@pytest.fixture
def toy():
    rng = np.random.default_rng(11)
    n_spots, n_genes, n_domains, n_groups = 14, 9, 3, 2
    dense = rng.poisson(rng.uniform(0.5, 6.0, (n_spots, n_genes))).astype(np.int64)
    s = rng.uniform(0.5, 1.5, n_spots)
    g = rng.uniform(0.5, 1.5, n_genes)
    z = np.arange(n_spots) % n_domains
    rho = np.array([0, 1, 2, 1, 2, 0, 1, 2, 1])
    graph = sp.random(n_spots, n_spots, density=0.3, random_state=3, format="csr")
    graph = ((graph + graph.T) != 0).astype(np.float64)
    graph.setdiag(0)
    graph.eliminate_zeros()
    return dense, s, g, z, rho, sp.csr_matrix(graph), n_domains, n_groups


def _statistics(dense, s, g, z, rho, n_domains, n_groups):
    T = np.stack([dense[z == k].sum(axis=0) for k in range(n_domains)], axis=1)
    U = np.stack([dense[:, rho == l].sum(axis=1) for l in range(n_groups + 1)], axis=1)  # noqa: E741
    A = np.stack([T[rho == l].sum(axis=0) for l in range(n_groups + 1)])  # noqa: E741
    S = np.bincount(z, weights=s, minlength=n_domains)
    G = np.bincount(rho, weights=g, minlength=n_groups + 1)
    return T, U, A, S, G


def test_spot_conditional_matches_a_direct_computation(toy):
    dense, s, g, z, rho, graph, n_domains, n_groups = toy
    alpha0, beta0, gamma, potts, i = 1.3, 0.7, 1.0, 0.8, 4
    others = np.arange(dense.shape[0]) != i
    expected = np.empty(n_domains)
    for k in range(n_domains):
        value = math.log((z[others] == k).sum() + gamma)
        value += potts * sum(graph[i, j] for j in graph[i].indices if z[j] == k)
        for l in range(1, n_groups + 1):  # noqa: E741
            genes = rho == l
            block = dense[np.ix_(others & (z == k), genes)]
            exposure = s[others & (z == k)].sum() * g[genes].sum()
            spot_total = dense[i, genes].sum()
            value += _marginal(
                spot_total, s[i] * g[genes].sum(), alpha0 + block.sum(), beta0 + exposure
            )
        expected[k] = value
    T, U, A, S, G = _statistics(dense, s, g, z, rho, n_domains, n_groups)
    n_cluster = np.bincount(z, minlength=n_domains)
    n_cluster[z[i]] -= 1
    S[z[i]] -= s[i]
    A[:, z[i]] -= U[i]
    neighbours = np.zeros(n_domains)
    np.add.at(neighbours, z[graph[i].indices], graph[i].data)
    got = np.empty(n_domains)
    bison_module._spot_log_weights(
        i, U, s, A, S, G, n_cluster, neighbours, alpha0, beta0, gamma, potts, got
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_gene_conditional_matches_a_direct_computation(toy):
    dense, s, g, z, rho, graph, n_domains, n_groups = toy
    alpha0, beta0, concentration, pi, j = 1.3, 0.7, 1.0, 0.2, 3
    others = np.arange(dense.shape[1]) != j
    n_discriminating = int((rho[others] > 0).sum())
    expected = np.empty(n_groups + 1)
    expected[0] = math.log(pi) + _marginal(dense[:, j].sum(), g[j] * s.sum(), alpha0, beta0)
    for l in range(1, n_groups + 1):  # noqa: E741
        size = int((rho[others] == l).sum())
        value = math.log(1 - pi) + math.log((size + 0.001) / (n_discriminating + concentration))
        for k in range(n_domains):
            spots = z == k
            block = dense[np.ix_(spots, others & (rho == l))]
            exposure = s[spots].sum() * g[others & (rho == l)].sum()
            value += _marginal(
                dense[spots, j].sum(),
                g[j] * s[spots].sum(),
                alpha0 + block.sum(),
                beta0 + exposure,
            )
        expected[l] = value
    T, U, A, S, G = _statistics(dense, s, g, z, rho, n_domains, n_groups)
    n_group = np.bincount(rho, minlength=n_groups + 1)
    n_group[rho[j]] -= 1
    G[rho[j]] -= g[j]
    A[rho[j]] -= T[j]
    gene_total = dense.sum(axis=0)
    got = np.empty(n_groups + 1)
    bison_module._gene_log_weights(
        j, T, gene_total, g, A, S, G, n_group, math.log(pi), math.log1p(-pi), alpha0, beta0,
        concentration, got,
    )  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_sweeps_keep_the_sufficient_statistics_exact(toy):
    dense, s, g, z, rho, graph, n_domains, n_groups = toy
    z, rho = z.copy(), rho.copy()
    csr = sp.csr_matrix(dense)
    csc = csr.tocsc()
    T, U, A, S, G = _statistics(dense, s, g, z, rho, n_domains, n_groups)
    n_cluster = np.bincount(z, minlength=n_domains)
    n_group = np.bincount(rho, minlength=n_groups + 1)
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(30):
        S = np.bincount(z, weights=s, minlength=n_domains)
        G = np.bincount(rho, weights=g, minlength=n_groups + 1)
        bison_module._gene_sweep(
            csc.indptr, csc.indices, csc.data.astype(np.int64), dense.sum(axis=0), g, T, U, A,
            S, G, n_group, rho, math.log(0.3), math.log(0.7), 1.0, 1.0, 1.0,
            rng.random(dense.shape[1]), np.zeros(dense.shape[1]), False,
        )  # fmt: skip
        moved += bison_module._spot_sweep(
            csr.indptr, csr.indices, csr.data.astype(np.int64), s, graph.indptr,
            graph.indices, graph.data, T, U, A, S, G, n_cluster, z, 1.0, 1.0, 1.0, 0.5,
            rng.random(dense.shape[0]),
        )  # fmt: skip
    assert moved > 0
    T2, U2, A2, S2, G2 = _statistics(dense, s, g, z, rho, n_domains, n_groups)
    np.testing.assert_array_equal(T, T2)
    np.testing.assert_array_equal(U, U2)
    np.testing.assert_array_equal(A, A2)
    np.testing.assert_allclose(S, S2)
    np.testing.assert_allclose(G, G2)
    np.testing.assert_array_equal(n_cluster, np.bincount(z, minlength=n_domains))
    np.testing.assert_array_equal(n_group, np.bincount(rho, minlength=n_groups + 1))
    assert (n_cluster > 0).all() and (n_group[1:] > 0).all()


def test_log_joint_differences_match_the_spot_conditional(toy):
    """The trace is the density the conditionals come from (for a spot move)."""
    dense, s, g, z, rho, graph, n_domains, n_groups = toy
    i, potts, pi = 6, 0.8, 0.3
    joints = []
    for k in range(n_domains):
        moved = z.copy()
        moved[i] = k
        T, U, A, S, G = _statistics(dense, s, g, moved, rho, n_domains, n_groups)
        joints.append(
            bison_module._log_joint(
                A,
                S,
                G,
                np.bincount(moved, minlength=n_domains),
                np.bincount(rho, minlength=n_groups + 1),
                moved,
                rho,
                dense.sum(axis=0),
                g,
                graph.indptr,
                graph.indices,
                graph.data,
                pi,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                potts,
            )  # fmt: skip
        )
    T, U, A, S, G = _statistics(dense, s, g, z, rho, n_domains, n_groups)
    n_cluster = np.bincount(z, minlength=n_domains)
    n_cluster[z[i]] -= 1
    S[z[i]] -= s[i]
    A[:, z[i]] -= U[i]
    neighbours = np.zeros(n_domains)
    np.add.at(neighbours, z[graph[i].indices], graph[i].data)
    weights = np.empty(n_domains)
    bison_module._spot_log_weights(
        i, U, s, A, S, G, n_cluster, neighbours, 1.0, 1.0, 1.0, potts, weights
    )
    np.testing.assert_allclose(np.diff(joints), np.diff(weights), rtol=1e-9, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Real data: mouse olfactory bulb (ST replicate 11, MERINGUE layers)


def test_mouse_olfactory_bulb_layers(shared_data):
    if not (shared_data / "mouse_ob_rep11").is_dir():
        pytest.skip("mouse_ob_rep11 not present")
    adata = sm.datasets.load("mouse_ob_rep11", data_dir=shared_data)
    # The original links ST spots closer than the spot spacing x (1 + sqrt 2) / 2.
    spatial_neighbors(adata, method="radius", radius=1.21)
    bison(adata, 5, 3, n_iterations=500, random_state=0)
    labelled = adata.obs["layer"].notna()
    assert labelled.sum() == 260
    score = adjusted_rand_score(adata.obs.loc[labelled, "layer"], adata.obs.loc[labelled, "bison"])
    assert score >= 0.45
    info = adata.uns["spatiome"]["bison"]
    assert info["n_genes_modelled"] == 1000
