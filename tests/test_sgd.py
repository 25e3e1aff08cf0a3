"""The paper's ProjSGD NormBiasEst (method="sgd"): kernels and graph."""

import dask.array as da
import numpy as np
import pytest
from scipy import stats

import dist_relu
from dist_relu import graph, kernels, sgd

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`


def run_sgd(x, seed=0, chunks=1, n_batches=1, **settings):
    """Run NormBiasEst on a numpy array with the kernels alone; return (d, 2) = (µ̂, σ̂)."""
    mean0, sd0 = sgd.standardisation(kernels.chunk_statistics(x))
    states = []
    for batch, rows in enumerate(np.array_split(x, n_batches)):
        state = sgd.initial_state(np.arange(x.shape[1]), batch, seed)
        for part in np.array_split(rows, chunks):
            state = sgd.advance(state, part, mean0, sd0, **settings)
        states.append(state)
    return sgd.select_and_map_back(states, mean0, sd0)


def test_uniforms_are_uniform_and_depend_only_on_key_and_counter():
    keys = sgd.stream_keys(seed=3, batch=0, coordinates=np.arange(4))
    u = sgd.uniforms(keys[:, None], np.arange(50_000))
    assert u.min() > 0 and u.max() < 1
    for row in u:
        assert stats.kstest(row, "uniform").pvalue > 1e-3
    np.testing.assert_array_equal(u[:, 123], sgd.uniforms(keys, 123))
    assert len(np.unique(sgd.stream_keys(3, 1, np.arange(4)).tolist() + keys.tolist())) == 8


@pytest.mark.parametrize("mean, sd, lower", [(0.0, 1.0, -0.5), (1.0, 2.0, 0.0), (-2.0, 0.5, 1.0)])
def test_truncated_normal_draws_follow_the_truncated_normal(mean, sd, lower):
    u = np.random.default_rng(0).random(20_000)
    z = sgd.truncated_normal_draws(mean, sd, lower, u)
    reference = stats.truncnorm((lower - mean) / sd, np.inf, loc=mean, scale=sd)
    assert (z > lower).all()
    assert stats.kstest(z, reference.cdf).pvalue > 1e-3


def test_truncated_normal_draws_are_finite_far_in_the_tail():
    u = np.array([2.0**-54, 0.5, 1 - 2.0**-53])  # the range sgd.uniforms can return
    for alpha in (10.0, 40.0, 200.0):
        z = sgd.truncated_normal_draws(0.0, 1.0, alpha, u)
        # Past α the tail is close to exponential with rate α: z ≈ α + log(1/u)/α.
        assert np.isfinite(z).all() and (z >= alpha).all() and (z < alpha + 40 / alpha).all()


def test_central_batch_is_the_one_with_least_summed_distance():
    estimates = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[0.9, 0.1]], [[5.0, 5.0]]])  # (B=4, d=1, 2)
    assert sgd.central_batch(estimates).tolist() == [2]
    rng = np.random.default_rng(1)
    cloud = rng.standard_normal((7, 3, 2))
    cloud[4] = 0.0  # the centre of a symmetric-ish cloud
    cloud[0] = 50.0  # an outlier
    sums = [[sum(np.linalg.norm(cloud[b, i] - cloud[c, i]) for c in range(7)) for i in range(3)] for b in range(7)]
    np.testing.assert_array_equal(sgd.central_batch(cloud), np.argmin(sums, axis=0))


@pytest.mark.parametrize("mean, sd", [(1.0, 2.0), (0.0, 1.0), (2.5, 0.5)])
def test_sgd_converges_on_a_truncated_normal(mean, sd):
    """Single pass of ProjSGD over 2.5·10⁵ samples: within a few percent of the truth."""
    rng = np.random.default_rng(2)
    x = np.maximum(0, mean + sd * rng.standard_normal((250_000, 2)))
    estimate = run_sgd(x)
    np.testing.assert_allclose(estimate[:, 0], mean, atol=0.05 * sd)
    np.testing.assert_allclose(estimate[:, 1], sd, rtol=0.03)


def test_sgd_does_not_depend_on_row_chunking_within_a_batch():
    rng = np.random.default_rng(3)
    x = np.maximum(0, 0.5 + rng.standard_normal((30_007, 3)))
    np.testing.assert_array_equal(run_sgd(x, chunks=1), run_sgd(x, chunks=9))
    np.testing.assert_array_equal(run_sgd(x, chunks=4, n_batches=3), run_sgd(x, chunks=2, n_batches=3))
    assert not np.array_equal(run_sgd(x, seed=0), run_sgd(x, seed=1))


def test_sgd_graph_matches_the_kernels_on_any_chunking():
    rng = np.random.default_rng(4)
    x = np.maximum(0, 0.3 + rng.standard_normal((20_000, 5)))
    statistics = kernels.chunk_statistics(x)
    expected = run_sgd(x, n_batches=2, seed=7)
    for chunks in [(20_000, 5), (3_001, 2), (777, 1)]:
        lazy = graph.sgd_estimates(da.from_array(x, chunks=chunks), statistics, seed=7, n_batches=2)
        np.testing.assert_array_equal(lazy.compute(), expected)
        # The statistics may be lazy too, as a pilot's are.
        lazy = graph.sgd_estimates(da.from_array(x, chunks=chunks), da.from_array(statistics, chunks=(2, 4)),
                                   seed=7, n_batches=2)
        np.testing.assert_array_equal(lazy.compute(), expected)


def test_same_seed_same_estimate_with_one_and_two_workers(simulated):
    from distributed import Client, LocalCluster

    path, _, _ = simulated(200_000, 6, seed=5)
    fits = []
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster):
            fits.append(dist_relu.ReLUGaussian(method="sgd", sgd_batches=2, seed=11).fit(path))
    np.testing.assert_array_equal(fits[0].bias_, fits[1].bias_)
    np.testing.assert_array_equal(fits[0].covariance_, fits[1].covariance_)


def test_sgd_fit_end_to_end_is_close_and_the_censored_mle_is_closer(simulated):
    errors = {"sgd": [], "censored": []}
    for seed in range(3):
        path, weights, b = simulated(500_000, 5, seed=seed, chunk_rows=125_000)
        for method in errors:
            fit = dist_relu.ReLUGaussian(method=method, passes=2, inversion="model", clip_bias=True).fit(path)
            errors[method].append(fit.model_.errors(weights @ weights.T, b))
    sgd_b = np.mean([e["err_b"] for e in errors["sgd"]])
    mle_b = np.mean([e["err_b"] for e in errors["censored"]])
    # The authors' code at this size: err_b = 0.0126 ± 0.0046 (benchmarks/reference/authors_code_figure1.csv).
    assert sgd_b < 0.03
    assert mle_b < sgd_b / 2


def test_degenerate_coordinates_keep_their_exact_answer_under_sgd(relu_data):
    n = relu_data.shape[0]
    x = np.column_stack([relu_data, np.zeros(n), np.full(n, 1.5)])
    fit = dist_relu.ReLUGaussian(method="sgd").fit(x)
    assert fit.bias_[-1] == 1.5 and fit.scale_[-1] == 0 and fit.scale_[-2] == 0
    assert np.isfinite(fit.covariance_).all()


def test_sgd_settings_are_checked():
    with pytest.raises(ValueError, match="sgd_radius"):
        dist_relu.ReLUGaussian(method="sgd", sgd_radius=0.5).fit(np.ones((10, 2)))
    with pytest.raises(ValueError, match="sgd_batches"):
        dist_relu.ReLUGaussian(method="sgd", sgd_batches=0).fit(np.ones((10, 2)))
