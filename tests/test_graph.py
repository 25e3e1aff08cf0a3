"""Graph shape and laziness: what runs on which blocks, checked without (or before) computing."""

import dask
from dask.core import flatten, get_dependencies
import dask.array as da
import numpy as np
import pytest

from dist_relu import graph, kernels


def refuse_to_compute(*args, **kwargs):
    raise AssertionError("graph building must not compute")


def culled_graph(array):
    """Return the graph of the tasks ``array`` needs, before fusion renames them."""
    return dict(array.__dask_graph__().cull(set(flatten(array.__dask_keys__()))))


def tasks_named(array, prefix):
    return [k for k in culled_graph(array) if isinstance(k, tuple) and k[0].startswith(prefix)]


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    x = np.maximum(0, rng.standard_normal((1000, 10)) + 0.2)
    return x, da.from_array(x, chunks=(100, 3))


def test_building_the_graph_never_computes(samples):
    _, x = samples
    with dask.config.set(scheduler=refuse_to_compute):
        passes = graph.chunk_passes(x, np.zeros(10))
        statistics = graph.column_statistics(passes)
        bias, scale, status = graph.coordinate_estimates(statistics)
        counts = graph.coexceedance_counts(passes)
        margins = graph.tetrachoric_margins(counts, 1000)
        graph.covariance(counts, 1000, margins, scale)
        graph.simulated_samples(100, np.eye(3), np.zeros(3), 30, seed=0)


def test_counts_equal_numpy_gram_of_the_indicators(samples):
    x, lazy = samples
    thresholds = np.linspace(0, 1, 10)
    indicator = (x > thresholds).astype(np.int64)
    for kernel in ("popcount", "gemm"):
        counts = graph.coexceedance_counts(graph.chunk_passes(lazy, thresholds), split_every=3, kernel=kernel).compute()
        assert counts.dtype == np.int64
        np.testing.assert_array_equal(counts, indicator.T @ indicator)


