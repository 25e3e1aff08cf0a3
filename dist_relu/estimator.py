"""The estimator: the fit plan (docs/design.md §2–§4), the ``ReLUGaussian`` class, and fits written to Zarr."""

import contextlib
import datetime
import functools
import inspect
import operator
import os
import time
import uuid

import dask
import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from . import __version__, budget, graph, io, kernels, compiled, sgd, storage
from .checkpoint import Checkpoint
from .model import RectifiedGaussian
from .scheduler import compute, current_client

FORMAT = storage.FIT_FORMAT
FORMAT_VERSION = 1

METHODS = ("censored", "truncated", "sgd")
INVERSIONS = ("tetrachoric", "model")


def check_settings(method, passes, inversion, pilot_rows, column_block, split_every, sgd_batches=1,
                   sgd_radius=3.0, sgd_lambda=0.1, sgd_minibatch=10, count_kernel="auto", memory_per_worker=None):
    """Raise ``ValueError`` naming the first setting that is out of range."""
    if count_kernel not in compiled.COUNT_KERNELS:
        raise ValueError(f"count_kernel must be one of {', '.join(compiled.COUNT_KERNELS)}; got {count_kernel!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2; got {passes!r}")
    if inversion not in INVERSIONS:
        raise ValueError(f"inversion must be one of {', '.join(INVERSIONS)}; got {inversion!r}")
    # (name, value, least, the values besides integers that it may take)
    integers = (("pilot_rows", pilot_rows, 2, (None,)), ("column_block", column_block, 1, ("auto",)),
                ("memory_per_worker", memory_per_worker, 1, (None,)), ("split_every", split_every, 2, ()),
                ("sgd_batches", sgd_batches, 1, ()), ("sgd_minibatch", sgd_minibatch, 1, ()))
    for name, value, least, others in integers:
        if any(value is other or isinstance(value, str) and value == other for other in others):
            continue
        if not isinstance(value, (int, np.integer)) or value < least:
            alternative = "".join(f" or {other!r}" for other in others)
            raise ValueError(f"{name} must be an integer ≥ {least}{alternative}; got {value!r}")
    if not sgd_radius > 1:
        raise ValueError(f"sgd_radius must be > 1 (the box is 1/r ≤ 1/σ² ≤ r); got {sgd_radius!r}")
    if not sgd_lambda > 0:
        raise ValueError(f"sgd_lambda must be > 0; got {sgd_lambda!r}")


