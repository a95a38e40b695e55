import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from spatiome._core.files import atomic_path, sha256_file, sha256_inputs, write_text_atomic
from spatiome._core.stats import bh_adjust, by_adjust, cauchy_combination, chi2_logsf


def naive_bh(p: np.ndarray, by: bool = False) -> np.ndarray:
    m = len(p)
    c = sum(1 / k for k in range(1, m + 1)) if by else 1.0
    out = np.empty(m)
    for i in range(m):
        # adjusted p_i = min over j with p_j >= p_i of p_j * m * c / rank_j
        candidates = [p[j] * m * c / (np.sum(p <= p[j])) for j in range(m) if p[j] >= p[i]]
        out[i] = min(1.0, min(candidates))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.booleans())
def test_step_up_matches_naive_definition(values, by):
    p = np.array(values)
    if len(np.unique(p)) != len(p):  # ties make rank definitions ambiguous in the naive form
        p = p + np.arange(len(p)) * 1e-9
        p = np.clip(p, 0, 1)
    expected = naive_bh(p, by=by)
    got = by_adjust(p) if by else bh_adjust(p)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_bh_keeps_nan_and_order():
    p = np.array([0.04, np.nan, 0.01, 0.03])
    q = bh_adjust(p)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], [0.04, 0.03, 0.04])
    assert (by_adjust(p)[[0, 2, 3]] >= q[[0, 2, 3]]).all()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(target, "done")
    assert target.read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_sha256_of_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"")
    assert sha256_file(tmp_path / "a.txt") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    digests = sha256_inputs(tmp_path)
    assert set(digests) == {"a.txt", "sub/b.txt"}
    assert digests["sub/b.txt"].startswith("e3b0c442")


@pytest.mark.parametrize("by", [False, True])
def test_adjusted_values_are_monotone_in_p(by):
    rng = np.random.default_rng(1)
    p = rng.uniform(size=200)
    q = (by_adjust if by else bh_adjust)(p)
    order = np.argsort(p)
    assert all(a <= b + 1e-15 for a, b in itertools.pairwise(q[order]))


def naive_acat(p: np.ndarray) -> float:
    """The Cauchy combination exactly as published, for moderate p-values."""
    statistic = np.mean(np.tan((0.5 - p) * np.pi))
    return 0.5 - np.arctan(statistic) / np.pi


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-12, 1 - 1e-9), min_size=1, max_size=12))
def test_cauchy_combination_matches_definition(values):
    p = np.array(values)
    _, log_p = cauchy_combination(np.log(p)[None, :])
    assert np.exp(log_p[0]) == pytest.approx(naive_acat(p), rel=1e-6, abs=1e-12)


def test_cauchy_combination_guards_and_tiny_pvalues():
    # p-values far below the smallest double still combine: log p = log(K) + min log p_k - ...
    log_p = np.array([[-2000.0, np.log(0.5), np.log(0.5)], [np.log(0.3)] * 3])
    statistic, combined = cauchy_combination(log_p)
    assert combined[0] == pytest.approx(-2000.0 + np.log(3.0), abs=1e-9)
    assert np.isinf(statistic[0]) or statistic[0] > 1e300
    assert np.exp(combined[1]) == pytest.approx(0.3, rel=1e-9)
    # A p-value of exactly 0 wins; exactly 1 (without a 0) gives 1; NaN propagates.
    with np.errstate(divide="ignore"):
        guards = np.log(np.array([[0.0, 0.5], [1.0, 1e-3], [np.nan, 0.5]]))
    _, combined = cauchy_combination(guards)
    assert combined[0] == -np.inf and combined[1] == 0.0 and np.isnan(combined[2])
    # Weighted: all weight on the first column returns it.
    _, combined = cauchy_combination(np.log([[0.01, 0.9]]), weights=np.array([1.0, 0.0]))
    assert np.exp(combined[0]) == pytest.approx(0.01, rel=1e-9)


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 10])
def test_chi2_logsf_equals_scipy_where_finite_and_continues_beyond(dof):
    x = np.array([0.1, 1.0, 10.0, 100.0, 1000.0, 1300.0])
    np.testing.assert_allclose(chi2_logsf(x, dof), stats.chi2.logsf(x, dof), rtol=1e-10)
    far = np.array([2000.0, 1e4, 1e7])
    got = chi2_logsf(far, dof)
    # Leading terms of the upper tail: log Q(a, z) ~ -z + (a - 1) log z - log Gamma(a).
    a, z = dof / 2, far / 2
    from scipy.special import gammaln

    approx = -z + (a - 1) * np.log(z) - gammaln(a) + np.log1p((a - 1) / z)
    np.testing.assert_allclose(got, approx, rtol=1e-6)
    assert np.all(np.diff(got) < 0)
