"""Graph building: which kernel runs on which blocks, and how partials reduce.

Dask only; every number is computed by a kernel of the math modules (``kernels.py``,
``compiled.py``, ``polychoric.py``, …), and nothing here computes: each function takes dask arrays and
returns dask arrays.

Shapes (docs/design.md §5): samples are chunked in row chunks ``r`` and column blocks
``I``. The fused pass of each (row chunk, column block) reads the chunk once and
makes its ``compiled.ChunkPass`` (one task per row chunk for all its blocks when
chunks hold whole rows): statistics ``(d_I, 4)``, value checks
``(d_I, 2)`` and bit-packed indicators. Statistics are summed over row chunks
in segments of ``split_every`` chunks, each adding to the running sum of the
segment before (``sum_over_rows``). Counts are ``(d_I, d_J)`` partials per
(row chunk, block pair ``I ≤ J``), summed the same way; the lower block
triangle is the upper one transposed, so only ``B(B+1)/2`` block pairs are
counted.
"""

import functools
import operator

import dask.array as da
import numpy as np
from dask import delayed
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import compiled, kernels, latent, polychoric, separable, sgd, uncertainty


def _statistics_partial(chunk_pass):
    return chunk_pass.statistics[None]


def _value_problems_partial(chunk_pass):
    return chunk_pass.problems[None]


def _moments_partial(chunk_pass):
    return chunk_pass.moments[None]


def _coexceedance_partial(pass_i, pass_j, kernel):
    # Blockwise hands a diagonal pair the same object twice, so count_block sees
    # one indicator array on both sides and counts its triangle only.
    kernel = kernel if isinstance(kernel, str) else compiled.COUNT_KERNELS[int(kernel)]
    return compiled.count_block(pass_i.indicators, pass_j.indicators, pass_i.rows, kernel)[None]  # kernels.count_dtype


def _count_kernel_index(first_pass, rows):
    d_i = first_pass.indicators.shape[0]
    return np.int64(compiled.COUNT_KERNELS.index(compiled.choose_count_kernel(d_i, d_i, rows)))


def _estimates_block(statistics, exponents, method):
    bias, scale, status = kernels.fit_coordinates(statistics, method, exponents)
    return np.stack([bias, scale, status], axis=1)


def _largest_values_partial(chunk):
    return kernels.chunk_largest_values(chunk)[None]


def _nonfinite_partial(block):
    return kernels.nonfinite_per_row(block)[:, None]


def _with_rows(keep):
    """Blockwise arguments that add the row mask ``keep`` (index ``r``), if there is one."""
    return () if keep is None else (keep, "r")


def _scalar_index(value):
    """Blockwise index of a scalar argument: a lazy 0-d array is a dependency, a number is not."""
    return "" if isinstance(value, da.Array) else None


def finite_row_mask(samples):
    """Return the lazy ``(n,)`` boolean of rows without NaN or ±inf, one task per row chunk.

    The task sees the whole row chunk (all column blocks concatenated), so a
    row is dropped from every block alike.
    """
    return da.blockwise(kernels.finite_rows, "r", samples, "ri", concatenate=True, dtype=bool,
                        token="finite-rows")


def _running_sum(previous, parts, checkpoint, name, index):
    # Counts arrive in the narrowest type that holds a chunk's (kernels.count_dtype); they are summed in int64,
    # part by part into one array: the task holds its inputs and one block more (budget.task_bytes).
    total = np.array(parts[0], dtype=np.int64 if np.issubdtype(parts[0].dtype, np.integer) else parts[0].dtype)
    for part in parts[1:]:
        total += part
    if previous is not None:
        total += previous
    return total if checkpoint is None else checkpoint.save(name, index, total)


def _saved_block(checkpoint, name, index):
    return checkpoint.load(name, index)


def sum_over_rows(partials, split_every, name, checkpoint=None, groups=None):
    """Return the lazy sum over axis 0 of ``partials``, which has one slot per row chunk.

    The row chunks are taken in segments of ``split_every`` consecutive
    chunks, and each block's sum runs through the segments in order: the task
    of a segment adds its chunks' partials to the running sum the task of the
    segment before it made. What waits between tasks is then one running sum
    and the partials of the segments being counted, whatever the number of
    rows (a tree would keep up to ``split_every − 1`` sums waiting at each of
    its levels, ``8·d²/2`` bytes each for the counts). The segments' chunks are
    counted in parallel; only the additions are in sequence.

    With a ``checkpoint.Checkpoint``, each block of a running sum is saved
    under ``name`` as soon as it is made, and a rerun starts from the last one
    saved, so the reads before it are culled from the graph. The order of
    summation is the same with or without a checkpoint, so a resumed fit
    equals an uninterrupted one bit for bit.

    With ``groups``, the (non-decreasing) group ``0 … G−1`` of each row
    chunk, the result is the ``G`` groups' sums stacked on a new axis 0,
    each group's segments a running sum of their own.
    """
    if any(size != 1 for size in partials.chunks[0]):
        raise ValueError("sum_over_rows needs one slot per row chunk on axis 0")
    n_slots = partials.numblocks[0]
    grouped = groups is not None
    groups = np.asarray(groups) if grouped else np.zeros(n_slots, dtype=np.int64)
    # Segments never cross a group's edge: a segment's chunks are consecutive chunks of one group.
    group_starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    group_ends = np.r_[group_starts[1:], n_slots]
    done = checkpoint.done(name) if checkpoint is not None else set()
    label = None if checkpoint is None else (checkpoint.url, checkpoint.scope, sorted(done))
    running = f"{name}-running-{tokenize(partials.name, split_every, label, grouped and groups.tolist())}"
    layer, last_segments, segment = {}, [], 0
    for first, end in zip(group_starts, group_ends):
        for start in range(first, end, split_every):
            for block in np.ndindex(*partials.numblocks[1:]):
                index = (segment, *block)
                if index in done:
                    layer[(running, *index)] = (_saved_block, checkpoint, name, index)
                else:
                    previous = None if start == first else (running, segment - 1, *block)
                    parts = [(partials.name, slot, *block) for slot in range(start, min(start + split_every, end))]
                    layer[(running, *index)] = (_running_sum, previous, parts, checkpoint, name, index)
            segment += 1
        last_segments.append(segment - 1)
    graph = HighLevelGraph.from_collections(running, layer, dependencies=[partials])
    sums = da.Array(graph, running, chunks=((1,) * segment, *partials.chunks[1:]), meta=partials._meta)
    return sums[last_segments] if grouped else sums[-1]


