"""deconv.deconvolve on spots of known composition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spatiome._core.validate import SpatiomeInputError
from spatiome.deconv import _pln, compare_fractions, deconvolve, pseudo_spots, reference_signatures


@pytest.fixture(scope="module")
def signatures(reference):
    return reference_signatures(reference[0], select_genes=False)


@pytest.mark.parametrize("method", ["nnls", "rctd"])
def test_recovers_fractions(synth, reference, signatures, method):
    spots = synth.make_spots(reference[1])
    fractions = deconvolve(spots, signatures, method=method)
    assert synth.rmse(fractions, spots.obsm["truth"]) < 0.06
    assert np.allclose(fractions.sum(axis=1), 1.0)
    assert list(spots.obsm["cell_type_fractions"].columns) == list(signatures.columns)
    assert spots.obsm["cell_type_fractions_abundance"].shape == (spots.n_obs, 5)


def test_rctd_corrects_a_platform_effect(synth, reference, signatures):
    spots = synth.make_spots(reference[1], gene_effect_sd=0.7, seed=2)
    nnls = synth.rmse(deconvolve(spots, signatures, method="nnls"), spots.obsm["truth"])
    rctd = synth.rmse(deconvolve(spots, signatures, method="rctd"), spots.obsm["truth"])
    assert rctd < 0.8 * nnls
    info = spots.uns["spatiome"]["cell_type_fractions"]
    assert 0.5 < info["platform_effect_sd"] < 0.9  # simulated 0.7
    assert info["sigma"] < 0.3  # Poisson spots: little extra noise


def test_units_cells_versus_counts(synth, reference, signatures):
    spots = synth.make_spots(reference[1], seed=3)
    cells = deconvolve(spots, signatures, method="nnls", unit="cells")
    counts = deconvolve(spots, signatures, method="nnls", unit="counts", key_added="by_counts")
    library = signatures.sum(axis=0).to_numpy()
    expected = cells.to_numpy() * library
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(counts.to_numpy(), expected, atol=1e-10)


def test_smoothing_helps_shallow_coherent_spots(synth, reference, signatures):
    # a tissue of two halves with different compositions, sampled very shallowly
    rng = np.random.default_rng(4)
    side = 20
    grid = np.array([(i, j) for i in range(side) for j in range(side)], dtype=float)
    left = grid[:, 0] < side / 2
    truth = np.where(left[:, None], [0.6, 0.4, 0, 0, 0], [0, 0, 0.2, 0.5, 0.3])
    mean = 0.25 * truth @ reference[1]
    spots = synth.make_spots(reference[1], n_spots=grid.shape[0])
    spots.X = rng.poisson(mean).astype(np.float32)
    spots.obsm["spatial"] = grid
    truth = pd.DataFrame(truth, index=spots.obs_names, columns=signatures.columns)
    plain = synth.rmse(deconvolve(spots, signatures, method="rctd"), truth)
    smoothed = synth.rmse(deconvolve(spots, signatures, method="rctd", smoothing=1.0), truth)
    assert smoothed < 0.8 * plain


def test_doublet_mode_classifies_beads(synth, reference, signatures):
    rng = np.random.default_rng(5)
    profiles = reference[1]
    n = 120
    first = rng.integers(0, 5, n)
    second = (first + rng.integers(1, 5, n)) % 5
    is_doublet = np.arange(n) % 2 == 0
    share = np.where(is_doublet, 0.5, 1.0)
    mean = 4.0 * (share[:, None] * profiles[first] + (1 - share)[:, None] * profiles[second])
    spots = synth.make_spots(profiles, n_spots=n)
    spots.X = sp.csr_matrix(rng.poisson(mean).astype(np.float32))
    deconvolve(spots, signatures, method="rctd", mode="doublet")
    klass = spots.obs["cell_type_fractions_class"].astype(str).to_numpy()
    called_doublet = np.isin(klass, ["doublet_certain", "doublet_uncertain"])
    assert (called_doublet == is_doublet).mean() > 0.85
    names = np.asarray(signatures.columns)
    first_called = spots.obs["cell_type_fractions_first_type"].astype(str).to_numpy()
    singlets = ~is_doublet & (klass == "singlet")
    assert (first_called[singlets] == names[first[singlets]]).mean() > 0.95


def test_empty_spots_get_nan_and_input_is_not_modified(synth, reference, signatures):
    spots = synth.make_spots(reference[1], n_spots=30)
    spots.X[0] = 0
    before = spots.X.copy()
    fractions = deconvolve(spots, signatures, method="rctd")
    assert fractions.iloc[0].isna().all() and fractions.iloc[1:].notna().all().all()
    np.testing.assert_array_equal(spots.X, before)


def test_accepts_a_labelled_reference_and_is_deterministic(synth, reference):
    spots = synth.make_spots(reference[1], n_spots=60)
    a = deconvolve(spots, reference[0], method="rctd", random_state=3)
    b = deconvolve(spots, reference[0], method="rctd", random_state=3)
    pd.testing.assert_frame_equal(a, b)


def test_pseudo_spots_round_trip(reference):
    cells, _ = reference
    spots = pseudo_spots(cells, n_spots=150, cells_per_spot=(4, 10), random_state=0)
    fractions = deconvolve(spots, cells, method="rctd")
    summary = compare_fractions(fractions, spots.obsm["cell_type_proportions"])
    assert summary.loc["all", "rmse"] < 0.08 and summary.loc["all", "pearson"] > 0.9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "svd"}, "method must be"),
        ({"mode": "triplet"}, "mode must be"),
        ({"mode": "doublet", "method": "nnls"}, "RCTD's"),
        ({"smoothing": -1.0}, "smoothing must be"),
        ({"unit": "umis"}, "unit must be"),
    ],
)
def test_bad_options(synth, reference, signatures, kwargs, message):
    spots = synth.make_spots(reference[1], n_spots=10)
    with pytest.raises(SpatiomeInputError, match=message):
        deconvolve(spots, signatures, **kwargs)


def test_bad_inputs(synth, reference, signatures):
    spots = synth.make_spots(reference[1], n_spots=10)
    renamed = spots.copy()
    renamed.var_names = [f"other{i}" for i in range(renamed.n_vars)]
    with pytest.raises(SpatiomeInputError, match="same gene identifiers"):
        deconvolve(renamed, signatures)
    normalized = spots.copy()
    normalized.X = normalized.X / 3.0
    with pytest.raises(SpatiomeInputError, match="non-integer"):
        deconvolve(normalized, signatures)
    with pytest.raises(SpatiomeInputError, match="DataFrame"):
        deconvolve(spots, signatures.to_numpy())
    with pytest.raises(SpatiomeInputError, match="coordinates"):
        deconvolve(spots, signatures, smoothing=1.0)


def _overdispersed_spots(synth, profiles):
    """Spots whose counts carry a log-normal per-entry effect (sd 0.6): RCTD's sigma > 0."""
    spots = synth.make_spots(profiles, n_spots=40, seed=6)
    rng = np.random.default_rng(6)
    mean = 6.0 * spots.obsm["truth"].to_numpy() @ profiles
    spots.X = rng.poisson(mean * rng.lognormal(0.0, 0.6, mean.shape)).astype(np.float32)
    return spots


