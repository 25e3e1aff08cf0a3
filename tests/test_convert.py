"""dist-relu convert: every format in, the same samples out, bad files refused clearly."""

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import dist_relu
from dist_relu import io
from dist_relu.cli import EXIT_BAD_INPUT
from dist_relu.convert import convert, default_chunk_rows

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

DIST_RELU = str(Path(sys.executable).with_name("dist-relu"))
X = np.maximum(0, np.random.default_rng(0).standard_normal((5003, 4)) + 0.2).astype(np.float32)


def write(tmp, fmt):
    path = tmp / {"npy": "x.npy", "npz": "x.npz", "csv": "x.csv", "tsv": "x.tsv", "hdf5": "x.h5",
                  "parquet": "x.parquet"}[fmt]
    if fmt == "npy":
        np.save(path, X)
    elif fmt == "npz":
        np.savez(path, samples=X)
    elif fmt == "csv":
        np.savetxt(path, X, delimiter=",", header="a,b,c,d", comments="")
    elif fmt == "tsv":
        np.savetxt(path, X, delimiter="\t")
    elif fmt == "hdf5":
        with h5py.File(path, "w") as f:
            f["group/x"] = X
    else:
        pq.write_table(pa.table({f"c{i}": X[:, i] for i in range(4)}), path)
    return path


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv", "tsv", "hdf5", "parquet"])
def test_every_format_converts_exactly(tmp_path, fmt):
    summary = convert(write(tmp_path, fmt), tmp_path / "out.zarr", chunk_rows=1000)
    samples = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["samples"]
    assert summary["n_samples"] == 5003 and samples.chunks == (1000, 4)
    np.testing.assert_array_equal(samples[:], X.astype(samples.dtype))
    fit = dist_relu.ReLUGaussian().fit(tmp_path / "out.zarr")
    np.testing.assert_array_equal(fit.counts_, dist_relu.ReLUGaussian().fit(X).counts_)


def test_default_chunk_is_about_32_mb():
    assert default_chunk_rows(100, 4) * 100 * 4 == pytest.approx(32 * 2**20, rel=0.02)
    assert default_chunk_rows(10**7, 8) == 1024


