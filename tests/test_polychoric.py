"""Polychoric correlations: tables from cumulative counts, and ρ by maximum likelihood of a pair's table."""

import shutil

import numpy as np
import pytest
from scipy import special, stats

from dist_relu import compiled, polychoric


def bivariate_normal(rng, n, rho):
    z = rng.standard_normal((n, 2))
    return z[:, 0], rho * z[:, 0] + np.sqrt(1 - rho * rho) * z[:, 1]


def categories(values, cuts):
    """The number of cut points each value exceeds."""
    return (values[:, None] > np.asarray(cuts)[None, :]).sum(axis=1)


def table_of(z_i, z_j, h_i, h_j):
    table = np.zeros((len(h_i) + 1, len(h_j) + 1), dtype=np.int64)
    np.add.at(table, (categories(z_i, h_i), categories(z_j, h_j)), 1)
    return table


def test_the_cells_of_cumulative_counts_are_the_table_counted_directly():
    rng = np.random.default_rng(0)
    x_i, x_j = np.maximum(0, rng.standard_normal((2, 5000)) + 0.3)
    cuts_i, cuts_j = [0.0, 0.4, 0.9, 1.6], [0.1, 0.7, 1.1, 1.5]  # c_1 the threshold, then the positives' quantiles
    above_i = np.column_stack([np.ones(5000, bool)] + [x_i > c for c in cuts_i])
    above_j = np.column_stack([np.ones(5000, bool)] + [x_j > c for c in cuts_j])
    exceedances = above_i.T.astype(np.int64) @ above_j.astype(np.int64)  # E_ab, with c_0 = −∞
    np.testing.assert_array_equal(polychoric.cell_counts(exceedances), table_of(x_i, x_j, cuts_i, cuts_j))
    stacked = polychoric.cell_counts(np.stack([exceedances, exceedances.T]))
    np.testing.assert_array_equal(stacked[1], table_of(x_j, x_i, cuts_j, cuts_i))


def test_one_cut_at_the_observed_margins_gives_the_tetrachoric_inversion():
    """K = 1 with the margins the exceedances show: the score's root solves Φ₂ = observed, today's estimator."""
    rng = np.random.default_rng(1)
    n, h = 50_000, np.array([[0.3], [-0.6], [1.1]])
    pairs = []
    for rho, (h_i, h_j) in zip((-0.4, 0.2, 0.75), ((h[0], h[1]), (h[1], h[2]), (h[0], h[2]))):
        pairs.append(table_of(*bivariate_normal(rng, n, rho), h_i, h_j))
    tables = np.array(pairs)
    observed_i = tables[:, 1, :].sum(axis=1) / n  # P[z_i > h] as counted
    observed_j = tables[:, :, 1].sum(axis=1) / n
    empirical_h_i, empirical_h_j = -special.ndtri(observed_i), -special.ndtri(observed_j)
    rho, _ = polychoric.fit_pairs(empirical_h_i[:, None], empirical_h_j[:, None], tables)
    tetrachoric = compiled.invert_orthant(-empirical_h_i, -empirical_h_j, tables[:, 1, 1] / n)
    np.testing.assert_allclose(rho, tetrachoric, atol=1e-10)


def test_the_information_reproduces_the_closed_forms():
    # ρ = 0, one cut at the median of both: the four cells are ¼ and φ₂(0, 0; 0) = 1/2π, so Σ P'²/P = 4/π²
    # (the tetrachoric variance π²/4n).
    rho, information = polychoric.fit_pairs([[0.0]], [[0.0]], [[[250, 250], [250, 250]]])
    assert abs(rho[0]) < 1e-12
    np.testing.assert_allclose(information, 4 / np.pi**2, rtol=1e-12)
    # One cut anywhere: the four cells' derivatives are ±φ₂(h_i, h_j; ρ), so Σ P'²/P = φ₂² Σ 1/P.
    h_i, h_j, true_rho = 0.4, -0.7, 0.5
    joint = stats.multivariate_normal([0, 0], [[1, true_rho], [true_rho, 1]])
    upper = joint.cdf([-h_i, -h_j])  # P[z_i > h_i, z_j > h_j]
    margin_i, margin_j = special.ndtr(-h_i), special.ndtr(-h_j)
    cells = np.array([[1 - margin_i - margin_j + upper, margin_j - upper], [margin_i - upper, upper]])
    rho, information = polychoric.fit_pairs([[h_i]], [[h_j]], [cells * 1e6])
    np.testing.assert_allclose(rho, true_rho, atol=1e-7)
    density = joint.pdf([h_i, h_j])
    np.testing.assert_allclose(information, density**2 * (1 / cells).sum(), rtol=1e-6)


