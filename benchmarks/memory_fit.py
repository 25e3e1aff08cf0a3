"""Peak memory and time of a fit against one plain read of the same Zarr store.

Simulates ``n × d`` float32 samples (zstd, ``--chunk-rows`` rows per chunk),
then runs each step in a fresh Python process on the local threaded
scheduler, so each peak resident memory is that step's own:

- ``read``: ``da.from_zarr(store, component="samples").sum().compute()``
- ``fit``: ``dist_relu.fit_to_zarr(store, out)`` (default settings: one pass)
- ``fit-api``: ``dist_relu.ReLUGaussian().fit(store)``

Peak memory (VmHWM, reset after imports) is reported above the resident memory after imports,
in MB and in chunks. Results go to ``benchmarks/results/memory_fit.{json,png}``.

    python benchmarks/memory_fit.py                 # n = 10⁶, d = 100
    python benchmarks/memory_fit.py --quick         # n = 10⁵, d = 20
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path

import steps
from steps import run_step

STEPS = {
    "read": "import dask.array as da; da.from_zarr(STORE, component='samples').sum().compute()",
    "fit": "import dist_relu; dist_relu.fit_to_zarr(STORE, OUT, overwrite=True)",
    "fit-api": "import dist_relu; dist_relu.ReLUGaussian().fit(STORE)",
}


def child(step, store, out):
    """Run one step in this process and print its record (``steps.run_step``)."""
    run_step(STEPS[step], {"STORE": store, "OUT": out})


def measure(step, store, out):
    """Run ``step`` in a fresh process and return its record."""
    return steps.measure(__file__, step, [store, out], attempts=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--quick", action="store_true", help="n = 10⁵, d = 20, one repeat")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.quick:
        args.n, args.d, args.repeats = 100_000, 20, 1

    import dask
    import numpy as np
    import zarr

    import dist_relu

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-bench-"))
    store, out = str(workdir / "samples.zarr"), str(workdir / "fit.zarr")
    weights, bias = dist_relu.figure1_truth(args.d, seed=0)
    dist_relu.simulate_to_zarr(store, weights, bias, args.n, chunk_rows=args.chunk_rows, seed=0, overwrite=True)
    stored_bytes = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    chunk_mb = args.chunk_rows * args.d * 4 / 2**20

    runs = {step: [measure(step, store, out) for _ in range(args.repeats)] for step in STEPS}
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {}
    for step, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        above = max(r["peak_mb"] - r["baseline_mb"] for r in results)
        summary[step] = {"median_seconds": seconds, "peak_above_baseline_mb": above, "peak_in_chunks": above / chunk_mb}
    summary["fit_over_read"] = summary["fit"]["median_seconds"] / summary["read"]["median_seconds"]

    print(f"n = {args.n:,}, d = {args.d}, float32, chunks of {args.chunk_rows:,} rows × {args.d} "
          f"({chunk_mb:.1f} MB), zstd store {stored_bytes / 2**20:.0f} MB on disk "
          f"({args.n * args.d * 4 / 2**20:.0f} MB raw), local threads ({os.cpu_count()} cores)")
    print(f"{'step':<10}{'median s':>10}{'peak MB':>10}{'chunks':>8}   runs (s)")
    for step in STEPS:
        s = summary[step]
        print(f"{step:<10}{s['median_seconds']:>10.2f}{s['peak_above_baseline_mb']:>10.0f}"
              f"{s['peak_in_chunks']:>8.1f}   " + ", ".join(f"{r['seconds']:.2f}" for r in runs[step]))
    print(f"fit / read = {summary['fit_over_read']:.2f}")

    results_dir = Path(args.out)
    results_dir.mkdir(parents=True, exist_ok=True)
    name = "memory_fit_quick" if args.quick else "memory_fit"
    record = {
        "n": args.n, "d": args.d, "dtype": "float32", "chunk_rows": args.chunk_rows, "chunk_mb": chunk_mb,
        "compressor": "zstd (zarr default)", "stored_mb": stored_bytes / 2**20, "scheduler": "local threads",
        "machine": {"cores": os.cpu_count(), "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                    "python": platform.python_version()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": runs, "summary": summary,
    }
    (results_dir / f"{name}.json").write_text(json.dumps(record, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = list(STEPS)
    bars = ax.bar(labels, [summary[s]["median_seconds"] for s in labels], color=["#888", "#1f77b4", "#2ca02c"])
    for bar, step in zip(bars, labels):
        s = summary[step]
        ax.annotate(f"peak {s['peak_above_baseline_mb']:.0f} MB\n({s['peak_in_chunks']:.1f} chunks)",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("median seconds")
    ax.set_ylim(0, 1.3 * max(b.get_height() for b in bars))
    ax.set_title(f"n = {args.n:,}, d = {args.d}, float32 zstd Zarr, {args.chunk_rows:,}-row chunks,\n"
                 f"local threads, {os.cpu_count()} cores; fit / read = {summary['fit_over_read']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(results_dir / f"{name}.png", dpi=120)
    print(f"wrote {results_dir / name}.json and .png")


if __name__ == "__main__":
    main()
