"""pp.local_outliers and pp.find_artifacts (SpotSweeper): hand examples, references,
properties, and recovery of injected artifacts on simulated and real tissues.

Validation thresholds were measured over seeds 0-4 (the tests run seed 0) and set below
the worst seed with a margin:

=========================================================  =============  =========
quantity                                                   measured       threshold
=========================================================  =============  =========
simulated, edge rim AUROC (min of total/genes z)           0.971 - 0.996  >= 0.93
simulated, v2 flag rate on clean spots                     0.029 - 0.046  <= 0.06
simulated, dry patch: clean spots flagged                  0              <= 0.005
simulated, dry patch: recall (whole patch / interior)      0.45 / 1.0     >= 0.35 / 0.9
simulated, dry patch interior AUROC (k = 18 score)         1.0            >= 0.99
mouse OB, flagged fraction (v2 / bioc_legacy)              0.023 / 0.008  0.002 - 0.06
mouse OB, edge AUROC (edge_fraction = 0.02)                0.957 - 0.992  >= 0.92
DLPFC, flagged fraction (v2 / bioc_legacy)                 0.008 / 0.002  0.002 - 0.06
DLPFC, edge AUROC (edge_fraction = 0.005)                  0.892 - 0.978  >= 0.85
DLPFC + simulated mito genes, patch recall / interior      0.32 / 0.62    >= 0.25 / 0.5
DLPFC + simulated mito genes, clean spots flagged          0              <= 0.005
=========================================================  =============  =========
"""

from __future__ import annotations

import shutil
import subprocess

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree
from sklearn.metrics import roc_auc_score

import spatiome as sm
from spatiome._core.neighbourhood import spatial_knn
from spatiome._core.validate import SpatiomeInputError
from spatiome.pp import find_artifacts, local_outliers
from spatiome.pp.qc import _detect_grid, _ring_size, huber_line


def _line(values, *, metric="metric") -> ad.AnnData:
    """Spots one unit apart on a line, carrying one QC value each."""
    n = len(values)
    adata = ad.AnnData(np.zeros((n, 1)))
    adata.obs_names = [f"spot{i + 1}" for i in range(n)]
    adata.obsm["spatial"] = np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    adata.obs[metric] = np.asarray(values, dtype=float)
    return adata


def _random_spots(n: int = 300, seed: int = 0, metrics: int = 2) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(np.zeros((n, 1)))
    adata.obsm["spatial"] = rng.random((n, 2)) * 100
    for j in range(metrics):
        adata.obs[f"m{j}"] = rng.lognormal(5, 0.5, size=n)
    return adata


@pytest.fixture(scope="module")
def damaged_tissue() -> ad.AnnData:
    """Simulated Visium tissue with a thin low-quality rim and a dry patch, both flagged."""
    tissue = sm.datasets.simulate_tissue(n_spots=3000, n_genes=200, random_state=0)
    adata = sm.datasets.inject_artifacts(tissue, edge_fraction=0.005, random_state=0)
    local_outliers(adata)
    find_artifacts(adata)
    return adata


def _edge_auroc(adata: ad.AnnData) -> float:
    injected = adata.obs["injected"].astype(str).to_numpy()
    edge, clean = injected == "low_quality_edge", injected == "none"
    keep = edge | clean
    score = -np.minimum(adata.obs["total_counts_z"], adata.obs["n_genes_by_counts_z"])
    return float(roc_auc_score(edge[keep], score.to_numpy()[keep]))


def _patch_interior(adata: ad.AnnData, k: int = 18) -> tuple[np.ndarray, np.ndarray]:
    """Dry-patch spots, and those whose k nearest neighbours all lie in the patch."""
    patch = (adata.obs["injected"] == "dry_patch").to_numpy()
    neighbours, _ = spatial_knn(adata.obsm["spatial"], k)
    return patch, patch & patch[neighbours].all(axis=1)


# --- local_outliers: the original's unit tests, references and properties -----------------


