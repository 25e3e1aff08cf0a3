"""How wide a column block may be: the memory of a fit's tasks, and the block that fits a worker's share.

Per task, with ``c`` columns per block, ``r`` rows per chunk, ``k`` =
``split_every``, a stored chunk of ``S`` bytes decoded and ``S_z`` as stored
(compressed), and ``b`` bytes a partial count (``kernels.count_dtype``: 2 up
to 65,535 rows), and ``K`` cut points per column (1 by default: ``K`` indicator
bits a value, count blocks ``K²`` as large), all in bytes:

- read: ``S_z + 2S`` (zarr holds the stored bytes and the decoded chunk, and
  copies it into the array dask gets);
- fused pass: ``S + K·d·r/8 + r`` (the chunk, every block's bit-packed
  indicators, the row mask) when chunks hold whole rows, as one task then
  passes each block's columns in place; ``S + S·c/C + K·c·r/8 + r`` when the
  stored chunks have ``C < d`` columns, for the block a rechunk makes;
- count: ``2·K·c·r/8 + b·K²c²`` (two packed blocks, one block of counts);
- running sum over a segment: ``(k·b + 16)·K²c²`` (``k`` count blocks, the
  int64 running sum before, and the one it makes);
- inversion: ``48c² + P·B`` (counts, ρ and Σ̂ of the block, pair indices, and
  ``P`` = ``kernels.INVERSION_SLAB_PAIRS`` pairs of ``B`` =
  ``kernels.INVERSION_BYTES_PER_PAIR`` temporaries), and ``8(K² − 1)c²``
  more for the counts of ``K`` cut points;
- with a jackknife over ``G`` groups, its standard errors: ``8(G·K² + 10)c² +
  P·B`` (the ``G`` groups' count blocks, and the inversion's and the
  replicates' running sums).

``task_bytes`` is the largest of these (``task_sizes`` gives each). A
worker's share per task is half its memory divided by its threads: the other
half is for results waiting between tasks. Of those, the main pass's are the
largest (``waiting_bytes``): the running sums of the counts, 8 bytes for each
of the ``U·K²`` counted pairs of indicators, and up to a segment's partial
counts, ``k·b`` bytes a pair; ``check_waiting`` refuses a fit whose
waiting results would not fit that half. A fit's peak is then about
``threads × task_bytes + waiting_bytes``.

``column_block_for`` takes the widest block (a multiple of 64 up to 512
columns, of 256 beyond, or ``d``) that fits the share; beyond 512 columns it
also keeps at least ``4 × threads`` blocks in the upper triangle, so that the
inversion has work for every thread.
"""

import os
from typing import NamedTuple

from . import kernels

_SMALL_BLOCK = 512


class StoredChunk(NamedTuple):
    """The largest stored chunk of the samples, as the budget sizes it."""

    rows: int
    columns: int  # d when chunks hold whole rows
    itemsize: int
    stored_bytes: int | None = None  # as stored (compressed); None when unknown, then taken as decoded

    @property
    def decoded_bytes(self):
        return self.rows * self.columns * self.itemsize

    @property
    def read_bytes(self):
        """What reading it holds: the stored bytes, the decoded chunk and its copy (``S_z + 2S``)."""
        stored = self.decoded_bytes if self.stored_bytes is None else min(self.stored_bytes, self.decoded_bytes)
        return stored + 2 * self.decoded_bytes


class TaskBytes(NamedTuple):
    """The bytes each kind of task of a fit holds, by the model above (``jackknife`` 0 without one)."""

    reading: int
    passing: int
    counting: int
    summing: int
    inverting: int
    jackknife: int


