"""A real cluster started from the command line: `dask scheduler` and two `dask worker` processes on loopback."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """Yield the address of a scheduler with two single-threaded worker processes; stop them after."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    tmp_path = tmp_path_factory.mktemp("cluster")
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--dashboard-address", "127.0.0.1:0"],
                                  stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT)]
    for k in range(2):
        processes.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                                           "--local-directory", str(tmp_path / f"worker-{k}")],
                                          stdout=open(logs / f"worker-{k}.log", "w"), stderr=subprocess.STDOUT))
    try:
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in processes[::-1]:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def fit(path, out, *options):
    result = subprocess.run([str(BIN / "dist-relu"), "fit", str(path), "--out", str(out), *options],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result, zarr.open_group(str(out), mode="r")


@pytest.mark.parametrize("method", ["censored", "sgd"])
def test_fit_on_a_command_line_cluster_equals_local_threads(simulated, tmp_path, cli_cluster, method):
    path, _, _ = simulated(200_000, 6, seed=5)
    _, threads = fit(path, tmp_path / "threads.zarr", "--method", method)
    result, cluster = fit(path, tmp_path / "cluster.zarr", "--method", method, "--scheduler", cli_cluster)
    assert f"scheduler {cli_cluster}" in result.stderr
    for name in ("covariance", "bias", "scale", "counts", "sum_sq_positive"):
        np.testing.assert_array_equal(cluster[name][:], threads[name][:], err_msg=name)