@pytest.mark.parametrize("true_rho", [-0.5, 0.3, 0.8])
def test_the_estimates_are_unbiased_with_the_variance_their_information_gives(true_rho):
    """40 samples of 20,000 rows: the mean error is within its noise and the variance is 1/(n·information)."""
    rng = np.random.default_rng(int(100 * (true_rho + 1)))
    n, seeds = 20_000, 40
    h_i, h_j = np.array([-0.2, 0.5, 1.2]), np.array([0.1, 0.6, 1.4])
    tables = np.array([table_of(*bivariate_normal(rng, n, true_rho), h_i, h_j) for _ in range(seeds)])
    rho, information = polychoric.fit_pairs(np.tile(h_i, (seeds, 1)), np.tile(h_j, (seeds, 1)), tables)
    predicted = 1 / (n * np.median(information))
    errors = rho - true_rho
    assert abs(errors.mean()) < 4 * np.sqrt(predicted / seeds), (errors.mean(), predicted)
    # The sample variance over 40 draws has a relative spread of about √(2/39) = 0.23.
    assert 0.55 < errors.var(ddof=1) / predicted < 1.6, (errors.var(ddof=1), predicted)


def test_more_cuts_estimate_rho_better_than_the_threshold_alone():
    """Five cut points (the threshold and four above it) against the threshold alone, on the same samples."""
    rng = np.random.default_rng(7)
    n, seeds, true_rho = 20_000, 40, 0.4
    one, five = np.array([0.0]), np.array([0.0, 0.35, 0.7, 1.1, 1.6])
    draws = [bivariate_normal(rng, n, true_rho) for _ in range(seeds)]
    squared = {}
    for name, h in (("one", one), ("five", five)):
        tables = np.array([table_of(z_i, z_j, h, h) for z_i, z_j in draws])
        rho, information = polychoric.fit_pairs(np.tile(h, (seeds, 1)), np.tile(h, (seeds, 1)), tables)
        squared[name] = (np.mean((rho - true_rho) ** 2), 1 / (n * information.mean()))
    observed, predicted = squared["five"][0] / squared["one"][0], squared["five"][1] / squared["one"][1]
    assert predicted < 0.6  # the information the four upper cuts add
    assert observed < 0.75, squared


def test_a_pair_without_a_finite_cut_says_nothing_and_a_mismatch_is_refused():
    rho, information = polychoric.fit_pairs([[np.inf]], [[0.0]], [[[10, 10], [0, 0]]])
    assert rho[0] == 0 and information[0] == 0
    with pytest.raises(ValueError, match="do not match"):
        polychoric.fit_pairs([[0.0, 1.0]], [[0.0, 1.0]], np.zeros((1, 2, 2)))