# Fractions of RCTD as computed when the likelihood table was built whole for every sigma
# (before tables were filled on demand and cached); identical bit for bit on the machine
# that recorded them, 1e-12 leaves room for another BLAS.
RCTD_RECORDED = {
    "poisson": (
        0.052,
        {
            0: [0.26262958872825826, 0.36528172102887024, 0.002565067909003985,
                0.35542581026597636, 0.014097812067891322],
            59: [0.3648348180668098, 0.022596088723510942, 0.5924463892527776,
                 0.0023538365746583333, 0.01776886738224332],
        },
    ),
    "overdispersed": (
        0.578,
        {
            0: [0.0, 0.009140506474391165, 0.44105752958644406, 0.01277586616286846,
                0.5370260977762962],
            13: [0.055301339692309576, 0.8774391529413805, 0.0, 0.05123105323134888,
                 0.016028454134960866],
            39: [0.0, 0.01758520127166661, 0.22851695927920607, 0.6657481168566861,
                 0.08814972259244121],
        },
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(RCTD_RECORDED))
def test_rctd_fractions_match_recorded_values(synth, reference, signatures, case):
    if case == "poisson":
        spots = synth.make_spots(reference[1], n_spots=60, gene_effect_sd=0.5, seed=2)
    else:
        spots = _overdispersed_spots(synth, reference[1])
    sigma, rows = RCTD_RECORDED[case]
    fractions = deconvolve(spots, signatures, method="rctd").to_numpy()
    assert spots.uns["spatiome"]["cell_type_fractions"]["sigma"] == sigma
    for row, expected in rows.items():
        np.testing.assert_allclose(fractions[row], expected, rtol=0, atol=1e-12)


def test_rctd_second_call_reuses_the_cached_tables(synth, reference, signatures):
    _pln.clear_table_cache()
    spots = _overdispersed_spots(synth, reference[1])
    first = deconvolve(spots, signatures, method="rctd").to_numpy()
    after_first = _pln.table_cache_info()
    second = deconvolve(spots, signatures, method="rctd").to_numpy()
    after_second = _pln.table_cache_info()
    # sigma 0 (platform effect), the values tried while choosing sigma, and the chosen one
    assert 3 <= after_first.misses <= after_first.maxsize
    assert after_second.misses == after_first.misses
    assert after_second.hits >= after_first.hits + after_first.misses
    assert after_second.columns_computed == after_first.columns_computed > 0
    np.testing.assert_array_equal(first, second)