def _per_column(values, column_chunks, default, dtype):
    """Return ``values`` (d, …), numpy or dask, or ``default`` (d,) if None, as dask in ``column_chunks`` of rows."""
    if isinstance(values, da.Array):
        return values if values.chunks[0] == column_chunks else values.rechunk({0: column_chunks})
    values = np.full(sum(column_chunks), default, dtype=dtype) if values is None else np.asarray(values, dtype=dtype)
    return da.from_array(values, chunks=(column_chunks,) + values.shape[1:])


def chunk_passes(samples, thresholds=None, keep=None, column_chunks=None, exponents=None):
    """Return one lazy ``compiled.ChunkPass`` per (row chunk, column block): the fused pass at ``thresholds``.

    The column blocks are ``column_chunks`` (default: ``samples``' own). When
    ``samples`` is stored in chunks of whole rows, each block's task takes
    its columns straight from the row chunk: no rechunk, no copy.
    ``thresholds`` (``(d,)``, numpy, or dask chunked as the column blocks)
    default to ``+inf`` (no indicator set), for the statistics alone; as
    ``(d, K)`` they are ``K`` cut points per column, ``K`` indicator bits a
    value (``compiled.chunk_pass``). With
    ``keep`` (a row mask), only the kept rows count. The blocks are not
    arrays: only ``column_statistics``, ``value_problems`` and
    ``coexceedance_counts`` take them. Build them once and give them to
    each: a read then feeds one fused task per block, which dask keeps apart
    (it has several consumers) rather than repeating it in every count task.
    ``exponents`` (``(d,)``, numpy or dask; 0 by default) are the units
    ``2**e`` of the statistics' sums (``column_exponents``).
    """
    column_chunks = samples.chunks[1] if column_chunks is None else tuple(column_chunks)
    thresholds = _per_column(thresholds, column_chunks, np.inf, np.float64)
    exponents = _per_column(exponents, column_chunks, 0, np.int64)
    if samples.numblocks[1] == 1 and len(column_chunks) > 1:
        return _column_block_passes(samples, thresholds, keep, column_chunks, exponents)
    if column_chunks != samples.chunks[1]:
        samples = samples.rechunk({1: column_chunks})
    rows = _with_rows(keep) or (None, None)
    return da.blockwise(
        compiled.chunk_pass, "ri", samples, "ri", thresholds, "ik"[:thresholds.ndim], *rows, 0, None,
        exponents, "i", concatenate=True, dtype=object, token="chunk-pass", meta=np.empty((0, 0), dtype=object),
    )


def _column_block_passes(samples, thresholds, keep, column_chunks, exponents):
    """``chunk_passes`` of ``samples`` in whole-row chunks: one task per row chunk passes all its blocks.

    Task ``r`` of the row layer makes the ``ChunkPass`` of each column block
    of chunk ``r``, in place; task ``(r, i)`` takes block ``i``'s. The chunk
    thus has one reader, which a cluster's scheduler runs where the chunk was
    read: a chunk does not travel between workers, its bit-packed indicators
    (``1/32`` of a float32 chunk) do.
    """
    keep_name = None if keep is None else keep.name
    token = tokenize(samples.name, thresholds.name, keep_name, column_chunks, exponents.name)
    name, row_name = f"chunk-pass-{token}", f"row-chunk-pass-{token}"
    first_columns = [int(first) for first in np.cumsum((0,) + column_chunks[:-1])]
    block_thresholds = [(thresholds.name, i) + (0,) * (thresholds.ndim - 1) for i in range(len(column_chunks))]
    block_exponents = [(exponents.name, i) for i in range(len(column_chunks))]
    rows_layer = {
        (row_name, r): (_row_chunk_passes, (samples.name, r, 0), block_thresholds,
                        None if keep is None else (keep.name, r), first_columns, block_exponents)
        for r in range(samples.numblocks[0])
    }
    layer = {(name, r, i): (operator.getitem, (row_name, r), i)
             for r in range(samples.numblocks[0]) for i in range(len(column_chunks))}
    dependencies = [samples, thresholds, exponents] + ([] if keep is None else [keep])
    row_passes = da.Array(HighLevelGraph.from_collections(row_name, rows_layer, dependencies=dependencies), row_name,
                          chunks=(samples.chunks[0],), meta=np.empty(0, dtype=object))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[row_passes])
    return da.Array(graph, name, chunks=(samples.chunks[0], column_chunks), meta=np.empty((0, 0), dtype=object))


