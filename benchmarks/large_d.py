"""A fit at large d on one machine: d = 4096, n = 2·10⁵, with its peak memory and the time of each stage.

Simulates ``n × d`` float32 samples (zstd Zarr, ``--chunk-rows`` rows per
chunk; kept in ``--workdir`` for reruns), then runs ``dist_relu.fit_to_zarr``
with the default settings (``column_block="auto"``, sized from this machine's
memory) in a fresh Python process on local threads. Peak memory is VmHWM after
the imports (reset through /proc/self/clear_refs), above the resident memory
then. A thread of that process samples its resident memory every 0.2 s, and
each stage of the fit (``pipeline.Stages``) is timed in wall and CPU seconds,
so each stage's own peak is known. The fit is compared with the truth (the
paper's err_Σ and err_b), reading ``Σ̂`` by row blocks, never whole. Results go
to ``benchmarks/results/large_d.{json,png}``, or to ``--out FILE.json``.

Above d = 8192 the truth's orthogonal ``U`` is the Q factor of a QR
decomposition (signs fixed by R's diagonal) of the Gaussian matrix
``figure1_truth`` draws, made in place: its full SVD would need about 9 d² × 8
bytes (18 GB at d = 16,384). Both ``U`` are Haar-distributed; ``b`` is
``figure1_truth``'s.

    python benchmarks/large_d.py                 # d = 4096, n = 2·10⁵
    python benchmarks/large_d.py --d 16384 --n 50000 --chunk-rows 2048 --workdir DIR \
        --out benchmarks/results/large_d_16384.json
    python benchmarks/large_d.py --quick         # d = 300, n = 2·10⁴
"""

import argparse
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import steps
from steps import status_kb

# Above this d the truth's U comes from a QR decomposition in place, not figure1_truth's full SVD.
LARGEST_SVD = 8192
# The d×d outputs of a fit, whose layout and size on disk are recorded.
SQUARE_OUTPUTS = ("counts", "covariance", "correlation_se", "covariance_se")


def cpu_seconds():
    times = os.times()
    return times.user + times.system


class MemorySampler(threading.Thread):
    """Samples this process's resident memory (MB) every ``interval`` seconds, from ``start``."""

    def __init__(self, start, interval=0.2):
        super().__init__(daemon=True)
        self.origin, self.interval, self.samples = start, interval, []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.samples.append((round(time.perf_counter() - self.origin, 2), round(status_kb("VmRSS") / 1024, 1)))
            self.stopped.wait(self.interval)

    def stop(self):
        self.stopped.set()
        self.join()


def child(store, out):
    """Fit in this process; print JSON: the fit's attributes, its peak memory above the baseline, and each stage's."""
    import dist_relu
    from dist_relu import pipeline

    spans = []
    timed_stage = pipeline.Stages.__call__

    @contextlib.contextmanager
    def recorded_stage(self, name):
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            with timed_stage(self, name):
                yield
        finally:
            spans.append({"stage": name, "start": round(start - origin, 2),
                          "end": round(time.perf_counter() - origin, 2),
                          "cpu_seconds": round(cpu_seconds() - cpu, 2), "load_average": os.getloadavg()})

    pipeline.Stages.__call__ = recorded_stage  # records when each stage ran; the fit is unchanged
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    baseline = status_kb("VmRSS")
    origin = time.perf_counter()
    sampler = MemorySampler(origin)
    sampler.start()
    cpu = cpu_seconds()
    attributes = dist_relu.fit_to_zarr(store, out, overwrite=True)
    seconds, cpu = time.perf_counter() - origin, cpu_seconds() - cpu
    sampler.stop()
    peak = status_kb("VmHWM")
    for span in spans:
        inside = [mb for t, mb in sampler.samples if span["start"] <= t <= span["end"]]
        span["peak_above_baseline_mb"] = max(inside) - baseline / 1024 if inside else None
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak / 1024, "baseline_mb": baseline / 1024,
                      "attributes": attributes, "stages": spans, "rss_mb": sampler.samples}))


