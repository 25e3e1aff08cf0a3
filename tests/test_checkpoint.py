"""Checkpoints: a fit killed half way resumes from the partial sums it saved, and gives the same fit."""

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
from dask.callbacks import Callback
import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import graph, io
from dist_relu.checkpoint import Checkpoint

from .conftest import counting_chunk_reads

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

BIN = Path(sys.executable).parent


def test_saved_blocks_load_back_and_unfinished_writes_are_not_listed(tmp_path):
    checkpoint = Checkpoint.open(tmp_path / "ck", {"source": "x"})
    block = np.arange(12.0).reshape(1, 3, 4)
    checkpoint.child("scope").save("counts", (2, 0, 1), block)
    (tmp_path / "ck" / "scope" / "counts" / ".2.0.2.npy.1234abcd").write_bytes(b"half a file")
    again = Checkpoint(tmp_path / "ck").child("scope")
    assert again.done("counts") == {(2, 0, 1)}
    np.testing.assert_array_equal(again.load("counts", (2, 0, 1)), block)
    assert again.resumed == [1]


def test_a_checkpoint_made_for_other_data_is_refused(tmp_path):
    Checkpoint.open(tmp_path / "ck", {"source": "a.zarr", "shape": [10, 2]})
    with pytest.raises(io.InputError, match=r"differs in: shape, source"):
        Checkpoint.open(tmp_path / "ck", {"source": "b.zarr", "shape": [10, 3]})


def test_a_fit_refuses_a_checkpoint_of_another_chunking(tmp_path, relu_data):
    dist_relu.ReLUGaussian().fit(relu_data, checkpoint=tmp_path / "ck")
    with pytest.raises(io.InputError, match="row_chunks"):
        dist_relu.ReLUGaussian().fit(da.from_array(relu_data, chunks=(3000, 6)), checkpoint=tmp_path / "ck")


