"""The delete-a-group jackknife: each group of rows keeps its own sums, and the errors are the spread of refits."""

import json

import dask.array as da
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dist_relu
from dist_relu import budget, io, kernels, uncertainty
from dist_relu.cli import main
from dist_relu.pipeline import group_bounds, split_at_groups

from .conftest import counting_chunk_reads, digest

JACKKNIFE_ARRAYS = ("jackknife_covariance_se", "jackknife_correlation_se", "jackknife_bias_se", "jackknife_scale_se")


def open_group(path):
    return zarr.open_group(str(path), mode="r")


def test_the_jackknife_variance_of_a_mean_is_the_variance_of_the_group_means():
    # Leaving out group g of G equal groups moves the mean by −(m_g − m̄)/(G − 1): the jackknife
    # variance is then exactly var(m_g)/G, the error of a mean of G group means.
    rng = np.random.default_rng(0)
    values = rng.standard_normal((12, 500)) * 3 + 1
    group_means = values.mean(axis=1)
    left_out = (values.sum() - values.sum(axis=1)) / (values.size - values.shape[1])
    np.testing.assert_allclose(uncertainty.jackknife_variance(left_out), group_means.var(ddof=1) / 12, rtol=1e-12)


def test_groups_are_consecutive_rows_set_by_the_rows_alone():
    assert group_bounds(10, 3) == [0, 3, 6, 10]
    with pytest.raises(ValueError, match="at least as many rows"):
        group_bounds(4, 5)
    x = da.zeros((10, 2), chunks=(4, 2))
    split, groups = split_at_groups(x, 3)
    assert split.chunks[0] == (3, 1, 2, 2, 2) and groups == (0, 1, 1, 2, 2)