def test_cut_points_are_zero_below_a_positive_threshold_the_threshold_then_quantiles_above_it_and_fewer_where_thin():
    from dist_relu import kernels

    rng = np.random.default_rng(3)
    rows = 4000
    values = np.column_stack([
        np.maximum(0, rng.standard_normal(rows)),  # half above 0: five cut points
        np.maximum(0, rng.standard_normal(rows) - 2.9),  # about 7 of 4000 above 0: the threshold alone
        np.round(np.maximum(0, rng.standard_normal(rows)), 0),  # values 0, 1, 2, 3, …: ties
        np.maximum(0, rng.standard_normal(rows) + 0.5),  # a positive threshold: 0 below it
        np.maximum(0, rng.standard_normal(rows) + 0.5),  # the same, with too few values in (0, 0.003]
    ])
    values[5, 0] = np.nan  # left out
    thresholds = np.array([0.0, 0.0, 0.0, 0.5, 0.003])
    points = kernels.cut_points(values, thresholds, 5)
    assert points.shape == (5, 5)
    np.testing.assert_array_equal(points[[0, 1, 2, 4], 0], thresholds[[0, 1, 2, 4]])
    above = np.sort(values[:, 0][values[:, 0] > 0])
    np.testing.assert_array_equal(points[0, 1:], above[np.floor(np.arange(1, 5) / 5 * (above.size - 1)).astype(int)])
    assert np.all(np.diff(points[0]) > 0) and np.all(np.diff(points[3]) > 0) and np.all(np.diff(points[4]) > 0)
    np.testing.assert_array_equal(points[1], [0.0] + [np.inf] * 4)
    np.testing.assert_array_equal(points[2], [0.0, 1.0, 2.0, np.inf, np.inf])  # the tied quantiles, once each
    # 0, the threshold, and three quantiles of the values above the threshold.
    above = np.sort(values[:, 3][values[:, 3] > 0.5])
    quantiles = above[np.floor(np.arange(1, 4) / 4 * (above.size - 1)).astype(int)]
    np.testing.assert_array_equal(points[3], [0.0, 0.5, *quantiles])
    assert np.count_nonzero((values[:, 4] > 0) & (values[:, 4] <= 0.003)) < kernels.CUT_MIN_PER_CATEGORY
    np.testing.assert_array_equal(kernels.finite_cuts(points), [5, 1, 3, 5, 5])
    # One cut point is the threshold alone, whatever lies below it.
    np.testing.assert_array_equal(kernels.cut_points(values, thresholds, 1), thresholds[:, None])


def test_a_block_of_relu_samples_gets_the_correlations_of_the_truth_closer_with_cuts():
    """ReLU samples of a low-rank truth: K = 5 cut points against the threshold alone, both against the truth."""
    from dist_relu import kernels, simulate

    d, n, k = 8, 100_000, 5
    squared = {"one": [], "cuts": []}
    for seed in range(4):
        rng = np.random.default_rng(seed)
        weights, bias = rng.standard_normal((d, 3)), np.maximum(0, rng.standard_normal(d))
        x = kernels.relu_gaussian_chunk(n, weights, bias, seed, 0)
        fitted_bias, scale, _ = kernels.fit_coordinates(kernels.chunk_statistics(x))
        thresholds = np.maximum(0, fitted_bias)
        index = np.arange(d)
        truth = simulate.gram(weights)
        truth = truth / np.sqrt(np.outer(np.diag(truth), np.diag(truth)))
        upper = np.triu_indices(d, 1)
        single = compiled.chunk_pass(x, thresholds)
        counts = compiled.popcount_counts(single.indicators, single.indicators)
        margins = kernels.tetrachoric_margins(np.diag(counts), n)
        one = compiled.covariance_block(counts, n, margins, margins, np.ones(d), np.ones(d), index, index)
        cuts = kernels.cut_points(x[:20_000], thresholds, k)
        many = compiled.chunk_pass(x, cuts)
        counts = compiled.popcount_counts(many.indicators, many.indicators).reshape(d * k, d * k)
        exceeded = np.array([np.diag(counts.reshape(d, k, d, k)[p, :, p, :]) for p in range(d)])
        h = polychoric.standardised_cuts(cuts, fitted_bias, scale)
        rho, information = polychoric.correlation_block(counts, n, exceeded, exceeded, h, h, index, index)
        np.testing.assert_array_equal(rho, rho.T)
        assert np.all(np.diag(rho) == 1) and np.all(information[upper] > 0)
        # Each estimate within 5 standard errors of the truth, by its own information (margins known), where
        # the truth is far enough from ±1 for the estimate to be nearly normal.
        inside = np.abs(truth[upper]) < 0.95
        z = (rho[upper] - truth[upper])[inside] * np.sqrt(n * information[upper][inside])
        assert inside.sum() > 10 and np.max(np.abs(z)) < 5, z
        squared["one"].append((one[upper] - truth[upper]) ** 2)
        squared["cuts"].append((rho[upper] - truth[upper]) ** 2)
    ratio = np.mean(squared["cuts"]) / np.mean(squared["one"])
    assert ratio < 0.8, ratio  # about 0.45-0.7 in the studies; 1 would mean the cuts add nothing


