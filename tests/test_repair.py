"""The repair of an estimated Σ̂ (nearest correlation matrix, variances kept), and what the fitted model predicts."""

import numpy as np
import pytest
import zarr
from scipy import optimize, special

import dist_relu
from dist_relu.model import (RectifiedGaussian, TwoLayerRectifiedGaussian, nearest_correlation, predictive_check,
                             repaired_covariance)

ROUNDING = 1e-13  # how far below 0 an eigenvalue of a repaired matrix may lie (d·ε·max|λ| at these sizes)


def indefinite_correlation(d, seed, noise=0.3):
    """Return a symmetric ``d × d`` unit-diagonal matrix with negative eigenvalues: a correlation plus noise."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((d, 3))
    covariance = weights @ weights.T
    scale = np.sqrt(np.diag(covariance))
    noisy = covariance / np.outer(scale, scale) + np.triu(rng.normal(0, noise, (d, d)), 1)
    noisy = np.triu(noisy) + np.triu(noisy, 1).T
    np.fill_diagonal(noisy, 1.0)
    assert np.linalg.eigvalsh(noisy)[0] < -0.05
    return noisy


def clipped_and_rescaled(matrix):
    """Return the eigenvalue-clipped matrix scaled back to a unit diagonal: a correlation matrix, not the nearest."""
    values, vectors = np.linalg.eigh(matrix)
    clipped = (vectors * np.maximum(values, 0)) @ vectors.T
    scale = 1 / np.sqrt(np.diag(clipped))
    result = clipped * np.outer(scale, scale)
    np.fill_diagonal(result, 1.0)
    return result


def assert_correlation_matrix(matrix):
    np.testing.assert_array_equal(np.diag(matrix), 1.0)
    np.testing.assert_array_equal(matrix, matrix.T)
    assert np.linalg.eigvalsh(matrix)[0] > -ROUNDING


# --------------------------------------------------------------------------
# nearest_correlation
# --------------------------------------------------------------------------


def test_higham_papers_example_to_its_stated_digits_and_to_the_closed_form():
    # Higham (2002), §3: A = [1 1 0; 1 1 1; 0 1 1] has the nearest correlation matrix
    # [1 .7607 .1573; .7607 1 .7607; .1573 .7607 1] (4 digits as printed).
    result = nearest_correlation(np.array([[1.0, 1, 0], [1, 1, 1], [0, 1, 1]]))
    assert result.converged and result.iterations > 1
    assert_correlation_matrix(result.matrix)
    np.testing.assert_allclose(result.matrix[[0, 1, 0], [1, 2, 2]], [0.7607, 0.7607, 0.1573], atol=5e-5)
    # Independently: the answer is [1 a b; a 1 a; b a 1] (the problem is symmetric under reversing the
    # order, and its solution unique), the constraint det = (1 − b)(1 + b − 2a²) ≥ 0 is active, so
    # b = 2a² − 1 and a minimises 4(1 − a)² + 2(2a² − 1)²: the real root of 4a³ − a − 1 = 0.
    roots = np.roots([4, 0, -1, -1])
    a = roots[np.isreal(roots)].real[0]
    np.testing.assert_allclose(result.matrix[[0, 1, 0], [1, 2, 2]], [a, a, 2 * a * a - 1], atol=1e-9)


def test_nags_published_example():
    # NAG Library g02aa's example: tridiag(−1, 2, −1) of order 4; its diagonal does not change the answer.
    matrix = np.array([[2.0, -1, 0, 0], [-1, 2, -1, 0], [0, -1, 2, -1], [0, 0, -1, 2]])
    expected = np.array([[1.0, -0.8084125, 0.1915875, 0.10677505],
                         [-0.8084125, 1.0, -0.65623269, 0.1915875],
                         [0.1915875, -0.65623269, 1.0, -0.8084125],
                         [0.10677505, 0.1915875, -0.8084125, 1.0]])
    result = nearest_correlation(matrix)
    assert result.converged
    np.testing.assert_allclose(result.matrix, expected, atol=1e-8)


def test_a_small_matrix_against_a_direct_minimisation():
    # Every correlation matrix is L Lᵀ with unit rows: minimise ‖A − L Lᵀ‖_F over L from several starts.
    target = indefinite_correlation(5, seed=3)
    rng = np.random.default_rng(4)

    def gram(flat):
        rows = flat.reshape(5, 5)
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return rows @ rows.T

    best = min((optimize.minimize(lambda flat: np.sum((target - gram(flat)) ** 2), rng.standard_normal(25),
                                  method="BFGS", options={"gtol": 1e-12}) for _ in range(5)), key=lambda r: r.fun)
    result = nearest_correlation(target)
    assert np.linalg.norm(target - result.matrix) <= np.sqrt(best.fun) + 1e-10
    np.testing.assert_allclose(result.matrix, gram(best.x), atol=1e-5)


def test_a_correlation_matrix_is_returned_unchanged_and_the_result_is_idempotent():
    rng = np.random.default_rng(5)
    for rank in (8, 2):  # full rank, and singular: eigenvalues of rounding's size either side of 0
        weights = rng.standard_normal((8, rank))
        weights /= np.linalg.norm(weights, axis=1, keepdims=True)
        correlation = weights @ weights.T
        np.fill_diagonal(correlation, 1.0)
        result = nearest_correlation(correlation)
        assert result.iterations == 0 and result.converged
        np.testing.assert_array_equal(result.matrix, correlation)
    nearest = nearest_correlation(indefinite_correlation(20, seed=6)).matrix
    again = nearest_correlation(nearest)
    assert again.iterations == 0
    np.testing.assert_array_equal(again.matrix, nearest)


def test_the_result_is_nearer_than_other_correlation_matrices():
    target = indefinite_correlation(30, seed=7)
    result = nearest_correlation(target)
    assert result.converged
    assert_correlation_matrix(result.matrix)
    distance = np.linalg.norm(target - result.matrix)
    # The eigenvalue-clipped matrix rescaled to a unit diagonal, and the shrinkage towards I that is just PSD.
    clipped = clipped_and_rescaled(target)
    smallest = np.linalg.eigvalsh(target)[0]
    shrunk = (target - smallest * np.eye(30)) / (1 - smallest)
    for other in (clipped, shrunk):
        np.testing.assert_allclose(np.diag(other), 1.0, rtol=1e-14)
        assert np.linalg.eigvalsh(other)[0] > -ROUNDING
        assert distance < np.linalg.norm(target - other)
    # Optimality: every correlation matrix on the segment towards another one is no nearer.
    for step in (1e-3, 1e-2, 0.1):
        assert distance <= np.linalg.norm(target - ((1 - step) * result.matrix + step * clipped)) + 1e-12


def test_the_iteration_reports_whether_it_converged():
    target = indefinite_correlation(30, seed=8)
    stopped = nearest_correlation(target, max_iterations=2)
    assert stopped.iterations == 2 and not stopped.converged
    assert_correlation_matrix(stopped.matrix)  # a correlation matrix even so, only not the nearest
    loose, tight = nearest_correlation(target, tolerance=1e-4), nearest_correlation(target, tolerance=1e-12)
    assert loose.converged and tight.converged and 2 < loose.iterations < tight.iterations
    assert np.linalg.norm(target - tight.matrix) <= np.linalg.norm(target - loose.matrix) + 1e-12
    with pytest.raises(ValueError, match="NaN"):
        nearest_correlation(np.array([[1.0, np.nan], [np.nan, 1.0]]))


# --------------------------------------------------------------------------
# repaired_covariance
# --------------------------------------------------------------------------


def test_the_repair_keeps_variances_and_repairs_only_the_correlations():
    correlation = indefinite_correlation(12, seed=9)
    scale = np.random.default_rng(10).uniform(0.5, 3.0, 12)
    covariance = correlation * np.outer(scale, scale)
    repair = repaired_covariance(covariance)
    np.testing.assert_array_equal(np.diag(repair.covariance), np.diag(covariance))
    assert np.linalg.eigvalsh(repair.covariance)[0] > -ROUNDING * scale.max() ** 2
    nearest = nearest_correlation(correlation)
    np.testing.assert_allclose(repair.covariance, nearest.matrix * np.outer(scale, scale), rtol=1e-12, atol=0)
    assert repair.converged and repair.iterations == nearest.iterations
    change = repair.covariance - covariance
    assert repair.relative_distance == pytest.approx(np.linalg.norm(change) / np.linalg.norm(covariance), rel=1e-12)
    assert repair.largest_change == pytest.approx(np.abs(change).max(), rel=1e-12)
    assert repair.relative_distance > 0.01


def test_a_psd_covariance_is_returned_as_is():
    weights = np.random.default_rng(11).standard_normal((6, 2))  # singular: rounding's eigenvalues below 0
    covariance = np.zeros((8, 8))
    covariance[:6, :6] = weights @ weights.T
    repair = repaired_covariance(covariance)
    np.testing.assert_array_equal(repair.covariance, covariance)
    assert (repair.relative_distance, repair.largest_change, repair.iterations) == (0.0, 0.0, 0)


def test_zero_and_unknown_variances_stay_out_of_the_repair():
    correlation = indefinite_correlation(10, seed=12)
    covariance = np.zeros((13, 13))
    covariance[:10, :10] = correlation * 2.0
    # Coordinate 10: all zero, 11: constant (σ̂ = 0, rows 0, as the fit stores them); 12: a failed estimate.
    covariance[12, :] = covariance[:, 12] = np.nan
    repair = repaired_covariance(covariance)
    alone = repaired_covariance(covariance[:10, :10])
    np.testing.assert_array_equal(repair.covariance[:10, :10], alone.covariance)
    np.testing.assert_array_equal(repair.covariance[10:12], 0.0)
    np.testing.assert_array_equal(repair.covariance[:, 10:12], 0.0)
    assert np.isnan(repair.covariance[12, [*range(10), 12]]).all()  # as estimated, but 0 against σ̂ = 0
    assert np.isfinite(repair.relative_distance) and repair.relative_distance > 0
    assert repair.relative_distance == pytest.approx(alone.relative_distance, rel=1e-12)
    model = RectifiedGaussian(covariance, np.r_[np.zeros(10), 0.0, 1.5, 0.3])
    x = model.sample(2000, seed=0)
    assert np.isfinite(x[:, :12]).all() and np.isnan(x[:, 12]).all()
    np.testing.assert_array_equal(x[:, 10], 0.0)
    np.testing.assert_array_equal(x[:, 11], 1.5)
    thresholds = np.r_[np.zeros(11), 1.5, 0.0]
    check = predictive_check(model, thresholds, coexceedance_counts(x, thresholds), 2000, (x == 0).mean(axis=0))
    assert np.isnan(check.model_zero_fraction[12]) and np.isnan(check.model_coexceedance[12]).all()
    assert np.isfinite(check.model_zero_fraction[:12]).all() and np.isfinite(check.coexceedance_error[:12]).all()
    assert 0 < check.largest_coexceedance_error < 0.1 and np.isfinite(check.largest_zero_fraction_error)
    with pytest.raises(ValueError, match="negative variance"):
        repaired_covariance(np.diag([1.0, -1.0]))


# --------------------------------------------------------------------------
# The fitted distribution samples what the fit estimated
# --------------------------------------------------------------------------


def realistic_indefinite_estimate(d=30, rank=5, noise=0.02, seed=0):
    """Return ``(Σ̂, b)``: a low-rank Figure-1 truth with errors of the size of ρ̂'s added off the diagonal."""
    weights, bias = dist_relu.figure1_truth(d, seed=seed, bias="gaussian")
    truth = weights[:, :rank] @ weights[:, :rank].T
    scale = np.sqrt(np.diag(truth))
    errors = np.triu(np.random.default_rng(seed + 1).normal(0, noise, (d, d)), 1)
    estimate = truth + (errors + errors.T) * np.outer(scale, scale)  # Σ̂_ii = σ̂_i² exactly, as the fit's
    assert np.linalg.eigvalsh(estimate)[0] < -0.01
    return estimate, bias


