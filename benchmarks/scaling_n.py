"""Time and peak memory of a fit against n over a 16× range, with one plain read at each n for reference.

For each ``n`` in ``--n`` (default 10⁶, 2·10⁶, 4·10⁶, 8·10⁶, 1.6·10⁷) simulates
``n × d`` float32 samples (``d = 100``, zstd Zarr, ``--chunk-rows`` rows per
chunk), then runs each step in a fresh Python process on the local threaded
scheduler, so that each peak resident memory (VmHWM, reset after imports) and
time is that step's own:

- ``read``: ``da.from_zarr(store, component="samples").sum().compute()``
- ``fit``: ``dist_relu.fit_to_zarr(store, out, overwrite=True)`` (default settings: one pass)

Each child runs with ``MALLOC_ARENA_MAX=2`` (``--malloc-arena-max``), the limit
the ``dist-relu`` command sets for itself (``cli.limit_malloc_arenas``):
with glibc's default, freed chunks left in per-thread arenas make both
steps' peaks creep up with the number of chunks read. ``0`` leaves glibc's
default.

The smallest n has 16 chunks: with fewer, the whole array is only a few
chunks and even a plain read cannot reach its steady memory (at 5·10⁵ rows,
8 chunks, the read's own peak was 1.4× lower than at 8·10⁶).

Repeats are interleaved (read, fit, read, fit, ...) after one untimed read
that warms the page cache. The claim checked: linear time (constant seconds
per 10⁶ rows, slope 1 on log-log) and flat memory (peak at the largest n
within 1.2× of the peak at the smallest). Results go to
``benchmarks/results/scaling_n.{json,png}``.

    python benchmarks/scaling_n.py             # d = 100, n = 10⁶ … 1.6·10⁷
    python benchmarks/scaling_n.py --quick     # d = 20, n = 10⁵, 4·10⁵, one repeat
    python benchmarks/scaling_n.py --plot-only benchmarks/results/scaling_n.json
"""

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import steps
from steps import package_fingerprint, run_step

STEPS = {
    "read": "import dask.array as da; da.from_zarr(STORE, component='samples').sum().compute()",
    "fit": "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True)",
}
FLAT_MEMORY_TOLERANCE = 1.2


def child(step, store, out):
    """Run one step in this process and print its record (``steps.run_step``)."""
    run_step(STEPS[step], {"STORE": store, "OUT": out})


def measure(step, store, out, malloc_arena_max):
    """Run ``step`` in a fresh process (with ``MALLOC_ARENA_MAX``, unless 0) and return its record."""
    env = {**os.environ, "MALLOC_ARENA_MAX": str(malloc_arena_max)} if malloc_arena_max else None
    return steps.measure(__file__, step, [store, out], env=env)


