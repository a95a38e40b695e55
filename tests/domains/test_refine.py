"""domains.cluster's spatial refinement (refine=) and extra per-spot features (extra_features=)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.domains.cluster import potts_refine


def _grid(n_side: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of a square grid and three vertical bands as truth."""
    rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
    return np.column_stack([cols, rows]).astype(float), cols * 3 // n_side


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_potts_refine_recovers_noisy_bands(seed):
    rng = np.random.default_rng(seed)
    coords, truth = _grid()
    features = np.eye(3)[truth] * 2.0 + rng.normal(scale=1.2, size=(truth.size, 3))
    noisy = features.argmax(axis=1)
    refined = potts_refine(features, noisy, coords, 10.0)
    assert adjusted_rand_score(truth, noisy) < 0.6
    assert adjusted_rand_score(truth, refined) > 0.85
    # Without the prior the labels only move to their own Gaussians' best fit.
    plain = potts_refine(features, noisy, coords, 0.0)
    assert adjusted_rand_score(truth, plain) < 0.7


def test_potts_refine_keeps_clean_labels_and_label_range():
    coords, truth = _grid(12)
    features = np.eye(3)[truth] * 10.0 + np.random.default_rng(0).normal(size=(truth.size, 3))
    refined = potts_refine(features, truth, coords, 5.0)
    np.testing.assert_array_equal(refined, truth)


@pytest.fixture(scope="module")
def weak_tissue():
    adata = sm.datasets.simulate_tissue(
        n_spots=600, n_genes=80, n_domains=4, effect_size=0.7, random_state=3
    )
    sm.pp.normalize(adata)
    return adata


def test_cluster_refine_helps_on_weak_domains(weak_tissue):
    truth = weak_tissue.obs["domain"]
    options = {"method": "gmm", "neighbourhood_lambda": 0.5, "n_top_genes": None,
               "n_comps": 10, "random_state": 0, "copy": True}  # fmt: skip
    plain = sm.domains.cluster(weak_tissue, 4, refine=0.0, smoothing_steps=1, **options)
    refined = sm.domains.cluster(weak_tissue, 4, refine=10.0, smoothing_steps=1, **options)
    wider = sm.domains.cluster(weak_tissue, 4, refine=0.0, smoothing_steps=3, **options)
    ari_plain = adjusted_rand_score(truth, plain.obs["spatial_domain"])
    ari_refined = adjusted_rand_score(truth, refined.obs["spatial_domain"])
    ari_wider = adjusted_rand_score(truth, wider.obs["spatial_domain"])
    # Measured: 0.35 with one smoothing step, 0.40 refined, 0.52 with three steps.
    assert ari_refined > ari_plain + 0.03
    assert ari_wider > ari_plain + 0.1
    record = refined.uns["spatiome"]["spatial_domain"]
    assert record["refine"] == 10.0 and record["refine_changed_spots"] > 0
    assert plain.uns["spatiome"]["spatial_domain"]["refine"] == 0.0


def test_cluster_extra_features_carry_the_domains(weak_tissue):
    truth = weak_tissue.obs["domain"].cat.codes.to_numpy()
    rng = np.random.default_rng(0)
    adata = weak_tissue.copy()
    adata.obsm["X_noise"] = rng.normal(size=(adata.n_obs, 10))  # no domain signal
    adata.obsm["scores"] = np.eye(4)[truth] + rng.normal(scale=0.3, size=(truth.size, 4))
    options = {"method": "kmeans", "use_rep": "X_noise", "random_state": 0}
    plain = sm.domains.cluster(adata, 4, copy=True, **options)
    sm.domains.cluster(adata, 4, extra_features="scores", extra_weight=4.0, **options)
    assert adjusted_rand_score(truth, plain.obs["spatial_domain"]) < 0.1
    assert adjusted_rand_score(truth, adata.obs["spatial_domain"]) > 0.8
    assert adata.obsm["X_spatial_domain"].shape == (adata.n_obs, 14)
    assert adata.uns["spatiome"]["spatial_domain"]["extra_features"] == 4
    # An array works as an obsm key does; the scaled block keeps extra_weight's share.
    again = sm.domains.cluster(adata, 4, extra_features=adata.obsm["scores"],
                               extra_weight=4.0, copy=True, **options)  # fmt: skip
    assert (again.obs["spatial_domain"] == adata.obs["spatial_domain"]).all()
    block = again.obsm["X_spatial_domain"]
    ratio = block[:, 10:].var(axis=0).sum() / block[:, :10].var(axis=0).sum()
    assert ratio == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"refine": -1.0}, "refine must be"),
        ({"extra_features": "absent"}, "is missing"),
        ({"extra_features": np.zeros((3, 2))}, "one row per spot"),
        ({"extra_features": np.full((600, 2), np.nan)}, "NaN"),
        ({"extra_features": np.zeros((600, 2)), "extra_weight": 0.0}, "extra_weight"),
    ],
)
def test_cluster_refine_and_extra_errors(weak_tissue, kwargs, message):
    with pytest.raises(SpatiomeInputError, match=message):
        sm.domains.cluster(weak_tissue, 4, copy=True, **kwargs)