def test_line_example_flags_the_high_spot():
    adata = _line([100, 10, 11, 9, 10, 12])
    local_outliers(adata, metrics="metric", directions="higher", log=False, n_neighbors=4)
    # Neighbours of spot 1: 10, 11, 9, 10 -> median 10, raw MAD 0.5.
    assert adata.obs["metric_z"].iloc[0] == pytest.approx(0.6745 * 90 / 0.5)
    assert adata.obs["metric_outlier"].tolist() == [True] + [False] * 5
    assert adata.obs["local_outlier"].tolist() == [True] + [False] * 5
    local_outliers(adata, metrics="metric", directions="lower", log=False, n_neighbors=4)
    assert not adata.obs["metric_outlier"].any()
    legacy = _line([100, 10, 11, 9, 10, 12])
    local_outliers(
        legacy, metrics="metric", directions="both", log=False, n_neighbors=4, zscore="bioc_legacy"
    )
    # Focal spot included: 100, 10, 11, 9, 10 -> median 10, raw MAD 1, scaled by 1.4826.
    assert legacy.obs["metric_z"].iloc[0] == pytest.approx(0.6745 * 90 / 1.4826)
    assert legacy.obs["metric_outlier"].tolist() == [True] + [False] * 5


def test_output_columns_types_and_record(damaged_tissue):
    adata = damaged_tissue
    for metric in ("total_counts", "n_genes_by_counts", "pct_counts_mt"):
        assert adata.obs[f"{metric}_z"].dtype == np.float64
        assert np.isfinite(adata.obs[f"{metric}_z"]).all()
        assert adata.obs[f"{metric}_outlier"].dtype == bool
    combined = adata.obs[
        ["total_counts_outlier", "n_genes_by_counts_outlier", "pct_counts_mt_outlier"]
    ].any(axis=1)
    np.testing.assert_array_equal(adata.obs["local_outlier"], combined)
    record = adata.uns["spatiome"]["local_outliers"]
    assert record["directions"] == ["lower", "lower", "higher"]
    assert record["log"] == [True, True, False]
    assert record["n_flagged"] == int(adata.obs["local_outlier"].sum())
    assert record["n_outliers"]["total_counts"] == int(adata.obs["total_counts_outlier"].sum())


@pytest.mark.parametrize("zscore", ["v2", "bioc_legacy"])
def test_z_scores_equal_a_brute_force_reference(zscore):
    adata = _random_spots(200, seed=1)
    adata.obs.loc[adata.obs_names[7], "m0"] = np.nan
    local_outliers(
        adata, metrics=["m0", "m1"], directions="both", log=[True, False], n_neighbors=9,
        zscore=zscore,
    )  # fmt: skip
    coords = adata.obsm["spatial"]
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1)[:, :9]
    for name, transform in (("m0", np.log1p), ("m1", lambda v: v)):
        values = transform(adata.obs[name].to_numpy())
        expected = np.zeros(adata.n_obs)
        for i in range(adata.n_obs):
            members = neighbours[i] if zscore == "v2" else np.r_[i, neighbours[i]]
            local = values[members]
            local = local[~np.isnan(local)]
            median = np.median(local)
            mad = np.median(np.abs(local - median))
            scale = mad if zscore == "v2" else 1.4826 * mad
            z = 0.6745 * (values[i] - median) / scale if scale > 0 else 0.0
            expected[i] = z if np.isfinite(z) else 0.0
        np.testing.assert_allclose(adata.obs[f"{name}_z"], expected, rtol=1e-12, atol=1e-12)
    assert adata.obs["m0_z"].iloc[7] == 0.0  # missing value: z 0, not flagged


def test_v2_and_bioc_legacy_agree_where_the_focal_spot_changes_nothing():
    # Integer values give many neighbourhoods whose median and MAD do not move when the
    # focal spot joins them; there the legacy z is exactly v2 / 1.4826.
    rng = np.random.default_rng(3)
    adata = _random_spots(600, seed=3, metrics=0)
    adata.obs["m"] = rng.poisson(20, size=600).astype(float)
    v2 = local_outliers(adata, metrics="m", log=False, n_neighbors=12, copy=True)
    legacy = local_outliers(
        adata, metrics="m", log=False, n_neighbors=12, zscore="bioc_legacy", copy=True
    )
    z_v2, z_legacy = v2.obs["m_z"].to_numpy(), legacy.obs["m_z"].to_numpy()
    neighbours, _ = spatial_knn(adata.obsm["spatial"], 12)
    values = adata.obs["m"].to_numpy()
    unchanged = []
    for i in range(adata.n_obs):
        without, with_self = values[neighbours[i]], values[np.r_[i, neighbours[i]]]
        stats = [(np.median(v), np.median(np.abs(v - np.median(v)))) for v in (without, with_self)]
        unchanged.append(stats[0] == stats[1] and stats[0][1] > 0)
    unchanged = np.asarray(unchanged)
    assert unchanged.sum() >= 100
    np.testing.assert_allclose(z_legacy[unchanged], z_v2[unchanged] / 1.4826, rtol=1e-12)
    # Adding the focal spot pulls the median towards it but never past it: signs agree.
    assert np.all(z_v2 * z_legacy >= 0)
    assert (np.abs(z_legacy) > 3).sum() < (np.abs(z_v2) > 3).sum()


