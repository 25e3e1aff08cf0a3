"""Fit time against one plain read and against dask's plain ``X.T @ X`` of the same store, for several d.

For each ``d`` in ``--d`` (default 10, 100, 1000) simulates ``n × d`` float32
samples (zstd Zarr, row chunks of about ``--chunk-mb`` MB, all columns in one
chunk), then runs each step in a fresh Python process on the local threaded
scheduler, so that each peak resident memory (VmHWM, reset after imports) and
time is that step's own:

- ``read``: ``da.from_zarr(store, component="samples").sum().compute()``
- ``xtx``: ``x = da.from_zarr(store, component="samples"); (x.T @ x).compute()``
  (dask's defaults, float32 in and out)
- ``xtx-1blas``: the same, with ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=1`` in
  the process's environment (a diagnostic: BLAS threads inside dask threads)
- ``fit``: ``dist_relu.fit_to_zarr(store, out, overwrite=True)`` (default
  settings: one pass), with its stage timings (pass, with its pilot; inversion; write)
- ``read-warm``, ``xtx-warm``, ``fit-warm``: the same read, ``X.T @ X`` and
  fit, each timed the second time in its process, as in a long-running worker, client or notebook:
  first-time costs are paid already (numba's initialisation at its first
  call, 0.25–0.45 s; dask's and zarr's own). Their peaks are above the memory held
  after the first run.
- ``fit-numba-ready``: the fit in a fresh process where numba's
  initialisation alone was paid beforehand, untimed (one call of the fused
  pass on a 2 × 2 block): how much of the cold fit's gap to a read is numba's.

Repeats are interleaved (read, xtx, xtx-1blas, fit, read, ...) after one
untimed read that warms the page cache; the median of each step is reported,
with fit/read and fit/xtx ratios, all measured within this one run.
Results go to ``benchmarks/results/fit_vs_read.{json,png}``.

    python benchmarks/fit_vs_read.py            # d = 10, 100 (n = 2·10⁶), 1000 (n = 2·10⁵)
    python benchmarks/fit_vs_read.py --quick    # d = 10, 50, n = 10⁵, one repeat
    python benchmarks/fit_vs_read.py --plot-only benchmarks/results/fit_vs_read.json
"""

import argparse
import datetime
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import steps
from steps import package_fingerprint, run_step

STEPS = {
    "read": "import dask.array as da; da.from_zarr(STORE, component='samples').sum().compute()",
    "xtx": "import dask.array as da; x = da.from_zarr(STORE, component='samples'); (x.T @ x).compute()",
    "xtx-1blas": "import dask.array as da; x = da.from_zarr(STORE, component='samples'); (x.T @ x).compute()",
    "fit": "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True)",
    "read-warm": "import dask.array as da; da.from_zarr(STORE, component='samples').sum().compute()",
    "xtx-warm": "import dask.array as da; x = da.from_zarr(STORE, component='samples'); (x.T @ x).compute()",
    "fit-warm": "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True)",
    "fit-numba-ready": "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True)",
}
# Run first, untimed: the same step once (warm), or numba's first call alone.
SETUP = {"read-warm": STEPS["read"], "xtx-warm": STEPS["xtx"], "fit-warm": STEPS["fit"],
         "fit-numba-ready": "import numpy as np; from dist_relu import compiled; "
                            "compiled.chunk_pass(np.zeros((2, 2), np.float32), np.zeros(2))"}
LABELS = {"read": "plain read (sum)", "xtx": "plain X.T @ X", "xtx-1blas": "X.T @ X, 1-thread BLAS",
          "fit": "fit_to_zarr", "read-warm": "plain read, warm process",
          "xtx-warm": "plain X.T @ X, warm process", "fit-warm": "fit_to_zarr, warm process",
          "fit-numba-ready": "fit_to_zarr, numba initialised"}
# The same X.T @ X with BLAS limited to one thread per dask thread (set in the child's environment, before
# numpy is imported): a diagnostic beside the plain one, whose 2-thread BLAS inside 2 dask threads can be slow.
SINGLE_THREAD_BLAS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DEFAULT_N = {10: 2_000_000, 100: 2_000_000, 1000: 200_000}


def child(step, store, out):
    """Run one step in this process and print its record (``steps.run_step``)."""
    run_step(STEPS[step], {"STORE": store, "OUT": out}, setup=SETUP.get(step))


