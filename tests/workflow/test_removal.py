"""Low-quality spots are removed before the statistics and kept, marked, in the results."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.workflow import PipelineConfig, run_pipeline
from spatiome.workflow.config import config_from_dict, default_toml
from spatiome.workflow.removal import remove_low_quality, restore_removed

FAST = dict(umap=False, svg_methods=("moran",), module_methods=(), n_top_maps=1)


def _tissue_with_empty_spots(n_spots: int = 400, seed: int = 0) -> tuple[ad.AnnData, list[str]]:
    """A simulated tissue in which two spots keep only 2 and 5 of their counts."""
    tissue = sm.datasets.simulate_tissue(n_spots=n_spots, n_genes=60, random_state=seed)
    counts = tissue.layers["counts"].tolil()
    for row, keep in ((7, 2), (200, 5)):
        values = np.asarray(counts[row].toarray()).ravel()
        thinned = np.zeros_like(values)
        nonzero = np.flatnonzero(values)[:keep]
        thinned[nonzero] = 1
        counts[row] = thinned
    tissue.layers["counts"] = counts.tocsr()
    tissue.X = tissue.layers["counts"].copy()
    return tissue, [tissue.obs_names[7], tissue.obs_names[200]]


@pytest.fixture(scope="module")
def removed_run(tmp_path_factory):
    tissue, empty = _tissue_with_empty_spots()
    before = tissue.copy()
    out = tmp_path_factory.mktemp("removed")
    result = run_pipeline(tissue, out, PipelineConfig(**FAST), progress=False, cache=False)
    return tissue, before, empty, out, result


def test_near_empty_spots_are_removed_before_the_statistics(removed_run):
    tissue, before, empty, out, result = removed_run
    # The input is untouched.
    assert tissue.n_obs == before.n_obs
    assert (tissue.layers["counts"] != before.layers["counts"]).nnz == 0
    summary = result.summary
    assert summary["n_obs_input"] == tissue.n_obs
    assert summary["n_obs_removed"] >= 2
    assert summary["n_spots"] == tissue.n_obs - summary["n_obs_removed"]
    assert sum(summary["removed_reasons"].values()) >= summary["n_obs_removed"]


def test_results_keep_every_spot_with_missing_statistics(removed_run):
    tissue, _, empty, out, result = removed_run
    saved = ad.read_h5ad(out / "results.h5ad")
    assert list(saved.obs_names) == list(tissue.obs_names)
    flagged = saved.obs["low_quality"].to_numpy(dtype=bool)
    assert flagged[saved.obs_names.get_indexer(empty)].all()
    assert (saved.obs.loc[empty, "low_quality_reason"] != "").all()
    # Counts and coordinates are kept; statistics are missing on the removed spots.
    assert (saved.layers["counts"] != tissue.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(saved.obsm["spatial"], tissue.obsm["spatial"])
    assert saved.obs.loc[flagged, "spatial_domain"].isna().all()
    assert saved.obs.loc[~flagged, "spatial_domain"].notna().all()
    assert np.isnan(saved.obsm["X_pca"][flagged]).all()
    assert np.isfinite(saved.obsm["X_pca"][~flagged]).all()
    graph = saved.obsp["spatial_connectivities"]
    assert graph.shape == (tissue.n_obs, tissue.n_obs)
    assert graph[flagged].nnz == 0 and graph[:, flagged].nnz == 0
    # The removed spots are normalized like the others (same target), not zeroed.
    target = saved.uns["spatiome"]["normalize"]["target_sum"]
    totals = np.expm1(saved.X[flagged].toarray()).sum(axis=1)
    np.testing.assert_allclose(totals, target, rtol=1e-3)
    assert result.adata.n_obs == tissue.n_obs


def test_report_shows_the_removed_spots_by_reason_with_a_map(removed_run):
    _, _, _, out, result = removed_run
    html = (out / "report.html").read_text()
    assert "were removed before the statistics" in html
    assert "below the minimum library size" in html
    assert "removed spots lie" in html
    assert f"{result.summary['n_spots']} of {result.summary['n_obs_input']}" in html


def test_remove_false_keeps_every_spot_in_the_statistics(tmp_path):
    tissue, empty = _tissue_with_empty_spots()
    result = run_pipeline(
        tissue, tmp_path, PipelineConfig(**FAST, qc_remove=False), progress=False, cache=False
    )
    assert "n_obs_removed" not in result.summary
    assert result.summary["n_spots"] == tissue.n_obs
    assert result.adata.obs.loc[empty, "low_quality"].all()
    assert result.adata.obs["spatial_domain"].notna().all()
    assert "no spot was removed" in (tmp_path / "report.html").read_text()


def test_cache_keys_follow_the_removal(tmp_path):
    tissue, _ = _tissue_with_empty_spots(n_spots=300)
    first = run_pipeline(tissue, tmp_path, PipelineConfig(**FAST), progress=False)
    again = run_pipeline(tissue, tmp_path, PipelineConfig(**FAST, qc_remove=False), progress=False)
    assert first.summary["n_spots"] < again.summary["n_spots"] == tissue.n_obs
    assert again.adata.obs["spatial_domain"].notna().all()


def test_config_qc_table_sets_remove():
    config = config_from_dict({"qc": {"remove": False}})
    assert config.pipeline.qc_remove is False
    assert "[qc]\n" in default_toml() and "remove = true" in default_toml()
    with pytest.raises(SpatiomeInputError, match="qc.remove"):
        config_from_dict({"qc": {"remove": False}, "pipeline": {"qc_remove": True}})
    with pytest.raises(SpatiomeInputError, match="did you mean qc.remove"):
        config_from_dict({"qc": {"remov": False}})


def test_removal_is_refused_when_most_spots_are_flagged():
    data = ad.AnnData(np.ones((20, 2)))
    data.obs["low_quality"] = [True] * 11 + [False] * 9
    data.obs["low_quality_reason"] = ["mad_counts"] * 11 + [""] * 9
    kept, removal = remove_low_quality(data)
    assert kept is data and removal.n_removed == 0
    assert "none was removed" in removal.note


def test_restore_removed_pads_every_slot():
    full = ad.AnnData(sp.csr_matrix(np.arange(12.0).reshape(4, 3)))
    full.layers["counts"] = full.X.copy()
    full.obsm["spatial"] = np.arange(8.0).reshape(4, 2)
    full.obs["total"] = [1, 2, 3, 4]
    kept = full[[0, 1, 3]].copy()
    kept.obs["flag"] = [True, False, True]
    kept.obs["n"] = [1, 2, 3]
    kept.obs["label"] = pd.Categorical(["a", "b", "a"])
    kept.obsm["fractions"] = pd.DataFrame({"t": [0.1, 0.2, 0.3]}, index=kept.obs_names)
    kept.obsp["graph"] = sp.csr_matrix(np.ones((3, 3)))
    restored = restore_removed(kept, full)
    assert list(restored.obs_names) == list(full.obs_names)
    assert restored.obs["flag"].isna().tolist() == [False, False, True, False]
    assert restored.obs["n"].dtype == "Int64" and restored.obs["total"].tolist() == [1, 2, 3, 4]
    assert restored.obs["label"].isna().sum() == 1
    assert np.isnan(restored.obsm["fractions"].loc["2", "t"])
    np.testing.assert_array_equal(restored.obsm["spatial"], full.obsm["spatial"])
    assert restored.obsp["graph"][2].nnz == 0 and restored.obsp["graph"].nnz == 9
    assert (restored.layers["counts"] != full.layers["counts"]).nnz == 0
    assert restored.X[2].nnz == 0  # no normalization given: zeros


@pytest.mark.parametrize("dense", [False, True])
def test_restore_removed_places_every_row_in_the_order_of_full(dense):
    rng = np.random.default_rng(3)
    values = sp.random(50, 7, density=0.4, format="csr", random_state=4, dtype=np.float32)
    full = ad.AnnData(values.toarray() if dense else values)
    full.layers["counts"] = values.copy()
    # kept spots in a scrambled order, removed ones in runs and alone (including both ends)
    removed = [0, 1, 2, 9, 20, 21, 49]
    kept_rows = rng.permutation(np.setdiff1d(np.arange(50), removed))
    kept = full[kept_rows].copy()
    restored = restore_removed(kept, full, lambda spots: spots.X * 2)
    expected = values.toarray()
    expected[removed] *= 2
    x = restored.X if dense else restored.X.toarray()
    assert x.dtype == np.float32 and np.array_equal(x, expected)
    counts = restored.layers["counts"]
    assert counts.has_canonical_format and np.array_equal(counts.toarray(), values.toarray())


def test_counts_are_held_once_until_normalization_and_removal_keeps_it_so():
    from spatiome.workflow.removal import share_counts

    tissue = sm.datasets.simulate_tissue(n_spots=120, n_genes=20, random_state=1)
    assert tissue.layers["counts"] is not tissue.X  # stored twice, with equal values
    share_counts(tissue)
    assert tissue.layers["counts"] is tissue.X
    tissue.obs["low_quality"] = np.arange(tissue.n_obs) % 40 == 0
    before = tissue.X.copy()
    kept, removal = remove_low_quality(tissue)
    assert len(removal.removed) == 3 and kept.layers["counts"] is kept.X
    assert tissue.X is tissue.layers["counts"] and (tissue.X != before).nnz == 0
    assert (kept.X != before[~tissue.obs["low_quality"].to_numpy()]).nnz == 0
    sm.pp.normalize(kept)
    assert kept.X is not kept.layers["counts"]
    assert (kept.layers["counts"] != before[~tissue.obs["low_quality"].to_numpy()]).nnz == 0
    differing = sm.datasets.simulate_tissue(n_spots=100, n_genes=10, random_state=2)
    differing.layers["counts"] = differing.layers["counts"] * 2
    share_counts(differing)
    assert differing.layers["counts"] is not differing.X


def test_released_matrices_grow_in_place_and_equal_the_copying_restore(monkeypatch):
    from spatiome.workflow import removal
    from spatiome.workflow.removal import restore_matrices

    values = sp.random(2_000, 50, density=0.25, format="csr", random_state=1, dtype=np.float32)
    full = ad.AnnData(values.copy())
    full.layers["counts"] = values.copy()
    removed = np.array([0, 1, 500, 900, 1_999])
    keep = np.setdiff1d(np.arange(full.n_obs), removed)
    kept, expected = full[keep].copy(), restore_removed(full[keep].copy(), full)
    restored = restore_removed(kept, full, matrices=False)

    def no_copy(*args):
        raise AssertionError("a released CSR matrix was copied instead of grown in place")

    monkeypatch.setattr(removal, "_restore_matrix", no_copy)
    restore_matrices(restored, kept, full, release=True)
    assert kept.X is None and "counts" not in kept.layers
    for mine, theirs in (
        (restored.X, expected.X),
        (restored.layers["counts"], expected.layers["counts"]),
    ):
        assert mine.has_canonical_format and (mine != theirs).nnz == 0


def test_a_matrix_still_viewed_elsewhere_is_copied_not_grown():
    from spatiome.workflow.removal import restore_matrices

    values = sp.random(300, 20, density=0.3, format="csr", random_state=2, dtype=np.float32)
    full = ad.AnnData(values.copy())
    kept = full[10:].copy()
    elsewhere = kept.X.data[:5]  # a view someone still holds: growing would free it
    before = elsewhere.copy()
    restored = restore_removed(kept, full, matrices=False)
    restore_matrices(restored, kept, full, lambda spots: spots.X, release=True)
    assert np.array_equal(elsewhere, before)
    assert (restored.X != values).nnz == 0  # the removed rows' entries came first