def test_legacy_flags_fewer_spots_on_a_tissue(damaged_tissue):
    legacy = local_outliers(damaged_tissue, zscore="bioc_legacy", copy=True)
    n_v2 = damaged_tissue.uns["spatiome"]["local_outliers"]["n_flagged"]
    n_legacy = legacy.uns["spatiome"]["local_outliers"]["n_flagged"]
    assert 0 < n_legacy < n_v2 / 3
    assert damaged_tissue.uns["spatiome"]["local_outliers"]["zscore"] == "v2"


def test_zero_mad_gives_zero_z():
    adata = _line([5, 5, 5, 5, 5, 9])
    local_outliers(adata, metrics="metric", log=False, directions="both", n_neighbors=3)
    # Spot 6's neighbours are all 5: MAD 0, so its z is 0 rather than infinite.
    assert adata.obs["metric_z"].tolist() == [0.0] * 6
    assert not adata.obs["local_outlier"].any()


def test_samples_are_processed_separately():
    first = _random_spots(200, seed=4)
    second = _random_spots(200, seed=5)
    second.obsm["spatial"] = first.obsm["spatial"] + 0.01  # same place: only sample_key helps
    both = ad.concat({"a": first, "b": second}, label="section", index_unique="-")
    separate = local_outliers(both, metrics=["m0"], directions="both", sample_key="section",
                              n_neighbors=10, copy=True)  # fmt: skip
    for name, part in (("a", first), ("b", second)):
        alone = local_outliers(part, metrics=["m0"], directions="both", n_neighbors=10, copy=True)
        mask = (both.obs["section"] == name).to_numpy()
        np.testing.assert_allclose(separate.obs["m0_z"].to_numpy()[mask], alone.obs["m0_z"])
    mixed = local_outliers(both, metrics=["m0"], directions="both", n_neighbors=10, copy=True)
    assert not np.allclose(mixed.obs["m0_z"], separate.obs["m0_z"])


def test_copy_leaves_the_input_alone_and_qc_metrics_run_when_missing():
    tissue = sm.datasets.simulate_tissue(n_spots=400, n_genes=60, random_state=2)
    before_obs = tissue.obs.copy()
    counts = tissue.layers["counts"].copy()
    result = local_outliers(tissue, copy=True)
    pd.testing.assert_frame_equal(tissue.obs, before_obs)
    assert "spatiome" not in tissue.uns or "local_outliers" not in tissue.uns["spatiome"]
    assert result.n_obs == tissue.n_obs
    assert "pct_counts_mt_z" in result.obs and "qc_metrics" in result.uns["spatiome"]
    assert (result.layers["counts"] != counts).nnz == 0
    assert local_outliers(tissue, key_added="spatial_qc") is None
    assert tissue.obs["spatial_qc"].dtype == bool


def test_bad_input_says_what_to_fix():
    adata = _line([1, 2, 3, 4, 5, 6])
    with pytest.raises(SpatiomeInputError, match="zscore"):
        local_outliers(adata, metrics="metric", zscore="v1", n_neighbors=2)
    with pytest.raises(SpatiomeInputError, match="directions"):
        local_outliers(adata, metrics="metric", directions="up", n_neighbors=2)
    with pytest.raises(SpatiomeInputError, match="one per metric"):
        local_outliers(adata, metrics="metric", log=(True, False), n_neighbors=2)
    with pytest.raises(SpatiomeInputError, match="not more than the 6 neighbours"):
        local_outliers(adata, metrics="metric", n_neighbors=6)
    with pytest.raises(SpatiomeInputError, match="qc_metrics"):
        local_outliers(adata, n_neighbors=2)
    with pytest.raises(SpatiomeInputError, match="sample_key"):
        local_outliers(adata, metrics="metric", n_neighbors=2, sample_key="slide")
    adata.obs["metric"] = [-1.0, 2, 3, 4, 5, 6]
    with pytest.raises(SpatiomeInputError, match="log=False"):
        local_outliers(adata, metrics="metric", n_neighbors=2)
    with pytest.raises(SpatiomeInputError, match="cutoff"):
        local_outliers(adata, metrics="metric", log=False, n_neighbors=2, cutoff=0)


