"""Digests of the outputs of a fixed set of fits, to check that a change of the code leaves every bit as it was.

Run it before and after a change and compare the two files::

    python tools/fit_digests.py before.json      # on the old code
    python tools/fit_digests.py after.json       # on the new code
    python tools/fit_digests.py --compare before.json after.json

Each fit's arrays are hashed (dtype, shape, bytes); its attributes are kept
apart from those that differ from run to run (times, identities, paths).
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

VOLATILE = {"created", "seconds", "timings", "fit_id", "source", "versions", "dist_relu_version", "memory",
            "data"}


def _digest(array):
    array = np.ascontiguousarray(array)
    return f"{array.dtype} {array.shape} {hashlib.sha256(array.tobytes()).hexdigest()[:16]}"


def _stable(attributes):
    kept = {key: value for key, value in attributes.items() if key not in VOLATILE}
    if kept.get("checkpoint"):
        kept["checkpoint"] = {**kept["checkpoint"], "url": None}
    if kept.get("parts"):
        kept["parts"] = [{"n_samples": part["n_samples"]} for part in kept["parts"]]
    return kept


def _stored(path):
    group = zarr.open_group(str(path), mode="r")
    arrays = {name: _digest(array[...]) for name, array in sorted(group.arrays())}
    return {"arrays": arrays, "attributes": _stable(dict(group.attrs))}


def _estimator(fit):
    names = ("covariance_", "bias_", "scale_", "status_", "positive_fraction_", "thresholds_", "counts_",
             "statistics_", "statistics_exponent_")
    return {"arrays": {name: _digest(getattr(fit, name)) for name in names},
            "attributes": _stable(fit.settings_)}


def digests(workdir):
    import dist_relu

    workdir = Path(workdir)
    weights, bias = dist_relu.figure1_truth(7, kappa=3.0, seed=4, bias="gaussian")
    data = workdir / "data.zarr"
    dist_relu.simulate_to_zarr(data, weights, bias, 40_000, chunk_rows=4_000, seed=4, dtype="float64")
    more = workdir / "more.zarr"
    dist_relu.simulate_to_zarr(more, weights, bias, 12_000, chunk_rows=3_000, seed=5, dtype="float32")
    holed = workdir / "holed.zarr"
    x = zarr.open_group(str(data), mode="r")["samples"][:12_000]
    x[[5, 900, 7001], [0, 3, 6]] = [np.nan, np.inf, -np.inf]
    group = zarr.open_group(str(holed), mode="w")
    group.create_array("samples", data=x, chunks=(2_000, 7))
    group.attrs["format"] = "dist_relu.samples"

    fits = {
        "default": (data, {}),
        "pilot": (data, {"pilot_rows": 3_000, "split_every": 3}),
        "truncated-2": (data, {"method": "truncated", "passes": 2}),
        "sgd-2-paper": (data, {"method": "sgd", "passes": 2, "inversion": "model", "clip_bias": True}),
        "sgd-1": (data, {"method": "sgd", "sgd_batches": 3, "seed": 2}),
        "blocks-gemm": (data, {"column_block": 3, "count_kernel": "gemm"}),
        "blocks-popcount": (data, {"column_block": 2, "count_kernel": "popcount", "inversion": "model"}),
        "dropped": (holed, {"drop_nonfinite": True, "pilot_rows": 2_000}),
        "checkpointed": (data, {"checkpoint": str(workdir / "ck")}),
    }
    result = {}
    for name, (source, settings) in fits.items():
        out = workdir / f"{name}.zarr"
        dist_relu.fit_to_zarr(str(source), out, **settings)
        result[f"fit_to_zarr {name}"] = _stored(out)
        if "checkpoint" not in settings:
            fit = dist_relu.ReLUGaussian(**settings).fit(str(source))
            result[f"ReLUGaussian {name}"] = _estimator(fit)
            fit.save(workdir / f"{name}.saved.zarr")
            result[f"save {name}"] = _stored(workdir / f"{name}.saved.zarr")
    dist_relu.fit_to_zarr(str(more), workdir / "more.zarr.fit", thresholds_from=workdir / "default.zarr")
    result["thresholds_from"] = _stored(workdir / "more.zarr.fit")
    dist_relu.merge_fits([workdir / "default.zarr", workdir / "more.zarr.fit"], workdir / "merged.zarr")
    result["merge"] = _stored(workdir / "merged.zarr")
    dist_relu.fit_to_zarr(str(more), workdir / "updated.zarr", update=workdir / "default.zarr")
    result["update"] = _stored(workdir / "updated.zarr")
    return result


def main(argv):
    if argv[:1] == ["--compare"]:
        before, after = (json.loads(Path(path).read_text()) for path in argv[1:3])
        differ = 0
        for fit in sorted(set(before) | set(after)):
            old, new = before.get(fit, {}), after.get(fit, {})
            for part in ("arrays", "attributes"):
                a, b = old.get(part, {}), new.get(part, {})
                for key in sorted(set(a) | set(b)):
                    if a.get(key) != b.get(key):
                        differ += 1
                        print(f"{fit} {part} {key}: {a.get(key, '(absent)')!r} -> {b.get(key, '(absent)')!r}")
        print(f"{len(before)} fits before, {len(after)} after; {differ} differences")
        return 1 if differ else 0
    with tempfile.TemporaryDirectory() as workdir:
        result = digests(workdir)
    Path(argv[0]).write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote the digests of {len(result)} fits to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
