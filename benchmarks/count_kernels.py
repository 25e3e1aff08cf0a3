"""Pair-samples per second of the co-exceedance count kernels, against this machine's float32 GEMM rate.

A count block of two column blocks of ``d_i`` and ``d_j`` indicators over
``rows`` rows does ``rows · d_i · d_j`` pair-samples of work, or
``rows · d (d + 1) / 2`` for a diagonal block (one block against itself, where
only one triangle is needed). For ``rows = 65,536`` and ``d_i = d_j = d`` in
``--d`` (default 16 … 1024), diagonal and off-diagonal, this times (best of
``--repeats``, all in this one process, after a warm-up call):

- ``popcount``: ``compiled.popcount_counts`` on bit-packed indicators;
- ``gemm``: ``compiled.gemm_counts`` (unpack to float32, then exact GEMM);
- ``gemm-only``: ``kernels.coexceedance_partial`` on indicators unpacked
  beforehand (the GEMM part of ``gemm`` alone);
- ``unpack``: ``compiled.unpack_indicators`` of both blocks (the rest of ``gemm``);
- the machine's reference rate: ``a.T @ b`` on random float32 ``(rows, d)``
  arrays ``a`` and ``b`` (``flops = 2 · rows · d²``, or ``flops / 2``
  pair-samples), and for the diagonal ``a.T @ a`` as well (numpy may route it
  to SYRK, which does half the flops).

It also records what ``compiled.choose_count_kernel(d, d, rows)`` picks (it
times its own random block) and checks that both kernels give the same counts.
BLAS and OpenMP are limited to one thread (the variables are set before numpy
is imported), like one dask worker thread; the CPU/wall time ratio of the
reference GEMM is recorded to confirm it. Results go to
``benchmarks/results/count_kernels.{json,png}``.

    python benchmarks/count_kernels.py             # rows = 65,536, d = 16 … 1024
    python benchmarks/count_kernels.py --quick     # rows = 8,192, d = 16, 64
    python benchmarks/count_kernels.py --plot-only benchmarks/results/count_kernels.json
"""

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
for _name in THREAD_VARIABLES:  # before numpy (and numba) are imported: single-threaded BLAS, like one dask thread
    os.environ[_name] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import steps  # noqa: E402
from steps import package_fingerprint  # noqa: E402

PATHS = ("popcount", "gemm", "gemm-only")
LABELS = {"popcount": "popcount_counts", "gemm": "gemm_counts (unpack + GEMM)",
          "gemm-only": "GEMM on pre-unpacked indicators", "reference": "machine float32 GEMM a.T @ b (flops / 2)",
          "reference-syrk": "machine a.T @ a (same array; diagonal work)"}


def best_of(function, repeats):
    """Return (best wall seconds, CPU seconds of that call) of ``repeats`` calls, after one warm-up call."""
    function()
    best, best_cpu = float("inf"), None
    for _ in range(repeats):
        cpu, start = time.process_time(), time.perf_counter()
        function()
        seconds = time.perf_counter() - start
        if seconds < best:
            best, best_cpu = seconds, time.process_time() - cpu
    return best, best_cpu


