"""Fits that grow: new samples added to a stored fit, and fits of separate pieces merged, equal one fit of all."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import io

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

BIN = Path(sys.executable).parent
EXACT = ("counts", "n_zero", "n_positive", "thresholds", "value_problems")
ROUNDED = ("sum_positive", "sum_sq_positive", "covariance", "bias", "scale", "positive_fraction", "covariance_se",
           "correlation_se", "bias_se", "scale_se", "sum_cube_positive", "sum_fourth_positive", "model_check")


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    """A simulated store, and its first 120,000 and last 80,000 rows as two more stores (other chunkings)."""
    root = tmp_path_factory.mktemp("pieces")
    weights, bias = dist_relu.figure1_truth(12, seed=4, bias="gaussian")
    whole = root / "whole.zarr"
    dist_relu.simulate_to_zarr(whole, weights, bias, 200_000, chunk_rows=25_000, seed=4)
    samples = zarr.open_group(str(whole))["samples"][:]
    paths = []
    for name, rows, chunk in (("first", slice(0, 120_000), 40_000), ("second", slice(120_000, None), 30_000)):
        path = root / f"{name}.zarr"
        zarr.open_group(str(path), mode="w").create_array("samples", data=samples[rows], chunks=(chunk, 12))
        paths.append(path)
    return whole, *paths


def assert_same_fit(got, expected):
    for name in EXACT:
        np.testing.assert_array_equal(got[name][:], expected[name][:], err_msg=name)
    for name in ROUNDED:
        np.testing.assert_allclose(got[name][:], expected[name][:], rtol=1e-10, atol=1e-13, err_msg=name)
    assert got.attrs["n_samples"] == expected.attrs["n_samples"]


def test_an_update_equals_a_fit_of_the_concatenated_samples(tmp_path, pieces):
    whole, first, second = pieces
    dist_relu.fit_to_zarr(first, tmp_path / "first.zarr", pilot_rows=5000)
    thresholds = zarr.open_group(str(tmp_path / "first.zarr"))["thresholds"][:]
    attributes = dist_relu.fit_to_zarr(second, tmp_path / "updated.zarr", update=tmp_path / "first.zarr")
    dist_relu.fit_to_zarr(whole, tmp_path / "whole.zarr", thresholds=thresholds)
    updated, expected = (zarr.open_group(str(tmp_path / name)) for name in ("updated.zarr", "whole.zarr"))
    assert_same_fit(updated, expected)
    assert attributes["n_samples"] == 200_000
    assert [part["n_samples"] for part in attributes["parts"]] == [120_000, 80_000]
    # ...and the update is not the first fit: 80,000 more samples moved the estimates.
    assert not np.array_equal(updated["covariance"][:], zarr.open_group(str(tmp_path / "first.zarr"))["covariance"][:])


def test_fits_of_pieces_counted_at_the_same_thresholds_merge_into_the_fit_of_all(tmp_path, pieces):
    whole, first, second = pieces
    dist_relu.fit_to_zarr(first, tmp_path / "first.zarr", pilot_rows=5000)
    thresholds = zarr.open_group(str(tmp_path / "first.zarr"))["thresholds"][:]
    dist_relu.fit_to_zarr(second, tmp_path / "second.zarr", thresholds=thresholds, column_block=5)
    dist_relu.merge_fits([tmp_path / "first.zarr", tmp_path / "second.zarr"], tmp_path / "merged.zarr")
    dist_relu.fit_to_zarr(whole, tmp_path / "whole.zarr", thresholds=thresholds)
    assert_same_fit(zarr.open_group(str(tmp_path / "merged.zarr")), zarr.open_group(str(tmp_path / "whole.zarr")))


def test_fits_at_other_thresholds_or_not_additive_are_refused(tmp_path, pieces):
    whole, first, second = pieces
    dist_relu.fit_to_zarr(first, tmp_path / "first.zarr", pilot_rows=5000)
    dist_relu.fit_to_zarr(second, tmp_path / "second.zarr", pilot_rows=5000)
    with pytest.raises(io.InputError, match="different thresholds"):
        dist_relu.merge_fits([tmp_path / "first.zarr", tmp_path / "second.zarr"], tmp_path / "merged.zarr")
    dist_relu.fit_to_zarr(first, tmp_path / "sgd.zarr", method="sgd", pilot_rows=5000)
    with pytest.raises(io.InputError, match="additive"):
        dist_relu.fit_to_zarr(second, tmp_path / "updated.zarr", update=tmp_path / "sgd.zarr")
    assert not (tmp_path / "merged.zarr").exists() and not (tmp_path / "updated.zarr").exists()


def run(*arguments):
    return subprocess.run([str(BIN / "dist-relu"), *map(str, arguments)], capture_output=True, text=True, timeout=300)


def test_update_and_merge_through_the_command_line(tmp_path, pieces):
    whole, first, second = pieces
    assert run("fit", first, "--out", tmp_path / "first.zarr", "--pilot-rows", 5000).returncode == 0
    result = run("fit", second, "--update", tmp_path / "first.zarr", "--out", tmp_path / "updated.zarr")
    assert result.returncode == 0, result.stderr
    assert "fitted 200,000 samples" in result.stdout and "part: 80,000 samples" in result.stdout
    assert run("fit", whole, "--thresholds-from", tmp_path / "first.zarr", "--out", tmp_path / "whole.zarr").returncode == 0
    assert_same_fit(zarr.open_group(str(tmp_path / "updated.zarr")), zarr.open_group(str(tmp_path / "whole.zarr")))

    assert run("fit", second, "--thresholds-from", tmp_path / "first.zarr", "--out", tmp_path / "second.zarr").returncode == 0
    result = run("merge", tmp_path / "first.zarr", tmp_path / "second.zarr", "--out", tmp_path / "merged.zarr", "--json")
    assert result.returncode == 0, result.stderr
    assert_same_fit(zarr.open_group(str(tmp_path / "merged.zarr")), zarr.open_group(str(tmp_path / "whole.zarr")))
    refused = run("merge", tmp_path / "first.zarr", whole, "--out", tmp_path / "bad.zarr")
    assert refused.returncode == 2 and "not a dist_relu fit" in refused.stderr