def plan_fit(samples, *, method="censored", passes=1, inversion="tetrachoric", pilot_rows=None,
             clip_bias=False, column_block="auto", memory_per_worker=None, split_every=8, seed=0, sgd_batches=1,
             sgd_radius=3.0, sgd_lambda=0.1, sgd_minibatch=10, drop_nonfinite=False, count_kernel="auto",
             progress=False, checkpoint=None, source=None, identity=None, timings=None, thresholds=None):
    """Return ``(state, settings)``: the main pass as lazy dask arrays, and how the fit is made.

    With one pass, the pilot that sets the thresholds (the first
    ``pilot_rows`` rows) is part of the main pass's graph, and nothing is
    computed here. With two, the whole Step 1 is computed here first (with
    ``method="sgd"``, one read for the standardisation and one for the SGD).
    Everything lazy in ``state`` is then one graph over the samples:
    computing it reads the data once more. ``finish_fit`` turns the computed
    (or stored) state into the estimates.

    Parameters
    ----------
    samples : dask array, shape (n, d)
        As from ``io.open_samples``.
    checkpoint : str, optional
        Directory or fsspec URL where the partial sums of each segment of
        ``split_every`` row chunks are saved as they finish; sums saved there
        by an earlier run of the same fit are loaded instead of recomputed.
    source : str, optional
        Where the samples are (a path or URL), recorded in the checkpoint.
    identity : str, optional
        What the samples are (``io.data_identity``), recorded in the
        checkpoint so that it is never used for other data.
    timings : dict, optional
        Filled with the seconds of the stages computed here (two passes:
        ``pass 1`` and, with ``method="sgd"``, ``sgd``).
    thresholds : ndarray (d,), optional
        Count at these thresholds (another fit's, so that the two can be
        merged) instead of the pilot's. One pass, not with ``method="sgd"``.
    See ``ReLUGaussian`` for the rest.

    Returns
    -------
    state : dict
        Lazy: ``statistics`` (d, 4), the sufficient statistics, whose sums
        are in units ``2**statistics_exponent`` (d,) (computed already after
        two passes); ``counts`` (d, d); ``rows_kept`` (0-d) with
        ``drop_nonfinite``; with one pass
        ``value_problems`` (d, 2), for ``io.check_values`` once computed;
        with ``method="sgd"`` the SGD's ``(µ̂, σ̂)`` as ``sgd`` (d, 2).
        ``thresholds`` (d,): lazy with a pilot, else computed already;
        ``sgd`` is computed already after two passes.
    settings : dict
        JSON-ready description of the fit, stored with its output.
    """
    check_settings(method, passes, inversion, pilot_rows, column_block, split_every, sgd_batches, sgd_radius,
                   sgd_lambda, sgd_minibatch, count_kernel, memory_per_worker)
    io.check_samples(samples)
    timings = {} if timings is None else timings
    n, d = samples.shape
    memory = None
    if column_block == "auto":
        share, threads = budget.memory_share(memory_per_worker, current_client())
        row_chunk, stored_columns = max(samples.chunks[0]), max(samples.chunks[1])
        stored_chunk_bytes = row_chunk * stored_columns * samples.dtype.itemsize
        rechunked_from = None if samples.numblocks[1] == 1 else stored_columns
        column_block = budget.column_block_for(d, row_chunk, stored_chunk_bytes, split_every, share, threads,
                                               rechunked_from)
        memory = {"share_per_thread": share, "threads": threads,
                  "task_bytes": budget.task_bytes(column_block, row_chunk, stored_chunk_bytes, split_every,
                                                  rechunked_from)}
    stored = samples
    if max(samples.chunks[1]) != min(column_block, d) or len(set(samples.chunks[1][:-1])) > 1:
        samples = samples.rechunk({1: column_block})
    # The fused passes read chunks of whole rows block by block, in place (graph.chunk_passes); other
    # chunkings, and the SGD chains, go through the rechunk to column blocks.
    passed = stored if stored.numblocks[1] == 1 else samples
    column_chunks = samples.chunks[1]
    if checkpoint is not None:
        checkpoint = Checkpoint.open(checkpoint, _checkpoint_fingerprint(samples, source, identity, split_every,
                                                                         drop_nonfinite))

    sgd_settings = {"seed": seed, "n_batches": sgd_batches, "radius": sgd_radius, "step_scale": sgd_lambda,
                    "minibatch": sgd_minibatch}
    # The likelihood that finds degenerate coordinates, and the pilot's thresholds.
    likelihood = "censored" if method == "sgd" else method
    # With drop_nonfinite, rows holding NaN or ±inf are left out of every kernel.
    keep = graph.finite_row_mask(passed) if drop_nonfinite else None
    state = {}
    # The first rows (with one pass, the pilot's) set the units 2**e of the statistics' sums, so that
    # no sum of squares overflows or underflows (kernels.statistics_exponents); e = 0 for ordinary data.
    row_bytes = d * samples.dtype.itemsize
    first_rows = min(n, kernels.default_pilot_rows(n, row_bytes) if pilot_rows is None else pilot_rows)
    exponents = graph.column_exponents(passed[:first_rows]).rechunk({0: column_chunks})
    if thresholds is not None:
        if passes != 1 or method == "sgd":
            raise ValueError("given thresholds are for one-pass fits with the censored or truncated likelihood")
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.shape != (d,) or not np.all(thresholds >= 0):
            raise ValueError(f"thresholds must be {d} numbers ≥ 0; got shape {thresholds.shape}")
        pilot_rows = 0
        scope = tokenize(thresholds)
    elif passes == 1:
        # Thresholds from a pilot, the first pilot_rows rows, in the main pass's own graph: the pilot's
        # chunks are read once for both, and no chunk is counted before the thresholds are known.
        pilot_rows = first_rows
        pilot_passes = graph.chunk_passes(passed[:pilot_rows], keep=None if keep is None else keep[:pilot_rows],
                                          column_chunks=column_chunks, exponents=exponents)
        pilot_statistics = graph.column_statistics(pilot_passes, split_every)
        whole = {0: d}
        scope = f"pilot-{pilot_rows}-{likelihood}"  # the thresholds it makes of the fingerprinted data
        thresholds = da.blockwise(
            _pilot_thresholds, "i", pilot_statistics.rechunk(whole), "ia",
            graph.value_problems(pilot_passes, split_every).rechunk(whole), "ib", exponents.rechunk(whole), "i",
            likelihood, None, pilot_rows, None,
            None if checkpoint is None else checkpoint.child(f"thresholds-{scope}"), None,
            concatenate=True, dtype=np.float64, meta=np.empty(0, dtype=np.float64),
        ).rechunk({0: column_chunks})
        sgd_statistics = pilot_statistics  # they standardise the SGD's positives
    else:
        # The paper's order: Step 1 on all the data first. The second pass
        # recomputes the (bit-identical) statistics in its fused pass.
        first = None if checkpoint is None else checkpoint.child("pass-1")
        first_passes = graph.chunk_passes(passed, keep=keep, column_chunks=column_chunks, exponents=exponents)
        with _stage(timings, "pass 1"):
            first_pass, first_problems, exponents = compute(
                graph.column_statistics(first_passes, split_every, first),
                graph.value_problems(first_passes, split_every, first), exponents, progress=progress)
        io.check_values(first_problems)
        first_estimates = kernels.fit_coordinates(first_pass, likelihood, exponents)
        first_bias = first_estimates[0]
        sgd_statistics = first_pass
        if method == "sgd":
            with _stage(timings, "sgd"):
                (state["sgd"],) = compute(graph.sgd_estimates(samples, sgd_statistics, keep=keep, exponents=exponents,
                                                              **sgd_settings), progress=progress)
            first_bias = sgd.with_degenerate(state["sgd"], *first_estimates)[0]
        thresholds = np.maximum(0.0, first_bias)
        scope = tokenize(thresholds)

    # The main pass: its partial sums are checkpointed under the thresholds they were counted at.
    main = None if checkpoint is None else checkpoint.child(f"thresholds-{scope}")
    main_passes = graph.chunk_passes(passed, thresholds, keep, column_chunks, exponents)
    if count_kernel == "auto":
        # Chosen by a task of the pass; the settings say which once it has run (_measured_settings).
        state["count_kernel"] = graph.count_kernel_choice(main_passes)
    state["thresholds"] = thresholds
    state["statistics"] = graph.column_statistics(main_passes, split_every, main)
    state["statistics_exponent"] = exponents
    state["counts"] = graph.coexceedance_counts(main_passes, split_every, main, state.get("count_kernel", count_kernel))
    if method == "sgd" and "sgd" not in state:
        state["sgd"] = graph.sgd_estimates(samples, sgd_statistics, keep=keep, exponents=exponents, **sgd_settings)
    if passes == 1:
        # Checked after the main pass (io.check_values): the pilot saw only some rows.
        state["value_problems"] = graph.value_problems(main_passes, split_every, main)
    if drop_nonfinite:
        state["rows_kept"] = graph.rows_kept(keep, split_every, main)
    settings = {
        "n_samples": int(n),  # rows read; with drop_nonfinite, rows_dropped are then subtracted
        "n_coordinates": int(d),
        "drop_nonfinite": bool(drop_nonfinite),
        "method": method,
        "passes": passes,
        "inversion": inversion,
        "pilot_rows": int(pilot_rows) if passes == 1 else None,  # 0: thresholds were given
        "clip_bias": bool(clip_bias),
        "column_block": int(max(samples.chunks[1])),
        "row_chunk": int(max(samples.chunks[0])),
        "split_every": int(split_every),
        "count_kernel": count_kernel,
        "memory": memory,
        "checkpoint": None if checkpoint is None else {"url": checkpoint.url, "blocks_resumed": checkpoint.resumed[0]},
    }
    if method == "sgd":
        settings["sgd"] = {"seed": int(seed), "batches": int(sgd_batches), "radius": float(sgd_radius),
                           "lambda": float(sgd_lambda), "minibatch": int(sgd_minibatch)}
    return state, settings


