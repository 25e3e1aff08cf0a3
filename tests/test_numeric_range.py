"""Every dtype of real numbers is fitted or refused, and a fit follows the data's scale to float64's limits.

The data here are dyadic (multiples of 2**-12 below 16), so that multiplying
them by a power of two is exact even far into the subnormals: a fit of such
a multiple must then equal the multiple of the fit, bit for bit.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import dist_relu
from dist_relu import compiled, estimator, io, kernels
from dist_relu.cli import EXIT_BAD_INPUT
from dist_relu.pipeline import Input
from dist_relu.plan import plan_fit
from dist_relu.settings import OneLayerSettings

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

DIST_RELU = str(Path(sys.executable).with_name("dist-relu"))
PILOT_ROWS = 2000  # of 6000: the pilot (and the units of the sums) come from the first third
EXACT = ("counts", "n_zero", "n_positive", "status")


@pytest.fixture(scope="module")
def values():
    """Return (6000, 4) dyadic samples: three correlated coordinates and one all zero."""
    rng = np.random.default_rng(2024)
    weights = rng.standard_normal((3, 3)) / np.sqrt(3)
    x = np.maximum(0, rng.standard_normal((6000, 3)) @ weights.T + [0.5, 0.0, -0.3])
    x = np.round(x * 2**12) / 2**12
    assert x.max() < 16
    return np.column_stack([x, np.zeros(6000)])


def write(path, data, dtype, zarr_format=3):
    """Write ``data`` as ``dtype`` into the array ``samples`` of a new Zarr group on disk; return its path."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("samples", shape=data.shape, chunks=(1500, data.shape[1]), dtype=dtype)[...] = data
    return path


def fitted(path):
    """Return the arrays of the default fit of the store at ``path`` (``ReLUGaussian``), by the output's names."""
    fit = dist_relu.ReLUGaussian(pilot_rows=PILOT_ROWS).fit(path)
    arrays = {"covariance": fit.covariance_, "bias": fit.bias_, "scale": fit.scale_, "status": fit.status_,
              "thresholds": fit.thresholds_, "counts": fit.counts_, "statistics_exponent": fit.statistics_exponent_}
    return arrays | {name: fit.statistics_[:, k] for k, name in enumerate(kernels.STATISTICS)}


def stored(path):
    return {name: array[...] for name, array in zarr.open_group(str(path), mode="r").arrays()}


def in_data_units(arrays):
    """Return ``arrays`` with the sums multiplied out of their units ``2**statistics_exponent``."""
    exponents = arrays["statistics_exponent"]
    with np.errstate(over="ignore"):  # S2 of data beyond 2**512
        return arrays | {"sum_positive": np.ldexp(arrays["sum_positive"], exponents),
                         "sum_sq_positive": np.ldexp(arrays["sum_sq_positive"], 2 * exponents)}


# name: (stored dtype, zarr format, the values stored, the native dtype they are fitted as)
DTYPES = {
    "float16": ("float16", 3, lambda x: x, np.float32),
    ">f4": (">f4", 2, lambda x: x, np.float32),
    ">f8": (">f8", 2, lambda x: x, np.float64),
    ">i2": (">i2", 2, lambda x: np.round(x * 100), np.float64),
    "int8": ("int8", 3, lambda x: np.round(x * 20).clip(0, 127), np.float64),
    "uint64": ("uint64", 3, lambda x: x * 2**40, np.float64),
    "bool": ("bool", 3, lambda x: x > 0.7, np.float64),
    **{name: (name, 3, lambda x: np.round(x * 20), np.float64)
       for name in ("int16", "int32", "int64", "uint8", "uint16", "uint32")},
}
# Through the command line too: one of each kind.
CLI_DTYPES = ("float16", ">f4", ">f8", ">i2", "int8", "uint64", "bool")


@pytest.fixture(scope="module")
def dtype_stores(tmp_path_factory, values):
    """Return {name: (store of that dtype, store of the same values in the native float they are fitted as)}."""
    root = tmp_path_factory.mktemp("dtypes")
    stores = {}
    for name, (dtype, zarr_format, make, native) in DTYPES.items():
        data = make(values).astype(dtype)
        assert zarr.open_group(str(write(root / f"{name}.zarr", data, dtype, zarr_format)))["samples"].dtype == dtype
        stores[name] = (root / f"{name}.zarr", write(root / f"{name}-native.zarr", data.astype(native), native))
    return stores