@pytest.mark.parametrize("chunk_rows, column_block", [(4_096, 3), (30_001, "auto"), (1_000, 7)])
def test_each_groups_sums_are_those_of_its_rows_whatever_the_chunking(tmp_path, chunk_rows, column_block):
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((7, 7)) / np.sqrt(7)
    bias = np.array([0.5, 0.0, -0.5, 1.0, -1.5, 0.3, 0.1])
    x = np.maximum(0, rng.standard_normal((30_001, 7)) @ weights.T + bias).astype(np.float32)
    source = tmp_path / "x.zarr"
    zarr.open_group(str(source), mode="w").create_array("samples", data=x, chunks=(chunk_rows, 7))
    before = digest(source)
    with counting_chunk_reads(zarr.storage.LocalStore) as reads:
        dist_relu.fit_to_zarr(source, tmp_path / "fit.zarr", jackknife_groups=7, column_block=column_block)
    # Chunks that hold rows of two groups are split in the graph, not read twice.
    assert len(reads) == -(-30_001 // chunk_rows) and set(reads.values()) == {1}
    assert digest(source) == before
    fit = open_group(tmp_path / "fit.zarr")
    thresholds = fit["thresholds"][:]
    bounds = group_bounds(30_001, 7)
    for g in range(7):
        rows = x[bounds[g]:bounds[g + 1]].astype(np.float64)
        exceeds = (rows > thresholds).astype(np.int64)
        np.testing.assert_array_equal(fit["group_counts"][g], exceeds.T @ exceeds)
        expected = kernels.chunk_statistics(rows)
        np.testing.assert_array_equal(fit["group_statistics"][g][:, :2], expected[:, :2])
        np.testing.assert_allclose(fit["group_statistics"][g], expected, rtol=1e-12)
    np.testing.assert_array_equal(fit["group_counts"][:].sum(axis=0), fit["counts"][:])
    np.testing.assert_allclose(fit["group_statistics"][:].sum(axis=0)[:, 2:],
                               np.stack([fit["sum_positive"][:], fit["sum_sq_positive"][:]], axis=1), rtol=1e-12)


@pytest.mark.parametrize("method, inversion, bias, cuts", [("censored", "tetrachoric", "gaussian", 1),
                                                           ("truncated", "model", "clipped", 1),
                                                           ("censored", "tetrachoric", "clipped", 3)])
def test_the_jackknifes_errors_agree_with_the_analytic_ones(simulated, method, inversion, bias, cuts):
    # At n = 10⁵ the two agree within 15%: each jackknife variance is about the truth times χ²(G − 1)/(G − 1),
    # and the ratio is the root of the mean ratio of variances over the 465 entries (30 coordinates). With cut
    # points, the analytic errors are the two-step polychoric estimator's.
    path, _, _ = simulated(100_000, 30, seed=5, bias=bias)
    fit = dist_relu.ReLUGaussian(jackknife_groups=20, method=method, inversion=inversion, cuts=cuts).fit(path)
    ratios = fit.settings_["jackknife"]
    assert ratios["groups"] == 20
    for name in ("covariance", "correlation", "bias", "scale"):
        assert 0.85 < ratios[f"{name}_ratio"] < 1.15, (name, ratios)
    # Entry by entry, as they should if the jackknife is right: a few times the χ² spread, no more.
    compared = np.isfinite(fit.covariance_se_) & np.isfinite(fit.jackknife_covariance_se_)
    spread = np.log(fit.jackknife_covariance_se_[compared] / fit.covariance_se_[compared])
    assert np.abs(spread).max() < 1.0 and spread.std() < 0.3
    assert fit.jackknife_bias_se_.shape == (30,) and np.all(fit.jackknife_bias_se_ > 0)


def test_without_groups_a_fit_keeps_no_group_state(relu_data):
    fit = dist_relu.ReLUGaussian().fit(relu_data)
    assert fit.jackknife_covariance_se_ is None and "jackknife" not in fit.settings_
    assert not {"group_counts", "group_statistics", *JACKKNIFE_ARRAYS} & set(fit._arrays)


@pytest.mark.slow
@pytest.mark.parametrize("cuts", [1, 3])
def test_update_and_merge_carry_each_groups_sums_exactly(tmp_path, simulated, cuts):
    path, _, _ = simulated(100_000, 10, seed=6, bias="gaussian", chunk_rows=12_000)
    x = open_group(path)["samples"][:]
    for name, rows in (("first", slice(0, 60_000)), ("second", slice(60_000, None))):
        zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w").create_array("samples", data=x[rows],
                                                                               chunks=(7_000, 10))
    dist_relu.fit_to_zarr(tmp_path / "first.zarr", tmp_path / "a.zarr", jackknife_groups=5, cuts=cuts)
    dist_relu.fit_to_zarr(tmp_path / "second.zarr", tmp_path / "b.zarr", jackknife_groups=5,
                          thresholds_from=tmp_path / "a.zarr", cuts=cuts)
    dist_relu.merge_fits([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "merged.zarr")
    dist_relu.fit_to_zarr(tmp_path / "second.zarr", tmp_path / "updated.zarr", update=tmp_path / "a.zarr")
    a, b = open_group(tmp_path / "a.zarr"), open_group(tmp_path / "b.zarr")
    for combined in (open_group(tmp_path / "merged.zarr"), open_group(tmp_path / "updated.zarr")):
        np.testing.assert_array_equal(combined["group_counts"][:], a["group_counts"][:] + b["group_counts"][:])
        np.testing.assert_array_equal(combined["group_statistics"][:][..., :2],
                                      a["group_statistics"][:][..., :2] + b["group_statistics"][:][..., :2])
        np.testing.assert_allclose(combined["group_statistics"][:], a["group_statistics"][:] +
                                   b["group_statistics"][:], rtol=1e-12)
        assert combined["group_counts"].shape == (5, 10 * cuts, 10 * cuts)
        assert combined.attrs["jackknife_groups"] == 5 and combined.attrs["jackknife"]["groups"] == 5
        for name in JACKKNIFE_ARRAYS:
            assert np.isfinite(combined[name][:]).any(), name
    # A fit without groups cannot join one with them: refused, and nothing written or changed.
    dist_relu.fit_to_zarr(tmp_path / "second.zarr", tmp_path / "plain.zarr", thresholds_from=tmp_path / "a.zarr",
                          cuts=cuts)
    before = [digest(tmp_path / name) for name in ("a.zarr", "plain.zarr")]
    with pytest.raises(io.InputError, match="jackknife_groups"):
        dist_relu.merge_fits([tmp_path / "a.zarr", tmp_path / "plain.zarr"], tmp_path / "refused.zarr")
    assert not (tmp_path / "refused.zarr").exists()
    assert [digest(tmp_path / name) for name in ("a.zarr", "plain.zarr")] == before


@pytest.mark.slow
def test_a_checkpointed_fit_resumes_each_groups_sums_bit_for_bit(tmp_path, simulated):
    path, _, _ = simulated(60_000, 8, seed=7, chunk_rows=5_000)
    first = dist_relu.fit_to_zarr(path, tmp_path / "first.zarr", jackknife_groups=4, checkpoint=tmp_path / "ck")
    again = dist_relu.fit_to_zarr(path, tmp_path / "again.zarr", jackknife_groups=4, checkpoint=tmp_path / "ck")
    assert first["checkpoint"]["blocks_resumed"] == 0 and again["checkpoint"]["blocks_resumed"] > 0
    for name in ("group_counts", "group_statistics", "counts", "covariance", *JACKKNIFE_ARRAYS):
        np.testing.assert_array_equal(open_group(tmp_path / "again.zarr")[name][:],
                                      open_group(tmp_path / "first.zarr")[name][:], err_msg=name)
    # Sums kept without groups are not sums of groups: that checkpoint is refused, not mixed in.
    with pytest.raises(io.InputError):
        dist_relu.fit_to_zarr(path, tmp_path / "other.zarr", checkpoint=tmp_path / "ck")
    assert not (tmp_path / "other.zarr").exists()


def test_settings_that_cannot_make_a_jackknife_are_refused(tmp_path, relu_data):
    with pytest.raises(ValueError, match="at least 2"):
        dist_relu.ReLUGaussian(jackknife_groups=1).fit(relu_data)
    with pytest.raises(ValueError, match="likelihood"):
        dist_relu.ReLUGaussian(jackknife_groups=10, method="sgd").fit(relu_data)
    with pytest.raises(ValueError, match="at least as many rows"):
        dist_relu.ReLUGaussian(jackknife_groups=30).fit(relu_data[:20])


def test_the_budget_counts_the_jackknifes_count_blocks():
    chunk = budget.StoredChunk(4096, 4096, 4)
    plain = budget.task_bytes(4096, 512, chunk, 8)
    assert budget.task_bytes(4096, 512, chunk, 8, jackknife_groups=100) > 8 * 100 * 512**2 > plain
    share = 2 * 8 * 50 * 512**2
    assert budget.column_block_for(4096, chunk, 8, share, 2, jackknife_groups=50) < \
        budget.column_block_for(4096, chunk, 8, share, 2)
    # With K cut points each group's count blocks are K² as large.
    jackknife = budget.task_sizes(4096, 512, chunk, 8, jackknife_groups=100, cuts=3).jackknife
    assert jackknife > 8 * 100 * 9 * 512**2 > budget.task_sizes(4096, 512, chunk, 8, jackknife_groups=100).jackknife


def test_the_summary_gives_the_jackknifes_ratios(tmp_path, relu_data):
    source = tmp_path / "x.zarr"
    zarr.open_group(str(source), mode="w").create_array("samples", data=relu_data, chunks=(3_000, 6))
    result = CliRunner().invoke(main, ["fit", str(source), "--out", str(tmp_path / "fit.zarr"),
                                       "--jackknife-groups", "5"])
    assert result.exit_code == 0, result.output
    assert "jackknife over 5 groups of rows: its standard errors are" in result.output
    result = CliRunner().invoke(main, ["fit", str(source), "--out", str(tmp_path / "again.zarr"),
                                       "--jackknife-groups", "5", "--json"])
    summary = json.loads(result.output)
    assert summary["jackknife"]["groups"] == 5 and 0.5 < summary["jackknife"]["covariance_ratio"] < 2
