"""trendsceek: statistics against a direct double loop, calibration, power and the contract."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spatiome._core.stats import bh_adjust
from spatiome._core.validate import SpatiomeInputError
from spatiome.svg.trendseek import (
    STATISTICS,
    _curves,
    _envelope_pvalues,
    _geometry,
    _permutations,
    _stages,
    trendseek,
)


def direct_statistics(xy, marks, radius, bandwidth):
    """E-mark, V-mark, mark correlation, variogram at one radius: loop over ordered pairs."""
    sides = np.ptp(xy, axis=0)
    area = sides[0] * sides[1]
    n = len(marks)
    den = e_sum = sq_sum = cross = vario = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            dx, dy = abs(xy[i, 0] - xy[j, 0]), abs(xy[i, 1] - xy[j, 1])
            u = (np.sqrt(dx * dx + dy * dy) - radius) / bandwidth
            if abs(u) >= 1:
                continue
            w = 0.75 / bandwidth * (1 - u * u) * area / ((sides[0] - dx) * (sides[1] - dy))
            den += w
            e_sum += w * marks[i]
            sq_sum += w * marks[i] ** 2
            cross += w * marks[i] * marks[j]
            vario += w * 0.5 * (marks[i] - marks[j]) ** 2
    emark = e_sum / den
    # A second pass, so that V-mark is computed from its definition around E(r).
    vmark = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            dx, dy = abs(xy[i, 0] - xy[j, 0]), abs(xy[i, 1] - xy[j, 1])
            u = (np.sqrt(dx * dx + dy * dy) - radius) / bandwidth
            if abs(u) >= 1:
                continue
            w = 0.75 / bandwidth * (1 - u * u) * area / ((sides[0] - dx) * (sides[1] - dy))
            vmark += w * (marks[i] - emark) ** 2
    return np.array([emark, vmark / den, cross / den / marks.mean() ** 2, vario / den])


def direct_pvalues(curves, studentize):
    """Envelope p-values of one statistic, curves (S + 1, R) with row 0 observed."""
    centre = curves.mean(axis=0)
    scale = curves.std(axis=0)
    maxima = []
    for curve in curves:
        deviations = []
        for r in range(curves.shape[1]):
            d = abs(curve[r] - centre[r])
            if studentize:
                d = d / scale[r] if scale[r] > 0 else 0.0
            deviations.append(d)
        maxima.append(max(deviations))
    exceed = sum(m >= maxima[0] * (1 - 1e-9) for m in maxima[1:])
    return (1 + exceed) / len(curves), maxima[0]


def tissue(n_cells=400, n_null=100, seed=0, sparse=False):
    """Poisson points; a gradient gene, a hotspot gene and null genes (raw counts)."""
    rng = np.random.default_rng(seed)
    xy = rng.random((n_cells, 2))
    gradient = rng.poisson(5 + 30 * xy[:, 0])
    hot = np.linalg.norm(xy - 0.5, axis=1) < 0.15
    hotspot = rng.poisson(np.where(hot, 50, 10))
    null = rng.poisson(10, (n_cells, n_null))
    counts = np.column_stack([gradient, hotspot, null]).astype(np.float64)
    adata = anndata.AnnData(sp.csr_matrix(counts) if sparse else counts, obsm={"spatial": xy})
    adata.var_names = ["gradient", "hotspot"] + [f"null{k}" for k in range(n_null)]
    return adata


@pytest.fixture(scope="module")
def simulated():
    adata = tissue()
    table = trendseek(adata, log_transform=True, n_permutations=1000, random_state=0)
    return adata, table


def test_statistics_match_direct_double_loop():
    rng = np.random.default_rng(3)
    xy = rng.random((45, 2)) * [2.0, 1.0]
    marks = rng.gamma(2.0, 1.0, (45, 2))
    geometry = _geometry(xy, 12)
    perm = rng.permutation(45)
    curves = _curves(marks, np.vstack([np.arange(45), perm]), geometry)
    for k, radius in enumerate(geometry.radii):
        for g in range(2):
            expected = direct_statistics(xy, marks[:, g], radius, geometry.bandwidth)
            np.testing.assert_allclose(curves[0, :, k, g], expected, rtol=1e-10)
            permuted = direct_statistics(xy, marks[perm, g], radius, geometry.bandwidth)
            np.testing.assert_allclose(curves[1, :, k, g], permuted, rtol=1e-10)


def test_geometry_follows_spatstat_defaults():
    rng = np.random.default_rng(0)
    xy = rng.random((300, 2)) * [4.0, 2.0]
    geometry = _geometry(xy, None)
    sides = np.ptp(xy, axis=0)
    intensity = 300 / (sides[0] * sides[1])
    assert geometry.bandwidth == pytest.approx(0.15 / np.sqrt(intensity))
    assert geometry.rmax == pytest.approx(sides.min() / 4)
    assert 16 <= geometry.radii.size <= 513
    assert np.diff(geometry.radii).max() <= geometry.bandwidth / 2 + 1e-12
    # A dense pattern: r_max falls to sqrt(1000 / (pi lambda)).
    assert _geometry(xy, 20).radii.size == 20


@pytest.mark.parametrize("studentize", [True, False])
def test_envelope_pvalues_match_direct(studentize):
    rng = np.random.default_rng(1)
    curves = rng.normal(size=(60, 4, 7, 3))
    curves[0, 1, :, 0] += 3.0  # one observed curve far out
    curves[:, 2, 3, :] = 1.0  # a radius where all curves agree
    p, deviation = _envelope_pvalues(curves.copy(), studentize)
    for g in range(3):
        for s in range(4):
            expected_p, expected_dev = direct_pvalues(curves[:, s, :, g], studentize)
            assert p[g, s] == pytest.approx(expected_p)
            assert deviation[g, s] == pytest.approx(expected_dev)
    assert p[0, 1] == pytest.approx(1 / 60)


def test_finds_gradient_and_hotspot_and_nulls_are_calibrated(simulated):
    adata, table = simulated
    assert table.loc["gradient", "pval"] < 0.01
    assert table.loc["hotspot", "pval"] < 0.01
    null = table.drop(index=["gradient", "hotspot"])
    assert (null["pval"] < 0.05).mean() <= 0.12
    for name in STATISTICS:
        assert (null[f"pval_{name}"] < 0.05).mean() <= 0.12
    # Early stopping: clearly null genes end after 10 or 100 permutations.
    assert table.loc["gradient", "n_permutations_used"] == 1000
    assert (null["n_permutations_used"] < 1000).mean() > 0.3
    assert set(null["n_permutations_used"]) <= {10, 100, 1000}


def test_table_columns_and_combinations(simulated):
    adata, table = simulated
    pvals = table[[f"pval_{name}" for name in STATISTICS]].to_numpy()
    np.testing.assert_allclose(table["pval"], np.minimum(1, 4 * pvals.min(axis=1)))
    np.testing.assert_allclose(table["qval"], bh_adjust(table["pval"].to_numpy()))
    for name in STATISTICS:
        np.testing.assert_allclose(
            table[f"qval_{name}"], bh_adjust(table[f"pval_{name}"].to_numpy())
        )
    best = pvals.argmin(axis=1)
    deviations = table[[f"deviation_{name}" for name in STATISTICS]].to_numpy()
    np.testing.assert_allclose(table["statistic"], deviations[np.arange(len(table)), best])
    assert ((pvals > 0) & (pvals <= 1)).all()
    np.testing.assert_array_equal(adata.var["trendseek_pval"], table["pval"])
    params = adata.uns["spatiome"]["trendseek"]
    assert params["n_permutations"] == 1000 and params["edge_correction"] == "translation"
    assert len(params["radii"]) > 10


def test_deterministic_regardless_of_chunks_and_jobs():
    adata = tissue(n_cells=150, n_null=10, seed=4)
    kwargs = {"log_transform": True, "n_permutations": 150, "copy": True}
    reference = trendseek(adata, random_state=7, **kwargs)
    chunked = trendseek(adata, random_state=7, chunk_size=3, n_jobs=2, **kwargs)
    pd.testing.assert_frame_equal(reference, chunked)
    sparse = tissue(n_cells=150, n_null=10, seed=4, sparse=True)
    pd.testing.assert_frame_equal(reference, trendseek(sparse, random_state=7, **kwargs))
    subset = trendseek(adata, genes=["null3", "gradient"], random_state=7, **kwargs)
    pd.testing.assert_frame_equal(
        subset[["pval_markcorr", "n_permutations_used"]],
        reference.loc[["null3", "gradient"], ["pval_markcorr", "n_permutations_used"]],
    )
    other = trendseek(adata, random_state=8, **kwargs)
    assert not other["pval_emark"].equals(reference["pval_emark"])


def test_log_transform_equals_log10_layer_and_no_early_stopping():
    adata = tissue(n_cells=120, n_null=4, seed=5)
    adata.layers["log"] = np.log10(adata.X + 1)
    kwargs = {"n_permutations": 120, "early_stopping": False, "copy": True}
    logged = trendseek(adata, layer="log", **kwargs)
    transformed = trendseek(adata, log_transform=True, **kwargs)
    pd.testing.assert_frame_equal(logged, transformed)
    assert (logged["n_permutations_used"] == 120).all()
    assert _stages(1000, True) == [10, 100, 1000]
    assert _stages(250, True) == [10, 100, 250]
    assert _stages(250, False) == [250]


def test_permutations_are_per_seed():
    seeds = np.array([11, 12, 13])
    full = _permutations(seeds, 20)
    np.testing.assert_array_equal(full[1:], _permutations(seeds[1:], 20))
    assert all(np.array_equal(np.sort(row), np.arange(20)) for row in full)


def test_constant_gene_gives_nan_and_copy_leaves_adata():
    adata = tissue(n_cells=100, n_null=2, seed=6)
    adata.X[:, 2] = 3.0
    before = adata.X.copy()
    table = trendseek(adata, n_permutations=50, copy=True)
    assert np.isnan(table.loc["null0", "pval"]) and np.isnan(table.loc["null0", "qval"])
    assert table.loc["null0", "n_permutations_used"] == 0
    assert np.isfinite(table.loc["gradient", "pval"])
    assert "trendseek_pval" not in adata.var and "spatiome" not in adata.uns
    np.testing.assert_array_equal(adata.X, before)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_permutations": 0}, "n_permutations"),
        ({"n_radii": 1}, "n_radii"),
        ({"alpha_stop": 2.0}, "alpha_stop"),
        ({"early_stopping": "yes"}, "early_stopping"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"layer": "missing"}, "layers"),
        ({"genes": ["nope"]}, "nope"),
    ],
)
def test_bad_options_raise(change, message):
    adata = tissue(n_cells=60, n_null=1)
    with pytest.raises(SpatiomeInputError, match=message):
        trendseek(adata, **change)


def test_bad_inputs_raise():
    adata = tissue(n_cells=60, n_null=1)
    negative = adata.copy()
    negative.X[0, 0] = -1.0
    with pytest.raises(SpatiomeInputError, match="negative"):
        trendseek(negative)
    flat = adata.copy()
    flat.obsm["spatial"] = np.column_stack([flat.obsm["spatial"], np.zeros(60)])
    with pytest.raises(SpatiomeInputError, match="2-D"):
        trendseek(flat)
    line = adata.copy()
    line.obsm["spatial"][:, 1] = 0.0
    with pytest.raises(SpatiomeInputError, match="bounding box"):
        trendseek(line)
    missing = adata.copy()
    del missing.obsm["spatial"]
    with pytest.raises(SpatiomeInputError, match="spatial"):
        trendseek(missing)


def test_seqfish_field43_runs_and_finds_spatial_genes(shared_data):
    folder = shared_data / "seqfish_field43"
    if not (folder / "counts.csv.gz").exists():
        pytest.skip("seqfish_field43 not available")
    counts = pd.read_csv(folder / "counts.csv.gz", index_col=0)
    coords = pd.read_csv(folder / "coords.csv", index_col=0).loc[counts.index]
    values = counts.to_numpy(np.float64)
    totals = values.sum(axis=1, keepdims=True)
    adata = anndata.AnnData(
        values / totals * np.median(totals), obsm={"spatial": coords[["x", "y"]].to_numpy()}
    )
    adata.var_names = counts.columns
    table = trendseek(
        adata, genes=list(counts.columns[:40]), log_transform=True, n_permutations=100, copy=True
    )
    assert table["pval"].notna().all()
    assert (table["pval"] < 0.05).sum() >= 5
