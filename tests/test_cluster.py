"""Real clusters: a `dask scheduler` and `dask worker` processes started from the command line on loopback.

The fit runs against them through `dist-relu fit --scheduler`, and must equal
the local-threads fit bit for bit: when a worker is killed mid-fit, over TLS,
with inputs given as file:// URLs, and with checkpoints written by the workers.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import zarr
from distributed import Client

from dist_relu.scheduler import scheduler

from .clusters import BIN, command_line_cluster, count_tasks_done
from .conftest import assert_same_fit

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """The address of a scheduler with two single-threaded worker processes, shared by the module's tests."""
    with command_line_cluster(tmp_path_factory.mktemp("cluster")) as address:
        yield address


def fit(path, out, *options, check=True):
    result = subprocess.run([str(BIN / "dist-relu"), "fit", str(path), "--out", str(out), *options],
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result, (zarr.open_group(str(out), mode="r") if result.returncode == 0 else None)


@pytest.mark.parametrize("method", ["censored", "sgd"])
def test_fit_on_a_command_line_cluster_equals_local_threads(simulated, tmp_path, cli_cluster, method):
    path, _, _ = simulated(200_000, 6, seed=5)
    _, threads = fit(path, tmp_path / "threads.zarr", "--method", method)
    result, cluster = fit(path, tmp_path / "cluster.zarr", "--method", method, "--scheduler", cli_cluster)
    assert f"scheduler {cli_cluster}" in result.stderr
    assert_same_fit(cluster, threads)


def test_workers_read_a_file_url_and_write_the_checkpoint_a_rerun_resumes_from(simulated, tmp_path, cli_cluster):
    path, _, _ = simulated(200_000, 6, seed=5)
    _, threads = fit(path, tmp_path / "threads.zarr")
    checkpoint = f"file://{tmp_path}/fit.checkpoint"
    options = ("--scheduler", cli_cluster, "--checkpoint", checkpoint, "--json")
    _, first = fit(f"file://{path}", f"file://{tmp_path}/first.zarr", *options)
    # The segment sums were saved by the worker processes, then all of them reused.
    assert first.attrs["checkpoint"]["blocks_resumed"] == 0
    result, again = fit(f"file://{path}", tmp_path / "again.zarr", *options)
    assert again.attrs["checkpoint"]["blocks_resumed"] == len(list((tmp_path / "fit.checkpoint").glob("thresholds-*/*/*.npy"))) > 0
    assert_same_fit(first, threads)
    assert_same_fit(again, threads)


def test_a_worker_killed_mid_fit_does_not_change_the_result(simulated, tmp_path):
    path, _, _ = simulated(1_600_000, 24, seed=7, chunk_rows=10_000)
    _, threads = fit(path, tmp_path / "threads.zarr", "--split-every", "2")
    # A worker fetching a result from the dead one retries the connection for
    # this long (30 s by default) before the scheduler's reassignment reaches it.
    quick = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}
    with command_line_cluster(tmp_path / "cluster", environment=quick) as address, \
            Client(address, timeout=30) as client:
        pids = client.run(os.getpid)
        process = subprocess.Popen([str(BIN / "dist-relu"), "fit", str(path), "--out", str(tmp_path / "cluster.zarr"),
                                    "--split-every", "2", "--scheduler", address],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # Kill once the main pass has counted 10 of its 160 row chunks.
        deadline = time.monotonic() + 120
        while count_tasks_done(client) < 10:
            assert process.poll() is None and time.monotonic() < deadline, "the fit ended before the kill"
            time.sleep(0.05)
        victim = sorted(pids)[0]
        os.kill(pids[victim], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        with pytest.raises(ProcessLookupError):
            os.kill(pids[victim], 0)
    assert_same_fit(zarr.open_group(str(tmp_path / "cluster.zarr"), mode="r"), threads)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A certificate authority and one certificate it signed for 127.0.0.1 (scheduler, workers and client)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make test certificates")
    directory = tmp_path_factory.mktemp("tls")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=dist-relu test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
         "node.pem", "-days", "2", "-extfile", "ext.cnf"],
    ):
        subprocess.run([openssl, *command], cwd=directory, check=True, capture_output=True)
    return ("--tls-ca-file", str(directory / "ca.pem"), "--tls-cert", str(directory / "node.pem"),
            "--tls-key", str(directory / "node.key"))


def test_a_tls_scheduler_is_used_with_the_certificates_of_the_options_or_the_dask_config(
        simulated, tmp_path, certificates, monkeypatch):
    path, _, _ = simulated(200_000, 6, seed=5)
    _, threads = fit(path, tmp_path / "threads.zarr")
    with command_line_cluster(tmp_path / "cluster", n_workers=1, tls=certificates) as address:
        assert address.startswith("tls://")
        _, options = fit(path, tmp_path / "options.zarr", "--scheduler", address, *certificates)
        assert_same_fit(options, threads)
        files = dict(zip(certificates[::2], certificates[1::2]))
        monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TLS__CA_FILE", files["--tls-ca-file"])
        monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT", files["--tls-cert"])
        monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY", files["--tls-key"])
        _, config = fit(path, tmp_path / "config.zarr", "--scheduler", address)
        assert_same_fit(config, threads)
        monkeypatch.delenv("DASK_DISTRIBUTED__COMM__TLS__CA_FILE")
        result, _ = fit(path, tmp_path / "none.zarr", "--scheduler", address, check=False)
        assert result.returncode == 2 and "needs TLS certificates" in result.stderr


def test_tls_options_without_a_tls_address_are_refused(tmp_path, certificates):
    result, _ = fit(tmp_path / "absent.zarr", tmp_path / "fit.zarr", "--scheduler", "tcp://127.0.0.1:1",
                    *certificates, check=False)
    assert result.returncode == 2 and "tls://" in result.stderr


def test_the_local_cluster_listens_on_loopback_only():
    with scheduler(workers=2) as client:
        info = client.scheduler_info()
        addresses = [client.scheduler.address, *info["workers"]]
        assert all(address.startswith("tcp://127.0.0.1:") for address in addresses), addresses
        assert client.dashboard_link.startswith("http://127.0.0.1:")


def _start_environment():
    """The environment this process started with (what glibc read its tunables from)."""
    with open(f"/proc/{os.getpid()}/environ", "rb") as environ:
        return dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/environ is Linux's")
def test_the_local_clusters_workers_start_with_malloc_asking_for_huge_pages(monkeypatch):
    # distributed sets the workers' variables in this process's environment too; monkeypatch restores it.
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    monkeypatch.delenv("GLIBC_TUNABLES")
    with scheduler(workers=2) as client:
        started = client.run(_start_environment)
    assert [env.get(b"GLIBC_TUNABLES") for env in started.values()] == [b"glibc.malloc.hugetlb=1"] * 2
    # A user's own tunables win.
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    with scheduler(workers=1) as client:
        started = client.run(_start_environment)
    assert [env.get(b"GLIBC_TUNABLES") for env in started.values()] == [b"glibc.malloc.arena_max=2"]