def _row_chunk_passes(chunk, thresholds, keep, first_columns, exponents):
    """Return the ``ChunkPass`` of each column block of a row chunk (block ``i`` from ``first_columns[i]``)."""
    return tuple(compiled.chunk_pass(chunk, t, keep, first, e) for t, first, e in zip(thresholds, first_columns,
                                                                                      exponents))


def _per_column_sums(passes, partial, width, dtype, name, split_every, checkpoint=None, groups=None):
    """Return the lazy ``(d, width)`` sum over row chunks of ``partial``'s per-chunk ``(d_I, width)`` arrays.

    With ``groups`` (``sum_over_rows``), the ``(G, d, width)`` sums of each group.
    """
    partials = da.blockwise(
        partial, "rik", passes, "ri",
        new_axes={"k": width}, adjust_chunks={"r": 1},
        dtype=dtype, token=f"chunk-{name}", meta=np.empty((0, 0, 0), dtype=dtype),
    )
    return sum_over_rows(partials, split_every, name, checkpoint, groups)


def column_statistics(passes, split_every=8, checkpoint=None, groups=None):
    """Return the lazy ``(d, 4)`` sufficient statistics ``(n0, n1, S1, S2)`` from ``chunk_passes``.

    With ``groups``, the group of each row chunk, the ``(G, d, 4)``
    statistics of each group. Memory: one ``(d_I, 4)`` float64 array per
    row chunk and column block; ``split_every`` of them per reduction task.
    """
    return _per_column_sums(passes, _statistics_partial, 4, np.float64, "statistics", split_every, checkpoint,
                            groups)


def positive_moments(passes, split_every=8, checkpoint=None):
    """Return the lazy ``(d, 2)`` sums ``Σ x³``, ``Σ x⁴`` of the positives from ``chunk_passes`` (the model check)."""
    return _per_column_sums(passes, _moments_partial, 2, np.float64, "moments", split_every, checkpoint)


def value_problems(passes, split_every=8, checkpoint=None):
    """Return lazy ``(d, 2)`` counts of negative and of non-finite values per column (of the kept rows)."""
    return _per_column_sums(passes, _value_problems_partial, 2, np.int64, "value-problems", split_every, checkpoint)


def _count_rows(keep):
    return np.array([np.count_nonzero(keep)])


def rows_kept(keep, split_every=8, checkpoint=None):
    """Return the lazy 0-d count of the rows ``keep`` keeps."""
    partials = keep.map_blocks(_count_rows, chunks=((1,) * keep.numblocks[0],), dtype=np.int64, token="count-rows")
    return sum_over_rows(partials, split_every, "rows-kept", checkpoint)


def coordinate_estimates(statistics, method="censored", exponents=None):
    """Return lazy ``(bias, scale, status)``: one vectorised solve per column block.

    ``exponents`` (``(d,)``; 0 by default) are the units ``2**e`` of the
    statistics' sums; the estimates are in the data's units.
    """
    exponents = _per_column(exponents, statistics.chunks[0], 0, np.int64)
    solved = da.blockwise(
        _estimates_block, "ik", statistics, "ik", exponents, "i", method, None,
        adjust_chunks={"k": 3}, dtype=np.float64, token=f"fit-coordinates-{method}",
    )
    return solved[:, 0], solved[:, 1], solved[:, 2].astype(np.int8)


def pilot_cut_points(pilot, thresholds, cuts, column_chunks, checkpoint=None):
    """Return the lazy ``(d, cuts)`` cut points of ``kernels.cut_points`` from the ``pilot`` rows, per column block.

    Each block's task takes the pilot's row chunks of its columns as they
    are (the main pass holds them too), never a copy of them joined. With a
    ``checkpoint``, the cut points, whole, must equal those its partial sums
    were counted at (``Checkpoint.bind``): a resumed fit never mixes counts
    at other cut points.
    """
    pilot = pilot.rechunk({1: column_chunks})
    thresholds = _per_column(thresholds, column_chunks, 0.0, np.float64)
    points = da.blockwise(kernels.cut_points, "ik", pilot, "ri", thresholds, "i", cuts, None, new_axes={"k": cuts},
                          concatenate=False, dtype=np.float64, token="cut-points")
    if checkpoint is None:
        return points
    return points.rechunk({0: -1}).map_blocks(_bound, "cut_points", checkpoint, dtype=np.float64,
                                              meta=np.empty((0, 0)), token="bound-cut-points").rechunk(
        {0: column_chunks})


def _bound(values, name, checkpoint):
    checkpoint.bind(name, values)
    return values


