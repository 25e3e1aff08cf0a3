"""The user's data comes first: through the real command line, with real files, processes and signals.

Every refusal is checked the same way: exit code 2 (4 for the environment),
one line on stderr, and every file under the test's directory byte for byte
as it was (the digest of the whole tree).
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu.cli import EXIT_BAD_INPUT, EXIT_ENVIRONMENT

from .clusters import free_port, hangup_as_in_a_terminal, wait_for
from .conftest import digest

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

DIST_RELU = str(Path(sys.executable).with_name("dist-relu"))
TIMEOUT = 300


def run(*args, cwd=None, env=None, timeout=TIMEOUT):
    return subprocess.run([DIST_RELU, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Stores written once per module: samples, a fit of them, a second fit at its thresholds, other data."""
    root = tmp_path_factory.mktemp("originals")
    weights, bias = dist_relu.figure1_truth(4, seed=0)
    dist_relu.simulate_to_zarr(root / "sim.zarr", weights, bias, 20_000, chunk_rows=5_000, seed=0)
    dist_relu.simulate_to_zarr(root / "other.zarr", weights, bias, 20_000, chunk_rows=5_000, seed=1)
    weights3, bias3 = dist_relu.figure1_truth(3, seed=0)
    dist_relu.simulate_to_zarr(root / "sim3.zarr", weights3, bias3, 5_000, chunk_rows=5_000, seed=0)
    dist_relu.fit_to_zarr(root / "sim.zarr", root / "fit.zarr")
    dist_relu.fit_to_zarr(root / "other.zarr", root / "fit2.zarr", thresholds_from=root / "fit.zarr")
    foreign = zarr.open_group(str(root / "foreign.zarr"), mode="w")
    foreign.create_array("samples", data=np.ones((10, 4), dtype=np.float32))
    return root


@pytest.fixture
def workspace(originals, tmp_path):
    """A directory holding the user's things: samples, fits, a thesis, a CSV, a store dist_relu did not write."""
    for name in ("sim.zarr", "other.zarr", "sim3.zarr", "fit.zarr", "fit2.zarr", "foreign.zarr"):
        shutil.copytree(originals / name, tmp_path / name)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("four years of work\n")
    (tmp_path / "data.csv").write_text("1.0,2.0\n0.0,3.5\n2.5,0.0\n")
    (tmp_path / "work").mkdir()
    shutil.copytree(originals / "foreign.zarr", tmp_path / "work" / "samples.zarr")
    return tmp_path


