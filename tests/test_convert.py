"""dist-relu convert: every format in, the same samples out, bad files refused clearly."""

import subprocess
import sys
import zipfile
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