def _cpu_model():
    """The CPU's model name and whether it has AVX2 / AVX-512 VPOPCNTDQ (from /proc/cpuinfo, Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return {"model": model, "avx2": "avx2" in flags, "avx512_vpopcntdq": "avx512_vpopcntdq" in flags}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, nargs="+", default=[16, 64, 128, 256, 512, 1024])
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=5)
    steps.add_result_options(parser, "rows = 8,192, d = 16, 64")
    args = parser.parse_args()
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.d, args.rows = [16, 64], 8_192

    import numba
    import numpy as np

    import dist_relu
    from dist_relu import kernels, compiled

    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    rows = args.rows
    words = -(-rows // 64)
    rng = np.random.default_rng(0)
    results = []
    for d in args.d:
        packed_i = rng.integers(0, 2**63, size=(d, words), dtype=np.uint64)
        packed_other = rng.integers(0, 2**63, size=(d, words), dtype=np.uint64)
        if rows % 64:  # padding bits zero, as the fused pass leaves them
            packed_i[:, -1] &= np.uint64((1 << (rows % 64)) - 1)
            packed_other[:, -1] &= np.uint64((1 << (rows % 64)) - 1)
        a = rng.standard_normal((rows, d), dtype=np.float32)
        b = rng.standard_normal((rows, d), dtype=np.float32)
        reference, reference_cpu = best_of(lambda: a.T @ b, args.repeats)
        flops = 2 * rows * d * d
        start = time.perf_counter()
        chosen = compiled.choose_count_kernel(d, d, rows)
        choose_seconds = time.perf_counter() - start
        entry = {"d": d, "rows": rows, "choose_count_kernel": chosen, "choose_seconds": choose_seconds,
                 "reference_gemm": {"seconds": reference, "cpu_over_wall": reference_cpu / reference, "flops": flops,
                                    "gflops_per_s": flops / reference / 1e9, "pair_samples_per_s": flops / 2 / reference}}
        for block in ("diagonal", "off-diagonal"):
            packed_j = packed_i if block == "diagonal" else packed_other
            pair_samples = rows * d * (d + 1) // 2 if block == "diagonal" else rows * d * d
            indicators_i = compiled.unpack_indicators(packed_i, rows)
            indicators_j = indicators_i if block == "diagonal" else compiled.unpack_indicators(packed_j, rows)
            counts_pop = compiled.popcount_counts(packed_i, packed_j)
            counts_gemm = compiled.gemm_counts(packed_i, packed_j, rows)
            agree = bool(np.array_equal(counts_pop, counts_gemm))
            calls = {
                "popcount": lambda: compiled.popcount_counts(packed_i, packed_j),
                "gemm": lambda: compiled.gemm_counts(packed_i, packed_j, rows),
                "gemm-only": lambda: kernels.coexceedance_partial(indicators_i, indicators_j),
            }
            timed = {}
            for path, call in calls.items():
                seconds, cpu = best_of(call, args.repeats)
                timed[path] = {"seconds": seconds, "cpu_over_wall": cpu / seconds,
                               "pair_samples_per_s": pair_samples / seconds,
                               "fraction_of_gemm_rate": pair_samples / seconds / entry["reference_gemm"]["pair_samples_per_s"]}
            if block == "diagonal":
                unpack = lambda: compiled.unpack_indicators(packed_i, rows)  # noqa: E731
            else:
                unpack = lambda: (compiled.unpack_indicators(packed_i, rows), compiled.unpack_indicators(packed_j, rows))  # noqa: E731
            timed["unpack"] = {"seconds": best_of(unpack, args.repeats)[0]}
            if block == "diagonal":
                syrk, _ = best_of(lambda: a.T @ a, args.repeats)
                timed["reference-syrk"] = {"seconds": syrk, "pair_samples_per_s": pair_samples / syrk,
                                           "fraction_of_gemm_rate": pair_samples / syrk / entry["reference_gemm"]["pair_samples_per_s"]}
            fastest = min(("popcount", "gemm"), key=lambda p: timed[p]["seconds"])
            entry[block] = {"pair_samples": pair_samples, "counts_agree": agree, "paths": timed,
                            "fastest_measured": fastest, "choice_matches_fastest": chosen == fastest,
                            "popcount_over_gemm_seconds": timed["popcount"]["seconds"] / timed["gemm"]["seconds"]}
            del indicators_i, indicators_j
        results.append(entry)
        print(f"d = {d}: done ({entry['reference_gemm']['gflops_per_s']:.1f} GFLOP/s reference, "
              f"choose_count_kernel → {chosen})", flush=True)

    blas = {}
    try:
        config = np.show_config(mode="dicts")
        blas = {k: config["Build Dependencies"]["blas"].get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as error:  # noqa: BLE001 - informational only
        blas = {"error": repr(error)}
    record = {
        "benchmark": "count_kernels",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows, "d_values": args.d, "repeats": args.repeats, "timing": f"best of {args.repeats} after a warm-up, "
        "one process (no subprocess)", "pair_samples": "rows·d_i·d_j, or rows·d(d+1)/2 for a diagonal block",
        "threads": {name: os.environ[name] for name in THREAD_VARIABLES} | {
            "note": "single-threaded BLAS and numba, set before numpy was imported: like one dask worker thread"},
        "scheduler": "none (kernels called directly in one thread)",
        "machine": steps.machine(load_before, cpu=_cpu_model(), blas=blas),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "numba": numba.__version__},
        "results": results,
    }
    steps.write_results(record, args.out, "count_kernels_quick" if args.quick else "count_kernels", print_table, plot)


def print_table(record):
    print(f"\nrows = {record['rows']:,}, d_i = d_j = d, 1 thread (BLAS and numba), {record['timing']}, "
          f"{record['machine']['cores']}-core machine; rates in 10⁹ pair-samples/s (fraction of the GEMM rate)")
    print(f"{'d':>5}{'block':>13}{'popcount':>16}{'gemm':>16}{'gemm-only':>16}{'unpack s':>10}{'ref GEMM':>10}"
          f"{'GFLOP/s':>9}{'cpu/wall':>9}{'chosen':>10}{'fastest':>10}{'agree':>7}")
    for entry in record["results"]:
        ref = entry["reference_gemm"]
        for block in ("diagonal", "off-diagonal"):
            paths = entry[block]["paths"]
            cells = "".join(f"{paths[p]['pair_samples_per_s'] / 1e9:>8.2f} ({paths[p]['fraction_of_gemm_rate']:.2f})"
                            for p in PATHS)
            print(f"{entry['d']:>5}{block:>13}{cells}{paths['unpack']['seconds']:>10.4f}"
                  f"{ref['pair_samples_per_s'] / 1e9:>10.2f}{ref['gflops_per_s']:>9.1f}{ref['cpu_over_wall']:>9.2f}"
                  f"{entry['choose_count_kernel']:>10}{entry[block]['fastest_measured']:>10}"
                  f"{str(entry[block]['counts_agree']):>7}")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = record["results"]
    ds = [e["d"] for e in results]
    colours = {"popcount": "#d62728", "gemm": "#1f77b4", "gemm-only": "#2ca02c"}
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.plot(ds, [e["reference_gemm"]["pair_samples_per_s"] for e in results], "k-", lw=2, label=LABELS["reference"])
    if "reference-syrk" in results[0]["diagonal"]["paths"]:
        ax.plot(ds, [e["diagonal"]["paths"]["reference-syrk"]["pair_samples_per_s"] for e in results], "k:",
                label=LABELS["reference-syrk"])
    for p in PATHS:
        for block, style in (("diagonal", "o-"), ("off-diagonal", "s--")):
            ax.plot(ds, [e[block]["paths"][p]["pair_samples_per_s"] for e in results], style, color=colours[p],
                    label=f"{LABELS[p]}, {block}", markersize=4)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ds, [str(d) for d in ds])
    ax.set_xlabel("d_i = d_j = d (columns per block)")
    ax.set_ylabel("pair-samples per second")
    low = min(e[b]["paths"][p]["pair_samples_per_s"] for e in results for b in ("diagonal", "off-diagonal")
              for p in PATHS)
    for e in results:
        ax.annotate(f"picks\n{e['choose_count_kernel']}", (e["d"], low), xytext=(0, -4), textcoords="offset points",
                    ha="center", va="top", fontsize=7)
    ax.set_ylim(low / 3, None)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"co-exceedance count kernels, rows = {record['rows']:,} per block, 1 thread (BLAS, numba), "
                 f"best of {record['repeats']},\n{record['machine']['cores']}-core machine; "
                 "bottom: choose_count_kernel(d, d, rows)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
