"""Standard errors by the delta method: the orthant moments, then each estimate's error against its spread."""

import numpy as np
import pytest
from scipy import integrate, stats

import dist_relu
from dist_relu import kernels, uncertainty


@pytest.mark.slow
@pytest.mark.parametrize("h, k, rho", [(0.3, -0.5, 0.6), (-1.2, 0.7, -0.4), (1.5, 1.0, 0.95), (0.5, -np.inf, 0.3)])
def test_orthant_moments_are_the_integrals(h, k, rho):
    sd = np.sqrt(1 - rho**2)
    got = uncertainty.orthant_moments(h, k, rho)
    for p in range(3):
        for q in range(3):
            density = lambda zj, zi: zi**p * zj**q * stats.norm.pdf(zi) * stats.norm.pdf((zj - rho * zi) / sd) / sd  # noqa: E731
            expected = integrate.dblquad(density, max(h, -12), 12, max(k, -12), 12, epsabs=1e-11, epsrel=1e-9)[0]
            assert got[p, q] == pytest.approx(expected, abs=1e-8), (p, q)


def test_unbounded_moments_are_the_normal_moments():
    rho = 0.4
    expected = [[1, 0, 1], [0, rho, 0], [1, 0, 1 + 2 * rho**2]]  # E[z_i^p z_j^q]
    np.testing.assert_allclose(uncertainty.orthant_moments(-np.inf, -np.inf, rho), expected, atol=1e-15)
    # One bound: E[z_j 1{z_i > h}] = ρ φ(h), E[z_i 1{z_i > h}] = φ(h).
    half = uncertainty.orthant_moments(0.7, -np.inf, rho)
    assert half[0, 1] == pytest.approx(rho * stats.norm.pdf(0.7)) and half[1, 0] == pytest.approx(stats.norm.pdf(0.7))


def censored_statistics(samples):
    """Return the sufficient statistics (coordinates, 4) of samples (rows, coordinates)."""
    positive = samples > 0
    return np.stack([(~positive).sum(0), positive.sum(0), samples.sum(0), (samples**2).sum(0)], 1).astype(float)


@pytest.mark.parametrize("method", ["censored", "truncated"])
def test_the_errors_of_b_and_sigma_are_their_spread(method):
    # 2,000 replications of n = 2,000 samples, fitted at once as 2,000 coordinates.
    rng = np.random.default_rng(0)
    n, replications = 2_000, 2_000
    for bias in (-0.5, 0.0, 1.0):
        samples = np.maximum(0, bias + 1.5 * rng.standard_normal((n, replications)))
        statistics = censored_statistics(samples)
        b, sigma, status = kernels.fit_coordinates(statistics, method)
        information = kernels.coordinate_information(statistics, b, sigma, status, method)
        se = np.sqrt(information[:, [0, 1], [0, 1]] / n)
        # The spread's own relative error is 1/√(2·2000) = 1.6%; a factor √2 or a missing zero term is far off.
        np.testing.assert_allclose(se.mean(axis=0), [b.std(), sigma.std()], rtol=0.06)
        coverage = np.mean(np.abs(np.stack([b - bias, sigma - 1.5], 1)) < 1.96 * se, axis=0)
        assert np.all((coverage > 0.93) & (coverage < 0.97)), coverage


def replicated_pairs(rng, bias, scale, rho, n, replications, thresholds, method, inversion):
    """Return ``(ρ̂, Σ̂_01, SE(ρ̂), SE(Σ̂_01))`` of independent replications of a two-coordinate fit."""
    covariance = np.array([[scale[0] ** 2, rho * scale[0] * scale[1]], [rho * scale[0] * scale[1], scale[1] ** 2]])
    z = rng.standard_normal((replications, n, 2)) @ np.linalg.cholesky(covariance).T
    samples = np.maximum(0, z + bias)
    statistics = np.concatenate([censored_statistics(samples[:, :, c].T) for c in (0, 1)])  # (2R, 4)
    b, sigma, status = kernels.fit_coordinates(statistics, method)
    exceed = samples > thresholds
    exceedances = np.concatenate([exceed[:, :, 0].sum(1), exceed[:, :, 1].sum(1)])
    both = (exceed[:, :, 0] & exceed[:, :, 1]).sum(1)
    if inversion == "tetrachoric":
        margins = kernels.tetrachoric_margins(exceedances, n)
    else:
        margins = kernels.threshold_margins(b, sigma, np.repeat(thresholds, replications))
    first, second = np.arange(replications), np.arange(replications, 2 * replications)
    rho_hat = kernels.invert_orthant(margins[first], margins[second], both / n)
    information = kernels.coordinate_information(statistics, b, sigma, status, method)
    terms = uncertainty.coordinate_terms(b, sigma, margins, information, exceedances, method)
    var_rho, var_sigma = uncertainty.pair_variances(terms, first, second, rho_hat, both / n, inversion)
    return rho_hat, rho_hat * sigma[first] * sigma[second], np.sqrt(var_rho / n), np.sqrt(var_sigma / n)


