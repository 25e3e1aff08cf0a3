"""The compiled kernels against their numpy definitions: the fused chunk pass, both count paths, Φ₂ and its inversion."""

import numpy as np
import pytest
import scipy.special

from dist_relu import kernels, compiled


def reference_counts(x_i, x_j, t_i, t_j):
    a, b = (x_i > t_i).astype(np.int64), (x_j > t_j).astype(np.int64)
    return a.T @ b


def both_counts(x_i, x_j, t_i, t_j, same=False):
    pass_i = compiled.chunk_pass(x_i, t_i)
    pass_j = pass_i if same else compiled.chunk_pass(x_j, t_j)
    indicators_j = pass_i.indicators if same else pass_j.indicators
    return {kernel: compiled.count_block(pass_i.indicators, indicators_j, pass_i.rows, kernel)
            for kernel in ("popcount", "gemm")}


BLOCKS = {
    # name: (rows, d_i, d_j, fill) with fill the fraction of values above the threshold
    "random": (1000, 7, 5, 0.5),
    "all zeros": (640, 4, 3, 0.0),
    "all ones": (640, 4, 3, 1.0),
    "ragged rows": (1001, 6, 6, 0.3),
    "fewer rows than a word": (37, 3, 2, 0.6),
    "one row": (1, 2, 2, 1.0),
    "column blocks of size 1": (777, 1, 1, 0.4),
    "one by many": (130, 1, 9, 0.7),
    "sparse": (5000, 8, 8, 0.01),
    # popcount counts 4 × 4 tiles: whole ones, and ones cut by the last rows or columns, off and on the diagonal
    "tiles cut at both edges": (300, 13, 10, 0.5),
    "tiles cut on the diagonal": (200, 11, 11, 0.5),
}


@pytest.mark.parametrize("rows", [65_535, 65_536])
def test_counts_come_in_the_narrowest_type_that_holds_them(rows):
    # A chunk's counts reach its number of rows, and no more: uint16 holds them up to 65,535 rows.
    x = np.ones((rows, 2))
    for kernel, got in both_counts(x, x, np.zeros(2), np.zeros(2), same=True).items():
        assert got.dtype == (np.uint16 if rows < 2**16 else np.uint32), kernel
        np.testing.assert_array_equal(got, rows)
    assert kernels.count_dtype(2**32 - 1) == np.uint32 and kernels.count_dtype(2**32) == np.int64


@pytest.mark.parametrize("name", BLOCKS)
def test_both_count_paths_equal_the_integer_gram_of_the_indicators(name):
    rows, d_i, d_j, fill = BLOCKS[name]
    rng = np.random.default_rng(len(name))
    x_i = (rng.random((rows, d_i)) < fill) * rng.uniform(1, 2, (rows, d_i))
    x_j = (rng.random((rows, d_j)) < fill) * rng.uniform(1, 2, (rows, d_j))
    t_i, t_j = np.full(d_i, 0.5), np.full(d_j, 0.5)
    expected = reference_counts(x_i, x_j, t_i, t_j)
    for kernel, got in both_counts(x_i, x_j, t_i, t_j).items():
        assert got.dtype == kernels.count_dtype(rows)
        np.testing.assert_array_equal(got, expected, err_msg=kernel)
    if d_i == d_j:
        # The diagonal block: the same indicators on both sides, counted as a triangle and mirrored.
        for kernel, got in both_counts(x_i, x_i, t_i, t_i, same=True).items():
            np.testing.assert_array_equal(got, reference_counts(x_i, x_i, t_i, t_i), err_msg=kernel)


