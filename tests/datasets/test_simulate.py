"""simulate_tissue: shapes, determinism, truth, spatial signal, geometry, scale, bad input."""

from __future__ import annotations

import time

import numba
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats
from scipy.spatial import cKDTree

from spatiome._core.validate import SpatiomeInputError
from spatiome.datasets import simulate as sim
from spatiome.datasets import simulate_tissue


@pytest.fixture(scope="module")
def tissue():
    return simulate_tissue(n_spots=3000, n_genes=150, effect_size=1.5, random_state=7)


def test_shapes_and_standard_slots(tissue):
    assert tissue.shape == (3000, 150)
    assert sp.isspmatrix_csr(tissue.X) and tissue.X.dtype.kind == "i"
    assert (tissue.X != tissue.layers["counts"]).nnz == 0
    assert tissue.obsm["spatial"].shape == (3000, 2)
    assert tissue.uns["spatial_unit"] == "um"
    assert tissue.var_names[0] == "Gene0001" and tissue.var_names.is_unique
    assert tissue.var_names[-5:].tolist() == ["MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8"]


def test_truth_columns(tissue):
    obs, var = tissue.obs, tissue.var
    assert isinstance(obs["domain"].dtype, pd.CategoricalDtype)
    assert obs["domain"].nunique() == 5
    assert (obs["library_size_factor"] > 0).all()
    assert var["is_spatial"].dtype == bool
    n_regular = 150 - 5
    assert var["is_spatial"].sum() == round(0.25 * n_regular)
    assert (var.loc[~var["is_spatial"], "pattern"] == "none").all()
    assert set(var.loc[var["is_spatial"], "pattern"]) == set(sim.PATTERNS)
    assert (var.loc[var["is_spatial"], "effect_size"] == 1.5).all()
    assert not var.loc[var_names_mito(tissue), "is_spatial"].any()
    record = tissue.uns["simulation"]
    for key in ("n_spots", "layout", "domains", "patterns", "effect_size", "mean_depth",
                "depth_gradient", "dispersion", "random_state"):  # fmt: skip
        assert key in record
    assert record["random_state"] == 7


def var_names_mito(adata):
    return adata.var_names[adata.var_names.str.startswith("MT-")]


def test_mito_fraction_is_about_five_percent(tissue):
    totals = np.asarray(tissue.X.sum(axis=1)).ravel()
    mito = np.asarray(tissue[:, var_names_mito(tissue)].X.sum(axis=1)).ravel()
    assert 0.03 < np.median(mito / totals) < 0.08


def test_deterministic_under_seed():
    a = simulate_tissue(n_spots=400, n_genes=40, random_state=3)
    b = simulate_tissue(n_spots=400, n_genes=40, random_state=3)
    c = simulate_tissue(n_spots=400, n_genes=40, random_state=4)
    assert (a.X != b.X).nnz == 0
    assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert a.var.equals(b.var) and a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0


def test_counts_do_not_depend_on_threads_or_chunks(monkeypatch):
    reference = simulate_tissue(n_spots=300, n_genes=50, random_state=5).X
    monkeypatch.setattr(sim, "_CHUNK_ENTRIES", 50 * 7)  # 7 spots per chunk
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        again = simulate_tissue(n_spots=300, n_genes=50, random_state=5).X
    finally:
        numba.set_num_threads(threads)
    assert (reference != again).nnz == 0


def _log_norm(adata):
    # divide by the true depth factor: total-count scaling would leak the spatial genes'
    # patterns into the null genes (a compositional effect of the data, not of the truth)
    factor = adata.obs["library_size_factor"].to_numpy()
    return np.log1p(sp.diags(1.0 / factor) @ adata.X.astype(float)).toarray()


def test_spatial_genes_follow_their_pattern(tissue):
    expr = _log_norm(tissue)
    corr = {}
    for j, gene in enumerate(tissue.var_names):
        pattern = sim._pattern_values(tissue, gene)
        if tissue.var["is_spatial"].iloc[j]:
            corr[gene] = stats.spearmanr(expr[:, j], pattern)[0]
    # null genes against the patterns of spatial genes
    spatial_genes = list(corr)
    null_idx = np.flatnonzero(~tissue.var["is_spatial"].to_numpy())
    null_corr = [
        stats.spearmanr(expr[:, j], sim._pattern_values(tissue, spatial_genes[k % 10]))[0]
        for k, j in enumerate(null_idx[:40])
    ]
    assert np.median(list(corr.values())) > 0.2
    assert np.max(np.abs(null_corr)) < 0.1
    # detected genes with a pattern covering the tissue correlate strongly
    for gene, value in corr.items():
        wide = tissue.var.loc[gene, "pattern"] in ("domain", "gradient", "periodic")
        if wide and tissue.var.loc[gene, "base_mean"] > 5:
            assert value > 0.3, gene