def _pilot_thresholds(statistics, problems, exponents, likelihood, pilot_rows, checkpoint):
    """Return the pilot's thresholds ``max(0, b̂)``, once its values pass the checks (bad data stops here).

    With a ``checkpoint``, the thresholds must equal those its partial sums
    were counted at: a resumed fit never mixes counts of other data.
    """
    io.check_values(problems, where=f" among the pilot's {pilot_rows:,} rows")
    thresholds = np.maximum(0.0, kernels.fit_coordinates(statistics, likelihood, exponents)[0])
    if checkpoint is not None:
        checkpoint.bind_thresholds(thresholds)
    return thresholds


def finish_fit(statistics, counts, n_samples, thresholds, settings, sgd_estimates=None, exponents=None):
    """Return the lazy estimates from the main pass's state: Σ̂ and the per-coordinate arrays.

    ``statistics`` (d, 4) and ``counts`` (d, d) are dask arrays chunked in
    column blocks (computed, or read from a stored fit); ``n_samples`` is the
    number of rows they summarise; the statistics' sums are in units
    ``2**exponents`` (d,) (0 by default). Returns ``covariance``, ``bias``,
    ``scale``, ``status`` and ``positive_fraction``. Compute the
    per-coordinate arrays first and ``check_estimates`` them: ``Σ̂`` may
    not be representable.
    """
    likelihood = "censored" if settings["method"] == "sgd" else settings["method"]
    bias, scale, status = graph.coordinate_estimates(statistics, likelihood, exponents)
    if sgd_estimates is not None:
        bias, scale = graph.with_degenerate(da.asarray(sgd_estimates), bias, scale, status)
    if settings["clip_bias"]:
        # Before the margins: the paper thresholds at the clipped b̂ and inverts with a = 0.
        bias = da.maximum(bias, 0.0)
    if settings["inversion"] == "tetrachoric":
        margins = graph.tetrachoric_margins(counts, n_samples)
    else:
        thresholds = da.from_array(np.asarray(thresholds), chunks=bias.chunks)
        margins = da.map_blocks(kernels.threshold_margins, bias, scale, thresholds, dtype=np.float64)
    return {
        "covariance": graph.covariance(counts, n_samples, margins, scale),
        "bias": bias,
        "scale": scale,
        "status": status,
        "positive_fraction": statistics[:, 1] / n_samples,
    }


def check_estimates(bias, scale, status, statistics=None, covariance_nonfinite=None):
    """Return nothing; raise unless the estimates may be returned (every path of a fit calls it, before any output).

    Every coordinate whose status is ok must have finite ``b̂``, ``σ̂`` and
    row of ``Σ̂``, and ``Σ̂ = σ̂_i σ̂_j ρ_ij`` must lie in float64's normal
    range. ``statistics`` (d, 4) are the sufficient statistics, and
    ``covariance_nonfinite`` (d,) counts the NaN or ±inf in each row of
    ``Σ̂``, once it is computed.

    Raises
    ------
    io.InputError
        When the data's scale is the cause: sums, estimates or ``Σ̂`` beyond
        float64's range. The message says to rescale the data.
    RuntimeError
        For any other non-finite estimate of an ok coordinate, naming the
        columns.
    """
    rescale = "rescale the data (multiply it by a power of two) and fit again"
    if statistics is not None:
        overflowed = _columns(~np.isfinite(np.asarray(statistics)[:, 2:]).all(axis=1))
        if overflowed:
            raise io.InputError(
                f"the sums of the positive values or of their squares overflow float64 in column(s) {overflowed}: "
                f"those columns hold values far larger than the first rows', which set the sums' units; {rescale}")
    sigma = np.asarray(scale)[np.isfinite(scale) & (np.asarray(scale) > 0)]
    if sigma.size:
        largest, smallest = sigma.max(), sigma.min()
        with np.errstate(over="ignore", under="ignore"):
            if not np.isfinite(largest * largest):
                raise io.InputError(
                    f"Σ̂ = σ̂_i σ̂_j ρ_ij would overflow float64 (σ̂ up to {largest:.3g}): {rescale}, "
                    f"e.g. by 2**{-np.frexp(largest)[1]}")
            if smallest * smallest < np.finfo(np.float64).tiny:
                raise io.InputError(
                    f"Σ̂ = σ̂_i σ̂_j ρ_ij would underflow float64's normal range (σ̂ down to {smallest:.3g}): "
                    f"{rescale}, e.g. by 2**{-np.frexp(smallest)[1]}")
    ok = np.asarray(status) == kernels.STATUS_OK
    overflowed = _columns(ok & (np.isinf(bias) | np.isinf(scale)))
    if overflowed:
        raise io.InputError(f"b̂ or σ̂ overflow float64 in column(s) {overflowed}: {rescale}")
    bad = ok & ~(np.isfinite(bias) & np.isfinite(scale))
    if covariance_nonfinite is not None:
        bad |= ok & (np.asarray(covariance_nonfinite) > 0)
    if bad.any():
        raise RuntimeError(f"the fit gave NaN or ±inf estimates (b̂, σ̂ or Σ̂) for column(s) {_columns(bad)}, "
                           "whose status is ok")


