"""The model check's false alarms on data from the model, and its power against positives of other laws.

Each one-layer fit computes, per coordinate, ``dist_relu.uncertainty.model_check``:
the third and fourth moments of the positives about ``b̂`` in units of ``σ̂``
against the fitted censored normal's, a statistic that is χ²(2) in the limit on
data from the model. A coordinate with at least
``uncertainty.MODEL_CHECK_MIN_POSITIVES`` positives fails above
``uncertainty.MODEL_CHECK_THRESHOLD`` (the χ²(2) quantile of 1 − 10⁻⁸, 36.84).

Many independent coordinates are fitted at once, as the tests do
(``tests/test_uncertainty.py``): each column of a batch is one coordinate, its
sufficient statistics ``(n0, n1, S1, S2)`` and the positives' ``(S3, S4)``
summed in float64 over float32 samples, then ``kernels.fit_coordinates``,
``kernels.coordinate_information``, ``uncertainty.coordinate_terms`` and
``uncertainty.model_check``: the library's own code from the sums on.
The sums are taken by a compiled loop here (checked at the start against
``kernels.positive_moments`` and the tests' statistics); batches of at most
``--batch-mb`` (128 MB) of float32 samples (the other laws' float64 draws
counted at 16 bytes a sample) are drawn and summed on two threads, each batch
from its own seed, so the result does not depend on the threads.

To measure the statistic below 10,000 positives, where the fit leaves it NaN,
this process sets ``uncertainty.MODEL_CHECK_MIN_POSITIVES = 0`` (the record
says so).

1. False alarms: ``x = max(0, b + z)``, ``z`` standard normal (σ = 1), at
   (n, b) = (2,000, 0.3), (20,000, −1), (20,000, 0.3), (200,000, 0.3): about
   1,200, 3,200, 12,000 and 120,000 positives, and (75,000, −1): 11,900
   positives, enough for the fit to check them, at the 16% positives of the
   second case. Per case, the fraction of
   coordinates whose statistic exceeds the χ²(2) quantiles of 1 − 10⁻², 10⁻⁴,
   10⁻⁶, 10⁻⁸ (9.21, 18.42, 27.63, 36.84), the counts, and the statistic's
   mean (χ²(2): 2), and how many are negative (a quadratic form of a
   covariance cannot be). The same samples' statistics are also fitted with
   ``method="truncated"``.
2. Power at n = 10⁵: positives of other laws before rectification
   (exponential(1) − 0.5, uniform(−1, 2), Student t₃, t₅, t₃₀ + 0.3, the
   mixture 0.5·N(−1, 0.5²) + 0.5·N(1, 0.5²), and N(0.3, 1) as the control):
   the fraction of coordinates failing (above 36.84) and the median statistic.
3. Through the user's path: ``ReLUGaussian(method=...).fit(x)`` of float32
   arrays of 250 coordinates ``max(0, z − 1)`` (16% positives), n = 200,000
   (31,700 positives), with ``MODEL_CHECK_MIN_POSITIVES`` restored: how many
   coordinates get the status ``not censored normal``, censored and truncated.

Results go to ``benchmarks/results/model_check.{json,png}``. Run from a
checkout with ``PYTHONPATH=.`` to measure its own ``dist_relu`` (the JSON
records the package's path).

    python benchmarks/model_check.py           # 7 minutes on the 2-core machine of benchmarks/README.md
    python benchmarks/model_check.py --quick   # a few seconds: fewer coordinates
    python benchmarks/model_check.py --plot-only benchmarks/results/model_check.json
"""

import argparse
import datetime
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np

import steps
from steps import package_fingerprint

LEVELS = (1e-2, 1e-4, 1e-6, 1e-8)  # P(χ²(2) > q) = exp(−q/2)
QUANTILES = tuple(-2.0 * np.log(p) for p in LEVELS)
# (n, b): about 1,200, 3,200, 12,000 and 120,000 positives, and 11,900 at 16% positives (as 3,200 are);
# coordinates per case (full run).
CASES = ((2_000, 0.3), (20_000, -1.0), (20_000, 0.3), (200_000, 0.3), (75_000, -1.0))
COORDINATES = (1_000_000, 200_000, 200_000, 60_000, 60_000)
QUICK_COORDINATES = (20_000, 4_000, 4_000, 1_000, 1_000)
METHODS = ("censored", "truncated")
POWER_N = 100_000
LAWS = ("normal + 0.3 (control)", "exponential(1) − 0.5", "uniform(−1, 2)", "t3 + 0.3", "t5 + 0.3", "t30 + 0.3",
        "mixture ½N(−1, ½²) + ½N(1, ½²)")