def test_spatial_genes_are_smooth_in_space_nulls_are_not(tissue):
    expr = _log_norm(tissue)
    _, neighbours = cKDTree(tissue.obsm["spatial"]).query(tissue.obsm["spatial"], k=7)
    smoothed = expr[neighbours[:, 1:]].mean(axis=1)
    expressed = tissue.var["base_mean"].to_numpy() > 2
    corr = np.array([np.corrcoef(expr[:, j], smoothed[:, j])[0, 1] for j in range(150)])
    spatial = tissue.var["is_spatial"].to_numpy()
    assert np.median(corr[spatial & expressed]) > 0.3
    assert np.abs(corr[~spatial & expressed]).max() < 0.1


def test_domain_genes_differ_between_domains(tissue):
    genes = tissue.var_names[tissue.var["pattern"] == "domain"]
    levels = tissue.uns["simulation"]["domain_levels"]
    expr = pd.DataFrame(_log_norm(tissue), columns=tissue.var_names)
    means = expr[genes].groupby(tissue.obs["domain"].to_numpy()).mean()
    for gene in genes:
        rho = stats.spearmanr(means[gene], levels.loc[gene, means.index])[0]
        assert rho > 0.8, gene


def test_counts_match_negative_binomial_means():
    adata = simulate_tissue(
        n_spots=4000, n_genes=30, frac_spatial=0.0, depth_cv=0.0, dispersion=0.2, random_state=2
    )
    x = adata.X.toarray().astype(float)
    expected = adata.var["base_mean"].to_numpy()
    assert np.allclose(adata.obs["library_size_factor"], 1.0)
    mean, var = x.mean(axis=0), x.var(axis=0)
    se = np.sqrt((expected + 0.2 * expected**2) / 4000)
    assert np.all(np.abs(mean - expected) < 5 * se)
    assert np.allclose(var / (expected + 0.2 * expected**2), 1.0, atol=0.2)


@pytest.mark.parametrize("dispersion", [0.0, 0.5])
@pytest.mark.parametrize("mu", [0.3, 4.0, 25.0, 80.0, 2000.0])
def test_sampler_distribution(mu, dispersion):
    draws = _draws(mu, dispersion, 200_000, 11)
    if dispersion == 0:
        dist = stats.poisson(mu)
    else:
        size = 1 / dispersion
        dist = stats.nbinom(size, size / (size + mu))
    assert abs(draws.mean() - mu) < 5 * dist.std() / np.sqrt(draws.size)
    assert abs(draws.var() / dist.var() - 1) < 0.05
    ks = np.arange(int(dist.ppf(0.001)), int(dist.ppf(0.999)) + 1)
    freq = np.bincount(draws, minlength=ks.max() + 1)[ks] / draws.size
    assert np.abs(freq - dist.pmf(ks)).max() < 0.004


@numba.njit
def _draws(mu, dispersion, n, key):
    out = np.empty(n, np.int64)
    for i in range(n):
        state = sim._mix64(np.uint64(key) ^ sim._mix64(np.uint64(i) + sim._GOLDEN))
        out[i], state = sim._nb_draw(mu, dispersion, state)
    return out


def test_depth_gradient_visible_in_totals():
    adata = simulate_tissue(n_spots=2000, n_genes=60, depth_gradient=2.0, random_state=1)
    direction = np.asarray(adata.uns["simulation"]["depth_gradient_direction"])
    along = adata.obsm["spatial"] @ direction
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert stats.spearmanr(along, totals)[0] > 0.7
    low, high = along < np.quantile(along, 0.1), along > np.quantile(along, 0.9)
    ratio = np.median(totals[high]) / np.median(totals[low])
    assert 4.0 < ratio < 7.4  # exp(2) over the whole width, a bit less between the deciles
    flat = simulate_tissue(n_spots=2000, n_genes=60, random_state=1)
    along = flat.obsm["spatial"] @ np.asarray(flat.uns["simulation"]["depth_gradient_direction"])
    assert abs(stats.spearmanr(along, np.asarray(flat.X.sum(axis=1)).ravel())[0]) < 0.15


def test_library_size_factor_drives_totals(tissue):
    totals = np.asarray(tissue.X.sum(axis=1)).ravel()
    assert stats.pearsonr(np.log(totals), np.log(tissue.obs["library_size_factor"]))[0] > 0.8
    assert 1500 < totals.mean() < 3000


