"""Kernels against formulas, plain numpy and scipy."""

import numpy as np
import pytest
from scipy import optimize, special, stats

from dist_relu import kernels


def censored_samples(mean, sd, n, rng, columns=1):
    return np.maximum(0.0, mean + sd * rng.standard_normal((n, columns)))


# --- one chunk ---------------------------------------------------------------


def test_chunk_statistics_match_their_definition():
    rng = np.random.default_rng(0)
    x = censored_samples(0.3, 1.0, 1000, rng, columns=4).astype(np.float32)
    got = kernels.chunk_statistics(x)
    positive = x > 0
    np.testing.assert_array_equal(got[:, 0], (~positive).sum(0))
    np.testing.assert_array_equal(got[:, 1], positive.sum(0))
    np.testing.assert_allclose(got[:, 2], np.where(positive, x, 0).astype(np.float64).sum(0), rtol=1e-12)
    np.testing.assert_allclose(got[:, 3], (np.where(positive, x, 0).astype(np.float64) ** 2).sum(0), rtol=1e-12)


def test_statistics_are_additive_over_row_chunks():
    rng = np.random.default_rng(1)
    x = censored_samples(0.5, 2.0, 999, rng, columns=3)
    whole = kernels.chunk_statistics(x)
    parts = sum(kernels.chunk_statistics(part) for part in np.array_split(x, 7))
    np.testing.assert_allclose(parts, whole, rtol=1e-12)


@pytest.mark.parametrize(
    "rows, d_i, d_j, fill",
    [(1000, 7, 5, "random"), (130, 3, 3, "zeros"), (130, 4, 2, "ones"), (65, 1, 1, "random"), (1, 6, 1, "ones")],
)
def test_coexceedance_partial_equals_integer_gram(rows, d_i, d_j, fill):
    rng = np.random.default_rng(2)
    make = {
        "random": lambda d: (rng.random((rows, d)) > 0.5),
        "zeros": lambda d: np.zeros((rows, d), bool),
        "ones": lambda d: np.ones((rows, d), bool),
    }[fill]
    a, b = make(d_i), make(d_j)
    got = kernels.coexceedance_partial(a.astype(np.float32), b.astype(np.float32))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, a.astype(np.int64).T @ b.astype(np.int64))


def test_indicators_are_strict_exceedances():
    x = np.array([[0.0, 1.0], [0.5, 2.0], [0.0, 3.0]])
    np.testing.assert_array_equal(
        kernels.exceedance_indicators(x, np.array([0.0, 2.0])), [[0, 0], [1, 0], [0, 1]]
    )


def test_the_default_pilot_is_a_twentieth_of_the_rows_between_10000_and_100000_and_at_most_64_mib():
    row_bytes = 100 * 4  # d = 100, float32
    assert kernels.default_pilot_rows(5_000, row_bytes) == 5_000
    assert kernels.default_pilot_rows(200_000, row_bytes) == 10_000
    assert kernels.default_pilot_rows(1_000_000, row_bytes) == 50_000
    assert kernels.default_pilot_rows(10**9, row_bytes) == 100_000
    # At large d, fewer rows: no more than 64 MiB, and at least 1,000.
    assert kernels.default_pilot_rows(10**9, 4096 * 4) == 4096
    assert kernels.default_pilot_rows(10**9, 4096 * 4) * 4096 * 4 <= kernels.PILOT_BYTES
    assert kernels.default_pilot_rows(10**9, 10**6 * 8) == 1_000


def test_simulated_chunk_depends_on_seed_and_index_only():
    w, b = np.eye(3), np.array([0.5, 0.0, -0.5])
    one = kernels.relu_gaussian_chunk(100, w, b, seed=7, chunk_index=3)
    np.testing.assert_array_equal(one, kernels.relu_gaussian_chunk(100, w, b, seed=7, chunk_index=3))
    assert not np.array_equal(one, kernels.relu_gaussian_chunk(100, w, b, seed=7, chunk_index=4))
    assert (one >= 0).all() and one.dtype == np.float32


# --- Step 1 ------------------------------------------------------------------


