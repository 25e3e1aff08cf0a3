"""What the delete-a-group jackknife costs a one-layer fit, and how its standard errors agree with the analytic ones.

For each ``n:d`` in ``--cases`` (default ``1000000:100`` and ``1000000:1000``)
the script simulates one float32 Zarr store::

    dist_relu.simulate_to_zarr(store, *dist_relu.figure1_truth(d, seed=0), n, chunk_rows=65_536, seed=0)

(65,536-row chunks of all d columns: ``dist-relu simulate``'s default), then
times, for each ``G`` in ``--groups`` (default 0, 20, 50)::

    dist_relu.fit_to_zarr(store, out, overwrite=True, jackknife_groups=G)

(default settings otherwise, local threads: dask's default scheduler), each
fit in a fresh process (``--child``) timed by ``steps.run_step`` after its
imports: the fit's wall time, its peak memory above the resident memory after
the imports, the fit's own ``seconds`` and ``timings`` (the jackknife is
inside the "standard errors" stage), its column block, and the child's CPU
seconds (user + system, both threads). The children have
``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1`` as ``dist-relu``
sets it. The parent removes the fit's output before each run (so that no fit
pays for deleting the last one) and measures it after: its bytes on disk, in
all and for ``group_counts`` (``(G, d, d)`` int64: ``8·G·d²`` bytes before
compression), ``group_statistics`` and the four ``jackknife_*_se`` arrays.
The fit's attribute ``jackknife`` gives, for each of Σ̂, ρ̂, b̂ and σ̂, the
root-mean-square ratio of the jackknife's standard errors to the analytic
ones; it is recorded for every fit.

Per case: one untimed warm-up fit per ``G`` (it compiles what the numba cache
lacks and warms the page cache), then ``--repeats`` interleaved rounds
``G = 0, 20, 50, 0, 20, 50, …``. Reported per ``G``: the medians, and the
ratios of the medians to ``G = 0``'s (wall, CPU, stages, peak, bytes on
disk); also the paired ratios (each run over the ``G = 0`` run of its round).
Results go to ``benchmarks/results/jackknife.{json,png}``.

    PYTHONPATH=. python benchmarks/jackknife.py                        # n = 10⁶, d = 100 and 1000; G = 0, 20, 50
    PYTHONPATH=. python benchmarks/jackknife.py --cases 1000000:100 --repeats 5
    python benchmarks/jackknife.py --quick                             # n = 10⁵, d = 10 and 20; G = 0, 4, 10
    python benchmarks/jackknife.py --plot-only benchmarks/results/jackknife.json
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
import time
from pathlib import Path

import steps
from fit_vs_read import SINGLE_THREAD_BLAS

FIT = "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True, jackknife_groups=GROUPS)"
JACKKNIFE_ARRAYS = ("group_counts", "group_statistics", "jackknife_covariance_se", "jackknife_correlation_se",
                    "jackknife_bias_se", "jackknife_scale_se")
RATIOS = ("covariance_ratio", "correlation_ratio", "bias_ratio", "scale_ratio")
STAGE_COLOURS = {"pass": "#1f77b4", "inversion": "#2ca02c", "standard errors": "#d62728", "write": "#98df8a"}
COLOURS = ("#888888", "#1f77b4", "#d62728", "#9467bd", "#ff7f0e")


def child(groups, store, out):
    """Fit with ``jackknife_groups=groups`` here; print ``steps.run_step``'s record with more of the fit's."""
    import dask.array  # noqa: F401  (run_step's imports, here so that the CPU seconds below are the fit's)
    import distributed  # noqa: F401
    import numpy  # noqa: F401
    import zarr  # noqa: F401

    import dist_relu

    namespace = {"STORE": store, "OUT": out, "GROUPS": int(groups)}
    printed = io.StringIO()
    cpu = os.times()
    with contextlib.redirect_stdout(printed):
        steps.run_step(FIT, namespace)
    cpu_seconds = sum(os.times()[:2]) - sum(cpu[:2])
    record = json.loads(printed.getvalue().strip().splitlines()[-1])
    attributes = namespace["RESULT"]
    record.update(cpu_seconds=cpu_seconds, dist_relu_file=dist_relu.__file__,
                  jackknife_groups=attributes.get("jackknife_groups"), jackknife=attributes.get("jackknife"),
                  memory=attributes.get("memory"), row_chunk=attributes.get("row_chunk"))
    print(json.dumps(record))


def directory_bytes(path):
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def fit_once(groups, store, out):
    """Time one fit in a fresh process; return its record with the stored fit's bytes and the load before it."""
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()
    record = steps.measure(__file__, "fit", [groups, store, out], env={**os.environ, **SINGLE_THREAD_BLAS})
    record["load_average_before"] = load
    record["stored_bytes"] = directory_bytes(out)
    record["stored_array_bytes"] = {name: directory_bytes(Path(out) / name) for name in JACKKNIFE_ARRAYS}
    return record


