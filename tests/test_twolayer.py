"""The two-layer model x = A ReLU(W z + b): anchors against the truth, the hidden fit against an oracle, refusals."""

import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import kernels, separable
from dist_relu.cli import EXIT_BAD_INPUT
from dist_relu.model import gauged_truth

from .conftest import counting_chunk_reads, digest

DIST_RELU = str(Path(sys.executable).with_name("dist-relu"))
D, P = 20, 5


@pytest.fixture(scope="module")
def two_layer_store(tmp_path_factory):
    """Return a factory of float32 stores written by ``simulate_to_zarr``: ``(path, A, W, b)``, cached."""
    cache = {}
    root = tmp_path_factory.mktemp("two-layer")

    def make(n, seed, chunk_rows=65_536, weights=None, noise=0.0):
        key = (n, seed, chunk_rows, weights is None, noise)
        if key not in cache:
            mixing, w, b = dist_relu.two_layer_truth(D, P, seed=seed)
            if weights is not None:
                w = weights
            path = root / f"n{n}-s{seed}-c{chunk_rows}-{'own' if weights is None else 'given'}-{noise}.zarr"
            dist_relu.simulate_to_zarr(path, w, b, n, chunk_rows=chunk_rows, seed=seed, mixing=mixing, noise=noise)
            cache[key] = (path, mixing, w, b)
        return cache[key]

    return make


def oracle_errors(n, seed, mixing, weights, bias, chunk_rows=65_536):
    """Return the one-layer fit's errors on the true hidden layer ``D M``, drawn as the store's samples were."""
    chunks = [kernels.relu_gaussian_chunk(min(chunk_rows, n - start), weights, bias, seed, index, np.float64)
              for index, start in enumerate(range(0, n, chunk_rows))]
    scale = np.linalg.norm(mixing, axis=0)
    fit = dist_relu.ReLUGaussian().fit(np.concatenate(chunks) * scale)
    return fit.model_.errors(weights @ weights.T * np.outer(scale, scale), bias * scale)


def test_spa_finds_the_vertices_of_a_simplex_and_breaks_ties_by_the_least_row():
    rng = np.random.default_rng(0)
    vertices = np.eye(4)
    inside = rng.dirichlet(np.ones(4), size=200)
    points = np.concatenate([inside, vertices, vertices])  # every vertex twice: rows 200–203 and 204–207
    chosen, candidates = separable.successive_projection(points, 4, keep=3, rows=np.arange(208)[::-1], tie=1e-12)
    assert sorted(chosen) == [204, 205, 206, 207]  # the larger index of each pair, as rows are reversed
    assert set(chosen) <= set(candidates) and len(candidates) <= 12


def test_a_pointed_direction_is_found_where_the_mean_fails():
    # Rays in a thin cone around the vertical with one nearly opposite to their mean pull.
    units = np.array([[1, 0, 0.05], [-1, 0, 0.05], [0, 1, 0.05], [0, -0.999, 0.06]])
    units /= np.linalg.norm(units, axis=1)[:, None]
    h = separable.pointed_direction(units)
    assert h is not None and (units @ h).min() > 0
    assert separable.pointed_direction(np.array([[1.0, 0], [-1.0, 0]])) is None


