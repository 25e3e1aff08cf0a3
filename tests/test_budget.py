"""Column blocks from a memory budget: the model bounds what the tasks hold, and the fit follows it."""

import tracemalloc

import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import budget, compiled, graph, kernels


def peak_bytes(function, *args):
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("c", [64, 256, 512])
def test_the_model_bounds_what_the_inversion_and_the_count_tasks_hold(c):
    rng = np.random.default_rng(c)
    counts = rng.integers(20_000, 40_000, (c, c))
    a = rng.normal(0, 0.5, c)
    inversion = peak_bytes(kernels.covariance_block, counts, 100_000, a, a, np.ones(c), np.ones(c),
                           np.arange(c), np.arange(c))
    rows = 65_536
    chunk = np.abs(rng.standard_normal((rows, c))).astype(np.float32)
    chunk_pass = compiled.chunk_pass(chunk, np.full(c, 0.5))
    compiled.popcount_counts(chunk_pass.indicators[:4, :1], chunk_pass.indicators[:4, :1])  # compiled outside
    counting = peak_bytes(compiled.popcount_counts, chunk_pass.indicators, chunk_pass.indicators)
    passing = peak_bytes(compiled.chunk_pass, chunk, np.full(c, 0.5))
    model = budget.task_sizes(c, c, budget.StoredChunk(rows, c, 4), split_every=8)
    assert inversion <= model.inverting and counting <= model.counting and passing <= model.passing, (
        inversion, counting, passing, model)
    assert max(model) == budget.task_bytes(c, c, budget.StoredChunk(rows, c, 4), split_every=8)
    # A segment's running sum: its inputs (8 count blocks and the sum before) and what it allocates.
    for dtype in (np.uint16, kernels.count_dtype(rows)):  # partial counts come in count_dtype (uint32 here)
        parts = [counts[None].astype(dtype) for _ in range(8)]
        summing = peak_bytes(graph._running_sum, counts[None], parts, None, "counts", (1, 0, 0))
        held = summing + sum(part.nbytes for part in parts) + counts.nbytes
        # Beyond the model: arrays' headers, the list, and numpy's buffer for casting a part to int64.
        assert held <= model.summing + 4096 + 16 * np.getbufsize(), (dtype, held, model.summing)
        if dtype == kernels.count_dtype(rows):
            assert held > 0.9 * model.summing  # the model is for partials of the chunk's count type, and tight
    # ...and not by a wide margin for the inversion of a large block, which the model is for.
    if c == 512:
        assert inversion > model.inverting / 4


def test_the_model_bounds_the_pass_over_a_column_block_of_a_wider_chunk():
    rows, stored_columns, c = 65_536, 300, 100
    chunk = np.abs(np.random.default_rng(1).standard_normal((rows, stored_columns))).astype(np.float32)
    compiled.chunk_pass(chunk[:64], np.full(c, 0.5))  # numba's first call allocates for itself
    small = 128 * c + 4096  # per-column sums and arguments, which the model leaves out
    # A chunk of whole rows: the block's columns are read in place, nothing is copied.
    in_place = peak_bytes(compiled.chunk_pass, chunk, np.full(c, 0.5), None, 2 * c)
    model = budget.task_sizes(stored_columns, c, budget.StoredChunk(rows, stored_columns, 4), 8).passing
    assert in_place <= model - chunk.nbytes + small < chunk[:, :c].nbytes, (in_place, model)
    # A view of the block (as a rechunk may hand it over) is copied to contiguous rows, and the model counts it.
    copied = peak_bytes(compiled.chunk_pass, chunk[:, :c], np.full(c, 0.5))
    model = budget.task_sizes(2 * stored_columns, c, budget.StoredChunk(rows, stored_columns, 4), 8).passing
    assert chunk[:, :c].nbytes <= copied <= model - chunk.nbytes + small, (copied, model)


def test_the_widest_block_that_fits_is_chosen_and_too_little_memory_is_refused():
    chunk = budget.StoredChunk(65_536, 100, 4)  # stored in column chunks of 100
    share = budget.task_bytes(4096, 256, chunk, 8)
    chosen = budget.column_block_for(4096, chunk, 8, share, threads=2)
    assert chosen == 256 and budget.task_bytes(4096, chosen, chunk, 8) <= share
    # More memory, wider blocks, up to what keeps 4 blocks per thread in the triangle (d = 4096: 4 blocks of 1280).
    assert budget.column_block_for(4096, chunk, 8, 2**40, threads=2) == 1280
    # Small d: one block.
    assert budget.column_block_for(100, chunk, 8, 2**40, threads=2) == 100
    with pytest.raises(ValueError, match="more memory"):
        budget.column_block_for(4096, chunk, 8, chunk.decoded_bytes, threads=2)


@pytest.mark.slow
def test_a_small_budget_narrows_the_blocks_and_changes_nothing_else(tmp_path, simulated):
    path, _, _ = simulated(60_000, 600, seed=2, chunk_rows=2_000)  # small chunks: the inversion's task is the largest
    wide = dist_relu.ReLUGaussian().fit(path)
    assert wide.settings_["column_block"] == 512 and wide.settings_["memory"]["threads"] >= 1
    narrow_share = budget.task_bytes(600, 192, budget.StoredChunk(2_000, 600, 4), 8)
    narrow = dist_relu.ReLUGaussian(memory_per_worker=2 * 2 * (narrow_share + 1)).fit(path)
    assert narrow.settings_["column_block"] < 512
    assert narrow.settings_["memory"]["task_bytes"] <= narrow.settings_["memory"]["share_per_thread"]
    np.testing.assert_array_equal(narrow.counts_, wide.counts_)
    np.testing.assert_allclose(narrow.covariance_, wide.covariance_, rtol=1e-9, atol=1e-12)


