"""The same fit on local threads, a 2-worker LocalCluster and a command-line scheduler with 2 workers.

Simulates ``n × d`` float32 samples (zstd Zarr, ``--chunk-rows`` rows per
chunk), then runs ``dist-relu fit`` on it three ways, each as a fresh command:

- ``threads``: the local threaded scheduler (2 threads on this machine);
- ``local-cluster``: ``--workers 2``, a LocalCluster of 2 single-threaded
  worker processes that the command starts and stops;
- ``cli-cluster``: ``--scheduler tcp://127.0.0.1:PORT``, a ``dask scheduler``
  and 2 ``dask worker --nthreads 1`` processes started once from the command
  line, before the timed runs (as on a real cluster).

Each run records the command's wall time, and the fit's own seconds and stage
timings (from its output attributes); on the command-line cluster also the
bytes its workers sent each other during the fit (the sum over workers of
distributed's ``Worker.transfer_outgoing_bytes_total`` after the run less
before it). The overhead of a scheduler is its
median against the threads' median, for the whole command and for the fit.
Results go to ``benchmarks/results/cluster_overhead.{json,png}``.

    python benchmarks/cluster_overhead.py            # n = 2·10⁶, d = 100
    python benchmarks/cluster_overhead.py --quick    # n = 2·10⁵, d = 20, one repeat
    python benchmarks/cluster_overhead.py --n 200000 --d 4096 --chunk-rows 8192
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import steps  # benchmarks/steps.py, beside this script

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def command_line_cluster(directory, n_workers=2):
    """Start `dask scheduler` and single-threaded `dask worker` processes on loopback; yield the address."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    log = open(directory / "cluster.log", "w")
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--port", str(port), *loopback],
                                  stdout=log, stderr=subprocess.STDOUT)]
    processes += [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                    "--local-directory", str(directory / f"worker-{k}"), *loopback],
                                   stdout=log, stderr=subprocess.STDOUT) for k in range(n_workers)]
    try:
        with Client(address, timeout=30) as client:
            client.wait_for_workers(n_workers, timeout=60)
        yield address
    finally:
        for process in processes[::-1]:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def bytes_sent_between_workers(address):
    """The bytes the workers of the scheduler at ``address`` have sent each other so far, summed."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def run_fit(store, out, options):
    """Run `dist-relu fit` once; return its wall seconds, the fit's seconds and its stage timings."""
    start = time.perf_counter()
    result = subprocess.run([str(BIN / "dist-relu"), "fit", str(store), "--out", str(out), "--overwrite",
                             "--json", "--no-progress", *options], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"dist-relu fit {' '.join(options)} failed: {result.stderr}")
    summary = json.loads(result.stdout)
    return {"wall_seconds": wall, "fit_seconds": summary["seconds"], "timings": summary["timings"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    steps.add_result_options(parser, "n = 2·10⁵, d = 20, one repeat")
    args = parser.parse_args()
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.n, args.d, args.repeats = 200_000, 20, 1

    import dist_relu

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store, out = workdir / "samples.zarr", workdir / "fit.zarr"
    try:
        if not store.exists():
            weights, bias = dist_relu.figure1_truth(args.d, seed=0)
            dist_relu.simulate_to_zarr(store, weights, bias, args.n, chunk_rows=args.chunk_rows, seed=0)
        runs = {"threads": [], "local-cluster": [], "cli-cluster": []}
        with command_line_cluster(workdir) as address:
            options = {"threads": [], "local-cluster": ["--workers", "2"], "cli-cluster": ["--scheduler", address]}
            run_fit(store, out, [])  # warm the page cache and imports
            # Interleaved, so that the machine's drift spreads over all three.
            for repeat in range(args.repeats):
                for name in runs:
                    sent_before = bytes_sent_between_workers(address) if name == "cli-cluster" else None
                    runs[name].append(run_fit(store, out, options[name]))
                    if sent_before is not None:
                        runs[name][-1]["bytes_between_workers"] = bytes_sent_between_workers(address) - sent_before
                    print(f"{name:>14} run {repeat + 1}: command {runs[name][-1]['wall_seconds']:.2f} s, "
                          f"fit {runs[name][-1]['fit_seconds']:.2f} s {runs[name][-1]['timings']}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = {}
    for name, records in runs.items():
        stages = records[0]["timings"].keys()
        summary[name] = {
            "median_wall_seconds": statistics.median(r["wall_seconds"] for r in records),
            "median_fit_seconds": statistics.median(r["fit_seconds"] for r in records),
            "median_stage_seconds": {s: statistics.median(r["timings"][s] for r in records) for s in stages},
        }
        if "bytes_between_workers" in records[0]:
            summary[name]["median_bytes_between_workers"] = statistics.median(r["bytes_between_workers"]
                                                                             for r in records)
    base = summary["threads"]
    for name, entry in summary.items():
        entry["wall_ratio_to_threads"] = entry["median_wall_seconds"] / base["median_wall_seconds"]
        entry["fit_ratio_to_threads"] = entry["median_fit_seconds"] / base["median_fit_seconds"]
        entry["wall_overhead_seconds"] = entry["median_wall_seconds"] - base["median_wall_seconds"]

    record = {
        "benchmark": "cluster_overhead",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "n": args.n, "d": args.d, "chunk_rows": args.chunk_rows, "dtype": "float32", "compressor": "zstd (zarr default)",
        "repeats": args.repeats,
        "schedulers": {"threads": "local threads (dask default, one per core)",
                       "local-cluster": "--workers 2: LocalCluster, 2 processes × 1 thread, started by the command",
                       "cli-cluster": "--scheduler: dask scheduler + 2 dask worker --nthreads 1, started beforehand"},
        "runs": runs,
        "summary": summary,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "cluster_overhead_quick" if args.quick else "cluster_overhead"
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
    print(f"\nn = {args.n:,}, d = {args.d}, float32 zstd Zarr, {args.chunk_rows:,}-row chunks, "
          f"median of {args.repeats}")
    for name, entry in summary.items():
        print(f"{name:>14}: command {entry['median_wall_seconds']:.2f} s ({entry['wall_ratio_to_threads']:.2f}× "
              f"threads), fit {entry['median_fit_seconds']:.2f} s ({entry['fit_ratio_to_threads']:.2f}×)"
              + (f", {entry['median_bytes_between_workers'] / 2**20:,.0f} MiB between workers"
                 if "median_bytes_between_workers" in entry else ""))
    plot(record, out_dir / f"{stem}.png")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(record["summary"])
    fig, ax = plt.subplots(figsize=(7.5, 4))
    bottoms = [0.0] * len(names)
    stages = list(record["summary"]["threads"]["median_stage_seconds"])
    for stage in stages:
        heights = [record["summary"][name]["median_stage_seconds"][stage] for name in names]
        ax.bar(names, heights, bottom=bottoms, label=stage)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    rest = [record["summary"][name]["median_wall_seconds"] - b for name, b in zip(names, bottoms)]
    ax.bar(names, rest, bottom=bottoms, label="start-up, cluster, exit", color="lightgrey")
    for k, name in enumerate(names):
        total = record["summary"][name]["median_wall_seconds"]
        ax.text(k, total, f"{total:.1f} s\n{record['summary'][name]['wall_ratio_to_threads']:.2f}×",
                ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds (median)")
    ax.set_ylim(0, max(r["median_wall_seconds"] for r in record["summary"].values()) * 1.45)
    ax.set_title(f"dist-relu fit, n = {record['n']:,}, d = {record['d']}, {record['chunk_rows']:,}-row chunks, "
                 f"{record['machine']['cpus']} cores", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