@pytest.mark.parametrize("rho, method, inversion, bias", [(0.6, "censored", "tetrachoric", [0.3, -0.5]),
                                                          (0.9, "censored", "tetrachoric", [0.3, -0.5]),
                                                          (-0.5, "censored", "tetrachoric", [0.3, -0.5]),
                                                          (0.9, "censored", "model", [0.3, -0.5]),
                                                          (0.6, "truncated", "tetrachoric", [1.0, 0.8])])
def test_the_errors_of_rho_and_sigma_ij_are_their_spread(rho, method, inversion, bias):
    rng = np.random.default_rng(1)
    bias, scale = np.array(bias), np.array([1.0, 1.5])
    rho_hat, sigma_hat, rho_se, sigma_se = replicated_pairs(rng, bias, scale, rho, 5_000, 1_000,
                                                            np.maximum(bias, 0), method, inversion)
    # 1,000 replications: the spread is known to 2.2%. Leaving out the covariance of σ̂_0 and σ̂_1
    # (about ρ² of their variances) would make SE(Σ̂) 15% too small at ρ = 0.9.
    assert rho_se.mean() == pytest.approx(rho_hat.std(), rel=0.07)
    assert sigma_se.mean() == pytest.approx(sigma_hat.std(), rel=0.07)
    coverage = np.mean(np.abs(sigma_hat - rho * scale[0] * scale[1]) < 1.96 * sigma_se)
    assert 0.93 < coverage < 0.975


def test_a_fit_stores_errors_that_cover_the_truth(tmp_path):
    # Negative biases included: b ~ N(0, 1) as drawn.
    d, n = 8, 20_000
    weights, bias = dist_relu.figure1_truth(d, seed=3, bias="gaussian")
    truth = weights @ weights.T
    rng = np.random.default_rng(3)
    z_sigma, z_bias = [], []
    for _ in range(25):
        samples = np.maximum(0, rng.standard_normal((n, d)) @ weights.T + bias).astype(np.float32)
        fit = dist_relu.ReLUGaussian().fit(samples)
        z_sigma.append(((fit.covariance_ - truth) / fit.covariance_se_)[np.triu_indices(d)])
        z_bias.append((fit.bias_ - bias) / fit.bias_se_)
    z_sigma, z_bias = np.concatenate(z_sigma), np.concatenate(z_bias)
    assert 0.93 < np.mean(np.abs(z_sigma) < 1.96) < 0.975
    assert 0.9 < z_sigma.std() < 1.1
    assert 0.92 < np.mean(np.abs(z_bias) < 1.96) < 0.98
    np.testing.assert_array_equal(np.diag(fit.correlation_se_), 0.0)
    np.testing.assert_allclose(np.diag(fit.covariance_se_), 2 * fit.scale_ * fit.scale_se_)
    np.testing.assert_array_equal(fit.covariance_se_, fit.covariance_se_.T)

    path = tmp_path / "fit.zarr"
    fit.save(path)
    stored = dist_relu.fitstore.open_fit_group(path)
    for name in ("covariance_se", "correlation_se", "bias_se", "scale_se"):
        np.testing.assert_array_equal(stored[name][:], getattr(fit, name + "_"))


def test_no_information_and_no_estimate_say_so():
    rng = np.random.default_rng(4)
    n = 20_000
    z = rng.standard_normal((n, 3))
    # Coordinate 1 is positive only where coordinate 0 is far above its threshold: every one of its
    # exceedances is one of 0's, a cell of their 2×2 table is empty, and the counts cannot tell ρ from 1.
    samples = np.column_stack([np.maximum(0, z[:, 0]), np.maximum(0, z[:, 0] - 2.5), np.zeros(n),
                               np.maximum(0, 0.5 + z[:, 2])]).astype(np.float32)
    fit = dist_relu.ReLUGaussian().fit(samples)
    assert fit.status_[2] == kernels.STATUS_ALL_ZERO
    assert np.isnan(fit.bias_se_[2]) and np.isnan(fit.covariance_se_[2]).all()
    assert fit.counts_[0, 1] == fit.counts_[1, 1] > 0
    assert np.isinf(fit.covariance_se_[0, 1]) and np.isinf(fit.correlation_se_[0, 1])
    assert np.isfinite(fit.covariance_se_[[0, 1], 3]).all() and np.isfinite(fit.bias_se_[1])