def write_object_npy(tmp):
    np.save(tmp / "x.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    return tmp / "x.npy"


def write_fortran_npz(tmp):
    np.savez(tmp / "x.npz", samples=np.asfortranarray(X))
    return tmp / "x.npz"


def write_two_npz(tmp):
    np.savez(tmp / "x.npz", a=X, b=X)
    return tmp / "x.npz"


def write_bad_csv(tmp):
    lines = ["1,2,3"] * 10 + ["1,oops,3"]
    (tmp / "x.csv").write_text("\n".join(lines))
    return tmp / "x.csv"


def write_ragged_csv(tmp):
    (tmp / "x.csv").write_text("1,2,3\n4,5\n")
    return tmp / "x.csv"


def write_text_parquet(tmp):
    pq.write_table(pa.table({"a": [1.0, 2.0], "name": ["x", "y"]}), tmp / "x.parquet")
    return tmp / "x.parquet"


def write_text(name, text):
    """A maker for BAD: write ``text`` (UTF-8) to ``name``."""

    def make(tmp):
        (tmp / name).write_text(text, encoding="utf-8")
        return tmp / name

    return make


def write_truncated(name, save):
    def make(tmp):
        save(tmp / name)
        data = (tmp / name).read_bytes()
        (tmp / name).write_bytes(data[:len(data) // 2])
        return tmp / name

    return make


def save_h5(path):
    with h5py.File(path, "w") as f:
        f["x"] = X


BAD = {
    "object npy": (write_object_npy, r"never unpickles"),
    "fortran npz": (write_fortran_npz, r"column-major"),
    "npz with two arrays": (write_two_npz, r"holds 2 datasets \(a, b\); name one with --dataset"),
    "bad csv value": (write_bad_csv, r"x.csv, line 11: .*'1,oops,3'"),
    "ragged csv": (write_ragged_csv, r"x.csv, line 2: 2 columns where the file has 3"),
    "text in parquet": (write_text_parquet, r"columns that are not numbers: name"),
    "unknown suffix": (lambda tmp: (tmp / "x.bin").write_bytes(b"1") and tmp / "x.bin", r"cannot tell the format"),
    "empty csv": (lambda tmp: (tmp / "x.csv").write_text("") or tmp / "x.csv", r"is empty"),
    "missing": (lambda tmp: tmp / "nothing.npy", r"no such file"),
    "empty cell on line 1": (write_text("x.csv", "1.0,,3.0\n4,5,6\n"), r"x.csv, line 1: column 2 is empty"),
    "empty cell on line 2": (write_text("x.csv", "1.0,2,3.0\n4,,6\n"), r"x.csv, line 2: column 2 is empty"),
    "empty last cell": (write_text("x.csv", "1,2,3\n4,5,\n"), r"x.csv, line 2: column 3 is empty"),
    "tsv row of tabs": (write_text("x.tsv", "1\t2\n\t\n3\t4\n"), r"x.tsv, line 2: column 1 is empty"),
    "blank lines before": (write_text("x.csv", "1,2,3\n\n\n# note\n" + "4,5,6\n\n" * 10 + "7,,9\n"),
                           r"x.csv, line 25: column 2 is empty \('7,,9'\)"),
    "decimal comma, ;": (write_text("x.csv", "1,5;2,0\n3,5;4,0\n"),
                         r"x.csv, line 1: decimal commas are not supported .* the delimiter is ','"),
    "decimal comma, quoted": (write_text("x.csv", 'a,b\n"1.5","2"\n"1,5","2,0"\n'),
                              r"x.csv, line 3: decimal commas are not supported .* the delimiter is ','"),
    "decimal comma in tsv": (write_text("x.tsv", "1.5\t2\n1,5\t2\n"),
                             r"x.tsv, line 2: decimal commas are not supported .* the delimiter is tab"),
    "; delimiter": (write_text("x.csv", "a;b;c\n1.5;2;3\n"),
                    r"x.csv, line 2: the delimiter is ',', but this line seems separated by ';'"),
    "header longer than rows": (write_text("x.csv", "a,b,c\n1,2\n3,4\n"),
                                r"x.csv, line 1: the header has 3 cells but the data have 2 columns"),
    "header shorter than rows": (write_text("x.csv", "# made by hand\na,b\n1,2,3\n"),
                                 r"x.csv, line 2: the header has 2 cells but the data have 3 columns"),
    "not utf-8": (lambda tmp: (tmp / "x.csv").write_bytes("1,2\n3,\xe9\n".encode("latin-1")) and tmp / "x.csv",
                  r"x.csv, line 2: not UTF-8 text"),
    "only comments": (write_text("x.csv", "# a,b\n\n# c\n"), r"x.csv holds only comment lines \(2\)"),
    "truncated npy": (write_truncated("x.npy", lambda path: np.save(path, X)), r"x.npy: not a readable npy file"),
    "truncated npz": (write_truncated("x.npz", lambda path: np.savez(path, samples=X)),
                      r"x.npz: not a readable npz file \(File is not a zip file\)"),
    "truncated hdf5": (write_truncated("x.h5", save_h5), r"x.h5: not a readable hdf5 file"),
    "truncated parquet": (write_truncated("x.parquet", lambda path: pq.write_table(pa.table({"a": X[:, 0]}), path)),
                          r"x.parquet: not a readable parquet file"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_files_are_refused_clearly_and_leave_nothing(tmp_path, case):
    make, message = BAD[case]
    source = make(tmp_path)
    with pytest.raises(io.InputError, match=message):
        convert(source, tmp_path / "out.zarr", chunk_rows=4)
    assert not (tmp_path / "out.zarr").exists()
    result = subprocess.run([DIST_RELU, "convert", str(source), "--out", str(tmp_path / "out.zarr")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_BAD_INPUT and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "out.zarr").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_converts_names_the_chunking_and_refuses_to_overwrite(tmp_path):
    source = write(tmp_path, "csv")
    result = subprocess.run([DIST_RELU, "convert", str(source), "--out", str(tmp_path / "out.zarr")],
                            capture_output=True, text=True, timeout=120, check=True)
    assert "5,003 rows × 4 columns" in result.stdout and "chunks of" in result.stdout
    again = subprocess.run([DIST_RELU, "convert", str(source), "--out", str(tmp_path / "out.zarr")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == EXIT_BAD_INPUT and "exists" in again.stderr
    subprocess.run([DIST_RELU, "convert", str(source), "--out", str(tmp_path / "out.zarr"), "--overwrite"],
                   check=True, capture_output=True, timeout=120)


def test_hdf5_dataset_is_chosen_by_name(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = X
        f["b"] = 2 * X
    with pytest.raises(io.InputError, match="name one with --dataset"):
        convert(tmp_path / "x.h5", tmp_path / "out.zarr")
    convert(tmp_path / "x.h5", tmp_path / "out.zarr", dataset="b")
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "out.zarr"))["samples"][:], 2 * X)


def test_all_zero_chunks_are_stored_so_the_fit_needs_no_flag(tmp_path):
    zeros = np.zeros((3000, 3), dtype=np.float32)
    zeros[:, 0] = np.arange(3000) % 3
    np.save(tmp_path / "z.npy", zeros)
    convert(tmp_path / "z.npy", tmp_path / "z.zarr", chunk_rows=1000)
    samples = zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["samples"]
    assert samples.nchunks_initialized == samples.nchunks == 3
    fit = dist_relu.ReLUGaussian().fit(tmp_path / "z.zarr")
    assert list(fit.status_[1:]) == [2, 2]  # all zero, named, not refused


def convert_cli(source, out, *options):
    return subprocess.run([DIST_RELU, "convert", str(source), "--out", str(out), *options],
                          capture_output=True, text=True, timeout=120)


def read_samples(out):
    return zarr.open_group(str(out), mode="r")["samples"][:]


def test_a_byte_order_mark_is_not_a_header(tmp_path):
    (tmp_path / "x.csv").write_text("\ufeff1.0,2.0\n3.0,4.5\n", encoding="utf-8")
    summary = convert(tmp_path / "x.csv", tmp_path / "out.zarr")
    assert summary["n_samples"] == 2 and summary["header"] is None
    np.testing.assert_array_equal(read_samples(tmp_path / "out.zarr"), [[1.0, 2.0], [3.0, 4.5]])
    result = convert_cli(tmp_path / "x.csv", tmp_path / "cli.zarr")
    assert result.returncode == 0 and "converted 2 rows × 2 columns" in result.stdout, result.stderr
    assert "skipped" not in result.stdout
    (tmp_path / "h.csv").write_text("\ufeffa,b\n1,2\n", encoding="utf-8")
    assert convert(tmp_path / "h.csv", tmp_path / "h.zarr")["header"] == "a,b"


@pytest.mark.parametrize("header", ["a,b,c", '"x1","x2","x3"'])
def test_a_detected_header_is_reported(tmp_path, header):
    (tmp_path / "x.csv").write_text(f"{header}\n1,2,3\n4,5,nan\n")
    summary = convert(tmp_path / "x.csv", tmp_path / "out.zarr")
    assert summary["header"] == header and summary["n_samples"] == 2 and summary["comment_lines"] == 0
    np.testing.assert_array_equal(read_samples(tmp_path / "out.zarr"), [[1, 2, 3], [4, 5, np.nan]])
    result = convert_cli(tmp_path / "x.csv", tmp_path / "cli.zarr")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"rows; skipped a header line {header!r}"), result.stdout


def test_no_header_refuses_a_word_header(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(io.InputError, match=r"x.csv, line 1: column 1 is not a number: 'a'"):
        convert(tmp_path / "x.csv", tmp_path / "out.zarr", header=False)
    result = convert_cli(tmp_path / "x.csv", tmp_path / "out.zarr", "--no-header")
    assert result.returncode == EXIT_BAD_INPUT and "x.csv, line 1: column 1 is not a number" in result.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_header_skips_a_first_line_of_numbers(tmp_path):
    (tmp_path / "x.csv").write_text("\n0,1\n3,4\n5,6\n")
    summary = convert(tmp_path / "x.csv", tmp_path / "out.zarr", header=True)
    assert summary["header"] == "0,1" and summary["n_samples"] == 2
    np.testing.assert_array_equal(read_samples(tmp_path / "out.zarr"), [[3, 4], [5, 6]])
    result = convert_cli(tmp_path / "x.csv", tmp_path / "cli.zarr", "--header")
    assert result.returncode == 0 and "converted 2 rows" in result.stdout and "header line '0,1'" in result.stdout
    assert convert(tmp_path / "x.csv", tmp_path / "detect.zarr")["n_samples"] == 3  # detected: numbers are data
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(io.InputError, match="applies to CSV and TSV files, not npy"):
        convert(tmp_path / "x.npy", tmp_path / "npy.zarr", header=True)


def test_comment_lines_are_skipped_and_counted(tmp_path):
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", header="a,b,c,d")  # writes '# a,b,c,d'
    summary = convert(tmp_path / "x.csv", tmp_path / "out.zarr", chunk_rows=1000)
    assert summary["n_samples"] == 5003 and summary["comment_lines"] == 1 and summary["header"] is None
    np.testing.assert_array_equal(read_samples(tmp_path / "out.zarr"), X.astype(np.float64))
    (tmp_path / "y.tsv").write_text("# made by hand\nx\ty\n1\t2\n\n  # indented\n3\t4\n")
    summary = convert(tmp_path / "y.tsv", tmp_path / "y.zarr")
    assert (summary["comment_lines"], summary["header"], summary["n_samples"]) == (2, "x\ty", 2)
    np.testing.assert_array_equal(read_samples(tmp_path / "y.zarr"), [[1, 2], [3, 4]])
    result = convert_cli(tmp_path / "y.tsv", tmp_path / "cli.zarr")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("; skipped a header line 'x\\ty' and 2 comment lines"), result.stdout
    result = convert_cli(tmp_path / "x.csv", tmp_path / "cli_x.zarr")
    assert result.stdout.strip().endswith("; skipped 1 comment line"), result.stdout


# The codecs of the sample stores, chosen in benchmarks/codec_study.py (benchmarks/README.md, "Codecs of the sample
# stores"), as an array's metadata lists them.
SAMPLE_CODECS_METADATA = [{"name": "bytes", "configuration": {"endian": "little"}},
                          {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]


def stored_codecs(path):
    return [codec.to_dict() for codec in zarr.open_group(str(path), mode="r")["samples"].metadata.codecs]


def test_sample_stores_have_the_chosen_codecs_and_read_back_exactly(tmp_path):
    from dist_relu import graph

    # simulate_to_zarr, and dist-relu simulate, which calls it
    weights, bias = dist_relu.figure1_truth(5, seed=3)
    dist_relu.simulate_to_zarr(tmp_path / "sim.zarr", weights, bias, 3000, chunk_rows=1000, seed=3)
    subprocess.run([DIST_RELU, "simulate", "--n", "3000", "--d", "5", "--seed", "3", "--chunk-rows", "1000",
                    "--out", str(tmp_path / "sim-cli.zarr")], check=True, capture_output=True, timeout=120)
    drawn = graph.simulated_samples(3000, weights, bias, 1000, 3, np.float32).compute()
    for name in ("sim.zarr", "sim-cli.zarr"):
        assert stored_codecs(tmp_path / name) == SAMPLE_CODECS_METADATA, name
        np.testing.assert_array_equal(read_samples(tmp_path / name), drawn)
    # convert, and dist-relu convert
    source = write(tmp_path, "npy")
    convert(source, tmp_path / "conv.zarr", chunk_rows=1000)
    convert_cli(source, tmp_path / "conv-cli.zarr", "--chunk-rows", "1000").check_returncode()
    for name in ("conv.zarr", "conv-cli.zarr"):
        assert stored_codecs(tmp_path / name) == SAMPLE_CODECS_METADATA, name
        assert read_samples(tmp_path / name).tobytes() == X.tobytes()
    assert [codec.to_dict() for codec in io.SAMPLE_CODECS["compressors"]] == SAMPLE_CODECS_METADATA[1:]


@pytest.mark.parametrize("compressors", ["auto", None, "blosc", "gzip"])
def test_stores_of_any_codec_are_fitted_alike(tmp_path, compressors):
    from zarr.codecs import BloscCodec, GzipCodec

    compressors = {"blosc": BloscCodec(cname="lz4", shuffle="bitshuffle", typesize=4), "gzip": GzipCodec()}.get(
        compressors, compressors)
    zarr.create_array(str(tmp_path / "x.zarr"), data=X, chunks=(1000, 4), compressors=compressors)
    fit = dist_relu.ReLUGaussian().fit(tmp_path / "x.zarr")
    np.testing.assert_array_equal(fit.counts_, dist_relu.ReLUGaussian().fit(X).counts_)


def test_every_writer_of_sample_stores_takes_its_codecs_from_the_constant(tmp_path, monkeypatch):
    """With ``io.SAMPLE_CODECS`` set to another codec, simulate and convert (Python and command line) write that one."""
    other = {"compressors": ({"name": "blosc", "configuration": {"typesize": 4, "cname": "lz4", "clevel": 5,
                                                                "shuffle": "bitshuffle", "blocksize": 0}},)}
    expected = SAMPLE_CODECS_METADATA[:1] + list(other["compressors"])
    monkeypatch.setattr(io, "SAMPLE_CODECS", other)
    weights, bias = dist_relu.figure1_truth(3, seed=0)
    dist_relu.simulate_to_zarr(tmp_path / "sim.zarr", weights, bias, 2000, chunk_rows=1000)
    source = write(tmp_path, "npy")
    convert(source, tmp_path / "conv.zarr", chunk_rows=1000)
    patched = ("import sys; from dist_relu import io, cli; io.SAMPLE_CODECS = {!r}; sys.argv[0] = 'dist-relu'; "
               "cli.main()")
    for command in (["simulate", "--n", "2000", "--d", "3", "--out", str(tmp_path / "sim-cli.zarr")],
                    ["convert", str(source), "--out", str(tmp_path / "conv-cli.zarr")]):
        subprocess.run([sys.executable, "-c", patched.format(other), *command], check=True, capture_output=True,
                       timeout=120)
    for name in ("sim.zarr", "conv.zarr", "sim-cli.zarr", "conv-cli.zarr"):
        assert stored_codecs(tmp_path / name) == expected, name
    assert read_samples(tmp_path / "conv-cli.zarr").tobytes() == X.tobytes()
