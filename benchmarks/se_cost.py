"""What the standard errors and the model check cost a one-layer fit: the fit's time before and after them.

Two checkouts of the project, ``--before`` (the code before the standard
errors, the model check and the x³, x⁴ sums of the fused pass) and
``--after`` (by default the checkout this script is in), fit the same stores.
For each ``n:d`` in ``--cases`` (default ``2000000:100`` and ``1000000:1000``)
the script simulates one float32 Zarr store, with this process's
``dist_relu`` (the ``--after`` checkout when run as below)::

    dist_relu.simulate_to_zarr(store, *dist_relu.figure1_truth(d, seed=0), n, chunk_rows=65_536, seed=0)

(65,536-row chunks of all d columns: ``dist-relu simulate``'s default), then
times ``dist_relu.fit_to_zarr(store, out, overwrite=True)`` (default
settings, local threads: dask's default scheduler) in fresh processes, each a
``python -c`` whose ``PYTHONPATH`` is the checkout measured, run from the
work directory (not a checkout, so that ``''`` on ``sys.path`` shadows
nothing); the child prints ``dist_relu.__file__`` and the parent checks it
lies in that checkout. The children have
``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1`` as ``dist-relu``
sets it, and a ``NUMBA_CACHE_DIR`` of their own per checkout, in the work
directory (nothing is written into either checkout). Each child times the fit
with ``steps.run_step`` (after its imports: the fit's wall time, its peak
memory and the fit's own ``seconds`` and ``timings`` attributes).

Per case: one untimed warm-up fit of each checkout (it compiles the numba
kernels into the empty cache and warms the page cache), then ``--repeats``
interleaved pairs ``before, after, before, after, …``. Reported: the median
of each, the ratio of the medians (after / before), the range of the paired
ratios (each after run over the before run just ahead of it), the medians of
each stage, and the median of the new "standard errors" stage; also the fit's CPU seconds
(user + system, both threads, ``os.times`` in the child), less moved than
wall time by other work on a shared machine. Results go to
``benchmarks/results/se_cost.{json,png}``.

    PYTHONPATH=. python benchmarks/se_cost.py                      # before = /work/wt-before, else c3e48c5
    PYTHONPATH=. python benchmarks/se_cost.py --before DIR --after DIR --cases 2000000:100
    python benchmarks/se_cost.py --quick --before DIR              # n = 10⁵, d = 20, 50, one repeat
    python benchmarks/se_cost.py --plot-only benchmarks/results/se_cost.json
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import steps
from fit_vs_read import SINGLE_THREAD_BLAS

BENCHMARKS = Path(__file__).resolve().parent
FIT = "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True)"
# The child: steps.run_step times FIT after its imports and prints its record; the line before it names the
# dist_relu imported, the line after it the process's CPU seconds (user + system, all threads) over the step.
CHILD = """\
import json, os, sys
sys.path.append({benchmarks!r})
import steps
import dask.array, distributed, numpy, zarr  # run_step's imports, here so that the CPU seconds below are the fit's
import dist_relu
print(json.dumps({{"dist_relu_file": dist_relu.__file__}}), flush=True)
cpu = os.times()
steps.run_step({fit!r}, {{"STORE": {store!r}, "OUT": {out!r}}})
print(json.dumps({{"cpu_seconds": sum(os.times()[:2]) - sum(cpu[:2])}}), flush=True)
"""
FINGERPRINT = """\
import sys
sys.path.append({benchmarks!r})
import steps, dist_relu
print(dist_relu.__file__); print(steps.package_fingerprint())
"""
VERSIONS = ("before", "after")
BEFORE, BEFORE_COMMIT = "/work/wt-before", "c3e48c5"  # the last commit before the standard errors
COLOURS = {"before": "#888888", "after": "#1f77b4"}
STAGE_COLOURS = {"pass": "#1f77b4", "inversion": "#2ca02c", "standard errors": "#d62728", "write": "#98df8a"}


def child_environment(checkout, numba_cache):
    """The environment of a child that imports ``dist_relu`` from ``checkout``."""
    return {**os.environ, **SINGLE_THREAD_BLAS, "PYTHONPATH": str(checkout), "NUMBA_CACHE_DIR": str(numba_cache)}


def check_file(path, checkout):
    """Raise unless the module file ``path`` lies in ``checkout``."""
    if not Path(path).resolve().is_relative_to(Path(checkout).resolve()):
        raise RuntimeError(f"the child imported {path}, not dist_relu from {checkout}")


def run_child(code, checkout, numba_cache, workdir, timeout=1800):
    """Run ``python -c code`` with ``dist_relu`` from ``checkout``; return its stdout lines and wall seconds."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir,
                            env=child_environment(checkout, numba_cache), timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"child with PYTHONPATH={checkout} failed:\n{result.stderr}")
    return result.stdout.strip().splitlines(), seconds