def test_the_gauge_is_what_the_metrics_compare_in():
    rng = np.random.default_rng(3)
    mixing, weights, bias = rng.standard_normal((6, 3)), rng.standard_normal((3, 3)), rng.standard_normal(3)
    order = [2, 0, 1]
    scale = np.linalg.norm(mixing, axis=0)
    fitted = (mixing / scale)[:, order]  # unit columns, permuted
    covariance, gauged_bias = gauged_truth(fitted, mixing, weights @ weights.T, bias)
    np.testing.assert_allclose(gauged_bias, (bias * scale)[order])
    np.testing.assert_allclose(covariance, (weights @ weights.T * np.outer(scale, scale))[np.ix_(order, order)])
    errors = dist_relu.TwoLayerRectifiedGaussian(fitted, covariance, gauged_bias).errors(
        mixing, weights @ weights.T, bias)
    assert errors["anchor_sin_max"] < 1e-7 and errors["err_sigma"] < 1e-12 and errors["err_b"] < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_noiseless_anchors_are_exact_and_the_hidden_fit_matches_the_oracle(two_layer_store, seed):
    n = 100_000
    path, mixing, weights, bias = two_layer_store(n, seed)
    fit = dist_relu.TwoLayerReLU(hidden=P).fit(path)
    errors = fit.model_.errors(mixing, weights @ weights.T, bias)
    oracle = oracle_errors(n, seed, mixing, weights, bias)
    assert errors["anchor_sin_max"] <= 1e-6
    assert errors["err_sigma"] <= min(1.05 * oracle["err_sigma"], 0.01)
    assert errors["err_b"] <= min(1.05 * oracle["err_b"], 0.008)
    assert fit.outside_fraction_ == 0 and fit.energy_outside_ < 1e-12


@pytest.mark.slow
def test_the_error_falls_with_n(two_layer_store):
    for seed in range(3):
        path, mixing, weights, bias = two_layer_store(1_000_000, seed)
        errors = dist_relu.TwoLayerRectifiedGaussian(
            *dist_relu.two_layer_relu(path, hidden=P)).errors(mixing, weights @ weights.T, bias)
        assert errors["anchor_sin_max"] <= 1e-6
        assert errors["err_sigma"] <= 0.003 and errors["err_b"] <= 0.003


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_with_noise_the_facets_are_refitted(two_layer_store, seed):
    """Noise σ = 0.01 (the samples' norms are about 4–8): SPA alone misses by a sine of about 0.1."""
    path, mixing, weights, bias = two_layer_store(1_000_000, seed, noise=0.01)
    fit = dist_relu.TwoLayerReLU(hidden=P).fit(path)
    errors = fit.model_.errors(mixing, weights @ weights.T, bias)
    assert fit.settings_["refined_facets"] and abs(fit.settings_["noise_level"] - 0.01) < 1e-3
    assert errors["anchor_sin_max"] <= 1e-4 and errors["err_sigma"] <= 0.01
    assert fit.outside_fraction_ <= 0.001


def test_noiseless_data_is_not_refined():
    mixing, weights, bias = dist_relu.two_layer_truth(D, P, seed=1)
    x = kernels.relu_gaussian_chunk(30_000, weights, bias, 1, 0, np.float64, mixing)
    fit = dist_relu.TwoLayerReLU(hidden=P).fit(x)
    assert not fit.settings_["refined_facets"] and fit.settings_["noise_level"] < 1e-6  # the eigensolver's rounding
    assert fit.model_.errors(mixing, weights @ weights.T, bias)["anchor_sin_max"] < 1e-10
    hidden = fit.transform(x).compute()
    assert hidden.shape == (30_000, P) and (hidden >= 0).all()
    np.testing.assert_allclose(hidden @ fit.mixing_.T, x, atol=1e-9)
    samples = fit.sample(1_000, seed=0)
    assert samples.shape == (1_000, D)
    np.testing.assert_allclose(samples @ np.linalg.pinv(fit.mixing_).T @ fit.mixing_.T, samples, atol=1e-9)