# Through ReLUGaussian().fit: arrays of FIT_COLUMNS coordinates max(0, z + FIT_BIAS), FIT_N samples (200 MB each).
FIT_N, FIT_BIAS, FIT_COLUMNS = 200_000, -1.0, 250
# Seeds: SeedSequence([ENTROPY, part, case or law, batch]), part 0 the false alarms, 1 the power,
# SeedSequence([ENTROPY, 2, array]) the fits.
ENTROPY = 20261201


@numba.njit(cache=True, nogil=True, fastmath=True)
def power_sums(y, shift, out):
    """Add to ``out`` (columns, 6) ``(n0, n1, S1, S2, S3, S4)`` of ``x = max(0, y + shift)``, a column per row of y.

    ``y`` (columns, n) float32; ``x`` is formed in float32 (as float32 data are), its sums in float64. Without
    branches, and ``fastmath`` lets the sums be reordered (vectorised): 0.2 ns a value against 5.8.
    """
    shift32 = np.float32(shift)
    zero = np.float32(0.0)
    for c in range(y.shape[0]):
        n1 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        for i in range(y.shape[1]):
            x = np.float64(max(y[c, i] + shift32, zero))
            x2 = x * x
            n1 += 1.0 if x > 0 else 0.0
            s1 += x
            s2 += x2
            s3 += x2 * x
            s4 += x2 * x2
        out[c, 0] += y.shape[1] - n1
        out[c, 1] += n1
        out[c, 2] += s1
        out[c, 3] += s2
        out[c, 4] += s3
        out[c, 5] += s4


def checks(sums, n, method):
    """The model check's statistic of each coordinate from its sums (coordinates, 6), as a fit computes it."""
    from dist_relu import kernels, uncertainty

    statistics, moments = sums[:, :4], sums[:, 4:]
    b, sigma, status = kernels.fit_coordinates(statistics, method)
    information = kernels.coordinate_information(statistics, b, sigma, status, method)
    terms = uncertainty.coordinate_terms(b, sigma, np.zeros_like(b), information, np.zeros_like(b), method)
    return uncertainty.model_check(statistics, moments, terms, n)


def check_sums():
    """The compiled sums against the tests' statistics and ``kernels.positive_moments``; the compile, untimed."""
    from dist_relu import kernels

    rng = np.random.default_rng(0)
    y = rng.standard_normal((7, 5_000), dtype=np.float32)
    sums = np.zeros((7, 6))
    power_sums(y, 0.3, sums)
    samples = np.maximum(y + np.float32(0.3), 0).T.astype(np.float64)
    positive = samples > 0
    statistics = np.stack([(~positive).sum(0), positive.sum(0), samples.sum(0), (samples**2).sum(0)], 1)
    np.testing.assert_allclose(sums, np.hstack([statistics, kernels.positive_moments(samples)]), rtol=1e-12)


def draw_model(n, bias, columns, seed, sums):
    """``columns`` coordinates of n samples ``max(0, bias + z)``: their sums into ``sums``."""
    y = np.random.default_rng(seed).standard_normal((columns, n), dtype=np.float32)
    power_sums(y, bias, sums)


def draw_law(law, n, columns, seed, sums):
    """``columns`` coordinates of n samples of ``max(0, y)``, ``y`` of ``law``: their sums into ``sums``."""
    rng = np.random.default_rng(seed)
    shape = (columns, n)
    if law.startswith("normal"):
        y = rng.standard_normal(shape) + 0.3
    elif law.startswith("exponential"):
        y = rng.exponential(1.0, shape) - 0.5
    elif law.startswith("uniform"):
        y = rng.uniform(-1.0, 2.0, shape)
    elif law.startswith("t"):
        y = rng.standard_t(int(law[1:].split()[0]), shape) + 0.3
    elif law.startswith("mixture"):
        y = rng.standard_normal(shape)
        y *= 0.5
        y += 2 * rng.integers(0, 2, shape, dtype=np.int8) - 1
    else:
        raise ValueError(law)
    power_sums(y.astype(np.float32), 0.0, sums)