def fingerprint(checkout, numba_cache, workdir):
    """The checkout's dist_relu: its file, the SHA-256 prefix of its sources, its git commit and whether edited."""
    lines, _ = run_child(FINGERPRINT.format(benchmarks=str(BENCHMARKS)), checkout, numba_cache, workdir)
    check_file(lines[-2], checkout)
    if (Path(checkout) / "COMMIT").is_file():  # an export
        return {"file": lines[-2], "sources_sha256": lines[-1], "commit": (Path(checkout) / "COMMIT").read_text().strip(),
                "edited": False, "exported": True}
    git = ["git", "-C", str(checkout)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    edited = subprocess.run([*git, "status", "--porcelain", "--", "dist_relu"], capture_output=True, text=True)
    return {"file": lines[-2], "sources_sha256": lines[-1], "commit": commit,
            "edited": bool(edited.stdout.strip())}


def export(commit, repository, directory):
    """Write the package's sources at ``commit`` of ``repository`` into ``directory`` (git archive); return it."""
    directory.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repository), "archive", commit, "dist_relu"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    (directory / "COMMIT").write_text(subprocess.run(["git", "-C", str(repository), "rev-parse", commit],
                                                     capture_output=True, text=True, check=True).stdout)
    return directory


def fit_once(checkout, numba_cache, workdir, store, out):
    """Time one fit in a fresh process; return ``steps.run_step``'s record, the file and the process's seconds."""
    code = CHILD.format(benchmarks=str(BENCHMARKS), fit=FIT, store=store, out=out)
    load = os.getloadavg()
    lines, process_seconds = run_child(code, checkout, numba_cache, workdir)
    record = json.loads(lines[-2])
    record["dist_relu_file"] = next(json.loads(line)["dist_relu_file"] for line in lines if "dist_relu_file" in line)
    record["cpu_seconds"] = json.loads(lines[-1])["cpu_seconds"]
    check_file(record["dist_relu_file"], checkout)
    record.update(process_seconds=process_seconds, load_average_before=load)
    return record


def parse_case(text):
    n, d = text.split(":")
    return int(float(n)), int(d)