def _columns(mask, shown=10):
    """Return the columns where ``mask`` is set, listed for a message ("" if none)."""
    columns = np.flatnonzero(mask)
    more = f" and {columns.size - shown} more" if columns.size > shown else ""
    return ", ".join(map(str, columns[:shown])) + more


def _checkpoint_fingerprint(samples, source, identity, split_every, drop_nonfinite):
    """What a checkpoint's partial sums are of: they are valid only for the same data, chunking and segments."""
    return {
        "source": str(source) if source is not None else samples.name,
        "data": identity,
        "shape": list(samples.shape),
        "dtype": str(samples.dtype),
        "row_chunks": tokenize(samples.chunks[0]),
        "column_block": int(max(samples.chunks[1])),
        "split_every": int(split_every),
        "drop_nonfinite": bool(drop_nonfinite),
    }


@contextlib.contextmanager
def _stage(timings, name):
    """Add the seconds spent in the block to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)


def _main_pass_name(settings):
    return "pass" if settings["passes"] == 1 else "pass 2"


def _measured_settings(settings, values, stored_states=()):
    """Return ``(settings, n)``: the settings completed by the main pass's ``values``, and the rows fitted.

    The main pass gives the rows fitted (and dropped) in all and, chosen by
    one of its tasks, the count kernel. ``settings["n_samples"]`` holds the
    rows read in the main pass; the ``stored_states`` of fits being added
    bring their own.
    """
    if "value_problems" in values:
        io.check_values(values["value_problems"])
    read = settings["n_samples"] + sum(s["rows_read"] for s in stored_states)
    kept = int(values.get("rows_kept", settings["n_samples"])) + sum(s["rows_kept"] for s in stored_states)
    if kept < 2:
        raise io.InputError(f"{read - kept:,} of {read:,} rows hold NaN or ±inf: fewer than 2 samples are left")
    settings = {**settings, "n_samples": kept}
    if "count_kernel" in values:
        settings["count_kernel"] = compiled.COUNT_KERNELS[int(values["count_kernel"])]
    if settings["drop_nonfinite"]:
        settings["rows_dropped"] = read - kept
    return settings, kept


def _provenance(settings, seconds, timings, source=None, data=None):
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fit_id": uuid.uuid4().hex,  # what merge and update know this fit by
        "data": data,  # io.data_identity of the samples, when known
        "dist_relu_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "timings": dict(timings),
        "source": None if source is None else str(source),
        "versions": {"numpy": np.__version__, "dask": dask.__version__, "zarr": zarr.__version__},
        **settings,
    }


def store_arrays(group, arrays, progress=False, also=()):
    """Write ``arrays`` (dask or numpy) into ``group``; return the computed values of the lazy arrays ``also``.

    Dask arrays are stored block by block by the tasks that compute them, so a
    ``d × d`` result is never assembled in one process, and all of them in one
    graph, so inputs they share are computed once; ``also`` are computed in
    the same graph.
    """
    targets = io.create_arrays(group, arrays)
    if not targets:
        return compute(*also, progress=progress) if also else ()
    sources, stores = zip(*targets.values())
    return compute(da.store(list(sources), list(stores), lock=False, compute=False), *also, progress=progress)[1:]


def write_group(path, arrays, attributes, progress=False):
    """Write ``arrays`` (dask or numpy) and ``attributes`` as a new Zarr group at ``path``."""
    group = zarr.open_group(str(path), mode="w-")
    store_arrays(group, arrays, progress=progress)
    group.update_attributes(attributes)  # one metadata write, not one per key
    return group


def _statistics_arrays(statistics):
    return {name: statistics[:, k] for k, name in enumerate(kernels.STATISTICS)}


def _stored_statistics(group, column_block):
    """Return the stored sufficient statistics as one lazy ``(d, 4)`` array in column blocks."""
    columns = [io.lazy_array(group[name]).rechunk(column_block) for name in kernels.STATISTICS]
    return da.stack(columns, axis=1).rechunk((column_block, 4))


def _stored_exponents(group, column_block):
    """Return the lazy ``(d,)`` units ``2**e`` of a stored fit's sums: 0 in fits stored before they were kept."""
    if "statistics_exponent" in group:
        return io.lazy_array(group["statistics_exponent"]).rechunk(column_block)
    return da.zeros(group["sum_positive"].shape, chunks=column_block, dtype=np.int64)