# --------------------------------------------------------------------------
# The fit with cut points
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_store(tmp_path_factory):
    import dist_relu

    rng = np.random.default_rng(1)
    weights, bias = rng.standard_normal((7, 3)), np.maximum(0, rng.standard_normal(7))
    path = tmp_path_factory.mktemp("cuts") / "samples.zarr"
    dist_relu.simulate_to_zarr(path, weights, bias, 60_000, chunk_rows=10_000, seed=1)
    return path


def test_a_fit_with_cut_points_is_the_kernels_on_the_whole_data(relu_store):
    """Pilot cut points, K bits a value in blocks of 3 columns, tables fitted per block pair: the numbers the
    kernels give on all the samples at once; its counts at the thresholds are a one-cut fit's."""
    import zarr

    import dist_relu
    from dist_relu import kernels, uncertainty

    k = 3
    fit = dist_relu.ReLUGaussian(cuts=k, column_block=3).fit(str(relu_store))
    one = dist_relu.ReLUGaussian(column_block=3).fit(str(relu_store))
    x = zarr.open_array(str(relu_store), path="samples", mode="r")[:]
    n, d = x.shape
    pilot = fit.settings_["pilot_rows"]
    assert fit.settings_["cuts"] == k and "cuts" not in one.settings_
    np.testing.assert_array_equal(fit.cut_points_, kernels.cut_points(x[:pilot], fit.thresholds_, k))
    np.testing.assert_array_equal(fit.thresholds_, one.thresholds_)
    below = fit.cut_points_[:, 0] < fit.thresholds_
    assert below.any() and not below.all()  # 0 is the first cut point below a positive threshold
    np.testing.assert_array_equal(fit.counts_, one.counts_)  # the thresholds' counts, among the cut points'
    many = compiled.chunk_pass(x, fit.cut_points_)
    counts = compiled.popcount_counts(many.indicators, many.indicators)
    exceeded = np.diag(counts).reshape(d, k)
    h = polychoric.standardised_cuts(fit.cut_points_, fit.bias_, fit.scale_)
    rho, _ = polychoric.correlation_block(counts, n, exceeded, exceeded, h, h, np.arange(d), np.arange(d))
    np.testing.assert_allclose(fit.covariance_, rho * np.outer(fit.scale_, fit.scale_), rtol=1e-12, atol=1e-15)
    assert not np.allclose(fit.covariance_, one.covariance_, rtol=1e-3)  # another estimator
    # The standard errors are the polychoric estimator's: each pair's own, by the delta method.
    information = kernels.coordinate_information(fit.statistics_, fit.bias_, fit.scale_, fit.status_)
    terms = uncertainty.coordinate_terms(fit.bias_, fit.scale_, np.zeros(d), information, np.zeros(d),
                                         exponents=fit.statistics_exponent_)
    first, second = np.triu_indices(d, 1)
    var_rho, _ = uncertainty.cut_pair_variances(terms, first, second, h[first], h[second], rho[first, second])
    np.testing.assert_allclose(fit.correlation_se_[first, second], np.sqrt(var_rho / n), rtol=1e-9)
    assert np.all(fit.correlation_se_[first, second] < one.correlation_se_[first, second])


