"""Mazumdar and Rawat's random-bias model y = ReLU(A c + b): the subspace against the truth and the one-layer fit."""

import subprocess
import sys
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import latent
from dist_relu.model import principal_sine
from dist_relu.cli import EXIT_BAD_INPUT
from dist_relu.randombias import NotConverged

from .conftest import counting_chunk_reads, digest

DIST_RELU = str(Path(sys.executable).with_name("dist-relu"))


@pytest.fixture(scope="module")
def random_bias_store(tmp_path_factory):
    """Return a factory of float32 stores written by ``simulate_to_zarr``: ``(path, A, b)``, cached."""
    cache = {}
    root = tmp_path_factory.mktemp("random-bias")

    def make(n, d, k, law, seed, chunk_rows=5_000):
        key = (n, d, k, law, seed, chunk_rows)
        if key not in cache:
            mixing, bias = dist_relu.random_bias_truth(d, k, seed=seed)
            path = root / f"n{n}-d{d}-k{k}-{law}-s{seed}-c{chunk_rows}.zarr"
            dist_relu.simulate_to_zarr(path, mixing, bias, n, chunk_rows=chunk_rows, seed=seed, latent=law)
            cache[key] = (path, mixing, bias)
        return cache[key]

    return make


def test_latents_are_exact_given_the_truth():
    rng = np.random.default_rng(0)
    mixing, bias = rng.standard_normal((30, 3)), rng.standard_normal(30)
    latents = rng.uniform(-1, 1, (500, 3))
    y = np.maximum(0, latents @ mixing.T + bias)
    np.testing.assert_allclose(latent.solve_latents(y, np.column_stack([mixing, bias])), latents, atol=1e-8)


def test_a_chunk_sums_the_normal_equations_of_their_definition():
    """The compiled pass against the sums written out: latents that are least squares over their active sets."""
    rng = np.random.default_rng(5)
    d, k, rows = 30, 3, 400
    mixing, bias = rng.standard_normal((d, k)), rng.standard_normal(d)
    y = np.maximum(0, rng.uniform(-1, 1, (rows, k)) @ mixing.T + bias)
    factors = np.column_stack([mixing, bias]) + 0.1 * rng.standard_normal((d, k + 1))  # off the truth
    y[7, 3], y[11, 4], y[12, 5] = np.nan, -1.0, -np.inf
    for dtype in (np.float32, np.float64):
        samples = y.astype(dtype)
        equations = latent.normal_equations(samples, factors)
        clean = samples[np.isfinite(samples).all(axis=1)].astype(np.float64)
        latents = latent.solve_latents(clean, factors)
        extended = np.column_stack([latents, np.ones(len(clean))])
        fitted = extended @ factors.T
        active = (clean > 0) | (fitted > 0)
        assert active.sum() > (clean > 0).sum() + 100  # zeros the latents violate are in the sums
        # Each latent is least squares over its active set: the positives fitted, the active zeros pulled to 0.
        stationary = np.einsum("ji,ia->ja", np.where(active, fitted - np.maximum(clean, 0), 0), factors[:, :k])
        held = (np.abs(stationary) < 1e-8).all(axis=1)
        assert held.mean() > 0.99  # one step alone leaves 0.57
        np.testing.assert_allclose(equations.gram, np.einsum("ji,ja,jb->iab", active, extended, extended), rtol=1e-12)
        np.testing.assert_allclose(equations.right, clean.T @ extended, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(equations.moments, extended.T @ extended, rtol=1e-12)
        residual = np.where(clean > 0, clean - fitted, np.maximum(fitted, 0))
        assert equations.loss == pytest.approx(np.sum(residual ** 2), rel=1e-12)
        np.testing.assert_array_equal(equations.positives, (clean > 0).sum(axis=0))
        assert equations.rows == rows - 2
        expected = np.zeros((d, 2), dtype=np.int64)
        expected[[4, 5], 0] = 1
        expected[[3, 5], 1] = 1
        np.testing.assert_array_equal(equations.problems, expected)


def test_the_gauge_centres_and_whitens_the_latents_and_keeps_every_fit():
    rng = np.random.default_rng(1)
    factors = rng.standard_normal((20, 4))
    latents = rng.standard_normal((1000, 3)) @ rng.standard_normal((3, 3)) + [1.0, -2.0, 0.5]
    extended = np.column_stack([latents, np.ones(1000)])
    gauged = latent.gauge(factors, extended.T @ extended)
    # The same fitted values, from latents with mean 0 and covariance I.
    whitened = np.linalg.lstsq(gauged[:, :3], (extended @ factors.T - gauged[:, 3]).T, rcond=None)[0].T
    np.testing.assert_allclose(whitened.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(whitened.T, bias=True), np.eye(3), atol=1e-10)
    assert principal_sine(gauged[:, :3], factors[:, :3]) < 1e-10


def test_coordinates_with_too_few_positives_are_left_out():
    assert list(latent.coordinate_status(np.array([0, 3, 4, 10]), 3)) == [1, 1, 0, 0]


@pytest.mark.slow
@pytest.mark.parametrize("law", ["uniform", "t3", "sparse"])
@pytest.mark.parametrize("seed", range(3))
def test_the_subspace_is_found_where_the_one_layer_fit_is_biased(random_bias_store, law, seed):
    path, mixing, bias = random_bias_store(20_000, 50, 3, law, seed)
    with counting_chunk_reads(zarr.storage.LocalStore) as reads:
        fit = dist_relu.RandomBiasReLU(rank=3).fit(path)
    assert max(reads.values()) <= 6
    sine = fit.model_.errors(mixing)["subspace_sine"]
    assert sine <= 1e-4
    ok = fit.status_ == latent.STATUS_OK
    one_layer = np.linalg.eigh(dist_relu.ReLUGaussian().fit(path).covariance_)[1][:, -3:]
    assert 100 * sine <= principal_sine(one_layer[ok], mixing[ok])
    reconstructed = fit.reconstruct(path).compute()
    samples = zarr.open_group(str(path), mode="r")["samples"][:]
    # Each sample's latent is a few active-set steps: a rare sample with few positives is left inexact.
    errors = np.abs(reconstructed - samples)[:, ok].max(axis=1)
    assert np.mean(errors <= 1e-4 * np.abs(samples).max()) >= 0.999


@pytest.mark.slow
def test_a_larger_subspace(random_bias_store):
    path, mixing, _ = random_bias_store(100_000, 100, 5, "uniform", 0, chunk_rows=20_000)
    assert dist_relu.RandomBiasReLU(rank=5).fit(path).model_.errors(mixing)["subspace_sine"] <= 1e-3


@pytest.mark.slow
def test_the_chunking_and_the_scheduler_change_nothing(random_bias_store):
    from distributed import Client, LocalCluster

    path, *_ = random_bias_store(20_000, 50, 3, "sparse", 1)
    samples = zarr.open_group(str(path), mode="r")["samples"][:]
    settings = {"rank": 3, "pilot_iterations": 20}  # a short pilot, so that the passes do the work
    with pytest.warns(NotConverged):
        reference = dist_relu.RandomBiasReLU(**settings).fit(path)
    assert reference.n_passes_ > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConverged)  # 5 passes from a short pilot: not at 1e-7 yet
        fits = [dist_relu.RandomBiasReLU(**settings).fit(da.from_array(samples, chunks=(rows, 50)))
                for rows in (20_000, 3_333)]
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster):
            fits.append(dist_relu.RandomBiasReLU(**settings).fit(path))
    for fit in fits:
        assert principal_sine(fit.components_, reference.components_) <= 1e-9