def _rechunk_by_tasks(function):
    """Build ``function``'s graphs with dask's rechunks planned as tasks.

    By default dask imports ``distributed`` (~0.3 s in a fresh process) at
    every rechunk, to look for a client that could run a p2p rechunk. The
    fit's rechunks (column blocks, small per-column arrays) are tasks anyway.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with dask.config.set({"array.rechunk.method": "tasks"}):
            return function(*args, **kwargs)

    return wrapper


@_rechunk_by_tasks
def fit_to_zarr(source, out, *, array="samples", allow_missing_chunks=False, overwrite=False, progress=False,
                checkpoint=None, update=None, thresholds_from=None, **settings):
    """Fit the samples at ``source`` and write the fit as a Zarr group at ``out``; return its attributes.

    The output appears only when complete (see ``storage.atomic_output``). Stages:
    the pilot (or the first pass), the main pass (counts and statistics
    written to the output), the inversion (Σ̂ from the stored counts, written
    block by block) and the write of the rest; their seconds are in the
    ``timings`` attribute. ``checkpoint`` (a directory or URL) keeps the main
    pass's partial sums, so that a rerun after an interruption resumes where
    it stopped. Keyword settings are those of ``ReLUGaussian``.

    With ``update`` (a stored one-pass fit), the samples are counted at that
    fit's thresholds, with its settings, and its additive state (statistics,
    counts, value checks, rows) is added: the result is the fit of both sets
    of samples together, without reading the old ones again; samples that
    the fit holds already are refused. With ``thresholds_from=`` another fit
    (or ``thresholds=`` its thresholds), the fit can later be merged with
    that one (``merge_fits``).
    """
    label = None if hasattr(source, "shape") else source
    inputs = [label, update, thresholds_from]
    storage.check_output(out, FORMAT, inputs, overwrite)  # before any work; again under the output's lock
    samples = io.open_samples(source, array=array, allow_missing_chunks=allow_missing_chunks)
    identity = io.data_identity(source, samples, array)
    bases = [] if update is None else [open_fit_group(update)]
    thresholds = settings.pop("thresholds", None)
    if thresholds_from is not None:
        if thresholds is not None:
            raise ValueError("give thresholds or thresholds_from, not both")
        thresholds = open_fit_group(thresholds_from)["thresholds"][:]
    if bases:
        if thresholds is not None:
            raise ValueError("update already counts at the thresholds of the fit it adds to; drop the thresholds")
        _check_additive(bases, samples.shape[1])
        settings = {**settings, **_additive_settings(bases[0])}
        thresholds = bases[0]["thresholds"][:]
    parts = _parts(bases, _part(label, None, None, identity)) if bases else None
    if checkpoint is not None:
        _check_checkpoint_location(checkpoint, out, inputs)
    start = time.perf_counter()
    timings = {}
    with storage.atomic_output(out, FORMAT, inputs, overwrite) as partial:
        state, fit_settings = plan_fit(samples, progress=progress, checkpoint=checkpoint, source=label,
                                       identity=identity, timings=timings, thresholds=thresholds, **settings)
        return _write_fit(partial, state, fit_settings, bases, timings, progress, label, parts, start, identity)


def _check_checkpoint_location(checkpoint, out, inputs):
    """Raise ``InputError`` if the checkpoint directory would be written over an input or the output."""
    where = storage.location(checkpoint)
    for other in [out, *inputs]:
        if other is not None and where.overlaps(storage.location(other)):
            raise io.InputError(f"checkpoint {checkpoint} overlaps {other}: give the checkpoint a directory of its own")


@_rechunk_by_tasks
def merge_fits(fits, out, *, overwrite=False, progress=False):
    """Add the additive state of stored one-pass fits made at the same thresholds; write the fit of all their samples.

    The pieces of a large job fitted apart (``fit_to_zarr(..., thresholds=``
    a first fit's, or ``update``) combine here into the fit of the
    concatenated data: counts and sample counts exactly, statistics and Σ̂ to
    rounding. Returns the attributes written at ``out``.
    """
    if len(fits) < 2:
        raise ValueError("give at least two fits to merge")
    storage.check_output(out, FORMAT, fits, overwrite)
    bases = [open_fit_group(fit) for fit in fits]
    _check_additive(bases, bases[0]["thresholds"].shape[0])
    parts = _parts(bases)
    start = time.perf_counter()
    timings = {}
    first = bases[0].attrs
    settings = {key: first[key] for key in ("n_coordinates", "drop_nonfinite", "method", "passes", "inversion",
                                            "pilot_rows", "clip_bias", "column_block", "row_chunk",
                                            "split_every", "count_kernel")}
    settings.update(n_samples=0, checkpoint=None, memory=None)
    state = {"thresholds": bases[0]["thresholds"][:]}
    with storage.atomic_output(out, FORMAT, fits, overwrite) as partial:
        return _write_fit(partial, state, settings, bases, timings, progress, None, parts, start)


def open_fit_group(path):
    """Return the Zarr group of a stored fit, refusing anything else."""
    where = storage.location(path)
    if not where.exists():
        raise io.InputError(f"{path}: no such file or directory")
    try:
        group = zarr.open_group(where.url, mode="r")
    except Exception as error:
        raise io.InputError(f"{path}: not a Zarr group ({error})") from error
    if group.attrs.get("format") != FORMAT:
        raise io.InputError(f"{path} is not a dist_relu fit (no format attribute {FORMAT!r})")
    return group


def _check_additive(bases, d):
    """Raise ``InputError`` unless the stored fits can take more samples: one pass, additive, same thresholds."""
    for group in bases:
        attrs = group.attrs
        if attrs["method"] == "sgd" or attrs["passes"] != 1:
            raise io.InputError(
                f"{group.store_path} was fitted with --method {attrs['method']} --passes {attrs['passes']}: only "
                "one-pass fits with the censored or truncated likelihood hold additive state (the SGD's "
                "estimates and a first pass's thresholds are not sums)")
        if attrs["n_coordinates"] != d:
            raise io.InputError(f"{group.store_path} has {attrs['n_coordinates']} coordinates; the data has {d}")
    first = bases[0]
    for group in bases[1:]:
        for key in ("method", "inversion", "clip_bias", "drop_nonfinite"):
            if group.attrs[key] != first.attrs[key]:
                raise io.InputError(f"{group.store_path} and {first.store_path} differ in {key}: "
                                    f"{group.attrs[key]!r} and {first.attrs[key]!r}")
        if not np.array_equal(group["thresholds"][:], first["thresholds"][:]):
            raise io.InputError(
                f"{group.store_path} and {first.store_path} were counted at different thresholds: fit the "
                "pieces with the thresholds of one of them (--thresholds-from FIT) to merge them")


def _additive_settings(group):
    """Return the settings of a stored fit that new samples must be fitted with."""
    return {key: group.attrs[key] for key in ("method", "inversion", "clip_bias", "drop_nonfinite", "split_every",
                                              "column_block")}


def _part(source, n_samples, created, data, fit_id=None):
    """Return the record of one piece of samples that a fit holds."""
    return {"source": None if source is None else str(source), "n_samples": n_samples, "created": created,
            "data": data, "fit_id": fit_id}


def _parts(bases, new=None):
    """Return the pieces a merged fit is made of: each stored fit's (or its own pieces), then ``new``.

    Raises ``InputError`` when a piece would be counted twice: the same
    stored fit, or samples with the same identity (``io.data_identity``).
    """
    parts, holders = [], []
    for group in bases:
        attrs = group.attrs
        own = attrs.get("parts") or [_part(attrs.get("source"), attrs["n_samples"], attrs.get("created"),
                                           attrs.get("data"), attrs.get("fit_id"))]
        parts.extend(own)
        holders.extend([group.store_path] * len(own))
    if new:
        parts.append(new)
        holders.append("the new samples")
    seen = {}
    for part, holder in zip(parts, holders):
        # Fits written before fits had identities are known by their source and creation time.
        keys = [("fit", part.get("fit_id") or f"{part['source']}@{part['created']}")] if part is not new else []
        keys += [("data", part["data"])] if part.get("data") else []
        for key in keys:
            if key in seen and seen[key][1] is not holder:
                raise io.InputError(
                    f"the samples of {part['source'] or 'an in-memory array'} would be counted twice: they are in "
                    f"{seen[key][1]} and in {holder}; merge and update take each piece once")
            seen[key] = (part, holder)
    return parts


def _write_fit(partial, state, settings, bases, timings, progress, label, parts, start, identity=None):
    """Write a fit into the new group at ``partial`` from the lazy main-pass ``state`` plus stored ``bases``.

    Returns the attributes (also written), ``seconds`` counted from ``start``.
    ``state`` may hold only ``thresholds`` (a merge of stored fits).
    """
    group = zarr.open_group(str(partial), mode="w-")
    column_block = settings["column_block"]
    stored_states = [_stored_state(base, column_block) for base in bases]
    with _stage(timings, _main_pass_name(settings) if "counts" in state else "merge"):
        # Everything the pass makes is stored by one graph: computed apart,
        # each array would be optimised apart, and dask would fuse a second
        # read of the samples into the smaller ones.
        additive = [state] * ("counts" in state) + stored_states
        exponents, statistics = _total_statistics(additive)
        stored = {"counts": _total(additive, "counts"), "thresholds": state["thresholds"],
                  "statistics_exponent": exponents, **_statistics_arrays(statistics)}
        small = {name: state[name] for name in ("rows_kept", "sgd", "count_kernel") if name in state}
        if all("value_problems" in s for s in additive):
            small["value_problems"] = _total(additive, "value_problems")
        store_arrays(group, {**stored, **small}, progress=progress)
        values = {name: group[name][...] for name in small}
        for name in ("rows_kept", "sgd", "count_kernel"):
            if name in small:
                del group[name]  # not part of the output: rows_dropped, the estimates and the settings say it
    settings, n_fitted = _measured_settings(settings, values, stored_states)
    with _stage(timings, "inversion"):
        estimates = finish_fit(_stored_statistics(group, column_block),
                               io.lazy_array(group["counts"]).rechunk(column_block), n_fitted,
                               group["thresholds"][...], settings, values.get("sgd", state.get("sgd")),
                               _stored_exponents(group, column_block))
        covariance = estimates.pop("covariance")
        per_coordinate = dict(zip(estimates, compute(*estimates.values())))
        checked = per_coordinate["bias"], per_coordinate["scale"], per_coordinate["status"]
        check_estimates(*checked, np.stack([group[name][...] for name in kernels.STATISTICS], axis=1))
        (nonfinite,) = store_arrays(group, {"covariance": covariance}, progress=progress,
                                    also=[graph.nonfinite_per_row(covariance)])
        check_estimates(*checked, covariance_nonfinite=nonfinite)
    with _stage(timings, "write"):
        if settings["drop_nonfinite"]:
            per_coordinate["rows_dropped"] = np.int64(settings["rows_dropped"])
        store_arrays(group, per_coordinate)
    attributes = _provenance(settings, time.perf_counter() - start, timings, label, identity)
    if parts:
        # The new piece's rows are what the fit holds beyond the stored ones.
        new_rows = n_fitted - sum(s["rows_kept"] for s in stored_states)
        attributes["parts"] = [part if part["n_samples"] is not None else
                               {**part, "n_samples": new_rows, "created": attributes["created"],
                                "fit_id": attributes["fit_id"]}
                               for part in parts]
    group.update_attributes(attributes)  # one metadata write, not one per key
    return attributes


def _total(states, name):
    """Return the sum of the additive quantity ``name`` over ``states``."""
    return functools.reduce(operator.add, [state[name] for state in states])


def _total_statistics(states):
    """Return ``(exponents, statistics)``: the sum of the states' statistics, in the largest units of any per column.

    Each state's sums are in its own units ``2**statistics_exponent``; they
    are brought to the common units by exact powers of two before adding.
    """
    if len(states) == 1:
        return states[0]["statistics_exponent"], states[0]["statistics"]
    exponents = functools.reduce(da.maximum, [da.asarray(state["statistics_exponent"]) for state in states])
    rescaled = [graph.rescaled_statistics(state["statistics"], state["statistics_exponent"], exponents)
                for state in states]
    return exponents, functools.reduce(operator.add, rescaled)


def _stored_state(group, column_block):
    """Return the additive state of a stored fit: lazy statistics, counts and value checks, and its rows."""
    state = {"statistics": _stored_statistics(group, column_block),
             "statistics_exponent": _stored_exponents(group, column_block),
             "counts": io.lazy_array(group["counts"]).rechunk(column_block),
             "rows_kept": int(group.attrs["n_samples"]),
             "rows_read": int(group.attrs["n_samples"]) + int(group.attrs.get("rows_dropped") or 0)}
    if "value_problems" in group:
        state["value_problems"] = io.lazy_array(group["value_problems"]).rechunk((column_block, 2))
    return state


class ReLUGaussian:
    """Estimate ``Σ = W Wᵀ`` and ``b`` of ``x = ReLU(W z + b)``, ``z ~ N(0, I)``, from samples.

    Parameters
    ----------
    method : {"censored", "truncated", "sgd"}, default "censored"
        Step 1 estimator of ``(b_i, σ_i)``: censored-normal (Tobit) maximum
        likelihood, zeros included; the maximum of the paper's truncated-normal
        likelihood of the positives alone; or the paper's own ProjSGD
        NormBiasEst (``dist_relu.sgd``), which assumes ``b ≥ 0``.
    passes : {1, 2}, default 1
        1: thresholds from a pilot of ``pilot_rows`` rows, then statistics and
        counts in one read. 2: the paper's order, thresholds ``max(0, b̂)`` from
        a full first read, counts in a second.
    inversion : {"tetrachoric", "model"}, default "tetrachoric"
        Margins used to invert the orthant probability: ``Φ⁻¹(c_i/n)``, the
        exceedance fraction each threshold had, or ``(b̂_i − t_i)/σ̂_i``.
    pilot_rows : int, optional
        Rows of the pilot (one pass): the first rows of the array, whose
        Step 1 sets the thresholds. Default: a twentieth of the rows, at
        least 10,000 and at most 100,000, and at large ``d`` no more than
        64 MiB of rows (``kernels.default_pilot_rows``). The chunks holding
        them wait in memory until the thresholds are known.
    clip_bias : bool, default False
        Report ``max(0, b̂)`` as the paper does. The thresholds are clipped
        either way.
    seed : int, default 0
        Seed of the SGD's draws (``method="sgd"``); results do not depend on
        the scheduler or the chunking.
    sgd_batches, sgd_radius, sgd_lambda, sgd_minibatch : int, float, float, int
        ``B``, ``r``, ``λ`` and the minibatch size of the paper's Algorithms 2
        and 3; the authors used 1, 3, 0.1 and 10.
    drop_nonfinite : bool, default False
        Leave out the rows that hold NaN or ±inf (counted in
        ``settings_["rows_dropped"]``) instead of refusing the data. Found in
        the fit's own read: no extra pass.
    column_block : int or "auto", default "auto"
        Coordinates per column block: each count task holds two blocks of
        indicators and a ``column_block²`` count block. "auto" takes the
        widest block whose tasks fit each worker thread's share of memory
        (``dist_relu.budget``). Does not affect results.
    memory_per_worker : int, optional
        Bytes of memory per worker (per process) for "auto" column blocks.
        Default: the ``distributed`` workers' memory limits, or this
        machine's memory on local threads.
    split_every : int, default 8
        Fan-in of the tree reductions over row chunks. Does not affect the
        counts; the statistics only to rounding.
    count_kernel : {"auto", "popcount", "gemm"}, default "auto"
        How the co-exceedance counts are made: AND and popcount of bit-packed
        indicators, or float32 GEMM of unpacked ones. "auto" times both on a
        block of the fit's shape and takes the faster. Does not affect results
        (the counts are exact integers).

    Attributes
    ----------
    covariance_ : ndarray (d, d)
        ``Σ̂``; not necessarily positive semidefinite.
    bias_, scale_ : ndarray (d,)
        ``b̂`` and ``σ̂``.
    status_ : ndarray (d,) of int8
        Per-coordinate status, ``kernels.STATUS_NAMES``.
    positive_fraction_ : ndarray (d,)
        Fraction of positive samples per coordinate: a coordinate with few
        positives (``b ≪ 0``) needs many samples.
    thresholds_ : ndarray (d,)
    counts_ : ndarray (d, d) of int64
        Co-exceedance counts ``C_ij = #{m : x_mi > t_i, x_mj > t_j}``.
    statistics_ : ndarray (d, 4)
        ``(n0, n1, S1, S2)`` per coordinate, the sums in units
        ``2**statistics_exponent_``.
    statistics_exponent_ : ndarray (d,) of int64
        The units of the sums: ``S1`` sums ``x·2**-e``, ``S2`` its square
        (``kernels.statistics_exponents``); 0 unless the data lie beyond
        ``2**±256``, where the squares could overflow or underflow.
    n_samples_ : int
    model_ : RectifiedGaussian
        The fitted distribution: ``sample``, ``factor``, ``errors``.
    settings_ : dict
        How the fit was made, as stored with a saved fit.

    Notes
    -----
    ``Σ̂_ij = σ̂_i σ̂_j ρ_ij`` with ``ρ_ij`` the root of
    ``Φ₂(a_i, a_j; ρ) = C_ij / n``. With ``a = 0`` this is the paper's
    ``ρ = cos(π − 2π C_ij/n)``.

    Examples
    --------
    >>> est = ReLUGaussian().fit("samples.zarr")        # doctest: +SKIP
    >>> est.model_.errors(truth_covariance, truth_bias)  # doctest: +SKIP
    """

    def __init__(self, method="censored", passes=1, inversion="tetrachoric", pilot_rows=None,
                 clip_bias=False, column_block="auto", memory_per_worker=None, split_every=8, seed=0, sgd_batches=1,
                 sgd_radius=3.0, sgd_lambda=0.1, sgd_minibatch=10, drop_nonfinite=False, count_kernel="auto"):
        self.method = method
        self.passes = passes
        self.inversion = inversion
        self.pilot_rows = pilot_rows
        self.clip_bias = clip_bias
        self.column_block = column_block
        self.memory_per_worker = memory_per_worker
        self.split_every = split_every
        self.seed = seed
        self.sgd_batches = sgd_batches
        self.sgd_radius = sgd_radius
        self.sgd_lambda = sgd_lambda
        self.sgd_minibatch = sgd_minibatch
        self.drop_nonfinite = drop_nonfinite
        self.count_kernel = count_kernel

    def get_params(self):
        """Return the constructor's parameters and their values (as scikit-learn does)."""
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names}

    @_rechunk_by_tasks
    def fit(self, X, array="samples", allow_missing_chunks=False, progress=False, checkpoint=None):
        """Fit the estimator on samples ``X`` and return ``self``.

        ``X`` is a path to a Zarr array or group (``array`` names the array in
        a group), a zarr array, a dask array or a numpy array, shape (n, d).
        Runs on the default ``distributed`` client if there is one, else on
        local threads. ``checkpoint`` (a directory or URL) keeps the partial
        sums of the main pass, so that a rerun after an interruption resumes.
        """
        samples = io.open_samples(X, array=array, allow_missing_chunks=allow_missing_chunks)
        label = X if isinstance(X, (str, os.PathLike)) else None
        identity = io.data_identity(X, samples, array)
        if checkpoint is not None:
            _check_checkpoint_location(checkpoint, None, [label])
        start = time.perf_counter()
        timings = {}
        state, settings = plan_fit(samples, progress=progress, checkpoint=checkpoint, source=label, timings=timings,
                                   identity=identity, **self.get_params())
        with _stage(timings, _main_pass_name(settings)):
            lazy = {name: value for name, value in state.items() if isinstance(value, da.Array)}
            values = {**state, **dict(zip(lazy, compute(*lazy.values(), progress=progress)))}
        settings, n_fitted = _measured_settings(settings, values)
        with _stage(timings, "inversion"):
            column_block = settings["column_block"]
            estimates = finish_fit(da.from_array(values["statistics"], chunks=(column_block, 4)),
                                   da.from_array(values["counts"], chunks=column_block), n_fitted,
                                   values["thresholds"], settings, values.get("sgd"), values["statistics_exponent"])
            covariance = estimates.pop("covariance")
            estimates = dict(zip(estimates, compute(*estimates.values(), progress=progress)))
            checked = estimates["bias"], estimates["scale"], estimates["status"]
            check_estimates(*checked, values["statistics"])
            (estimates["covariance"],) = compute(covariance, progress=progress)
            check_estimates(*checked, covariance_nonfinite=kernels.nonfinite_per_row(estimates["covariance"]))
        self.settings_ = _provenance(settings, time.perf_counter() - start, timings, label, identity)
        self.covariance_ = estimates["covariance"]
        self.bias_ = estimates["bias"]
        self.scale_ = estimates["scale"]
        self.status_ = estimates["status"]
        self.positive_fraction_ = estimates["positive_fraction"]
        self.thresholds_ = values["thresholds"]
        self.counts_ = values["counts"]
        self.statistics_ = values["statistics"]
        self.statistics_exponent_ = np.asarray(values["statistics_exponent"], dtype=np.int64)
        self.n_samples_ = self.settings_["n_samples"]
        self.model_ = RectifiedGaussian(self.covariance_, self.bias_)
        return self

    def save(self, path, overwrite=False):
        """Write the fit as a Zarr group at ``path``, in the layout of ``dist-relu fit``."""
        arrays = {
            "covariance": self.covariance_, "bias": self.bias_, "scale": self.scale_,
            "status": self.status_, "thresholds": self.thresholds_,
            "positive_fraction": self.positive_fraction_, "counts": self.counts_,
        }
        arrays.update({name: self.statistics_[:, k] for k, name in enumerate(kernels.STATISTICS)})
        arrays["statistics_exponent"] = self.statistics_exponent_
        with storage.atomic_output(path, FORMAT, [self.settings_["source"]], overwrite) as partial:
            write_group(partial, arrays, self.settings_)


def open_fit(path):
    """Return ``(model, group)`` of a fit written by ``dist-relu fit`` or ``ReLUGaussian.save``."""
    group = open_fit_group(path)
    return RectifiedGaussian(group["covariance"][:], group["bias"][:]), group