# --- find_artifacts: pieces against references ---------------------------------------------


def test_huber_line_matches_statsmodels_rlm():
    statsmodels = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    y = 2.0 - 0.5 * x + rng.standard_t(2, size=500)
    coefficients, residuals = huber_line(x, y, tol=1e-12, max_iter=500)
    reference = statsmodels.RLM(
        y, statsmodels.add_constant(x), M=statsmodels.robust.norms.HuberT(t=1.345)
    ).fit(conv="coefs", tol=1e-12, maxiter=500)
    np.testing.assert_allclose(coefficients, reference.params, rtol=1e-4)
    np.testing.assert_allclose(residuals, y - coefficients[0] - coefficients[1] * x)
    ordinary = np.polyfit(x, y, 1)[::-1]
    assert np.abs(coefficients - reference.params).max() < np.abs(ordinary - reference.params).max()


def test_huber_line_matches_r_mass_rlm(tmp_path):
    # The reference SpotSweeper calls: MASS::rlm with its defaults (at most 20 steps).
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.skip("Rscript not found")
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    y = 1.0 + 3.0 * x + rng.standard_t(1.5, size=400)
    pd.DataFrame({"x": x, "y": y}).to_csv(tmp_path / "xy.csv", index=False)
    script = (
        "if (!requireNamespace('MASS', quietly = TRUE)) quit(status = 3); "
        f"d <- read.csv('{tmp_path / 'xy.csv'}'); "
        "fit <- suppressWarnings(MASS::rlm(y ~ x, data = d)); "
        "write.csv(data.frame(r = resid(fit)), "
        f"'{tmp_path / 'r.csv'}', row.names = FALSE)"
    )
    done = subprocess.run([rscript, "-e", script], capture_output=True, timeout=120)
    if done.returncode == 3:
        pytest.skip("R package MASS not installed")
    assert done.returncode == 0, done.stderr.decode()
    _, residuals = huber_line(x, y)
    np.testing.assert_allclose(residuals, pd.read_csv(tmp_path / "r.csv")["r"], atol=1e-10)


def test_ring_sizes_and_grid_detection():
    assert [_ring_size(i, "hex") for i in range(1, 6)] == [6, 18, 36, 60, 90]
    assert [_ring_size(i, "square") for i in range(1, 4)] == [8, 24, 48]
    rows, cols = np.divmod(np.arange(400), 20)
    assert _detect_grid(np.column_stack([cols, rows]).astype(float)) == "square"
    hexagonal = sm.datasets.simulate_tissue(n_spots=400, n_genes=20, random_state=0)
    assert _detect_grid(hexagonal.obsm["spatial"]) == "hex"


def test_local_variance_scores_equal_a_reference(damaged_tissue):
    adata = damaged_tissue
    values = np.log1p(adata.obs["pct_counts_mt"].to_numpy())
    tree = cKDTree(adata.obsm["spatial"])
    for k in (6, 36):
        _, members = tree.query(adata.obsm["spatial"], k=k + 1)  # the spot and k neighbours
        mean = values[members].mean(axis=1)
        log_variance = np.log2(values[members].var(axis=1, ddof=1))
        _, expected = huber_line(mean, log_variance)
        # kNN ties at the tissue border are broken differently, which moves the robust
        # fit a little; regressing on log2(mean), the older variant, is 0.02-0.08 away.
        score = adata.obs[f"artifact_var_k{k}"].to_numpy()
        assert np.median(np.abs(score - expected)) < 0.005


def test_results_survive_an_h5ad_round_trip(damaged_tissue, tmp_path):
    damaged_tissue.write_h5ad(tmp_path / "qc.h5ad")
    back = ad.read_h5ad(tmp_path / "qc.h5ad")
    record = back.uns["spatiome"]["local_outliers"]
    assert list(record["metrics"]) == ["total_counts", "n_genes_by_counts", "pct_counts_mt"]
    assert record["zscore"] == "v2" and record["sample_key"] is None
    np.testing.assert_array_equal(back.obs["artifact"], damaged_tissue.obs["artifact"])
    np.testing.assert_array_equal(back.obs["local_outlier"], damaged_tissue.obs["local_outlier"])
    assert back.uns["spatiome"]["find_artifacts"]["samples"]["all"]["n_flagged"] == int(
        damaged_tissue.obs["artifact"].sum()
    )