REFUSED = {
    # name: (command line, where it runs, what the message says)
    "fit over its input": ("fit sim.zarr --out sim.zarr --overwrite", ".", "is the input"),
    "fit inside its input": ("fit sim.zarr --out sim.zarr/fit --overwrite", ".", "lies inside the input"),
    "fit over the directory of its input": ("fit sim.zarr --out . --overwrite", ".", "contains the input"),
    "fit over the working directory": ("fit ../sim.zarr --out ../docs --overwrite", "docs", "working directory"),
    "fit over a user's directory": ("fit sim.zarr --out docs --overwrite", ".", "not an output of dist_relu"),
    "fit over a foreign store": ("fit sim.zarr --out foreign.zarr --overwrite", ".", "not an output of dist_relu"),
    "fit over samples": ("fit sim.zarr --out other.zarr --overwrite", ".", "is a dist_relu samples store"),
    "fit over its update": ("fit other.zarr --update fit.zarr --out fit.zarr --overwrite", ".", "is the input"),
    "fit over its thresholds": ("fit other.zarr --thresholds-from fit.zarr --out fit.zarr --overwrite", ".",
                                "is the input"),
    "checkpoint in the input": ("fit sim.zarr --out new.zarr --checkpoint sim.zarr/ck", ".", "overlaps"),
    "checkpoint over a user's directory": ("fit sim.zarr --out new.zarr --checkpoint docs", ".",
                                           "not a dist_relu checkpoint"),
    "convert over a user's directory": ("convert data.csv --out docs --overwrite", ".", "not an output of dist_relu"),
    "convert over a fit": ("convert data.csv --out fit.zarr --overwrite", ".", "is a dist_relu fit"),
    "convert over its input": ("convert data.csv --out data.csv --overwrite", ".", "is the input"),
    "simulate over a user's directory": ("simulate --n 100 --d 2 --out docs --overwrite", ".",
                                         "not an output of dist_relu"),
    "simulate over a fit": ("simulate --n 100 --d 2 --out fit.zarr --overwrite", ".", "is a dist_relu fit"),
    "merge over a user's directory": ("merge fit.zarr fit2.zarr --out docs --overwrite", ".",
                                      "not an output of dist_relu"),
    "merge over its input": ("merge fit.zarr fit2.zarr --out fit2.zarr --overwrite", ".", "is the input"),
    "demo over a user's store": ("demo --n 1000 --d 2 --workdir work --overwrite", ".", "not an output of dist_relu"),
    "merge of one fit twice": ("merge fit.zarr fit.zarr --out merged.zarr", ".", "counted twice"),
    "update with samples it holds": ("fit sim.zarr --update fit.zarr --out updated.zarr", ".", "counted twice"),
    "an array that is a group": ("fit sim.zarr --array truth --out x.zarr", ".", "'truth' is a group, not an array"),
    "evaluate against another d": ("evaluate fit.zarr --truth sim3.zarr", ".", "the truth has 3 coordinates"),
    "existing output": ("fit sim.zarr --out fit.zarr", ".", "exists; choose another --out or pass --overwrite"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_commands_change_nothing(workspace, case):
    command, where, message = REFUSED[case]
    before = digest(workspace)
    result = run(*command.split(), cwd=workspace / where)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert digest(workspace) == before


def test_overwrite_replaces_dist_relus_own_outputs(workspace):
    result = run("fit", "sim.zarr", "--out", "fit2.zarr", "--overwrite", "--method", "truncated", cwd=workspace)
    assert result.returncode == 0, result.stderr
    assert zarr.open_group(str(workspace / "fit2.zarr"), mode="r").attrs["method"] == "truncated"
    assert run("convert", "data.csv", "--out", "other.zarr", "--overwrite", cwd=workspace).returncode == 0
    assert zarr.open_group(str(workspace / "other.zarr"), mode="r")["samples"].shape == (3, 2)
    # A demo refuses its own earlier outputs without --overwrite, and replaces them with it.
    assert run("demo", "--n", 2000, "--d", 2, "--workdir", "run", cwd=workspace).returncode == 0
    assert run("demo", "--n", 2000, "--d", 2, "--workdir", "run", cwd=workspace).returncode == EXIT_BAD_INPUT
    assert run("demo", "--n", 2000, "--d", 2, "--workdir", "run", "--overwrite", cwd=workspace).returncode == 0
    assert sorted(p.name for p in (workspace / "run").iterdir()) == ["fit.zarr", "samples.zarr"]
    assert (workspace / "docs" / "thesis.txt").read_text() == "four years of work\n"


def test_merge_of_pieces_counted_once_is_accepted(workspace):
    result = run("merge", "fit.zarr", "fit2.zarr", "--out", "merged.zarr", cwd=workspace)
    assert result.returncode == 0, result.stderr
    parts = zarr.open_group(str(workspace / "merged.zarr"), mode="r").attrs["parts"]
    assert [part["n_samples"] for part in parts] == [20_000, 20_000]
    assert len({part["fit_id"] for part in parts}) == 2 and len({part["data"] for part in parts}) == 2
    # The merge holds fit.zarr already: merging it in again would count it twice.
    result = run("merge", "merged.zarr", "fit.zarr", "--out", "again.zarr", cwd=workspace)
    assert result.returncode == EXIT_BAD_INPUT and "counted twice" in result.stderr


# ----------------------------------------------------------------------------------------------
# One writer wins
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_samples(tmp_path_factory):
    """Samples whose fit lasts long enough (seconds) for a second writer to arrive during it."""
    path = tmp_path_factory.mktemp("slow") / "sim.zarr"
    weights, bias = dist_relu.figure1_truth(40, seed=3)
    dist_relu.simulate_to_zarr(path, weights, bias, 400_000, chunk_rows=20_000, seed=3)
    return path


@pytest.mark.parametrize("overwrite", [False, True])
def test_of_two_writers_of_one_output_exactly_one_succeeds(slow_samples, tmp_path, overwrite):
    out = tmp_path / "fit.zarr"
    extra = ["--overwrite"] if overwrite else []
    if overwrite:
        dist_relu.fit_to_zarr(slow_samples, out, pilot_rows=1000)  # an earlier fit, to be replaced whole
    first = subprocess.Popen([DIST_RELU, "fit", str(slow_samples), "--out", str(out), "--passes", "2", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / ".fit.zarr.lock").exists(), first, "lock")
    # Paused, so that the second writer surely arrives while the first one writes, however loaded the machine.
    first.send_signal(signal.SIGSTOP)
    try:
        second = run("fit", slow_samples, "--out", out, *extra)
    finally:
        first.send_signal(signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, first_err
    assert second.returncode == EXIT_BAD_INPUT
    assert f"is being written by another dist-relu (process {first.pid} on {socket.gethostname()}" in second.stderr
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["passes"] == 2 and group.attrs["n_samples"] == 400_000  # the first writer's fit, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.zarr"]


def write_lock(path, **record):
    path.write_text(json.dumps({"format": "dist_relu.lock", "token": "elsewhere", **record}))


def test_a_lock_says_who_writes_and_until_when(workspace):
    lock = workspace / ".new.zarr.lock"
    # A writer on another machine (a shared file system), its lease still running: refused.
    write_lock(lock, host="another-host", pid=4242, pid_started=time.time() - 60, expires=time.time() + 600)
    before = digest(workspace)
    result = run("fit", "sim.zarr", "--out", "new.zarr", cwd=workspace)
    assert result.returncode == EXIT_BAD_INPUT and "process 4242 on another-host" in result.stderr
    assert digest(workspace) == before
    # A live writer on this machine (this test's own process): refused.
    import psutil

    write_lock(lock, host=socket.gethostname(), pid=os.getpid(), pid_started=psutil.Process().create_time(),
               expires=time.time() - 1)
    assert run("fit", "sim.zarr", "--out", "new.zarr", cwd=workspace).returncode == EXIT_BAD_INPUT
    # Its lease ran out, or its process is gone (a pid reused by another process counts as gone): taken over.
    for record in ({"host": "another-host", "pid": 4242, "pid_started": 0.0, "expires": time.time() - 1},
                   {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": 12345.0,
                    "expires": time.time() + 600}):
        write_lock(lock, **record)
        (workspace / ".new.zarr.partial-deadbeef").mkdir()  # what the dead writer left
        result = run("fit", "sim.zarr", "--out", "new.zarr", "--overwrite", cwd=workspace)
        assert result.returncode == 0, result.stderr
        assert "took over the lock" in result.stderr and "removed a partial output" in result.stderr
        assert not lock.exists() and not (workspace / ".new.zarr.partial-deadbeef").exists()


def test_a_commit_cut_between_its_moves_is_undone_by_the_next_run(workspace):
    # A hard kill between moving the old output aside and moving the new one in: the old one is put back.
    (workspace / "fit.zarr").rename(workspace / ".fit.zarr.old-0123")
    before = zarr.open_group(str(workspace / ".fit.zarr.old-0123"), mode="r")["covariance"][:]
    result = run("fit", "sim.zarr", "--out", "fit.zarr", cwd=workspace)
    assert result.returncode == EXIT_BAD_INPUT and "exists" in result.stderr
    assert "restored the previous output" in result.stderr
    np.testing.assert_array_equal(zarr.open_group(str(workspace / "fit.zarr"), mode="r")["covariance"][:], before)
    assert not (workspace / ".fit.zarr.old-0123").exists()


# ----------------------------------------------------------------------------------------------
# Checkpoints are bound to the data
# ----------------------------------------------------------------------------------------------


def test_a_checkpoint_refuses_data_replaced_at_the_same_path(workspace):
    assert run("fit", "sim.zarr", "--out", "a.zarr", "--checkpoint", "ck", cwd=workspace).returncode == 0
    shutil.rmtree(workspace / "sim.zarr")
    shutil.copytree(workspace / "other.zarr", workspace / "sim.zarr")  # same shape, dtype and chunks
    before = digest(workspace)
    result = run("fit", "sim.zarr", "--out", "b.zarr", "--checkpoint", "ck", cwd=workspace)
    assert result.returncode == EXIT_BAD_INPUT and "checkpoint ck was made for other data" in result.stderr
    assert digest(workspace) == before


def uncompressed_store(path, values):
    group = zarr.open_group(str(path), mode="w")
    group.create_array("samples", data=values, chunks=(5_000, values.shape[1]), compressors=None,
                       config={"write_empty_chunks": True})


def test_a_checkpoint_refuses_other_data_with_the_same_sizes_and_times(tmp_path):
    """Data rewritten in place with equal sizes and modification times: the thresholds tell them apart."""
    rng = np.random.default_rng(0)
    first = np.maximum(0, rng.standard_normal((20_000, 3))).astype(np.float32)
    second = np.maximum(0, rng.standard_normal((20_000, 3)) + 0.5).astype(np.float32)
    uncompressed_store(tmp_path / "data.zarr", first)
    uncompressed_store(tmp_path / "new.zarr", second)
    assert run("fit", "data.zarr", "--out", "a.zarr", "--checkpoint", "ck", cwd=tmp_path).returncode == 0
    for chunk in (tmp_path / "new.zarr" / "samples" / "c").rglob("*"):
        if chunk.is_file():
            target = tmp_path / "data.zarr" / chunk.relative_to(tmp_path / "new.zarr")
            times = target.stat()
            target.write_bytes(chunk.read_bytes())
            os.utime(target, ns=(times.st_atime_ns, times.st_mtime_ns))
    result = run("fit", "data.zarr", "--out", "b.zarr", "--checkpoint", "ck", cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert "checkpoint ck holds sums counted at other thresholds" in result.stderr
    assert not (tmp_path / "b.zarr").exists()


# ----------------------------------------------------------------------------------------------
# Paths and URLs
# ----------------------------------------------------------------------------------------------


def test_a_file_url_is_a_url_for_every_command(workspace):
    url = f"file://{workspace}/c.zarr"
    assert run("convert", "data.csv", "--out", url, cwd=workspace).returncode == 0
    assert zarr.open_group(str(workspace / "c.zarr"), mode="r")["samples"].shape == (3, 2)
    assert run("fit", f"file://{workspace}/sim.zarr", "--out", f"file://{workspace}/f.zarr").returncode == 0
    assert not (workspace / "file:").exists()


def test_an_object_store_url_never_becomes_a_local_directory(workspace):
    """A URL whose library is missing (gcsfs for gs://) is refused; it never becomes a local path."""
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gcsfs is installed: a gs:// URL would be tried for real (tests/test_s3.py covers object stores)")
    before = digest(workspace)
    for command in (["convert", "data.csv", "--out", "gs://bucket/c.zarr"],
                    ["fit", "sim.zarr", "--out", "gs://bucket/f.zarr"],
                    ["simulate", "--n", "100", "--d", "2", "--out", "gs://bucket/s.zarr"]):
        result = run(*command, cwd=workspace)
        assert result.returncode == EXIT_BAD_INPUT and "gs:// needs a library" in result.stderr, result.stderr
    assert digest(workspace) == before


# ----------------------------------------------------------------------------------------------
# Signals and the environment
# ----------------------------------------------------------------------------------------------


def handles_sigterm(pid):
    """Return whether the process catches SIGTERM yet: its handlers are installed (Linux's /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from Linux's /proc")
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_an_interrupt_during_start_up_prints_one_line(workspace, signal_name):
    process = subprocess.Popen([DIST_RELU, "fit", "sim.zarr", "--out", "new.zarr"], cwd=workspace,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=hangup_as_in_a_terminal)
    wait_for(lambda: handles_sigterm(process.pid), process, "signal handlers")
    process.send_signal(getattr(signal, signal_name))  # while numpy, dask and zarr are still being imported
    _, stderr = process.communicate(timeout=TIMEOUT)
    if process.returncode == 0:
        pytest.skip("the fit finished before the signal landed")  # not seen here: imports take a second
    assert process.returncode == 128 + getattr(signal, signal_name)
    assert len(stderr.strip().splitlines()) == 1 and f"interrupted by {signal_name}" in stderr, stderr
    assert not (workspace / "new.zarr").exists()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from Linux's /proc")
def test_under_nohup_a_hangup_does_not_stop_the_fit(workspace):
    """``nohup dist-relu ...`` starts the command with SIGHUP ignored: it must stay ignored."""
    process = subprocess.Popen([DIST_RELU, "fit", "sim.zarr", "--out", "new.zarr"], cwd=workspace,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for(lambda: handles_sigterm(process.pid), process, "signal handlers")
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stderr
    assert zarr.open_group(str(workspace / "new.zarr"), mode="r").attrs["n_samples"] == 20_000


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupt_of_a_local_cluster_prints_one_line(slow_samples, tmp_path, signal_name):
    """As a terminal's Ctrl-C or a batch system's SIGTERM does: the signal reaches every process of the group."""
    process = subprocess.Popen([DIST_RELU, "fit", str(slow_samples), "--out", str(tmp_path / "fit.zarr"),
                                "--workers", "2", "--passes", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stderr.readline().startswith("scheduler ")
    wait_for(lambda: any(p.name.startswith(".fit.zarr.partial") for p in tmp_path.iterdir()), process, "partial")
    os.killpg(process.pid, getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 128 + getattr(signal, signal_name), stderr
    assert stderr.strip().splitlines() == [f"interrupted by {signal_name}: no output was written; an earlier "
                                           "output is unchanged"]
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_before_distributeds_sync_starts_its_call_logs_nothing(caplog):
    """The race behind a stray traceback after "interrupted by SIGTERM", made to happen.

    ``distributed.utils.sync`` queues its call on the client's event loop and
    waits; interrupted before the loop starts the call, it queues a cancel
    that reads the call's future before it exists, and tornado logs the
    ``NameError`` from the loop's thread. Here the call itself sends the
    signal and holds the loop until the main thread has seen it. (The signal
    can still land just before ``sync`` starts to wait, so each case is tried
    until tornado has logged the error.)
    """
    from distributed.utils import LoopRunner, sync

    from dist_relu.scheduler import _drop_distributed_noise

    def interrupted_sync(loop):
        interrupt_seen = threading.Event()

        def call():  # in the loop's thread, before sync has the call's future
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            assert interrupt_seen.wait(TIMEOUT)
            raise RuntimeError("never started")

        with pytest.raises(KeyboardInterrupt):
            try:
                sync(loop, call)
            finally:
                interrupt_seen.set()
        loop_drained = threading.Event()
        loop.add_callback(loop_drained.set)  # after sync's cancel, if it queued one: the loop has run it
        assert loop_drained.wait(TIMEOUT)

    def logged_name_errors():
        return [record for record in caplog.records if record.exc_info and record.exc_info[0] is NameError]

    def until_tornado_logs_the_error(loop):
        caplog.clear()
        logged.clear()
        for _ in range(50):
            interrupted_sync(loop)
            if logged:
                return logged_name_errors()
        pytest.skip("this version of distributed cancels a call that has not started without an error")

    logged = []

    def spy(record):
        if record.exc_info and record.exc_info[0] is NameError:
            logged.append(record)
        return True

    logger = logging.getLogger("tornado.application")
    filters = list(logger.filters)
    runner = LoopRunner(asynchronous=False)
    runner.start()
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        logger.filters[:] = [spy]  # sees every record first
        assert len(until_tornado_logs_the_error(runner.loop)) == 1  # it reaches the handlers
        _drop_distributed_noise()
        assert until_tornado_logs_the_error(runner.loop) == []
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        runner.stop()
        logger.filters[:] = filters


@pytest.fixture
def small_file_system(tmp_path):
    """Return a mounter of a real tmpfs of a given size (and read-only), unmounted afterwards."""
    mounted = []

    def mount(name, size, read_only=False):
        target = tmp_path / name
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root in a sandbox that allows it): {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def test_a_full_disk_is_an_environment_error_and_leaves_nothing(workspace, small_file_system):
    before = digest(workspace / "sim.zarr")
    for command, size in ((["simulate", "--n", 200_000, "--d", 20], "256k"), (["fit", "sim.zarr"], "32k")):
        small = small_file_system(f"small-{command[0]}", size)
        result = run(*command, "--out", small / "out.zarr", cwd=workspace)
        assert result.returncode == EXIT_ENVIRONMENT, result.stderr
        line, = result.stderr.strip().splitlines()
        assert line == f"error: cannot write {small / 'out.zarr'}: No space left on device"
        assert list(small.iterdir()) == []  # neither the partial store nor the lock
    assert digest(workspace / "sim.zarr") == before


def test_a_read_only_file_system_is_an_environment_error(workspace, small_file_system):
    read_only = small_file_system("ro", "64k", read_only=True)
    result = run("fit", "sim.zarr", "--out", read_only / "fit.zarr", cwd=workspace)
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    line, = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Read-only file system" in line and str(read_only) in line


def test_an_unreachable_scheduler_is_an_environment_error(workspace):
    port = free_port()  # a port nobody listens on
    result = run("fit", "sim.zarr", "--out", "new.zarr", "--scheduler", f"tcp://127.0.0.1:{port}", cwd=workspace,
                 env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"})
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    line, = result.stderr.strip().splitlines()
    assert f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}" in line
    assert not (workspace / "new.zarr").exists()


def test_a_fit_whose_waiting_sums_do_not_fit_memory_is_refused_and_changes_nothing(workspace):
    """Each task fits its share, but the running sums of a wide store would not: refused before any work."""
    import math

    from dist_relu import budget

    threads = budget.memory_share()[1]
    d = 3000 * math.ceil(math.sqrt(threads))  # about 12·d² bytes of running sums: more than 60 MiB a thread
    weights = np.random.default_rng(0).standard_normal((d, 4))  # d coordinates of 4 latents: quick to draw
    dist_relu.simulate_to_zarr(workspace / "wide.zarr", weights, np.full(d, 0.5), 512, chunk_rows=256, seed=0)
    before = digest(workspace)
    result = run("fit", "wide.zarr", "--out", "fit.zarr", "--overwrite", "--memory-per-worker",
                 str(2 * threads * 60 * 2**20), cwd=workspace)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    line, = result.stderr.strip().splitlines()
    assert line.startswith("error: the main pass keeps") and "waiting between tasks" in line
    assert digest(workspace) == before  # the earlier fit it would have replaced is intact
