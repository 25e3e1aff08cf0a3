"""The fitted distribution and the paper's metrics, against closed forms."""

import numpy as np
import pytest
from scipy import special

from dist_relu.model import RectifiedGaussian, bias_error, covariance_error, gaussian_kl, repaired_covariance


def test_metrics_follow_the_papers_normalisation():
    weights = np.diag([2.0, 1.0])  # ‖W‖_F² = 5
    truth = weights @ weights.T
    assert covariance_error(truth + np.array([[0, 3], [3, 0]]) / np.sqrt(2), truth) == pytest.approx(3 / 5)
    assert bias_error(np.array([3.0, 4.0]), np.zeros(2), truth) == pytest.approx(5 / np.sqrt(5))


def test_gaussian_kl_closed_forms():
    assert gaussian_kl(np.zeros(1), np.eye(1), np.ones(1), np.eye(1)) == pytest.approx(0.5)
    # KL(N(0, s²) ‖ N(0, 1)) = (s² − 1 − log s²)/2
    assert gaussian_kl(np.zeros(1), 4 * np.eye(1), np.zeros(1), np.eye(1)) == pytest.approx((4 - 1 - np.log(4)) / 2)
    assert gaussian_kl(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.eye(2)) == np.inf


def test_errors_of_the_truth_are_zero_and_a_singular_estimate_has_no_tv_bound():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4))
    model = RectifiedGaussian(w @ w.T, np.ones(4))
    assert model.errors(w @ w.T, np.ones(4)) == {"err_sigma": 0.0, "err_b": 0.0, "tv_bound": 0.0}
    singular = RectifiedGaussian(np.diag([1.0, 1.0, 1.0, -0.1]), np.ones(4))
    assert singular.errors(w @ w.T, np.ones(4))["tv_bound"] == 1.0


def test_factor_reproduces_a_psd_covariance_and_the_repair_of_an_indefinite_one():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 3))
    psd = w @ w.T
    np.testing.assert_allclose(RectifiedGaussian(psd, np.zeros(5)).factor() @ RectifiedGaussian(psd, np.zeros(5)).factor().T, psd, atol=1e-12)
    indefinite = 1.5 * psd - 0.5 * np.diag(np.diag(psd))  # the covariances 1.5 times too large
    assert np.linalg.eigvalsh(indefinite).min() < -0.1
    repaired = repaired_covariance(indefinite).covariance
    assert np.linalg.eigvalsh(repaired).min() > -1e-12
    np.testing.assert_array_equal(np.diag(repaired), np.diag(indefinite))
    factor = RectifiedGaussian(indefinite, np.zeros(5)).factor()
    np.testing.assert_allclose(factor @ factor.T, repaired, atol=1e-12)


def test_samples_have_the_rectified_marginals():
    covariance = np.array([[4.0, 1.0], [1.0, 1.0]])
    bias = np.array([1.0, -0.5])
    x = RectifiedGaussian(covariance, bias).sample(200_000, seed=2)
    assert (x >= 0).all()
    zero_fraction = (x == 0).mean(axis=0)
    np.testing.assert_allclose(zero_fraction, special.ndtr(-bias / np.sqrt(np.diag(covariance))), atol=0.005)
    np.testing.assert_array_equal(x, RectifiedGaussian(covariance, bias).sample(200_000, seed=2))
