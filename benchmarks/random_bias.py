"""The random-bias fit ``y = ReLU(A c + b)``: its passes against a plain read, its sine against the passes, and
its accuracy against the one-layer fit's top eigenvectors.

Time. Simulates ``n × d`` float32 samples of Mazumdar and Rawat's model
(``dist_relu.random_bias_truth(d, k, seed=0)``, latents ``--law``, zstd
Zarr, ``--chunk-rows`` rows per chunk), then runs each step in a fresh
Python process on the local threaded scheduler:

- ``read``: ``da.from_zarr(store, component="samples").sum().compute()``
- ``fit``: ``dist_relu.randombias.fit_to_zarr(store, out, rank=k, pilot_iterations=P, max_passes=M,
  overwrite=True)``, with its stage timings (``pilot``: reading the pilot's rows
  and alternating least squares on them in memory; ``pass 1``, ``pass 2``, ...:
  one read each). ``P`` (``--pilot-iterations``, default 5) is small, so that
  the passes do the work and the fit makes ``M`` (``--max-passes``) of them
- ``fit-default``: ``fit_to_zarr(store, out, rank=k, overwrite=True)``, the default settings
- ``fit-1blas``, ``fit-default-1blas``: the same with
  ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=1`` in the process's
  environment, as ``dist-relu`` sets it (the Python API leaves BLAS's threads
  at its default)

Repeats are interleaved (read, fit, fit-1blas, ..., read, ...) after one
untimed read that warms the page cache; medians are reported, with each
pass / read measured within this one run. After each fit, its ``n_passes``,
``converged`` and ``change`` are read from the fit it wrote.

Passes. For each n in ``--passes-n`` and law in ``--passes-laws``: the truth
``random_bias_truth(d, k, seed=0)``, its samples written with seed 0, and
``fit_to_zarr(..., pilot_iterations=P, max_passes=m)`` for m = 1 … M: the
5-pass fit's ``change`` per pass (the sine by which ``span(Â)`` moved), and
the sine to the truth (``subspace_sine``) of the fit stopped after each
pass (the fits are the same up to where they stop: checked on ``change``);
beside them one fit with the default settings.

Against the one-layer fit. For each law in ``--table-laws`` and seed in
``--seeds``, at ``--table-n``, ``--table-d``, ``--table-rank``: the
``subspace_sine`` of ``RandomBiasReLU(rank=k).fit(store)`` (default
settings), and the sine between ``span(A)`` and the top-``k`` eigenvectors
of ``ReLUGaussian().fit(store).covariance_``, both on the coordinates the
random-bias fit found identifiable (``status_ == 0``). Gaussian latents, where
the one-layer model holds, are the control.

Results go to ``benchmarks/results/random_bias.{json,png}``.

    python benchmarks/random_bias.py            # n = 10⁶, d = 100, k = 5; passes at 10⁵, 10⁶; table d = 50, k = 3
    python benchmarks/random_bias.py --quick    # n = 10⁵, one repeat; passes at n = 10⁵; table seed 0
    python benchmarks/random_bias.py --plot-only benchmarks/results/random_bias.json
"""

import argparse
import datetime
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import steps
from steps import package_fingerprint, run_step

READ = "import dask.array as da; da.from_zarr(STORE, component='samples').sum().compute()"
FIT = ("import dist_relu.randombias; RESULT = dist_relu.randombias.fit_to_zarr(STORE, OUT, rank=RANK, "
       "pilot_iterations=PILOT_ITERATIONS, max_passes=MAX_PASSES, overwrite=True)")
FIT_DEFAULT = ("import dist_relu.randombias; "
               "RESULT = dist_relu.randombias.fit_to_zarr(STORE, OUT, rank=RANK, overwrite=True)")
STEPS = {
    "read": READ,
    "fit": FIT,
    "fit-1blas": FIT,
    "fit-default": FIT_DEFAULT,
    "fit-default-1blas": FIT_DEFAULT,
}
TICKS = {"read": "one\nread", "fit": "fit", "fit-1blas": "fit\n1-thread\nBLAS", "fit-default": "fit\ndefault\nsettings",
         "fit-default-1blas": "fit\ndefault\n1-thread\nBLAS"}
# Set in the child's environment, before numpy is imported (as two_layer.py's fit-1blas).
SINGLE_THREAD_BLAS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FITS = ("fit", "fit-1blas", "fit-default", "fit-default-1blas")
LAW_COLOURS = {"uniform": "#1f77b4", "t3": "#d62728", "sparse": "#2ca02c", "gaussian": "#7f7f7f"}