def run(*args):
    return subprocess.run([DIST_RELU, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_refusals_and_a_fit_that_does_not_converge(random_bias_store, tmp_path):
    path, *_ = random_bias_store(20_000, 50, 3, "uniform", 0)
    before = digest(path)
    out = tmp_path / "fit.zarr"
    for args, message in ((["--rank", "50"], "must be below the 50 coordinates"),
                          (["--rank", "0"], "--rank"),
                          ([], "--model random-bias needs --rank")):
        result = run("fit", path, "--model", "random-bias", *args, "--out", out)
        assert result.returncode == EXIT_BAD_INPUT and message in result.stderr, result.stderr
    negative = tmp_path / "negative.zarr"
    dist_relu.simulate_to_zarr(negative, *dist_relu.random_bias_truth(10, 2), 3_000, noise=0.1, latent="t3")
    result = run("fit", negative, "--model", "random-bias", "--rank", "2", "--out", out)
    assert result.returncode == EXIT_BAD_INPUT and "negative values" in result.stderr
    sparse = tmp_path / "sparse.zarr"  # biases far below 0: almost every coordinate has no positive value
    mixing = np.random.default_rng(0).standard_normal((10, 3)) * 0.1
    dist_relu.simulate_to_zarr(sparse, mixing, np.full(10, -5.0), 5_000, latent="uniform")
    result = run("fit", sparse, "--model", "random-bias", "--rank", "3", "--out", out)
    assert result.returncode == EXIT_BAD_INPUT and "needs at least 4" in result.stderr
    assert not out.exists() and digest(path) == before
    result = run("fit", path, "--model", "random-bias", "--rank", "3", "--max-passes", "1", "--pilot-rows", "300",
                 "--pilot-iterations", "1", "--out", out)
    assert result.returncode == 0 and "warning: the random-bias fit did not converge" in result.stderr
    assert zarr.open_group(str(out), mode="r").attrs["converged"] is False
    evaluated = run("evaluate", out, "--truth", path)
    assert evaluated.returncode == 0 and "subspace_sine" in evaluated.stdout