def test_the_command_line_takes_sizes_and_refuses_bad_ones(tmp_path, simulated):
    from click.testing import CliRunner

    from dist_relu.cli import main

    path, _, _ = simulated(20_000, 6, seed=1, chunk_rows=5_000)
    runner = CliRunner()
    result = runner.invoke(main, ["fit", str(path), "--out", str(tmp_path / "f.zarr"), "--memory-per-worker", "2GB",
                                  "--json"])
    assert result.exit_code == 0, result.output
    assert zarr.open_group(str(tmp_path / "f.zarr")).attrs["memory"]["share_per_thread"] > 0
    for option, value in (("--memory-per-worker", "lots"), ("--column-block", "wide"), ("--column-block", "0")):
        result = runner.invoke(main, ["fit", str(path), "--out", str(tmp_path / "g.zarr"), option, value])
        assert result.exit_code == 2 and value in result.output


def test_a_pass_whose_waiting_sums_do_not_fit_the_other_half_of_memory_is_refused():
    """Each task fits its share, but the running sums and a segment's partial counts would not fit what is left."""
    import math

    import dask.array as da

    from dist_relu import pipeline

    threads = budget.memory_share()[1]
    d = 3000 * math.ceil(math.sqrt(threads))  # about 12·d² bytes wait: more than 60 MiB per thread
    samples = da.zeros((100_000, d), chunks=(256, d), dtype=np.float32)  # lazy: planning reads nothing
    share = 60 * 2**20
    with pytest.raises(ValueError, match="waiting between tasks.*--split-every, now 8"):
        pipeline.plan_layout(samples, "auto", memory_per_worker=2 * threads * share, split_every=8)
    layout = pipeline.plan_layout(samples, "auto", memory_per_worker=32 * threads * share, split_every=8)
    blocks = layout.column_chunks
    counted = sum(blocks[i] * blocks[j] for i in range(len(blocks)) for j in range(i, len(blocks)))
    assert layout.memory["waiting_bytes"] == counted * (8 + 8 * 2)  # uint16 partial counts of 256 rows
    assert layout.memory["waiting_bytes"] <= layout.memory["share_per_thread"] * threads


def test_the_model_bounds_a_chunks_read_by_its_stored_size(simulated):
    """A read holds the stored bytes, the decoded chunk and its copy; the fit sizes it from the store's listing."""
    from dist_relu import pipeline

    path, _, _ = simulated(80_000, 200, seed=3, chunk_rows=40_000)
    chunk_files = [p for p in (path / "samples").rglob("*") if p.is_file() and p.name != "zarr.json"]
    stored = zarr.open_array(str(path), path="samples", mode="r")
    given = pipeline.Input.open(str(path))
    assert given.largest_object == max(p.stat().st_size for p in chunk_files)
    chunk = budget.StoredChunk(40_000, 200, 4, given.largest_object)
    assert given.largest_object < 0.95 * chunk.decoded_bytes  # zstd keeps less than the decoded chunk here
    stored[:40_000]  # zarr's first read sets up its codec pipeline
    held = peak_bytes(stored.__getitem__, slice(40_000, 80_000))
    assert 0.9 * chunk.read_bytes <= held <= chunk.read_bytes + 2**16, (held, chunk.read_bytes)
    # The fit's budget is made from that listing: its largest task here is the read.
    fitted = dist_relu.ReLUGaussian().fit(str(path))
    assert fitted.settings_["memory"]["task_bytes"] == budget.task_bytes(200, 200, chunk, 8) == chunk.read_bytes


def test_the_model_grows_with_the_cut_points_as_their_count_blocks_do():
    """K cut points: K bits a value, count blocks K² as large; the model bounds a count task of K·c indicators."""
    rows, c, k = 4096, 64, 3
    rng = np.random.default_rng(2)
    chunk = np.abs(rng.standard_normal((rows, c))).astype(np.float32)
    cuts = np.sort(rng.uniform(0, 1.5, (c, k)), axis=1)
    chunk_pass = compiled.chunk_pass(chunk, cuts)
    dtype = kernels.count_dtype(rows)
    compiled.popcount_counts(chunk_pass.indicators[:4, :1], chunk_pass.indicators[:4, :1], dtype)  # compiled outside
    counting = peak_bytes(compiled.popcount_counts, chunk_pass.indicators, chunk_pass.indicators, dtype)
    one, three = (budget.task_sizes(c, c, budget.StoredChunk(rows, c, 4), 8, cuts=cuts_) for cuts_ in (1, k))
    assert counting + chunk_pass.indicators.nbytes * 2 <= three.counting + 4096  # (the array's header)
    assert counting > 0.9 * (three.counting - 2 * chunk_pass.indicators.nbytes)  # the counts block, K²c² of b bytes
    assert three.summing == k * k * one.summing and three.reading == one.reading
    assert budget.waiting_bytes((c, c), 8, rows, cuts=k) == k * k * budget.waiting_bytes((c, c), 8, rows)
    # Wider cut-point counts narrow the block the same share allows.
    share = budget.task_bytes(4096, 1280, budget.StoredChunk(8192, 4096, 4), 8)
    assert budget.column_block_for(4096, budget.StoredChunk(8192, 4096, 4), 8, share, 2, cuts=3) < \
        budget.column_block_for(4096, budget.StoredChunk(8192, 4096, 4), 8, share, 2)
