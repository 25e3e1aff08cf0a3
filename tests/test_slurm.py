"""The SLURM deployment files, run end to end on a real one-node SLURM cluster (the ``slurm`` fixture).

- ``sbatch deploy/slurm/fit.sbatch``, with its documented variables, fits a
  simulated store: one srun task runs the scheduler, two run workers; the fit
  equals a local one bit for bit.
- ``deploy/slurm/fit_jobqueue.py`` does the same through dask-jobqueue's
  SLURMCluster, its workers being SLURM jobs.
- A time limit: SLURM ends a fit.sbatch job mid-fit (state TIMEOUT, SIGTERM to
  every process of the job); dist-relu says so in one line and leaves no
  partial output; the same command submitted again resumes from the
  checkpoint, reads only the chunks of the unfinished segments, and gives the
  same fit.

The cluster runs the jobs as root on this machine, with the submitting
environment (sbatch's default ``--export=ALL``), so the jobs import this
checkout (``test_a_job_imports_this_checkout``). The SLURM tests take about two
minutes here (90 s of it the time-limit test), plus the fixture's install and
start (6-15 s); where SLURM cannot be installed or started they are skipped
with the reason.

The last tests check, without SLURM, what its runs found in dist-relu itself:
a repeated interrupt during the cleanup, and a scheduler stopped a moment
before the client (about 30 s).
"""

import collections
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from dist_relu.checkpoint import Checkpoint

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = ROOT / "deploy" / "slurm"
FIT_SBATCH = SLURM_DIR / "fit.sbatch"
JOBQUEUE_SCRIPT = SLURM_DIR / "fit_jobqueue.py"
READS_PRELOAD = Path(__file__).resolve().parent / "slurm_reads.py"
BIN = Path(sys.executable).parent
# One scheduler task and two worker tasks on the one node, in place of the file's 3 nodes of 4 tasks.
FIT_RESOURCES = ("--nodes=1", "--ntasks-per-node=3", "--mem-per-cpu=1G", "--time=10")
STATISTIC_NAMES = ("statistics", "counts", "value-problems", "moments")


def job_env(slurm, **variables):
    """The submitting environment: this Python's programs first on PATH, this checkout first on PYTHONPATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return slurm.env(env, **{name: str(value) for name, value in variables.items()})


def fit_sbatch_env(slurm, tmp_path, samples, out, **extra):
    """fit.sbatch's documented variables, everything under tmp_path."""
    (tmp_path / "scratch").mkdir(exist_ok=True)
    return job_env(slurm, SAMPLES=samples, OUT=out, SCHED_FILE=tmp_path / "scheduler.json", MEMORY_LIMIT="1GiB",
                   LOCAL_DIR=tmp_path / "scratch", **extra)


def local_fit(samples, out):
    """The same `dist-relu fit` on this machine's threads, as the reference."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([str(BIN / "dist-relu"), "fit", str(samples), "--out", str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def assert_same_fit(path, reference):
    fitted, expected = zarr.open_group(str(path), mode="r"), zarr.open_group(str(reference), mode="r")
    names = sorted(expected.array_keys())
    assert sorted(fitted.array_keys()) == names
    for name in names:
        np.testing.assert_array_equal(fitted[name][...], expected[name][...], err_msg=name)
    for key in ("n_samples", "column_block", "split_every", "pilot_rows"):
        assert fitted.attrs[key] == expected.attrs[key], key


def leftovers(out):
    """What an interrupted writer of ``out`` could leave beside it: its partial store and its lock."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def job_log(path):
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def tail(text, lines=40):
    return "\n".join(text.splitlines()[-lines:])


def test_a_job_imports_this_checkout(slurm, tmp_path):
    job = slurm.sbatch("--time=2", f"--output={tmp_path / 'job-%j.out'}", "--wrap",
                       "python -c 'import dist_relu; print(dist_relu.__file__)'; command -v dist-relu",
                       env=job_env(slurm), cwd=tmp_path)
    record = slurm.wait_for_job(job, timeout=120)
    output = job_log(tmp_path / f"job-{job}.out")
    assert record["JobState"] == "COMPLETED", output
    module, program = output.split()
    assert Path(module) == ROOT / "dist_relu" / "__init__.py"
    assert Path(program) == BIN / "dist-relu"


