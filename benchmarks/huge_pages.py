"""A read and a fit with and without glibc's malloc asking for transparent huge pages, side by side.

zarr decompresses each chunk into a buffer from malloc; at d = 4096 a chunk
of 8,192 rows is 128 MiB, and faulting in its 4 KiB pages cost about half a
read's CPU, in the kernel. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc ≥
2.35, read when a process starts) makes malloc madvise its large mappings for
transparent huge pages, which the kernel gives where THP is ``madvise`` (or
``always``); dist_relu sets it for the worker processes of its local cluster.

Simulates one ``n × d`` float32 store (zstd Zarr, ``figure1_truth(d, seed=0)``,
row chunks of ``--chunk-rows`` rows, all columns in one chunk), then runs each
step in a fresh Python process on the local threaded scheduler
(``steps.run_step``: seconds after the imports, and the process's minor page
faults and user and system CPU seconds, all threads, over the step):

- ``read``: ``da.from_zarr(store, component="samples").sum().compute()``
- ``fit``: ``dist_relu.fit_to_zarr(store, out, overwrite=True)`` (default settings)

each in two environments: ``plain`` (no ``GLIBC_TUNABLES`` in the child's
environment) and ``huge pages`` (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``,
replacing any other value of this process's). One untimed fit runs first
(plain): it fills numba's cache and the page cache. Then each repeat runs
read, read, fit, fit, plain first in odd repeats and huge pages first in even
ones, so that the machine's load and drift fall on both alike. Reported: the
median of each step in each environment and the ratios plain / huge pages of
the medians, with THP's mode (/sys/kernel/mm/transparent_hugepage) and glibc's
version. Results go to ``benchmarks/results/huge_pages.{json,png}``.

    python benchmarks/huge_pages.py            # n = 2·10⁵, d = 4096, 8,192-row chunks (128 MiB), 3 repeats
    python benchmarks/huge_pages.py --quick    # n = 10⁵, d = 50, one repeat
    python benchmarks/huge_pages.py --plot-only benchmarks/results/huge_pages.json
"""

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import steps
from steps import package_fingerprint

STEPS = {
    "read": "import dask.array as da; da.from_zarr(STORE, component='samples').sum().compute()",
    "fit": "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True)",
}
HUGE_PAGES = "glibc.malloc.hugetlb=1"
ENVIRONMENTS = {"plain": None, "huge pages": HUGE_PAGES}  # the child's GLIBC_TUNABLES (None: removed)
MEASURES = {"seconds": "seconds", "minor_faults": "minor faults", "user_seconds": "user CPU s",
            "system_seconds": "system CPU s"}
COLOURS = {"plain": "#888888", "huge pages": "#1f77b4"}


def child(step, store, out):
    """Run one step here; print ``steps.run_step``'s record with the ``GLIBC_TUNABLES`` this process saw."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        steps.run_step(STEPS[step], {"STORE": store, "OUT": out})
    record = json.loads(printed.getvalue().strip().splitlines()[-1])
    record["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES")
    print(json.dumps(record))


def environment(name):
    """This process's environment with ``GLIBC_TUNABLES`` as environment ``name`` has it."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if ENVIRONMENTS[name] is not None:
        env["GLIBC_TUNABLES"] = ENVIRONMENTS[name]
    return env


def measure(step, name, store, out):
    """Run ``step`` in a fresh process in environment ``name``; return its record with the load before it."""
    load = os.getloadavg()
    record = steps.measure(__file__, step, [store, out], env=environment(name))
    record["load_average_before"] = load
    return record


