"""Zarr arrays in and out: every input becomes a dask array here, and every array is written here.

Where outputs go, and how they appear whole, is ``storage``'s job; what a
fit's group holds is ``fitstore``'s.
"""

import hashlib
import itertools
import json
import os
from typing import NamedTuple

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore
from zarr.core.sync import sync

from .errors import InputError  # noqa: F401 (re-exported: io.InputError is used throughout)
from .scheduler import compute
from .storage import location

# Bytes of one row chunk made from an in-memory array when no chunking is given.
_TARGET_CHUNK_BYTES = 64 * 2**20
# Zarr skips chunks that equal the fill value everywhere unless told otherwise;
# dist_relu's stores keep every chunk, so that an absent one always means an
# incomplete store (see ``check_chunks_present``).
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}
# The codecs of the sample stores dist_relu writes (``simulate_to_zarr``, ``convert``): zstd at level 0 (zstd's
# default, level 3), no shuffle, as zarr 3's default is today; pinned so that a change of zarr's default does not
# change them. Chosen in benchmarks/codec_study.py (benchmarks/README.md, "Codecs of the sample stores"): of the codecs
# that read faster, none kept the store within 1.2 times this one's size on values rounded as measurements are.
# Reading does not depend on them: a store written with any codec zarr knows is read as before. Fit outputs keep
# zarr's defaults.
SAMPLE_CODECS = {"compressors": (ZstdCodec(level=0),)}


def listed_columns(columns, shown=10):
    """Return the first ``shown`` of ``columns`` separated by commas, and how many more there are, for a message."""
    more = len(columns) - shown
    return ", ".join(map(str, columns[:shown])) + (f" and {more:,} more" if more > 0 else "")


