"""Reading samples and writing Zarr groups: every input becomes a dask array here.

Outputs are written into a temporary sibling directory and renamed into place
only when complete, so a store exists whole or not at all, and an existing one
is replaced only when the caller asks (``overwrite=True``).
"""

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

# Bytes of one row chunk made from an in-memory array when no chunking is given.
_TARGET_CHUNK_BYTES = 64 * 2**20


class InputError(ValueError):
    """The input cannot be fitted: the message says what is wrong and what to do."""


def open_samples(source, array="samples"):
    """Return the samples of ``source`` as a 2-D dask array, chunked as stored.

    Parameters
    ----------
    source : str, Path, zarr.Array, zarr.Group, dask array or ndarray
        A path to a Zarr array, or to a Zarr group holding one named ``array``.
    array : str
        The array's name when ``source`` is a group.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        try:
            source = zarr.open(store=str(path), mode="r")
        except Exception as error:  # zarr raises several types for a non-store
            raise InputError(f"{path}: not a Zarr store ({error})") from error
    if isinstance(source, zarr.Group):
        if array not in source:
            names = ", ".join(sorted(source.array_keys())) or "none"
            raise InputError(f"the group has no array {array!r} (arrays: {names}); name one with array=/--array")
        source = source[array]
    if isinstance(source, zarr.Array):
        # A sharded array's chunk is the inner chunk; read whole shards instead.
        samples = da.from_zarr(source, chunks=source.shards or source.chunks)
    elif isinstance(source, da.Array):
        samples = source
    else:
        values = np.asarray(source)
        rows = max(1, _TARGET_CHUNK_BYTES // max(1, values.itemsize * int(np.prod(values.shape[1:]))))
        samples = da.from_array(values, chunks=(rows,) + values.shape[1:])
    check_samples(samples)
    return samples


def check_samples(samples):
    """Raise ``InputError`` unless ``samples`` is a 2-D real array of at least two rows."""
    if samples.ndim != 2:
        raise InputError(f"samples must be a 2-D array (n samples × d coordinates); got {samples.ndim} dimensions")
    if samples.dtype.kind not in "biuf":
        raise InputError(f"samples must be real numbers; got dtype {samples.dtype}")
    if samples.shape[0] < 2:
        raise InputError(f"need at least 2 samples; got {samples.shape[0]}")
    if samples.shape[1] < 1:
        raise InputError("samples have no columns")


@contextlib.contextmanager
def atomic_store(path, overwrite=False):
    """Yield a temporary path to write a store into; move it to ``path`` on success.

    On an exception the temporary store is removed and whatever was at ``path``
    before is left untouched. With ``overwrite`` an existing store is moved
    aside first and deleted only after the new one is in place.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another path or pass overwrite=True (--overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    partial = path.with_name(f".{path.name}.partial-{token}")
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{token}")
    if path.exists():
        os.rename(path, old)
    os.rename(partial, path)
    shutil.rmtree(old, ignore_errors=True)


def create_arrays(group, arrays):
    """Create one Zarr array in ``group`` per ``name: array``; return ``{name: (source, target)}`` to store.

    Dask arrays keep their chunking (so each block is written by the task that
    made it); numpy arrays are written at once and left out of the result.
    """
    targets = {}
    for name, values in arrays.items():
        if isinstance(values, da.Array):
            chunks = tuple(max(c) if c else 1 for c in values.chunks)
            # Blocks must not straddle Zarr chunks, or parallel writes would race.
            targets[name] = (
                values.rechunk(chunks),
                group.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype),
            )
        else:
            values = np.asarray(values)
            group.create_array(name, data=values, chunks=values.shape or None)
    return targets
