"""Bad input ends in one clear message, the bad-input exit code, and no output: API and CLI alike."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import io
from dist_relu.cli import EXIT_BAD_INPUT

from .clusters import hangup_as_in_a_terminal

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

DIST_RELU = str(Path(sys.executable).with_name("dist-relu"))


def good(n=400, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return np.maximum(0, rng.standard_normal((n, d)) + 0.3).astype(np.float32)


def store(tmp, values, chunks=(100, 3), name="samples"):
    group = zarr.open_group(str(tmp / "in.zarr"), mode="w")
    group.create_array(name, data=values, chunks=chunks)
    return tmp / "in.zarr"


def remove_chunk(tmp):
    path = store(tmp, good())
    os.remove(path / "samples" / "c" / "2" / "0")
    return path


def corrupt_chunk(tmp):
    path = store(tmp, good())
    (path / "samples" / "c" / "1" / "0").write_bytes(b"not zstd")
    return path


def with_value(value, rows, column):
    def make(tmp):
        x = good()
        x[rows, column] = value
        return store(tmp, x)

    return make


def not_a_store(tmp):
    (tmp / "in.zarr").write_text("hello")
    return tmp / "in.zarr"


CASES = {
    "missing path": (lambda tmp: tmp / "nothing.zarr", r"no such file or directory"),
    "not a zarr store": (not_a_store, r"not a Zarr store.*dist-relu convert"),
    "group without the array": (lambda tmp: store(tmp, good(), name="x"), r"no array 'samples' \(arrays: x\)"),
    "one dimension": (lambda tmp: store(tmp, good()[:, 0], chunks=(100,)), r"2-D array.*got 1 dimensions"),
    "three dimensions": (lambda tmp: store(tmp, good().reshape(400, 3, 1), chunks=(100, 3, 1)), r"got 3 dimensions"),
    "complex": (lambda tmp: store(tmp, good().astype(np.complex64)), r"complex numbers"),
    "text": (lambda tmp: store(tmp, np.array([["a", "b", "c"]] * 4)), r"holds text"),
    "one sample": (lambda tmp: store(tmp, good()[:1], chunks=(1, 3)), r"at least 2 samples; got 1"),
    # One pass stops at the pilot (its one run is rows 0-49: 5, 6 and 7 are in it, 390 and 399 are not);
    # two passes count all rows.
    "negative values": (with_value(-1.0, [5, 6, 390], 1),
                        r"(2 negative values among the pilot's 50 rows|3 negative values) in 1 column\(s\): 1 \([23]\)"),
    "NaN": (with_value(np.nan, [7], 2), r"1 NaN or ±inf values( among the pilot's 50 rows)? in 1 column\(s\): 2 \(1\)"),
    "inf": (with_value(np.inf, [399], 0), r"1 NaN or ±inf values in 1 column\(s\): 0 \(1\)"),
    "-inf": (with_value(-np.inf, [0], 2), r"1 negative values( among the pilot's 50 rows)? in 1 column\(s\): 2 \(1\)"),
    "missing chunk": (remove_chunk, r"1 of 4 chunks of the samples are missing \(first: c/2/0\)"),
    "corrupt chunk": (corrupt_chunk, r"cannot read the samples at rows 100:200, columns 0:3"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("passes", [1, 2])
def test_api_raises_a_clear_input_error(tmp_path, case, passes):
    make, message = CASES[case]
    source = make(tmp_path)
    with pytest.raises(io.InputError, match=message):
        dist_relu.fit_to_zarr(source, tmp_path / "fit.zarr", passes=passes, pilot_rows=50)
    assert not (tmp_path / "fit.zarr").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", CASES)
def test_cli_prints_one_line_and_exits_with_the_bad_input_code(tmp_path, case):
    make, message = CASES[case]
    source = make(tmp_path)
    result = subprocess.run([DIST_RELU, "fit", str(source), "--out", str(tmp_path / "fit.zarr"), "--pilot-rows", "50"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert pytest.importorskip("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "fit.zarr").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run([DIST_RELU, "fit", str(tmp_path / "nothing.zarr"), "--out", str(tmp_path / "f.zarr"),
                             "--debug"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" in result.stderr and "InputError" in result.stderr


def test_missing_chunks_can_be_allowed(tmp_path):
    path = remove_chunk(tmp_path)
    fit = dist_relu.ReLUGaussian().fit(path, allow_missing_chunks=True)
    assert fit.statistics_[:, 0].min() >= 100  # the absent chunk read as 100 rows of zeros


def test_integer_and_boolean_samples_are_accepted_as_numbers(tmp_path):
    counts = np.random.default_rng(1).poisson(2.0, size=(1000, 3)).astype(np.int32)
    as_int = dist_relu.ReLUGaussian().fit(store(tmp_path, counts))
    as_float = dist_relu.ReLUGaussian().fit(counts.astype(np.float64))
    np.testing.assert_array_equal(as_int.counts_, as_float.counts_)
    np.testing.assert_allclose(as_int.covariance_, as_float.covariance_, rtol=1e-12)
    dist_relu.ReLUGaussian().fit(counts > 1)


def test_a_degenerate_column_is_named_but_the_fit_goes_on(tmp_path):
    x = good()
    x[:, 1] = 0
    result = subprocess.run([DIST_RELU, "fit", str(store(tmp_path, x)), "--out", str(tmp_path / "fit.zarr")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 all zero" in result.stdout and "all zero: column 1" in result.stdout


@pytest.mark.parametrize("settings", [dict(passes=1), dict(passes=2), dict(method="sgd", passes=2, column_block=2)])
def test_dropping_nonfinite_rows_equals_fitting_without_them(tmp_path, settings):
    x = good(n=3000, d=5, seed=3)
    bad_rows = [0, 17, 1500, 2999]
    x[0, 1], x[17, 4], x[1500, 0], x[2999, 2] = np.nan, np.inf, -np.inf, np.nan
    clean = np.delete(x, bad_rows, axis=0)
    path = store(tmp_path, x, chunks=(700, 5))
    dropped = dist_relu.ReLUGaussian(pilot_rows=3000, drop_nonfinite=True, **settings).fit(path)
    reference = dist_relu.ReLUGaussian(pilot_rows=3000, **settings).fit(clean)
    assert dropped.n_samples_ == 2996 and dropped.settings_["rows_dropped"] == 4
    np.testing.assert_array_equal(dropped.counts_, reference.counts_)
    np.testing.assert_array_equal(dropped.statistics_[:, :2], reference.statistics_[:, :2])
    np.testing.assert_allclose(dropped.covariance_, reference.covariance_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dropped.bias_, reference.bias_, rtol=1e-9, atol=1e-12)


def test_dropping_through_the_cli_is_reported_and_stored(tmp_path):
    x = good(n=1000)
    x[5, 1] = np.nan
    out = tmp_path / "fit.zarr"
    result = subprocess.run([DIST_RELU, "fit", str(store(tmp_path, x)), "--out", str(out), "--drop-nonfinite"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "left out 1 rows holding NaN or ±inf" in result.stdout
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["n_samples"] == 999 and attrs["rows_dropped"] == 1 and attrs["drop_nonfinite"] is True


def test_dropping_every_row_is_refused(tmp_path):
    x = good(n=10)
    x[:, 0] = np.nan
    with pytest.raises(io.InputError, match="fewer than 2 samples are left"):
        dist_relu.ReLUGaussian(drop_nonfinite=True).fit(x)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_an_interrupted_fit_leaves_the_previous_output_intact(simulated, tmp_path, signal_name):
    import signal
    import time

    path, _, _ = simulated(800_000, 40, seed=9, chunk_rows=20_000)
    out = tmp_path / "fit.zarr"
    dist_relu.fit_to_zarr(path, out, pilot_rows=1000)
    before = zarr.open_group(str(out), mode="r")["covariance"][:]
    # The signal is sent once the new store is being written, which lasts a
    # fraction of a second; on a loaded machine the fit can finish before the
    # signal lands. Then the output is the new fit, complete, and we try again.
    for attempt in range(3):
        process = subprocess.Popen([DIST_RELU, "fit", str(path), "--out", str(out), "--overwrite", "--passes", "2"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=hangup_as_in_a_terminal)
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".fit.zarr.partial") for p in tmp_path.iterdir()):
            assert process.poll() is None and time.monotonic() < deadline, "the fit ended before it could be interrupted"
            time.sleep(0.005)
        process.send_signal(getattr(signal, signal_name))
        _, stderr = process.communicate(timeout=60)
        if zarr.open_group(str(out), mode="r").attrs["passes"] == 1:
            break
        assert [p.name for p in tmp_path.iterdir()] == ["fit.zarr"]  # the race was lost; the new fit is whole
        dist_relu.fit_to_zarr(path, out, pilot_rows=1000, overwrite=True)
    else:
        pytest.fail("the fit finished before the signal landed, three times")
    assert process.returncode != 0
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["covariance"][:], before)
    if signal_name != "SIGKILL":
        number = getattr(signal, signal_name)
        assert process.returncode == 128 + number, stderr
        assert stderr.strip().splitlines() == [f"interrupted by {signal_name}: no output was written; an earlier "
                                               "output is unchanged"]
        assert [p.name for p in tmp_path.iterdir()] == ["fit.zarr"]  # the partial store and the lock are removed
    else:
        # A hard kill leaves the partial store and the lock of a dead process: the next run cleans both.
        assert any(p.name == ".fit.zarr.lock" for p in tmp_path.iterdir())
        result = subprocess.run([DIST_RELU, "fit", str(path), "--out", str(out), "--overwrite"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "took over the lock" in result.stderr and "removed a partial output" in result.stderr
        assert [p.name for p in tmp_path.iterdir()] == ["fit.zarr"]
