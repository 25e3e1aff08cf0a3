"""The pieces every model's fit is made of, whatever it estimates (docs/design.md §5).

A model's plan takes its samples from ``open_input`` (one door for every
input, with the data's identity), lays them out in column blocks that fit
the workers' memory (``plan_layout``), takes its pilot from the first
``pilot_rows`` rows, keeps its partial sums in a ``Checkpoint`` bound to the
data (``open_checkpoint``), builds its passes from ``graph``'s fused chunk
passes and tree reductions, and writes through ``fitstore``'s outputs under
``storage.atomic_output``. ``Stages`` times what it computes. The one-layer
model (``plan.py``, ``estimator.py``) is made of these pieces alone.
"""

import contextlib
import functools
import time
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from . import budget, io, kernels, storage
from .checkpoint import Checkpoint
from .scheduler import current_client


@dataclass(frozen=True)
class Input:
    """Samples to fit, as read: the lazy ``(n, d)`` array, where they are and what they are."""

    samples: da.Array
    label: str | None  # the path or URL given; None for arrays in memory
    identity: str | None  # io.stored_data: changes when the stored data change
    largest_object: int | None = None  # bytes of the largest stored object (io.stored_data); None if unknown

    @classmethod
    def open(cls, source, array="samples", allow_missing_chunks=False):
        """Return the checked samples of ``source`` (``io.open_samples``), with their label and identity."""
        samples = io.open_samples(source, array=array, allow_missing_chunks=allow_missing_chunks)
        io.check_samples(samples)
        label = None if hasattr(source, "shape") else str(source)
        return cls(samples, label, *io.stored_data(source, samples, array))


@dataclass(frozen=True)
class Layout:
    """How a fit reads the samples: in row chunks as stored, in column blocks of ``column_block``.

    ``blocked`` is the samples in column blocks (rechunked when stored
    otherwise); ``passed`` what the fused passes read: the stored chunks when
    they hold whole rows (``graph.chunk_passes`` then reads each block in
    place), else ``blocked``. ``memory`` records the budget that chose an
    "auto" block (None when the block was given).
    """

    blocked: da.Array
    passed: da.Array
    memory: dict | None
    row_groups: tuple | None = None  # the jackknife's group of each row chunk; None without one

    @property
    def n_groups(self):
        return 0 if self.row_groups is None else self.row_groups[-1] + 1

    @property
    def column_block(self):
        return int(max(self.blocked.chunks[1]))

    @property
    def row_chunk(self):
        return int(max(self.blocked.chunks[0]))

    @property
    def column_chunks(self):
        return self.blocked.chunks[1]