def child(step, store, out, rank, pilot_iterations, max_passes):
    """Run one step in this process and print its record (``steps.run_step``)."""
    run_step(STEPS[step], {"STORE": store, "OUT": out, "RANK": int(rank), "PILOT_ITERATIONS": int(pilot_iterations),
                           "MAX_PASSES": int(max_passes)})


def measure(step, store, out, rank, pilot_iterations, max_passes):
    """Run ``step`` in a fresh process (single-threaded BLAS for the ``-1blas`` steps) and return its record.

    A fit's record gains its ``n_passes``, ``converged`` and ``change``, read from the fit it wrote.
    """
    import dist_relu

    env = {**os.environ, **SINGLE_THREAD_BLAS} if step.endswith("-1blas") else None
    record = steps.measure(__file__, step, [store, out, rank, pilot_iterations, max_passes], env=env)
    if step in FITS:
        _, group = dist_relu.open_fit(out)
        record.update(n_passes=int(group.attrs["n_passes"]), converged=bool(group.attrs["converged"]),
                      change=[float(c) for c in group["change"][:]])
    return record


def stage_names(timings):
    """The stages of a fit in order: ``pilot``, ``pass 1``, ``pass 2``, ..."""
    return sorted(timings, key=lambda stage: (stage != "pilot", int(stage.split()[-1]) if stage != "pilot" else 0))


def passes_run(n, d, k, law, pilot_iterations, max_passes, chunk_rows, workdir):
    """Fit ``n`` samples of one law with 1 … ``max_passes`` passes and with the default settings; return the sines."""
    import numpy as np

    import dist_relu
    import dist_relu.randombias

    mixing, bias = dist_relu.random_bias_truth(d, k, seed=0)
    store, out = str(workdir / f"passes-n{n}-{law}.zarr"), str(workdir / f"passes-n{n}-{law}-fit.zarr")
    dist_relu.simulate_to_zarr(store, mixing, bias, n, chunk_rows=chunk_rows, seed=0, latent=law, overwrite=True)
    record = {"n": n, "law": law, "truth_sine": [], "changes": [], "seconds": []}
    try:
        for passes in range(1, max_passes + 1):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dist_relu.randombias.NotConverged)
                dist_relu.randombias.fit_to_zarr(store, out, rank=k, pilot_iterations=pilot_iterations,
                                                 max_passes=passes, overwrite=True)
            record["seconds"].append(time.perf_counter() - start)
            model, group = dist_relu.open_fit(out)
            record["changes"].append([float(c) for c in group["change"][:]])
            record["truth_sine"].append(model.errors(mixing)["subspace_sine"])
            if passes == max_passes:
                record.update(change=record["changes"][-1], loss=[float(v) for v in group["loss"][:]],
                              n_passes=int(group.attrs["n_passes"]), converged=bool(group.attrs["converged"]),
                              timings=dict(group.attrs["timings"]), identifiable=model.errors(mixing)["identifiable"])
        # Each fit stopped after m passes is the longest one's first m passes (a fit that converged early stops there).
        longest = record["changes"][-1]
        record["prefix_consistent"] = all(np.array_equal(c, longest[:len(c)]) for c in record["changes"])
        start = time.perf_counter()
        dist_relu.randombias.fit_to_zarr(store, out, rank=k, overwrite=True)
        seconds = time.perf_counter() - start
        model, group = dist_relu.open_fit(out)
        record["default"] = {"seconds": seconds, "n_passes": int(group.attrs["n_passes"]),
                             "converged": bool(group.attrs["converged"]),
                             "change": [float(c) for c in group["change"][:]], "timings": dict(group.attrs["timings"]),
                             "subspace_sine": model.errors(mixing)["subspace_sine"]}
    finally:
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return record