def batched(draw, total, n, batch_mb, key, threads, value_bytes=4):
    """Draw ``total`` coordinates in batches of at most ``batch_mb`` (``value_bytes`` a sample); return their sums."""
    per_batch = max(1, min(total, int(batch_mb * 2**20 // (value_bytes * n))))
    starts = list(range(0, total, per_batch))
    sums = np.zeros((total, 6))

    def run(index):
        start = starts[index]
        stop = min(start + per_batch, total)
        draw(n, stop - start, np.random.SeedSequence([ENTROPY, *key, index]), sums[start:stop])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(len(starts))))
    return sums, per_batch, len(starts)


def summarise_null(values):
    finite = np.isfinite(values)
    v = values[finite]
    counts = [int((v > q).sum()) for q in QUANTILES]
    return {"coordinates": int(values.size), "not_finite": int((~finite).sum()), "negative": int((v < 0).sum()),
            "min": float(v.min()), "mean": float(v.mean()),
            "median": float(np.median(v)), "max": float(v.max()),
            "exceedances": counts, "fractions": [c / v.size for c in counts],
            "ratio_to_nominal": [c / v.size / p for c, p in zip(counts, LEVELS)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coordinates", type=int, nargs="+", default=list(COORDINATES),
                        help="coordinates simulated per case of the false alarms, one per case")
    parser.add_argument("--power-coordinates", type=int, default=1_000, help="coordinates per law (n = 10⁵)")
    parser.add_argument("--fit-arrays", type=int, default=4,
                        help=f"arrays of {FIT_COLUMNS} coordinates fitted by ReLUGaussian per method")
    parser.add_argument("--batch-mb", type=float, default=128.0, help="float32 samples per batch, MB (≤ 200)")
    parser.add_argument("--threads", type=int, default=2)
    steps.add_result_options(parser, "fewer coordinates: "
                        f"{', '.join(map(str, QUICK_COORDINATES))} per case, 200 per law")
    args = parser.parse_args()
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.coordinates, args.power_coordinates, args.fit_arrays = list(QUICK_COORDINATES), 200, 1
    if len(args.coordinates) != len(CASES):
        parser.error(f"--coordinates needs {len(CASES)} values, one per case")
    if not 0 < args.batch_mb <= 200:
        parser.error("--batch-mb must be in (0, 200]")

    import dask
    from scipy.special import ndtr

    import dist_relu
    from dist_relu import kernels, uncertainty

    print(f"dist_relu from {Path(dist_relu.__file__).parent}", flush=True)
    minimum = uncertainty.MODEL_CHECK_MIN_POSITIVES
    uncertainty.MODEL_CHECK_MIN_POSITIVES = 0
    print(f"uncertainty.MODEL_CHECK_MIN_POSITIVES set from {minimum:,} to 0 in this process: every coordinate "
          "gets its statistic", flush=True)
    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    started = time.perf_counter()
    check_sums()

    null = []
    for index, ((n, bias), total) in enumerate(zip(CASES, args.coordinates)):
        start = time.perf_counter()
        sums, per_batch, batches = batched(lambda n, columns, seed, out, bias=bias: draw_model(n, bias, columns,
                                                                                              seed, out),
                                           total, n, args.batch_mb, (0, index), args.threads)
        drawn = time.perf_counter() - start
        positives = sums[:, 1]
        for method in METHODS:
            fit_start = time.perf_counter()
            values = checks(sums, n, method)
            row = {"method": method, "n": n, "bias": bias, "expected_positives": float(n * ndtr(bias)),
                   "mean_positives": float(positives.mean()), "min_positives": int(positives.min()),
                   "columns_per_batch": per_batch, "batches": batches, "draw_seconds": drawn,
                   "check_seconds": time.perf_counter() - fit_start, **summarise_null(values)}
            null.append(row)
            print(f"n = {n:>7,}, b = {bias:+.1f}, {method:>9}: {row['mean_positives']:>9,.0f} positives, "
                  f"{total:>9,} coordinates; mean {row['mean']:.3f}, exceedances "
                  f"{row['exceedances']} ({drawn:.0f} s to draw)", flush=True)

    power = []
    for index, law in enumerate(LAWS):
        start = time.perf_counter()
        sums, per_batch, batches = batched(lambda n, columns, seed, out, law=law: draw_law(law, n, columns, seed, out),
                                           args.power_coordinates, POWER_N, args.batch_mb, (1, index), args.threads,
                                           value_bytes=16)
        values = checks(sums, POWER_N, "censored")
        finite = np.isfinite(values)
        row = {"law": law, "n": POWER_N, "coordinates": len(values), "not_finite": int((~finite).sum()),
               "mean_positives": float(sums[:, 1].mean()), "min_positives": int(sums[:, 1].min()),
               "failed": int((values[finite] > uncertainty.MODEL_CHECK_THRESHOLD).sum()),
               "median": float(np.median(values[finite])), "q10": float(np.quantile(values[finite], 0.1)),
               "min": float(values[finite].min()), "seconds": time.perf_counter() - start}
        row["fraction_failed"] = row["failed"] / len(values)
        power.append(row)
        print(f"{law:>32}: {row['mean_positives']:>9,.0f} positives; failed {row['failed']}/{len(values)}, "
              f"median statistic {row['median']:.4g}", flush=True)

    uncertainty.MODEL_CHECK_MIN_POSITIVES = minimum
    fit_path = []
    for method in METHODS:
        start = time.perf_counter()
        flagged = checked = negative = 0
        largest = -np.inf
        for index in range(args.fit_arrays):
            seed = np.random.SeedSequence([ENTROPY, 2, index])
            x = np.random.default_rng(seed).standard_normal((FIT_N, FIT_COLUMNS), dtype=np.float32)
            x += np.float32(FIT_BIAS)
            np.maximum(x, 0, out=x)
            fit = dist_relu.ReLUGaussian(method=method).fit(x)
            del x
            flagged += int((fit.status_ == kernels.STATUS_NOT_NORMAL).sum())
            checked += int(np.isfinite(fit.model_check_).sum())
            negative += int((fit.model_check_ < 0).sum())
            largest = max(largest, float(np.nanmax(fit.model_check_)))
        row = {"method": method, "n": FIT_N, "bias": FIT_BIAS, "coordinates": args.fit_arrays * FIT_COLUMNS,
               "expected_positives": float(FIT_N * ndtr(FIT_BIAS)), "checked": checked,
               "not_censored_normal": flagged, "negative": negative, "max": largest,
               "seconds": time.perf_counter() - start}
        fit_path.append(row)
        print(f"ReLUGaussian(method={method!r}).fit, n = {FIT_N:,}, b = {FIT_BIAS:+.1f}: {flagged} of {checked} "
              f"checked coordinates not censored normal, {negative} negative statistics", flush=True)

    record = {
        "benchmark": "model_check",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "min_positives_patched": {"from": minimum, "to": 0,
                                  "note": "uncertainty.MODEL_CHECK_MIN_POSITIVES set to 0 in this process, to "
                                          "compute the statistic below the fit's minimum"},
        "threshold": uncertainty.MODEL_CHECK_THRESHOLD,
        "levels": LEVELS, "quantiles": QUANTILES,
        "data": "float32 samples x = max(0, y), drawn in memory, summed in float64 per coordinate; each column "
                "of a batch an independent coordinate, fitted as the fit's Step 1 fits a coordinate",
        "batch_mb": args.batch_mb, "threads": args.threads,
        "seeds": f"np.random.SeedSequence([{ENTROPY}, part (0 false alarms, 1 power), case or law index, batch]), "
                 f"([{ENTROPY}, 2, array]) for the fits; numpy default_rng",
        "null": null, "power": power, "fit_path": fit_path,
        "machine": steps.machine(load_before, cpu=steps.cpu_model()),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "dist_relu_path": str(Path(dist_relu.__file__).parent),
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "numba": numba.__version__,
                     "dask": dask.__version__},
    }
    steps.write_results(record, args.out, "model_check_quick" if args.quick else "model_check", print_table, plot)


def _level(p):
    return f"1e-{round(-np.log10(p))}"


def print_table(record):
    print(f"\nfalse alarms on data from the model (σ = 1; MODEL_CHECK_MIN_POSITIVES patched to 0); "
          f"{record['wall_seconds']:.0f} s")
    header = "".join(f"{'> ' + format(q, '.2f') + ' (' + _level(p) + ')':>22}"
                     for p, q in zip(record["levels"], record["quantiles"]))
    print(f"{'method':>10}{'n':>9}{'b':>6}{'positives':>11}{'coordinates':>13}{'mean':>7}{header}{'negative':>10}")
    for row in record["null"]:
        cells = "".join(f"{format(f, '.2e') + ' (' + str(c) + ')':>22}"
                        for f, c in zip(row["fractions"], row["exceedances"]))
        print(f"{row['method']:>10}{row['n']:>9,}{row['bias']:>+6.1f}{row['mean_positives']:>11,.0f}"
              f"{row['coordinates']:>13,}{row['mean']:>7.3f}{cells}{row['negative']:>10,}")
    print(f"\npower at n = {record['power'][0]['n']:,}: fraction failing (> {record['threshold']:.2f}), censored")
    print(f"{'law before rectification':>32}{'positives':>11}{'coordinates':>13}{'failed':>9}{'median':>11}"
          f"{'10%':>11}{'min':>11}")
    for row in record["power"]:
        print(f"{row['law']:>32}{row['mean_positives']:>11,.0f}{row['coordinates']:>13,}"
              f"{row['fraction_failed']:>9.3f}{row['median']:>11.4g}{row['q10']:>11.4g}{row['min']:>11.4g}")
    print("\nthrough ReLUGaussian(method=...).fit (MODEL_CHECK_MIN_POSITIVES as shipped), data from the model")
    print(f"{'method':>10}{'n':>9}{'b':>6}{'positives':>11}{'checked':>9}{'not censored normal':>21}"
          f"{'negative':>10}{'max':>10}")
    for row in record["fit_path"]:
        print(f"{row['method']:>10}{row['n']:>9,}{row['bias']:>+6.1f}{row['expected_positives']:>11,.0f}"
              f"{row['checked']:>9,}{row['not_censored_normal']:>21,}{row['negative']:>10,}{row['max']:>10.4g}")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(14, 5.6), gridspec_kw={"width_ratios": [1.2, 1]})
    levels = np.array(record["levels"])
    ax.plot(levels, levels, color="grey", lw=1, label="nominal (χ²(2))")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cases = [(r["n"], r["bias"]) for r in record["null"] if r["method"] == "censored"]
    for row in record["null"]:
        colour = colours[cases.index((row["n"], row["bias"])) % len(colours)]
        censored = row["method"] == "censored"
        fractions = np.array(row["fractions"])
        seen = fractions > 0
        label = f"{row['mean_positives']:,.0f} positives (n = {row['n']:,}, b = {row['bias']:+.1f}), " \
                f"{row['coordinates']:,} coords" if censored else None
        ax.plot(levels[seen], fractions[seen], "-o" if censored else "--x", color=colour, label=label,
                lw=1.5 if censored else 1, alpha=1 if censored else 0.8)
        # None seen: fewer than 3/N with 95% confidence.
        ax.plot(levels[~seen], np.full((~seen).sum(), 3 / row["coordinates"]), "v" if censored else "1",
                color=colour, markerfacecolor="none", markersize=8)
    ax.plot([], [], "--x", color="black", lw=1, label="method=truncated (same samples)")
    ax.plot([], [], "v", color="grey", markerfacecolor="none", label="none exceeded: at 3/N (95% bound)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xticks(levels, [f"{_level(p)}\n(q = {q:.2f})" for p, q in zip(levels, record["quantiles"])])
    ax.set_xlabel("nominal exceedance probability of the χ²(2) quantile q")
    ax.set_ylabel("fraction of coordinates whose statistic exceeds q")
    ax.set_title("false alarms on data from the model (σ = 1)", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    rows = record["power"]
    y = np.arange(len(rows))
    ax_p.barh(y, [r["median"] for r in rows], color=["#999999"] + ["#1f77b4"] * (len(rows) - 1))
    ax_p.axvline(record["threshold"], color="red", lw=1, label=f"fails above {record['threshold']:.2f}")
    for k, r in enumerate(rows):
        ax_p.text(r["median"] * 1.3, k, f"{r['fraction_failed']:.0%} fail", va="center", fontsize=8)
    ax_p.set_yticks(y, [r["law"] for r in rows], fontsize=8)
    ax_p.invert_yaxis()
    ax_p.set_xscale("log")
    ax_p.set_xlim(0.3, max(r["median"] for r in rows) * 30)
    ax_p.set_xlabel("median statistic (censored fit)")
    ax_p.set_title(f"power at n = {rows[0]['n']:,}, {rows[0]['coordinates']:,} coordinates per law", fontsize=10)
    ax_p.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"dist_relu model check (χ²(2) in the limit; MODEL_CHECK_MIN_POSITIVES patched to 0 for these); "
                 f"{record['date'][:10]}, {record['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