@pytest.mark.parametrize("name", DTYPES)
def test_each_dtype_is_fitted_as_the_same_values_in_native_floating_point(dtype_stores, name):
    path, native = dtype_stores[name]
    assert io.open_samples(path).dtype == DTYPES[name][3]
    got, expected = fitted(path), fitted(native)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_each_dtype_is_fitted_through_the_command_line(dtype_stores, tmp_path):
    # Started together: each process pays its start-up while the others run.
    processes = {name: subprocess.Popen([DIST_RELU, "fit", str(path), "--out", str(tmp_path / f"{name}.zarr"),
                                         "--pilot-rows", str(PILOT_ROWS)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, (path, _) in dtype_stores.items() if name in CLI_DTYPES}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {stderr}"
        got = stored(tmp_path / f"{name}.zarr")
        expected = fitted(dtype_stores[name][1])
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}: {key}")


def test_a_float16_npy_converted_by_the_command_line_is_fitted(tmp_path, values):
    np.save(tmp_path / "half.npy", values.astype(np.float16))
    converted = subprocess.run([DIST_RELU, "convert", str(tmp_path / "half.npy"), "--out", str(tmp_path / "half.zarr"),
                                "--chunk-rows", "1500"], capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr
    assert zarr.open_group(str(tmp_path / "half.zarr"))["samples"].dtype == np.float16
    got = fitted(tmp_path / "half.zarr")
    expected = fitted(write(tmp_path / "single.zarr", values.astype(np.float16).astype(np.float32), np.float32))
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_extended_precision_is_refused_by_name():
    with pytest.raises(io.InputError, match="extended precision"):
        io.open_samples(np.ones((10, 2), dtype=np.longdouble))


def test_the_units_of_the_sums_are_powers_of_two_outside_a_window():
    largest = np.array([0, 1.0, 2.0**256, 3 * 2.0**300, 2.0**-256, 2.0**-300, 5e-324, 1.7e308])
    expected = [0, 0, 0, 302, 0, -299, -1000, 1000]  # frexp's exponent, at most 1000 in size
    np.testing.assert_array_equal(kernels.statistics_exponents(largest), expected)
    x = np.array([[1.0, np.nan, -1.0, 3.0], [2.0, 5.0, -2.0, np.inf], [0.5, 0.0, 0.0, 7.0]], dtype=np.float32)
    np.testing.assert_array_equal(kernels.chunk_largest_values(x), [2.0, 5.0, 0.0, 7.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_in_units_of_a_power_of_two_are_the_sums_scaled_exactly(values, dtype):
    x = values[:1000].astype(dtype)
    exponents = np.array([-500, 0, 3, 700])
    plain, scaled = kernels.chunk_statistics(x), kernels.chunk_statistics(x, exponents=exponents)
    np.testing.assert_array_equal(scaled[:, 2], np.ldexp(plain[:, 2], -exponents))
    np.testing.assert_array_equal(scaled[:, 3], np.ldexp(plain[:, 3], -2 * exponents))
    fused = compiled.chunk_pass(x, np.full(4, 0.5), exponents=exponents)
    np.testing.assert_array_equal(fused.statistics, scaled)
    np.testing.assert_array_equal(fused.problems, kernels.chunk_value_problems(x))
    # The solve standardises first: in other units it gives the same bits, times the unit.
    for got, expected in zip(kernels.fit_coordinates(scaled, exponents=exponents), kernels.fit_coordinates(plain)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(kernels.rescaled_statistics(scaled, exponents, exponents + 2),
                                  kernels.chunk_statistics(x, exponents=exponents + 2))


def step_one(path):
    """Return the arrays of a fit of ``path`` short of Σ̂: b̂, σ̂, status, thresholds, counts and statistics.

    As ``ReLUGaussian.fit`` makes them; for data whose Σ̂ float64 cannot hold.
    """
    plan = plan_fit(Input.open(path), OneLayerSettings(pilot_rows=PILOT_ROWS))
    sums = plan.main.sums
    statistics, counts, thresholds, exponents = da.compute(sums.statistics, sums.counts, plan.main.thresholds,
                                                           sums.statistics_exponent)
    settings = plan.settings
    estimates = estimator.estimates(da.from_array(statistics), da.from_array(counts), sums.rows_kept, thresholds,
                                    settings.method, settings.inversion, settings.clip_bias, exponents=exponents)
    names = ("bias", "scale", "status")
    arrays = dict(zip(names, da.compute(*(estimates[name] for name in names))))
    arrays |= {"counts": counts, "thresholds": thresholds, "statistics_exponent": exponents}
    return arrays | {name: statistics[:, k] for k, name in enumerate(kernels.STATISTICS)}


# (the multiplier c, the dtype, whether Σ̂ = c²Σ̂(X) fits float64 (else the fit is refused), rtol)
SCALES = {
    "2**-1060": (2.0**-1060, "float64", False, 0),  # deep in the subnormals; exact
    "1e-310": (1e-310, "float64", False, 1e-12),  # subnormal
    "1e-150": (1e-150, "float64", True, 1e-12),  # squares near float64's smallest normal
    "1e150": (1e150, "float64", True, 1e-12),
    "5e153": (5e153, "float64", True, 1e-12),  # squares of the data overflow float64, σ̂² does not
    "1e200": (1e200, "float64", False, 1e-12),  # squares overflow float64
    "1e300": (1e300, "float64", False, 1e-12),
    "float32 2**-120": (2.0**-120, "float32", True, 0),  # subnormal in float32; exact
    "float32 2**100": (2.0**100, "float32", True, 0),  # exact
    "float32 1e30": (1e30, "float32", True, 1e-6),  # c·X rounded to float32's 24 bits
}


@pytest.fixture(scope="module")
def scale_stores(tmp_path_factory, values):
    root = tmp_path_factory.mktemp("scales")
    stores = {"float64": write(root / "one-float64.zarr", values, "float64"),
              "float32": write(root / "one-float32.zarr", values, "float32")}
    for name, (c, dtype, _, _) in SCALES.items():
        stores[name] = write(root / f"{name.replace(' ', '-')}.zarr", (c * values.astype(dtype)).astype(dtype), dtype)
    return stores


def assert_scaled(got, expected, c, rtol):
    """Assert that ``got`` is ``expected`` in units ``c``: counts exactly, estimates to ``rtol`` (0: the same bits)."""
    powers = {"bias": 1, "scale": 1, "thresholds": 1, "sum_positive": 1, "sum_sq_positive": 2, "covariance": 2,
              "bias_se": 1, "scale_se": 1, "covariance_se": 2, "correlation_se": 0, "model_check": 0}
    got, expected = in_data_units(got), in_data_units(expected)
    for key in expected:
        if key in EXACT:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        elif key in powers and (key != "sum_sq_positive" or np.isfinite(got[key]).all()):
            with np.errstate(over="ignore"):
                scaled = expected[key] * c ** powers[key]
            if rtol == 0:
                np.testing.assert_array_equal(got[key], scaled, err_msg=key)
            else:
                np.testing.assert_allclose(got[key], scaled, rtol=rtol, atol=0, err_msg=key)


@pytest.mark.parametrize("name", SCALES)
def test_a_fit_of_c_times_the_data_is_c_times_the_fit(scale_stores, name):
    c, dtype, representable, rtol = SCALES[name]
    path, reference = scale_stores[name], scale_stores[dtype]
    if dtype == "float32":
        c = np.float64(np.float32(c))
    if representable:
        assert_scaled(fitted(path), fitted(reference), c, rtol)
    else:
        refused = r"Σ̂ = σ̂_i σ̂_j ρ_ij would (over|under)flow float64.*rescale the data"
        with pytest.raises(io.InputError, match=refused):
            dist_relu.ReLUGaussian(pilot_rows=PILOT_ROWS).fit(path)
    # b̂ and σ̂ follow the data's scale wherever the data are finite, Σ̂ or not
    step, reference_step = step_one(path), step_one(reference)
    assert_scaled(step, reference_step, c, rtol)
    assert np.isfinite(step["bias"]).all() and np.isfinite(step["scale"]).all()
    assert not reference_step["statistics_exponent"].any()
    # float32's squares never leave float64's range: its sums keep the data's units
    assert step["statistics_exponent"].any() == (dtype == "float64")


@pytest.mark.parametrize("name", ["5e153", "2**300"])
@pytest.mark.parametrize("passes", [1, 2])
def test_the_papers_sgd_follows_the_scale_of_the_data(scale_stores, tmp_path, values, name, passes):
    c, rtol = (5e153, 1e-12) if name == "5e153" else (2.0**300, 0)
    path = scale_stores.get(name) or write(tmp_path / "in.zarr", c * values, "float64")
    got, expected = (dist_relu.ReLUGaussian(method="sgd", passes=passes, pilot_rows=PILOT_ROWS).fit(source)
                     for source in (path, scale_stores["float64"]))
    assert got.statistics_exponent_.any()
    np.testing.assert_array_equal(got.counts_, expected.counts_)
    for estimate, power in (("bias_", 1), ("scale_", 1), ("covariance_", 2)):
        np.testing.assert_allclose(getattr(got, estimate), getattr(expected, estimate) * c**power, rtol=rtol, atol=0)


def tree_digest(path):
    """Return a digest of every file's relative path and bytes under ``path``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name, message", [
    ("1e200", "would overflow float64 (σ̂ up to {largest:.3g})"),
    ("1e-310", "would underflow float64's normal range (σ̂ down to {least:.3g})"),
])
def test_the_command_line_refuses_a_covariance_float64_cannot_hold(scale_stores, tmp_path, name, message):
    source = scale_stores[name]
    before = tree_digest(source)
    out = tmp_path / "fit.zarr"
    result = subprocess.run([DIST_RELU, "fit", str(source), "--out", str(out), "--pilot-rows", str(PILOT_ROWS)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    scale = SCALES[name][0] * fitted(scale_stores["float64"])["scale"]
    assert len(lines) == 1 and lines[0].startswith("error: Σ̂ = σ̂_i σ̂_j ρ_ij "), result.stderr
    assert message.format(largest=scale.max(), least=scale[scale > 0].min()) in lines[0]
    assert "rescale the data" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no output, and no partial store
    assert tree_digest(source) == before


def test_sums_that_overflow_beyond_the_pilots_units_are_refused(tmp_path, values):
    x = values.copy()
    x[4000:, 0] *= 1e300  # after the pilot, whose largest value (about 4) sets e = 0
    with pytest.raises(io.InputError, match=r"overflow float64 in column\(s\) 0\b.*rescale the data"):
        dist_relu.fit_to_zarr(write(tmp_path / "in.zarr", x, "float64"), tmp_path / "fit.zarr", pilot_rows=PILOT_ROWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


def test_a_non_finite_estimate_of_an_ok_coordinate_is_never_returned(tmp_path, values, monkeypatch):
    path = write(tmp_path / "in.zarr", values, "float64")
    solve = kernels.fit_coordinates

    def broken(statistics, method="censored", exponents=None):
        bias, scale, status = solve(statistics, method, exponents)
        return np.where(np.arange(bias.size) == 1, np.nan, bias), scale, status

    monkeypatch.setattr(kernels, "fit_coordinates", broken)
    with pytest.raises(RuntimeError, match=r"NaN or ±inf estimates .* column\(s\) 1, whose status is ok"):
        dist_relu.ReLUGaussian(pilot_rows=PILOT_ROWS).fit(path)
    with pytest.raises(RuntimeError, match=r"column\(s\) 1, whose status is ok"):
        dist_relu.fit_to_zarr(path, tmp_path / "fit.zarr", pilot_rows=PILOT_ROWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


def test_the_estimate_checks():
    ok, failed = kernels.STATUS_OK, kernels.STATUS_NOT_CONVERGED
    finite = np.ones(3)
    estimator.check_estimates(finite, finite, np.full(3, ok), covariance_nonfinite=np.zeros(3))
    # Non-finite, but reported: the status says the coordinate was not solved.
    estimator.check_estimates(np.array([1, np.nan, 1]), finite, np.array([ok, failed, ok]))
    with pytest.raises(RuntimeError, match=r"column\(s\) 2,"):
        estimator.check_estimates(finite, finite, np.full(3, ok), covariance_nonfinite=np.array([0, 0, 1]))
    with pytest.raises(io.InputError, match=r"b̂ or σ̂ overflow float64 in column\(s\) 0"):
        estimator.check_estimates(np.array([np.inf, 1, 1]), finite, np.full(3, ok))
    statistics = np.ones((3, 4))
    statistics[1, 3] = np.inf
    with pytest.raises(io.InputError, match=r"overflow float64 in column\(s\) 1:"):
        estimator.check_estimates(finite, finite, np.full(3, ok), statistics)
    with pytest.raises(io.InputError, match=r"overflow float64 \(σ̂ up to 2e\+154\)"):
        estimator.check_estimates(finite, np.array([1, 2e154, 0]), np.full(3, ok))
    estimator.check_estimates(finite, np.array([1.3e154, 1.5e-154, 0]), np.full(3, ok))
    with pytest.raises(io.InputError, match=r"underflow .* \(σ̂ down to 1e-155\)"):
        estimator.check_estimates(finite, np.array([1, 1e-155, 0]), np.full(3, ok))


def test_fits_in_other_units_update_and_merge_into_the_fit_of_all(tmp_path, values):
    c = 2.0**300  # beyond 2**256: the sums are kept in units 2**e
    first, second = c * values[:3000], c * values[3000:]
    second[0] = c * 40  # a larger first value: the second piece's units are larger than the first's
    whole = write(tmp_path / "whole.zarr", np.concatenate([first, second]), "float64")
    dist_relu.fit_to_zarr(write(tmp_path / "first.zarr", first, "float64"), tmp_path / "fit1.zarr", pilot_rows=1000)
    thresholds = stored(tmp_path / "fit1.zarr")["thresholds"]
    dist_relu.fit_to_zarr(write(tmp_path / "second.zarr", second, "float64"), tmp_path / "fit2.zarr",
                          thresholds=thresholds)
    dist_relu.fit_to_zarr(tmp_path / "second.zarr", tmp_path / "updated.zarr", update=tmp_path / "fit1.zarr")
    dist_relu.merge_fits([tmp_path / "fit1.zarr", tmp_path / "fit2.zarr"], tmp_path / "merged.zarr")
    dist_relu.fit_to_zarr(whole, tmp_path / "all.zarr", thresholds=thresholds, pilot_rows=1000)
    exponents = {name: stored(tmp_path / f"{name}.zarr")["statistics_exponent"] for name in ("fit1", "fit2", "all")}
    # e is the binary exponent of the largest value of the first rows: the pilot's, or (given thresholds) as many
    np.testing.assert_array_equal(exponents["fit1"], np.frexp(first[:1000].max(axis=0))[1])
    np.testing.assert_array_equal(exponents["fit2"], np.frexp(second.max(axis=0))[1])
    assert (exponents["fit2"] > exponents["fit1"]).all()
    expected = stored(tmp_path / "all.zarr")
    for name in ("updated", "merged"):
        got = stored(tmp_path / f"{name}.zarr")
        np.testing.assert_array_equal(got["statistics_exponent"], np.maximum(exponents["fit1"], exponents["fit2"]))
        for key in EXACT:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        for key, power in (("sum_positive", 1), ("sum_sq_positive", 2)):
            np.testing.assert_allclose(np.ldexp(got[key], power * got["statistics_exponent"]),
                                       np.ldexp(expected[key], power * expected["statistics_exponent"]),
                                       rtol=1e-12, err_msg=f"{name}: {key}")
        for key in ("bias", "scale", "covariance"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-10, atol=0, err_msg=f"{name}: {key}")


def test_a_fit_stored_without_exponents_reads_as_exponent_zero(tmp_path, values):
    second = write(tmp_path / "second.zarr", values[3000:], "float64")
    dist_relu.fit_to_zarr(write(tmp_path / "in.zarr", values[:3000], "float64"), tmp_path / "fit.zarr", pilot_rows=1000)
    dist_relu.fit_to_zarr(second, tmp_path / "updated.zarr", update=tmp_path / "fit.zarr")
    group = zarr.open_group(str(tmp_path / "fit.zarr"), mode="r+")
    del group["statistics_exponent"]  # as fits were stored before the units were kept
    dist_relu.fit_to_zarr(second, tmp_path / "updated-old.zarr", update=tmp_path / "fit.zarr")
    dist_relu.fit_to_zarr(second, tmp_path / "second-fit.zarr", thresholds=group["thresholds"][...])
    dist_relu.merge_fits([tmp_path / "fit.zarr", tmp_path / "second-fit.zarr"], tmp_path / "merged-old.zarr")
    expected = stored(tmp_path / "updated.zarr")
    assert not expected["statistics_exponent"].any()
    for name in ("updated-old", "merged-old"):
        got = stored(tmp_path / f"{name}.zarr")
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}: {key}")
