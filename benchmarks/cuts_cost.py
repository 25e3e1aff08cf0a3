"""What cut points cost a fit: K = 1 (the default), 3 and 5 cut points per coordinate against one plain read.

For each ``d`` in ``--d`` (default 100 and 1000) simulates ``n × d`` float32
samples (zstd Zarr, row chunks of about ``--chunk-mb`` MB, all columns in one
chunk; ``steps.chunk_rows_for``)::

    dist_relu.simulate_to_zarr(store, *dist_relu.figure1_truth(d, seed=0), n, chunk_rows=ROWS, seed=0, overwrite=True)

then runs each step in a fresh Python process on the local threaded
scheduler (``steps.measure``; ``steps.run_step`` times it after the imports
and records its peak resident memory above the memory after them, its minor
page faults and CPU seconds):

- ``read``: ``da.from_zarr(store, component="samples").sum().compute()``
- ``fit K=1``, ``fit K=3``, ``fit K=5``:
  ``dist_relu.fit_to_zarr(store, out, overwrite=True, cuts=K)`` (default
  settings otherwise: one pass), with the fit's stage timings (pass, with its
  pilot; inversion, for K > 1 the maximum-likelihood ρ of each pair's
  (K+1)×(K+1) table; standard errors, for K > 1 the polychoric ones; write),
  its column block, memory plan and ``cuts`` (the attribute is stored only for
  K > 1; the record says 1 otherwise).

Per case: one untimed read (it warms the page cache) and one untimed fit of
each K (numba's cache then holds every kernel), then ``--repeats`` interleaved
rounds of read, K=1, K=3, K=5, the order rotated by one step each round
(read, K=1, K=3, K=5; K=1, K=3, K=5, read; ...). The parent removes the fit's
output before each fit, so that no fit pays for deleting the last one (whose
size depends on its K). When a case's slowest warm-up fit takes longer than
``--slow-fit-seconds`` (default 180), that case runs at most 3 rounds (the
record says so). Reported per case: the median seconds of each step, the
fits' median stage seconds, the peak memory above the post-import baseline
(the largest of the runs), and the ratios of the medians: fit K=3 / fit K=1,
fit K=5 / fit K=1 (the targets at d = 100: K=3 ≤ 1.5×, K=5 ≤ 2×) and each
fit / read. Results go to ``benchmarks/results/cuts_cost.{json,png}``.

    python benchmarks/cuts_cost.py            # d = 100 (n = 2·10⁶), 1000 (n = 2·10⁵); 5 repeats
    python benchmarks/cuts_cost.py --quick    # d = 10, 50, n = 10⁵, 2 MB chunks, one repeat
    python benchmarks/cuts_cost.py --plot-only benchmarks/results/cuts_cost.json
"""

import argparse
import contextlib
import datetime
import io
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import steps
from steps import package_fingerprint, run_step

CUTS = (1, 3, 5)
FITS = tuple(f"fit K={k}" for k in CUTS)
READ = "import dask.array as da; da.from_zarr(STORE, component='samples').sum().compute()"
FIT = "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True, cuts=CUTS)"
STEPS = {"read": READ, **{step: FIT.replace("CUTS", str(k)) for step, k in zip(FITS, CUTS)}}
ORDER = ("read", *FITS)
LABELS = {"read": "plain read (sum)", **{step: f"fit_to_zarr, cuts={k}" for step, k in zip(FITS, CUTS)}}
TARGETS = {"d": 100, "fit K=3 / fit K=1": 1.5, "fit K=5 / fit K=1": 2.0}
MAX_SLOW_REPEATS = 3
DEFAULT_N = {100: 2_000_000, 1000: 200_000}