def test_saved_sums_are_bit_identical_and_loading_them_reads_no_data(tmp_path):
    rng = np.random.default_rng(0)
    x = da.from_array(np.maximum(0, rng.standard_normal((5000, 7))), chunks=(300, 4))
    thresholds = np.full(7, 0.3)
    passes = graph.chunk_passes(x, thresholds)
    plain = dask.compute(graph.column_statistics(passes, 3), graph.coexceedance_counts(passes, 3))
    checkpoint = Checkpoint.open(tmp_path / "ck", {"source": "x"})
    saved = dask.compute(graph.column_statistics(passes, 3, checkpoint=checkpoint),
                         graph.coexceedance_counts(passes, 3, checkpoint=checkpoint))
    loaded = (graph.column_statistics(passes, 3, checkpoint=checkpoint),
              graph.coexceedance_counts(passes, 3, checkpoint=checkpoint))
    # Every segment's running sum is saved: computing the reloaded sums loads the last ones and runs nothing else.
    ran = collections.Counter()

    class CountTasks(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            ran[key[0].rsplit("-", 1)[0] if isinstance(key, tuple) else "other"] += 1

    with CountTasks():
        reloaded = dask.compute(*loaded)
    assert not [name for name in ran if "chunk-" in name or "coexceedance" in name], ran
    assert sum(count for name, count in ran.items() if "statistics-running" in name) == 2
    assert sum(count for name, count in ran.items() if "counts-running" in name) == 3
    for a, b, c in zip(plain, saved, reloaded):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # 17 row chunks in segments of 3: 6 segments; 2 column blocks; the counts' lower block is never made.
    assert len(checkpoint.done("statistics")) == 6 * 2
    assert len(checkpoint.done("counts")) == 6 * 3


def saved_blocks(checkpoint, name):
    return list(checkpoint.glob(f"thresholds-*/{name}/*.npy"))


def fit_killed_a_quarter_way(path, out, checkpoint, n_segments, *options):
    """Run ``dist-relu fit`` with a checkpoint on one thread (segments finish one by one) and SIGKILL it once a
    quarter of the segments' counts are saved; check that it died so and left no output."""
    process = subprocess.Popen(
        [str(BIN / "dist-relu"), "fit", str(path), "--out", str(out), "--checkpoint", str(checkpoint), *options],
        env={**os.environ, "DASK_SCHEDULER": "synchronous"}, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(saved_blocks(checkpoint, "counts")) < n_segments // 4 and process.poll() is None:
        assert time.monotonic() < deadline, "the fit saved no blocks in 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert not out.exists()


def test_a_fit_killed_half_way_resumes_and_reads_only_what_was_not_saved(tmp_path):
    n, d, rows, split_every, pilot_rows = 2_000_000, 32, 10_000, 2, 1000
    weights, b = dist_relu.figure1_truth(d, seed=3)
    path = tmp_path / "s.zarr"
    dist_relu.simulate_to_zarr(path, weights, b, n, chunk_rows=rows, seed=3)
    settings = {"split_every": split_every, "pilot_rows": pilot_rows}
    reference = tmp_path / "reference.zarr"
    dist_relu.fit_to_zarr(str(path), reference, **settings)

    out, checkpoint = tmp_path / "fit.zarr", tmp_path / "fit.checkpoint"
    n_segments = -(-n // rows) // split_every
    fit_killed_a_quarter_way(path, out, checkpoint, n_segments, "--split-every", str(split_every), "--pilot-rows",
                             str(pilot_rows))
    counted = {name: len(saved_blocks(checkpoint, name)) for name in ("statistics", "counts", "value-problems", "moments")}
    assert 0 < counted["counts"] < n_segments, counted

    # Resume, counting each read of a chunk of the samples.
    (main,) = [Checkpoint(checkpoint).child(p.name) for p in checkpoint.glob("thresholds-*")]
    complete = set.intersection(*(main.done(name) for name in ("statistics", "counts", "value-problems", "moments")))
    with counting_chunk_reads(zarr.storage.LocalStore) as reads:
        attributes = dist_relu.fit_to_zarr(str(path), out, checkpoint=checkpoint, **settings)

    assert attributes["checkpoint"]["blocks_resumed"] == sum(counted.values())
    # Each chunk of an unfinished segment is read once; so is chunk 0, which holds the pilot's rows, either way.
    assert pilot_rows <= rows and set(reads.values()) == {1}
    unfinished = n_segments - len(complete)
    assert len(reads) == unfinished * split_every + any(index[0] == 0 for index in complete)
    resumed, expected = zarr.open_group(str(out), mode="r"), zarr.open_group(str(reference), mode="r")
    for name in ("counts", "covariance", "bias", "scale", "sum_sq_positive", "n_zero"):
        np.testing.assert_array_equal(resumed[name][:], expected[name][:], err_msg=name)


def test_a_fit_with_cut_points_killed_half_way_resumes_to_the_same_bits_and_refuses_other_cut_points(tmp_path):
    """Cut points from the pilot are bound to the checkpoint as the thresholds are: a resumed fit gives the bits of
    an uninterrupted one, and sums counted at other cut points are refused before anything is written."""
    from .conftest import digest

    n, d, rows, split_every, cuts = 1_000_000, 16, 5_000, 2, 3
    rng = np.random.default_rng(4)
    weights, b = rng.standard_normal((d, 3)), np.maximum(0, rng.standard_normal(d))
    path = tmp_path / "s.zarr"
    dist_relu.simulate_to_zarr(path, weights, b, n, chunk_rows=rows, seed=4)
    data = digest(path)
    reference = tmp_path / "reference.zarr"
    dist_relu.fit_to_zarr(str(path), reference, split_every=split_every, cuts=cuts)

    out, checkpoint = tmp_path / "fit.zarr", tmp_path / "fit.checkpoint"
    n_segments = -(-n // rows) // split_every
    fit_killed_a_quarter_way(path, out, checkpoint, n_segments, "--split-every", str(split_every), "--cuts", str(cuts))
    (scope,) = checkpoint.glob("thresholds-*")
    assert scope.name.endswith(f"-cuts-{cuts}") and (scope / "cut_points.npy").exists()
    assert 0 < len(saved_blocks(checkpoint, "counts")) < n_segments

    attributes = dist_relu.fit_to_zarr(str(path), out, checkpoint=checkpoint, split_every=split_every, cuts=cuts)
    assert attributes["checkpoint"]["blocks_resumed"] > 0
    resumed, expected = zarr.open_group(str(out), mode="r"), zarr.open_group(str(reference), mode="r")
    for name in ("cut_points", "cut_counts", "counts", "covariance", "correlation_se", "bias", "scale"):
        np.testing.assert_array_equal(resumed[name][:], expected[name][:], err_msg=name)

    # Sums said to be counted at other cut points: refused, nothing written, the data and the fit untouched.
    bound = np.load(scope / "cut_points.npy")
    np.save(scope / "cut_points.npy", np.where(np.isfinite(bound), bound * 1.01, bound))
    before = digest(out)
    with pytest.raises(io.InputError, match="other cut points"):
        dist_relu.fit_to_zarr(str(path), tmp_path / "again.zarr", checkpoint=checkpoint, split_every=split_every,
                              cuts=cuts)
    assert not (tmp_path / "again.zarr").exists()
    assert digest(out) == before and digest(path) == data