def test_bits_are_packed_little_endian_row_by_row_and_padding_is_zero():
    x = np.zeros((70, 2))
    x[[0, 3, 64, 69], 0] = 1.0
    x[:, 1] = 1.0
    result = compiled.chunk_pass(x, np.zeros(2))
    assert result.indicators.shape == (2, 2) and result.rows == 70
    assert result.indicators[0, 0] == (1 << 0) | (1 << 3) and result.indicators[0, 1] == (1 << 0) | (1 << 5)
    assert result.indicators[1, 0] == 2**64 - 1 and result.indicators[1, 1] == 2**6 - 1
    np.testing.assert_array_equal(compiled.unpack_indicators(result.indicators, 70), (x > 0).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_pass_equals_the_numpy_definitions(dtype):
    rng = np.random.default_rng(3)
    x = np.maximum(0, rng.standard_normal((3001, 9)) + np.linspace(-1, 1, 9)).astype(dtype)
    x[5, 2], x[9, 4], x[11, 4], x[12, 7], x[40, 0] = np.nan, np.inf, -np.inf, -0.5, -3.0
    thresholds = np.linspace(0, 1, 9)
    keep = rng.random(3001) < 0.8
    for mask in (None, keep):
        result = compiled.chunk_pass(x, thresholds, mask)
        np.testing.assert_array_equal(result.problems, kernels.chunk_value_problems(x, mask))
        expected = kernels.chunk_statistics(x, mask)
        finite = np.isfinite(expected).all(axis=1)
        np.testing.assert_array_equal(result.statistics[:, :2], expected[:, :2])
        # Sums in another order: equal to rounding, and inf where an inf was summed.
        np.testing.assert_allclose(result.statistics[finite], expected[finite], rtol=1e-12)
        assert np.isinf(result.statistics[~finite, 2:]).all()
        moments = kernels.positive_moments(x, mask)
        np.testing.assert_allclose(result.moments[finite], moments[finite], rtol=1e-12)
        np.testing.assert_allclose(kernels.positive_moments(np.arange(-1.0, 3.0)[:, None]), [[9.0, 17.0]])
        np.testing.assert_array_equal(compiled.unpack_indicators(result.indicators, result.rows),
                                      kernels.exceedance_indicators(x, thresholds, mask))


def test_a_column_slice_of_a_chunk_is_read_as_it_is_laid_out():
    x = np.asfortranarray(np.abs(np.random.default_rng(0).standard_normal((500, 6))))
    for view in (x, x[:, 1:4], x[::2]):
        result = compiled.chunk_pass(view, np.full(view.shape[1], 0.7))
        np.testing.assert_allclose(result.statistics, kernels.chunk_statistics(view), rtol=1e-12)


def test_a_block_of_columns_is_passed_in_place_as_its_copy_would_be():
    rng = np.random.default_rng(4)
    x = np.maximum(0, rng.standard_normal((1000, 10))).astype(np.float32)
    keep = rng.random(1000) < 0.9
    thresholds = np.linspace(0.1, 1.0, 4)
    for layout in (x, np.asfortranarray(x)):
        for first in (0, 3, 6):
            got = compiled.chunk_pass(layout, thresholds, keep, first_column=first)
            expected = compiled.chunk_pass(np.ascontiguousarray(x[:, first:first + 4]), thresholds, keep)
            for name in ("statistics", "problems", "indicators"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    with pytest.raises(ValueError, match="not in a chunk"):
        compiled.chunk_pass(x, thresholds, first_column=7)


def test_the_automatic_choice_names_a_kernel_and_is_cached():
    choice = compiled.choose_count_kernel(16, 16, 4096)
    assert choice in ("popcount", "gemm")
    assert compiled.choose_count_kernel(16, 16, 4096) == choice
    assert compiled.choose_count_kernel.cache_info().hits >= 1


def test_the_compiled_inversion_gives_the_numpy_inversion():
    rng = np.random.default_rng(5)
    a_i, a_j = rng.normal(0, 1, 3000), rng.normal(0, 1, 3000)
    cdf_i, cdf_j = kernels.special.ndtr(a_i), kernels.special.ndtr(a_j)
    low, high = np.maximum(0, cdf_i + cdf_j - 1), np.minimum(cdf_i, cdf_j)
    p = low + rng.uniform(-0.05, 1.05, 3000) * (high - low)  # a few outside the attainable range
    a_i[:5], a_j[5:10] = np.inf, -np.inf
    expected = kernels.invert_orthant(a_i, a_j, p)
    got = compiled.invert_orthant(a_i, a_j, p)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert (got[:10] == 0).all() and (got == 1).any() and (got == -1).any()
    # At a = 0, the paper's closed form (Lemma 2).
    p0 = rng.uniform(0.01, 0.49, 500)
    np.testing.assert_allclose(compiled.invert_orthant(0.0, 0.0, p0), np.cos(np.pi - 2 * np.pi * p0), atol=1e-14)


def test_the_compiled_covariance_block_equals_the_reference():
    rng = np.random.default_rng(6)
    c = 40
    counts = rng.integers(20_000, 45_000, (c, c))
    counts = np.minimum(counts, counts.T)
    a = rng.normal(0, 0.4, c)
    scale = rng.uniform(0.5, 2, c)
    arguments = (counts, 100_000, a, a, scale, scale, np.arange(c), np.arange(c))
    np.testing.assert_allclose(compiled.covariance_block(*arguments), kernels.covariance_block(*arguments),
                               rtol=1e-12, atol=1e-13)


def test_each_short_gauss_legendre_rule_gives_the_reference_increment_up_to_its_limit():
    a = np.linspace(-compiled._SHORT_RULE_MAX_MARGIN, compiled._SHORT_RULE_MAX_MARGIN, 25)
    for (limit, _), (nodes, weights) in zip(compiled._SHORT_RULES, compiled._RULES):
        a_i, a_j, theta = np.meshgrid(a, a, np.linspace(-limit, limit, 21), indexing="ij")

        def increment(nodes, weights):
            s = theta[..., None] * (0.5 * (nodes + 1))
            return theta * (kernels._orthant_integrand(a_i[..., None], a_j[..., None], s) @ weights) / (4 * np.pi)

        np.testing.assert_allclose(increment(nodes, weights), increment(kernels.GL_NODES, kernels.GL_WEIGHTS),
                                   rtol=0, atol=1e-15)


def test_the_compiled_orthant_probability_equals_scipys_bivariate_normal():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(7)
    # Margins of moderate size (the short rules) and beyond (the 32 nodes), correlations up to |ρ| = 0.999.
    a_i, a_j = rng.uniform(-5, 5, 300), rng.uniform(-5, 5, 300)
    a_i[:150], a_j[:150] = a_i[:150] * 0.6, a_j[:150] * 0.6
    rho = rng.uniform(-0.999, 0.999, 300)
    expected = [multivariate_normal([0, 0], [[1, r], [r, 1]]).cdf([x, y]) for x, y, r in zip(a_i, a_j, rho)]
    got = compiled.orthant_probability(a_i, a_j, rho)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got, kernels.orthant_probability(a_i, a_j, rho), rtol=0, atol=1e-13)


def test_the_compiled_orthant_probability_at_its_limits_and_as_the_inversions_inverse():
    a = np.array([0.3, -1.2, 2.0])
    cdf = kernels.special.ndtr(a)
    np.testing.assert_allclose(compiled.orthant_probability(a, a[::-1], 1.0), np.minimum(cdf, cdf[::-1]), atol=1e-15)
    np.testing.assert_allclose(compiled.orthant_probability(a, a[::-1], -1.0),
                               np.maximum(0, cdf + cdf[::-1] - 1), atol=1e-15)
    # A margin of ±inf: a certain or an impossible event, whatever the correlation.
    np.testing.assert_allclose(compiled.orthant_probability(np.inf, a, 0.7), cdf, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(compiled.orthant_probability(a, -np.inf, -0.7), 0.0)
    assert np.isnan(compiled.orthant_probability(np.nan, 0.0, 0.5))
    np.testing.assert_allclose(compiled.orthant_probability(0.0, 0.0, np.sin([0.2, -0.7])),
                               0.25 + np.array([0.2, -0.7]) / (2 * np.pi), atol=1e-15)
    rng = np.random.default_rng(8)
    a_i, a_j, rho = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000), rng.uniform(-0.95, 0.95, 2000)
    p = compiled.orthant_probability(a_i, a_j, rho)
    np.testing.assert_allclose(compiled.orthant_probability(a_i, a_j, compiled.invert_orthant(a_i, a_j, p)), p,
                               rtol=0, atol=1e-12)


def test_orthants_of_one_correlation_are_each_pairs_own():
    # One quadrature's sines serve pairs of the same ρ; each value is orthant_probability's to rounding, with
    # margins of ±inf and NaN, ρ = ±1, and margins beyond 3 (where the reference's rule is taken for all).
    rng = np.random.default_rng(4)
    out = np.empty(3)
    for trial in range(3000):
        a_i, a_j = rng.normal(0, 2, 3), rng.normal(0, 2, 3)
        rho = [rng.uniform(-1, 1), 1.0, -1.0, 0.0, 0.9999][trial % 5]
        if trial % 7 == 0:
            a_i[trial % 3] = [np.inf, -np.inf, np.nan][trial % 3]
        cdf_i, cdf_j = (0.5 * scipy.special.erfc(-a / np.sqrt(2)) for a in (a_i, a_j))
        compiled.orthant_same_correlation(a_i, a_j, cdf_i, cdf_j, rho, *compiled.ORTHANT_RULES, out, np.empty(3))
        np.testing.assert_allclose(out, compiled.orthant_probability(a_i, a_j, rho), rtol=0, atol=4e-16)


def test_cut_points_give_each_value_one_bit_per_cut_and_their_counts_give_each_pairs_table():
    """K cut points per column: bit j·K + a is x_j > c_ja; the counts of those bits make every pair's table."""
    from dist_relu import polychoric

    rng = np.random.default_rng(11)
    rows, d, k = 1000, 5, 3
    x = np.maximum(0, rng.standard_normal((rows, d)) + 0.2).astype(np.float32)
    keep = rng.random(rows) < 0.9
    cuts = np.sort(rng.uniform(0, 1.2, (d, k)), axis=1)
    cuts[:, 0] = [0.0, 0.1, 0.2, 0.0, 0.3]  # the first cut is the threshold
    result = compiled.chunk_pass(x, cuts, keep, first_column=0)
    bits = compiled.unpack_indicators(result.indicators, result.rows)  # (rows kept, K·d)
    kept = x[keep].astype(np.float64)
    expected = (kept[:, :, None] > cuts[None]).reshape(kept.shape[0], d * k)
    np.testing.assert_array_equal(bits, expected)
    # The same statistics as one cut per column, and the first cut's bits are that pass's indicators.
    single = compiled.chunk_pass(x, cuts[:, 0], keep)
    np.testing.assert_array_equal(result.statistics, single.statistics)
    np.testing.assert_array_equal(result.indicators[::k], single.indicators)
    # Counts of the K·d indicators, with n and the margins, are the cumulative exceedances of every pair.
    counts = compiled.popcount_counts(result.indicators, result.indicators).reshape(d, k, d, k)
    n = result.rows
    for i, j in ((0, 1), (2, 4), (3, 3)):
        exceedances = np.empty((k + 1, k + 1), dtype=np.int64)
        exceedances[0, 0] = n
        exceedances[1:, 0] = np.diagonal(counts[i, :, i, :])
        exceedances[0, 1:] = np.diagonal(counts[j, :, j, :])
        exceedances[1:, 1:] = counts[i, :, j, :]
        table = np.zeros((k + 1, k + 1), dtype=np.int64)
        np.add.at(table, ((kept[:, i, None] > cuts[i]).sum(1), (kept[:, j, None] > cuts[j]).sum(1)), 1)
        np.testing.assert_array_equal(polychoric.cell_counts(exceedances), table)
    with pytest.raises(ValueError, match=r"\(d,\) or \(d, K\)"):
        compiled.chunk_pass(x, np.zeros((d, k, 1)))
