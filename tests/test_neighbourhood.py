"""Neighbourhood kernels against numpy on gathered neighbourhoods."""

from __future__ import annotations

import numpy as np
import pytest

from spatiome._core.neighbourhood import (
    neighbourhood_mean_variance,
    neighbourhood_median_mad,
    spatial_knn,
)
from spatiome._core.validate import SpatiomeInputError


def test_knn_matches_brute_force_and_never_returns_self():
    rng = np.random.default_rng(0)
    xy = rng.random((300, 2))
    xy[10] = xy[11]  # a duplicated position
    indices, distances = spatial_knn(xy, 6)
    full = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :6], atol=1e-12)
    assert not (indices == np.arange(300)[:, None]).any()
    assert 11 in indices[10] and 10 in indices[11]


@pytest.mark.parametrize("include_self", [False, True])
def test_median_mad_and_mean_variance_equal_numpy(include_self, monkeypatch):
    import spatiome._core.neighbourhood as module

    monkeypatch.setattr(module, "SPOT_BLOCK", 37)  # several blocks
    rng = np.random.default_rng(1)
    values = rng.normal(size=(200, 3))
    values[5, 1] = np.nan
    indices, _ = spatial_knn(rng.random((200, 2)), 8)
    median, mad = neighbourhood_median_mad(values, indices, include_self=include_self, n_jobs=2)
    mean, variance = neighbourhood_mean_variance(values, indices, include_self=include_self)
    for row in range(200):
        members = indices[row].tolist() + ([row] if include_self else [])
        for m in range(3):
            v = values[members, m]
            v = v[~np.isnan(v)]
            assert median[row, m] == pytest.approx(np.median(v))
            assert mad[row, m] == pytest.approx(np.median(np.abs(v - np.median(v))))
            assert mean[row, m] == pytest.approx(v.mean())
            assert variance[row, m] == pytest.approx(v.var(ddof=1))


def test_bad_inputs():
    xy = np.random.default_rng(0).random((5, 2))
    with pytest.raises(SpatiomeInputError, match="k must be"):
        spatial_knn(xy, 5)
    with pytest.raises(SpatiomeInputError, match="outside"):
        neighbourhood_median_mad(np.ones(3), np.array([[1], [2], [3]]))
    with pytest.raises(SpatiomeInputError, match="n_spots"):
        neighbourhood_median_mad(np.ones(3), np.array([[1], [2]]))