def measure(step, store, out):
    """Run ``step`` in a fresh process (single-threaded BLAS for ``xtx-1blas``) and return its record."""
    env = {**os.environ, **SINGLE_THREAD_BLAS} if step == "xtx-1blas" else None
    return steps.measure(__file__, step, [store, out], env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--n", type=int, default=None, help="rows for every d (default: 2·10⁶, or 2·10⁵ for d ≥ 1000)")
    parser.add_argument("--chunk-mb", type=float, default=32.0, help="float32 MB per row chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    steps.add_result_options(parser, "d = 10, 50, n = 10⁵, 2 MB chunks, one repeat")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.d, args.n, args.chunk_mb, args.repeats = [10, 50], 100_000, 2.0, 1

    import dask
    import numpy as np
    import zarr

    import dist_relu

    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-fit-vs-read-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cases = []
    try:
        for d in args.d:
            n = args.n or DEFAULT_N.get(d, 200_000 if d >= 1000 else 2_000_000)
            store, out, chunk_rows, chunk_mb, simulate_seconds, stored_bytes = steps.simulate_figure1(
                workdir, d, n, args.chunk_mb)
            if not args.quick:
                measure("read", store, out)  # warm the page cache, untimed
            runs = {step: [] for step in STEPS}
            for repeat in range(args.repeats):  # interleaved, so that drift spreads over all steps
                for step in STEPS:
                    runs[step].append(measure(step, store, out))
                    print(f"  d = {d} run {repeat + 1} {step:>4}: {runs[step][-1]['seconds']:.2f} s, "
                          f"peak {runs[step][-1]['peak_mb'] - runs[step][-1]['baseline_mb']:.0f} MB", flush=True)
            summary = {}
            for step, results in runs.items():
                above = max(r["peak_mb"] - r["baseline_mb"] for r in results)
                summary[step] = {"median_seconds": statistics.median(r["seconds"] for r in results),
                                 "peak_above_baseline_mb": above, "peak_in_chunks": above / chunk_mb}
            fit_runs = runs["fit"]
            summary["fit"]["median_stage_seconds"] = {
                stage: statistics.median(r["timings"][stage] for r in fit_runs) for stage in fit_runs[0]["timings"]}
            summary["fit"]["count_kernel"] = fit_runs[0].get("count_kernel")
            summary["fit"]["column_block"] = fit_runs[0].get("column_block")
            summary["fit_over_read"] = summary["fit"]["median_seconds"] / summary["read"]["median_seconds"]
            summary["fit_over_xtx"] = summary["fit"]["median_seconds"] / summary["xtx"]["median_seconds"]
            summary["fit_over_xtx_1blas"] = summary["fit"]["median_seconds"] / summary["xtx-1blas"]["median_seconds"]
            summary["xtx_over_xtx_1blas"] = summary["xtx"]["median_seconds"] / summary["xtx-1blas"]["median_seconds"]
            summary["xtx_over_read"] = summary["xtx"]["median_seconds"] / summary["read"]["median_seconds"]
            summary["fit_warm_over_read"] = (summary["fit-warm"]["median_seconds"]
                                             / summary["read-warm"]["median_seconds"])
            summary["fit_warm_over_xtx"] = summary["fit-warm"]["median_seconds"] / summary["xtx-warm"]["median_seconds"]
            summary["fit_numba_ready_over_read"] = (summary["fit-numba-ready"]["median_seconds"]
                                                    / summary["read"]["median_seconds"])
            cases.append({"n": n, "d": d, "chunk_rows": chunk_rows, "chunk_mb": chunk_mb,
                          "n_chunks": -(-n // chunk_rows), "stored_mb": stored_bytes / 2**20,
                          "raw_mb": n * d * 4 / 2**20, "simulate_seconds": simulate_seconds,
                          "runs": runs, "summary": summary})
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {
        "benchmark": "fit_vs_read",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32", "compressor": "zstd (zarr default)", "chunking": f"row chunks of ~{args.chunk_mb:g} MB, "
        "all columns in one chunk", "chunk_mb_target": args.chunk_mb, "scheduler": "local threads",
        "dask_array_split_every": dask.config.get("array.split_every", None),
        "repeats": args.repeats, "steps": STEPS, "xtx-1blas_environment": SINGLE_THREAD_BLAS,
        "machine": steps.machine(load_before),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__},
        "cases": cases,
    }
    steps.write_results(record, args.out, "fit_vs_read_quick" if args.quick else "fit_vs_read", print_table, plot)


def print_table(record):
    print(f"\nfloat32 zstd Zarr, {record['chunking']}, {record['scheduler']} ({record['machine']['cores']} cores), "
          f"median of {record['repeats']}, each step a fresh process")
    print(f"{'d':>5}{'n':>11}{'chunk rows':>12}{'chunks':>8}{'step':>11}{'median s':>10}{'peak MB':>9}"
          f"{'chunks':>8}   runs (s)")
    for case in record["cases"]:
        for step in STEPS:
            s = case["summary"][step]
            print(f"{case['d']:>5}{case['n']:>11,}{case['chunk_rows']:>12,}{case['n_chunks']:>8}{step:>11}"
                  f"{s['median_seconds']:>10.2f}{s['peak_above_baseline_mb']:>9.0f}{s['peak_in_chunks']:>8.1f}   "
                  + ", ".join(f"{r['seconds']:.2f}" for r in case["runs"][step]))
    print(f"\n{'d':>5}{'fit/read':>10}{'fit/xtx':>9}{'fit/xtx-1blas':>15}{'xtx/read':>10}{'xtx/xtx-1blas':>15}"
          f"{'warm fit/read':>15}{'warm fit/xtx':>14}{'numba-ready fit/read':>22}   fit stages (median s), count kernel")
    for case in record["cases"]:
        s = case["summary"]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in s["fit"]["median_stage_seconds"].items())
        print(f"{case['d']:>5}{s['fit_over_read']:>10.2f}{s['fit_over_xtx']:>9.2f}{s['fit_over_xtx_1blas']:>15.2f}"
              f"{s['xtx_over_read']:>10.2f}{s['xtx_over_xtx_1blas']:>15.2f}"
              f"{s['fit_warm_over_read']:>15.2f}{s['fit_warm_over_xtx']:>14.2f}{s['fit_numba_ready_over_read']:>22.2f}   "
              f"{stages}; {s['fit'].get('count_kernel')}, column block {s['fit'].get('column_block')}")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cases = record["cases"]
    x = np.arange(len(cases))
    width = 0.11
    colours = {"read": "#888888", "xtx": "#ff7f0e", "xtx-1blas": "#ffbb78", "fit": "#1f77b4",
               "read-warm": "#c5b0d5", "xtx-warm": "#ffd8b1", "fit-warm": "#9467bd", "fit-numba-ready": "#17becf"}
    stage_colours = {"pass": "#1f77b4", "inversion": "#2ca02c", "standard errors": "#d62728", "write": "#98df8a"}
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5))
    for k, step in enumerate(("read", "xtx", "xtx-1blas")):
        heights = [c["summary"][step]["median_seconds"] for c in cases]
        ax_t.bar(x + (k - 2) * width, heights, width, color=colours[step], label=LABELS[step])
    for k, step in enumerate(("read-warm", "xtx-warm", "fit-warm", "fit-numba-ready")):
        heights = [c["summary"][step]["median_seconds"] for c in cases]
        ax_t.bar(x + (2 + k) * width, heights, width, color=colours[step], label=LABELS[step])
    # The fit's bar stacked by its stages; the remainder is time outside the stages.
    bottoms = np.zeros(len(cases))
    stages = list(cases[0]["summary"]["fit"]["median_stage_seconds"])
    for stage in stages:
        heights = np.array([c["summary"]["fit"]["median_stage_seconds"].get(stage, 0.0) for c in cases])
        ax_t.bar(x + width, heights, width, bottom=bottoms, color=stage_colours.get(stage), label=f"fit: {stage}")
        bottoms += heights
    totals = np.array([c["summary"]["fit"]["median_seconds"] for c in cases])
    ax_t.bar(x + width, np.maximum(totals - bottoms, 0), width, bottom=bottoms, color="#dddddd",
             label="fit: outside stages")
    for k, c in enumerate(cases):
        ax_t.annotate(f"fit/read {c['summary']['fit_over_read']:.1f}×\nfit/XᵀX {c['summary']['fit_over_xtx']:.1f}×"
                      f"\nfit/XᵀX 1-BLAS {c['summary']['fit_over_xtx_1blas']:.1f}×"
                      f"\nwarm: fit/read {c['summary']['fit_warm_over_read']:.2f}×"
                      f"\nwarm: fit/XᵀX {c['summary']['fit_warm_over_xtx']:.2f}×"
                      f"\nnumba ready: fit/read {c['summary']['fit_numba_ready_over_read']:.2f}×",
                      (x[k] + width, totals[k]), ha="center", va="bottom", fontsize=7)
    ticks = [f"d = {c['d']}\nn = {c['n']:,}\n{c['chunk_rows']:,}-row chunks" for c in cases]
    ax_t.set_xticks(x, ticks, fontsize=8)
    ax_t.set_ylabel("median seconds")
    ax_t.set_ylim(0, 1.7 * max(max(c["summary"][s]["median_seconds"] for s in STEPS) for c in cases))
    ax_t.legend(fontsize=7, loc="upper left", ncol=2)
    ax_t.set_title("time", fontsize=9)
    for k, step in enumerate(STEPS):
        heights = [c["summary"][step]["peak_above_baseline_mb"] for c in cases]
        bars = ax_m.bar(x + (k - 2) * width, heights, width, color=colours[step], label=LABELS[step])
        for bar, c in zip(bars, cases):
            ax_m.annotate(f"{c['summary'][step]['peak_in_chunks']:.1f}", (bar.get_x() + width / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
    ax_m.set_xticks(x, ticks, fontsize=8)
    ax_m.set_ylabel("peak MB above post-import baseline (max of runs)")
    ax_m.set_title("peak memory (labels: in chunks)", fontsize=9)
    ax_m.legend(fontsize=7, loc="upper left")
    ax_m.set_ylim(0, 1.25 * max(max(c["summary"][s]["peak_above_baseline_mb"] for s in STEPS) for c in cases))
    fig.suptitle(f"fit vs one plain read vs dask X.T @ X: float32 zstd Zarr, {record['chunking']}, "
                 f"{record['scheduler']}, {record['machine']['cores']} cores, median of {record['repeats']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