def table_run(n, d, k, law, seed, chunk_rows, workdir):
    """Fit the random-bias model and the one-layer model to the same samples; return both sines to ``span(A)``."""
    import numpy as np

    import dist_relu
    import dist_relu.randombias
    from dist_relu.model import principal_sine

    mixing, bias = dist_relu.random_bias_truth(d, k, seed=seed)
    store = str(workdir / f"table-{law}-s{seed}.zarr")
    dist_relu.simulate_to_zarr(store, mixing, bias, n, chunk_rows=chunk_rows, seed=seed, latent=law, overwrite=True)
    try:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", dist_relu.randombias.NotConverged)
            fit = dist_relu.RandomBiasReLU(rank=k).fit(store)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        baseline = np.linalg.eigh(dist_relu.ReLUGaussian().fit(store).covariance_)[1][:, -k:]
        one_layer_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(store, ignore_errors=True)
    ok = fit.status_ == 0
    errors = fit.model_.errors(mixing)
    return {"law": law, "seed": seed, "subspace_sine": errors["subspace_sine"], "identifiable": errors["identifiable"],
            "one_layer_sine": principal_sine(baseline[ok], mixing[ok]), "n_passes": int(fit.n_passes_),
            "converged": bool(fit.converged_),
            "not_converged_warnings": sum(issubclass(w.category, dist_relu.randombias.NotConverged) for w in caught),
            "seconds": seconds,
            "one_layer_seconds": one_layer_seconds, "timings": fit.settings_["timings"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the timed fit")
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--rank", type=int, default=5, help="k, the latent dimension")
    parser.add_argument("--law", default="uniform", help="the latents' law of the timed fit")
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pilot-iterations", type=int, default=5,
                        help="of the timed fit and of the passes' sweep (the default setting is 200)")
    parser.add_argument("--max-passes", type=int, default=5)
    parser.add_argument("--passes-n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--passes-laws", nargs="+", default=["uniform", "t3", "sparse"])
    parser.add_argument("--table-n", type=int, default=20_000)
    parser.add_argument("--table-d", type=int, default=50)
    parser.add_argument("--table-rank", type=int, default=3)
    parser.add_argument("--table-laws", nargs="+", default=["uniform", "t3", "sparse", "gaussian"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="of the table")
    parser.add_argument("--workdir", default=None)
    steps.add_result_options(parser, "n = 10⁵, one repeat; passes at n = 10⁵; table seed 0")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.n, args.repeats, args.passes_n, args.seeds = 100_000, 1, [100_000], [0]

    import dask
    import numpy as np
    import zarr

    import dist_relu

    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-random-bias-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n, d, k, chunk_rows = args.n, args.d, args.rank, args.chunk_rows
    pilot_iterations, max_passes = args.pilot_iterations, args.max_passes
    try:
        store, out = str(workdir / "samples.zarr"), str(workdir / "fit.zarr")
        start = time.perf_counter()
        mixing, bias = dist_relu.random_bias_truth(d, k, seed=0)
        dist_relu.simulate_to_zarr(store, mixing, bias, n, chunk_rows=chunk_rows, seed=0, latent=args.law,
                                   overwrite=True)
        simulate_seconds = time.perf_counter() - start
        stored_bytes = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
        print(f"simulated n = {n:,}, d = {d}, k = {k}, latents {args.law} in {simulate_seconds:.1f} s, chunks of "
              f"{chunk_rows:,} rows, {stored_bytes / 2**20:.0f} MB on disk", flush=True)
        arguments = (store, out, k, pilot_iterations, max_passes)
        if not args.quick:
            measure("read", *arguments)  # warm the page cache, untimed
        runs = {step: [] for step in STEPS}
        for repeat in range(args.repeats):  # interleaved, so that drift spreads over all steps
            for step in STEPS:
                runs[step].append(measure(step, *arguments))
                r = runs[step][-1]
                print(f"  run {repeat + 1} {step:>17}: {r['seconds']:.2f} s, "
                      f"peak {r['peak_mb'] - r['baseline_mb']:.0f} MB"
                      + (f", stages {r['timings']}, {r['n_passes']} passes, converged {r['converged']}"
                         if "timings" in r else ""), flush=True)
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)

        summary = {step: {"median_seconds": statistics.median(r["seconds"] for r in results),
                          "peak_above_baseline_mb": max(r["peak_mb"] - r["baseline_mb"] for r in results)}
                   for step, results in runs.items()}
        read = summary["read"]["median_seconds"]
        ratios = {}
        for step in FITS:
            names = stage_names(runs[step][0]["timings"])
            if any(stage_names(r["timings"]) != names for r in runs[step]):
                raise RuntimeError(f"the runs of {step} made different numbers of passes")
            stages = {stage: statistics.median(r["timings"][stage] for r in runs[step]) for stage in names}
            summary[step].update(
                median_stage_seconds=stages,
                median_outside_stages_seconds=statistics.median(r["seconds"] - sum(r["timings"].values())
                                                                for r in runs[step]),
                n_passes=runs[step][0]["n_passes"], converged=runs[step][0]["converged"],
                change=runs[step][0]["change"])
            passes = [seconds for stage, seconds in stages.items() if stage != "pilot"]
            ratios[step] = {"fit_over_read": summary[step]["median_seconds"] / read,
                            "pilot_over_read": stages["pilot"] / read,
                            "pass_over_read": [seconds / read for seconds in passes],
                            "median_pass_over_read": statistics.median(passes) / read}
        for step in ("fit", "fit-default"):
            ratios[step]["over_1blas"] = summary[step]["median_seconds"] / summary[f"{step}-1blas"]["median_seconds"]
        timing = {"n": n, "d": d, "rank": k, "law": args.law, "pilot_iterations": pilot_iterations,
                  "max_passes": max_passes, "pilot_rows": min(n, max(2_000, 40 * d)), "chunk_rows": chunk_rows,
                  "n_chunks": -(-n // chunk_rows), "chunk_mb": chunk_rows * d * 4 / 2**20, "raw_mb": n * d * 4 / 2**20,
                  "stored_mb": stored_bytes / 2**20, "simulate_seconds": simulate_seconds,
                  "runs": runs, "summary": summary, "ratios": ratios}

        passes_sweep = []
        for passes_n in args.passes_n:
            for law in args.passes_laws:
                passes_sweep.append(passes_run(passes_n, d, k, law, pilot_iterations, max_passes, chunk_rows, workdir))
                r = passes_sweep[-1]
                print(f"  passes n = {passes_n:>9,} {law:>8}: change "
                      + ", ".join(f"{c:.2e}" for c in r["change"]) + "; sine to the truth "
                      + ", ".join(f"{s:.2e}" for s in r["truth_sine"])
                      + f"; prefix consistent {r['prefix_consistent']}; default: {r['default']['n_passes']} "
                        f"pass(es), sine {r['default']['subspace_sine']:.2e}", flush=True)

        table = []
        for law in args.table_laws:
            for seed in args.seeds:
                table.append(table_run(args.table_n, args.table_d, args.table_rank, law, seed, chunk_rows, workdir))
                r = table[-1]
                print(f"  table {law:>8} seed {seed}: random-bias {r['subspace_sine']:.2e} "
                      f"({r['n_passes']} passes, {r['identifiable']} identifiable), "
                      f"one-layer {r['one_layer_sine']:.3f}",
                      flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    per_law = []
    for law in args.table_laws:
        rows = [r for r in table if r["law"] == law]
        per_law.append({"law": law, "runs": len(rows),
                        "median_subspace_sine": statistics.median(r["subspace_sine"] for r in rows),
                        "max_subspace_sine": max(r["subspace_sine"] for r in rows),
                        "median_one_layer_sine": statistics.median(r["one_layer_sine"] for r in rows),
                        "min_one_layer_sine": min(r["one_layer_sine"] for r in rows),
                        "all_converged": all(r["converged"] for r in rows)})

    record = {
        "benchmark": "random_bias",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32", "compressor": "zstd (zarr default)",
        "chunking": f"{chunk_rows:,}-row chunks, all columns in one chunk", "scheduler": "local threads",
        "truth": "dist_relu.random_bias_truth(d, k, seed): A (d × k) and b standard normal",
        "repeats": args.repeats, "steps": STEPS, "fit-1blas_environment": SINGLE_THREAD_BLAS,
        "machine": steps.machine(load_before, cpu=steps.cpu_model()),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__},
        "timing": timing,
        "passes": {"d": d, "rank": k, "seed": 0, "pilot_iterations": pilot_iterations, "max_passes": max_passes,
                   "chunk_rows": chunk_rows, "n_values": args.passes_n, "laws": args.passes_laws,
                   "runs": passes_sweep},
        "table": {"n": args.table_n, "d": args.table_d, "rank": args.table_rank, "chunk_rows": chunk_rows,
                  "seeds": args.seeds, "laws": args.table_laws, "settings": "RandomBiasReLU(rank=k) defaults",
                  "one_layer": "top-k eigenvectors of ReLUGaussian().fit(store).covariance_",
                  "runs": table, "per_law": per_law},
    }
    steps.write_results(record, args.out, "random_bias_quick" if args.quick else "random_bias", print_table, plot)


def print_table(record):
    t = record["timing"]
    print(f"\nn = {t['n']:,}, d = {t['d']}, k = {t['rank']}, latents {t['law']}, float32 zstd Zarr, "
          f"{record['chunking']} ({t['n_chunks']} chunks), {record['scheduler']} ({record['machine']['cores']} cores), "
          f"median of {record['repeats']}, each step a fresh process; fit: pilot_iterations={t['pilot_iterations']}, "
          f"max_passes={t['max_passes']}; pilot {t['pilot_rows']:,} rows")
    print(f"{'step':>18}{'median s':>10}{'peak MB':>9}   runs (s)")
    for step in STEPS:
        s = t["summary"][step]
        print(f"{step:>18}{s['median_seconds']:>10.2f}{s['peak_above_baseline_mb']:>9.0f}   "
              + ", ".join(f"{r['seconds']:.2f}" for r in t["runs"][step]))
    for step in FITS:
        s, r = t["summary"][step], t["ratios"][step]
        print(f"{step} stages (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["median_stage_seconds"].items())
              + f", outside the stages {s['median_outside_stages_seconds']:.2f}; {s['n_passes']} passes, "
                f"converged {s['converged']}")
        print(f"{'':>4}/ read: fit {r['fit_over_read']:.1f}, pilot {r['pilot_over_read']:.1f}, passes "
              + ", ".join(f"{v:.1f}" for v in r["pass_over_read"])
              + (f"; / its 1-thread-BLAS run {r['over_1blas']:.2f}" if "over_1blas" in r else ""))
    p = record["passes"]
    print(f"\npasses, d = {p['d']}, k = {p['rank']}, pilot_iterations={p['pilot_iterations']}, seed {p['seed']}")
    print(f"{'n':>10}{'law':>9}   {'after pass':<10}" + "".join(f"{m:>10}" for m in range(1, p["max_passes"] + 1))
          + "   default settings")
    for r in p["runs"]:
        print(f"{r['n']:>10,}{r['law']:>9}   {'change':<10}" + "".join(f"{c:>10.2e}" for c in r["change"]))
        print(f"{'':>19}   {'sine':<10}" + "".join(f"{s:>10.2e}" for s in r["truth_sine"])
              + f"   {r['default']['n_passes']} pass(es), sine {r['default']['subspace_sine']:.2e}")
    tb = record["table"]
    print(f"\nsine to span(A), n = {tb['n']:,}, d = {tb['d']}, k = {tb['rank']}, seeds {tb['seeds']}")
    print(f"{'law':>9}{'random-bias median':>20}{'max':>10}{'one-layer median':>18}{'min':>8}")
    for e in tb["per_law"]:
        print(f"{e['law']:>9}{e['median_subspace_sine']:>20.2e}{e['max_subspace_sine']:>10.2e}"
              f"{e['median_one_layer_sine']:>18.3f}{e['min_one_layer_sine']:>8.3f}")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t, p, tb = record["timing"], record["passes"], record["table"]
    fig, ((ax_t, ax_r), (ax_p, ax_c)) = plt.subplots(2, 2, figsize=(14, 10))

    # Time: the read as a bar, the fits stacked by their stages (the rest: time outside the stages).
    blues = plt.get_cmap("Blues")
    for j, step in enumerate(STEPS):
        s = t["summary"][step]
        if "median_stage_seconds" in s:
            bottom = 0.0
            for stage, seconds in s["median_stage_seconds"].items():
                colour = "#ff7f0e" if stage == "pilot" else blues(0.35 + 0.12 * int(stage.split()[-1]))
                ax_t.bar(j, seconds, 0.7, bottom=bottom, color=colour, edgecolor="white", linewidth=0.5,
                         label=f"fit: {stage}" if step == "fit" else None)
                bottom += seconds
            ax_t.bar(j, max(s["median_seconds"] - bottom, 0), 0.7, bottom=bottom, color="#dddddd",
                     label="fit: outside stages" if step == "fit" else None)
        else:
            ax_t.bar(j, s["median_seconds"], 0.7, color="#555555")
            bottom = 0.0
        # The stages' medians can add up to more than the fit's median: the label goes above both.
        ax_t.annotate(f"{s['median_seconds']:.2f} s", (j, max(s["median_seconds"], bottom)), ha="center", va="bottom",
                      fontsize=8)
    ax_t.set_xticks(range(len(STEPS)), [TICKS[s] for s in STEPS], fontsize=7)
    ax_t.set_ylabel("median seconds")
    ax_t.set_ylim(0, 1.25 * max(t["summary"][s]["median_seconds"] for s in STEPS))
    ax_t.legend(fontsize=7, loc="upper right")
    ax_t.set_title(f"time: n = {t['n']:,}, d = {t['d']}, k = {t['rank']}, latents {t['law']}, {t['n_chunks']} chunks, "
                   f"median of {record['repeats']}\nfit, fit-1blas: pilot_iterations={t['pilot_iterations']}, "
                   f"max_passes={t['max_passes']}; default: 200, 5", fontsize=9)

    # Each pass (and the pilot, at 0) over one read, measured side by side.
    styles = {"fit": ("-o", "#1f77b4"), "fit-1blas": ("--s", "#ff7f0e"), "fit-default": ("-^", "#2ca02c"),
              "fit-default-1blas": ("--v", "#d62728")}
    for step in FITS:
        r = t["ratios"][step]
        values = [r["pilot_over_read"], *r["pass_over_read"]]
        style, colour = styles[step]
        ax_r.plot(range(len(values)), values, style, color=colour, label=step)
    ax_r.axhline(1, color="grey", ls=":", label="one read")
    ax_r.set_xticks(range(t["max_passes"] + 1), ["pilot"] + [f"pass {m}" for m in range(1, t["max_passes"] + 1)])
    ax_r.set_ylim(bottom=0)
    ax_r.set_ylabel(f"median seconds / one read ({t['summary']['read']['median_seconds']:.2f} s)")
    ax_r.legend(fontsize=7)
    ax_r.set_title("each stage over one plain read of the store", fontsize=9)

    # The sine against the passes: how far span(Â) moved (change), and how far it is from span(A).
    markers = {n: m for n, m in zip(p["n_values"], "os^v")}
    for r in p["runs"]:
        colour, marker = LAW_COLOURS.get(r["law"]), markers[r["n"]]
        passes = np.arange(1, len(r["change"]) + 1)
        ax_p.plot(passes, r["change"], "--", marker=marker, color=colour, markerfacecolor="none", alpha=0.8)
        ax_p.plot(np.arange(1, len(r["truth_sine"]) + 1), r["truth_sine"], "-", marker=marker, color=colour,
                  label=f"{r['law']}, n = {r['n']:,}")
        ax_p.scatter([len(r["default"]["change"]) + 0.15 * (1 + p["n_values"].index(r["n"]))],
                     [max(r["default"]["subspace_sine"], 1e-12)], marker="*", s=90, color=colour)
    ax_p.plot([], [], "k-", label="sine to span(A) after the pass")
    ax_p.plot([], [], "k--", markerfacecolor="none", label="change: how far span(Â) moved in the pass")
    ax_p.scatter([], [], marker="*", s=90, color="k", label="default settings (sine to span(A))")
    ax_p.set_yscale("log")
    ax_p.set_xticks(range(1, p["max_passes"] + 1))
    ax_p.set_xlabel("passes over the data")
    ax_p.set_ylabel("sine of the largest principal angle")
    ax_p.legend(fontsize=7, loc="center right", ncol=2)
    ax_p.set_title(f"the sine against the passes: d = {p['d']}, k = {p['rank']}, "
                   f"pilot_iterations={p['pilot_iterations']}", fontsize=9)

    # The random-bias fit against the one-layer fit's top-k eigenvectors, on the same samples.
    laws = tb["laws"]
    jitter = {s: 0.06 * (j - (len(tb["seeds"]) - 1) / 2) for j, s in enumerate(tb["seeds"])}
    for j, law in enumerate(laws):
        rows = [r for r in tb["runs"] if r["law"] == law]
        ax_c.scatter([j - 0.17 + jitter[r["seed"]] for r in rows], [max(r["subspace_sine"], 1e-12) for r in rows],
                     color="#1f77b4", label="random-bias fit" if j == 0 else None)
        ax_c.scatter([j + 0.17 + jitter[r["seed"]] for r in rows], [r["one_layer_sine"] for r in rows], marker="s",
                     color="#ff7f0e", label="one-layer fit: top-k eigenvectors of Σ̂" if j == 0 else None)
    ax_c.set_yscale("log")
    ax_c.set_xticks(range(len(laws)), laws)
    ax_c.set_xlabel("latents' law")
    ax_c.set_ylabel("sine to span(A) (identifiable coordinates)")
    ax_c.legend(fontsize=7, loc="center right")
    ax_c.set_title(f"n = {tb['n']:,}, d = {tb['d']}, k = {tb['rank']}, seeds {tb['seeds']}, default settings",
                   fontsize=9)
    fig.suptitle(f"random-bias model y = ReLU(A c + b): float32 zstd Zarr, {record['chunking']}, "
                 f"{record['scheduler']}, {record['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