def truth(d, seed=0):
    """Return ``(W, b)``: ``figure1_truth(d, seed=seed)`` up to ``LARGEST_SVD``, beyond it U by a QR in place."""
    import numpy as np
    from scipy.linalg import lapack

    import dist_relu

    if d <= LARGEST_SVD:
        return dist_relu.figure1_truth(d, seed=seed)
    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal((d, d)).T  # Fortran order, as LAPACK works in place; a Gaussian matrix too
    qr, tau, _, info = lapack.dgeqrf(gaussian, lwork=64 * d, overwrite_a=True)
    signs = np.sign(np.diag(qr))  # Q·diag(sign(R_kk)) is Haar-distributed
    weights, _, info_q = lapack.dorgqr(qr, tau, lwork=64 * d, overwrite_a=True)
    if info or info_q:
        raise RuntimeError(f"LAPACK dgeqrf/dorgqr failed (info {info}, {info_q})")
    weights *= signs
    return weights, np.maximum(0.0, rng.standard_normal(d))


@contextlib.contextmanager
def numpy_blas_threads(count):
    """Run the block with numpy's OpenBLAS at ``count`` threads, restored after (as it was, if not found).

    ``simulate_to_zarr`` makes the truth's covariance as ``W @ W.T``; numpy
    hands a matrix times its own transpose to OpenBLAS's dsyrk, and with
    OpenBLAS's threads that died here of SIGSEGV from d ≈ 15,000 (15,500 and
    16,384 crashed, 14,000 did not: a crash inside OpenBLAS). On one thread
    it did not, nor did GEMM (``W @ W.T.copy()``, or by row blocks) on two.
    """
    import ctypes

    import numpy  # noqa: F401  (loads its OpenBLAS)

    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "numpy.libs" in line and "openblas" in line}
    if len(paths) != 1:
        yield
        return
    library = ctypes.CDLL(paths.pop())
    set_threads, get_threads = library.scipy_openblas_set_num_threads64_, library.scipy_openblas_get_num_threads64_
    set_threads.argtypes = [ctypes.c_int]
    before = get_threads()
    set_threads(count)
    try:
        yield
    finally:
        set_threads(before)


def simulate(store, n, d, chunk_rows):
    """Write the samples and the truth at ``store``; return the seconds it took."""
    import dist_relu

    start = time.perf_counter()
    weights, bias = truth(d)
    # One BLAS thread per dask thread draws the samples as fast on 2 cores; the truth's W Wᵀ then does not crash.
    with numpy_blas_threads(1) if d > LARGEST_SVD else contextlib.nullcontext():
        dist_relu.simulate_to_zarr(store, weights, bias, n, chunk_rows=chunk_rows, seed=0)
    return time.perf_counter() - start


def streamed_errors(out, store, rows=2048):
    """Return err_Σ and err_b of the fit at ``out`` against the truth at ``store``, reading ``rows`` rows of ``Σ̂`` at once."""
    import numpy as np
    import zarr

    from dist_relu.simulate import open_truth

    truth_covariance, truth_bias = open_truth(store)
    fit = zarr.open_group(str(out), mode="r")
    estimate = fit["covariance"]
    squares = 0.0
    for first in range(0, estimate.shape[0], rows):
        block = estimate[first:first + rows]
        squares += float(np.sum((block - truth_covariance[first:first + rows]) ** 2))
    trace = float(np.trace(truth_covariance))
    return {"err_sigma": float(np.sqrt(squares) / trace),
            "err_b": float(np.linalg.norm(fit["bias"][:] - truth_bias) / np.sqrt(trace))}


def square_outputs(out):
    """Return the shape, chunks, shards and bytes on disk of the fit's d×d arrays."""
    import zarr

    fit = zarr.open_group(str(out), mode="r")
    layout = {}
    for name in SQUARE_OUTPUTS:
        array = fit[name]
        files = [f for f in (Path(out) / name).rglob("*") if f.is_file()]
        layout[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks),
                        "shards": list(array.shards) if array.shards else None, "files": len(files),
                        "mb_on_disk": sum(f.stat().st_size for f in files) / 2**20,
                        "mb_raw": array.nbytes / 2**20}
    return layout