def test_samples_keep_every_zero_fraction_where_eigenvalue_clipping_would_not():
    estimate, bias = realistic_indefinite_estimate()
    n = 200_000
    expected = special.ndtr(-bias / np.sqrt(np.diag(estimate)))
    standard_error = np.sqrt(expected * (1 - expected) / n)
    # Not vacuous: the eigenvalue-clipped Σ̂₊ has other variances, and zero fractions more than 8 errors away.
    values, vectors = np.linalg.eigh(estimate)
    clipped = (vectors * np.maximum(values, 0)) @ vectors.T
    assert np.max(np.abs(special.ndtr(-bias / np.sqrt(np.diag(clipped))) - expected) / standard_error) > 8

    model = RectifiedGaussian(estimate, bias)
    np.testing.assert_array_equal(np.diag(model.repair.covariance), np.diag(estimate))
    assert np.linalg.eigvalsh(model.repair.covariance)[0] > -ROUNDING
    factor = model.factor()
    np.testing.assert_allclose(factor @ factor.T, model.repair.covariance, atol=1e-12)
    zero_fraction = (model.sample(n, seed=3) == 0).mean(axis=0)
    assert np.max(np.abs(zero_fraction - expected) / standard_error) < 4


def test_the_repair_is_made_once_per_model_and_the_two_layer_model_samples_through_it():
    estimate, bias = realistic_indefinite_estimate(d=12, rank=3)
    model = RectifiedGaussian(estimate, bias)
    repair = model.repair
    assert repair.iterations > 0
    np.testing.assert_array_equal(model.factor(), model.factor())
    assert model.repair is repair
    np.testing.assert_array_equal(model.sample(50, seed=1), model.sample(50, seed=1))
    mixing = np.random.default_rng(2).standard_normal((20, 12))
    two_layer = TwoLayerRectifiedGaussian(mixing, estimate, bias)
    np.testing.assert_allclose(two_layer.sample(50, seed=1), model.sample(50, seed=1) @ mixing.T, rtol=1e-12)