def test_two_passes_take_the_cut_points_of_the_first_rows_at_the_first_passs_thresholds(relu_store):
    import zarr

    import dist_relu
    from dist_relu import kernels

    fit = dist_relu.ReLUGaussian(cuts=3, passes=2).fit(str(relu_store))
    x = zarr.open_array(str(relu_store), path="samples", mode="r")[:]
    n, d = x.shape
    np.testing.assert_array_equal(fit.thresholds_, np.maximum(0, fit.bias_))  # the first pass's, of all the rows
    rows = kernels.default_pilot_rows(n, d * x.dtype.itemsize)
    np.testing.assert_array_equal(fit.cut_points_, kernels.cut_points(x[:rows], fit.thresholds_, 3))
    many = compiled.chunk_pass(x, fit.cut_points_)
    counts = compiled.popcount_counts(many.indicators, many.indicators)
    h = polychoric.standardised_cuts(fit.cut_points_, fit.bias_, fit.scale_)
    exceeded = np.diag(counts).reshape(d, 3)
    rho, _ = polychoric.correlation_block(counts, n, exceeded, exceeded, h, h, np.arange(d), np.arange(d))
    np.testing.assert_allclose(fit.covariance_, rho * np.outer(fit.scale_, fit.scale_), rtol=1e-12, atol=1e-15)


def test_cut_points_where_they_are_not_built_are_refused_and_nothing_is_written(relu_store, tmp_path):
    import dist_relu

    with pytest.raises(ValueError, match="cuts 3 takes the margins from a likelihood"):
        dist_relu.ReLUGaussian(cuts=3, method="sgd").fit(str(relu_store))
    with pytest.raises(ValueError, match="cuts"):
        dist_relu.ReLUGaussian(cuts=9).fit(str(relu_store))
    earlier = tmp_path / "earlier.zarr"
    dist_relu.fit_to_zarr(str(relu_store), str(earlier))  # one cut
    before = conftest_digest(earlier)
    with pytest.raises(ValueError, match="needs the cut points"):
        dist_relu.fit_to_zarr(str(relu_store), str(tmp_path / "given.zarr"), thresholds_from=str(earlier), cuts=3)
    assert [p.name for p in tmp_path.iterdir()] == ["earlier.zarr"]
    assert conftest_digest(earlier) == before