def summarise(runs, timed):
    """Medians, ratios of the medians and of the pairs, stage medians (``timed``: the runs after the warm-up)."""
    medians = {v: statistics.median(r["seconds"] for r in runs[v][timed]) for v in VERSIONS}
    cpu = {v: statistics.median(r["cpu_seconds"] for r in runs[v][timed]) for v in VERSIONS}
    paired = [a["seconds"] / b["seconds"] for b, a in zip(runs["before"][timed], runs["after"][timed])]
    stages = {}
    for v in VERSIONS:
        names = list(runs[v][timed.start or 0]["timings"])
        stages[v] = {s: statistics.median(r["timings"].get(s, 0.0) for r in runs[v][timed]) for s in names}
    fit_seconds = {v: statistics.median(r["fit_seconds"] for r in runs[v][timed]) for v in VERSIONS}
    peak = {v: max(r["peak_mb"] - r["baseline_mb"] for r in runs[v][timed]) for v in VERSIONS}
    return {"median_seconds": medians, "ratio_of_medians": medians["after"] / medians["before"],
            "paired_ratios": paired, "paired_ratio_range": [min(paired), max(paired)],
            "median_cpu_seconds": cpu, "cpu_ratio_of_medians": cpu["after"] / cpu["before"],
            "median_stage_seconds": stages, "median_fit_seconds_attribute": fit_seconds,
            "median_standard_errors_seconds": stages["after"].get("standard errors"),
            "peak_above_baseline_mb": peak}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="the checkout before the standard errors (default "
                        f"{BEFORE}; where it does not exist, commit {BEFORE_COMMIT} exported with git archive)")
    parser.add_argument("--after", default=str(BENCHMARKS.parent), help="the checkout with them (default: this one)")
    parser.add_argument("--cases", type=parse_case, nargs="+", default=[(2_000_000, 100), (1_000_000, 1000)],
                        metavar="N:D")
    parser.add_argument("--chunk-rows", type=int, default=65_536, help="rows per chunk (dist-relu simulate's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default=None)
    steps.add_result_options(parser, "n = 10⁵ at d = 20 and 50, 16,384-row chunks, 1 repeat")
    args = parser.parse_args()
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.cases, args.chunk_rows, args.repeats = [(100_000, 20), (100_000, 50)], 16_384, 1

    import dask
    import numpy as np
    import zarr

    import dist_relu

    load_before = os.getloadavg()
    started = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-se-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkouts = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    if args.before == BEFORE and not checkouts["before"].is_dir():
        checkouts["before"] = export(BEFORE_COMMIT, args.after, workdir / f"export-{BEFORE_COMMIT}")
    caches = {v: workdir / f"numba-cache-{v}" for v in VERSIONS}
    prints_before = {v: fingerprint(checkouts[v], caches[v], workdir) for v in VERSIONS}
    for v in VERSIONS:
        print(f"{v}: {prints_before[v]['file']}, commit {prints_before[v]['commit'][:7]}"
              f"{' (edited)' if prints_before[v]['edited'] else ''}", flush=True)
    cases = []
    try:
        for n, d in args.cases:
            store = str(workdir / f"samples-n{n}-d{d}.zarr")
            outs = {v: str(workdir / f"fit-{v}-n{n}-d{d}.zarr") for v in VERSIONS}
            start = time.perf_counter()
            dist_relu.simulate_to_zarr(store, *dist_relu.figure1_truth(d, seed=0), n, chunk_rows=args.chunk_rows,
                                       seed=0, overwrite=True)
            simulate_seconds = time.perf_counter() - start
            stored = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
            print(f"n = {n:,}, d = {d}: simulated in {simulate_seconds:.1f} s, {-(-n // args.chunk_rows)} chunks of "
                  f"{args.chunk_rows:,} rows, {stored / 2**20:.0f} MB on disk", flush=True)
            runs = {v: [] for v in VERSIONS}
            for repeat in range(args.repeats + 1):  # repeat 0: the warm-up, untimed
                for v in VERSIONS:
                    runs[v].append(fit_once(checkouts[v], caches[v], workdir, store, outs[v]))
                    r = runs[v][-1]
                    print(f"  {'warm-up' if repeat == 0 else f'run {repeat}'} {v:>6}: fit {r['seconds']:.2f} s "
                          f"(CPU {r['cpu_seconds']:.2f} s, process {r['process_seconds']:.1f} s, "
                          f"load {r['load_average_before'][0]:.2f}); "
                          + ", ".join(f"{k} {s:.2f}" for k, s in r["timings"].items()), flush=True)
            summary = summarise(runs, slice(1, None))
            cases.append({"n": n, "d": d, "chunk_rows": args.chunk_rows, "n_chunks": -(-n // args.chunk_rows),
                          "chunk_mb": args.chunk_rows * d * 4 / 2**20, "stored_mb": stored / 2**20,
                          "raw_mb": n * d * 4 / 2**20, "simulate_seconds": simulate_seconds,
                          "warm_up": {v: runs[v][0] for v in VERSIONS},
                          "runs": {v: runs[v][1:] for v in VERSIONS}, "summary": summary})
            shutil.rmtree(store, ignore_errors=True)
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
        prints_after = {v: fingerprint(checkouts[v], caches[v], workdir) for v in VERSIONS}
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {
        "benchmark": "se_cost",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "dtype": "float32", "compressor": "zstd (zarr default)",
        "chunking": f"{args.chunk_rows:,}-row chunks, all columns in one chunk",
        "scheduler": "local threads (dask's default)", "repeats": args.repeats,
        "order": "one untimed warm-up of each (before, after), then before, after, before, after, ...",
        "fit": FIT, "child_environment": {**SINGLE_THREAD_BLAS, "PYTHONPATH": "the checkout",
                                          "NUMBA_CACHE_DIR": "per checkout, empty at the start"},
        "checkouts": {v: str(checkouts[v]) for v in VERSIONS},
        "machine": steps.machine(load_before, cpu=steps.cpu_model()),
        "package_sources_sha256": {"before": prints_before, "after": prints_after},
        "versions": {"numpy": np.__version__, "dask": dask.__version__, "zarr": zarr.__version__},
        "cases": cases,
    }
    steps.write_results(record, args.out, "se_cost_quick" if args.quick else "se_cost", print_table, plot)


def print_table(record):
    print(f"\nfloat32 zstd Zarr, {record['chunking']}, {record['scheduler']} ({record['machine']['cores']} cores), "
          f"median of {record['repeats']} interleaved runs, each a fresh process")
    print(f"{'n':>11}{'d':>6}{'before s':>10}{'after s':>9}{'after/before':>14}{'paired range':>15}"
          f"{'SE stage s':>12}{'CPU after/before':>18}   before runs; after runs (s)")
    for case in record["cases"]:
        s = case["summary"]
        low, high = s["paired_ratio_range"]
        se = s["median_standard_errors_seconds"]
        print(f"{case['n']:>11,}{case['d']:>6}{s['median_seconds']['before']:>10.2f}{s['median_seconds']['after']:>9.2f}"
              f"{s['ratio_of_medians']:>14.3f}{f'{low:.3f}–{high:.3f}':>15}{se if se is None else f'{se:.3f}':>12}"
              f"{s['cpu_ratio_of_medians']:>18.3f}   "
              + ", ".join(f"{r['seconds']:.2f}" for r in case["runs"]["before"]) + "; "
              + ", ".join(f"{r['seconds']:.2f}" for r in case["runs"]["after"]))
    for case in record["cases"]:
        for v in VERSIONS:
            stages = ", ".join(f"{k} {x:.3f}" for k, x in case["summary"]["median_stage_seconds"][v].items())
            print(f"  n = {case['n']:,}, d = {case['d']}, {v}: CPU {case['summary']['median_cpu_seconds'][v]:.2f} s; "
                  f"stages (median s) {stages}; peak "
                  f"{case['summary']['peak_above_baseline_mb'][v]:.0f} MB above the post-import baseline")
    m = record["machine"]
    print(f"load average before {m['load_average_before'][0]:.2f}, after {m['load_average_after'][0]:.2f}")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = record["cases"]
    fig, axes = plt.subplots(1, len(cases), figsize=(5.5 * len(cases), 5), squeeze=False)
    for ax, case in zip(axes[0], cases):
        s = case["summary"]
        for k, v in enumerate(VERSIONS):
            bottom = 0.0
            for stage, seconds in s["median_stage_seconds"][v].items():
                ax.bar(k, seconds, 0.6, bottom=bottom, color=STAGE_COLOURS.get(stage),
                       label=stage if k == 1 or stage not in s["median_stage_seconds"]["after"] else None)
                bottom += seconds
            ax.bar(k, max(s["median_seconds"][v] - bottom, 0), 0.6, bottom=bottom, color="#dddddd",
                   label="outside the stages" if k == 1 else None)
            times = [r["seconds"] for r in case["runs"][v]]
            ax.plot([k + 0.38] * len(times), times, "o", color=COLOURS[v], ms=4,
                    label="each run" if k == 1 else None)
            ax.annotate(f"{s['median_seconds'][v]:.2f} s", (k, s["median_seconds"][v]), ha="center", va="bottom",
                        fontsize=8)
        low, high = s["paired_ratio_range"]
        ax.set_title(f"n = {case['n']:,}, d = {case['d']}: after / before {s['ratio_of_medians']:.3f}\n"
                     f"(pairs {low:.3f}–{high:.3f}; standard errors "
                     f"{s['median_standard_errors_seconds'] or 0:.2f} s)", fontsize=9)
        ax.set_xticks(range(len(VERSIONS)), [f"{v}\n{record['package_sources_sha256']['before'][v]['commit'][:7]}"
                                             for v in VERSIONS])
        ax.set_ylabel("fit_to_zarr wall seconds (median; stages stacked)")
        ax.set_ylim(0, 1.3 * max(max(r["seconds"] for r in case["runs"][v]) for v in VERSIONS))
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"the fit before and after the standard errors: float32 zstd Zarr, {record['chunking']}, "
                 f"{record['scheduler']}, {record['machine']['cores']} cores, median of {record['repeats']}, "
                 f"{record['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