@pytest.mark.slow
def test_the_data_is_read_exactly_twice_and_the_chunking_changes_nothing(two_layer_store, tmp_path):
    path, *_ = two_layer_store(100_000, 1, chunk_rows=7_000)
    with counting_chunk_reads(zarr.storage.LocalStore) as reads:
        stored = dist_relu.TwoLayerReLU(hidden=P, split_every=3).fit(path)
    assert set(reads.values()) == {2} and len(reads) == -(-100_000 // 7_000)
    samples = zarr.open_group(str(path), mode="r")["samples"][:]
    for rows in (100_000, 16_384, 999):
        fit = dist_relu.TwoLayerReLU(hidden=P).fit(da.from_array(samples, chunks=(rows, D)))
        np.testing.assert_array_equal(fit.anchor_rows_, stored.anchor_rows_)
        np.testing.assert_array_equal(fit.mixing_, stored.mixing_)
        np.testing.assert_allclose(fit.hidden_.covariance, stored.hidden_.covariance, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fit.hidden_.bias, stored.hidden_.bias, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["more units than latents", "too few samples"])
def test_data_that_is_not_separable_is_refused_and_nothing_is_written(two_layer_store, tmp_path, case):
    if case == "more units than latents":  # p = 5 > k = 3: no unit is ever alone on all of its rows
        w, _ = dist_relu.figure1_truth(P, seed=0)
        path, *_ = two_layer_store(100_000, 0, weights=np.ascontiguousarray(w[:, :3]))
    else:  # the rarest unit of seed 3 is alone on about 3 rows in 10,000 (docs/design.md §9)
        path, *_ = two_layer_store(3_000, 3)
    before = digest(path)
    out = tmp_path / "fit.zarr"
    result = subprocess.run([DIST_RELU, "fit", str(path), "--model", "two-layer", "--hidden", str(P), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert "outside the cone" in result.stderr and "%" in result.stderr and "not separable" in result.stderr
    assert digest(path) == before and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_command_line_writes_the_layout_and_evaluate_reads_it(two_layer_store, tmp_path):
    path, mixing, weights, bias = two_layer_store(100_000, 0)
    out = tmp_path / "fit.zarr"
    fitted = subprocess.run([DIST_RELU, "fit", str(path), "--model", "two-layer", "--hidden", str(P), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert fitted.returncode == 0, fitted.stderr
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["model"] == "two_layer_relu" and group.attrs["hidden"] == P
    assert group["mixing"].shape == (D, P) and group["anchor_rows"].shape == (P,)
    np.testing.assert_allclose(np.linalg.norm(group["mixing"][:], axis=0), 1)
    assert group["hidden"].attrs["format"] == "dist_relu.fit" and group["hidden/covariance"].shape == (P, P)
    api = dist_relu.TwoLayerReLU(hidden=P).fit(path)
    np.testing.assert_array_equal(group["mixing"][:], api.mixing_)
    np.testing.assert_array_equal(group["hidden/covariance"][:], api.hidden_.covariance)
    api.save(tmp_path / "saved.zarr")
    saved = zarr.open_group(str(tmp_path / "saved.zarr"), mode="r")
    assert sorted(saved.array_keys()) == sorted(group.array_keys())
    assert sorted(saved["hidden"].array_keys()) == sorted(group["hidden"].array_keys())
    evaluated = subprocess.run([DIST_RELU, "evaluate", str(out), "--truth", str(path), "--json"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert '"anchor_sin_max"' in evaluated.stdout
    wrong = subprocess.run([DIST_RELU, "fit", str(path), "--out", str(tmp_path / "one.zarr")],
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == EXIT_BAD_INPUT and "--model two-layer" in wrong.stderr
    foreign = subprocess.run([DIST_RELU, "fit", str(path), "--model", "two-layer", "--hidden", "5", "--passes", "2",
                              "--out", str(tmp_path / "two.zarr")], capture_output=True, text=True, timeout=300)
    assert foreign.returncode == EXIT_BAD_INPUT and "--passes does not apply" in foreign.stderr


@pytest.mark.slow
def test_threads_and_a_local_cluster_give_identical_fits(two_layer_store):
    from distributed import Client, LocalCluster

    path, *_ = two_layer_store(100_000, 2, chunk_rows=20_000)
    threaded = dist_relu.TwoLayerReLU(hidden=P).fit(path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        distributed = dist_relu.TwoLayerReLU(hidden=P).fit(path)
    np.testing.assert_array_equal(distributed.anchor_rows_, threaded.anchor_rows_)
    np.testing.assert_array_equal(distributed.mixing_, threaded.mixing_)
    np.testing.assert_array_equal(distributed.hidden_.covariance, threaded.hidden_.covariance)
    np.testing.assert_array_equal(distributed.hidden_.bias, threaded.hidden_.bias)