def log_log_slope(ns, seconds):
    """Least-squares slope of log seconds on log n."""
    xs, ys = [math.log(n) for n in ns], [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def linear_fit(ns, seconds):
    """Least-squares ``seconds = fixed + per_million · n / 10⁶``: return (fixed, per_million)."""
    xs = [n / 1e6 for n in ns]
    mx, my = sum(xs) / len(xs), sum(seconds) / len(seconds)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, seconds)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def summarise(record):
    """Fill each case's ``summary`` and the record's ``scaling`` from the raw runs (also used by --plot-only)."""
    chunk_mb = record["chunk_mb"]
    cases = record["cases"]
    for case in cases:
        n, runs = case["n"], case["runs"]
        summary = {}
        for step, results in runs.items():
            seconds = statistics.median(r["seconds"] for r in results)
            peaks = [r["peak_mb"] - r["baseline_mb"] for r in results]
            summary[step] = {"median_seconds": seconds, "seconds_per_million_rows": seconds / (n / 1e6),
                             "peak_above_baseline_mb": max(peaks), "median_peak_above_baseline_mb": statistics.median(peaks),
                             "peak_in_chunks": max(peaks) / chunk_mb}
        summary["fit"]["median_stage_seconds"] = {
            stage: statistics.median(r["timings"][stage] for r in runs["fit"]) for stage in runs["fit"][0]["timings"]}
        summary["fit"]["count_kernel"] = runs["fit"][0].get("count_kernel")
        summary["fit_over_read"] = summary["fit"]["median_seconds"] / summary["read"]["median_seconds"]
        case["summary"] = summary
    first, last = cases[0], cases[-1]
    scaling = {"n_ratio": last["n"] / first["n"]}
    ns = [c["n"] for c in cases]
    for step in STEPS:
        a, b = first["summary"][step], last["summary"][step]
        seconds = [c["summary"][step]["median_seconds"] for c in cases]
        fixed, per_million = linear_fit(ns, seconds)
        scaling[step] = {"time_ratio": b["median_seconds"] / a["median_seconds"],
                         "log_log_slope": log_log_slope(ns, seconds),
                         "linear_fit": {"fixed_seconds": fixed, "seconds_per_million_rows": per_million},
                         "seconds_per_million_rows_ratio": b["seconds_per_million_rows"] / a["seconds_per_million_rows"],
                         # the peak of each n is the max over its runs; the median over runs is less noisy
                         "peak_ratio": b["peak_above_baseline_mb"] / a["peak_above_baseline_mb"],
                         "median_peak_ratio": b["median_peak_above_baseline_mb"] / a["median_peak_above_baseline_mb"]}
    # The main pass alone (the stage that reads every row), without the fit's fixed costs.
    passes = [c["summary"]["fit"]["median_stage_seconds"]["pass"] for c in cases]
    fixed, per_million = linear_fit(ns, passes)
    scaling["fit_pass_stage"] = {"time_ratio": passes[-1] / passes[0], "log_log_slope": log_log_slope(ns, passes),
                                 "linear_fit": {"fixed_seconds": fixed, "seconds_per_million_rows": per_million}}
    scaling["fit"]["memory_flat_within_1.2x"] = scaling["fit"]["peak_ratio"] <= FLAT_MEMORY_TOLERANCE
    scaling["fit"]["median_memory_flat_within_1.2x"] = scaling["fit"]["median_peak_ratio"] <= FLAT_MEMORY_TOLERANCE
    record["scaling"] = scaling
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000, 8_000_000, 16_000_000])
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--malloc-arena-max", type=int, default=2,
                        help="MALLOC_ARENA_MAX of each step's process, as dist-relu sets (0: glibc's default)")
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--quick", action="store_true", help="n = 10⁵, 4·10⁵, d = 20, one repeat")
    parser.add_argument("--plot-only", metavar="JSON", help="redraw the figure of a saved result")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.plot_only:  # re-derive the summaries from the saved runs, then redraw
        record = summarise(json.loads(Path(args.plot_only).read_text()))
        Path(args.plot_only).write_text(json.dumps(record, indent=2))
        print_table(record)
        plot(record, Path(args.plot_only).with_suffix(".png"))
        return
    if args.quick:
        args.n, args.d, args.repeats = [100_000, 400_000], 20, 1

    import dask
    import numpy as np
    import zarr

    import dist_relu

    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    chunk_mb = args.chunk_rows * args.d * 4 / 2**20
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-scaling-n-"))
    workdir.mkdir(parents=True, exist_ok=True)
    weights, bias = dist_relu.figure1_truth(args.d, seed=0)
    cases = []
    try:
        for n in sorted(args.n):
            store, out = str(workdir / f"samples-n{n}.zarr"), str(workdir / f"fit-n{n}.zarr")
            start = time.perf_counter()
            dist_relu.simulate_to_zarr(store, weights, bias, n, chunk_rows=args.chunk_rows, seed=0, overwrite=True)
            simulate_seconds = time.perf_counter() - start
            stored_bytes = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
            print(f"n = {n:,}: simulated in {simulate_seconds:.1f} s, {stored_bytes / 2**20:.0f} MB on disk",
                  flush=True)
            if not args.quick:
                measure("read", store, out, args.malloc_arena_max)  # warm the page cache, untimed
            runs = {step: [] for step in STEPS}
            for repeat in range(args.repeats):  # interleaved, so that drift spreads over both steps
                for step in STEPS:
                    runs[step].append(measure(step, store, out, args.malloc_arena_max))
                    r = runs[step][-1]
                    print(f"  n = {n:,} run {repeat + 1} {step:>4}: {r['seconds']:.2f} s, "
                          f"peak {r['peak_mb'] - r['baseline_mb']:.0f} MB", flush=True)
            cases.append({"n": n, "n_chunks": -(-n // args.chunk_rows), "stored_mb": stored_bytes / 2**20,
                          "raw_mb": n * args.d * 4 / 2**20, "simulate_seconds": simulate_seconds, "runs": runs})
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {
        "benchmark": "scaling_n",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "d": args.d, "n_values": [c["n"] for c in cases], "dtype": "float32", "compressor": "zstd (zarr default)",
        "chunk_rows": args.chunk_rows, "chunk_mb": chunk_mb,
        "chunking": f"{args.chunk_rows:,}-row chunks × all {args.d} columns ({chunk_mb:.1f} MB)",
        "scheduler": "local threads", "repeats": args.repeats, "steps": STEPS,
        "malloc_arena_max": args.malloc_arena_max or "glibc default",
        "machine": steps.machine(load_before),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__},
        "cases": cases,
    }
    summarise(record)
    steps.write_results(record, args.out, "scaling_n_quick" if args.quick else "scaling_n", print_table, plot)


