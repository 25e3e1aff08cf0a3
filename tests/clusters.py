"""A `dask scheduler` and `dask worker` processes started from the command line on loopback (shared by tests)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from distributed import Client
from distributed.security import Security

BIN = Path(sys.executable).parent


def hangup_as_in_a_terminal():
    """``preexec_fn`` for a command that a test hangs up: SIGHUP's default, as under a terminal (not nohup's)."""
    import signal

    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def wait_for(condition, process, what, timeout=120):
    """Wait until ``condition()`` holds, failing if ``process`` ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def command_line_cluster(directory, n_workers=2, tls=(), environment=None):
    """Start `dask scheduler` and ``n_workers`` single-threaded `dask worker` processes; yield the address.

    ``environment`` is added to this process's for the scheduler and the workers.
    """
    environment = {**os.environ, **(environment or {})}
    protocol = "tls" if tls else "tcp"
    port = free_port()
    address = f"{protocol}://127.0.0.1:{port}"
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", *tls]
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--port", str(port), "--protocol", protocol,
                                   *loopback],
                                  stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT,
                                  env=environment)]
    for k in range(n_workers):
        processes.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--local-directory", str(directory / f"worker-{k}"), *loopback],
                                          stdout=open(logs / f"worker-{k}.log", "w"), stderr=subprocess.STDOUT,
                                          env=environment))
    try:
        with client_of(address, tls) as client:
            client.wait_for_workers(n_workers, timeout=60)
        yield address
    finally:
        for process in processes[::-1]:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def client_of(address, tls=()):
    if not tls:
        return Client(address, timeout=30)
    files = dict(zip(tls[::2], tls[1::2]))
    security = Security(tls_ca_file=files["--tls-ca-file"], tls_client_cert=files["--tls-cert"],
                        tls_client_key=files["--tls-key"], require_encryption=True)
    return Client(address, security=security, timeout=30)


def count_tasks_done(client):
    """Return the number of the main pass's count tasks finished so far, as the scheduler knows them."""

    def count(dask_scheduler):  # nested, so that it is pickled by value: the scheduler cannot import tests/
        return sum(1 for key, task in dask_scheduler.tasks.items()
                   if "coexceedance" in str(key) and task.state in ("memory", "released"))

    return client.run_on_scheduler(count)
