"""The two-layer fit ``x = A ReLU(W z + b)``: its time against two plain reads, and its accuracy against n.

Time. Simulates ``n × d`` float32 samples of the two-layer model with ``p``
hidden units (``dist_relu.two_layer_truth(d, p, seed=0)``, zstd Zarr,
``--chunk-rows`` rows per chunk), then runs each step in a fresh Python
process on the local threaded scheduler:

- ``read``: ``da.from_zarr(store, component="samples").sum().compute()``
- ``two-reads``: the same read twice in one process, as many reads as the fit makes
- ``fit``: ``dist_relu.twolayer.fit_to_zarr(store, out, hidden=p, overwrite=True)``,
  with its stage timings (``pass 1``: Gram and candidate anchors; ``pass``:
  the hidden layer ``M̂ = X Â⁺ᵀ`` and its one-layer fit; ``inversion``; ``write``)
- ``two-reads-warm``, ``fit-warm``: the same, timed the second time in their
  process (first-time costs paid: numba's initialisation, dask's and zarr's own)
- ``fit-numba-ready``: the fit in a fresh process where numba's initialisation
  alone was paid beforehand, untimed (one call of the fused pass on a 2 × 2 block)
- ``fit-1blas``: the fit with ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=1`` in the
  process's environment (a diagnostic: both passes multiply tall float64 blocks
  by small matrices, with BLAS threads inside dask threads)

Repeats are interleaved (read, two-reads, fit, ..., read, ...) after one
untimed read that warms the page cache; medians are reported, with
fit / (two reads) measured within this one run.

Accuracy. For each n in ``--sweep-n`` and seed in ``--seeds``: the truth
``two_layer_truth(d, p, seed)``, its samples written to a Zarr store with the
same seed, and ``TwoLayerReLU(hidden=p).fit(store).model_.errors(A, W Wᵀ, b)``
(``anchor_sin_max``, ``err_sigma``, ``err_b``, ``tv_bound``, in the fit's
gauge); beside it the oracle, the one-layer fit of the true hidden layer
``ReLU(W z + b) · ‖a_l‖`` drawn as the store's chunks were drawn (float64),
against ``D W Wᵀ D`` and ``D b``, ``D = diag ‖a_l‖``.

Results go to ``benchmarks/results/two_layer.{json,png}``.

    python benchmarks/two_layer.py              # n = 10⁶, d = 20, p = 5; sweep n = 10⁴ … 10⁶, seeds 0–2
    python benchmarks/two_layer.py --quick      # n = 10⁵, one repeat; sweep n = 10⁴, 3·10⁴, seed 0
    python benchmarks/two_layer.py --plot-only benchmarks/results/two_layer.json
"""

import argparse
import datetime
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import steps
from steps import package_fingerprint, run_step

READ = "import dask.array as da; da.from_zarr(STORE, component='samples').sum().compute()"
FIT = "import dist_relu.twolayer; RESULT = dist_relu.twolayer.fit_to_zarr(STORE, OUT, hidden=HIDDEN, overwrite=True)"
STEPS = {
    "read": READ,
    "two-reads": f"{READ}; {READ}",
    "fit": FIT,
    "two-reads-warm": f"{READ}; {READ}",
    "fit-warm": FIT,
    "fit-numba-ready": FIT,
    "fit-1blas": FIT,
}
# Run first, untimed: the same step once (warm), or numba's first call alone.
SETUP = {"two-reads-warm": STEPS["two-reads"], "fit-warm": FIT,
         "fit-numba-ready": "import numpy as np; from dist_relu import compiled; "
                            "compiled.chunk_pass(np.zeros((2, 2), np.float32), np.zeros(2))"}
TICKS = {"read": "one\nread", "two-reads": "two\nreads", "fit": "fit", "two-reads-warm": "two reads\nwarm",
         "fit-warm": "fit\nwarm", "fit-numba-ready": "fit\nnumba\nready", "fit-1blas": "fit\n1-thread\nBLAS"}
# Set in the child's environment, before numpy is imported (as fit_vs_read.py's xtx-1blas).
SINGLE_THREAD_BLAS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FITS = ("fit", "fit-warm", "fit-numba-ready", "fit-1blas")
STAGE_COLOURS = {"pass 1": "#aec7e8", "pass": "#1f77b4", "inversion": "#2ca02c", "standard errors": "#d62728",
                 "write": "#98df8a"}