def threshold_counts(cut_counts, cut_points, thresholds):
    """Return the lazy ``(d, d)`` co-exceedances of the thresholds, from the ``(K·d, K·d)`` counts of every cut point.

    Each coordinate's threshold is one of its ``(d, K)`` ``cut_points``
    (``kernels.cut_points``): its row and column ``p·K + a``, ``a`` the
    number of its cut points below the threshold. One task per block of
    ``cut_counts``.
    """
    cuts = cut_points.shape[1]
    blocks = tuple(size // cuts for size in cut_counts.chunks[0])
    below = (_per_column(cut_points, blocks, None, np.float64)
             < _per_column(thresholds, blocks, None, np.float64)[:, None]).sum(axis=1)
    return da.blockwise(_threshold_block, "ij", cut_counts, "ij", below, "i", below, "j", cuts, None,
                        align_arrays=False, adjust_chunks={"i": blocks, "j": blocks}, dtype=cut_counts.dtype,
                        token="threshold-counts")


def _threshold_block(counts, below_i, below_j, cuts):
    rows = np.arange(below_i.size) * cuts + below_i
    columns = np.arange(below_j.size) * cuts + below_j
    return counts[np.ix_(rows, columns)]


def column_exponents(samples):
    """Return the lazy ``(d,)`` int64 units ``2**e`` of the statistics' sums (``kernels.statistics_exponents``).

    From the largest finite positive value of each column of ``samples``
    (the pilot's rows): one task per chunk, reduced by max, one chunk.
    """
    largest = da.blockwise(_largest_values_partial, "rj", samples, "rj", adjust_chunks={"r": 1},
                           dtype=np.float64, token="largest-values")
    return largest.max(axis=0).rechunk(-1).map_blocks(kernels.statistics_exponents, dtype=np.int64,
                                                      token="statistics-exponents")


def rescaled_moments(moments, exponents, target):
    """Return lazy ``(d, 2)`` moments in units ``2**target`` (``kernels.rescaled_moments``)."""
    return _rescaled(kernels.rescaled_moments, moments, exponents, target, "rescaled-moments")


def rescaled_statistics(statistics, exponents, target):
    """Return lazy ``(d, 4)`` statistics in units ``2**target`` (``kernels.rescaled_statistics``)."""
    return _rescaled(kernels.rescaled_statistics, statistics, exponents, target, "rescaled-statistics")


def rescaled_group_statistics(statistics, exponents, target):
    """Return lazy ``(G, d, 4)`` statistics of each group in units ``2**target`` (``kernels.rescaled_statistics``)."""
    exponents, target = (_per_column(e, statistics.chunks[1], 0, np.int64) for e in (exponents, target))
    return da.blockwise(kernels.rescaled_statistics, "gik", statistics, "gik", exponents, "i", target, "i",
                        dtype=np.float64, token="rescaled-group-statistics")


def _rescaled(kernel, sums, exponents, target, token):
    """Return lazy per-column ``sums`` (d, k) in units ``2**target``: ``kernel`` applied block by block."""
    exponents, target = (_per_column(e, sums.chunks[0], 0, np.int64) for e in (exponents, target))
    return da.blockwise(kernel, "ik", sums, "ik", exponents, "i", target, "i", dtype=np.float64, token=token)


def nonfinite_per_row(array):
    """Return the lazy ``(rows,)`` int64 count of NaN or ±inf values in each row of a 2-D array."""
    partials = array.map_blocks(_nonfinite_partial, chunks=(array.chunks[0], (1,) * array.numblocks[1]),
                                dtype=np.int64, token="nonfinite-per-row")
    return partials.sum(axis=1)


def count_kernel_choice(passes):
    """Return a lazy 0-d index into ``compiled.COUNT_KERNELS``: the faster count kernel for these blocks.

    One task times both kernels (``compiled.choose_count_kernel``) on blocks
    shaped as ``passes``' first block, where it runs (on a worker). It
    follows that first block, so it runs after the pilot, on a thread free
    while the others read, and the pass itself never waits for it.
    """
    first_pass = passes.blocks[0, 0].to_delayed(optimize_graph=False).ravel()[0]
    choice = delayed(_count_kernel_index, pure=True)(first_pass, max(passes.chunks[0]))
    return da.from_delayed(choice, shape=(), dtype=np.int64)


def coexceedance_counts(passes, split_every=8, checkpoint=None, kernel="popcount", groups=None, cuts=1):
    """Return the lazy ``(d, d)`` int64 counts ``C = Iᵀ I`` of the indicators of ``chunk_passes``.

    With ``cuts`` ``K`` cut points per column (``chunk_passes`` at ``(d, K)``
    thresholds), the ``(K·d, K·d)`` counts of the ``K·d`` indicators, in
    blocks ``K`` times as wide, coordinate ``p``'s cut ``a`` at ``p·K + a``.

    ``kernel`` ("popcount" or "gemm", or a ``count_kernel_choice``) decides
    only the speed: the counts are exact integers either way. Memory: a count
    task holds two bit-packed indicator blocks (``d_I·rows/8`` bytes each)
    and a ``d_I × d_J`` int64 block; a reduction task holds ``split_every``
    of those blocks. ``split_every`` does not affect results. With
    ``groups``, the group of each row chunk, the ``(G, d, d)`` counts of
    each group.
    """
    if not isinstance(kernel, da.Array) and kernel not in ("popcount", "gemm"):
        raise ValueError(f"kernel must be 'popcount' or 'gemm'; got {kernel!r}")
    widened = functools.partial(int.__mul__, int(cuts))  # a block of c columns has K·c indicators
    partials = da.blockwise(
        _coexceedance_partial, "rij", passes, "ri", passes, "rj", kernel, _scalar_index(kernel),
        adjust_chunks={"r": 1, "i": widened, "j": widened}, dtype=np.int64, token="coexceedance",
        meta=np.empty((0, 0, 0), dtype=np.int64),
    )
    return _mirror_upper_blocks(sum_over_rows(partials, split_every, "counts", checkpoint, groups))


def _mirror_upper_blocks(full):
    """Return the symmetric ``(..., d, d)`` array made of the upper block triangle of ``full`` and its transpose.

    Only the upper block triangle (of the last two axes) is asked for, so
    dask culls the tasks of the lower one, which would repeat the same
    numbers transposed.
    """
    n_blocks = full.numblocks[-1]
    leading = (slice(None),) * (full.ndim - 2)
    return da.block([
        [full.blocks[leading + (i, j)] if i <= j else da.swapaxes(full.blocks[leading + (j, i)], -1, -2)
         for j in range(n_blocks)]
        for i in range(n_blocks)
    ])


def tetrachoric_margins(counts, n_samples):
    """Return lazy ``a_i = Φ⁻¹(c_i/n)`` from the diagonal of the counts; ``n`` may be a lazy 0-d array."""
    return da.blockwise(kernels.tetrachoric_margins, "i", da.diagonal(counts), "i",
                        n_samples, _scalar_index(n_samples), dtype=np.float64, token="tetrachoric-margins")


def covariance(counts, n_samples, margins, scale):
    """Return the lazy ``(d, d)`` estimate ``Σ̂``: one inversion task per count block of the upper triangle.

    The lower block triangle is the upper one transposed, so ``Σ̂`` is exactly
    symmetric and only ``B(B+1)/2`` of the ``B²`` blocks are inverted.
    """
    chunks = (counts.chunks[0],)
    margins = da.asarray(margins).rechunk(chunks)
    scale = da.asarray(scale).rechunk(chunks)
    index = da.arange(counts.shape[0], chunks=chunks)
    full = da.blockwise(
        compiled.covariance_block, "ij",
        counts, "ij", n_samples, _scalar_index(n_samples),
        margins, "i", margins, "j", scale, "i", scale, "j", index, "i", index, "j",
        dtype=np.float64, token="covariance-block",
    )
    return _mirror_upper_blocks(full)


def standard_errors(counts, n_samples, covariance, terms, inversion):
    """Return lazy ``(SE(ρ̂), SE(Σ̂))``, each ``(d, d)``: one task per block of the upper triangle, mirrored.

    ``terms`` (``(d, 21)``, ``uncertainty.CoordinateTerms.stack()``) are in
    memory; ``covariance`` is ``Σ̂`` as stored. Both outputs come from the
    same tasks, so stored together they are computed once.
    """
    chunks = (counts.chunks[0],)
    terms = da.from_array(np.asarray(terms), chunks=(chunks[0], terms.shape[1]))
    index = da.arange(counts.shape[0], chunks=chunks)
    stacked = da.blockwise(
        uncertainty.standard_error_block, "sij",
        counts, "ij", n_samples, _scalar_index(n_samples), covariance.rechunk(counts.chunks), "ij",
        terms, "ik", terms, "jk",
        index, "i", index, "j", inversion, None,
        new_axes={"s": 2}, concatenate=True, dtype=np.float64, token="standard-error-block",
    )
    return _mirror_upper_blocks(stacked[0]), _mirror_upper_blocks(stacked[1])


def cut_standard_errors(covariance, n_samples, terms, standardised):
    """Return lazy ``(SE(ρ̂), SE(Σ̂))`` of polychoric estimates: ``standard_errors`` for ``cut_correlations``' pairs.

    ``covariance`` is ``Σ̂`` as stored; ``terms`` ``(d, 21)`` in memory;
    ``standardised`` ``(d, K)`` the cut points by the fitted margins.
    One task per block of the upper triangle (``uncertainty.cut_standard_error_block``), mirrored.
    """
    chunks = (covariance.chunks[0],)
    terms = da.from_array(np.asarray(terms), chunks=(chunks[0], terms.shape[1]))
    standardised = da.asarray(standardised).rechunk({0: chunks[0], 1: standardised.shape[1]})
    index = da.arange(covariance.shape[0], chunks=chunks)
    stacked = da.blockwise(
        uncertainty.cut_standard_error_block, "sij", n_samples, _scalar_index(n_samples), covariance, "ij",
        terms, "ik", terms, "jk", standardised, "il", standardised, "jl", index, "i", index, "j",
        new_axes={"s": 2}, concatenate=True, dtype=np.float64, token="cut-standard-error-block",
    )
    return _mirror_upper_blocks(stacked[0]), _mirror_upper_blocks(stacked[1])


def jackknife_standard_errors(group_counts, counts, replicates):
    """Return lazy jackknife ``(SE(ρ̂), SE(Σ̂))``, each ``(d, d)``: one task per block of the upper triangle, mirrored.

    ``group_counts`` (``(G, d, d)``) are each group's counts, ``replicates``
    the ``uncertainty.JackknifeReplicates`` (in memory). A task holds the
    ``G`` count blocks of its pair of column blocks. With cut points
    (``replicates.standardised``), the counts are those of every cut point,
    ``(G, K·d, K·d)`` and ``(K·d, K·d)``, and each replicate refits the
    pairs' tables (``uncertainty.cut_jackknife_block``).
    """
    n_groups = group_counts.shape[0]
    cuts = 1 if replicates.standardised is None else replicates.standardised.shape[2]
    chunks = tuple(size // cuts for size in counts.chunks[0])
    per_group = {name: da.from_array(getattr(replicates, name), chunks=(n_groups, chunks) + getattr(
        replicates, name).shape[2:]) for name in ("margins", "scale") + (("standardised",) if cuts > 1 else ())}
    index = da.arange(counts.shape[0] // cuts, chunks=chunks)
    group_counts = group_counts.rechunk((n_groups, counts.chunks[0], counts.chunks[0]))
    if cuts == 1:
        stacked = da.blockwise(
            uncertainty.jackknife_block, "sij", group_counts, "gij", counts, "ij", replicates.rows, None,
            per_group["margins"], "gi", per_group["margins"], "gj", per_group["scale"], "gi", per_group["scale"], "gj",
            index, "i", index, "j",
            new_axes={"s": 2}, concatenate=True, dtype=np.float64, token="jackknife-block",
        )
    else:
        stacked = da.blockwise(
            uncertainty.cut_jackknife_block, "sij", group_counts, "gij", counts, "ij", replicates.rows, None,
            per_group["margins"], "gik", per_group["margins"], "gjk", per_group["standardised"], "gik",
            per_group["standardised"], "gjk", per_group["scale"], "gi", per_group["scale"], "gj", index, "i", index, "j",
            new_axes={"s": 2}, adjust_chunks={"i": chunks, "j": chunks}, align_arrays=False, concatenate=True,
            dtype=np.float64, token="cut-jackknife-block", meta=np.empty((0, 0, 0), dtype=np.float64),
        )
    return _mirror_upper_blocks(stacked[0]), _mirror_upper_blocks(stacked[1])


def _cut_correlation_block(counts, n, margins_i, margins_j, h_i, h_j, index_i, index_j):
    return np.stack(polychoric.correlation_block(counts, n, margins_i, margins_j, h_i, h_j, index_i, index_j))


def standardised_cuts(cut_points, bias, scale):
    """Return lazy ``(d, K)`` cut points standardised by the margins, ``(c − b̂)/σ̂`` (``polychoric.standardised_cuts``)."""
    cut_points = _per_column(cut_points, bias.chunks[0], None, np.float64)
    return da.blockwise(polychoric.standardised_cuts, "ik", cut_points, "ik", bias, "i", scale, "i",
                        dtype=np.float64, token="standardised-cuts")


def cut_correlations(counts, n_samples, exceeded, standardised):
    """Return lazy ``(ρ, information)``, each ``(d, d)``, of every pair's table of cut-point categories.

    ``counts`` are the ``(K·d, K·d)`` counts of ``coexceedance_counts`` with
    ``cuts`` ``K``; ``exceeded`` ``(d, K)`` each coordinate's exceedances of
    its cut points; ``standardised`` ``(d, K)`` its cut points standardised
    by the fitted margins (``polychoric.standardised_cuts``). One task per
    block pair of the upper triangle (``polychoric.correlation_block``); the
    lower is its transpose.
    """
    cuts = exceeded.shape[1]
    chunks = tuple(size // cuts for size in counts.chunks[0])
    exceeded, standardised = (da.asarray(v).rechunk({0: chunks, 1: cuts}) for v in (exceeded, standardised))
    index = da.arange(counts.shape[0] // cuts, chunks=chunks)
    both = da.blockwise(
        _cut_correlation_block, "sij", counts, "ij", n_samples, _scalar_index(n_samples),
        exceeded, "ik", exceeded, "jk", standardised, "ik", standardised, "jk", index, "i", index, "j",
        new_axes={"s": 2}, adjust_chunks={"i": chunks, "j": chunks}, align_arrays=False, concatenate=True,
        dtype=np.float64, token="cut-correlation-block", meta=np.empty((0, 0, 0), dtype=np.float64),
    )
    both = _mirror_upper_blocks(both)
    return both[0], both[1]


def _variance_ratio_block(numerator, denominator, block_info=None):
    (first_row, _), (first_column, _) = block_info[0]["array-location"]
    rows = first_row + np.arange(numerator.shape[0])[:, None]
    upper = first_column + np.arange(numerator.shape[1])[None, :] >= rows
    return uncertainty.variance_ratio_sums(numerator[upper], denominator[upper])[None, None, :]


def variance_ratio_sums(numerator, denominator):
    """Return lazy ``uncertainty.variance_ratio_sums`` over the upper triangle (``j ≥ i``) of two ``(d, d)``."""
    partials = da.map_blocks(_variance_ratio_block, numerator, denominator.rechunk(numerator.chunks), new_axis=2,
                             chunks=((1,) * numerator.numblocks[0], (1,) * numerator.numblocks[1], (2,)),
                             dtype=np.float64, token="variance-ratio")
    return partials.sum(axis=(0, 1))


def _trust_counts_block(covariance, covariance_se, correlation_se, block_info=None):
    (rows, _), (columns, _) = block_info[0]["array-location"]
    return uncertainty.trust_counts(covariance, covariance_se, correlation_se, rows, columns)[:, None, :]


def trust_counts(covariance, covariance_se, correlation_se):
    """Return lazy ``(d, 4)`` int64 per coordinate: ``uncertainty.trust_counts`` of its row, summed over blocks."""
    partial = da.map_blocks(_trust_counts_block, covariance, covariance_se.rechunk(covariance.chunks),
                            correlation_se.rechunk(covariance.chunks), new_axis=2,
                            chunks=(covariance.chunks[0], (1,) * covariance.numblocks[1], (4,)), dtype=np.int64,
                            token="trust-counts")
    return partial.sum(axis=1)


def _simulated_block(weights, bias, seed, dtype, mixing, noise, latent, block_info=None):
    info = block_info[None]
    rows = info["chunk-shape"][0]
    return kernels.relu_gaussian_chunk(rows, weights, bias, seed, info["chunk-location"][0], dtype, mixing, noise,
                                       latent)


def simulated_samples(n_samples, weights, bias, chunk_rows, seed, dtype=np.float32, mixing=None, noise=0.0,
                      latent="gaussian"):
    """Return a lazy ``(n, d)`` array of samples, one seeded draw per row chunk (``kernels.relu_gaussian_chunk``).

    ``ReLU(W z + b)``, or ``A ReLU(W z + b)`` with ``mixing`` ``A``; plus
    Gaussian noise of standard deviation ``noise``; latents of the law ``latent``.
    """
    d = weights.shape[0] if mixing is None else mixing.shape[0]
    return da.map_blocks(
        _simulated_block, weights, bias, seed, np.dtype(dtype), mixing, noise, latent,
        chunks=(da.core.normalize_chunks(chunk_rows, (n_samples,))[0], (d,)),
        dtype=dtype, token=f"simulate-{seed}",
        meta=np.empty((0, 0), dtype=dtype),
    )


def sgd_estimates(samples, statistics, seed=0, n_batches=1, radius=3.0, step_scale=0.1, minibatch=10, keep=None,
                  exponents=None):
    """Return lazy ``(d, 2)`` estimates ``(µ̂, σ̂)`` by the paper's ProjSGD NormBiasEst.

    One task chain per (column block, bootstrap batch) streams the batch's row
    chunks in order, carrying the SGD state from task to task; chains of
    different blocks and batches run in parallel. Batch ``k`` of ``B`` is the
    row range ``[k·n/B, (k+1)·n/B)``. The positives are standardised by
    ``sgd.standardisation`` of ``statistics`` (``(d, 4)``, numpy, or lazy as
    a pilot's, in units ``2**exponents``). Memory: one chunk and a
    ``d_I``-sized state per task.
    """
    n = samples.shape[0]
    exponents = np.zeros(samples.shape[1], dtype=np.int64) if exponents is None else exponents
    column_bounds = np.cumsum((0,) + samples.chunks[1])
    settings = {"radius": radius, "step_scale": step_scale, "minibatch": minibatch}
    block_estimates = []
    for block, (first, last) in enumerate(zip(column_bounds[:-1], column_bounds[1:])):
        m0, s0 = delayed(sgd.standardisation, pure=True, nout=2)(_one_block(statistics[first:last]),
                                                                  _one_block(exponents[first:last]))
        states = []
        for batch in range(n_batches):
            start, stop = batch * n // n_batches, (batch + 1) * n // n_batches
            state = delayed(sgd.initial_state, pure=True)(np.arange(first, last), batch, seed)
            # The chains read the samples on their own: to_delayed fuses each read into a
            # task named by this step, apart from the main pass's reads. A chunk read once
            # for both would wait in memory until the sequential chain reached it.
            chunks = samples[start:stop, first:last].map_blocks(np.asarray, token="sgd-chain-chunk")
            chunks = chunks.to_delayed().ravel()
            masks = [None] * len(chunks) if keep is None else keep[start:stop].to_delayed().ravel()
            for chunk, mask in zip(chunks, masks):
                state = delayed(sgd.advance, pure=True)(state, chunk, m0, s0, keep=mask, **settings)
            states.append(state)
        estimate = delayed(sgd.select_and_map_back, pure=True)(states, m0, s0)
        block_estimates.append(da.from_delayed(estimate, shape=(last - first, 2), dtype=np.float64))
    return da.concatenate(block_estimates, axis=0)


def _one_block(array):
    """Return a numpy ``array`` as it is, and a dask one as the Delayed of its one block.

    Not optimised on its own: optimising would fuse the reads it depends on
    into a task of its own, and read those chunks again.
    """
    if not isinstance(array, da.Array):
        return array
    return array.rechunk(array.shape).to_delayed(optimize_graph=False).ravel()[0]


def _with_degenerate_block(estimates, bias, scale, status):
    return np.stack(sgd.with_degenerate(estimates, bias, scale, status), axis=1)


def with_degenerate(sgd_estimates, bias, scale, status):
    """Return lazy ``(bias, scale)``: the SGD's except on degenerate coordinates."""
    sgd_estimates = sgd_estimates.rechunk((bias.chunks[0], 2))
    merged = da.blockwise(
        _with_degenerate_block, "ij", sgd_estimates, "ij", bias, "i", scale, "i", status, "i",
        dtype=np.float64, token="sgd-with-degenerate",
    )
    return merged[:, 0], merged[:, 1]


# --------------------------------------------------------------------------
# The two-layer model: anchors from the first read, hidden values in the second
# --------------------------------------------------------------------------


def _one_object(value):
    """Return ``value`` as the one element of a 1-D object array (a block of an array of objects)."""
    block = np.empty(1, dtype=object)
    block[0] = value
    return block


def _first_pass_block(x, p, keep, block_info=None):
    return _one_object(separable.first_pass(x, block_info[0]["array-location"][0][0], p, keep))


def first_passes(samples, p, keep):
    """Return one lazy ``separable.FirstPass`` per row chunk of ``samples`` (chunks of whole rows)."""
    if samples.numblocks[1] != 1:
        raise ValueError("first_passes needs chunks of whole rows")
    return da.map_blocks(_first_pass_block, samples, p, keep, drop_axis=1, chunks=((1,) * samples.numblocks[0],),
                         dtype=object, token="first-pass", meta=np.empty((0,), dtype=object))


def _gram_partial(first):
    return first[0].gram[None]


def _first_problems_partial(first):
    nonfinite = first[0].nonfinite
    return np.stack([np.zeros_like(nonfinite), nonfinite], axis=1)[None]


def _first_rows_partial(first):
    return np.array([first[0].rows_kept])


def first_pass_sums(passes, d, split_every=8):
    """Return lazy ``(gram, value_problems, rows_kept)`` summed over the row chunks of ``first_passes``.

    ``gram`` is ``Σ xxᵀ`` (d, d) over the rows without NaN or ±inf;
    ``value_problems`` (d, 2) counts no negative values (the two-layer
    model's data have any sign) and the NaN or ±inf values per column.
    """
    slots = passes.chunks[0]
    gram = passes.map_blocks(_gram_partial, new_axis=[1, 2], chunks=(slots, (d,), (d,)), dtype=np.float64,
                             token="gram-partial", meta=np.empty((0, 0, 0)))
    problems = passes.map_blocks(_first_problems_partial, new_axis=[1, 2], chunks=(slots, (d,), (2,)),
                                 dtype=np.int64, token="first-problems-partial",
                                 meta=np.empty((0, 0, 0), dtype=np.int64))
    rows = passes.map_blocks(_first_rows_partial, chunks=(slots,), dtype=np.int64, token="first-rows-partial",
                             meta=np.empty((0,), dtype=np.int64))
    return (sum_over_rows(gram, split_every, "gram"), sum_over_rows(problems, split_every, "first-problems"),
            sum_over_rows(rows, split_every, "first-rows"))


def _combine(combine, *parts):
    return _one_object(combine(*(part[0] for part in parts)))


def reduce_objects(objects, combine, split_every, name):
    """Return a lazy 1-element object array: ``objects`` (one per slot) reduced by ``combine`` as a tree.

    Each node of fan-in ``split_every`` calls ``combine(*children)``, in
    slot order, so the result does not depend on the scheduler.
    """
    level, depth = objects, 0
    while level.numblocks[0] > 1:
        depth += 1
        layer_name = f"{name}-{depth}-{tokenize(level.name, combine, split_every)}"
        count = level.numblocks[0]
        layer = {(layer_name, node): (_combine, combine, *[(level.name, child) for child in
                                                            range(start, min(start + split_every, count))])
                 for node, start in enumerate(range(0, count, split_every))}
        graph = HighLevelGraph.from_collections(layer_name, layer, dependencies=[level])
        level = da.Array(graph, layer_name, chunks=((1,) * len(layer),), meta=np.empty((0,), dtype=object))
    return level


def _candidates_of(first):
    return _one_object(first[0].candidates)


def candidate_tree(passes, p, keep, tie, split_every=8):
    """Return a lazy 1-element object array: the candidate anchors of all row chunks, reduced as a tree.

    Each node of fan-in ``split_every`` reruns the selection on the union of
    its children's candidates (``separable.select_candidates``, ties within
    the relative ``tie`` broken by the least row index).
    """
    level = passes.map_blocks(_candidates_of, dtype=object, token="candidates", meta=np.empty((0,), dtype=object))
    return reduce_objects(level, functools.partial(separable.select_union, p=p, keep=keep, tie=tie), split_every,
                          "candidate-tree")


def _hidden_pass_block(x, mixing, projection, cutoffs):
    return _one_object(separable.hidden_pass(x, mixing, projection, cutoffs))


def _hidden_values_block(hidden):
    return hidden[0].values


def _hidden_diagnostics_partial(hidden):
    return hidden[0].diagnostics[None]


def hidden_layer(samples, mixing, projection, cutoffs, split_every=8):
    """Return lazy ``(M̂ (n, p), diagnostics (3,))`` of ``samples`` (chunks of whole rows): the second read.

    ``M̂`` is chunked as the samples' rows; ``diagnostics`` sums the rows
    outside the cone, the energy outside ``span(Â)`` and the energy
    (``separable.hidden_pass``). One task per row chunk makes both.
    """
    p = mixing.shape[1]
    passes = da.map_blocks(_hidden_pass_block, samples, mixing, projection, cutoffs, drop_axis=1,
                           chunks=((1,) * samples.numblocks[0],), dtype=object, token="hidden-pass",
                           meta=np.empty((0,), dtype=object))
    values = passes.map_blocks(_hidden_values_block, new_axis=1, chunks=(samples.chunks[0], (p,)),
                               dtype=np.float64, token="hidden-values", meta=np.empty((0, 0)))
    diagnostics = passes.map_blocks(_hidden_diagnostics_partial, new_axis=1, chunks=(passes.chunks[0], (3,)),
                                    dtype=np.float64, token="hidden-diagnostics", meta=np.empty((0, 0)))
    return values, sum_over_rows(diagnostics, split_every, "hidden-diagnostics")


# --------------------------------------------------------------------------
# The random-bias model: a pass of alternating least squares
# --------------------------------------------------------------------------


def _normal_equations_block(x, factors, steps):
    return _one_object(latent.normal_equations(x, factors, steps))


def normal_equations(samples, factors, steps, split_every=8):
    """Return a lazy 1-element object array: the ``latent.NormalEquations`` of all rows of ``samples``.

    One task per row chunk of whole rows solves its latents given ``factors``
    and sums its part; the parts add as a tree of fan-in ``split_every``.
    Memory per task: the chunk as read, and terms in ``d`` and ``k`` alone
    (the sums and ``U``; docs/design.md §10): the rows are solved and summed
    one at a time, without a float64 copy of the chunk.
    """
    if samples.numblocks[1] != 1:
        raise ValueError("normal_equations needs chunks of whole rows")
    parts = da.map_blocks(_normal_equations_block, samples, factors, steps, drop_axis=1,
                          chunks=((1,) * samples.numblocks[0],), dtype=object, token="normal-equations",
                          meta=np.empty((0,), dtype=object))
    return reduce_objects(parts, latent.add, split_every, "normal-equations-tree")