def child(step, store, out):
    """Run one step in this process and print its record (``steps.run_step``), with the fit's ``cuts`` and plan."""
    namespace = {"STORE": store, "OUT": out}
    if step == "read":
        return run_step(STEPS[step], namespace)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_step(STEPS[step], namespace)
    record = json.loads(printed.getvalue().strip().splitlines()[-1])
    attributes = namespace["RESULT"]
    record.update(cuts=attributes.get("cuts", 1), memory=attributes.get("memory"))
    print(json.dumps(record))


def measure(step, store, out):
    """Run ``step`` in a fresh process (after removing the last fit's output) and return its record."""
    if step != "read":
        shutil.rmtree(out, ignore_errors=True)
    return steps.measure(__file__, step, [store, out])


def rotated(repeat):
    """The steps' order in round ``repeat``: ``ORDER`` rotated by ``repeat`` steps."""
    k = repeat % len(ORDER)
    return ORDER[k:] + ORDER[:k]


def summarise(runs, chunk_mb):
    """Medians and peaks per step, the fits' stage medians, and the ratios of the medians."""
    summary = {}
    for step, results in runs.items():
        above = max(r["peak_mb"] - r["baseline_mb"] for r in results)
        summary[step] = {"median_seconds": statistics.median(r["seconds"] for r in results),
                         "peak_above_baseline_mb": above, "peak_in_chunks": above / chunk_mb,
                         "median_cpu_seconds": statistics.median(r["user_seconds"] + r["system_seconds"]
                                                                 for r in results)}
        if step != "read":
            summary[step]["median_stage_seconds"] = {
                stage: statistics.median(r["timings"][stage] for r in results) for stage in results[0]["timings"]}
            summary[step]["cuts"] = sorted({r["cuts"] for r in results})
            summary[step]["column_block"] = results[0].get("column_block")
            summary[step]["memory"] = results[0].get("memory")
    default = summary[FITS[0]]["median_seconds"]
    summary["ratios"] = {
        **{f"{step} / fit K=1": summary[step]["median_seconds"] / default for step in FITS[1:]},
        **{f"{step} / read": summary[step]["median_seconds"] / summary["read"]["median_seconds"] for step in FITS},
    }
    summary["stage_ratios_to_K1"] = {
        step: {stage: (seconds / summary[FITS[0]]["median_stage_seconds"][stage]
                       if summary[FITS[0]]["median_stage_seconds"].get(stage) else None)
               for stage, seconds in summary[step]["median_stage_seconds"].items()} for step in FITS[1:]}
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--n", type=int, default=None,
                        help="rows for every d (default: 2·10⁶, or 2·10⁵ for d ≥ 1000)")
    parser.add_argument("--chunk-mb", type=float, default=32.0, help="float32 MB per row chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-fit-seconds", type=float, default=180.0,
                        help=f"a case whose slowest warm-up fit takes longer runs at most {MAX_SLOW_REPEATS} rounds")
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
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-cuts-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cases = []
    try:
        for d in args.d:
            n = args.n or DEFAULT_N.get(d, 200_000 if d >= 1000 else 2_000_000)
            store, out, chunk_rows, chunk_mb, simulate_seconds, stored_bytes = steps.simulate_figure1(
                workdir, d, n, args.chunk_mb)
            load_case = os.getloadavg()
            measure("read", store, out)  # warm the page cache, untimed
            warm_up = {}
            for step in FITS:  # untimed: numba's cache then holds every kernel
                warm_up[step] = measure(step, store, out)
                print(f"  d = {d} warm-up {step}: {warm_up[step]['seconds']:.2f} s", flush=True)
            repeats = args.repeats
            slowest = max(r["seconds"] for r in warm_up.values())
            reduced = None
            if slowest > args.slow_fit_seconds and repeats > MAX_SLOW_REPEATS:
                repeats = MAX_SLOW_REPEATS
                reduced = (f"slowest warm-up fit {slowest:.0f} s > {args.slow_fit_seconds:g} s: "
                           f"{MAX_SLOW_REPEATS} rounds instead of {args.repeats}")
                print(f"  d = {d}: {reduced}", flush=True)
            runs = {step: [] for step in ORDER}
            for repeat in range(repeats):  # interleaved and rotated, so that drift spreads over all steps
                for step in rotated(repeat):
                    record = measure(step, store, out)
                    record["round"], record["load_average_before"] = repeat, os.getloadavg()
                    runs[step].append(record)
                    print(f"  d = {d} run {repeat + 1} {step:>8}: {record['seconds']:.2f} s, "
                          f"peak {record['peak_mb'] - record['baseline_mb']:.0f} MB", flush=True)
            cases.append({"n": n, "d": d, "chunk_rows": chunk_rows, "chunk_mb": chunk_mb,
                          "n_chunks": -(-n // chunk_rows), "stored_mb": stored_bytes / 2**20,
                          "raw_mb": n * d * 4 / 2**20, "simulate_seconds": simulate_seconds,
                          "repeats": repeats, "repeats_reduced": reduced,
                          "load_average_at_start": load_case, "load_average_at_end": os.getloadavg(),
                          "warm_up_seconds": {step: r["seconds"] for step, r in warm_up.items()},
                          "runs": runs, "summary": summarise(runs, chunk_mb)})
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {
        "benchmark": "cuts_cost",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32", "compressor": "zstd (zarr default)", "chunking": f"row chunks of ~{args.chunk_mb:g} MB, "
        "all columns in one chunk", "chunk_mb_target": args.chunk_mb, "scheduler": "local threads",
        "repeats": args.repeats, "order": "rotated by one step each round, starting " + ", ".join(ORDER),
        "steps": STEPS, "targets": TARGETS,
        "machine": steps.machine(load_before),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__},
        "cases": cases,
    }
    steps.write_results(record, args.out, "cuts_cost_quick" if args.quick else "cuts_cost", print_table, plot)