def test_updates_and_merges_with_cut_points_count_exactly_what_one_fit_of_all_the_samples_counts(relu_store, tmp_path):
    """A fit of the first half, updated with the second, or merged with a fit of the second at its cut points:
    the counts of every cut point are those of one fit of all the rows at the same cut points, and Σ̂ agrees."""
    import zarr

    import dist_relu

    x = zarr.open_array(str(relu_store), path="samples", mode="r")[:]
    half = len(x) // 2
    first, second = tmp_path / "first.zarr", tmp_path / "second.zarr"
    dist_relu.fit_to_zarr(x[:half], str(first), cuts=3)
    updated = dist_relu.fit_to_zarr(x[half:], str(tmp_path / "updated.zarr"), update=str(first))
    dist_relu.fit_to_zarr(x[half:], str(second), thresholds_from=str(first), cuts=3)
    dist_relu.merge_fits([str(first), str(second)], str(tmp_path / "merged.zarr"))
    dist_relu.fit_to_zarr(x, str(tmp_path / "whole.zarr"), thresholds_from=str(first), cuts=3)
    groups = {name: zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")
              for name in ("first", "updated", "merged", "whole")}
    assert updated["cuts"] == 3 and all(group.attrs["cuts"] == 3 for group in groups.values())
    for name in ("updated", "merged"):
        group, whole = groups[name], groups["whole"]
        assert group.attrs["n_samples"] == whole.attrs["n_samples"] == len(x)
        np.testing.assert_array_equal(group["cut_points"][:], groups["first"]["cut_points"][:])
        np.testing.assert_array_equal(group["cut_counts"][:], whole["cut_counts"][:])
        np.testing.assert_array_equal(group["counts"][:], whole["counts"][:])
        np.testing.assert_allclose(group["covariance"][:], whole["covariance"][:], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(group["correlation_se"][:], whole["correlation_se"][:], rtol=1e-9, atol=1e-12)
    # Fits at other cut points do not merge.
    other = tmp_path / "other.zarr"
    dist_relu.fit_to_zarr(x[half:], str(other), cuts=3)
    with pytest.raises(dist_relu.io.InputError, match="different"):
        dist_relu.merge_fits([str(first), str(other)], str(tmp_path / "refused.zarr"))
    assert not (tmp_path / "refused.zarr").exists()
    # A fit whose thresholds are no longer among its cut points would give counts at other points: refused.
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(first, damaged)
    cut_points = zarr.open_array(str(damaged), path="cut_points", mode="r+")
    cut_points[...] = cut_points[...] + 1e-3
    before = conftest_digest(damaged)
    for attempt in (lambda out: dist_relu.merge_fits([str(damaged), str(second)], out),
                    lambda out: dist_relu.fit_to_zarr(x[half:], out, update=str(damaged))):
        with pytest.raises(dist_relu.io.InputError, match="not among its cut points"):
            attempt(str(tmp_path / "refused.zarr"))
        assert not (tmp_path / "refused.zarr").exists()
    assert conftest_digest(damaged) == before


def conftest_digest(root):
    from .conftest import digest

    return digest(root)


def test_a_jackknife_with_cut_points_is_the_spread_of_fits_of_the_data_less_each_group(relu_store, tmp_path):
    """Each replicate is the fit of the samples without one group, at the fit's own thresholds and cut points."""
    import zarr

    import dist_relu
    from dist_relu.pipeline import group_bounds

    groups, k = 4, 3
    whole = tmp_path / "whole.zarr"
    dist_relu.fit_to_zarr(str(relu_store), str(whole), cuts=k, jackknife_groups=groups, column_block=3)
    fit = zarr.open_group(str(whole), mode="r")
    x = zarr.open_array(str(relu_store), path="samples", mode="r")[:]
    assert fit["group_counts"].shape == (groups, k * 7, k * 7)
    np.testing.assert_array_equal(fit["group_counts"][:].sum(axis=0), fit["cut_counts"][:])
    bounds = group_bounds(len(x), groups)
    replicates = []
    for g in range(groups):
        less = np.concatenate([x[:bounds[g]], x[bounds[g + 1]:]])
        out = tmp_path / f"less-{g}.zarr"
        dist_relu.fit_to_zarr(less, str(out), thresholds_from=str(whole), cuts=k)
        refit = zarr.open_group(str(out), mode="r")
        np.testing.assert_array_equal(refit["cut_counts"][:], fit["cut_counts"][:] - fit["group_counts"][g])
        covariance = refit["covariance"][:]
        scale = np.sqrt(np.diag(covariance))
        replicates.append(np.stack([covariance / np.outer(scale, scale), covariance]))
    replicates = np.array(replicates)
    expected = np.sqrt((groups - 1) / groups * ((replicates - replicates.mean(axis=0)) ** 2).sum(axis=0))
    off = ~np.eye(7, dtype=bool)
    np.testing.assert_allclose(fit["jackknife_correlation_se"][:][off], expected[0][off], rtol=1e-6)
    np.testing.assert_allclose(fit["jackknife_covariance_se"][:], expected[1], rtol=1e-6, atol=1e-15)


def test_a_coordinate_the_pilot_gives_fewer_cut_points_is_counted_and_said(tmp_path):
    import zarr
    from click.testing import CliRunner

    import dist_relu
    from dist_relu import kernels
    from dist_relu.cli import main

    store, out = tmp_path / "samples.zarr", tmp_path / "fit.zarr"
    # The last coordinate is positive in about 2 of 10⁴ rows: too few for more than its threshold.
    dist_relu.simulate_to_zarr(store, np.eye(4), np.array([0.0, 0.5, 0.0, -3.5]), 40_000, chunk_rows=10_000, seed=2)
    result = CliRunner().invoke(main, ["fit", str(store), "--out", str(out), "--cuts", "3"])
    assert result.exit_code == 0, result.output
    fit = zarr.open_group(str(out), mode="r")
    finite = kernels.finite_cuts(fit["cut_points"][:])
    assert finite[-1] == 1 and np.all(finite[:-1] == 3)
    assert fit.attrs["cuts_fewer"] == 1
    assert "3 cut points, fewer for 1 coordinate)" in result.output
