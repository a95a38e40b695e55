"""Tail probabilities of weighted chi-square sums: Davies (AS 155), Liu, and SPARK-X's rule.

References used here: the scaled chi-square for equal weights (scipy), Imhof's integral
evaluated with scipy.integrate.quad, outputs of the original AS 155 C code
(CompQuadForm's qfc.cpp, compiled and called directly), and the p-values of R's SPARK-X
on the mouse olfactory bulb data.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from spatiome._core.chi2mix import DAVIES_FAULTS, davies, liu, mixture_pvalue
from spatiome._core.validate import SpatiomeInputError

# Outputs of the original C implementation (qfc() of CompQuadForm 1.4.2, src/qfc.cpp,
# built with g++ -O2 and called with the arguments below; p = 1 - its result, as
# CompQuadForm::davies returns it). Each entry: ((weights, dof, noncentrality, sigma, acc,
# lim), [(q, p, fault), ...]). Fault 1: too many terms needed; 4: lim error-bound
# evaluations exhausted; 2: round-off possibly significant.
ORIGINAL_DAVIES = [
    (
        ([0.8137, 0.8137], [1, 1], [0.0, 0.0], 0.0, 0.0001, 10000),
        [
            (0.05, 0.9697461799306111, 0),
            (1.3, 0.4498675053142044, 0),
            (4.0, 0.08562758770200407, 0),
            (9.5, 0.0029184792052314723, 0),
            (17.0, 2.796022172435464e-05, 0),
            (25.0, 0.0, 0),
        ],
    ),
    (
        ([0.31, 0.31, 0.31], [1, 1, 1], [0.0, 0.0, 0.0], 0.0, 0.0001, 10000),
        [
            (0.2, 0.8860192010208129, 0),
            (2.5, 0.044709441388168125, 0),
            (6.0, 0.0002338100320442571, 0),
        ],
    ),
    (
        ([0.31, 0.31, 0.31], [1, 1, 1], [0.0, 0.0, 0.0], 0.0, 1e-06, 10000),
        [(2.5, 0.04469712908632695, 0), (6.0, 0.00023088595747688956, 0)],
    ),
    (
        ([6.0, 3.0, 1.5, 0.25], [1, 2, 1, 4], [0.0, 0.0, 0.0, 0.0], 0.0, 0.0001, 10000),
        [
            (-1.0, 1.0, 0),
            (2.0, 0.9833208117876003, 0),
            (12.0, 0.49081674649378804, 0),
            (30.0, 0.08324714987857695, 0),
            (70.0, 0.0018179769534953927, 0),
        ],
    ),
    (
        ([6.0, 3.0, 1.5, 0.25], [1, 2, 1, 4], [0.0, 2.0, 0.5, 6.0], 0.0, 0.0001, 10000),
        [
            (5.0, 0.9722588955152387, 0),
            (20.0, 0.49476495290170885, 0),
            (45.0, 0.07230513788874582, 0),
            (90.0, 0.0012591695649428747, 0),
        ],
    ),
    (
        ([6.0, 3.0, 1.5, 0.25], [1, 2, 1, 4], [0.0, 2.0, 0.5, 6.0], 0.0, 1e-06, 10000),
        [(20.0, 0.494765287397692, 0), (45.0, 0.0723059956963894, 0)],
    ),
    (
        ([2.0, -1.0, 0.7, -0.3], [2, 1, 3, 2], [1.0, 0.0, 0.0, 2.5], 0.5, 0.0001, 10000),
        [
            (-12.0, 0.9998534034359532, 0),
            (-2.0, 0.95684527495436, 0),
            (1.5, 0.7521748209744124, 0),
            (8.0, 0.28097665987989706, 0),
            (25.0, 0.012310560768639345, 0),
        ],
    ),
    (
        ([-1.0, -0.5], [2, 1], [0.0, 3.0], 0.0, 1e-06, 10000),
        [
            (-20.0, 0.9997162638211325, 0),
            (-4.0, 0.5834504800989656, 0),
            (-0.5, 0.0318600597760369, 0),
            (0.5, 0.0, 0),
        ],
    ),
    (
        (
            [
                1.0,
                0.25,
                0.111111,
                0.0625,
                0.04,
                0.027778,
                0.020408,
                0.015625,
                0.012346,
                0.01,
                0.008264,
                0.006944,
            ],
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            0.0,
            0.0001,
            10000,
        ),
        [
            (0.5, 0.8217841879843533, 0),
            (1.64, 0.3233645311185056, 0),
            (4.0, 0.0666214495277786, 0),
            (9.0, 0.0037967496822721714, 0),
        ],
    ),
    (
        ([1.0, 1.0], [1, 1], [0.0, 0.0], 0.0, 1e-08, 10000),
        [(3.0, 2.0, 1)],
    ),
    (
        ([6.0, 3.0, 1.5, 0.25], [1, 2, 1, 4], [0.0, 0.0, 0.0, 0.0], 0.0, 0.0001, 5),
        [(12.0, 2.0, 4)],
    ),
    (
        (
            [3837.48618729, 9444.45502296],
            [1, 3],
            [0.0, 53.25097515],
            0.0,
            1.2763947250999106e-15,
            100000,
        ),
        [(1254480.0581918599, 2.0634207395175963e-05, 2)],
    ),
]


def imhof_sf(q, weights, dof, noncentrality, sigma=0.0):
    """P(Q > q) from Imhof's (1961) formula, 1/2 + 1/pi int_0^inf sin(theta(u)) / (u rho(u)) du.

    theta(u) = theta0(u) - q u / 2 with theta0 bounded, so beyond u = a the integral is
    split into Fourier integrals of slowly varying functions, which quad integrates with
    QUADPACK's QAWF routine (weight="cos"/"sin", infinite upper limit).
    """
    w = np.asarray(weights, dtype=float)
    h = np.asarray(dof, dtype=float)
    d = np.asarray(noncentrality, dtype=float)

    def theta0(u):
        wu = w * u
        return 0.5 * np.sum(h * np.arctan(wu) + d * wu / (1 + wu**2))

    def envelope(u):
        wu2 = (w * u) ** 2
        log_rho = np.sum(0.25 * h * np.log1p(wu2) + 0.5 * d * wu2 / (1 + wu2))
        return math.exp(-log_rho - sigma**2 * u**2 / 8) / u

    def integrand(u):
        return math.sin(theta0(u) - 0.5 * q * u) * envelope(u)

    a = 1.0 / max(np.abs(w).max(), sigma)
    head, _ = integrate.quad(integrand, 0, a, limit=200, epsabs=1e-14, epsrel=1e-12)
    omega = 0.5 * q
    if omega == 0:
        tail, _ = integrate.quad(integrand, a, np.inf, limit=500, epsabs=1e-14)
    else:
        # sin(theta0 - omega u) = sin(theta0) cos(omega u) - cos(theta0) sin(omega u)
        cos_part, _ = integrate.quad(
            lambda u: math.sin(theta0(u)) * envelope(u),
            a,
            np.inf,
            weight="cos",
            wvar=abs(omega),
            epsabs=1e-12,
        )
        sin_part, _ = integrate.quad(
            lambda u: math.cos(theta0(u)) * envelope(u),
            a,
            np.inf,
            weight="sin",
            wvar=abs(omega),
            epsabs=1e-12,
        )
        tail = cos_part - math.copysign(1.0, omega) * sin_part
    return 0.5 + (head + tail) / math.pi


@pytest.mark.parametrize("scale", [0.05, 0.8137, 1.0, 7.5])
@pytest.mark.parametrize("dof", [[1], [1, 1], [1, 1, 1], [2, 3]])
def test_equal_weights_are_a_scaled_chi_square(scale, dof):
    weights = np.full(len(dof), scale)
    total = sum(dof)
    q = scale * stats.chi2.isf([0.999, 0.9, 0.5, 0.1, 1e-2, 1e-3, 1e-4], total)
    exact = stats.chi2.sf(q / scale, total)
    for acc in (1e-4, 1e-6):
        # A lone chi2_1 near 0 (a singular density) needs more than the default 10,000
        # integration terms.
        result = davies(q, weights, dof, acc=acc, lim=10**6)
        assert (result.fault == 0).all()
        assert np.abs(result.pvalue - exact).max() <= acc
    # Liu's moment matching is exact here, also far in the tail.
    far = scale * stats.chi2.isf([1e-10, 1e-30, 1e-100], total)
    points = np.concatenate([q, far])
    np.testing.assert_allclose(
        liu(points, weights, dof), stats.chi2.sf(points / scale, total), rtol=1e-11, atol=0
    )
    np.testing.assert_allclose(
        mixture_pvalue(points, weights, dof, method="exact"),
        stats.chi2.sf(points / scale, total),
        rtol=1e-13,
    )


IMHOF_CASES = [
    # weights, dof, noncentrality, sigma, points
    ([6.0, 3.0, 1.5, 0.25], [1, 2, 1, 4], [0.0] * 4, 0.0, [2.0, 12.0, 30.0, 70.0, 120.0]),
    ([6.0, 3.0, 1.5, 0.25], [1, 2, 1, 4], [0.0, 2.0, 0.5, 6.0], 0.0, [5.0, 20.0, 45.0, 90.0]),
    ([0.9, 0.1], [1, 1], [3.0, 0.0], 0.0, [0.3, 2.0, 8.0, 15.0]),
    (
        [2.0, -1.0, 0.7, -0.3],
        [2, 1, 3, 2],
        [1.0, 0.0, 0.0, 2.5],
        0.5,
        [-12.0, -2.0, 0.0, 1.5, 8.0, 25.0],
    ),
    ([1.0 / k**2 for k in range(1, 13)], [1] * 12, [0.0] * 12, 0.0, [0.5, 1.64, 4.0, 9.0]),
]


@pytest.mark.parametrize("case", IMHOF_CASES, ids=lambda case: f"r{len(case[0])}")
@pytest.mark.parametrize("acc", [1e-4, 1e-6, 1e-9])
def test_davies_agrees_with_imhof_to_the_requested_accuracy(case, acc):
    weights, dof, noncentrality, sigma, points = case
    result = davies(points, weights, dof, noncentrality, sigma=sigma, acc=acc, lim=10**7)
    reference = np.array([imhof_sf(q, weights, dof, noncentrality, sigma) for q in points])
    assert (result.fault == 0).all()
    assert np.abs(result.pvalue - reference).max() <= acc


def test_imhof_reference_is_itself_accurate():
    points = [0.5, 3.0, 9.0]
    got = [imhof_sf(q, [1.0, 1.0, 1.0], [1, 1, 1], [0.0] * 3) for q in points]
    np.testing.assert_allclose(got, stats.chi2.sf(points, 3), atol=1e-10)
    # Non-central, one term: Q = 2 * chi2(1, 1.5); and a normal term alone.
    assert abs(imhof_sf(10.0, [2.0], [1], [1.5]) - stats.ncx2.sf(5.0, 1, 1.5)) < 1e-10
    assert abs(imhof_sf(-1.0, [1e-9], [1], [0.0], sigma=2.0) - stats.norm.sf(-0.5)) < 1e-8


def test_liu_approximates_unequal_weights():
    weights, dof, noncentrality, _, points = IMHOF_CASES[1]
    reference = np.array([imhof_sf(q, weights, dof, noncentrality) for q in points])
    approx = liu(points, weights, dof, noncentrality)
    assert np.abs(approx - reference).max() < 0.01
    assert not np.allclose(approx, reference, rtol=1e-6)


@pytest.mark.parametrize("params, expected", ORIGINAL_DAVIES)
def test_reproduces_the_original_c_implementation(params, expected):
    weights, dof, noncentrality, sigma, acc, lim = params
    points = np.array([q for q, _, _ in expected])
    result = davies(points, weights, dof, noncentrality, sigma=sigma, lim=lim, acc=acc)
    np.testing.assert_allclose(result.pvalue, [p for _, p, _ in expected], rtol=0, atol=1e-12)
    assert result.fault.tolist() == [fault for _, _, fault in expected]


def test_fault_codes_are_documented():
    assert set(DAVIES_FAULTS) == {0, 1, 2, 4}
    covered = {fault for _, rows in ORIGINAL_DAVIES for _, _, fault in rows}
    assert covered == set(DAVIES_FAULTS)


def test_shapes_and_one_set_per_row():
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.2, 2.0, (5, 3))
    q = rng.uniform(0.5, 10.0, (5, 4))
    by_row = davies(q, weights)
    assert by_row.pvalue.shape == (5, 4) and by_row.fault.shape == (5, 4)
    for i in range(5):
        np.testing.assert_array_equal(by_row.pvalue[i], davies(q[i], weights[i]).pvalue)
    one_each = davies(q[:, 0], weights)
    np.testing.assert_array_equal(one_each.pvalue, by_row.pvalue[:, 0])
    assert davies(q, weights[0]).pvalue.shape == (5, 4)
    scalar = davies(3.0, [1.0, 2.0])
    assert np.ndim(scalar.pvalue) == 0 and isinstance(float(scalar.pvalue), float)
    assert np.ndim(liu(3.0, [1.0, 2.0])) == 0
    assert davies(np.empty(0), [1.0]).pvalue.shape == (0,)


def test_threads_change_nothing():
    rng = np.random.default_rng(1)
    weights = np.repeat(rng.uniform(0.2, 1.0, (60, 1)), 2, axis=1)
    q = rng.uniform(0.0, 20.0, (60, 11))
    serial = davies(q, weights)
    threaded = davies(q, weights, n_jobs=2)
    np.testing.assert_array_equal(serial.pvalue, threaded.pvalue)
    np.testing.assert_array_equal(
        davies(q[0], weights[0]).pvalue, davies(q[0], weights[0], n_jobs=2).pvalue
    )


def test_zero_weights_and_empty_terms_change_nothing():
    q = np.array([1.0, 5.0, 20.0, 60.0])
    base = davies(q, [6.0, 3.0, 1.5], [1, 2, 1], [0.0, 2.0, 0.0])
    padded = davies(q, [6.0, 3.0, 1.5, 0.0, 0.0], [1, 2, 1, 1, 3], [0.0, 2.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(base.pvalue, padded.pvalue)
    # A term with no degrees of freedom and no non-centrality is the constant 0, whatever
    # its weight (the original code can loop forever on such a term).
    empty_term = davies(q, [6.0, 3.0, 1.5, 9.9], [1, 2, 1, 0], [0.0, 2.0, 0.0, 0.0])
    np.testing.assert_array_equal(base.pvalue, empty_term.pvalue)
    np.testing.assert_allclose(
        liu(q, [6.0, 3.0, 1.5, 0.0], [1, 2, 1, 1], [0.0, 2.0, 0.0, 0.0]),
        liu(q, [6.0, 3.0, 1.5], [1, 2, 1], [0.0, 2.0, 0.0]),
        rtol=1e-14,
    )


def test_degenerate_sets():
    # Q identically 0: Davies (as AS 155) gives P(Q > q) = 1 for q <= 0 and 0 above.
    assert davies([-1.0, 0.0, 1.0], [0.0, 0.0]).pvalue.tolist() == [1.0, 1.0, 0.0]
    assert np.isnan(liu([1.0], [0.0, 0.0])).all()
    assert mixture_pvalue([-1.0, 1.0], [0.0, 0.0], method="exact").tolist() == [1.0, 0.0]
    # Infinite statistics are allowed.
    assert davies([-np.inf, np.inf], [1.0, 2.0]).pvalue.tolist() == [1.0, 0.0]


def test_mixture_pvalue_follows_the_sparkx_rule():
    weights = [0.6, 0.6]
    q = 0.6 * np.array([0.5, 3.0, 12.0, 20.0, 40.0, 90.0])
    dav = davies(q, weights).pvalue
    got = mixture_pvalue(q, weights)
    use_liu = dav <= 0
    assert use_liu.any() and (~use_liu).any()
    np.testing.assert_array_equal(got[~use_liu], dav[~use_liu])
    np.testing.assert_array_equal(got[use_liu], liu(q, weights)[use_liu])
    # Where Davies computed nothing (fault 1 or 4, p-value 2.0) Liu is used as well.
    failed = davies(q, weights, lim=5)
    assert set(failed.fault.tolist()) <= {1, 4} and (failed.pvalue == 2.0).all()
    np.testing.assert_array_equal(mixture_pvalue(q, weights, lim=5), liu(q, weights))
    np.testing.assert_array_equal(mixture_pvalue(q, weights, method="liu"), liu(q, weights))
    # Mixed signs: no Liu fallback exists, so such entries are NaN.
    mixed = mixture_pvalue([1.0, 500.0], [1.0, -0.5])
    assert 0 < mixed[0] < 1 and np.isnan(mixed[1])


def test_exact_needs_equal_weights():
    np.testing.assert_allclose(
        mixture_pvalue([1.0, 4.0], [-0.5, -0.5], method="exact"), [0.0, 0.0], atol=0
    )
    np.testing.assert_allclose(
        mixture_pvalue([-1.0, -4.0], [-0.5, -0.5], method="exact"),
        stats.chi2.cdf([2.0, 8.0], 2),
    )
    np.testing.assert_allclose(
        mixture_pvalue(9.0, [1.5, 1.5], [1, 2], [0.5, 1.0], method="exact"),
        stats.ncx2.sf(6.0, 3, 1.5),
    )
    with pytest.raises(SpatiomeInputError, match="equal weights"):
        mixture_pvalue([1.0], [1.0, 2.0], method="exact")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"q": 1.0, "weights": [1.0, 2.0], "dof": [1, -1]}, "dof"),
        ({"q": 1.0, "weights": [1.0, 2.0], "dof": [1, 1.5]}, "integers"),
        ({"q": [1.0, np.nan], "weights": [1.0]}, "NaN"),
        ({"q": 1.0, "weights": []}, "weights must have shape"),
        ({"q": 1.0, "weights": np.empty((3, 0))}, "weights must have shape"),
        ({"q": 1.0, "weights": [1.0, np.nan]}, "weights contain NaN"),
        ({"q": 1.0, "weights": [1.0, 2.0], "noncentrality": [-1.0, 0.0]}, "noncentrality"),
        ({"q": 1.0, "weights": [1.0, 2.0], "dof": [1, 1, 1]}, "does not match"),
        ({"q": [1.0, 2.0], "weights": np.ones((3, 2))}, "one row of points per set"),
        ({"q": "one", "weights": [1.0]}, "q must be numeric"),
        ({"q": 1.0, "weights": [1.0], "acc": 0.0}, "acc"),
        ({"q": 1.0, "weights": [1.0], "lim": 0}, "lim"),
        ({"q": 1.0, "weights": [1.0], "sigma": np.inf}, "sigma"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    with pytest.raises(SpatiomeInputError, match=message):
        davies(**kwargs)


def test_bad_input_for_liu_and_mixture():
    with pytest.raises(SpatiomeInputError, match="non-negative weights"):
        liu(1.0, [1.0, -1.0])
    with pytest.raises(SpatiomeInputError, match="dof"):
        liu(1.0, [1.0], dof=[-2.0])
    with pytest.raises(SpatiomeInputError, match="NaN"):
        mixture_pvalue([np.nan], [1.0, 1.0])
    with pytest.raises(SpatiomeInputError, match="method"):
        mixture_pvalue([1.0], [1.0], method="imhof")
    # Liu accepts non-integer degrees of freedom.
    assert abs(liu(2.0, [1.0], dof=[2.5]) - stats.chi2.sf(2.0, 2.5)) < 1e-14


KERNELS = ["projection"] + [f"gaus{i}" for i in range(1, 6)] + [f"cos{i}" for i in range(1, 6)]


def test_reproduces_sparkx_pvalues_of_r_on_mouse_olfactory_bulb(shared_data):
    """SPARK-X's null per gene and kernel is lambda_g (chi2_1 + chi2_1), and R's p-values
    come from CompQuadForm::davies with Liu where Davies gives <= 0."""
    folder = shared_data / "mouse_ob_rep11"
    reference = pd.read_csv(folder / "reference" / "sparkx_r_reference.csv.gz", index_col=0)
    pvalues = reference[[f"pval_{k}" for k in KERNELS]].to_numpy()
    statistics = reference[[f"stat_{k}" for k in KERNELS]].to_numpy()
    # Every 8th gene, and all genes with a p-value small enough to reach the Liu fallback.
    keep = np.zeros(len(reference), dtype=bool)
    keep[::8] = True
    keep |= pvalues.min(axis=1) < 1e-4
    genes = reference.index[keep]
    counts = pd.read_csv(folder / "counts.csv.gz", usecols=["spot", *genes], index_col=0)
    y = counts[genes].to_numpy(np.float64)
    n_spots = y.shape[0]
    lambda_g = 1.0 - n_spots * y.mean(axis=0) ** 2 / (y**2).sum(axis=0)
    weights = np.column_stack([lambda_g, lambda_g])

    got = mixture_pvalue(statistics[keep], weights)
    expected = pvalues[keep]
    used_liu = davies(statistics[keep], weights).pvalue <= 0
    assert used_liu.sum() > 100 and (~used_liu).sum() > 1000
    assert np.abs(got - expected).max() < 1e-12
    # The exact chi-square differs from R by Davies' accuracy (acc = 1e-4), so the
    # agreement above is the algorithm's, not the distribution's.
    exact = mixture_pvalue(statistics[keep], weights, method="exact")
    assert np.abs(exact - expected).max() > 1e-6