def child(step, store, out, hidden):
    """Run one step in this process and print its record (``steps.run_step``)."""
    run_step(STEPS[step], {"STORE": store, "OUT": out, "HIDDEN": int(hidden)}, setup=SETUP.get(step))


def measure(step, store, out, hidden):
    """Run ``step`` in a fresh process (single-threaded BLAS for ``fit-1blas``) and return its record."""
    env = {**os.environ, **SINGLE_THREAD_BLAS} if step == "fit-1blas" else None
    return steps.measure(__file__, step, [store, out, hidden], env=env)


def chunk_sizes(n, chunk_rows):
    """Rows of each chunk ``simulate_to_zarr`` writes."""
    return [min(chunk_rows, n - start) for start in range(0, n, chunk_rows)]


def accuracy_run(n, d, p, seed, chunk_rows, workdir):
    """Fit the two-layer model to ``n`` simulated samples and the oracle to their hidden layer; return both errors."""
    import numpy as np

    import dist_relu
    from dist_relu import kernels

    mixing, weights, bias = dist_relu.two_layer_truth(d, p, seed=seed)
    store = str(workdir / f"sweep-n{n}-s{seed}.zarr")
    dist_relu.simulate_to_zarr(store, weights, bias, n, chunk_rows=chunk_rows, seed=seed, mixing=mixing,
                               overwrite=True)
    record = {"n": n, "seed": seed}
    start = time.perf_counter()
    try:
        fit = dist_relu.TwoLayerReLU(hidden=p).fit(store)
    except dist_relu.io.InputError as error:  # data not separable at this n: recorded, not fatal
        record["error"] = str(error)
    else:
        record.update(seconds=time.perf_counter() - start, timings=fit.settings_["timings"],
                      outside_fraction=fit.outside_fraction_, energy_outside=fit.energy_outside_,
                      **fit.model_.errors(mixing, weights @ weights.T, bias))
    finally:
        shutil.rmtree(store, ignore_errors=True)
    scales = np.linalg.norm(mixing, axis=0)
    hidden = np.concatenate([kernels.relu_gaussian_chunk(rows, weights, bias, seed, i, np.float64)
                             for i, rows in enumerate(chunk_sizes(n, chunk_rows))]) * scales
    oracle = dist_relu.ReLUGaussian().fit(hidden).model_.errors(weights @ weights.T * np.outer(scales, scales),
                                                                bias * scales)
    record["oracle"] = oracle
    if "err_sigma" in record:
        record["err_sigma_over_oracle"] = record["err_sigma"] / oracle["err_sigma"]
    return record