def print_table(record):
    print(f"\nfloat32 zstd Zarr, {record['chunking']}, {record['scheduler']} ({record['machine']['cores']} cores), "
          f"medians, each step a fresh process")
    print(f"{'d':>5}{'n':>11}{'chunks':>8}{'rounds':>8}{'step':>10}{'median s':>10}{'/ K=1':>7}{'/ read':>8}"
          f"{'pass':>8}{'invert':>8}{'SEs':>8}{'write':>7}{'peak MB':>9}   runs (s)")
    for case in record["cases"]:
        s = case["summary"]
        for step in ORDER:
            t = s[step]
            ratio_k1 = t["median_seconds"] / s[FITS[0]]["median_seconds"] if step != "read" else None
            ratio_read = t["median_seconds"] / s["read"]["median_seconds"]
            stages = t.get("median_stage_seconds", {})
            print(f"{case['d']:>5}{case['n']:>11,}{case['n_chunks']:>8}{case['repeats']:>8}{step:>10}"
                  f"{t['median_seconds']:>10.2f}" + (f"{ratio_k1:>7.2f}" if ratio_k1 else f"{'':>7}")
                  + f"{ratio_read:>8.2f}"
                  + "".join(f"{stages[k]:>{w}.2f}" if k in stages else f"{'':>{w}}"
                            for k, w in (("pass", 8), ("inversion", 8), ("standard errors", 8), ("write", 7)))
                  + f"{t['peak_above_baseline_mb']:>9.0f}   "
                  + ", ".join(f"{r['seconds']:.2f}" for r in case["runs"][step]))
        if case.get("repeats_reduced"):
            print(f"      d = {case['d']}: {case['repeats_reduced']}")
    targets = record["targets"]
    for case in record["cases"]:
        r = case["summary"]["ratios"]
        verdicts = ", ".join(f"{name} = {r[name]:.2f}" + (f" (target ≤ {targets[name]:g}: "
                                                         f"{'met' if r[name] <= targets[name] else 'NOT met'})"
                                                         if case["d"] == targets["d"] else "")
                             for name in ("fit K=3 / fit K=1", "fit K=5 / fit K=1"))
        print(f"d = {case['d']}: {verdicts}; fit / read: "
              + ", ".join(f"K={k} {r[f'{step} / read']:.2f}" for step, k in zip(FITS, CUTS)))


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cases = record["cases"]
    stage_colours = {"pass": "#1f77b4", "inversion": "#2ca02c", "standard errors": "#d62728", "write": "#98df8a"}
    fig, axes = plt.subplots(1, len(cases) + 1, figsize=(4.2 * (len(cases) + 1), 5), squeeze=False)
    x = np.arange(len(ORDER))
    for ax, case in zip(axes[0], cases):
        s = case["summary"]
        ax.bar(x[0], s["read"]["median_seconds"], 0.6, color="#888888", label=LABELS["read"])
        for k, step in enumerate(FITS, start=1):  # each fit stacked by its stages, then the time outside them
            bottom = 0.0
            for stage, seconds in s[step]["median_stage_seconds"].items():
                ax.bar(x[k], seconds, 0.6, bottom=bottom, color=stage_colours.get(stage),
                       label=f"fit: {stage}" if k == 1 else None)
                bottom += seconds
            total = s[step]["median_seconds"]
            ax.bar(x[k], max(total - bottom, 0.0), 0.6, bottom=bottom, color="#dddddd",
                   label="fit: outside stages" if k == 1 else None)
            label = f"{total:.2f} s\n{s['ratios'][f'{step} / read']:.2f}× read"
            if step != FITS[0]:
                label += f"\n{s['ratios'][f'{step} / fit K=1']:.2f}× K=1"
            ax.annotate(label, (x[k], total), ha="center", va="bottom", fontsize=7)
        ax.annotate(f"{s['read']['median_seconds']:.2f} s", (x[0], s["read"]["median_seconds"]), ha="center",
                    va="bottom", fontsize=7)
        ax.set_xticks(x, ["read", *(f"K={k}" for k in CUTS)], fontsize=8)
        ax.set_ylim(0, 1.35 * max(s[step]["median_seconds"] for step in ORDER))
        ax.set_ylabel("median seconds")
        ax.set_title(f"d = {case['d']}, n = {case['n']:,}, {case['chunk_rows']:,}-row chunks, "
                     f"median of {case['repeats']}", fontsize=8)
    ax_m = axes[0][-1]
    width = 0.8 / len(ORDER)
    colours = {"read": "#888888", FITS[0]: "#1f77b4", FITS[1]: "#ff7f0e", FITS[2]: "#d62728"}
    xc = np.arange(len(cases))
    for k, step in enumerate(ORDER):
        heights = [c["summary"][step]["peak_above_baseline_mb"] for c in cases]
        bars = ax_m.bar(xc + (k - (len(ORDER) - 1) / 2) * width, heights, width, color=colours[step],
                        label=LABELS[step])
        for bar, c in zip(bars, cases):
            ax_m.annotate(f"{c['summary'][step]['peak_in_chunks']:.1f}", (bar.get_x() + width / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
    ax_m.set_xticks(xc, [f"d = {c['d']}" for c in cases], fontsize=8)
    ax_m.set_ylabel("peak MB above post-import baseline (max of runs)")
    ax_m.set_title("peak memory (labels: in chunks)", fontsize=8)
    ax_m.legend(fontsize=7, loc="upper left")
    ax_m.set_ylim(0, 1.3 * max(max(c["summary"][s]["peak_above_baseline_mb"] for s in ORDER) for c in cases))
    targets = record["targets"]
    fig.suptitle(f"cost of cut points: float32 zstd Zarr, {record['chunking']}, {record['scheduler']}, "
                 f"{record['machine']['cores']} cores; targets at d = {targets['d']}: "
                 f"K=3 ≤ {targets['fit K=3 / fit K=1']:g}×, K=5 ≤ {targets['fit K=5 / fit K=1']:g}× "
                 "the default fit", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