def test_fit_sbatch_equals_a_local_fit(slurm, simulated, tmp_path):
    samples = simulated(200_000, 20)[0]
    out = tmp_path / "fit.zarr"
    job = slurm.sbatch(*FIT_RESOURCES, str(FIT_SBATCH), env=fit_sbatch_env(slurm, tmp_path, samples, out),
                       cwd=tmp_path)
    record = slurm.wait_for_job(job, timeout=300)
    log = job_log(tmp_path / f"dist-relu-fit-{job}.out")  # the file's own --output, in the submit directory
    assert record["JobState"] == "COMPLETED", tail(log)
    assert f"wrote {out}" in log
    assert log.count("Register worker") == 2, tail(log)  # the two worker tasks joined the scheduler task
    assert not (tmp_path / "scheduler.json").exists()  # removed at exit, with the workers and the scheduler
    assert (tmp_path / "fit.zarr.checkpoint").is_dir()  # CHECKPOINT's default, $OUT.checkpoint
    assert_same_fit(out, local_fit(samples, tmp_path / "reference.zarr"))
    assert leftovers(out) == []


def test_fit_jobqueue_equals_a_local_fit(slurm, simulated, tmp_path):
    # Not imported here: importing dask_jobqueue sets a SIGINT handler of its own (sys.exit) in this process.
    if importlib.util.find_spec("dask_jobqueue") is None:
        pytest.skip("dask-jobqueue is not installed (pip install '.[test]')")
    samples = simulated(200_000, 20)[0]
    out = tmp_path / "fit.zarr"
    # The documented first step, "edit slurm/jobqueue.yaml": jobs this one node can hold, logs and scratch here.
    config = yaml.safe_load((SLURM_DIR / "jobqueue.yaml").read_text())
    settings = config["jobqueue"]["slurm"]
    settings.update({"cores": 1, "processes": 1, "memory": "2GB", "walltime": "00:10:00",
                     "log-directory": str(tmp_path / "dask-logs"), "local-directory": str(tmp_path / "scratch")})
    settings["scheduler-options"]["dashboard_address"] = ":0"
    (tmp_path / "jobqueue.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(JOBQUEUE_SCRIPT), str(samples), str(out), "--jobs", "2",
         "--config", str(tmp_path / "jobqueue.yaml"), "--wait-timeout", "120"],
        env=job_env(slurm), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, tail(result.stderr)
    assert "#SBATCH --export=ALL" in result.stderr  # the worker job's script, printed first
    assert f"wrote {out}" in result.stdout + result.stderr

    # The workers were SLURM jobs: each wrote its log under its job id, and was cancelled when the fit ended.
    jobs = sorted({int(p.stem.rsplit("-", 1)[1]) for p in (tmp_path / "dask-logs").glob("dist-relu-worker-*.err")})
    assert jobs, "no worker job wrote a log"
    started = 0
    for job in jobs:
        record = slurm.wait_for_job(job, timeout=120)
        assert record["JobName"] == "dist-relu-worker"
        assert record["JobState"] in ("CANCELLED", "COMPLETED"), record
        started += "Start worker at" in job_log(tmp_path / "dask-logs" / f"dist-relu-worker-{job}.err")
    assert started >= 1
    assert_same_fit(out, local_fit(samples, tmp_path / "reference.zarr"))
    assert leftovers(out) == []


def chunk_reads(folder, store):
    """{row chunk: reads} of the chunks of ``store`` that the workers read (tests/slurm_reads.py's logs)."""
    reads = collections.Counter()
    for log in folder.glob("reads-*.txt"):
        for line in log.read_text().splitlines():
            root, key = line.rsplit(" ", 1)
            if Path(root) == Path(store) and key.startswith("samples/c/"):
                reads[int(key.split("/")[2])] += 1
    return reads


def complete_segments(checkpoint):
    """The segments whose every partial sum is saved in ``checkpoint``, and the number of blocks saved."""
    (scope,) = [Checkpoint(checkpoint).child(p.name) for p in Path(checkpoint).glob("thresholds-*")]
    done = [scope.done(name) for name in STATISTIC_NAMES]
    return {index[0] for index in set.intersection(*done)}, sum(map(len, done))