def log_log_slope(ns, values):
    """Least-squares slope of log(value) against log(n)."""
    import numpy as np

    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the timed fit")
    parser.add_argument("--d", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=5, help="p, the hidden units")
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep-n", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=None)
    steps.add_result_options(parser, "n = 10⁵, one repeat; sweep n = 10⁴, 3·10⁴, seed 0")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.n, args.repeats, args.sweep_n, args.seeds = 100_000, 1, [10_000, 30_000], [0]

    import dask
    import numpy as np
    import zarr

    import dist_relu

    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-two-layer-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n, d, p, chunk_rows = args.n, args.d, args.hidden, args.chunk_rows
    try:
        store, out = str(workdir / "samples.zarr"), str(workdir / "fit.zarr")
        start = time.perf_counter()
        mixing, weights, bias = dist_relu.two_layer_truth(d, p, seed=0)
        dist_relu.simulate_to_zarr(store, weights, bias, n, chunk_rows=chunk_rows, seed=0, mixing=mixing,
                                   overwrite=True)
        simulate_seconds = time.perf_counter() - start
        stored_bytes = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
        print(f"simulated n = {n:,}, d = {d}, p = {p} in {simulate_seconds:.1f} s, chunks of {chunk_rows:,} rows, "
              f"{stored_bytes / 2**20:.0f} MB on disk", flush=True)
        if not args.quick:
            measure("read", store, out, p)  # warm the page cache, untimed
        runs = {step: [] for step in STEPS}
        for repeat in range(args.repeats):  # interleaved, so that drift spreads over all steps
            for step in STEPS:
                runs[step].append(measure(step, store, out, p))
                r = runs[step][-1]
                print(f"  run {repeat + 1} {step:>15}: {r['seconds']:.2f} s, "
                      f"peak {r['peak_mb'] - r['baseline_mb']:.0f} MB"
                      + (f", stages {r['timings']}" if "timings" in r else ""), flush=True)
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)

        summary = {step: {"median_seconds": statistics.median(r["seconds"] for r in results),
                          "peak_above_baseline_mb": max(r["peak_mb"] - r["baseline_mb"] for r in results)}
                   for step, results in runs.items()}
        for step in FITS:
            stages = {stage: statistics.median(r["timings"][stage] for r in runs[step])
                      for stage in runs[step][0]["timings"]}
            summary[step]["median_stage_seconds"] = stages
            summary[step]["median_outside_stages_seconds"] = statistics.median(
                r["seconds"] - sum(r["timings"].values()) for r in runs[step])
        fit, read, two_reads = (summary[s]["median_seconds"] for s in ("fit", "read", "two-reads"))
        stages = summary["fit"]["median_stage_seconds"]
        ratios = {
            "fit_over_two_reads": fit / two_reads,
            "fit_over_read": fit / read,
            "two_reads_over_read": two_reads / read,
            "pass_1_over_read": stages["pass 1"] / read,
            "pass_over_read": stages["pass"] / read,
            "fit_warm_over_two_reads_warm": (summary["fit-warm"]["median_seconds"]
                                             / summary["two-reads-warm"]["median_seconds"]),
            "fit_numba_ready_over_two_reads": summary["fit-numba-ready"]["median_seconds"] / two_reads,
            "fit_1blas_over_two_reads": summary["fit-1blas"]["median_seconds"] / two_reads,
            "fit_over_fit_1blas": fit / summary["fit-1blas"]["median_seconds"],
        }
        timing = {"n": n, "d": d, "hidden": p, "chunk_rows": chunk_rows, "n_chunks": -(-n // chunk_rows),
                  "chunk_mb": chunk_rows * d * 4 / 2**20, "raw_mb": n * d * 4 / 2**20,
                  "stored_mb": stored_bytes / 2**20, "simulate_seconds": simulate_seconds,
                  "runs": runs, "summary": summary, "ratios": ratios}

        sweep = []
        for sweep_n in args.sweep_n:
            for seed in args.seeds:
                sweep.append(accuracy_run(sweep_n, d, p, seed, chunk_rows, workdir))
                r = sweep[-1]
                print(f"  n = {sweep_n:>9,} seed {seed}: "
                      + (r["error"] if "error" in r else
                         f"anchor_sin_max {r['anchor_sin_max']:.2e}, err_Σ {r['err_sigma']:.5f} "
                         f"(oracle {r['oracle']['err_sigma']:.5f}), err_b {r['err_b']:.5f} "
                         f"(oracle {r['oracle']['err_b']:.5f}), {r['seconds']:.2f} s"), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    per_n = []
    for sweep_n in args.sweep_n:
        rows = [r for r in sweep if r["n"] == sweep_n]
        fitted = [r for r in rows if "err_sigma" in r]
        entry = {"n": sweep_n, "runs": len(rows), "refused": len(rows) - len(fitted),
                 "oracle_median_err_sigma": statistics.median(r["oracle"]["err_sigma"] for r in rows),
                 "oracle_median_err_b": statistics.median(r["oracle"]["err_b"] for r in rows)}
        if fitted:
            entry.update({f"median_{key}": statistics.median(r[key] for r in fitted)
                          for key in ("anchor_sin_max", "err_sigma", "err_b", "tv_bound", "err_sigma_over_oracle")})
            entry["max_anchor_sin_max"] = max(r["anchor_sin_max"] for r in fitted)
        per_n.append(entry)
    complete = [e for e in per_n if "median_err_sigma" in e]
    slopes = {}
    if len(complete) >= 2:
        slopes = {"err_sigma": log_log_slope([e["n"] for e in complete], [e["median_err_sigma"] for e in complete]),
                  "oracle_err_sigma": log_log_slope([e["n"] for e in per_n],
                                                    [e["oracle_median_err_sigma"] for e in per_n])}

    record = {
        "benchmark": "two_layer",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32", "compressor": "zstd (zarr default)",
        "chunking": f"{chunk_rows:,}-row chunks, all columns in one chunk", "scheduler": "local threads",
        "truth": "dist_relu.two_layer_truth(d, p, seed): A standard Gaussian (d × p), (W, b) = figure1_truth(p)",
        "repeats": args.repeats, "steps": STEPS, "setup": SETUP, "fit-1blas_environment": SINGLE_THREAD_BLAS,
        "machine": steps.machine(load_before, cpu=steps.cpu_model()),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__},
        "timing": timing,
        "accuracy": {"d": d, "hidden": p, "chunk_rows": chunk_rows, "seeds": args.seeds, "n_values": args.sweep_n,
                     "runs": sweep, "per_n": per_n, "log_log_slope": slopes},
    }
    steps.write_results(record, args.out, "two_layer_quick" if args.quick else "two_layer", print_table, plot)


def print_table(record):
    t = record["timing"]
    print(f"\nn = {t['n']:,}, d = {t['d']}, p = {t['hidden']}, float32 zstd Zarr, {record['chunking']} "
          f"({t['n_chunks']} chunks), {record['scheduler']} ({record['machine']['cores']} cores), "
          f"median of {record['repeats']}, each step a fresh process")
    print(f"{'step':>16}{'median s':>10}{'peak MB':>9}   runs (s)")
    for step in STEPS:
        s = t["summary"][step]
        print(f"{step:>16}{s['median_seconds']:>10.2f}{s['peak_above_baseline_mb']:>9.0f}   "
              + ", ".join(f"{r['seconds']:.2f}" for r in t["runs"][step]))
    for step in FITS:
        s = t["summary"][step]
        print(f"{step} stages (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in s["median_stage_seconds"].items())
              + f", outside the stages {s['median_outside_stages_seconds']:.3f}")
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in t["ratios"].items()))
    a = record["accuracy"]
    print(f"\naccuracy, d = {a['d']}, p = {a['hidden']}, seeds {a['seeds']} (medians)")
    print(f"{'n':>10}{'anchor sin max':>16}{'err_Σ':>10}{'oracle err_Σ':>14}{'ratio':>7}{'err_b':>9}"
          f"{'oracle err_b':>14}{'refused':>9}")
    for e in a["per_n"]:
        if "median_err_sigma" in e:
            print(f"{e['n']:>10,}{e['median_anchor_sin_max']:>16.2e}{e['median_err_sigma']:>10.5f}"
                  f"{e['oracle_median_err_sigma']:>14.5f}{e['median_err_sigma_over_oracle']:>7.3f}"
                  f"{e['median_err_b']:>9.5f}{e['oracle_median_err_b']:>14.5f}{e['refused']:>9}")
        else:
            print(f"{e['n']:>10,}{'(all refused)':>16}{'':>10}{e['oracle_median_err_sigma']:>14.5f}")
    if a["log_log_slope"]:
        print("log-log slope of the median err_Σ against n: "
              + ", ".join(f"{k} {v:.2f}" for k, v in a["log_log_slope"].items()))


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t, a = record["timing"], record["accuracy"]
    fig, (ax_t, ax_s, ax_a) = plt.subplots(1, 3, figsize=(15, 5))

    # Time: plain steps as bars, the fits stacked by their stages (the rest: time outside the stages).
    colours = {"read": "#888888", "two-reads": "#555555", "two-reads-warm": "#c5b0d5"}
    for k, step in enumerate(STEPS):
        s = t["summary"][step]
        if "median_stage_seconds" in s:
            bottom = 0.0
            for stage, seconds in s["median_stage_seconds"].items():
                ax_t.bar(k, seconds, 0.7, bottom=bottom, color=STAGE_COLOURS.get(stage),
                         label=f"fit: {stage}" if step == "fit" else None)
                bottom += seconds
            ax_t.bar(k, max(s["median_seconds"] - bottom, 0), 0.7, bottom=bottom, color="#dddddd",
                     label="fit: outside stages" if step == "fit" else None)
        else:
            ax_t.bar(k, s["median_seconds"], 0.7, color=colours[step])
        ax_t.annotate(f"{s['median_seconds']:.2f} s", (k, s["median_seconds"]), ha="center", va="bottom", fontsize=8)
    ratios = t["ratios"]
    ax_t.text(0.02, 0.97, f"fit / two reads {ratios['fit_over_two_reads']:.2f}×\n"
                          f"warm: fit / two reads {ratios['fit_warm_over_two_reads_warm']:.2f}×\n"
                          f"numba ready: fit / two reads {ratios['fit_numba_ready_over_two_reads']:.2f}×\n"
                          f"1-thread BLAS: fit / two reads {ratios['fit_1blas_over_two_reads']:.2f}×",
              transform=ax_t.transAxes, va="top", fontsize=8)
    ax_t.set_xticks(range(len(STEPS)), [TICKS[s] for s in STEPS], fontsize=7)
    ax_t.set_ylabel("median seconds")
    ax_t.set_ylim(0, 1.5 * max(t["summary"][s]["median_seconds"] for s in STEPS))
    ax_t.legend(fontsize=7, loc="upper right")
    ax_t.set_title(f"time: n = {t['n']:,}, d = {t['d']}, p = {t['hidden']}, {t['n_chunks']} chunks, "
                   f"median of {record['repeats']}", fontsize=9)

    # Accuracy: every run as a point, the median per n as a line.
    runs = [r for r in a["runs"] if "err_sigma" in r]
    ns = np.array([e["n"] for e in a["per_n"]], dtype=float)
    fitted = [e for e in a["per_n"] if "median_err_sigma" in e]
    jitter = {s: 1 + 0.04 * (k - (len(a["seeds"]) - 1) / 2) for k, s in enumerate(a["seeds"])}
    ax_s.scatter([r["n"] * jitter[r["seed"]] for r in runs], [r["err_sigma"] for r in runs], s=14, color="#1f77b4",
                 alpha=0.5)
    ax_s.scatter([r["n"] / jitter[r["seed"]] for r in a["runs"]], [r["oracle"]["err_sigma"] for r in a["runs"]],
                 s=30, facecolors="none", edgecolors="#ff7f0e", alpha=0.6, marker="s")
    ax_s.plot([e["n"] for e in fitted], [e["median_err_sigma"] for e in fitted], "-o", color="#1f77b4",
              label="two-layer fit: err_Σ (median)")
    ax_s.plot(ns, [e["oracle_median_err_sigma"] for e in a["per_n"]], "--s", color="#ff7f0e", markersize=10,
              markerfacecolor="none", label="oracle (one-layer fit of the true hidden layer)")
    if fitted:
        scale = math.exp(np.mean([math.log(e["median_err_sigma"]) + 0.5 * math.log(e["n"]) for e in fitted]))
        ax_s.plot(ns, scale / np.sqrt(ns), ":", color="black", label="∝ 1/√n")
    slopes = a["log_log_slope"]
    if slopes:
        ax_s.text(0.02, 0.03, f"log-log slope: fit {slopes['err_sigma']:.2f}, oracle {slopes['oracle_err_sigma']:.2f}",
                  transform=ax_s.transAxes, fontsize=8)
    ax_s.set_xscale("log")
    ax_s.set_yscale("log")
    ax_s.set_xlabel("n")
    ax_s.set_ylabel("err_Σ = ‖Σ̂ − D W Wᵀ D‖_F / ‖D W‖_F²")
    ax_s.legend(fontsize=7, loc="upper right")
    ax_s.set_title(f"hidden layer's covariance, d = {a['d']}, p = {a['hidden']}, seeds {a['seeds']}", fontsize=9)

    # float32 data: the anchors are data rows, their directions exact to about float32's rounding.
    ax_a.scatter([r["n"] * jitter[r["seed"]] for r in runs], [max(r["anchor_sin_max"], 1e-12) for r in runs], s=14,
                 color="#2ca02c", alpha=0.5)
    ax_a.plot([e["n"] for e in fitted], [max(e["median_anchor_sin_max"], 1e-12) for e in fitted], "-o",
              color="#2ca02c", label="anchor_sin_max (median)")
    ax_a.axhline(np.finfo(np.float32).eps, color="grey", ls=":", label="float32 ε")
    ax_a.set_xscale("log")
    ax_a.set_yscale("log")
    ax_a.set_ylim(1e-10, 1e-5)
    ax_a.set_xlabel("n")
    ax_a.set_ylabel("largest sine between a column of Â and of A")
    ax_a.legend(fontsize=7, loc="upper right")
    ax_a.set_title("anchors' error (noiseless float32 samples)", fontsize=9)
    fig.suptitle(f"two-layer model x = A ReLU(W z + b): float32 zstd Zarr, {record['chunking']}, "
                 f"{record['scheduler']}, {record['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