def test_the_sgd_has_errors_of_rho_only():
    weights, bias = dist_relu.figure1_truth(5, seed=0)
    samples = np.maximum(0, np.random.default_rng(0).standard_normal((20_000, 5)) @ weights.T + bias)
    fit = dist_relu.ReLUGaussian(method="sgd").fit(samples.astype(np.float32))
    assert np.isnan(fit.bias_se_).all() and np.isnan(fit.scale_se_).all() and np.isnan(fit.covariance_se_).all()
    off = ~np.eye(5, dtype=bool)
    assert np.isfinite(fit.correlation_se_[off]).all() and (fit.correlation_se_[off] > 0).all()


def test_the_summary_says_how_far_to_trust_the_fit(tmp_path):
    import json

    import zarr
    from click.testing import CliRunner

    from dist_relu.cli import main

    rng = np.random.default_rng(5)
    n = 50_000
    z = rng.standard_normal((n, 4))
    # Coordinate 3 exceeds 300 times or so (enough not to be "few positives"), each time with coordinate 0 far
    # out: its correlations with 0 and 1 have no information.
    samples = np.column_stack([np.maximum(0, z[:, 0]), np.maximum(0, 0.3 + 0.8 * z[:, 0] + 0.6 * z[:, 1]),
                               np.maximum(0, z[:, 2]), np.maximum(0, z[:, 0] - 2.5)]).astype(np.float32)
    zarr.open_group(str(tmp_path / "data.zarr"), mode="w").create_array("samples", data=samples, chunks=(10_000, 4))
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "data.zarr"), "--out", str(tmp_path / "fit.zarr"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    errors = summary["standard_errors"]
    assert errors["entries"] == 10 and errors["undetermined_coordinates"] == 1
    assert errors["no_information"] >= 1  # coordinate 3 with 0: every exceedance of 3 is one of 0's
    assert summary["status"]["undetermined correlations"] == 1
    fit = zarr.open_group(str(tmp_path / "fit.zarr"), mode="r")
    assert fit["status"][3] == kernels.STATUS_UNDETERMINED and np.isfinite(fit["bias_se"][3])
    text = CliRunner().invoke(main, ["fit", str(tmp_path / "data.zarr"), "--out", str(tmp_path / "again.zarr")]).output
    assert f"standard errors: of the 10 entries of Σ̂ (j ≥ i), {errors['relative_above_10pct']} have" in text
    assert "undetermined correlations: column 3" in text


def model_checks(samples, method="censored"):
    """Return the model check's statistic of each column of ``samples``, fitted as coordinates at once."""
    statistics = censored_statistics(samples)
    b, sigma, status = kernels.fit_coordinates(statistics, method)
    information = kernels.coordinate_information(statistics, b, sigma, status, method)
    terms = uncertainty.coordinate_terms(b, sigma, np.zeros_like(b), information, np.zeros_like(b), method)
    return uncertainty.model_check(statistics, kernels.positive_moments(samples), terms, len(samples))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["censored", "truncated"])
def test_the_model_check_is_chi_square_on_data_from_the_model(method):
    rng = np.random.default_rng(6)
    # 30,000 samples: each coordinate has the 10,000 positives the check needs.
    values = np.concatenate([model_checks(np.maximum(0, bias + 1.3 * rng.standard_normal((30_000, 800))), method)
                             for bias in (0.0, 0.5, 2.0)])
    # χ²(2): mean 2, P(> 9.21) = 1%. Leaving out the estimation of b̂ and σ̂ would inflate both.
    assert values.mean() == pytest.approx(2.0, abs=0.15)
    assert 0.005 < np.mean(values > 9.21) < 0.02
    assert not (values > uncertainty.MODEL_CHECK_THRESHOLD).any()


def test_the_model_check_finds_positives_of_other_laws():
    rng = np.random.default_rng(7)
    n = 100_000
    z = rng.standard_normal((n, 3))
    samples = np.column_stack([np.maximum(0, z[:, 0] + 0.2), np.maximum(0, rng.exponential(1.0, n) - 0.5),
                               np.maximum(0, rng.uniform(-1, 2, n)), np.maximum(0, rng.standard_t(30, n) + 0.3),
                               np.maximum(0, 0.6 * z[:, 0] + 0.8 * z[:, 1]), np.maximum(0, z[:, 2] - 2.0)])
    fit = dist_relu.ReLUGaussian().fit(samples.astype(np.float32))
    np.testing.assert_array_equal(fit.status_, [0, 6, 6, 6, 0, 0])
    assert np.isnan(fit.model_check_[5])  # 2,300 positives or so: not checked
    assert fit.settings_["model_check"]["checked"] == 5 and fit.settings_["model_check"]["failed"] == 3


