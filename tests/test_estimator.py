"""End to end against known truth, on Zarr stores on disk."""

import collections

import dask.array as da
import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import io, kernels
from dist_relu.fitstore import open_fit

from .conftest import errors

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`


def samples_of(path):
    return da.from_zarr(str(path), component="samples")


# The bounds the default must keep; err_b with negative biases measured 0.0072:
# a coordinate with b ≪ 0 has few positives (the paper's Claim 2).
@pytest.mark.parametrize("bias, sigma_bound, b_bound", [("clipped", 0.004, 0.0025), ("gaussian", 0.008, 0.012)])
def test_figure1_accuracy_over_ten_seeds(simulated, bias, sigma_bound, b_bound):
    """At d = 5, n = 5·10⁵ the default reaches err_Σ ≈ 0.0022, err_b ≈ 0.0016 (benchmarks/figure1.py)."""
    results = []
    for seed in range(10):
        path, weights, b = simulated(500_000, 5, seed=seed, bias=bias, chunk_rows=125_000)
        results.append(errors(dist_relu.ReLUGaussian().fit(path), weights, b))
    mean_sigma = np.mean([r["err_sigma"] for r in results])
    mean_b = np.mean([r["err_b"] for r in results])
    assert mean_sigma <= sigma_bound
    assert mean_b <= b_bound
    # A factor of 2 or a sign wrong anywhere would put the errors far above these.
    assert max(r["err_sigma"] for r in results) < 3 * sigma_bound


def test_error_falls_like_one_over_root_n(simulated):
    """Over a 16x range of n the errors must fall by about 4 (between 2.5 and 6.5)."""
    sizes = (31_250, 500_000)
    mean_errors = {n: collections.defaultdict(list) for n in sizes}
    for seed in range(6):
        path, weights, b = simulated(500_000, 5, seed=seed, chunk_rows=125_000)
        for n in sizes:
            result = errors(dist_relu.ReLUGaussian().fit(samples_of(path)[:n]), weights, b)
            for name in ("err_sigma", "err_b"):
                mean_errors[n][name].append(result[name])
    for name in ("err_sigma", "err_b"):
        ratio = np.mean(mean_errors[sizes[0]][name]) / np.mean(mean_errors[sizes[1]][name])
        assert 2.5 < ratio < 6.5, (name, ratio)


def test_one_pass_and_two_passes_agree_within_sampling_noise(simulated):
    path, weights, b = simulated(500_000, 8, seed=3)
    one = dist_relu.ReLUGaussian(passes=1).fit(path)
    two = dist_relu.ReLUGaussian(passes=2).fit(path)
    two_model = dist_relu.ReLUGaussian(passes=2, inversion="model").fit(path)
    error_one = errors(one, weights, b)["err_sigma"]
    np.testing.assert_array_equal(one.bias_, two.bias_)  # Step 1 reads the same statistics
    for other in (two, two_model):
        difference = np.linalg.norm(one.covariance_ - other.covariance_) / np.trace(weights @ weights.T)
        assert difference < error_one
        assert errors(other, weights, b)["err_sigma"] < 2 * error_one
    # Two passes threshold at max(0, b̂) from all the data, so a ≈ 0 and c_i/n ≈ 1/2.
    np.testing.assert_allclose(two.thresholds_, np.maximum(0, two.bias_))
    positive = two.bias_ > 0
    assert positive.sum() >= 3
    np.testing.assert_allclose(np.diag(two.counts_)[positive] / 500_000, 0.5, atol=0.005)


def test_results_do_not_depend_on_chunking(simulated):
    path, _, _ = simulated(200_000, 7, seed=4)
    reference = dist_relu.ReLUGaussian().fit(samples_of(path).rechunk((50_000, 7)))
    # (row chunk, stored columns, column block); (40_000, 7, 3): blocks read in place from whole rows.
    for row_chunk, stored_columns, column_block in [(13_001, 7, 7), (200_000, 3, 3), (40_000, 1, 1), (40_000, 7, 3)]:
        fit = dist_relu.ReLUGaussian(column_block=column_block).fit(
            samples_of(path).rechunk((row_chunk, stored_columns))
        )
        np.testing.assert_array_equal(fit.counts_, reference.counts_)
        np.testing.assert_array_equal(fit.statistics_[:, :2], reference.statistics_[:, :2])
        np.testing.assert_allclose(fit.statistics_, reference.statistics_, rtol=1e-12)
        np.testing.assert_allclose(fit.thresholds_, reference.thresholds_, rtol=1e-10)
        np.testing.assert_allclose(fit.covariance_, reference.covariance_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fit.bias_, reference.bias_, rtol=1e-9, atol=1e-12)


def test_threads_and_a_local_cluster_give_identical_results(simulated):
    from distributed import Client, LocalCluster

    path, _, _ = simulated(200_000, 6, seed=5)
    threaded = dist_relu.ReLUGaussian().fit(path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        distributed = dist_relu.ReLUGaussian().fit(path)
    for name in ("covariance_", "bias_", "scale_", "thresholds_", "counts_", "statistics_"):
        np.testing.assert_array_equal(getattr(distributed, name), getattr(threaded, name), err_msg=name)


class CountingStore(zarr.storage.LocalStore):
    """A local store that counts the reads of each key."""

    reads = collections.Counter()

    async def get(self, key, prototype, byte_range=None):
        CountingStore.reads[key] += 1
        return await super().get(key, prototype, byte_range)


@pytest.mark.parametrize("entry", ["estimator", "fit_to_zarr"])
@pytest.mark.parametrize("passes, method", [(1, "censored"), (2, "censored"), (1, "sgd")])
@pytest.mark.parametrize("column_block", ["auto", 2])  # 2: two blocks, each read in place from the row chunk
def test_each_chunk_is_read_once_per_pass(tmp_path, passes, method, entry, column_block):
    weights, b = dist_relu.figure1_truth(4, seed=0)
    path = tmp_path / "s.zarr"
    dist_relu.simulate_to_zarr(path, weights, b, 160_000, chunk_rows=10_000)
    CountingStore.reads.clear()
    array = zarr.open_array(store=CountingStore(path / "samples", read_only=True), mode="r")
    if entry == "estimator":
        dist_relu.ReLUGaussian(passes=passes, method=method, pilot_rows=800, column_block=column_block).fit(array)
    else:
        # Stored in stages; the main pass must still read each chunk once (found reading twice, then fixed).
        dist_relu.fit_to_zarr(array, tmp_path / "fit.zarr", passes=passes, method=method, pilot_rows=800,
                              column_block=column_block)
    chunk_reads = [count for key, count in CountingStore.reads.items() if key.startswith("c/")]
    assert len(chunk_reads) == 16
    # One pass with SGD: its sequential chains, one per column block, read on their own, so that no
    # chunk waits in memory for a chain to reach it.
    reads_per_pass = 1 + (4 // (4 if column_block == "auto" else column_block)) if method == "sgd" else 1
    if passes == 1:
        # The pilot (rows 0-799, in chunk 0) is part of the main pass's graph: chunk 0 is read once for both.
        assert chunk_reads == [reads_per_pass] * 16
    else:
        assert chunk_reads == [2] * 16


def test_negative_zero_and_constant_coordinates(relu_data):
    n = relu_data.shape[0]
    x = np.column_stack([relu_data, np.zeros(n), np.full(n, 1.5)])
    fit = dist_relu.ReLUGaussian().fit(x)
    plain = dist_relu.ReLUGaussian().fit(relu_data)
    assert list(fit.status_[-2:]) == [kernels.STATUS_ALL_ZERO, kernels.STATUS_CONSTANT]
    assert fit.bias_[-1] == pytest.approx(1.5) and fit.scale_[-1] == 0 and fit.scale_[-2] == 0
    np.testing.assert_array_equal(fit.covariance_[-2:], 0)
    np.testing.assert_array_equal(fit.covariance_[:, -2:], 0)
    np.testing.assert_allclose(fit.covariance_[:-2, :-2], plain.covariance_, rtol=1e-12)
    assert np.isfinite(fit.covariance_).all()
    assert fit.positive_fraction_[-2] == 0 and fit.positive_fraction_[-1] == 1


def test_inputs_all_become_the_same_fit(tmp_path, relu_data):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("x", data=relu_data, chunks=(5000, 6))
    reference = dist_relu.ReLUGaussian().fit(relu_data)
    for source, array in [(tmp_path / "g.zarr", "x"), (str(tmp_path / "g.zarr" / "x"), "samples"),
                          (group["x"], "samples"), (da.from_array(relu_data, chunks=(3000, 2)), "samples")]:
        fit = dist_relu.ReLUGaussian().fit(source, array=array)
        np.testing.assert_array_equal(fit.counts_, reference.counts_)
        np.testing.assert_allclose(fit.covariance_, reference.covariance_, rtol=1e-9, atol=1e-12)
    with pytest.raises(io.InputError, match="no array 'samples'.*arrays: x"):
        dist_relu.ReLUGaussian().fit(tmp_path / "g.zarr")
    with pytest.raises(io.InputError, match="no such file"):
        dist_relu.ReLUGaussian().fit(tmp_path / "missing.zarr")
    with pytest.raises(io.InputError, match="2-D"):
        dist_relu.ReLUGaussian().fit(relu_data[:, 0])
    with pytest.raises(io.InputError, match="at least 2 samples"):
        dist_relu.ReLUGaussian().fit(relu_data[:1])
    with pytest.raises(ValueError, match="passes must be 1 or 2"):
        dist_relu.ReLUGaussian(passes=3).fit(relu_data)


def test_fit_to_zarr_writes_a_complete_group_and_never_a_partial_one(tmp_path, relu_data):
    out = tmp_path / "fit.zarr"
    attributes = dist_relu.fit_to_zarr(relu_data, out)
    model, group = open_fit(out)
    fit = dist_relu.ReLUGaussian().fit(relu_data)
    np.testing.assert_allclose(model.covariance, fit.covariance_, rtol=1e-12)
    np.testing.assert_array_equal(group["counts"][:], fit.counts_)
    assert attributes["n_samples"] == 20_000 and attributes["method"] == "censored"
    assert group.attrs["format_version"] == 1 and group.attrs["dist_relu_version"] == dist_relu.__version__
    assert set(group.array_keys()) >= {"covariance", "bias", "scale", "status", "thresholds", "counts",
                                       "n_zero", "n_positive", "sum_positive", "sum_sq_positive"}

    with pytest.raises(io.InputError, match="exists"):
        dist_relu.fit_to_zarr(relu_data, out)

    def fail_on_third_chunk(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            raise RuntimeError("disk on fire")
        return block

    broken = da.from_array(relu_data, chunks=(4000, 6)).map_blocks(fail_on_third_chunk, dtype=relu_data.dtype)
    with pytest.raises(RuntimeError, match="disk on fire"):
        dist_relu.fit_to_zarr(broken, out, overwrite=True, pilot_rows=100)
    np.testing.assert_array_equal(open_fit(out)[1]["counts"][:], fit.counts_)  # the old fit, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.zarr"]  # no partial store left

    dist_relu.fit_to_zarr(relu_data[:10_000], out, overwrite=True)
    assert open_fit(out)[1].attrs["n_samples"] == 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.zarr"]


def test_saved_fit_round_trips(tmp_path, relu_data):
    fit = dist_relu.ReLUGaussian(method="truncated", passes=2).fit(relu_data)
    fit.save(tmp_path / "fit.zarr")
    model, group = open_fit(tmp_path / "fit.zarr")
    np.testing.assert_array_equal(model.covariance, fit.covariance_)
    np.testing.assert_array_equal(model.bias, fit.bias_)
    assert group.attrs["method"] == "truncated" and group.attrs["passes"] == 2
    with pytest.raises(io.InputError, match="not a dist_relu fit"):
        zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
        open_fit(tmp_path / "other.zarr")


def test_paper_settings_reproduce_the_papers_formula_exactly(simulated):
    """Two passes, model margins and clipped b̂: Σ̂_ij = σ̂_i σ̂_j cos(π − 2π C_ij/n), as in the authors' code."""
    path, _, _ = simulated(200_000, 6, seed=6)
    for method in ("sgd", "truncated"):
        fit = dist_relu.ReLUGaussian(method=method, passes=2, inversion="model", clip_bias=True).fit(path)
        assert (fit.bias_ >= 0).all()
        np.testing.assert_array_equal(fit.thresholds_, fit.bias_)
        expected = np.outer(fit.scale_, fit.scale_) * np.cos(np.pi - 2 * np.pi * fit.counts_ / 200_000)
        np.fill_diagonal(expected, fit.scale_**2)
        np.testing.assert_allclose(fit.covariance_, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("setting, value, message", [
    ("column_block", "wide", r"column_block must be an integer ≥ 1 or 'auto'"),
    ("column_block", 0, r"column_block must be"),
    ("pilot_rows", 1, r"pilot_rows must be an integer ≥ 2"),
    ("memory_per_worker", 0, r"memory_per_worker must be"),
    ("split_every", None, r"split_every must be an integer ≥ 2"),
    ("count_kernel", "fast", r"count_kernel must be one of auto, popcount, gemm"),
    ("method", "mle", r"method must be one of"),
])
def test_bad_settings_are_refused_by_name_before_any_work(relu_data, setting, value, message):
    with pytest.raises(ValueError, match=message):
        dist_relu.ReLUGaussian(**{setting: value}).fit(relu_data)


def test_a_fit_on_local_threads_does_not_import_distributed(tmp_path):
    """dask imports distributed (~0.3 s) to look for a client at compute and at rechunk; no client, no import."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, dist_relu\n"
        "x = np.maximum(0, 0.3 + np.random.default_rng(0).standard_normal((20_000, 6)))\n"
        "dist_relu.ReLUGaussian(column_block=4).fit(x)\n"
        f"dist_relu.fit_to_zarr(x, {str(tmp_path / 'fit.zarr')!r}, column_block=4)\n"
        "assert 'distributed' not in sys.modules, 'distributed was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
