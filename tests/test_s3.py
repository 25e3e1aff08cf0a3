"""dist_relu against a real S3-protocol server: moto's standalone server on a loopback port, through s3fs.

Everything runs as a user would run it: `dist-relu` processes, and `dask worker`
processes that read the store themselves, all finding the endpoint and the
credentials in their environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), as on a real cluster.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import storage

from .clusters import command_line_cluster, count_tasks_done, free_port, wait_for
from .conftest import assert_same_fit, counting_chunk_reads

s3fs = pytest.importorskip("s3fs", reason="the S3 tests need s3fs (pip install -e '.[test]')")
pytest.importorskip("moto.server", reason="the S3 tests need moto's server (pip install -e '.[test]')")

from distributed import Client  # noqa: E402

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

DIST_RELU = str(Path(sys.executable).with_name("dist-relu"))
BUCKET = "dist-relu-test"
TIMEOUT = 300


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free loopback port, with one bucket; what a process needs to reach it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    variables = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "dist-relu-test",
                 "AWS_SECRET_ACCESS_KEY": "dist-relu-test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"moto's server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"moto's server did not answer in 120 s: {log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        fs = s3fs.S3FileSystem(key=variables["AWS_ACCESS_KEY_ID"], secret=variables["AWS_SECRET_ACCESS_KEY"],
                               endpoint_url=endpoint,
                               use_listings_cache=False)
        fs.mkdir(BUCKET)
        # The environment of every process started here: this one's, without other AWS or fsspec settings.
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
        yield SimpleNamespace(fs=fs, variables=variables, env={**clean, **variables},
                              options={"key": variables["AWS_ACCESS_KEY_ID"],
                                       "secret": variables["AWS_SECRET_ACCESS_KEY"], "endpoint_url": endpoint})
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def url(name):
    return f"s3://{BUCKET}/{name}"


def open_group(s3, where):
    return zarr.open_group(where, mode="r", storage_options=s3.options)


def names(s3, prefix):
    """The names directly under ``prefix`` in the bucket, hidden ones (locks, partial stores) included."""
    return sorted(path.rsplit("/", 1)[-1] for path in s3.fs.ls(f"{BUCKET}/{prefix}", detail=False))


def digest(s3, prefix):
    """Every object under ``prefix``: name, size, ETag and time, so that any write or removal changes it."""
    return sorted((name, info["size"], info["ETag"], str(info["LastModified"]))
                  for name, info in s3.fs.find(f"{BUCKET}/{prefix}", detail=True).items())


def run(s3, *args, cwd=None):
    return subprocess.run([DIST_RELU, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
                          env=s3.env, cwd=cwd)


def run_ok(s3, *args, cwd=None):
    result = run(s3, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def in_this_process(s3, monkeypatch):
    """Give this process (until the test ends) the environment of the processes started here."""
    for name in os.environ:
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3.variables.items():
        monkeypatch.setenv(name, value)


SETTINGS = {"split_every": 2, "pilot_rows": 1000}
OPTIONS = ("--split-every", "2", "--pilot-rows", "1000")


@pytest.fixture(scope="module")
def big(s3, simulated, tmp_path_factory):
    """Samples of 80 row chunks in the bucket, and their fit on disk: a fit of them lasts seconds."""
    path, _, _ = simulated(400_000, 16, seed=4, chunk_rows=5_000)
    s3.fs.put(str(path), f"{BUCKET}/big/sim.zarr", recursive=True)
    reference = tmp_path_factory.mktemp("big") / "fit.zarr"
    dist_relu.fit_to_zarr(path, reference, **SETTINGS)
    return SimpleNamespace(url=url("big/sim.zarr"), n_chunks=80, fit=zarr.open_group(str(reference), mode="r"))


def test_simulate_convert_and_fit_on_s3_equal_the_same_on_disk(s3, simulated, tmp_path):
    run_ok(s3, "simulate", "--n", 100_000, "--d", 5, "--seed", 3, "--chunk-rows", 25_000, "--out", url("a/sim.zarr"),
           cwd=tmp_path)
    path, _, _ = simulated(100_000, 5, seed=3, chunk_rows=25_000)
    samples = zarr.open_group(str(path), mode="r")["samples"][:]
    np.testing.assert_array_equal(open_group(s3, url("a/sim.zarr"))["samples"][:], samples)
    np.save(tmp_path / "x.npy", samples[:1000])
    run_ok(s3, "convert", "x.npy", "--out", url("a/conv.zarr"), cwd=tmp_path)
    np.testing.assert_array_equal(open_group(s3, url("a/conv.zarr"))["samples"][:], samples[:1000])
    run_ok(s3, "fit", url("a/sim.zarr"), "--out", url("a/fit.zarr"), cwd=tmp_path)
    # Nothing was written in the working directory (an s3:// URL never becomes a local path).
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]
    dist_relu.fit_to_zarr(path, tmp_path / "fit.zarr")
    assert_same_fit(open_group(s3, url("a/fit.zarr")), zarr.open_group(str(tmp_path / "fit.zarr"), mode="r"))
    # The reported failure: the commit's move left both the fit and its partial store. Now nothing is beside them.
    assert names(s3, "a") == ["conv.zarr", "fit.zarr", "sim.zarr"]


def test_refusals_on_s3_write_and_delete_nothing(s3, simulated, tmp_path):
    path, _, _ = simulated(20_000, 4, seed=0, chunk_rows=5_000)
    dist_relu.fit_to_zarr(path, tmp_path / "fit.zarr")
    s3.fs.put(str(path), f"{BUCKET}/b/sim.zarr", recursive=True)
    s3.fs.put(str(tmp_path / "fit.zarr"), f"{BUCKET}/b/fit.zarr", recursive=True)
    foreign = zarr.open_group(url("b/foreign.zarr"), mode="w", storage_options=s3.options)
    foreign.create_array("samples", shape=(10, 4), dtype="f4")[:] = 1.0  # a store dist_relu did not write
    buckets, before = s3.fs.ls(""), digest(s3, "b")
    for command, message in (
        (["fit", url("b/sim.zarr"), "--out", url("b/foreign.zarr"), "--overwrite"], "not an output of dist_relu"),
        (["fit", url("b/sim.zarr"), "--out", url("b/sim.zarr/fit"), "--overwrite"], "lies inside the input"),
        (["simulate", "--n", 100, "--d", 2, "--out", url("b/fit.zarr"), "--overwrite"], "is a dist_relu fit"),
        (["fit", url("b/sim.zarr"), "--out", url("b/fit.zarr")], "exists; choose another --out or pass --overwrite"),
        (["fit", url("b/sim.zarr"), "--out", "s3://no-such-bucket/fit.zarr"], "creates no buckets"),
    ):
        result = run(s3, *command)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (command, result.stderr)
    assert digest(s3, "b") == before and s3.fs.ls("") == buckets


def test_a_fit_killed_mid_pass_resumes_from_its_s3_checkpoint_reading_only_unfinished_segments(s3, big, monkeypatch):
    out, checkpoint = url("c/fit.zarr"), url("c/fit.checkpoint")
    # One thread, so that segments finish one by one and the kill lands part way.
    process = subprocess.Popen([DIST_RELU, "fit", big.url, "--out", out, "--checkpoint", checkpoint, *OPTIONS],
                               env={**s3.env, "DASK_SCHEDULER": "synchronous"}, stderr=subprocess.PIPE)

    def saved(name):
        return len(s3.fs.glob(f"{BUCKET}/c/fit.checkpoint/thresholds-*/{name}/*.npy"))

    n_segments = big.n_chunks // SETTINGS["split_every"]
    wait_for(lambda: saved("counts") >= n_segments // 4, process, "checkpoint blocks")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not s3.fs.exists(f"{BUCKET}/c/fit.zarr")
    counted = {name: saved(name) for name in ("statistics", "counts", "value-problems", "moments")}
    assert 0 < counted["counts"] < n_segments, counted
    complete = set.intersection(*(
        {path.rsplit("/", 1)[-1] for path in s3.fs.glob(f"{BUCKET}/c/fit.checkpoint/thresholds-*/{name}/*.npy")}
        for name in ("statistics", "counts", "value-problems", "moments")))

    # Resume in this process, with the same environment, counting each read of a chunk of the samples.
    in_this_process(s3, monkeypatch)
    with counting_chunk_reads(zarr.storage.FsspecStore) as reads:
        attributes = dist_relu.fit_to_zarr(big.url, out, checkpoint=checkpoint, **SETTINGS)

    assert attributes["checkpoint"]["blocks_resumed"] == sum(counted.values())
    # Each chunk of an unfinished segment is read once; so is chunk 0, which holds the pilot's rows, either way.
    assert set(reads.values()) == {1}
    pilot_chunk_saved = any(name.startswith("0.") for name in complete)
    assert len(reads) == (n_segments - len(complete)) * SETTINGS["split_every"] + pilot_chunk_saved
    assert_same_fit(open_group(s3, out), big.fit)
    # The killed writer's lock and partial store were cleaned by the resumed run.
    assert names(s3, "c") == ["fit.checkpoint", "fit.zarr"]


def test_update_and_merge_of_s3_fits_equal_the_same_on_disk(s3, simulated, tmp_path):
    paths = [simulated(60_000, 4, seed=seed, chunk_rows=20_000)[0] for seed in (1, 2)]
    for k, path in enumerate(paths):
        s3.fs.put(str(path), f"{BUCKET}/d/part{k}.zarr", recursive=True)
    part0, part1, fit0, fit1 = (url(f"d/{name}") for name in ("part0.zarr", "part1.zarr", "fit0.zarr", "fit1.zarr"))
    run_ok(s3, "fit", part0, "--out", fit0)
    run_ok(s3, "fit", part1, "--thresholds-from", fit0, "--out", fit1)
    run_ok(s3, "merge", fit0, fit1, "--out", url("d/merged.zarr"))
    run_ok(s3, "fit", part1, "--update", fit0, "--out", url("d/updated.zarr"))
    # The data's identity (the ETags of its objects) finds samples the fit holds already.
    result = run(s3, "fit", part0, "--update", fit0, "--out", url("d/twice.zarr"))
    assert result.returncode == 2 and "counted twice" in result.stderr, result.stderr

    local = {name: tmp_path / f"{name}.zarr" for name in ("fit0", "fit1", "merged", "updated")}
    dist_relu.fit_to_zarr(paths[0], local["fit0"])
    dist_relu.fit_to_zarr(paths[1], local["fit1"], thresholds_from=local["fit0"])
    dist_relu.merge_fits([local["fit0"], local["fit1"]], local["merged"])
    dist_relu.fit_to_zarr(paths[1], local["updated"], update=local["fit0"])
    for name in ("merged", "updated"):
        got = open_group(s3, url(f"d/{name}.zarr"))
        assert_same_fit(got, zarr.open_group(str(local[name]), mode="r"))
        assert got.attrs["n_samples"] == 120_000
    assert names(s3, "d") == ["fit0.zarr", "fit1.zarr", "merged.zarr", "part0.zarr", "part1.zarr", "updated.zarr"]


def test_an_overwrite_interrupted_while_writing_leaves_the_previous_s3_output_intact(s3, big, simulated, tmp_path):
    path, _, _ = simulated(20_000, 4, seed=0, chunk_rows=5_000)
    dist_relu.fit_to_zarr(path, tmp_path / "previous.zarr")
    s3.fs.put(str(tmp_path / "previous.zarr"), f"{BUCKET}/e/fit.zarr", recursive=True)
    before = digest(s3, "e")
    process = subprocess.Popen([DIST_RELU, "fit", big.url, "--out", url("e/fit.zarr"), "--overwrite", *OPTIONS],
                               env={**s3.env, "DASK_SCHEDULER": "synchronous"}, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: s3.fs.glob(f"{BUCKET}/e/.fit.zarr.partial-*"), process, "the new store being written")
    process.send_signal(signal.SIGTERM)  # what a batch system sends at a time limit
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr
    assert digest(s3, "e") == before
    assert names(s3, "e") == ["fit.zarr"]  # no partial store, no lock
    assert_same_fit(open_group(s3, url("e/fit.zarr")), zarr.open_group(str(tmp_path / "previous.zarr"), mode="r"))


def test_a_commit_cut_short_on_s3_cannot_be_opened_and_the_next_writer_finishes_it(s3, big, simulated, tmp_path,
                                                                                    monkeypatch):
    # The state a hard kill in the middle of an object store's commit leaves: the marker, the complete new
    # store still hidden, and at the output the old store with its root metadata removed and some new objects.
    old, new = tmp_path / "old.zarr", tmp_path / "new.zarr"
    dist_relu.fit_to_zarr(simulated(20_000, 4, seed=0, chunk_rows=5_000)[0], old)
    dist_relu.fit_to_zarr(simulated(20_000, 4, seed=1, chunk_rows=5_000)[0], new)
    s3.fs.put(str(old), f"{BUCKET}/f/fit.zarr", recursive=True)
    s3.fs.put(str(new), f"{BUCKET}/f/.fit.zarr.partial-0123", recursive=True)
    s3.fs.pipe(f"{BUCKET}/f/.fit.zarr.commit-0123", b"")
    s3.fs.rm(f"{BUCKET}/f/fit.zarr/zarr.json")
    s3.fs.copy(f"{BUCKET}/f/.fit.zarr.partial-0123/covariance", f"{BUCKET}/f/fit.zarr/covariance", recursive=True)
    with pytest.raises(FileNotFoundError):
        open_group(s3, url("f/fit.zarr"))  # a reader finds no fit, never a mixture of two
    # Refused without --overwrite: the output exists (the commit will be finished).
    result = run(s3, "fit", big.url, "--out", url("f/fit.zarr"))
    assert result.returncode == 2 and "exists" in result.stderr, result.stderr

    in_this_process(s3, monkeypatch)
    with pytest.raises(RuntimeError, match="a failure after the lock"):
        with storage.atomic_output(url("f/fit.zarr"), storage.FIT_FORMAT, overwrite=True):
            raise RuntimeError("a failure after the lock")
    assert_same_fit(open_group(s3, url("f/fit.zarr")), zarr.open_group(str(new), mode="r"))
    assert names(s3, "f") == ["fit.zarr"]
    assert sorted(s3.fs.find(f"{BUCKET}/f/fit.zarr")) == sorted(
        path.replace(str(new), f"{BUCKET}/f/fit.zarr") for path in map(str, new.rglob("*")) if os.path.isfile(path))


def test_workers_read_s3_themselves_and_a_worker_killed_mid_fit_changes_nothing(s3, big, tmp_path):
    # A worker fetching a result from the dead one retries the connection for this long (30 s by default).
    environment = {**s3.variables, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}
    with command_line_cluster(tmp_path / "cluster", environment=environment) as address, \
            Client(address, timeout=30) as client:
        pids = client.run(os.getpid)
        process = subprocess.Popen([DIST_RELU, "fit", big.url, "--out", url("g/fit.zarr"), *OPTIONS,
                                    "--scheduler", address],
                                   env=s3.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Kill once the main pass has counted 10 of its 80 row chunks.
        wait_for(lambda: count_tasks_done(client) >= 10, process, "10 chunks counted")
        victim = sorted(pids)[0]
        os.kill(pids[victim], signal.SIGKILL)
        _, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, stderr
        with pytest.raises(ProcessLookupError):
            os.kill(pids[victim], 0)
    assert_same_fit(open_group(s3, url("g/fit.zarr")), big.fit)
    assert names(s3, "g") == ["fit.zarr"]


def test_an_unreachable_endpoint_is_an_environment_error(s3):
    # A loopback port where nothing listens; one attempt, since botocore would retry for seconds.
    env = {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    result = subprocess.run([DIST_RELU, "fit", url("a/sim.zarr"), "--out", url("h/fit.zarr")], capture_output=True,
                            text=True, timeout=TIMEOUT, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 4 and len(lines) == 1 and "Could not connect to the endpoint" in lines[0], result.stderr