def test_a_time_limit_ends_the_fit_cleanly_and_a_resubmitted_job_resumes(slurm, simulated, tmp_path):
    """SLURM's own time-limit enforcement stops fit.sbatch mid-fit; the same command again finishes it.

    The worker preload slurm_reads.py adds 0.6 s to each read of a chunk, so
    that this store (200 chunks of 2,000 rows) takes about a minute on the two
    workers. Once the checkpoint holds a finished segment, the job's time limit
    is lowered to what it has used already (``scontrol update TimeLimit=0``):
    slurmctld's next periodic check (every 30 s) finds it exhausted and ends
    the job as it ends any job that runs out of time (SIGTERM to all its
    processes, SIGKILL after KillWait, state TIMEOUT). That keeps the test to a
    minute or so, where a 1-minute ``--time`` would need a fit of two.
    """
    rows = 2_000
    samples = simulated(400_000, 16, chunk_rows=rows)[0]
    n_chunks = 400_000 // rows
    out, checkpoint, reads = tmp_path / "fit.zarr", tmp_path / "fit.zarr.checkpoint", tmp_path / "reads"
    reads.mkdir()
    env = fit_sbatch_env(slurm, tmp_path, samples, out, DIST_RELU_TEST_READS=reads, DIST_RELU_TEST_READ_DELAY=0.6,
                         DASK_DISTRIBUTED__WORKER__PRELOAD=f'["{READS_PRELOAD}"]')

    first = slurm.sbatch(*FIT_RESOURCES, str(FIT_SBATCH), env=env, cwd=tmp_path)
    log_path = tmp_path / f"dist-relu-fit-{first}.out"
    deadline = time.monotonic() + 180
    while not (list(checkpoint.glob("thresholds-*")) and complete_segments(checkpoint)[0]):
        assert slurm.job(first)["JobState"] in ("PENDING", "RUNNING"), tail(job_log(log_path))
        assert time.monotonic() < deadline, "the fit finished no segment in 180 s:\n" + tail(job_log(log_path))
        time.sleep(0.2)
    slurm.run("scontrol", "update", f"JobId={first}", "TimeLimit=0")
    record = slurm.wait_for_job(first, timeout=120)
    log = job_log(log_path)

    # SLURM ended the job for its time limit, and the fit was stopped by SLURM's SIGTERM, not finished.
    assert record["JobState"] == "TIMEOUT" and record["Reason"] == "TimeLimit", (record, tail(log))
    assert f"Time limit exhausted for JobId={first}" in (slurm.root / "log" / "slurmctld.log").read_text()
    assert f"JOB {first} ON {slurm.node} CANCELLED AT" in log and "DUE TO TIME LIMIT" in log
    assert log.count("interrupted by SIGTERM: no output was written; an earlier output is unchanged") == 1, tail(log)
    # Nor the client's tracebacks, from the scheduler stopped with it (the workers' own logs are in the file too).
    assert "distributed.client - ERROR" not in log and "AllExit" not in log, tail(log)
    assert record["ExitCode"] == "143:0"  # the script exits with the fit's own code, 128 + SIGTERM
    # No partial output, no lock: only the checkpoint, with some segments finished and some not.
    assert not out.exists() and leftovers(out) == [], leftovers(out)
    complete, blocks_saved = complete_segments(checkpoint)
    split_every = 8  # dist-relu fit's default --split-every
    n_segments = -(-n_chunks // split_every)
    assert 0 < len(complete) < n_segments, f"{len(complete)} of {n_segments} segments finished"

    # The same command again: it resumes from the checkpoint and reads only what was not finished.
    for log_file in reads.iterdir():
        log_file.unlink()
    second = slurm.sbatch(*FIT_RESOURCES, str(FIT_SBATCH), env=env, cwd=tmp_path)
    record = slurm.wait_for_job(second, timeout=300)
    log = job_log(tmp_path / f"dist-relu-fit-{second}.out")
    assert record["JobState"] == "COMPLETED", tail(log)
    attributes = zarr.open_group(str(out), mode="r").attrs
    assert attributes["split_every"] == split_every
    assert attributes["checkpoint"]["blocks_resumed"] == blocks_saved
    pilot_chunks = set(range(-(-attributes["pilot_rows"] // rows)))  # read again, once, for the thresholds
    unfinished = set(range(n_segments)) - complete
    expected = {c for s in unfinished for c in range(s * split_every, min((s + 1) * split_every, n_chunks))}
    read = chunk_reads(reads, samples)
    assert set(read.values()) == {1}, {chunk: n for chunk, n in read.items() if n != 1}
    assert set(read) == expected | pilot_chunks
    assert len(read) < n_chunks
    assert_same_fit(out, local_fit(samples, tmp_path / "reference.zarr"))
    assert leftovers(out) == []


# ---------------------------------------------------------------------------------------------------------------
# What the SLURM runs found, checked without SLURM (these run wherever the suite runs)


def test_a_repeated_interrupt_during_the_cleanup_leaves_no_partial_output_and_no_lock(tmp_path, monkeypatch, request):
    """SLURM sends SIGTERM twice at a time limit; the second one must not cut the cleanup short."""
    import signal

    from dist_relu import storage

    out = tmp_path / "out.zarr"
    remove_quietly, read_lock = storage._remove_quietly, storage._read_lock
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C's KeyboardInterrupt
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    repeated = []

    def interrupt_again(function):
        def wrapper(*args):
            repeated.append(function.__name__)
            os.kill(os.getpid(), signal.SIGINT)
            return function(*args)
        return wrapper

    with pytest.raises(KeyboardInterrupt):
        with storage.atomic_output(out, storage.FIT_FORMAT) as partial:
            zarr.create_group(str(partial))
            # From here on, each removal of the partial store and each look at the lock brings another interrupt.
            monkeypatch.setattr(storage, "_remove_quietly", interrupt_again(remove_quietly))
            monkeypatch.setattr(storage, "_read_lock", interrupt_again(read_lock))
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.undo()
    assert {"_remove_quietly", "_read_lock"} <= set(repeated)
    assert list(tmp_path.iterdir()) == []


def dask_cluster(tmp_path, env):
    """A `dask scheduler` and a `dask worker` of two processes, as fit.sbatch starts them; return both processes."""
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--scheduler-file", str(scheduler_file),
                                  "--port", "0", "--dashboard-address", ":0"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (scheduler_file.exists() and scheduler_file.stat().st_size):
        assert time.monotonic() < deadline and scheduler.poll() is None, "the scheduler did not start"
        time.sleep(0.1)
    workers = subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file),
                                "--nthreads", "1", "--nworkers", "2"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return scheduler, workers, yaml.safe_load(scheduler_file.read_text())["address"]


@pytest.mark.parametrize("signal_too", [True, False], ids=["scheduler-and-client-signalled", "scheduler-lost"])
def test_a_scheduler_stopped_with_the_client_ends_the_fit_as_interrupted(tmp_path, simulated, signal_too):
    """At a time limit SLURM stops the scheduler and the client together; the client may see the scheduler go first.

    Its SIGTERM, a moment later, still ends it as interrupted (exit 143). A
    scheduler lost with no signal to the client is an error of the environment
    (exit 4) that names it. Either way no partial output remains, and there is
    no traceback.
    """
    import signal

    samples = simulated(400_000, 16, chunk_rows=2_000)[0]
    (tmp_path / "reads").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "DASK_DISTRIBUTED__WORKER__PRELOAD": f'["{READS_PRELOAD}"]', "DIST_RELU_TEST_READS": str(tmp_path / "reads"),
           "DIST_RELU_TEST_READ_DELAY": "0.3"}
    scheduler, workers, address = dask_cluster(tmp_path, env)
    if signal_too:
        # The client's SIGTERM is sent once the scheduler has exited, however long that takes on a loaded
        # machine; the grace for it must outlast that (the default, 2 s, is for signals sent together).
        env = {**env, "DIST_RELU_LOST_SCHEDULER_GRACE": "60"}
    out, checkpoint = tmp_path / "fit.zarr", tmp_path / "fit.checkpoint"
    try:
        fit = subprocess.Popen([str(BIN / "dist-relu"), "fit", str(samples), "--out", str(out), "--scheduler", address,
                                "--checkpoint", str(checkpoint)], env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list(checkpoint.glob("thresholds-*/counts/*.npy")):
            assert time.monotonic() < deadline and fit.poll() is None, "the fit saved nothing in 120 s"
            time.sleep(0.1)
        scheduler.send_signal(signal.SIGTERM)
        if signal_too:
            scheduler.wait(timeout=30)  # the scheduler is gone first; the client's own signal comes after
            fit.send_signal(signal.SIGTERM)
        _, stderr = fit.communicate(timeout=120)
    finally:
        for process in (scheduler, workers):
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=60)
    lines = [line for line in stderr.splitlines() if not line.startswith("scheduler ")]
    if signal_too:
        assert fit.returncode == 128 + signal.SIGTERM, stderr
        assert lines == ["interrupted by SIGTERM: no output was written; an earlier output is unchanged"], stderr
    else:
        assert fit.returncode == 4, stderr
        assert len(lines) == 1 and lines[0].startswith(f"error: lost the dask scheduler at {address}"), stderr
    assert not out.exists() and leftovers(out) == []


def test_without_slurm_and_root_the_fixture_gives_its_reason(monkeypatch):
    from tests import slurm_cluster

    monkeypatch.setattr(slurm_cluster, "missing_programs", lambda: ["slurmctld", "munged"])
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    with pytest.raises(slurm_cluster.Unavailable, match=r"slurmctld, munged missing\) and installing it needs root"):
        slurm_cluster.ensure_installed()
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: None)
    with pytest.raises(slurm_cluster.Unavailable, match="there is no apt-get"):
        slurm_cluster.ensure_installed()