def thp_mode(setting):
    """The bracketed word of /sys/kernel/mm/transparent_hugepage/``setting`` (None where there is none)."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage", setting).read_text()
    except OSError:
        return None
    return next((word[1:-1] for word in text.split() if word.startswith("[")), None)


def summarise(runs):
    """Medians of each measure for each step and environment, and the ratios plain / huge pages of the medians."""
    summary = {}
    for step, by_environment in runs.items():
        summary[step] = {name: {f"median_{m}": statistics.median(r[m] for r in records) for m in MEASURES}
                         for name, records in by_environment.items()}
        plain, huge = summary[step]["plain"], summary[step]["huge pages"]
        summary[step]["plain_over_huge_pages"] = {
            m: plain[f"median_{m}"] / huge[f"median_{m}"] if huge[f"median_{m}"] else None for m in MEASURES}
        for name, records in by_environment.items():
            if records[0].get("timings"):  # the fit's stages
                summary[step][name]["median_stage_seconds"] = {
                    stage: statistics.median(r["timings"][stage] for r in records) for stage in records[0]["timings"]}
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None,
                        help="where the store goes (default: a temporary folder, removed at the end; "
                             "a given one is kept, the store and fit in it are removed)")
    steps.add_result_options(parser, "n = 10⁵, d = 50, 8,192-row chunks, one repeat")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.n, args.d, args.chunk_rows, args.repeats = 100_000, 50, 8192, 1

    import dask
    import numpy as np
    import zarr

    import dist_relu

    glibc = platform.libc_ver()
    thp = {"enabled": thp_mode("enabled"), "defrag": thp_mode("defrag")}
    if thp["enabled"] not in ("madvise", "always"):
        print(f"WARNING: transparent huge pages are {thp['enabled']!r} here: malloc's madvise cannot get any")
    if glibc[0] != "glibc" or tuple(int(p) for p in glibc[1].split(".")[:2]) < (2, 35):
        print(f"WARNING: {glibc}: glibc.malloc.hugetlb needs glibc 2.35 or later (older ones ignore it)")

    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-huge-pages-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store, out = str(workdir / "samples.zarr"), str(workdir / "fit.zarr")
    chunk_rows = min(args.chunk_rows, args.n)
    chunk_mb = chunk_rows * args.d * 4 / 2**20
    try:
        start = time.perf_counter()
        weights, bias = dist_relu.figure1_truth(args.d, seed=0)
        dist_relu.simulate_to_zarr(store, weights, bias, args.n, chunk_rows=chunk_rows, seed=0, overwrite=True)
        simulate_seconds = time.perf_counter() - start
        stored_bytes = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
        print(f"simulated n = {args.n:,}, d = {args.d} in {simulate_seconds:.1f} s, chunks of {chunk_rows:,} rows "
              f"({chunk_mb:.1f} MiB), {stored_bytes / 2**20:.0f} MiB on disk; THP {thp['enabled']} "
              f"(defrag {thp['defrag']}), {glibc[0]} {glibc[1]}", flush=True)
        warm_up = measure("fit", "plain", store, out)  # numba's cache and the page cache, untimed
        print(f"  warm-up fit (plain, untimed): {warm_up['seconds']:.2f} s", flush=True)
        runs = {step: {name: [] for name in ENVIRONMENTS} for step in STEPS}
        for repeat in range(args.repeats):
            order = list(ENVIRONMENTS) if repeat % 2 == 0 else list(ENVIRONMENTS)[::-1]
            for step in STEPS:
                for name in order:
                    r = measure(step, name, store, out)
                    runs[step][name].append(r)
                    print(f"  run {repeat + 1} {step:>4} {name:>10}: {r['seconds']:.2f} s, "
                          f"{r['minor_faults']:,} minor faults, user {r['user_seconds']:.2f} s, "
                          f"system {r['system_seconds']:.2f} s (GLIBC_TUNABLES={r['glibc_tunables']})", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)

    record = {
        "benchmark": "huge_pages",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n": args.n, "d": args.d, "chunk_rows": chunk_rows, "chunk_mb": chunk_mb, "n_chunks": -(-args.n // chunk_rows),
        "raw_mb": args.n * args.d * 4 / 2**20, "stored_mb": stored_bytes / 2**20, "simulate_seconds": simulate_seconds,
        "dtype": "float32", "compressor": "zstd (zarr default)",
        "chunking": f"{chunk_rows:,}-row chunks of all columns ({chunk_mb:.1f} MiB)", "scheduler": "local threads",
        "repeats": args.repeats, "steps": STEPS, "environments": {k: {"GLIBC_TUNABLES": v} for k, v in
                                                                 ENVIRONMENTS.items()},
        "transparent_hugepage": thp, "glibc": list(glibc),
        "machine": steps.machine(load_before, transparent_hugepage=thp, glibc=list(glibc)),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__},
        "warm_up": warm_up, "runs": runs, "summary": summarise(runs),
    }
    steps.write_results(record, args.out, "huge_pages_quick" if args.quick else "huge_pages", print_table, plot)


def print_table(record):
    thp, glibc = record["transparent_hugepage"], record["glibc"]
    print(f"\nn = {record['n']:,}, d = {record['d']}, float32 zstd Zarr, {record['chunking']}, {record['scheduler']} "
          f"({record['machine']['cores']} cores), THP {thp['enabled']} (defrag {thp['defrag']}), "
          f"{glibc[0]} {glibc[1]}; median of {record['repeats']}, each step a fresh process")
    print(f"{'step':>5}{'environment':>13}{'median s':>10}{'minor faults':>14}{'user s':>8}{'system s':>10}   runs (s)")
    for step in record["steps"]:
        for name in ENVIRONMENTS:
            s = record["summary"][step][name]
            print(f"{step:>5}{name:>13}{s['median_seconds']:>10.2f}{s['median_minor_faults']:>14,.0f}"
                  f"{s['median_user_seconds']:>8.2f}{s['median_system_seconds']:>10.2f}   "
                  + ", ".join(f"{r['seconds']:.2f}" for r in record["runs"][step][name]))
    print("\nplain / huge pages, of the medians:\n" + f"{'step':>5}"
          + "".join(f"{label:>14}" for label in MEASURES.values()))
    for step in record["steps"]:
        ratios = record["summary"][step]["plain_over_huge_pages"]
        print(f"{step:>5}" + "".join(f"{'-' if ratios[m] is None else format(ratios[m], '.2f'):>14}" for m in MEASURES))
    for step in record["steps"]:
        for name in ENVIRONMENTS:
            stages = record["summary"][step][name].get("median_stage_seconds")
            if stages:
                print(f"{step} stages, {name} (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    step_names = list(record["steps"])
    summary = record["summary"]
    x = np.arange(len(step_names))
    width = 0.36
    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(11, 4.8))
    for k, name in enumerate(ENVIRONMENTS):
        offset = (k - 0.5) * width
        seconds = [summary[step][name]["median_seconds"] for step in step_names]
        bars = ax_t.bar(x + offset, seconds, width, color=COLOURS[name], label=name)
        for bar, step in zip(bars, step_names):
            ax_t.annotate(f"{bar.get_height():.2f} s\n{summary[step][name]['median_minor_faults']:,.0f}\nfaults",
                          (bar.get_x() + width / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
        user = np.array([summary[step][name]["median_user_seconds"] for step in step_names])
        system = np.array([summary[step][name]["median_system_seconds"] for step in step_names])
        ax_c.bar(x + offset, user, width, color=COLOURS[name], label=f"{name}: user")
        ax_c.bar(x + offset, system, width, bottom=user, color=COLOURS[name], alpha=0.45, hatch="//",
                 edgecolor="white", label=f"{name}: system")
        for k_step, step in enumerate(step_names):
            ax_c.annotate(f"sys {system[k_step]:.2f}", (x[k_step] + offset, user[k_step] + system[k_step]),
                          ha="center", va="bottom", fontsize=7)
    ratios = [summary[step]["plain_over_huge_pages"] for step in step_names]
    top = max(summary[s][name]["median_seconds"] for s in step_names for name in ENVIRONMENTS)
    ax_t.set_ylim(0, top * 1.4)
    ax_t.set_xticks(x, [f"{step}\nplain / huge pages {r['seconds']:.2f}×" for step, r in zip(step_names, ratios)])
    ax_t.set_ylabel("median seconds (after imports)")
    ax_t.set_title("wall time (labels: minor page faults)", fontsize=9)
    ax_t.legend(fontsize=8, loc="upper left")
    cpu_top = max(summary[s][name]["median_user_seconds"] + summary[s][name]["median_system_seconds"]
                  for s in step_names for name in ENVIRONMENTS)
    ax_c.set_ylim(0, cpu_top * 1.3)
    ax_c.set_xticks(x, [f"{step}\nsystem: plain / huge {r['system_seconds']:.2f}×"
                        for step, r in zip(step_names, ratios)])
    ax_c.set_ylabel("median CPU seconds, all threads")
    ax_c.set_title("CPU: user (solid) and system (hatched)", fontsize=9)
    ax_c.legend(fontsize=7, loc="upper left", ncol=2)
    thp, glibc = record["transparent_hugepage"], record["glibc"]
    fig.suptitle(f"GLIBC_TUNABLES={HUGE_PAGES} or not: n = {record['n']:,}, d = {record['d']}, float32 zstd Zarr, "
                 f"{record['chunking']},\n{record['scheduler']}, {record['machine']['cores']} cores, THP "
                 f"{thp['enabled']}, {glibc[0]} {glibc[1]}, median of {record['repeats']}, "
                 f"{record['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