def open_samples(source, array="samples", allow_missing_chunks=False):
    """Return the samples of ``source`` as a 2-D float dask array, chunked as stored.

    Parameters
    ----------
    source : str, Path, zarr.Array, zarr.Group, dask array or ndarray
        A path or fsspec URL (``s3://``, ``gs://``, ``file://``...) of a Zarr
        array, or of a Zarr group holding one named ``array``. The graph holds
        only the array's handle: each worker reads its own chunks.
    array : str
        The array's name when ``source`` is a group.
    allow_missing_chunks : bool
        Zarr reads a chunk that was never written as the fill value. By default
        such a chunk is an error (an incomplete store would be fitted
        silently); allow it for stores whose writer skipped chunks that equal
        the fill value everywhere (zarr's default for all-zero chunks).

    Raises
    ------
    InputError
        When the input is missing, not an array, not 2-D, not real numbers,
        has fewer than 2 rows, or (Zarr) has chunks missing.
    """
    if isinstance(source, (str, os.PathLike)):
        where = location(source)
        if not where.exists():
            raise InputError(f"{source}: no such file or directory")
        try:
            source = zarr.open(store=where.url, mode="r")
        except Exception as error:  # zarr raises several types for a non-store
            raise InputError(f"{source}: not a Zarr store ({error}); `dist-relu convert` makes one") from error
    if isinstance(source, zarr.Group):
        member = source.get(array)
        if not isinstance(member, zarr.Array):
            arrays = ", ".join(sorted(source.array_keys())) or "none"
            what = f"{array!r} is a group, not an array" if member is not None else f"no array {array!r}"
            raise InputError(f"the group holds {what} (arrays: {arrays}); name an array with array=/--array")
        source = member
    if isinstance(source, zarr.Array):
        check_dtype(source.dtype)
        if not allow_missing_chunks:
            check_chunks_present(source)
        # A sharded array's chunk is the inner chunk; read whole shards instead.
        chunks = source.shards or source.chunks
        samples = da.from_array(source, chunks=chunks, getitem=_read_chunk, name=f"from-zarr-{tokenize(source)}")
    elif isinstance(source, da.Array):
        samples = source
    else:
        if isinstance(source, np.ndarray) and source.dtype.kind == "O":
            check_dtype(source.dtype)
        values = np.asarray(source)
        check_dtype(values.dtype)
        rows = max(1, _TARGET_CHUNK_BYTES // max(1, values.itemsize * int(np.prod(values.shape[1:]))))
        samples = da.from_array(values, chunks=(rows,) + values.shape[1:])
    check_samples(samples)
    # Per chunk, in the graph; a no-op (the same graph) for native float32 and float64.
    return samples.astype(fitted_dtype(samples.dtype))


def fitted_dtype(dtype):
    """Return the dtype that samples stored as ``dtype`` are fitted in: native float32 or float64.

    Integers and booleans are read as float64 (exact up to 2**53), float16
    as float32 (exact; the compiled kernels take float32 and float64 only),
    and a non-native byte order (zarr v2's ``>f8``) as the native one.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return np.dtype(np.float64)
    if dtype.itemsize <= 2:
        return np.dtype(np.float32)
    return dtype.newbyteorder("=")


class StoredData(NamedTuple):
    """What one listing of a stored array tells: its identity and the size of its largest stored object."""

    identity: str | None  # changes when the stored samples change; None where no cheap listing is possible
    largest_object: int | None  # bytes of the largest stored object (a compressed chunk, or a shard); None: unlisted


def stored_data(source, samples, array="samples"):
    """Return the ``StoredData`` of the samples: a digest that changes when they change, and their largest object.

    For a Zarr store: the digest of the names, sizes and modification times
    (ETags, on object stores that give them) of the array's stored objects,
    metadata included. It costs one listing, no read. Data rewritten with
    the same sizes and modification times (``cp -p``, a restored backup) is
    not told apart; a copy of the same data elsewhere is (new times). For
    samples in memory, the identity is their dask name (numpy: a hash of the
    values; dask: of the graph) and nothing is listed.
    """
    if isinstance(source, (str, os.PathLike)):
        where = location(source)
        fs, root = where.fs, where.path
        if isinstance(zarr.open(store=where.url, mode="r"), zarr.Group):
            root = f"{root}/{array}"
    elif isinstance(source, zarr.Array) and isinstance(source.store_path.store, LocalStore):
        fs, root = LocalFileSystem(), f"{source.store_path.store.root}/{source.store_path.path}".rstrip("/")
    elif isinstance(source, (zarr.Array, zarr.Group)):
        return StoredData(None, None)  # opened by the caller on a store without a cheap listing here
    else:
        return StoredData(samples.name, None)
    entries = fs.find(root, detail=True)
    described = sorted(
        (name[len(root):], info.get("size"),
         str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""))
        for name, info in entries.items()
    )
    identity = hashlib.sha256(json.dumps(described, default=str).encode()).hexdigest()[:32]
    sizes = [size for _, size, _ in described if isinstance(size, int)]
    return StoredData(identity, max(sizes, default=None))


def check_samples(samples):
    """Raise ``InputError`` unless ``samples`` is a 2-D array of real numbers with at least two rows."""
    if samples.ndim != 2:
        raise InputError(f"samples must be a 2-D array (n samples × d coordinates); got {samples.ndim} dimensions")
    check_dtype(samples.dtype)
    if samples.shape[0] < 2:
        raise InputError(f"need at least 2 samples; got {samples.shape[0]}")
    if samples.shape[1] < 1:
        raise InputError("samples have no columns")


def check_dtype(dtype):
    """Raise ``InputError`` unless ``dtype`` holds real numbers (float, integer or boolean)."""
    dtype = np.dtype(dtype)
    kinds = {
        "c": "complex numbers: a ReLU's output is real",
        "O": "Python objects, which dist_relu never unpickles",
        "U": "text", "S": "bytes", "V": "structured records", "M": "dates", "m": "time spans",
    }
    if dtype.kind in kinds:
        raise InputError(f"samples must be real numbers; this array holds {kinds[dtype.kind]} (dtype {dtype})")
    if dtype.kind == "f" and dtype.itemsize > 8:
        raise InputError(f"samples in extended precision (dtype {dtype}) are not supported: convert them to float64")


def check_chunks_present(array):
    """Raise ``InputError`` naming the chunks of a Zarr array that were never written."""
    stored = array.nchunks_initialized
    if stored >= array.nchunks:
        return
    grid = array.shards or array.chunks
    missing = []
    for coords in itertools.product(*(range(-(-size // step)) for size, step in zip(array.shape, grid))):
        key = array.metadata.encode_chunk_key(coords)
        if not sync(array.store_path.store.exists(f"{array.store_path.path}/{key}".lstrip("/"))):
            missing.append(key)
            if len(missing) == 5:
                break
    raise InputError(
        f"{array.nchunks - stored} of {array.nchunks} chunks of the samples are missing (first: "
        f"{', '.join(missing)}); they would read as the fill value {array.fill_value}. If the store is still "
        "being written, wait; if its writer skipped chunks that are all zero (zarr's default), pass "
        "allow_missing_chunks=True (--allow-missing-chunks)"
    )


def _read_chunk(array, index):
    """Read one block of a Zarr array, naming the block if it cannot be read."""
    try:
        return array[index]
    except Exception as error:
        rows, columns = index[0], index[1]
        raise InputError(
            f"cannot read the samples at rows {rows.start}:{rows.stop}, columns {columns.start}:{columns.stop} "
            f"of {array.store_path}: {type(error).__name__}: {error}"
        ) from error


def check_values(problems, where=""):
    """Raise ``InputError`` naming the columns with negative or non-finite values.

    ``problems`` is ``(d, 2)``: per column, the counts of negative values and
    of NaN or ±inf, as from ``graph.value_problems``; ``where`` says which rows
    were counted, when not all of them.
    """
    problems = np.asarray(problems)
    for k, what, advice in (
        (0, "negative values", "samples of a ReLU are ≥ 0: is this the right array, does it need ReLU applied, "
            "or are these samples of the two-layer model x = A ReLU(W z + b) (--model two-layer)?"),
        (1, "NaN or ±inf values", "remove or fill those rows first"),
    ):
        columns = np.flatnonzero(problems[:, k])
        if columns.size:
            named = ", ".join(f"{c} ({problems[c, k]:,})" for c in columns[:10])
            more = f" and {columns.size - 10} more" if columns.size > 10 else ""
            raise InputError(
                f"{problems[:, k].sum():,} {what}{where} in {columns.size} column(s): {named}{more} "
                f"[column (count)]; {advice}"
            )


def create_arrays(group, arrays, codecs=None):
    """Create one Zarr array in ``group`` per ``name: array``; return ``{name: (source, target)}`` to store.

    Dask arrays keep their chunking (so each block is written by the task that
    made it); numpy arrays are written at once and left out of the result. A
    ``d × d`` array of large blocks is sharded: each block is one shard,
    written whole by one task, of inner chunks small enough to read a few
    coordinates' rows cheaply. ``codecs``, ``create_array``'s keyword arguments
    such as ``SAMPLE_CODECS``, apply to every array (default: zarr's).
    """
    codecs = codecs or {}
    targets = {}
    for name, values in arrays.items():
        if isinstance(values, da.Array):
            chunks = tuple(max(c) if c else 1 for c in values.chunks)
            inner = _inner_chunks(chunks)
            # Blocks must not straddle Zarr chunks (or shards), or parallel writes would race.
            targets[name] = (
                values.rechunk(chunks),
                group.create_array(name, shape=values.shape, dtype=values.dtype, config=WRITE_ALL_CHUNKS, **codecs,
                                   **({"shards": chunks, "chunks": inner} if inner else {"chunks": chunks})),
            )
        else:
            values = np.asarray(values)
            chunks = tuple(max(size, 1) for size in values.shape)
            group.create_array(name, data=values, chunks=chunks, config=WRITE_ALL_CHUNKS, **codecs)
    return targets


def store_arrays(group, arrays, progress=False, also=(), codecs=None):
    """Write ``arrays`` (dask or numpy) into ``group``; return the computed values of the lazy arrays ``also``.

    Dask arrays are stored block by block by the tasks that compute them, so a
    ``d × d`` result is never assembled in one process, and all of them in one
    graph, so inputs they share are computed once; ``also`` are computed in
    the same graph.
    """
    targets = create_arrays(group, arrays, codecs)
    if not targets:
        return compute(*also, progress=progress) if also else ()
    sources, stores = zip(*targets.values())
    return compute(da.store(list(sources), list(stores), lock=False, compute=False), *also, progress=progress)[1:]


def new_group(path):
    """Return a new, empty Zarr group at ``path``; refuse one that exists."""
    return zarr.open_group(str(path), mode="w-")


def growing_array(group, name, columns, chunk_rows, dtype):
    """Create an array of ``columns`` columns and no rows in ``group``, to grow by appending rows.

    Written with ``SAMPLE_CODECS``: its users are the writers of sample stores.
    """
    return group.create_array(name, shape=(0, columns), chunks=(chunk_rows, columns), dtype=dtype,
                              config=WRITE_ALL_CHUNKS, **SAMPLE_CODECS)


def write_group(path, arrays, attributes, progress=False, codecs=None):
    """Write ``arrays`` (dask or numpy) and ``attributes`` as a new Zarr group at ``path``.

    ``codecs``: ``create_array``'s keyword arguments for every array, such as ``SAMPLE_CODECS`` (default: zarr's).
    """
    group = new_group(path)
    store_arrays(group, arrays, progress=progress, codecs=codecs)
    group.update_attributes(attributes)  # one metadata write, not one per key
    return group


# Side of the inner chunks of a sharded d × d output.
_INNER_CHUNK = 256


def _inner_chunks(block):
    """Return the inner chunks of a 2-D block worth sharding (square, sides a multiple of 256), else None."""
    if len(block) == 2 and block[0] == block[1] and block[0] > _INNER_CHUNK and block[0] % _INNER_CHUNK == 0:
        return (_INNER_CHUNK, _INNER_CHUNK)
    return None


def lazy_array(array):
    """Return a stored Zarr array as a dask array of its shards (or chunks), one task per stored unit."""
    return da.from_zarr(array, chunks=array.shards or array.chunks)