def peak_text(mb):
    return "(no sample)" if mb is None else f"{mb:.0f} MB"


def directory_mb(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


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

    import dist_relu
    from dist_relu.simulate import open_truth

    load_before = os.getloadavg()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-large-d-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store, out = workdir / f"samples-n{args.n}-d{args.d}.zarr", workdir / "fit.zarr"
    try:
        simulate_seconds = None
        if not store.exists():
            simulate_seconds = simulate(store, args.n, args.d, args.chunk_rows)
            print(f"simulated {args.n:,} × {args.d} in {simulate_seconds:.0f} s", flush=True)
        load_fit = os.getloadavg()
        result = subprocess.run([sys.executable, __file__, "--child", str(store), str(out)],
                                capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"the fit failed (exit {result.returncode}):\n{result.stderr}")
        load_after_fit = os.getloadavg()
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        errors = streamed_errors(out, store)
        if args.d <= 4096:  # the TV bound takes d×d Cholesky factors in memory: only where that is small
            model, _ = dist_relu.open_fit(out)
            whole = model.errors(*open_truth(store))
            errors["tv_bound"] = whole["tv_bound"]
            errors["streamed_matches_whole"] = all(
                abs(errors[k] - whole[k]) <= 1e-12 * abs(whole[k]) for k in ("err_sigma", "err_b"))
        outputs = square_outputs(out)
        disk_mb, fit_mb = directory_mb(store / "samples"), directory_mb(out)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    attributes = measured["attributes"]
    pairs = args.d * (args.d + 1) // 2
    stages = {span["stage"]: span for span in measured["stages"]}
    memory = attributes["memory"]
    record = {
        "benchmark": "large_d",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": steps.machine(load_before, cpu=steps.cpu_model(), load_average_before_fit=load_fit,
                                 load_average_after_fit=load_after_fit),
        "n": args.n, "d": args.d, "chunk_rows": args.chunk_rows, "dtype": "float32",
        "chunk_mb": args.chunk_rows * args.d * 4 / 2**20, "store_mb_on_disk": disk_mb,
        "raw_mb": args.n * args.d * 4 / 2**20, "scheduler": "local threads",
        "truth": "figure1_truth" if args.d <= LARGEST_SVD else "figure1_truth's Gaussian matrix, U by QR in place",
        "simulate_seconds": simulate_seconds,
        "fit_seconds": measured["seconds"],
        "fit_cpu_seconds": measured["cpu_seconds"],
        "timings": attributes["timings"],
        "stages": measured["stages"],
        "column_block": attributes["column_block"],
        "count_kernel": attributes["count_kernel"],
        "memory_model": memory,
        "predicted_tasks_mb": memory["task_bytes"] * memory["threads"] / 2**20,
        # With the pass's waiting results (budget.waiting_bytes; recorded by fits from its introduction on).
        "predicted_pass_mb": ((memory["task_bytes"] * memory["threads"] + memory["waiting_bytes"]) / 2**20
                              if "waiting_bytes" in memory else None),
        "covariance_shards": outputs["covariance"]["shards"],
        "square_outputs": outputs,
        "fit_mb_on_disk": fit_mb,
        "peak_above_baseline_mb": measured["peak_mb"] - measured["baseline_mb"],
        "baseline_mb": measured["baseline_mb"],
        "pairs": pairs,
        # A stage's CPU seconds (all threads) per pair of the upper triangle; and its wall seconds × threads.
        "cpu_microseconds_per_pair": {name: stages[name]["cpu_seconds"] / pairs * 1e6
                                      for name in ("inversion", "standard errors") if name in stages},
        "thread_microseconds_per_pair": {name: attributes["timings"][name] * memory["threads"] / pairs * 1e6
                                         for name in ("inversion", "standard errors") if name in attributes["timings"]},
        "pair_samples": args.n * pairs,
        "errors": errors,
        "covariance_mb": args.d * args.d * 8 / 2**20,
        "rss_mb": measured["rss_mb"],
    }
    path = Path(args.out)
    if path.suffix != ".json":
        path = path / ("large_d_quick.json" if args.quick else "large_d.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    print(f"n = {args.n:,}, d = {args.d}, float32 zstd Zarr, {args.chunk_rows:,}-row chunks "
          f"({record['chunk_mb']:.0f} MB), local threads, {os.cpu_count()} cores")
    print(f"fit {measured['seconds']:.1f} s ({measured['cpu_seconds']:.0f} CPU-s): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in attributes["timings"].items()))
    for span in measured["stages"]:
        print(f"  {span['stage']}: {span['end'] - span['start']:.1f} s, {span['cpu_seconds']:.0f} CPU-s, "
              f"peak {peak_text(span['peak_above_baseline_mb'])} above baseline, load {span['load_average'][0]:.2f}")
    print(f"column blocks of {attributes['column_block']}, {attributes['count_kernel']} counts; "
          f"budget: {memory['task_bytes'] / 2**20:.0f} MiB per task × {memory['threads']} threads = "
          f"{record['predicted_tasks_mb']:.0f} MiB (share {memory['share_per_thread'] / 2**20:.0f} MiB per thread)"
          + (f"; with the pass's waiting results {record['predicted_pass_mb']:.0f} MiB"
             if record["predicted_pass_mb"] is not None else ""))
    for name, layout in outputs.items():
        print(f"  {name}: shards {layout['shards']}, chunks {layout['chunks']}, {layout['mb_on_disk']:.0f} MB on disk "
              f"({layout['mb_raw']:.0f} MB raw)")
    print(f"peak memory {record['peak_above_baseline_mb']:.0f} MB above {measured['baseline_mb']:.0f} MB after imports "
          f"(data {record['raw_mb']:.0f} MB raw, Σ̂ {record['covariance_mb']:.0f} MB)")
    print(f"err_sigma {errors['err_sigma']:.4f}, err_b {errors['err_b']:.4f}; wrote {path}")
    plot(record, path.with_suffix(".png"))


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = record.get("rss_mb")
    fig, axes = plt.subplots(1, 2 if timeline else 1, figsize=(12 if timeline else 7, 3.8), squeeze=False)
    ax = axes[0, 0]
    stages = list(record["timings"])
    seconds = [record["timings"][s] for s in stages]
    ax.barh(stages[::-1], seconds[::-1], color="tab:blue")
    for k, value in enumerate(seconds[::-1]):
        ax.text(value, k, f" {value:.1f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(seconds) * 1.3)
    cpus = record["machine"].get("cpus") or record["machine"].get("cores")
    ax.set_title(
        f"fit at d = {record['d']}, n = {record['n']:,} ({record['chunk_rows']:,}-row chunks, local threads, "
        f"{cpus} cores)\npeak {record['peak_above_baseline_mb']:.0f} MB above imports; "
        f"column blocks of {record['column_block']}; err_Σ = {record['errors']['err_sigma']:.4f}",
        fontsize=9)
    if timeline:
        ax = axes[0, 1]
        baseline = record["baseline_mb"]
        ax.plot([t for t, _ in timeline], [(mb - baseline) / 1024 for _, mb in timeline], color="black", lw=0.8)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for k, span in enumerate(record["stages"]):
            ax.axvspan(span["start"], span["end"], color=colours[k % len(colours)], alpha=0.2, label=span["stage"])
        ax.axhline(record["predicted_tasks_mb"] / 1024, color="tab:red", ls="--", lw=0.8,
                   label="budget: task_bytes × threads")
        if record.get("predicted_pass_mb"):
            ax.axhline(record["predicted_pass_mb"] / 1024, color="tab:purple", ls=":", lw=0.8,
                       label="+ the pass's waiting results")
        ax.set_xlabel("seconds from the fit's start")
        ax.set_ylabel("resident memory above imports (GiB)")
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title("memory every 0.2 s, by stage", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