def test_cell_type_mixtures():
    adata = simulate_tissue(n_spots=1500, n_genes=120, n_cell_types=4, random_state=0)
    props = adata.obsm["cell_type_proportions"]
    assert isinstance(props, pd.DataFrame) and props.shape == (1500, 4)
    assert (props.index == adata.obs_names).all()
    assert np.allclose(props.sum(axis=1), 1.0) and (props.to_numpy() >= 0).all()
    # proportions vary by domain
    by_domain = props.groupby(adata.obs["domain"].to_numpy()).mean()
    assert (by_domain.max() - by_domain.min()).max() > 0.3
    profiles = adata.uns["simulation"]["cell_type_profiles"]
    assert profiles.shape == (4, 120) and list(profiles.columns) == list(adata.var_names)
    markers = adata.var["cell_type_marker"]
    assert (adata.var.loc[markers != "", "pattern"] == "cell_type").all()
    assert adata.var.loc[markers != "", "is_spatial"].all()
    # a marker's expression follows its type's proportion
    expr = _log_norm(adata)
    for cell_type in props.columns:
        j = adata.var_names.get_loc(markers.index[markers == cell_type][0])
        assert stats.spearmanr(expr[:, j], props[cell_type])[0] > 0.3


def test_hex_neighbour_geometry(tissue):
    rows = tissue.obs["array_row"].to_numpy()
    cols = tissue.obs["array_col"].to_numpy()
    assert rows.min() == 0 and cols.min() in (0, 1)
    assert ((rows - cols) % 2 == 0).all()
    xy = tissue.obsm["spatial"]
    tree = cKDTree(xy)
    pairs = np.array(sorted(tree.query_pairs(100.0 + 1e-6)))
    distance = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    assert np.allclose(distance, 100.0)
    d_row = np.abs(rows[pairs[:, 0]] - rows[pairs[:, 1]])
    d_col = np.abs(cols[pairs[:, 0]] - cols[pairs[:, 1]])
    assert set(zip(d_row.tolist(), d_col.tolist(), strict=True)) == {(0, 2), (1, 1)}
    degree = np.bincount(pairs.ravel(), minlength=tissue.n_obs)
    assert degree.max() == 6 and np.mean(degree == 6) > 0.85


def test_random_layout_and_blobs():
    adata = simulate_tissue(
        n_spots=1000, n_genes=40, layout="random", domains="blobs", n_domains=6, random_state=2
    )
    assert "array_row" not in adata.obs
    assert adata.obs["domain"].nunique() == 6
    assert adata.obs["domain"].value_counts().min() > 30
    # blobs are spatially coherent: most nearest neighbours share the domain
    _, nn = cKDTree(adata.obsm["spatial"]).query(adata.obsm["spatial"], k=2)
    domain = adata.obs["domain"].to_numpy()
    assert np.mean(domain == domain[nn[:, 1]]) > 0.85


def test_layers_are_bands():
    adata = simulate_tissue(n_spots=2000, n_genes=30, n_domains=4, random_state=9)
    _, nn = cKDTree(adata.obsm["spatial"]).query(adata.obsm["spatial"], k=2)
    domain = adata.obs["domain"].cat.codes.to_numpy()
    assert np.mean(domain == domain[nn[:, 1]]) > 0.9
    assert np.abs(domain - domain[nn[:, 1]]).max() <= 1  # layers touch only their neighbours


def test_sparse_and_h5ad_writable(tissue, tmp_path):
    small = simulate_tissue(n_spots=200, n_genes=500, mean_depth=500, random_state=0)
    assert sp.issparse(small.X) and small.X.nnz < 0.5 * small.n_obs * small.n_vars
    out = tmp_path / "sim.h5ad"
    tissue.write_h5ad(out)
    import anndata as ad

    back = ad.read_h5ad(out)
    assert (back.X != tissue.X).nnz == 0
    assert back.uns["simulation"]["patterns"].tolist() == list(sim.PATTERNS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_spots": 99},
        {"n_spots": 10_000_001},
        {"n_spots": 100.5},
        {"layout": "square"},
        {"domains": "rings"},
        {"n_domains": 1},
        {"n_spots": 100, "n_domains": 6},
        {"frac_spatial": 1.5},
        {"patterns": ("domain", "spiral")},
        {"patterns": ()},
        {"effect_size": []},
        {"effect_size": float("nan")},
        {"mean_depth": 0},
        {"dispersion": -1},
        {"n_genes": 5},
        {"n_mito_genes": 200},
        {"n_cell_types": 60},
        {"n_genes": 20, "n_cell_types": 10},
        {"random_state": "seed"},
        {"depth_cv": True},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(SpatiomeInputError):
        simulate_tissue(**{"n_spots": 200, "n_genes": 50, **kwargs})


def test_effect_size_sequence_cycles():
    adata = simulate_tissue(n_spots=300, n_genes=100, effect_size=[0.5, 2.0], random_state=0)
    effects = adata.var.loc[adata.var["is_spatial"], "effect_size"]
    assert set(effects) == {0.5, 2.0}


def test_scale_200k_spots_is_fast():
    simulate_tissue(n_spots=500, n_genes=20)  # compile outside the timing
    start = time.perf_counter()
    adata = simulate_tissue(n_spots=200_000, n_genes=200, random_state=0)
    elapsed = time.perf_counter() - start
    assert adata.shape == (200_000, 200) and sp.issparse(adata.X)
    assert elapsed < 20.0, elapsed
