"""Getting real data in: stream .npy, .npz, CSV/TSV, HDF5 and Parquet into a chunked Zarr array.

Each reader yields row blocks of at most ``chunk_rows`` rows, so the whole
input is never in memory; blocks are appended to a Zarr array whose chunks are
``(chunk_rows, d)``. The output is a group holding ``samples`` (what
``dist-relu fit`` reads by default), written atomically like every output.
"""

import itertools
import zipfile
from pathlib import Path

import numpy as np
import zarr

from . import io, storage

FORMATS = {
    ".npy": "npy", ".npz": "npz", ".csv": "csv", ".tsv": "tsv", ".txt": "csv",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".parquet": "parquet", ".pq": "parquet",
}
# Chunk size chosen when none is given: large enough to read fast, small enough
# that a few per worker fit in memory.
TARGET_CHUNK_BYTES = 32 * 2**20


def default_chunk_rows(d, itemsize):
    """Return rows per chunk for about ``TARGET_CHUNK_BYTES`` per chunk, a multiple of 1024."""
    rows = TARGET_CHUNK_BYTES // max(1, d * itemsize)
    return int(max(1024, rows // 1024 * 1024))


def detect_format(path):
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise io.InputError(f"{path}: cannot tell the format from {suffix or 'no suffix'!r} (known: {known}); "
                            "name it with --format")
    return FORMATS[suffix]


def _check_numeric(dtype, where):
    try:
        io.check_dtype(dtype)
    except io.InputError as error:
        raise io.InputError(f"{where}: {error}") from None


def _blocks_of_array(array):
    def blocks(rows):
        for start in range(0, array.shape[0], rows):
            yield np.asarray(array[start:start + rows])

    return blocks


def _open_npy(path, dataset):
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:  # object arrays need pickle, which is never allowed
        raise io.InputError(f"{path}: {error}; dist_relu never unpickles data") from None
    _check_numeric(array.dtype, path)
    return array.shape, array.dtype, _blocks_of_array(array)


def _open_npz(path, dataset):
    archive = zipfile.ZipFile(path)
    names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    name = _choose(names, dataset, path)
    handle = archive.open(name + ".npy")
    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(handle)
    _check_numeric(dtype, f"{path}[{name}]")
    if fortran and len(shape) > 1:
        raise io.InputError(f"{path}[{name}] is stored column-major, which cannot be streamed by rows; "
                            "save it with np.save in C order")

    def blocks(rows):
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            yield np.frombuffer(handle.read(count * row_bytes), dtype=dtype).reshape((count,) + tuple(shape[1:]))

    return shape, dtype, blocks


def _open_text(path, dataset, delimiter):
    handle = open(path)
    numbered = ((number, line) for number, line in enumerate(handle, 1) if line.strip())

    def parse(entries, columns=None):
        """Parse (line number, text) pairs; name the first line that is not a row of ``columns`` numbers."""
        try:
            block = np.loadtxt([line for _, line in entries], delimiter=delimiter, ndmin=2, dtype=np.float64)
            if columns is None or block.shape[1] == columns:
                return block
        except ValueError:
            pass
        for number, line in entries:
            try:
                width = np.loadtxt([line], delimiter=delimiter, ndmin=2).shape[1]
            except ValueError as error:
                raise io.InputError(f"{path}, line {number}: {error} ({line.strip()[:80]!r})") from None
            columns = columns or width
            if width != columns:
                raise io.InputError(f"{path}, line {number}: {width} columns where the file has {columns}")
        raise AssertionError("unreachable: some line must have failed")

    first = next(numbered, None)
    if first is None:
        raise io.InputError(f"{path} is empty")
    try:
        d = np.loadtxt([first[1]], delimiter=delimiter, ndmin=2).shape[1]
        head = [first]
    except ValueError:  # a header line
        head = list(itertools.islice(numbered, 1))
        if not head:
            raise io.InputError(f"{path} has a header but no rows") from None
        d = parse(head).shape[1]

    def blocks(rows):
        rest = itertools.chain(head, numbered)
        while batch := list(itertools.islice(rest, rows)):
            yield parse(batch, d)
        handle.close()

    return (None, d), np.dtype(np.float64), blocks


def _optional(module):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise io.InputError(f"reading this format needs {module.split('.')[0]}: pip install 'dist_relu[convert]'") from None


def _open_hdf5(path, dataset):
    h5py = _optional("h5py")

    handle = h5py.File(path, "r")
    names = []
    handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    array = handle[_choose(names, dataset, path)]
    _check_numeric(array.dtype, f"{path}[{array.name}]")
    return array.shape, array.dtype, _blocks_of_array(array)


def _open_parquet(path, dataset):
    pq = _optional("pyarrow.parquet")

    table = pq.ParquetFile(path)
    columns = [field.name for field in table.schema_arrow]
    types = [table.schema_arrow.field(c).type for c in columns]
    numeric = ("int", "uint", "float", "double", "bool", "halffloat")
    bad = [f"{c} ({t})" for c, t in zip(columns, types) if not str(t).startswith(numeric)]
    if bad:
        raise io.InputError(f"{path}: columns that are not numbers: {', '.join(bad)}")

    def blocks(rows):
        for batch in table.iter_batches(batch_size=rows):
            yield np.column_stack([batch.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
                                   for i in range(batch.num_columns)])

    return (table.metadata.num_rows, len(columns)), np.dtype(np.float64), blocks


def _choose(names, wanted, path):
    if wanted is not None:
        if wanted not in names:
            raise io.InputError(f"{path} has no dataset {wanted!r} (datasets: {', '.join(names) or 'none'})")
        return wanted
    if len(names) != 1:
        raise io.InputError(f"{path} holds {len(names)} datasets ({', '.join(names) or 'none'}); name one with --dataset")
    return names[0]


READERS = {
    "npy": _open_npy, "npz": _open_npz, "hdf5": _open_hdf5, "parquet": _open_parquet,
    "csv": lambda path, dataset: _open_text(path, dataset, ","),
    "tsv": lambda path, dataset: _open_text(path, dataset, "\t"),
}


def convert(source, out, *, format=None, dataset=None, chunk_rows=None, overwrite=False):
    """Stream ``source`` into a Zarr group at ``out`` holding ``samples``; return a summary dict.

    Parameters
    ----------
    source : path
        A .npy, .npz, CSV/TSV (header line optional), HDF5 or Parquet file.
    format : str, optional
        One of ``npy, npz, csv, tsv, hdf5, parquet``; by default from the suffix.
    dataset : str, optional
        The array inside an .npz or HDF5 file holding several.
    chunk_rows : int, optional
        Rows per Zarr chunk; by default about 32 MB per chunk.
    """
    source = Path(source)
    if not source.is_file():
        raise io.InputError(f"{source}: no such file")
    format = format or detect_format(source)
    if format not in READERS:
        raise io.InputError(f"unknown format {format!r} (known: {', '.join(READERS)})")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive; got {chunk_rows}")
    shape, dtype, blocks = READERS[format](source, dataset)
    if len(shape) != 2:
        raise io.InputError(f"{source}: samples must be 2-D (n × d); got shape {shape}")
    d = shape[1]
    rows = chunk_rows or default_chunk_rows(d, np.dtype(dtype).itemsize)
    with storage.atomic_output(out, storage.SAMPLES_FORMAT, [source], overwrite) as partial:
        group = zarr.open_group(str(partial), mode="w-")
        samples = group.create_array("samples", shape=(0, d), chunks=(rows, d), dtype=dtype, config=io.WRITE_ALL_CHUNKS)
        n = 0
        for block in blocks(rows):
            samples.append(block.astype(dtype, copy=False), axis=0)
            n += block.shape[0]
        if n == 0:
            raise io.InputError(f"{source} holds no rows")
        summary = {"source": str(source), "format": format, "n_samples": n, "n_coordinates": d,
                   "dtype": str(np.dtype(dtype)), "chunk_rows": rows}
        group.attrs.update({"format": storage.SAMPLES_FORMAT, "converted_by": "dist_relu.convert", **summary})
    return summary
