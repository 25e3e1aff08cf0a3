"""Getting real data in: stream .npy, .npz, CSV/TSV, HDF5 and Parquet into a chunked Zarr array.

Each reader yields row blocks of at most ``chunk_rows`` rows, so the whole
input is never in memory; blocks are appended to a Zarr array whose chunks are
``(chunk_rows, d)``. The output is a group holding ``samples`` (what
``dist-relu fit`` reads by default), written atomically like every output.
"""

import contextlib
import csv
import itertools
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

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


def _read_npy_header(handle):
    """Return (shape, fortran_order, dtype) from the header of an .npy stream."""
    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read_header(handle)


def _open_npy(path, dataset):
    with open(path, "rb") as handle:
        dtype = _read_npy_header(handle)[2]
    if dtype.hasobject:
        raise io.InputError(f"{path} holds Python objects; dist_relu never unpickles data")
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    _check_numeric(array.dtype, path)
    return array.shape, array.dtype, _blocks_of_array(array)


def _open_npz(path, dataset):
    archive = zipfile.ZipFile(path)
    names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    name = _choose(names, dataset, path)
    handle = archive.open(name + ".npy")
    shape, fortran, dtype = _read_npy_header(handle)
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


# A number written with a decimal comma, such as 1,5 or "-0,25".
_DECIMAL_COMMA = re.compile(r'\s*"?[-+]?\d*,\d+([eE][-+]?\d+)?"?\s*')


def _cells(line, delimiter):
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:  # a NUL character, say; such a line is refused anyway
        return line.split(delimiter)


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return "_" not in cell  # float() accepts 1_000, np.loadtxt does not


def _looks_like_header(cells):
    """Every cell filled and some cell a word, such as ``a,b,c`` or ``"x1","x2"``."""
    return all(c.strip() for c in cells) and any(not _is_number(c) and any(ch.isalpha() for ch in c) for c in cells)


def _bad_line(path, number, line, delimiter, error):
    """The error for a line that np.loadtxt refused, saying why in the user's terms."""
    cells = _cells(line, delimiter)
    name = "tab" if delimiter == "\t" else repr(delimiter)
    other = next((c for c in ",;\t| " if c != delimiter and c in line.strip()), None)
    empty = [column for column, cell in enumerate(cells, 1) if not cell.strip()]
    words = [(column, cell.strip()) for column, cell in enumerate(cells, 1) if cell.strip() and not _is_number(cell)]
    if "\ufffd" in line or "\x00" in line:
        why = "not UTF-8 text"
    elif any(_DECIMAL_COMMA.fullmatch(p) for p in cells + (line.split(";") if ";" in line else [])):
        why = f"decimal commas are not supported (write 1.5, not 1,5); the delimiter is {name}"
    elif delimiter not in line and other:
        why = f"the delimiter is {name}, but this line seems separated by {other!r}"
    elif empty:
        why = f"column {empty[0]} is empty"
    elif words:
        why = f"column {words[0][0]} is not a number: {words[0][1]!r}"
    else:
        why = str(error)  # numpy's own words
    shown = line.rstrip("\r\n")[:80]
    return io.InputError(f"{path}, line {number}: {why} ({shown!r})")


def _open_text(path, dataset, delimiter, header=None, notes=None):
    """Read CSV/TSV rows of numbers by blocks of lines.

    ``header`` None detects a header line (see ``_looks_like_header``), True
    skips the first line whatever it holds, False reads it as data. Lines whose
    first non-blank character is ``#`` are skipped and counted, blank lines are
    skipped; ``notes`` receives ``header`` (the skipped line) and
    ``comment_lines``. Line numbers in errors are the file's own.
    """
    notes = {} if notes is None else notes
    notes.update(header=None, comment_lines=0)
    options = {"delimiter": delimiter, "ndmin": 2, "dtype": np.float64, "comments": None, "quotechar": '"'}
    # Bytes that are not UTF-8 read as U+FFFD, which no number holds: a data
    # line with them is refused by its number rather than the whole file by a byte offset.
    handle = open(path, encoding="utf-8-sig", errors="replace")

    def numbered():
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if text.startswith("#"):
                notes["comment_lines"] += 1
            # A TSV line of tabs alone is a row of empty cells, not a blank line.
            elif text or delimiter in line:
                yield number, line

    def parse_line(number, line):
        try:
            return np.loadtxt([line], **options)
        except ValueError as error:
            raise _bad_line(path, number, line, delimiter, error) from None

    def parse(entries, columns):
        try:
            block = np.loadtxt([line for _, line in entries], **options)
            if block.shape[1] == columns:
                return block
        except ValueError:
            pass
        # Slow path: find the first bad line of the block.
        for number, line in entries:
            width = parse_line(number, line).shape[1]
            if width != columns:
                raise io.InputError(f"{path}, line {number}: {width} columns where the file has {columns}")
        raise AssertionError("unreachable: some line must have failed")

    lines = numbered()
    try:
        first = next(lines, None)
        if first is None:
            comments = notes["comment_lines"]
            raise io.InputError(f"{path} holds only comment lines ({comments})" if comments else f"{path} is empty")
        head = [first]
        if header is None:
            try:
                np.loadtxt([first[1]], **options)
                header = False
            except ValueError:
                header = _looks_like_header(_cells(first[1], delimiter))
        if header:
            notes["header"] = first[1].strip()
            head = list(itertools.islice(lines, 1))
            if not head:
                raise io.InputError(f"{path} has a header but no rows")
        d = parse_line(*head[0]).shape[1]
        if header and (width := len(_cells(first[1], delimiter))) != d:
            raise io.InputError(f"{path}, line {first[0]}: the header has {width} cells but the data have {d} columns")
    except BaseException:
        handle.close()
        raise

    def blocks(rows):
        with handle:
            rest = itertools.chain(head, lines)
            while batch := list(itertools.islice(rest, rows)):
                yield parse(batch, d)

    return (None, d), np.dtype(np.float64), blocks