def test_find_artifacts_outputs_and_determinism(damaged_tissue):
    adata = damaged_tissue
    assert adata.obs["artifact"].dtype == bool
    assert [c for c in adata.obs if c.startswith("artifact_var_")] == [
        f"artifact_var_k{k}" for k in (6, 18, 36, 60, 90)
    ]
    assert adata.obsm["X_artifact_pca"].shape == (adata.n_obs, 7)
    record = adata.uns["spatiome"]["find_artifacts"]
    assert record["samples"]["all"]["grid"] == "hex"
    assert record["n_flagged"] == int(adata.obs["artifact"].sum())
    again = find_artifacts(adata, copy=True)
    np.testing.assert_array_equal(again.obs["artifact"], adata.obs["artifact"])
    np.testing.assert_allclose(again.obsm["X_artifact_pca"], adata.obsm["X_artifact_pca"])
    square = find_artifacts(adata, grid="square", n_order=2, key_added="sq", copy=True)
    assert [c for c in square.obs if c.startswith("sq_var_")] == ["sq_var_k8", "sq_var_k24"]


def test_find_artifacts_warns_when_most_of_the_tissue_is_flagged():
    # A lattice with a 30-spot dry patch whose mitochondrial share is exactly 25%: k-means
    # splits the patch rim (high local variance) and its surroundings from everything
    # else, and the larger cluster, with the lower mean variance, is labelled as artifact
    # (57-70% of the spots over seeds 0-5).
    rng = np.random.default_rng(0)
    rows, cols = np.divmod(np.arange(3000), 59)
    xy = np.column_stack([(cols + 0.5 * (rows % 2)) * 100.0, rows * 86.6])
    patch = np.zeros(3000, dtype=bool)
    patch[np.argsort(((xy - xy.mean(axis=0)) ** 2).sum(axis=1))[:30]] = True
    total = np.maximum(np.round(rng.lognormal(np.log(2000.0), 0.3, 3000) * (1 - 0.9 * patch)), 1)
    mito = rng.binomial(total.astype(int), np.clip(rng.normal(0.05, 0.01, 3000), 0.001, None))
    mito = np.where(patch, np.round(0.25 * total), mito)
    adata = ad.AnnData(np.zeros((3000, 1)))
    adata.obsm["spatial"] = xy
    adata.obs["total_counts_mt"] = mito.astype(float)
    adata.obs["pct_counts_mt"] = 100.0 * mito / total
    with pytest.warns(UserWarning, match="qc_spatial"):
        find_artifacts(adata, min_separation=None)
    assert adata.obs["artifact"].mean() > 0.5
    # By default such a split is not taken for an artifact: the two clusters barely differ.
    find_artifacts(adata)
    record = adata.uns["spatiome"]["find_artifacts"]["samples"]["all"]
    assert record["separation"] < 5.0 and not adata.obs["artifact"].any()


@pytest.mark.parametrize(("n_spots", "seed"), [(600, 0), (2000, 1)])
def test_find_artifacts_flags_nothing_on_clean_tissue_and_the_patch_otherwise(n_spots, seed):
    tissue = sm.datasets.simulate_tissue(n_spots=n_spots, n_genes=60, random_state=seed)
    clean = find_artifacts(tissue, copy=True)
    assert not clean.obs["artifact"].any()
    original = find_artifacts(tissue, min_separation=None, copy=True)
    assert original.obs["artifact"].mean() > 0.15  # the original always flags a cluster
    damaged = sm.datasets.inject_artifacts(tissue, edge_fraction=0, random_state=seed)
    flagged = find_artifacts(damaged, copy=True).obs["artifact"].to_numpy()
    patch = damaged.obs["injected"].to_numpy() == "dry_patch"
    assert flagged.any() and patch[flagged].all()