def parse_case(text):
    n, d = text.split(":")
    return int(float(n)), int(d)


def median(runs, value):
    return statistics.median(value(r) for r in runs)


def summarise(runs, groups, d):
    """Medians per ``G``, their ratios to ``G = 0``'s (the first of ``groups``), paired ratios, the ratios' spread."""
    reference = groups[0]
    summary = {}
    for g in groups:
        rs = runs[g]
        stages = {s: median(rs, lambda r: r["timings"].get(s, 0.0)) for s in rs[0]["timings"]}
        peaks = [r["peak_mb"] - r["baseline_mb"] for r in rs]
        ratios = {name: [r["jackknife"][name] if r["jackknife"] else None for r in rs] for name in RATIOS}
        summary[g] = {
            "median_seconds": median(rs, lambda r: r["seconds"]),
            "median_fit_seconds_attribute": median(rs, lambda r: r["fit_seconds"]),
            "median_cpu_seconds": median(rs, lambda r: r["cpu_seconds"]),
            "median_stage_seconds": stages,
            "median_outside_stages_seconds": median(rs, lambda r: r["seconds"] - sum(r["timings"].values())),
            "median_peak_above_baseline_mb": statistics.median(peaks), "peak_above_baseline_mb_range": [min(peaks),
                                                                                                         max(peaks)],
            "median_stored_bytes": median(rs, lambda r: r["stored_bytes"]),
            "median_stored_array_bytes": {a: median(rs, lambda r: r["stored_array_bytes"][a])
                                          for a in JACKKNIFE_ARRAYS},
            "group_counts_raw_bytes": 8 * g * d * d,
            "column_block": rs[0].get("column_block"),
            "jackknife_ratios": {name: values[0] for name, values in ratios.items()},
            "jackknife_ratios_same_in_every_run": all(len(set(values)) == 1 for values in ratios.values()),
        }
    base = summary[reference]
    for g in groups:
        s = summary[g]
        s["over_reference"] = {
            "seconds": s["median_seconds"] / base["median_seconds"],
            "cpu_seconds": s["median_cpu_seconds"] / base["median_cpu_seconds"],
            "peak_above_baseline": s["median_peak_above_baseline_mb"] / base["median_peak_above_baseline_mb"],
            "stored_bytes": s["median_stored_bytes"] / base["median_stored_bytes"],
            "stages": {k: (v / base["median_stage_seconds"][k] if base["median_stage_seconds"].get(k) else None)
                       for k, v in s["median_stage_seconds"].items()},
        }
        s["minus_reference"] = {
            "seconds": s["median_seconds"] - base["median_seconds"],
            "standard_errors_stage_seconds": (s["median_stage_seconds"].get("standard errors", 0.0)
                                              - base["median_stage_seconds"].get("standard errors", 0.0)),
            "peak_above_baseline_mb": s["median_peak_above_baseline_mb"] - base["median_peak_above_baseline_mb"],
            "stored_mb": (s["median_stored_bytes"] - base["median_stored_bytes"]) / 2**20,
        }
        s["peak_increase_over_group_counts_raw"] = (s["minus_reference"]["peak_above_baseline_mb"] * 2**20
                                                    / s["group_counts_raw_bytes"] if g else None)
        paired = [r["seconds"] / r0["seconds"] for r, r0 in zip(runs[g], runs[reference])]
        s["paired_ratios"] = paired
        s["paired_ratio_range"] = [min(paired), max(paired)]
    return {str(g): summary[g] for g in groups}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=parse_case, nargs="+", default=[(1_000_000, 100), (1_000_000, 1000)],
                        metavar="N:D")
    parser.add_argument("--groups", type=int, nargs="+", default=[0, 20, 50],
                        help="the jackknife_groups compared; the first (0) is the reference")
    parser.add_argument("--chunk-rows", type=int, default=65_536, help="rows per chunk (dist-relu simulate's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per case (after one warm-up round)")
    parser.add_argument("--repeats-large-d", type=int, default=None, metavar="R",
                        help="timed rounds for the cases with d ≥ 1000 (default: --repeats)")
    parser.add_argument("--workdir", default=None)
    steps.add_result_options(parser, "n = 10⁵ at d = 10 and 20, G = 0, 4, 10, 16,384-row chunks, 1 round, no warm-up")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child[1:])
    if steps.replotted(args, plot):
        return
    warm_up = True
    if args.quick:
        args.cases, args.groups, args.chunk_rows, args.repeats = [(100_000, 10), (100_000, 20)], [0, 4, 10], 16_384, 1
        args.repeats_large_d, warm_up = None, False

    import dask
    import numpy as np
    import zarr

    import dist_relu

    load_before = os.getloadavg()
    fingerprint_before = steps.package_fingerprint()
    started = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-jackknife-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"dist_relu from {dist_relu.__file__}", flush=True)
    cases = []
    try:
        for n, d in args.cases:
            repeats = args.repeats_large_d if d >= 1000 and args.repeats_large_d else args.repeats
            store = str(workdir / f"samples-n{n}-d{d}.zarr")
            outs = {g: str(workdir / f"fit-G{g}-n{n}-d{d}.zarr") for g in args.groups}
            start = time.perf_counter()
            dist_relu.simulate_to_zarr(store, *dist_relu.figure1_truth(d, seed=0), n, chunk_rows=args.chunk_rows,
                                       seed=0, overwrite=True)
            simulate_seconds = time.perf_counter() - start
            stored = directory_bytes(store)
            n_chunks = -(-n // args.chunk_rows)
            print(f"n = {n:,}, d = {d}: simulated in {simulate_seconds:.1f} s, {n_chunks} chunks of "
                  f"{args.chunk_rows:,} rows, {stored / 2**20:.0f} MB on disk", flush=True)
            runs = {g: [] for g in args.groups}
            warm_ups = {}
            for repeat in range(0 if warm_up else 1, repeats + 1):  # round 0: the warm-up, untimed
                for g in args.groups:
                    r = fit_once(g, store, outs[g])
                    if repeat == 0:
                        warm_ups[g] = r
                    else:
                        runs[g].append(r)
                    ratios = ", ".join(f"{k.split('_')[0]} {v:.3f}" for k, v in (r["jackknife"] or {}).items()
                                       if k != "groups")
                    print(f"  {'warm-up' if repeat == 0 else f'run {repeat}'} G = {g:>2}: {r['seconds']:.2f} s "
                          f"(CPU {r['cpu_seconds']:.2f} s, load {r['load_average_before'][0]:.2f}), peak "
                          f"{r['peak_mb'] - r['baseline_mb']:.0f} MB, stored {r['stored_bytes'] / 2**20:.1f} MB; "
                          + ", ".join(f"{k} {s:.2f}" for k, s in r["timings"].items())
                          + (f"; jackknife/analytic {ratios}" if ratios else ""), flush=True)
            cases.append({"n": n, "d": d, "chunk_rows": args.chunk_rows, "n_chunks": n_chunks,
                          "chunk_mb": args.chunk_rows * d * 4 / 2**20, "stored_mb": stored / 2**20,
                          "raw_mb": n * d * 4 / 2**20, "simulate_seconds": simulate_seconds, "repeats": repeats,
                          "warm_up": {str(g): r for g, r in warm_ups.items()},
                          "runs": {str(g): rs for g, rs in runs.items()},
                          "summary": summarise(runs, args.groups, d)})
            shutil.rmtree(store, ignore_errors=True)
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {
        "benchmark": "jackknife",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "dtype": "float32", "compressor": "zstd (zarr default)",
        "chunking": f"{args.chunk_rows:,}-row chunks, all columns in one chunk",
        "scheduler": "local threads (dask's default)", "groups": args.groups,
        "repeats": {str(c["d"]): c["repeats"] for c in cases}, "warm_up": warm_up,
        "order": ("one untimed warm-up round, then " if warm_up else "")
        + "rounds of G = " + ", ".join(map(str, args.groups)) + ", each fit a fresh process",
        "fit": FIT, "child_environment": SINGLE_THREAD_BLAS,
        "machine": steps.machine(load_before, cpu=steps.cpu_model()),
        "package_sources_sha256": {"before": fingerprint_before, "after": steps.package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__},
        "cases": cases,
    }
    steps.write_results(record, args.out, "jackknife_quick" if args.quick else "jackknife", print_table, plot)


def print_table(record):
    print(f"\nfloat32 zstd Zarr, {record['chunking']}, {record['scheduler']} ({record['machine']['cores']} cores), "
          f"medians of interleaved runs, each a fresh process")
    print(f"{'n':>11}{'d':>6}{'G':>4}{'runs':>5}{'wall s':>8}{'/G=0':>7}{'paired':>13}{'CPU s':>7}{'/G=0':>7}"
          f"{'SE stage s':>11}{'pass s':>8}{'peak MB':>9}{'/G=0':>7}{'stored MB':>10}{'/G=0':>8}{'8Gd² MB':>9}"
          f"   jackknife/analytic: Σ, ρ, b, σ")
    for case in record["cases"]:
        for g, s in case["summary"].items():
            over = s["over_reference"]
            low, high = s["paired_ratio_range"]
            ratios = s["jackknife_ratios"]
            shown = ", ".join("—" if ratios[k] is None else f"{ratios[k]:.3f}" for k in RATIOS)
            print(f"{case['n']:>11,}{case['d']:>6}{g:>4}{len(case['runs'][g]):>5}{s['median_seconds']:>8.2f}"
                  f"{over['seconds']:>7.3f}{f'{low:.2f}–{high:.2f}':>13}{s['median_cpu_seconds']:>7.2f}"
                  f"{over['cpu_seconds']:>7.3f}{s['median_stage_seconds'].get('standard errors', 0):>11.3f}"
                  f"{s['median_stage_seconds'].get('pass', 0):>8.2f}{s['median_peak_above_baseline_mb']:>9.0f}"
                  f"{over['peak_above_baseline']:>7.3f}{s['median_stored_bytes'] / 2**20:>10.2f}"
                  f"{over['stored_bytes']:>8.2f}{s['group_counts_raw_bytes'] / 2**20:>9.1f}   {shown}")
    for case in record["cases"]:
        for g, s in case["summary"].items():
            stages = ", ".join(f"{k} {x:.3f}" for k, x in s["median_stage_seconds"].items())
            arrays = ", ".join(f"{k} {v / 2**20:.2f}" for k, v in s["median_stored_array_bytes"].items() if v)
            print(f"  n = {case['n']:,}, d = {case['d']}, G = {g}: stages (median s) {stages}, outside "
                  f"{s['median_outside_stages_seconds']:.3f}; column block {s['column_block']}; runs (s) "
                  + ", ".join(f"{r['seconds']:.2f}" for r in case["runs"][g])
                  + "; peak range {:.0f}–{:.0f} MB".format(*s["peak_above_baseline_mb_range"])
                  + (f"; stored MB: {arrays}" if arrays else ""))
    m = record["machine"]
    print(f"load average before {m['load_average_before'][0]:.2f}, after {m['load_average_after'][0]:.2f}")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = record["cases"]
    fig, axes = plt.subplots(2, len(cases), figsize=(5.5 * len(cases), 9), squeeze=False)
    for column, case in enumerate(cases):
        ax_t, ax_m = axes[0][column], axes[1][column]
        summary = case["summary"]
        labels = list(summary)
        for k, g in enumerate(labels):
            s = summary[g]
            bottom = 0.0
            for stage, seconds in s["median_stage_seconds"].items():
                ax_t.bar(k, seconds, 0.6, bottom=bottom, color=STAGE_COLOURS.get(stage),
                         label=stage if k == 0 else None)
                bottom += seconds
            ax_t.bar(k, max(s["median_seconds"] - bottom, 0), 0.6, bottom=bottom, color="#dddddd",
                     label="outside the stages" if k == 0 else None)
            times = [r["seconds"] for r in case["runs"][g]]
            ax_t.plot([k + 0.38] * len(times), times, "o", color="k", ms=3, label="each run" if k == 0 else None)
            ax_t.annotate(f"{s['median_seconds']:.2f} s\n×{s['over_reference']['seconds']:.2f}",
                          (k, s["median_seconds"]), ha="center", va="bottom", fontsize=8)
            peaks = [r["peak_mb"] - r["baseline_mb"] for r in case["runs"][g]]
            ax_m.bar(k, s["median_peak_above_baseline_mb"], 0.6, color=COLOURS[k % len(COLOURS)])
            ax_m.plot([k + 0.38] * len(peaks), peaks, "o", color="k", ms=3)
            expected = summary[labels[0]]["median_peak_above_baseline_mb"] + s["group_counts_raw_bytes"] / 2**20
            if s["group_counts_raw_bytes"]:
                ax_m.hlines(expected, k - 0.3, k + 0.3, colors="k", linestyles="dashed",
                            label="G = 0's peak + 8·G·d²" if k == 1 else None)
            ratios = s["jackknife_ratios"]
            text = f"{s['median_peak_above_baseline_mb']:.0f} MB\nstored {s['median_stored_bytes'] / 2**20:.3g} MB"
            if ratios["covariance_ratio"] is not None:
                text += "\nSE ratio Σ {:.2f} ρ {:.2f}\nb {:.2f} σ {:.2f}".format(*(ratios[r] for r in RATIOS))
            ax_m.annotate(text, (k, max(s["median_peak_above_baseline_mb"], expected)), ha="center", va="bottom",
                          fontsize=7)
        for ax in (ax_t, ax_m):
            ax.set_xticks(range(len(labels)), [f"G = {g}" for g in labels])
        ax_t.set_title(f"n = {case['n']:,}, d = {case['d']}, {case['n_chunks']} chunks of {case['chunk_rows']:,} "
                       f"rows\nmedian of {case['repeats']}", fontsize=9)
        ax_t.set_ylabel("fit_to_zarr wall seconds (median; stages stacked)")
        ax_t.set_ylim(0, 1.6 * max(max(r["seconds"] for r in rs) for rs in case["runs"].values()))
        ax_t.legend(fontsize=7, loc="upper left", ncol=3)
        ax_m.set_ylabel("peak above the post-import RSS, MB (median; dots: runs)")
        top = max(max(r["peak_mb"] - r["baseline_mb"] for r in rs) for rs in case["runs"].values())
        top = max(top, max(summary[labels[0]]["median_peak_above_baseline_mb"] + s["group_counts_raw_bytes"] / 2**20
                           for s in summary.values()))
        ax_m.set_ylim(0, 1.45 * top)
        if len(labels) > 1:
            ax_m.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"the fit with a delete-a-group jackknife over G groups of rows (SE ratio: jackknife / analytic, "
                 f"root-mean-square)\nfloat32 zstd Zarr, {record['chunking']}, {record['scheduler']}, "
                 f"{record['machine']['cores']} cores, {record['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