def group_bounds(n, n_groups):
    """Return the ``n_groups + 1`` first rows of the jackknife's groups of ``n`` rows, ``n`` last.

    Group ``g`` is rows ``⌊g·n/G⌋`` to ``⌊(g+1)·n/G⌋ − 1``: consecutive
    rows, as equal in number as can be, set by the rows alone, whatever the
    chunking.
    """
    if not 2 <= n_groups <= n:
        raise ValueError(f"{n_groups} jackknife groups need at least as many rows; the samples have {n:,}")
    return [g * n // n_groups for g in range(n_groups + 1)]


def split_at_groups(samples, n_groups):
    """Return ``samples`` with row chunks split where a group begins, and the group of each row chunk.

    Only the graph changes: a stored chunk that holds the end of one group
    and the start of the next is read once, and its two parts taken from it.
    """
    bounds = group_bounds(samples.shape[0], n_groups)
    chunk_starts = np.cumsum((0,) + samples.chunks[0])
    starts = np.union1d(chunk_starts, bounds)
    if starts.size > chunk_starts.size:
        samples = samples.rechunk({0: tuple(int(size) for size in np.diff(starts))})
    groups = np.searchsorted(bounds, starts[:-1], side="right") - 1
    return samples, tuple(int(g) for g in groups)


def plan_layout(samples, column_block="auto", memory_per_worker=None, split_every=8, jackknife_groups=0,
                stored_bytes=None, cuts=1):
    """Return the ``Layout`` of ``samples``: a given ``column_block``, or with "auto" the widest that fits memory.

    "auto" asks ``budget`` for the widest block whose tasks fit each worker
    thread's share of ``memory_per_worker`` (default: the ``distributed``
    workers' limits, or this machine's memory). With ``jackknife_groups``
    ``G``, row chunks are split where a group begins (``split_at_groups``),
    so that each row chunk's partial sums belong to one group, and the
    budget counts the jackknife's tasks, which hold ``G`` count blocks.
    ``stored_bytes`` is the size of the largest stored chunk as stored
    (``Input.largest_object``); None: as large as decoded. ``cuts`` is the
    cut points per coordinate, whose counts are ``cuts²`` as large.
    """
    n, d = samples.shape
    memory = None
    row_groups = None
    if jackknife_groups:
        samples, row_groups = split_at_groups(samples, jackknife_groups)
    if column_block == "auto":
        share, threads = budget.memory_share(memory_per_worker, current_client())
        chunk = budget.StoredChunk(max(samples.chunks[0]), max(samples.chunks[1]), samples.dtype.itemsize,
                                   stored_bytes)
        column_block = budget.column_block_for(d, chunk, split_every, share, threads, jackknife_groups, cuts)
        memory = {"share_per_thread": share, "threads": threads,
                  "task_bytes": budget.task_bytes(d, column_block, chunk, split_every, jackknife_groups, cuts)}
    blocked = samples
    if max(samples.chunks[1]) != min(column_block, d) or len(set(samples.chunks[1][:-1])) > 1:
        blocked = samples.rechunk({1: column_block})
    if memory is not None:
        memory["waiting_bytes"] = budget.waiting_bytes(blocked.chunks[1], split_every, max(blocked.chunks[0]), cuts)
        budget.check_waiting(memory["waiting_bytes"], share, threads, split_every)
    # The fused passes read chunks of whole rows block by block, in place (graph.chunk_passes); other
    # chunkings, and the SGD chains, go through the rechunk to column blocks.
    passed = samples if samples.numblocks[1] == 1 else blocked
    return Layout(blocked, passed, memory, row_groups)


def whole_rows(samples):
    """Return ``samples`` in chunks of whole rows (rechunked if stored in column blocks), for per-row kernels."""
    return samples if samples.numblocks[1] == 1 else samples.rechunk({1: samples.shape[1]})


def first_rows(samples, pilot_rows=None):
    """Return how many first rows make the pilot: ``pilot_rows``, or ``kernels.default_pilot_rows``, at most n."""
    n, d = samples.shape
    row_bytes = d * samples.dtype.itemsize
    return min(n, kernels.default_pilot_rows(n, row_bytes) if pilot_rows is None else pilot_rows)


def open_checkpoint(url, input, layout, split_every, drop_nonfinite):
    """Return the ``Checkpoint`` at ``url`` for these samples and layout (None without a url).

    Partial sums are valid only for the same data (its identity), chunking,
    column blocks and segments: a checkpoint made for anything else is refused.
    """
    if url is None:
        return None
    samples = layout.blocked
    fingerprint = {
        "source": input.label if input.label is not None else samples.name,
        "data": input.identity,
        "shape": list(samples.shape),
        "dtype": str(samples.dtype),
        "row_chunks": tokenize(samples.chunks[0]),
        "column_block": layout.column_block,
        "split_every": int(split_every),
        "drop_nonfinite": bool(drop_nonfinite),
    }
    if layout.row_groups is not None:  # the partial sums are kept per group
        fingerprint["jackknife_groups"] = layout.n_groups
    return Checkpoint.open(url, fingerprint)


def check_checkpoint_location(checkpoint, out, inputs):
    """Raise ``InputError`` if the checkpoint directory would be written over an input or the output."""
    where = storage.location(checkpoint)
    for other in [out, *inputs]:
        if other is not None and where.overlaps(storage.location(other)):
            raise io.InputError(f"checkpoint {checkpoint} overlaps {other}: give the checkpoint a directory of its own")


class Stages:
    """The seconds a fit spent in each of its stages, from its start."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, name):
        """Add the seconds spent in the block to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def elapsed(self):
        return time.perf_counter() - self.start


def rechunk_by_tasks(function):
    """Build ``function``'s graphs with dask's rechunks planned as tasks.

    By default dask imports ``distributed`` (slow in a fresh process) at
    every rechunk, to look for a client that could run a p2p rechunk. The
    fit's rechunks (column blocks, small per-column arrays) are tasks anyway.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with dask.config.set({"array.rechunk.method": "tasks"}):
            return function(*args, **kwargs)

    return wrapper