def test_find_artifacts_without_mitochondrial_signal_says_why():
    tissue = sm.datasets.simulate_tissue(n_spots=300, n_genes=40, n_mito_genes=0)
    with pytest.raises(SpatiomeInputError, match="No mitochondrial signal"):
        find_artifacts(tissue)
    small = sm.datasets.simulate_tissue(n_spots=100, n_genes=40)
    with pytest.raises(SpatiomeInputError, match="n_order=6"):
        find_artifacts(small, n_order=6)  # 126 neighbours
    with pytest.raises(SpatiomeInputError, match="grid"):
        find_artifacts(small, grid="triangle")


# --- validation on simulated tissue ---------------------------------------------------------


def test_simulated_low_quality_rim_is_recovered(damaged_tissue):
    adata = damaged_tissue
    assert _edge_auroc(adata) >= 0.93
    clean = (adata.obs["injected"] == "none").to_numpy()
    assert adata.obs["local_outlier"].to_numpy()[clean].mean() <= 0.06


def test_simulated_dry_patch_is_recovered(damaged_tissue):
    adata = damaged_tissue
    patch, interior = _patch_interior(adata)
    flagged = adata.obs["artifact"].to_numpy()
    clean = (adata.obs["injected"] == "none").to_numpy()
    assert flagged[clean].mean() <= 0.005
    assert flagged[patch].mean() >= 0.35
    assert flagged[interior].mean() >= 0.9
    keep = interior | clean
    score = -adata.obs["artifact_var_k18"].to_numpy()
    assert roc_auc_score(interior[keep], score[keep]) >= 0.99


# --- validation on real tissue (skipped without ../shared/data) -----------------------------


@pytest.mark.parametrize(
    "name, edge_fraction, min_auroc",
    [("mouse_ob_rep11", 0.02, 0.92), ("dlpfc_151673", 0.005, 0.85)],
)
def test_real_tissue_flags_and_injected_rim(shared_data, name, edge_fraction, min_auroc):
    adata = sm.datasets.load(name, data_dir=shared_data)
    flagged = local_outliers(adata, copy=True)
    legacy = local_outliers(adata, zscore="bioc_legacy", copy=True)
    fraction = flagged.obs["local_outlier"].mean()
    assert 0.002 <= fraction <= 0.06
    assert legacy.obs["local_outlier"].mean() < fraction
    damaged = sm.datasets.inject_artifacts(
        adata, edge_fraction=edge_fraction, dry_patch_fraction=0, random_state=0
    )
    local_outliers(damaged)
    assert _edge_auroc(damaged) >= min_auroc


def _with_mito_genes(adata: ad.AnnData, seed: int = 0, share: float = 0.05) -> ad.AnnData:
    """Add five MT- genes taking about ``share`` of each spot's counts (the subset has none)."""
    rng = np.random.default_rng(seed)
    counts = adata.layers["counts"]
    totals = np.asarray(counts.sum(axis=1)).ravel()
    spot_share = share * rng.lognormal(0.0, 0.25, size=adata.n_obs)
    mito = rng.poisson(np.outer(totals * spot_share, rng.dirichlet(np.full(5, 5.0))))
    merged = sp.csr_matrix(sp.hstack([counts, sp.csr_matrix(mito)]))
    names = [*adata.var_names, *[f"MT-SIM{i + 1}" for i in range(5)]]
    result = ad.AnnData(merged.copy(), obs=adata.obs.copy(), var=pd.DataFrame(index=names))
    result.obsm["spatial"] = adata.obsm["spatial"].copy()
    result.layers["counts"] = merged
    return result


def test_real_tissue_dry_patch_is_recovered(shared_data):
    adata = sm.datasets.load("dlpfc_151673", data_dir=shared_data)
    with pytest.raises(SpatiomeInputError, match="No mitochondrial signal"):
        find_artifacts(adata, copy=True)  # this gene subset has no mitochondrial genes
    damaged = sm.datasets.inject_artifacts(
        _with_mito_genes(adata), edge_fraction=0, dry_patch_fraction=0.05, random_state=0
    )
    find_artifacts(damaged, grid="auto")
    assert damaged.uns["spatiome"]["find_artifacts"]["samples"]["all"]["grid"] == "hex"
    patch, interior = _patch_interior(damaged)
    flagged = damaged.obs["artifact"].to_numpy()
    assert flagged[~patch].mean() <= 0.005
    assert flagged[patch].mean() >= 0.25
    assert flagged[interior].mean() >= 0.5
