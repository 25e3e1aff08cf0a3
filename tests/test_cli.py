"""The dist-relu command, through its installed entry point."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from dist_relu.cli import EXIT_BAD_INPUT, limit_malloc_arenas

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

DIST_RELU = str(Path(sys.executable).with_name("dist-relu"))


def run(*args, check=True):
    result = subprocess.run([DIST_RELU, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def simulated_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "sim.zarr"
    run("simulate", "--n", 200_000, "--d", 6, "--out", path, "--seed", 3, "--chunk-rows", 40_000)
    return path


def test_simulate_fit_evaluate(simulated_store, tmp_path):
    truth = zarr.open_group(str(simulated_store), mode="r")
    assert truth["samples"].shape == (200_000, 6) and truth["samples"].chunks == (40_000, 6)
    np.testing.assert_allclose(truth["truth/covariance"][:],
                               truth["truth/weights"][:] @ truth["truth/weights"][:].T)

    out = tmp_path / "fit.zarr"
    summary = json.loads(run("fit", simulated_store, "--out", out, "--json").stdout)
    assert summary["n_samples"] == 200_000 and summary["n_coordinates"] == 6
    assert summary["status"] == {"ok": 6}
    assert summary["settings"]["method"] == "censored" and summary["settings"]["passes"] == 1

    metrics = json.loads(run("evaluate", out, "--truth", simulated_store, "--json").stdout)
    assert metrics["err_sigma"] < 0.01 and metrics["err_b"] < 0.01 and 0 < metrics["tv_bound"] < 0.2

    text = run("evaluate", out, "--truth", simulated_store).stdout
    assert "err_sigma" in text and "tv_bound" in text


def test_a_local_cluster_gives_the_threaded_result_bit_for_bit(simulated_store, tmp_path):
    run("fit", simulated_store, "--out", tmp_path / "threads.zarr", "--passes", 2)
    result = run("fit", simulated_store, "--out", tmp_path / "cluster.zarr", "--passes", 2, "--workers", 2)
    assert "dashboard" in result.stderr
    threads = zarr.open_group(str(tmp_path / "threads.zarr"), mode="r")
    cluster = zarr.open_group(str(tmp_path / "cluster.zarr"), mode="r")
    for name in ("covariance", "bias", "scale", "counts", "sum_sq_positive"):
        np.testing.assert_array_equal(cluster[name][:], threads[name][:], err_msg=name)


def test_fit_refuses_to_overwrite_and_reports_bad_input_in_one_line(simulated_store, tmp_path):
    out = tmp_path / "fit.zarr"
    run("fit", simulated_store, "--out", out)
    before = zarr.open_group(str(out), mode="r").attrs["created"]

    result = run("fit", simulated_store, "--out", out, check=False)
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr.strip().splitlines() == [f"error: {out} exists; choose another --out or pass --overwrite"]
    assert zarr.open_group(str(out), mode="r").attrs["created"] == before

    result = run("fit", tmp_path / "nothing.zarr", "--out", tmp_path / "x.zarr", check=False)
    assert result.returncode == EXIT_BAD_INPUT and "no such file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()

    result = run("fit", simulated_store, "--array", "nope", "--out", tmp_path / "x.zarr", check=False)
    assert result.returncode == EXIT_BAD_INPUT and "arrays: samples" in result.stderr

    result = run("evaluate", out, "--truth", out, check=False)
    assert result.returncode == EXIT_BAD_INPUT and "truth/" in result.stderr

    run("fit", simulated_store, "--out", out, "--overwrite", "--method", "truncated")
    assert zarr.open_group(str(out), mode="r").attrs["method"] == "truncated"

    result = run("fit", simulated_store, "--out", out, "--overwrite", "--method", "sgd", "--sgd-radius", 1, check=False)
    assert result.returncode == EXIT_BAD_INPUT and "--sgd-radius" in result.stderr


def test_paper_method_through_the_cli(simulated_store, tmp_path):
    out = tmp_path / "paper.zarr"
    summary = json.loads(run("fit", simulated_store, "--out", out, "--method", "sgd", "--passes", 2,
                             "--inversion", "model", "--clip-bias", "--sgd-batches", 2, "--seed", 4, "--json").stdout)
    assert summary["settings"]["sgd"] == {"seed": 4, "batches": 2, "radius": 3.0, "lambda": 0.1, "minibatch": 10}
    metrics = json.loads(run("evaluate", out, "--truth", simulated_store, "--json").stdout)
    assert metrics["err_sigma"] < 0.2 and metrics["err_b"] < 0.1


@pytest.mark.parametrize("command", ["simulate", "fit", "evaluate", "report", "demo", "convert"])
def test_every_command_has_help_with_an_example(command):
    text = run(command, "--help").stdout
    assert "Example" in text and f"dist-relu {command}" in text


def test_demo_prints_the_accuracy(tmp_path):
    result = run("demo", "--n", 100_000, "--d", 4, "--workdir", tmp_path / "demo")
    assert "err_sigma" in result.stdout and "err_b" in result.stdout
    assert (tmp_path / "demo" / "fit.zarr").exists()


def test_the_command_limits_malloc_arenas_unless_the_environment_says(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is sys.platform.startswith("linux")  # glibc here; mallopt returns 1