def test_only_the_upper_block_triangle_is_counted(samples):
    _, x = samples  # 10 row chunks, 4 column blocks
    counts = graph.coexceedance_counts(graph.chunk_passes(x, np.zeros(10)))
    partials = tasks_named(counts, "coexceedance-")
    assert len(partials) == 10 * (4 * 5 // 2)
    assert {k[2] <= k[3] for k in partials} == {True}


def test_statistics_do_not_depend_on_chunking(samples):
    x, _ = samples
    expected = kernels.chunk_statistics(x)
    for chunks in [(100, 3), (333, 10), (1000, 1), (7, 10)]:
        got = graph.column_statistics(graph.chunk_passes(da.from_array(x, chunks=chunks)), split_every=4).compute()
        np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_simulated_samples_depend_on_chunk_index_not_on_scheduler():
    w, b = np.eye(4), np.zeros(4)
    lazy = graph.simulated_samples(1000, w, b, 300, seed=3)
    assert lazy.chunks == ((300, 300, 300, 100), (4,))
    threaded = lazy.compute(scheduler="threads")
    synchronous = lazy.compute(scheduler="synchronous")
    np.testing.assert_array_equal(threaded, synchronous)
    np.testing.assert_array_equal(threaded[300:600], kernels.relu_gaussian_chunk(300, w, b, 3, 1))


def test_graphs_of_different_data_never_share_keys():
    """Keys are prefix + hash of the inputs: two fits in one graph or on one cluster cannot collide."""
    one = da.from_array(np.ones((10, 2)), chunks=5)
    two = da.from_array(2 * np.ones((10, 2)), chunks=5)
    a, b = graph.column_statistics(graph.chunk_passes(one)), graph.column_statistics(graph.chunk_passes(two))
    assert a.name != b.name
    got_a, got_b = dask.compute(a, b)
    np.testing.assert_array_equal(got_a[:, 2], 10)
    np.testing.assert_array_equal(got_b[:, 2], 20)
    c1 = graph.coexceedance_counts(graph.chunk_passes(one, np.zeros(2)))
    c2 = graph.coexceedance_counts(graph.chunk_passes(one, np.full(2, 5.0)))
    np.testing.assert_array_equal(dask.compute(c1, c2)[1], 0)
    s1 = graph.simulated_samples(10, np.eye(2), np.zeros(2), 5, seed=1)
    s2 = graph.simulated_samples(10, np.eye(2), np.ones(2), 5, seed=1)
    assert s1.name != s2.name


@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_row_chunks_are_summed_in_segments_that_run_one_after_another(split_every):
    """A segment's task adds its ≤ split_every chunks' partials to the running sum the segment before made.

    So one running sum per block waits between tasks, however many the rows,
    and the chunks of a segment are counted in parallel.
    """
    x = np.maximum(0, np.random.default_rng(1).standard_normal((2300, 4)))
    passes = graph.chunk_passes(da.from_array(x, chunks=(100, 4)), np.zeros(4))
    expected = (kernels.chunk_statistics(x), ((x > 0).T.astype(np.int64) @ (x > 0)))
    for total, want in zip((graph.column_statistics(passes, split_every), graph.coexceedance_counts(passes, split_every)),
                           expected):
        tasks = culled_graph(total)
        running = sorted(key for key in tasks if isinstance(key, tuple) and "-running-" in key[0])
        assert [key[1] for key in running] == list(range(-(-23 // split_every)))  # 23 row chunks
        for key in running:
            inputs = get_dependencies(tasks, key)
            earlier = [other for other in inputs if "-running-" in other[0]]
            assert earlier == ([] if key[1] == 0 else [(key[0], key[1] - 1, *key[2:])])
            assert len(inputs) - len(earlier) == min(split_every, 23 - key[1] * split_every)
        np.testing.assert_allclose(total.compute(), want, rtol=1e-13)


def test_a_one_pass_plan_is_built_without_computing(samples):
    """The pilot, its thresholds and the main pass are one lazy graph: planning reads nothing."""
    from dist_relu.pipeline import Input
    from dist_relu.plan import plan_fit
    from dist_relu.settings import OneLayerSettings

    _, x = samples
    with dask.config.set(scheduler=refuse_to_compute):
        plan = plan_fit(Input.open(x), OneLayerSettings(pilot_rows=200, column_block=4))
    assert isinstance(plan.main.thresholds, da.Array) and isinstance(plan.main.sums.counts, da.Array)
    record = plan.record()
    assert record["passes"] == 1 and record["pilot_rows"] == 200 and record["column_block"] == 4


@pytest.mark.parametrize("d, rows", [(2500, 1024), (30, 7), (5, 1024)])
def test_the_truths_covariance_is_w_wt_and_exactly_symmetric(d, rows):
    from dist_relu.simulate import gram

    weights = np.random.default_rng(d).standard_normal((d, 40))
    covariance = gram(weights, rows)
    assert np.array_equal(covariance, covariance.T)
    np.testing.assert_allclose(covariance, weights @ weights.T, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("stored_columns", [10, 4])
def test_cut_points_make_k_indicators_a_value_counted_and_fitted_block_by_block(stored_columns):
    """K cut points per column through the graph: the (K·d)² counts are those of the K·d indicators counted
    directly, whether chunks hold whole rows or column blocks, and the block pairs' correlations are those
    of one block holding every column."""
    from dist_relu import polychoric

    rng = np.random.default_rng(5)
    n, d, k = 3000, 10, 3
    weights, bias = rng.standard_normal((d, 3)), np.maximum(0, rng.standard_normal(d))
    x = kernels.relu_gaussian_chunk(n, weights, bias, 5, 0).astype(np.float32)
    keep = rng.random(n) < 0.9
    fitted_bias, scale, _ = kernels.fit_coordinates(kernels.chunk_statistics(x))
    cuts = kernels.cut_points(x[:1000], np.maximum(0, fitted_bias), k, min_per_category=5)
    samples = da.from_array(x, chunks=(700, stored_columns))
    passes = graph.chunk_passes(samples, cuts, da.from_array(keep, chunks=700), column_chunks=(4, 4, 2))
    counts = graph.coexceedance_counts(passes, split_every=2, cuts=k)
    assert counts.chunks == ((12, 12, 6),) * 2
    indicators = (x[keep].astype(np.float64)[:, :, None] > cuts[None]).reshape(-1, d * k).astype(np.int64)
    expected = indicators.T @ indicators
    np.testing.assert_array_equal(counts.compute(), expected)
    kept = int(keep.sum())
    exceeded = np.array([np.diag(expected.reshape(d, k, d, k)[p, :, p, :]) for p in range(d)])
    h = polychoric.standardised_cuts(cuts, fitted_bias, scale)
    rho, information = graph.cut_correlations(counts, kept, exceeded, h)
    assert rho.chunks == ((4, 4, 2),) * 2
    whole = polychoric.correlation_block(expected, kept, exceeded, exceeded, h, h, np.arange(d), np.arange(d))
    np.testing.assert_array_equal(rho.compute(), whole[0])
    np.testing.assert_array_equal(information.compute(), whole[1])


def test_the_polychoric_standard_errors_of_a_blocked_fit_are_each_pairs_own():
    """Block by block (three blocks, the upper triangle mirrored), each pair's SE is cut_pair_variances' own,
    and each coordinate's own entries are those of the one-threshold standard errors."""
    from dist_relu import polychoric, uncertainty

    rng = np.random.default_rng(8)
    n, d, k = 20_000, 7, 3
    weights, bias = rng.standard_normal((d, 2)), np.maximum(0, rng.standard_normal(d))
    x = kernels.relu_gaussian_chunk(n, weights, bias, 8, 0)
    statistics = kernels.chunk_statistics(x)
    fitted_bias, scale, status = kernels.fit_coordinates(statistics)
    information = kernels.coordinate_information(statistics, fitted_bias, scale, status)
    terms = uncertainty.coordinate_terms(fitted_bias, scale, np.zeros(d), information, np.zeros(d))
    cuts = kernels.cut_points(x[:5000], np.maximum(0, fitted_bias), k)
    h = polychoric.standardised_cuts(cuts, fitted_bias, scale)
    rho = np.clip(np.corrcoef(x.T), -0.95, 0.95)  # any ρ̂ inside (−1, 1) will do for the bookkeeping
    np.fill_diagonal(rho, 1.0)
    covariance = rho * np.outer(scale, scale)
    se_rho, se_sigma = graph.cut_standard_errors(da.from_array(covariance, chunks=3), n, terms.stack(), h)
    se_rho, se_sigma = se_rho.compute(), se_sigma.compute()
    first, second = np.triu_indices(d, 1)
    var_rho, var_sigma = uncertainty.cut_pair_variances(terms, first, second, h[first], h[second], rho[first, second])
    np.testing.assert_allclose(se_rho[first, second], np.sqrt(var_rho / n), rtol=1e-12)
    np.testing.assert_allclose(se_sigma[first, second], np.sqrt(var_sigma / n), rtol=1e-12)
    np.testing.assert_array_equal(se_rho, se_rho.T)
    np.testing.assert_array_equal(np.diag(se_rho), 0.0)
    np.testing.assert_allclose(np.diag(se_sigma), 2 * scale * np.sqrt(information[:, 1, 1] / n), rtol=1e-12)