def print_table(record):
    print(f"\nd = {record['d']}, float32 zstd Zarr, {record['chunking']}, {record['scheduler']} "
          f"({record['machine']['cores']} cores), median of {record['repeats']}, each step a fresh process")
    print(f"{'n':>11}{'chunks':>8}{'step':>6}{'median s':>10}{'s/10⁶ rows':>12}{'peak MB':>9}{'chunks':>8}   runs (s)")
    for case in record["cases"]:
        for step in STEPS:
            s = case["summary"][step]
            print(f"{case['n']:>11,}{case['n_chunks']:>8}{step:>6}{s['median_seconds']:>10.2f}"
                  f"{s['seconds_per_million_rows']:>12.2f}{s['peak_above_baseline_mb']:>9.0f}{s['peak_in_chunks']:>8.1f}"
                  "   " + ", ".join(f"{r['seconds']:.2f}" for r in case["runs"][step]))
    print(f"\n{'n':>11}{'fit/read':>10}   fit stages (median s)")
    for case in record["cases"]:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in case["summary"]["fit"]["median_stage_seconds"].items())
        print(f"{case['n']:>11,}{case['summary']['fit_over_read']:>10.2f}   {stages}")
    sc = record["scaling"]
    print(f"\nover {sc['n_ratio']:.0f}× n ({record['cases'][0]['n']:,} → {record['cases'][-1]['n']:,}):")
    for step in STEPS:
        s = sc[step]
        print(f"  {step:>4}: time × {s['time_ratio']:.2f} (log-log slope {s['log_log_slope']:.2f}), "
              f"s/10⁶ rows × {s['seconds_per_million_rows_ratio']:.2f}, peak × {s['peak_ratio']:.2f} "
              f"(max of runs; median of runs × {s['median_peak_ratio']:.2f}); "
              f"least squares {s['linear_fit']['fixed_seconds']:.2f} s + "
              f"{s['linear_fit']['seconds_per_million_rows']:.2f} s/10⁶ rows")
    s = sc["fit_pass_stage"]
    print(f"  fit's pass stage alone: time × {s['time_ratio']:.2f} (log-log slope {s['log_log_slope']:.2f}); "
          f"least squares {s['linear_fit']['fixed_seconds']:.2f} s + "
          f"{s['linear_fit']['seconds_per_million_rows']:.2f} s/10⁶ rows")
    print(f"  fit memory flat within {FLAT_MEMORY_TOLERANCE}×: {sc['fit']['memory_flat_within_1.2x']} (max of runs), "
          f"{sc['fit']['median_memory_flat_within_1.2x']} (median of runs)")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cases = record["cases"]
    ns = [c["n"] for c in cases]
    colours = {"read": "#888888", "fit": "#1f77b4"}
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    for step in STEPS:
        seconds = [c["summary"][step]["median_seconds"] for c in cases]
        ax_t.loglog(ns, seconds, "o-", color=colours[step],
                    label=f"{step} (slope {record['scaling'][step]['log_log_slope']:.2f})")
        for run in range(record["repeats"]):
            ax_t.scatter(ns, [c["runs"][step][run]["seconds"] for c in cases], s=8, color=colours[step], alpha=0.4)
    if "fit_pass_stage" in record["scaling"]:
        ax_t.loglog(ns, [c["summary"]["fit"]["median_stage_seconds"]["pass"] for c in cases], "^:", color="#1f77b4",
                    label=f"fit's pass stage (slope {record['scaling']['fit_pass_stage']['log_log_slope']:.2f})")
    fit0 = cases[0]["summary"]["fit"]["median_seconds"]
    ax_t.loglog([ns[0], ns[-1]], [fit0, fit0 * ns[-1] / ns[0]], "k--", lw=0.8, label="slope 1 (through fit at min n)")
    ax_t.set_xlabel("n (rows)")
    ax_t.set_ylabel("median seconds")
    ax_t.legend(fontsize=8)
    ax_t.set_title(f"time; fit at {ns[-1] // ns[0]}× n takes {record['scaling']['fit']['time_ratio']:.2f}× as long",
                   fontsize=9)
    for step in STEPS:
        ax_m.plot(ns, [c["summary"][step]["peak_above_baseline_mb"] for c in cases], "o-", color=colours[step],
                  label=f"{step} (max of runs)")
        ax_m.plot(ns, [c["summary"][step]["median_peak_above_baseline_mb"] for c in cases], "x:",
                  color=colours[step], label=f"{step} (median of runs)")
    ax_m.set_xscale("log")
    ax_m.set_ylim(0, 1.3 * max(c["summary"][s]["peak_above_baseline_mb"] for c in cases for s in STEPS))
    ax_m.set_xlabel("n (rows)")
    ax_m.set_ylabel("peak MB above post-import baseline")
    ax_m.legend(fontsize=8)
    ax_m.set_title(f"peak memory; fit at {ns[-1] // ns[0]}× n: × {record['scaling']['fit']['peak_ratio']:.2f} (max of runs),"
                   f"\n× {record['scaling']['fit']['median_peak_ratio']:.2f} (median of runs); claim: ≤ "
                   f"{FLAT_MEMORY_TOLERANCE}×", fontsize=9)
    for ax in (ax_t, ax_m):
        ax.set_xticks(ns, [f"{n / 1e6:g}·10⁶" for n in ns], fontsize=8)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.suptitle(f"d = {record['d']}, n = {ns[0]:,} … {ns[-1]:,}, float32 zstd Zarr, {record['chunking']}, "
                 f"{record['scheduler']}, {record['machine']['cores']} cores, median of {record['repeats']}, "
                 f"MALLOC_ARENA_MAX {record.get('malloc_arena_max', 'glibc default')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
