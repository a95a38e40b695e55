"""Niches: planted niches recovered, outputs and their invariants, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from spatiome._core.validate import SpatiomeInputError
from spatiome.datasets.niches import simulate_niches
from spatiome.interactions.niches import choose_n_niches, niches

# ARI over seeds 0-9 at these sizes, with a margin: niches on 4,000 cells 0.84-0.91, on
# 3,000 spots 0.93-0.97; k-means on the cells' own types 0.15-0.30 (radius 30 + gmm 0.70-0.88).
CELLS_ARI_FLOOR = 0.75
SPOTS_ARI_FLOOR = 0.85
BASELINE_ARI_CEILING = 0.4


@pytest.fixture(scope="module")
def cells():
    return simulate_niches(4_000, n_niches=5, random_state=0)


@pytest.fixture(scope="module")
def spots():
    return simulate_niches(3_000, n_niches=5, kind="spots", random_state=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_niches_found_and_own_types_do_not_find_them(seed):
    adata = simulate_niches(4_000, n_niches=5, random_state=seed)
    niches(adata, "cell_type", n_niches=5)
    found = adjusted_rand_score(adata.obs["planted_niche"], adata.obs["niche"])
    own_types = pd.get_dummies(adata.obs["cell_type"]).to_numpy(float)
    baseline = KMeans(5, n_init=10, random_state=0).fit_predict(own_types)
    assert found > CELLS_ARI_FLOOR
    assert adjusted_rand_score(adata.obs["planted_niche"], baseline) < BASELINE_ARI_CEILING


def test_outputs_and_composition_rows_sum_to_one(cells):
    adata = niches(cells, "cell_type", n_niches=5, copy=True)
    labels = adata.obs["niche"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert labels.cat.categories.tolist() == ["0", "1", "2", "3", "4"]
    sizes = labels.value_counts(sort=False).to_numpy()
    assert (np.diff(sizes) <= 0).all()
    per_cell = adata.obsm["niche_composition"]
    assert per_cell.shape == (cells.n_obs, 8)
    np.testing.assert_allclose(per_cell.sum(axis=1), 1.0)
    table = adata.uns["niche"]["composition"]
    assert table.shape == (5, 8) and list(table.columns) == list(per_cell.columns)
    np.testing.assert_allclose(table.sum(axis=1), 1.0)
    np.testing.assert_allclose(table.loc["0"], per_cell[labels == "0"].mean(), atol=1e-12)
    params = adata.uns["niche"]["params"]
    assert params["n_neighbors"] == 30 and params["n_niches_chosen_by"] == "given"


def test_neighbourhood_composition_matches_a_direct_count():
    rng = np.random.default_rng(3)
    adata = simulate_niches(300, n_niches=3, random_state=3)
    niches(adata, "cell_type", n_neighbors=7, n_niches=3, include_self=False)
    coords = adata.obsm["spatial"]
    types = adata.obs["cell_type"].to_numpy()
    got = adata.obsm["niche_composition"]
    for cell in rng.choice(adata.n_obs, 20, replace=False):
        distances = np.linalg.norm(coords - coords[cell], axis=1)
        distances[cell] = np.inf
        nearest = np.argsort(distances, kind="stable")[:7]
        expected = pd.Series(types[nearest]).value_counts() / 7
        for name, value in expected.items():
            assert got.iloc[cell][name] == pytest.approx(value)


def test_deterministic_and_input_untouched_with_copy(cells):
    before = cells.copy()
    first = niches(cells, "cell_type", n_niches=5, random_state=4, copy=True)
    second = niches(cells, "cell_type", n_niches=5, random_state=4, copy=True)
    assert (first.obs["niche"] == second.obs["niche"]).all()
    np.testing.assert_array_equal(first.obsm["niche_composition"], second.obsm["niche_composition"])
    assert "niche" not in cells.obs and "niche" not in cells.uns
    assert list(cells.obsm) == list(before.obsm)
    pd.testing.assert_frame_equal(cells.obs, before.obs)


def test_spot_fractions_path(spots):
    niches(spots, composition_key="cell_type_fractions", n_niches=5, key_added="spot_niche")
    found = adjusted_rand_score(spots.obs["planted_niche"], spots.obs["spot_niche"])
    own = KMeans(5, n_init=10, random_state=0).fit_predict(spots.obsm["cell_type_fractions"])
    assert found > SPOTS_ARI_FLOOR
    assert found > adjusted_rand_score(spots.obs["planted_niche"], own) + 0.1
    np.testing.assert_allclose(spots.obsm["spot_niche_composition"].sum(axis=1), 1.0)
    assert spots.uns["spot_niche"]["params"]["n_neighbors"] == 12


def test_radius_and_gmm(cells):
    adata = niches(cells, "cell_type", radius=30.0, n_niches=5, method="gmm", copy=True)
    assert adata.uns["niche"]["params"]["mean_neighbours"] > 5
    assert adjusted_rand_score(adata.obs["planted_niche"], adata.obs["niche"]) > 0.6


def test_number_of_niches_chosen_by_silhouette():
    adata = simulate_niches(1_500, n_niches=3, random_state=0)
    niches(adata, "cell_type", max_niches=6)
    result = adata.uns["niche"]
    assert result["params"]["n_niches"] == 3
    assert result["params"]["n_niches_chosen_by"] == "silhouette"
    assert result["silhouette"]["n_niches"].tolist() == [2, 3, 4, 5, 6]
    with pytest.raises(SpatiomeInputError, match="distinct"):
        choose_n_niches(np.ones((50, 3)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of groups"),
        ({"groups": "cell_type", "composition_key": "x"}, "exactly one of groups"),
        ({"groups": "missing"}, r"obs\['missing'\] is missing"),
        ({"composition_key": "missing"}, r"obsm\['missing'\] is missing"),
        ({"groups": "cell_type", "radius": 30.0, "n_neighbors": 10}, "radius or n_neighbors"),
        ({"groups": "cell_type", "radius": 0.01}, "no neighbour within radius"),
        ({"groups": "cell_type", "radius": -1.0}, "radius must be"),
        ({"groups": "cell_type", "n_neighbors": 0}, "n_neighbors must be"),
        ({"groups": "cell_type", "n_niches": 2.5}, "n_niches must be"),
        ({"groups": "cell_type", "method": "dbscan"}, "method must be"),
        ({"groups": "cell_type", "spatial_key": "xy"}, r"obsm\['xy'\] is missing"),
    ],
)
def test_errors(cells, kwargs, message):
    groups = kwargs.pop("groups", None)
    with pytest.raises(SpatiomeInputError, match=message):
        niches(cells, groups, copy=True, **kwargs)


def test_bad_groups_and_fractions():
    adata = simulate_niches(200, n_niches=2, random_state=0)
    adata.obs["with_gaps"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("with_gaps")] = None
    with pytest.raises(SpatiomeInputError, match="3 missing values"):
        niches(adata, "with_gaps", n_niches=2)
    adata.obsm["negative"] = -np.ones((adata.n_obs, 3))
    with pytest.raises(SpatiomeInputError, match="non-negative"):
        niches(adata, composition_key="negative", n_niches=2)
    with pytest.raises(SpatiomeInputError, match="AnnData"):
        niches(adata.obs, "cell_type")
