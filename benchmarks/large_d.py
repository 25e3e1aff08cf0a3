"""A fit at large d on one machine: d = 4096, n = 2·10⁵, with its peak memory and the time of each stage.

Simulates ``n × d`` float32 samples (zstd Zarr, ``--chunk-rows`` rows per
chunk; kept in ``--workdir`` for reruns), then runs ``dist_relu.fit_to_zarr``
with the default settings (``column_block="auto"``, sized from this machine's
memory) in a fresh Python process on local threads. Peak memory is VmHWM after
the imports (reset through /proc/self/clear_refs), above the resident memory
then. The fit is compared with the truth (the paper's err_Σ and err_b).
Results go to ``benchmarks/results/large_d.{json,png}``.

    python benchmarks/large_d.py                 # d = 4096, n = 2·10⁵
    python benchmarks/large_d.py --quick         # d = 300, n = 2·10⁴
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import steps
from steps import status_kb


def child(store, out):
    """Fit in this process; print JSON with the fit's attributes and the peak memory above the baseline."""
    import dist_relu

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    baseline = status_kb("VmRSS")
    start = time.perf_counter()
    attributes = dist_relu.fit_to_zarr(store, out, overwrite=True)
    seconds = time.perf_counter() - start
    peak = status_kb("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "baseline_mb": baseline / 1024,
                      "attributes": attributes}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--workdir", default=None, help="keep the simulated store here (default: temporary)")
    steps.add_result_options(parser, "d = 300, n = 2·10⁴")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.n, args.d, args.chunk_rows = 20_000, 300, 5_000

    import zarr

    import dist_relu

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-large-d-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store, out = workdir / f"samples-n{args.n}-d{args.d}.zarr", workdir / "fit.zarr"
    try:
        simulate_seconds = None
        if not store.exists():
            start = time.perf_counter()
            weights, bias = dist_relu.figure1_truth(args.d, seed=0)
            dist_relu.simulate_to_zarr(store, weights, bias, args.n, chunk_rows=args.chunk_rows, seed=0)
            simulate_seconds = time.perf_counter() - start
            print(f"simulated {args.n:,} × {args.d} in {simulate_seconds:.0f} s", flush=True)
        result = subprocess.run([sys.executable, __file__, "--child", str(store), str(out)],
                                capture_output=True, text=True, check=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        model, _ = dist_relu.open_fit(out)
        errors = model.errors(*dist_relu.simulate.open_truth(store))
        stored = zarr.open_group(str(out))
        shards = stored["covariance"].shards
        disk_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    attributes = measured["attributes"]
    record = {
        "benchmark": "large_d",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30},
        "n": args.n, "d": args.d, "chunk_rows": args.chunk_rows, "dtype": "float32",
        "chunk_mb": args.chunk_rows * args.d * 4 / 2**20, "store_mb_on_disk": disk_mb,
        "raw_mb": args.n * args.d * 4 / 2**20, "scheduler": "local threads",
        "simulate_seconds": simulate_seconds,
        "fit_seconds": measured["seconds"],
        "timings": attributes["timings"],
        "column_block": attributes["column_block"],
        "count_kernel": attributes["count_kernel"],
        "memory_model": attributes["memory"],
        "covariance_shards": shards,
        "peak_above_baseline_mb": measured["peak_mb"] - measured["baseline_mb"],
        "baseline_mb": measured["baseline_mb"],
        "pair_samples": args.n * args.d * (args.d + 1) / 2,
        "errors": errors,
        "covariance_mb": args.d * args.d * 8 / 2**20,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "large_d_quick" if args.quick else "large_d"
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
    print(f"n = {args.n:,}, d = {args.d}, float32 zstd Zarr, {args.chunk_rows:,}-row chunks "
          f"({record['chunk_mb']:.0f} MB), local threads, {os.cpu_count()} cores")
    print(f"fit {measured['seconds']:.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in attributes["timings"].items()))
    print(f"column blocks of {attributes['column_block']}, {attributes['count_kernel']} counts, "
          f"Σ̂ in shards of {shards}")
    print(f"peak memory {record['peak_above_baseline_mb']:.0f} MB above {measured['baseline_mb']:.0f} MB after imports "
          f"(data {record['raw_mb']:.0f} MB raw, Σ̂ {record['covariance_mb']:.0f} MB)")
    print(f"err_sigma {errors['err_sigma']:.4f}, err_b {errors['err_b']:.4f}")
    plot(record, out_dir / f"{stem}.png")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    stages = list(record["timings"])
    seconds = [record["timings"][s] for s in stages]
    ax.barh(stages[::-1], seconds[::-1], color="tab:blue")
    for k, value in enumerate(seconds[::-1]):
        ax.text(value, k, f" {value:.1f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(seconds) * 1.3)
    ax.set_title(
        f"fit at d = {record['d']}, n = {record['n']:,} ({record['chunk_rows']:,}-row chunks, local threads, "
        f"{record['machine']['cpus']} cores)\npeak {record['peak_above_baseline_mb']:.0f} MB above imports; "
        f"column blocks of {record['column_block']}; err_Σ = {record['errors']['err_sigma']:.4f}",
        fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