def direct_censored_mle(x):
    """Maximise the censored-normal likelihood of raw samples with scipy (no shared code)."""
    zeros, positives = (x == 0).sum(), x[x > 0]

    def negative_loglik(p):
        mu, log_sigma = p
        sigma = np.exp(log_sigma)
        return -(zeros * special.log_ndtr(-mu / sigma) + stats.norm.logpdf(positives, mu, sigma).sum())

    start = [positives.mean(), np.log(positives.std())]
    result = optimize.minimize(negative_loglik, start, method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    return result.x[0], np.exp(result.x[1])


def direct_truncated_mle(x):
    positives = x[x > 0]

    def negative_loglik(p):
        mu, log_sigma = p
        sigma = np.exp(log_sigma)
        return -(stats.norm.logpdf(positives, mu, sigma).sum() - positives.size * special.log_ndtr(mu / sigma))

    start = [positives.mean(), np.log(positives.std())]
    result = optimize.minimize(negative_loglik, start, method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    return result.x[0], np.exp(result.x[1])


@pytest.mark.parametrize("mean, sd", [(1.0, 2.0), (-0.7, 1.0), (0.0, 0.5), (25.0, 3.0), (-2.0, 1.5)])
@pytest.mark.parametrize("method, direct", [("censored", direct_censored_mle), ("truncated", direct_truncated_mle)])
def test_mle_matches_direct_maximisation_of_the_likelihood(mean, sd, method, direct):
    rng = np.random.default_rng(3)
    x = censored_samples(mean, sd, 4000, rng)
    bias, scale, status = kernels.fit_coordinates(kernels.chunk_statistics(x), method)
    expected_bias, expected_scale = direct(x[:, 0])
    # Solved either way; fewer positives than the method's minimum only label the estimate.
    few = (x > 0).sum() < kernels.min_positives(method)
    assert status[0] == (kernels.STATUS_FEW_POSITIVES if few else kernels.STATUS_OK)
    np.testing.assert_allclose([bias[0], scale[0]], [expected_bias, expected_scale], rtol=1e-5, atol=1e-6 * sd)


@pytest.mark.parametrize("mean, sd", [(1.0, 1.0), (0.2, 2.0), (-1.0, 1.0)])
def test_censored_mle_is_unbiased_within_its_standard_error(mean, sd):
    """400 replications of n = 2000, solved as 400 coordinates at once.

    The estimate must centre on the truth within 4 standard errors of the
    replication mean, and its spread must match the Cramér–Rao bound of the
    censored normal (computed here by numerical differentiation of the
    expected log-likelihood, independently of the kernel).
    """
    rng = np.random.default_rng(4)
    reps, n = 400, 2000
    x = censored_samples(mean, sd, n, rng, columns=reps)
    bias, scale, status = kernels.fit_coordinates(kernels.chunk_statistics(x))
    assert (status == kernels.STATUS_OK).all()
    for estimate, truth in ((bias, mean), (scale, sd)):
        standard_error = estimate.std(ddof=1) / np.sqrt(reps)
        assert abs(estimate.mean() - truth) < 4 * standard_error + 1e-3 * sd

    # Fisher information of one censored-normal sample in (µ, σ).
    def expected_loglik(mu, sigma):
        p0 = special.ndtr(-mean / sd)
        grid = np.linspace(1e-9, mean + 10 * sd, 200_001)
        density = stats.norm.pdf(grid, mean, sd)
        return p0 * special.log_ndtr(-mu / sigma) + np.trapezoid(density * stats.norm.logpdf(grid, mu, sigma), grid)

    h = 1e-3 * sd
    f = lambda a, b: expected_loglik(mean + a, sd + b)  # noqa: E731
    hessian = np.array([
        [(f(h, 0) - 2 * f(0, 0) + f(-h, 0)) / h**2, (f(h, h) - f(h, -h) - f(-h, h) + f(-h, -h)) / (4 * h**2)],
        [0.0, (f(0, h) - 2 * f(0, 0) + f(0, -h)) / h**2],
    ])
    hessian[1, 0] = hessian[0, 1]
    cramer_rao = np.sqrt(np.diag(np.linalg.inv(-hessian)) / n)
    np.testing.assert_allclose([bias.std(), scale.std()], cramer_rao, rtol=0.15)


def test_censored_mle_uses_the_zeros_and_beats_the_truncated_one():
    rng = np.random.default_rng(5)
    x = censored_samples(0.3, 1.0, 2000, rng, columns=300)
    statistics = kernels.chunk_statistics(x)
    censored = kernels.fit_coordinates(statistics, "censored")[0]
    truncated = kernels.fit_coordinates(statistics, "truncated")[0]
    assert np.mean((censored - 0.3) ** 2) < 0.7 * np.mean((truncated - 0.3) ** 2)


def test_estimates_do_not_depend_on_units():
    rng = np.random.default_rng(6)
    x = censored_samples(0.4, 1.3, 3000, rng, columns=3)
    bias, scale, _ = kernels.fit_coordinates(kernels.chunk_statistics(x))
    bias_k, scale_k, _ = kernels.fit_coordinates(kernels.chunk_statistics(1000 * x))
    np.testing.assert_allclose(bias_k, 1000 * bias, rtol=1e-8)
    np.testing.assert_allclose(scale_k, 1000 * scale, rtol=1e-8)


def test_degenerate_coordinates():
    x = np.zeros((150, 4))
    x[:, 1] = 2.5  # constant
    x[:25, 2] = np.linspace(1, 2, 25)  # few positives
    x[:, 3] = np.random.default_rng(7).standard_normal(150) ** 2 + 0.1  # no zeros: plain normal MLE
    bias, scale, status = kernels.fit_coordinates(kernels.chunk_statistics(x))
    assert list(status) == [kernels.STATUS_ALL_ZERO, kernels.STATUS_CONSTANT, kernels.STATUS_FEW_POSITIVES,
                            kernels.STATUS_OK]
    assert bias[0] == 0 and scale[0] == 0
    assert bias[1] == pytest.approx(2.5) and scale[1] == 0
    assert bias[3] == pytest.approx(x[:, 3].mean()) and scale[3] == pytest.approx(x[:, 3].std())


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method"):
        kernels.fit_coordinates(np.ones((1, 4)), "median")


# --- Step 2 ------------------------------------------------------------------


def test_orthant_probability_matches_scipy():
    rng = np.random.default_rng(8)
    a, b = rng.uniform(-3, 3, (2, 60))
    rho = rng.uniform(-0.999, 0.999, 60)
    expected = [stats.multivariate_normal([0, 0], [[1, r], [r, 1]]).cdf([x, y]) for x, y, r in zip(a, b, rho)]
    np.testing.assert_allclose(kernels.orthant_probability(a, b, rho), expected, atol=1e-10)


def test_orthant_probability_at_the_ends():
    a, b = np.array([0.3, -1.0]), np.array([1.2, 0.4])
    # The quadrature is least accurate at |ρ| = 1 exactly, where the integrand is steepest.
    np.testing.assert_allclose(kernels.orthant_probability(a, b, 1.0), special.ndtr(np.minimum(a, b)), atol=1e-9)
    np.testing.assert_allclose(
        kernels.orthant_probability(a, b, -1.0), np.maximum(0, special.ndtr(a) + special.ndtr(b) - 1), atol=1e-9
    )
    np.testing.assert_allclose(kernels.orthant_probability(a, b, 0.0), special.ndtr(a) * special.ndtr(b), atol=1e-15)


def test_inversion_reproduces_the_papers_closed_form():
    """At a = 0 the root must be the paper's Lemma 2: ρ = cos(π − 2π C/n)."""
    n = 500_000
    counts = np.arange(1, n // 2, 997)
    rho = kernels.invert_orthant(0.0, 0.0, counts / n)
    np.testing.assert_allclose(rho, np.cos(np.pi - 2 * np.pi * counts / n), rtol=0, atol=1e-14)


def test_inversion_round_trips_general_margins():
    rng = np.random.default_rng(9)
    a, b = rng.uniform(-2.5, 2.5, (2, 2000))
    rho = rng.uniform(-0.99, 0.99, 2000)
    p = kernels.orthant_probability(a, b, rho)
    got = kernels.invert_orthant(a, b, p)
    # ρ is identified wherever the probability moves with it; compare probabilities everywhere.
    np.testing.assert_allclose(kernels.orthant_probability(a, b, got), p, atol=1e-13)
    slope = kernels._orthant_integrand(a, b, np.arcsin(rho)) / (2 * np.pi * np.sqrt(1 - rho**2))
    identified = slope > 1e-4
    assert identified.mean() > 0.8
    np.testing.assert_allclose(got[identified], rho[identified], atol=1e-8)


def test_inversion_clips_outside_the_attainable_range_and_ignores_empty_thresholds():
    a, b = np.array([0.0, 0.0, 0.5, -np.inf]), np.array([0.0, 0.0, 0.5, 0.0])
    p = np.array([0.6, 0.0, special.ndtr(0.5) + 1e-9, 0.2])
    np.testing.assert_array_equal(kernels.invert_orthant(a, b, p), [1.0, -1.0, 1.0, 0.0])


def test_covariance_block_has_exact_variances_on_the_global_diagonal():
    counts = np.array([[40, 25], [25, 50]])
    scale = np.array([2.0, 3.0])
    a = kernels.tetrachoric_margins(np.diag(counts), 100)
    block = kernels.covariance_block(counts, 100, a, a, scale, scale, np.arange(2), np.arange(2))
    assert block[0, 0] == 4.0 and block[1, 1] == 9.0
    rho = block[0, 1] / 6
    assert kernels.orthant_probability(a[0], a[1], rho) == pytest.approx(0.25, abs=1e-13)
    off = kernels.covariance_block(counts, 100, a, a, scale, scale, np.arange(2), np.arange(2, 4))
    assert off[0, 0] == pytest.approx(4.0 * kernels.invert_orthant(a[0], a[0], 0.4))


def test_threshold_margins():
    a = kernels.threshold_margins(np.array([1.0, -1.0, 0.5]), np.array([2.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.5]))
    np.testing.assert_array_equal(a, [0.0, -1.0, -np.inf])