def _optional(module):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise io.InputError(f"reading this format needs {module.split('.')[0]}: pip install 'dist_relu[convert]' (in a checkout: pip install '.[convert]')") from None


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
    "csv": lambda path, dataset, **text: _open_text(path, dataset, ",", **text),
    "tsv": lambda path, dataset, **text: _open_text(path, dataset, "\t", **text),
}


@contextlib.contextmanager
def _reading(source, format):
    """Name ``source`` in the errors that numpy, zipfile, h5py or pyarrow raise about it."""
    try:
        yield
    except io.InputError as error:
        if str(source) in str(error):
            raise
        raise io.InputError(f"{source}: {error}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise io.InputError(f"{source}: not a readable {format} file ({error})") from error


def convert(source, out, *, format=None, dataset=None, chunk_rows=None, overwrite=False, header=None):
    """Stream ``source`` into a Zarr group at ``out`` holding ``samples``; return a summary dict.

    Parameters
    ----------
    source : path
        A .npy, .npz, CSV/TSV, HDF5 or Parquet file. CSV/TSV files are UTF-8
        (a byte-order mark is allowed), with ``,`` or tab between cells and a
        point as decimal mark. Lines starting with ``#`` are skipped and
        counted (``comment_lines`` in the summary), blank lines skipped; an
        empty cell is an error.
    format : str, optional
        One of ``npy, npz, csv, tsv, hdf5, parquet``; by default from the suffix.
    dataset : str, optional
        The array inside an .npz or HDF5 file holding several.
    chunk_rows : int, optional
        Rows per Zarr chunk; by default about 32 MB per chunk.
    header : bool, optional
        CSV/TSV only. True: the first line is a header, skipped whatever it
        holds. False: the first line is data. None (default): the first line
        is a header when it is not numbers, every cell is filled and some cell
        is a word. The skipped line is ``header`` in the summary; its number
        of cells must equal the data's number of columns.
    """
    where = storage.location(source)
    if not where.is_local:
        raise io.InputError(f"{source}: convert reads files on this machine; copy it here first")
    source = Path(where.path) if str(source).startswith("file://") else Path(source)
    storage.check_output(out, storage.SAMPLES_FORMAT, [source], overwrite)  # before reading a large file
    if not source.is_file():
        raise io.InputError(f"{source}: no such file")
    format = format or detect_format(source)
    if format not in READERS:
        raise io.InputError(f"unknown format {format!r} (known: {', '.join(READERS)})")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive; got {chunk_rows}")
    notes = {"header": None, "comment_lines": 0}
    text = {"header": header, "notes": notes} if format in ("csv", "tsv") else {}
    if header is not None and not text:
        raise io.InputError(f"{source}: a header option applies to CSV and TSV files, not {format}")
    with _reading(source, format):
        shape, dtype, blocks = READERS[format](source, dataset, **text)
    if len(shape) != 2:
        raise io.InputError(f"{source}: samples must be 2-D (n × d); got shape {shape}")
    d = shape[1]
    rows = chunk_rows or default_chunk_rows(d, np.dtype(dtype).itemsize)
    with storage.atomic_output(out, storage.SAMPLES_FORMAT, [source], overwrite) as partial:
        group = io.new_group(partial)
        samples = io.growing_array(group, "samples", d, rows, dtype)
        n = 0
        read = blocks(rows)
        while True:
            # Only the reading is named after the source: a failing write is about the output.
            with _reading(source, format):
                block = next(read, None)
            if block is None:
                break
            samples.append(block.astype(dtype, copy=False), axis=0)
            n += block.shape[0]
        if n == 0:
            raise io.InputError(f"{source} holds no rows")
        summary = {"source": str(source), "format": format, "n_samples": n, "n_coordinates": d,
                   "dtype": str(np.dtype(dtype)), "chunk_rows": rows, **notes}
        # "format" names this store's kind (storage); the file's format is kept as input_format.
        group.attrs.update({"converted_by": "dist_relu.convert", **summary, "input_format": format,
                            "format": storage.SAMPLES_FORMAT})
    return summary