@pytest.mark.slow
def test_the_model_check_flags_no_coordinate_of_data_from_the_model(tmp_path):
    weights, bias = dist_relu.figure1_truth(50, seed=8, bias="gaussian")
    dist_relu.simulate_to_zarr(tmp_path / "data.zarr", weights, bias, 1_000_000, chunk_rows=100_000, seed=8)
    fit = dist_relu.ReLUGaussian().fit(tmp_path / "data.zarr")
    checked = np.isfinite(fit.model_check_)
    assert checked.sum() >= 40 and not (fit.status_ == kernels.STATUS_NOT_NORMAL).any()
    assert np.nanmax(fit.model_check_) < uncertainty.MODEL_CHECK_THRESHOLD


def test_the_sgd_with_the_models_margins_has_no_errors_and_no_verdict_on_correlations():
    weights, bias = dist_relu.figure1_truth(5, seed=0)
    samples = np.maximum(0, np.random.default_rng(0).standard_normal((20_000, 5)) @ weights.T + bias)
    fit = dist_relu.ReLUGaussian(method="sgd", inversion="model").fit(samples.astype(np.float32))
    assert np.isnan(fit.correlation_se_[~np.eye(5, dtype=bool)]).all()
    assert (fit.status_ == kernels.STATUS_OK).all() and fit.settings_["standard_errors"]["undetermined_coordinates"] == 0


def test_only_the_censored_likelihood_is_checked():
    rng = np.random.default_rng(9)
    samples = np.maximum(0, rng.standard_normal((40_000, 3)) + 0.5).astype(np.float32)
    assert np.isfinite(dist_relu.ReLUGaussian().fit(samples).model_check_).all()
    for method in ("truncated", "sgd"):
        fit = dist_relu.ReLUGaussian(method=method).fit(samples)
        assert np.isnan(fit.model_check_).all() and fit.settings_["model_check"]["checked"] == 0


def _cut_pairs_over_seeds(n, seeds, known_margins=False):
    """Polychoric ρ̂ and Σ̂ of three pairs at fixed cut points, and their predicted standard errors, per seed."""
    from dist_relu import compiled, polychoric

    d, k = 3, 4
    weights, bias = np.array([[1.0, 0.3], [0.8, -0.5], [0.2, 1.1]]), np.array([0.3, -0.2, 0.6])
    cuts = np.array([[0.3, 0.8, 1.3, 1.9], [0.0, 0.4, 0.9, 1.5], [0.6, 1.0, 1.6, 2.2]])
    first, second = np.array([0, 0, 1]), np.array([1, 2, 2])
    rows = []
    for seed in range(seeds):
        x = kernels.relu_gaussian_chunk(n, weights, bias, seed, 0)
        statistics = kernels.chunk_statistics(x)
        fitted_bias, scale, status = kernels.fit_coordinates(statistics)
        information = kernels.coordinate_information(statistics, fitted_bias, scale, status)
        if known_margins:
            information = np.zeros_like(information)
        terms = uncertainty.coordinate_terms(fitted_bias, scale, np.zeros(d), information, np.zeros(d))
        many = compiled.chunk_pass(x, cuts)
        counts = compiled.popcount_counts(many.indicators, many.indicators)
        exceeded = np.array([np.diag(counts.reshape(d, k, d, k)[p, :, p, :]) for p in range(d)])
        h = polychoric.standardised_cuts(cuts, fitted_bias, scale)
        rho, table_information = polychoric.correlation_block(counts, n, exceeded, exceeded, h, h, np.arange(d),
                                                              np.arange(d))
        pair_rho = rho[first, second]
        var_rho, var_sigma = uncertainty.cut_pair_variances(terms, first, second, h[first], h[second], pair_rho)
        rows.append((pair_rho, pair_rho * scale[first] * scale[second], np.sqrt(var_rho / n), np.sqrt(var_sigma / n),
                     table_information[first, second]))
    return [np.array(column) for column in zip(*rows)]


def test_with_the_margins_known_the_polychoric_variance_is_the_tables_inverse_information():
    rho, _, se_rho, _, table_information = _cut_pairs_over_seeds(20_000, 2, known_margins=True)
    np.testing.assert_allclose(se_rho, 1 / np.sqrt(20_000 * table_information), rtol=1e-10)


@pytest.mark.slow
def test_the_polychoric_standard_errors_match_the_spread_over_1200_samples():
    """Fixed cut points, fitted margins (two steps): the spread of ρ̂ and Σ̂ over 1200 samples is the predicted one.

    The margins' correction matters here: without it SE(ρ̂) of the first pair is 10% smaller, and with its sign
    flipped SE(Σ̂) is 15-45% off; the spread of 1200 standard deviations is about 2%.
    """
    rho, sigma, se_rho, se_sigma, _ = _cut_pairs_over_seeds(10_000, 1200)
    for estimates, predicted in ((rho, se_rho), (sigma, se_sigma)):
        ratio = estimates.std(axis=0, ddof=1) / predicted.mean(axis=0)
        assert np.all(np.abs(ratio - 1) < 0.08), ratio
