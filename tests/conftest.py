import collections
import contextlib
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

import dist_relu


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    """Return a factory of simulated stores on disk, cached per argument set: ``(path, W, b)``."""
    cache = {}
    root = tmp_path_factory.mktemp("simulated")

    def make(n, d, seed=0, kappa=1.0, bias="clipped", chunk_rows=50_000):
        key = (n, d, seed, kappa, bias, chunk_rows)
        if key not in cache:
            weights, b = dist_relu.figure1_truth(d, kappa=kappa, seed=seed, bias=bias)
            path = root / f"n{n}-d{d}-s{seed}-k{kappa}-{bias}-c{chunk_rows}.zarr"
            dist_relu.simulate_to_zarr(path, weights, b, n, chunk_rows=chunk_rows, seed=seed)
            cache[key] = (path, weights, b)
        return cache[key]

    return make


def digest(root):
    """Return the digest of every file and directory name under ``root``, hidden ones included."""
    sha = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        sha.update(str(path.relative_to(root)).encode())
        if path.is_file():
            sha.update(path.read_bytes())
    return sha.hexdigest()


def errors(estimator, weights, bias):
    return estimator.model_.errors(weights @ weights.T, bias)


def assert_same_fit(got, expected):
    """Assert that two stored fits (Zarr groups) hold the same estimates and sums, bit for bit."""
    for name in ("covariance", "bias", "scale", "counts", "sum_sq_positive"):
        np.testing.assert_array_equal(got[name][:], expected[name][:], err_msg=name)


@pytest.fixture
def relu_data():
    """A small in-memory data set with correlated coordinates and mixed-sign biases."""
    rng = np.random.default_rng(11)
    weights = rng.standard_normal((6, 6)) / np.sqrt(6)
    bias = np.array([0.5, 0.0, -0.3, 1.0, 0.2, -0.1])
    return np.maximum(0, rng.standard_normal((20_000, 6)) @ weights.T + bias).astype(np.float32)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real one-node SLURM cluster (tests/slurm_cluster.py), started once for the session and stopped after.

    SLURM and munge are installed from Debian's packages when missing (as root,
    with apt-get; about 15 s here). Where that fails, or the daemons do not
    come up, the tests using this fixture are skipped with the reason.
    """
    from tests.slurm_cluster import SlurmCluster, Unavailable, ensure_installed

    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        SLURM_SECONDS["install"] = ensure_installed()
        start = time.monotonic()
        cluster.start()
        SLURM_SECONDS["start"] = time.monotonic() - start
    except Unavailable as why:
        pytest.skip(f"no SLURM cluster here: {why}")
    try:
        yield cluster
    finally:
        cluster.stop()


SLURM_SECONDS = {}


def pytest_terminal_summary(terminalreporter):
    if SLURM_SECONDS:
        started = f"started in {SLURM_SECONDS['start']:.1f} s" if "start" in SLURM_SECONDS else "not started"
        terminalreporter.write_line(f"SLURM for tests/test_slurm.py: installed in {SLURM_SECONDS['install']:.0f} s "
                                    f"(0: it was there), {started}")


@contextlib.contextmanager
def counting_chunk_reads(store_class, array="samples"):
    """Yield a Counter of the reads of each chunk of ``array`` through ``store_class`` (a zarr store type)."""
    reads = collections.Counter()
    original_get = store_class.get

    async def counting_get(self, key, prototype, byte_range=None):
        if key.startswith(f"{array}/c/"):
            reads[key] += 1
        return await original_get(self, key, prototype, byte_range)

    store_class.get = counting_get
    try:
        yield reads
    finally:
        store_class.get = original_get