def task_sizes(d, column_block, chunk, split_every, jackknife_groups=0, cuts=1):
    """Return the ``TaskBytes`` of a fit's tasks over ``d`` columns, in blocks of ``column_block``.

    ``chunk`` is the ``StoredChunk``; ``jackknife_groups`` is ``G``, 0
    without a jackknife; ``cuts`` is ``K``.
    """
    c, r, size, k = int(column_block), int(chunk.rows), chunk.decoded_bytes, int(cuts)
    count = kernels.count_dtype(r).itemsize
    slab = kernels.INVERSION_SLAB_PAIRS * kernels.INVERSION_BYTES_PER_PAIR
    if chunk.columns >= d:
        passing = size + k * d * r / 8 + r
    else:
        passing = size + size * c / chunk.columns + k * c * r / 8 + r
    return TaskBytes(
        reading=chunk.read_bytes,
        passing=int(passing),
        counting=int(2 * k * c * r / 8 + count * k * k * c * c),
        summing=(split_every * count + 16) * k * k * c * c,
        inverting=(48 + 8 * (k * k - 1)) * c * c + slab,
        jackknife=8 * (jackknife_groups * k * k + 10) * c * c + slab if jackknife_groups else 0,
    )


def task_bytes(d, column_block, chunk, split_every, jackknife_groups=0, cuts=1):
    """Return the bytes the largest task of a fit holds (the largest of ``task_sizes``)."""
    return max(task_sizes(d, column_block, chunk, split_every, jackknife_groups, cuts))


def waiting_bytes(column_chunks, split_every, row_chunk, cuts=1):
    """Return the bytes of the main pass's results that wait between tasks: ``U·K²·(8 + k·b)`` (see above)."""
    sizes = [int(c) for c in column_chunks]
    counted = (sum(sizes) ** 2 + sum(c * c for c in sizes)) // 2  # U: the pairs of blocks I ≤ J
    return counted * cuts * cuts * (8 + split_every * kernels.count_dtype(row_chunk).itemsize)


def check_waiting(waiting, share_bytes, threads, split_every):
    """Raise ``ValueError`` if ``waiting`` bytes exceed the half of memory the shares leave for them."""
    if waiting > share_bytes * threads:
        raise ValueError(
            f"the main pass keeps {waiting / 2**20:,.0f} MiB of running sums and partial counts waiting between "
            f"tasks, more than the {share_bytes * threads / 2**20:,.0f} MiB (half of the memory of all "
            f"{threads} worker threads) left for them; give the workers more memory (--memory-per-worker), add "
            f"workers, or sum fewer row chunks per task (--split-every, now {split_every})"
        )


def column_block_for(d, chunk, split_every, share_bytes, threads, jackknife_groups=0, cuts=1):
    """Return the widest column block whose tasks fit ``share_bytes`` (see the module's notes).

    Raises ``ValueError`` when even the narrowest block does not fit.
    """
    # Multiples of 64 up to 512 columns, of 256 beyond (a d × d output is then sharded by block).
    candidates = sorted({d} | set(range(64, min(d, _SMALL_BLOCK + 1), 64)) | set(range(768, d, 256)))
    chosen = None
    for c in candidates:
        n_blocks = -(-d // c)
        parallel = c <= _SMALL_BLOCK or n_blocks * (n_blocks + 1) // 2 >= 4 * threads
        if task_bytes(d, c, chunk, split_every, jackknife_groups, cuts) <= share_bytes and parallel:
            chosen = c
    if chosen is None:
        need = task_bytes(d, candidates[0], chunk, split_every, jackknife_groups, cuts)
        raise ValueError(
            f"even {candidates[0]}-column blocks need {need / 2**20:,.0f} MiB per task, more than the "
            f"{share_bytes / 2**20:,.0f} MiB share of each worker thread; give the workers more memory "
            "(--memory-per-worker) or store the samples in smaller chunks"
        )
    return chosen


def memory_share(memory_per_worker=None, client=None):
    """Return ``(share_bytes, threads)``: each worker thread's share of memory, and the threads in all.

    ``memory_per_worker`` (bytes) wins; else the ``distributed`` workers'
    memory limits (the smallest per thread); else this machine's memory,
    for local threads.
    """
    if client is not None:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        threads = sum(w["nthreads"] for w in workers) or 1
        per_thread = [(memory_per_worker or w.get("memory_limit") or _machine_memory()) / w["nthreads"]
                      for w in workers if w["nthreads"]]
        return int(min(per_thread, default=_machine_memory() / threads) / 2), threads
    threads = os.cpu_count() or 1
    return int((memory_per_worker or _machine_memory()) / threads / 2), threads


def _machine_memory():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
