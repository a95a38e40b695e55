"""domains.choose_n_domains: simulated tissues with known domains, real sections, inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.domains import choose_n_domains, cluster


def _simulated(n_spots: int, n_domains: int, layout: str, seed: int):
    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=300, n_domains=n_domains, domains=layout,
        patterns=("domain",), random_state=seed,
    )  # fmt: skip
    sm.pp.normalize(adata)
    return adata


@pytest.fixture(scope="module")
def four_layers():
    return _simulated(800, 4, "layers", 0)


@pytest.mark.parametrize(
    ("n_spots", "n_domains", "layout", "seed"),
    [(800, 4, "layers", 0), (1000, 6, "blobs", 1), (1000, 7, "layers", 0)],
)
def test_eigengap_finds_the_simulated_number_of_domains(n_spots, n_domains, layout, seed):
    adata = _simulated(n_spots, n_domains, layout, seed)
    chosen = choose_n_domains(adata)
    if n_domains == 7:
        # Seven thin layers on 1,000 spots: the gaps after 6 and 7 eigenvalues are nearly
        # equal with the three-step smoothed features (0.201 and 0.195); 6 is chosen.
        assert chosen in (6, 7)
    else:
        assert chosen == n_domains
    record = adata.uns["spatiome"]["n_domains"]
    # Distinct domains give a clear gap: 34-146 times the median gap in the benchmark.
    assert record["clear_gap"] and record["gap_ratio"] >= 7
    assert record["decided_by"] == "eigengap" and "bic" not in record
    assert record["n_domains"] == chosen and f"{chosen} domains" in record["reason"]
    # The mixture at the chosen (true) number: ARI 1.0, 0.76 and 0.88 on these tissues
    # (k-means reaches 0.99 on all three: the mixture's fit stops in a local optimum).
    cluster(adata, chosen)
    assert adjusted_rand_score(adata.obs["domain"], adata.obs["spatial_domain"]) > 0.7


def test_record_holds_the_per_k_scores_and_is_deterministic(four_layers):
    adata = four_layers.copy()
    first = choose_n_domains(adata, k_range=(3, 9), key_added="choice")
    record = adata.uns["spatiome"]["choice"]
    assert record["k"] == list(range(3, 10)) and len(record["score"]) == 7
    assert record["score_name"] == "eigengap" and record["k_range"] == [3, 9]
    assert record["score"] == record["eigengap"] and record["method"] == "auto"
    assert np.argmax(record["score"]) == record["k"].index(first)
    eigenvalues = np.asarray(record["eigenvalues"])
    assert eigenvalues[0] == pytest.approx(0.0, abs=1e-8) and np.all(np.diff(eigenvalues) >= 0)
    np.testing.assert_allclose(record["score"], np.diff(eigenvalues)[2:9])
    assert record["n_spots"] == adata.n_obs and record["n_neighbors"] == round(np.sqrt(800))
    assert record["features"]["n_comps"] == 30 and record["seconds"] > 0
    again = four_layers.copy()
    assert choose_n_domains(again, k_range=(3, 9), key_added="choice") == first
    assert again.uns["spatiome"]["choice"]["score"] == record["score"]
    # Only the record is added.
    assert set(adata.obsm) == set(four_layers.obsm) and adata.obs.equals(four_layers.obs)


def test_existing_features_and_a_spot_sample_give_the_same_answer(four_layers):
    adata = four_layers.copy()
    cluster(adata, 4)
    assert choose_n_domains(adata, use_rep="X_spatial_domain") == 4
    assert adata.uns["spatiome"]["n_domains"]["use_rep"] == "X_spatial_domain"
    assert choose_n_domains(adata, use_rep="X_spatial_domain", max_spots=400) == 4
    assert adata.uns["spatiome"]["n_domains"]["n_spots"] == 400


def test_bic_criteria_are_deterministic_and_the_elbow_is_never_above_the_minimum(four_layers):
    adata = four_layers.copy()
    cluster(adata, 4)
    # Five components: mixtures of up to 38 components have fewer parameters than spots.
    adata.obsm["X_five"] = adata.obsm["X_spatial_domain"][:, :5]
    k_bic = choose_n_domains(adata, method="bic", k_range=(2, 8), use_rep="X_five")
    record = adata.uns["spatiome"]["n_domains"]
    assert record["score_name"] == "bic" and record["decided_by"] == "bic"
    assert len(record["score"]) == 7 and record["score"] == record["bic"]
    assert "eigengap" not in record
    assert record["k"][int(np.argmin(record["score"]))] == k_bic
    assert record["bic_one_component"] > min(record["score"])
    # The mixtures start from one Ward tree: no seed enters.
    choose_n_domains(
        adata, method="bic", k_range=(2, 8), use_rep="X_five", random_state=5,
        key_added="other",
    )  # fmt: skip
    assert adata.uns["spatiome"]["other"]["score"] == record["score"]
    k_elbow = choose_n_domains(adata, method="bic_elbow", k_range=(2, 8), use_rep="X_five")
    assert 2 <= k_elbow <= k_bic <= 8
    assert "within 40%" in adata.uns["spatiome"]["n_domains"]["reason"]


def test_auto_falls_back_to_the_elbow_when_the_gap_is_weak():
    # Expression with no domain structure at all: no clear eigengap.
    rng = np.random.default_rng(0)
    adata = sm.datasets.simulate_tissue(n_spots=400, n_genes=40, random_state=0)
    adata.obsm["X_noise"] = rng.normal(size=(adata.n_obs, 5))
    chosen = choose_n_domains(adata, use_rep="X_noise", k_range=(2, 8))
    record = adata.uns["spatiome"]["n_domains"]
    assert not record["clear_gap"] and record["decided_by"] == "bic_elbow"
    assert record["score"] == record["bic"] and len(record["eigengap"]) == 7
    assert "only" in record["reason"] and "not sharply separated" in record["reason"]
    assert chosen == choose_n_domains(adata, method="bic_elbow", use_rep="X_noise", k_range=(2, 8))


def test_no_mixture_with_more_parameters_than_spots():
    # 12 dimensions: 78 parameters for the shared covariance, 13 more per component, so
    # at most 5 components fit 150 spots.
    rng = np.random.default_rng(1)
    adata = sm.datasets.simulate_tissue(n_spots=150, n_genes=40, random_state=0)
    adata.obsm["X_noise"] = rng.normal(size=(adata.n_obs, 12))
    choose_n_domains(adata, use_rep="X_noise", k_range=(2, 6))
    record = adata.uns["spatiome"]["n_domains"]
    assert record["decided_by"] == "eigengap" and "bic" not in record
    assert "more parameters than the 150 spots" in record["reason"]
    # Explicitly asked, the BIC uses the mixtures that fit (here up to 5 components)...
    choose_n_domains(adata, method="bic", use_rep="X_noise", k_range=(2, 6))
    record = adata.uns["spatiome"]["n_domains"]
    assert record["k"] == [2, 3, 4, 5] and "above 5 components" in record["reason"]
    # ...and refuses when none does.
    with pytest.raises(SpatiomeInputError, match="cannot fit a mixture of 6 components"):
        choose_n_domains(adata, method="bic_elbow", use_rep="X_noise", k_range=(6, 8))


def test_input_errors(four_layers):
    adata = four_layers.copy()
    with pytest.raises(SpatiomeInputError, match="method must be one of"):
        choose_n_domains(adata, method="gap")
    for bad in ((1, 5), (6, 3), (2,), (2.0, 5), "2-15"):
        with pytest.raises(SpatiomeInputError, match="k_range"):
            choose_n_domains(adata, k_range=bad)
    with pytest.raises(SpatiomeInputError, match="needs at least"):
        choose_n_domains(adata, k_range=(2, adata.n_obs))
    with pytest.raises(SpatiomeInputError, match="max_spots"):
        choose_n_domains(adata, max_spots=10)
    with pytest.raises(SpatiomeInputError, match="pp.reduce|is missing"):
        choose_n_domains(adata, use_rep="X_nothing")
    raw = sm.datasets.simulate_tissue(n_spots=200, n_genes=40, random_state=0)
    with pytest.raises(SpatiomeInputError, match="raw counts.*choose_n_domains"):
        choose_n_domains(raw)


def test_dlpfc_section_gets_a_number_near_its_seven_layers(shared_data):
    # Measured (benchmarks/n_domains.py --loso): 7, 6 and 7 on 151673-151675 with the
    # elbow fraction 0.4 that leave-one-section-out chose; 9 at 0.3, 11-14 at 0.02-0.2.
    if not (shared_data / "dlpfc_151673").is_dir():
        pytest.skip("dlpfc_151673 not in the shared data")
    adata = sm.datasets.load("dlpfc_151673", data_dir=shared_data, download=False)
    sm.pp.normalize(adata)
    chosen = choose_n_domains(adata)
    assert 6 <= chosen <= 8
    record = adata.uns["spatiome"]["n_domains"]
    assert not record["clear_gap"] and record["decided_by"] == "bic_elbow"
    assert record["seconds"] < 60


@pytest.mark.parametrize("name", ["breast_cancer_layer2", "seqfish_field43", "mouse_ob_rep11"])
def test_small_sections_get_a_sane_number_and_no_tiny_domain(shared_data, name):
    # Measured: 3 (breast cancer), 3 (seqFISH), 5 (olfactory bulb, 5 layers), all by the
    # eigengap: no mixture fits ~250 spots in 60 dimensions.
    if not (shared_data / name).is_dir():
        pytest.skip(f"{name} not in the shared data")
    adata = sm.datasets.load(name, data_dir=shared_data, download=False)
    sm.pp.normalize(adata)
    chosen = choose_n_domains(adata)
    assert 3 <= chosen <= 8
    assert adata.uns["spatiome"]["n_domains"]["decided_by"] == "eigengap"
    cluster(adata, chosen)
    sizes = adata.obs["spatial_domain"].value_counts()
    assert len(sizes) == chosen and sizes.min() >= 5