# --------------------------------------------------------------------------
# predictive_check
# --------------------------------------------------------------------------


def coexceedance_counts(x, thresholds):
    exceeds = (x > thresholds).astype(np.float64)
    return np.rint(exceeds.T @ exceeds).astype(np.int64)


def test_the_predictive_check_of_a_model_against_its_own_samples_and_against_others():
    weights, bias = dist_relu.figure1_truth(6, kappa=10, seed=4, bias="gaussian")
    covariance = weights @ weights.T
    covariance = np.pad(covariance, (0, 2))  # an all-zero coordinate and a constant one
    bias = np.r_[bias, 0.0, 1.5]
    model = RectifiedGaussian(covariance, bias)
    n = 200_000
    x = model.sample(n, seed=5)
    thresholds = np.r_[np.maximum(0, bias[:6]), 0.0, 1.5]
    counts = coexceedance_counts(x, thresholds)
    check = predictive_check(model, thresholds, counts, n, (x == 0).mean(axis=0))
    expected_zero_fraction = np.r_[special.ndtr(-bias[:6] / np.sqrt(np.diag(covariance)[:6])), 1.0, 0.0]
    np.testing.assert_allclose(check.model_zero_fraction, expected_zero_fraction, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(check.model_coexceedance[6:], 0.0)  # never above 0, never above 1.5
    np.testing.assert_allclose(np.diag(check.model_coexceedance)[:6],
                               special.ndtr((bias[:6] - thresholds[:6]) / np.sqrt(np.diag(covariance)[:6])),
                               rtol=1e-14)
    # Sampling error alone: a few times sqrt(p(1 − p)/n) ≤ 0.0011.
    assert check.largest_zero_fraction_error < 0.005 and check.largest_coexceedance_error < 0.005
    assert check.largest_zero_fraction_error == check.zero_fraction_error.max()
    # Another model's predictions are told apart: the correlations' signs flipped, or the biases shifted.
    flipped = RectifiedGaussian(np.diag(np.diag(covariance)) * 2 - covariance, bias)
    assert predictive_check(flipped, thresholds, counts, n, (x == 0).mean(axis=0)).largest_coexceedance_error > 0.05
    shifted = RectifiedGaussian(covariance, bias + np.r_[np.full(6, 0.3), 0.0, 0.0])
    assert predictive_check(shifted, thresholds, counts, n, (x == 0).mean(axis=0)).largest_zero_fraction_error > 0.05


def test_a_fit_with_degenerate_columns_samples_them_as_observed_and_predicts_its_data(tmp_path):
    # A rank-2 truth at d = 8: Σ̂ is indefinite, and two coordinates (b ≪ 0) have no positive value;
    # then an all-zero and a constant column.
    weights, bias = dist_relu.figure1_truth(8, seed=2, bias="gaussian")
    weights = weights[:, :2]
    n = 200_000
    y = np.random.default_rng(2).standard_normal((n, 2)) @ weights.T + bias
    x = np.column_stack([np.maximum(y, 0), np.zeros(n), np.full(n, 1.5)]).astype(np.float32)
    zarr.open_group(str(tmp_path / "data.zarr"), mode="w").create_array("samples", data=x, chunks=(50_000, 10))
    fit = dist_relu.ReLUGaussian().fit(tmp_path / "data.zarr")
    degenerate = np.flatnonzero(fit.scale_ == 0)
    assert degenerate.size >= 3 and {8, 9} <= set(degenerate)
    assert fit.model_.repair.relative_distance > 0.01  # Σ̂ was indefinite: the repair is what is tested
    samples = fit.model_.sample(100_000, seed=3)
    for column in degenerate:
        observed = np.unique(x[:, column])
        assert observed.size == 1
        np.testing.assert_array_equal(samples[:, column], observed[0])
    check = fit.predictive_check()
    assert check.largest_zero_fraction_error < 0.02
    assert check.largest_coexceedance_error < 0.05
    np.testing.assert_array_equal(check.zero_fraction_error[degenerate], 0.0)
