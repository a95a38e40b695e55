"""Injected artifacts: where they are, what they do to the counts, and the truth recorded."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.datasets import inject_artifacts


@pytest.fixture(scope="module")
def tissue():
    return sm.datasets.simulate_tissue(n_spots=1500, n_genes=80, random_state=3)


def totals(adata, genes=None):
    counts = adata.layers["counts"]
    if genes is not None:
        counts = counts[:, genes]
    return np.asarray(counts.sum(axis=1)).ravel()


def test_patch_and_edge_damage_only_their_spots(tissue):
    damaged = inject_artifacts(tissue, random_state=1)
    label = damaged.obs["injected"].to_numpy()
    assert (label == "dry_patch").sum() == 60 and (label == "low_quality_edge").sum() == 45
    before, after = totals(tissue), totals(damaged)
    clean = label == "none"
    np.testing.assert_array_equal(before[clean], after[clean])
    assert (
        np.median(after[label == "low_quality_edge"] / before[label == "low_quality_edge"]) < 0.35
    )
    mito = damaged.var_names.str.startswith("MT-")
    share = totals(damaged, mito) / after
    patch = label == "dry_patch"
    assert np.allclose(share[patch], 0.25, atol=0.02)
    assert share[clean].mean() < 0.1
    # The patch is compact: its spots are closer to each other than random spots are.
    xy = damaged.obsm["spatial"]
    spread = np.linalg.norm(xy[patch] - xy[patch].mean(0), axis=1).mean()
    assert spread < 0.3 * np.linalg.norm(xy - xy.mean(0), axis=1).mean()
    # The input is untouched.
    assert "injected" not in tissue.obs


def test_adjacent_doublets_merge_neighbours(tissue):
    cells = sm.datasets.simulate_tissue(n_spots=1000, n_genes=60, layout="random", random_state=2)
    merged = inject_artifacts(
        cells, dry_patch_fraction=0, edge_fraction=0, doublet_fraction=0.06, random_state=0
    )
    doublet = merged.obs["injected"].to_numpy() == "doublet"
    assert merged.n_obs == 940 and doublet.sum() == 60
    for name in merged.obs_names[doublet][:10]:
        partner = merged.obs.loc[name, "doublet_partner"]
        expected = cells[name].layers["counts"] + cells[partner].layers["counts"]
        assert (merged[name].layers["counts"] != expected).nnz == 0
        gap = np.linalg.norm(cells[name].obsm["spatial"] - cells[partner].obsm["spatial"])
        assert gap < 40.0  # neighbours in a tissue with ~10 um between cells
    assert not set(merged.obs_names) & set(merged.obs["doublet_partner"][doublet])


def test_bad_arguments(tissue):
    with pytest.raises(SpatiomeInputError, match="dry_patch_fraction"):
        inject_artifacts(tissue, dry_patch_fraction=0.9)
    with pytest.raises(SpatiomeInputError, match="doublet_mode"):
        inject_artifacts(tissue, doublet_mode="close")
    with pytest.raises(SpatiomeInputError, match=r"adata.layers\['nope'\] is missing"):
        inject_artifacts(tissue, layer="nope")
    normalized = tissue.copy()
    del normalized.layers["counts"]
    normalized.X = normalized.X.astype(float) / 2.5
    with pytest.raises(SpatiomeInputError, match="no raw counts found for layer=None"):
        inject_artifacts(normalized)


def test_low_depth_patch_keeps_the_mito_share(tissue):
    damaged = inject_artifacts(
        tissue, dry_patch_depth=0.1, dry_patch_mito_fraction=None, edge_fraction=0, random_state=1
    )
    patch = damaged.obs["injected"].to_numpy() == "dry_patch"
    assert patch.sum() == 60
    before, after = totals(tissue), totals(damaged)
    assert 0.08 < np.median(after[patch] / before[patch]) < 0.12
    mito = damaged.var_names.str.startswith("MT-")
    share_before = totals(tissue, mito)[patch].sum() / before[patch].sum()
    share_after = totals(damaged, mito)[patch].sum() / after[patch].sum()
    assert abs(share_after - share_before) < 0.01
    assert damaged.uns["artifacts"]["dry_patch_mito_fraction"] is None


def test_scattered_failures_are_isolated_and_thinned(tissue):
    damaged = inject_artifacts(tissue, scattered_fraction=0.02, scattered_depth=0.1, random_state=1)
    label = damaged.obs["injected"].to_numpy()
    failed = label == "scattered_failure"
    assert failed.sum() == 30
    # The patch and edge are where they were without failed spots (same random draws).
    plain = inject_artifacts(tissue, random_state=1)
    np.testing.assert_array_equal(plain.obs["injected"].to_numpy()[~failed], label[~failed])
    assert (plain.obs["injected"].to_numpy()[failed] == "none").all()
    ratio = totals(damaged)[failed] / totals(tissue)[failed]
    assert 0.07 < np.median(ratio) < 0.13
    # No failed spot is among the six nearest spots of another.
    xy = damaged.obsm["spatial"]
    _, near = cKDTree(xy).query(xy[failed], k=7)
    assert not failed[near[:, 1:]].any()
    assert damaged.uns["artifacts"]["scattered_fraction"] == 0.02


def test_scattered_failures_default_to_none(tissue):
    damaged = inject_artifacts(tissue, random_state=1)
    assert "scattered_failure" in damaged.obs["injected"].cat.categories
    assert not (damaged.obs["injected"] == "scattered_failure").any()
    with pytest.raises(SpatiomeInputError, match="scattered_fraction"):
        inject_artifacts(tissue, scattered_fraction=0.6)
    with pytest.raises(SpatiomeInputError, match="scattered_depth"):
        inject_artifacts(tissue, scattered_depth=1.5)
    with pytest.raises(SpatiomeInputError, match="isolated"):
        inject_artifacts(tissue, dry_patch_fraction=0, edge_fraction=0, scattered_fraction=0.5)
