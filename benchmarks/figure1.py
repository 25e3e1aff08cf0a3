"""The paper's Figure 1, reproduced with the paper's method and with dist_relu's default.

Three sweeps (docs/design.md §6): error against n (d = 5, κ = 1), against d
(n = 5·10⁵, κ = 1) and against κ (d = 5, n = 5·10⁵), runs = seeds 0..R−1, each
with its own W*, b* = max(0, N(0, I)). Every run simulates a Zarr store
(125,000-row chunks) and fits it on local threads through the path users use:

- "paper (ProjSGD)": ``ReLUGaussian(method="sgd", passes=2, inversion="model", clip_bias=True)``
- "dist_relu default": ``ReLUGaussian()`` (censored MLE, one pass, tetrachoric)

Writes ``figure1.csv`` (one row per run), ``figure1_summary.csv`` and
``figure1.png`` to ``--out``, with the authors' own code's figures from
``benchmarks/reference/authors_code_figure1.csv`` drawn beside ours.

    python benchmarks/figure1.py            # full: 10 runs per point, ~10 min on 2 cores
    python benchmarks/figure1.py --quick    # small, for the tests
"""

import argparse
import csv
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import dist_relu

METHODS = {
    "paper (ProjSGD)": dict(method="sgd", passes=2, inversion="model", clip_bias=True),
    "dist_relu default": dict(),
}
FULL = {
    "n": [dict(n=n, d=5, kappa=1) for n in (20_000, 50_000, 110_000, 200_000, 500_000)],
    "d": [dict(n=500_000, d=d, kappa=1) for d in (5, 9, 13, 17, 21, 25)],
    "kappa": [dict(n=500_000, d=5, kappa=k) for k in (1, 5, 9, 13, 17, 21, 25)],
}
QUICK = {
    "n": [dict(n=n, d=5, kappa=1) for n in (20_000, 50_000)],
    "d": [dict(n=50_000, d=d, kappa=1) for d in (5, 9)],
    "kappa": [dict(n=50_000, d=5, kappa=k) for k in (1, 9)],
}
METRICS = ("err_sigma", "err_b", "tv_bound")
REFERENCE = Path(__file__).resolve().parent / "reference" / "authors_code_figure1.csv"


def run_point(workdir, point, seed):
    """Simulate one data set and fit it with each method; return one row per method."""
    weights, bias = dist_relu.figure1_truth(point["d"], kappa=point["kappa"], seed=seed)
    store = workdir / f"run-{seed}.zarr"
    dist_relu.simulate_to_zarr(store, weights, bias, point["n"], chunk_rows=125_000, seed=seed, overwrite=True)
    rows = []
    for name, settings in METHODS.items():
        start = time.perf_counter()
        fit = dist_relu.ReLUGaussian(seed=seed, **settings).fit(store)
        seconds = time.perf_counter() - start
        rows.append({"method": name, "run": seed, **point, **fit.model_.errors(weights @ weights.T, bias),
                     "fit_seconds": seconds})
    shutil.rmtree(store)
    return rows


def summarise(rows):
    groups = defaultdict(list)
    for row in rows:
        groups[(row["sweep"], row[row["sweep"]], row["method"])].append(row)
    summary = []
    for (sweep, value, method), members in groups.items():
        entry = {"sweep": sweep, "value": value, "method": method, "runs": len(members)}
        for metric in METRICS + ("fit_seconds",):
            values = np.array([m[metric] for m in members])
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = values.mean(), values.std()
        summary.append(entry)
    return summary


def read_reference():
    if not REFERENCE.exists():
        print(f"note: {REFERENCE} not found; the authors' figures are not drawn")
        return []
    with open(REFERENCE) as f:
        return [{k: (v if k == "sweep" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def plot(summary, reference, path, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colours = {"err_sigma": "tab:blue", "err_b": "tab:orange", "tv_bound": "tab:green"}
    styles = {"paper (ProjSGD)": ("--", "s"), "dist_relu default": ("-", "o")}
    labels = {"n": "number of samples n (d = 5, κ = 1)", "d": "dimension d (n = 5·10⁵, κ = 1)",
              "kappa": "condition number κ (d = 5, n = 5·10⁵)"}
    for ax, sweep in zip(axes, ("n", "d", "kappa")):
        for method, (line, marker) in styles.items():
            points = sorted((s for s in summary if s["sweep"] == sweep and s["method"] == method),
                            key=lambda s: s["value"])
            if not points:
                continue
            x = [p["value"] for p in points]
            for metric, colour in colours.items():
                ax.errorbar(x, [p[f"{metric}_mean"] for p in points], yerr=[p[f"{metric}_std"] for p in points],
                            linestyle=line, marker=marker, color=colour, capsize=3, markersize=4,
                            label=f"{metric}, {method}")
        ref = sorted((r for r in reference if r["sweep"] == sweep), key=lambda r: r["value"])
        for metric in ("err_sigma", "err_b"):
            if ref:
                ax.errorbar([r["value"] for r in ref], [r[f"{metric}_mean"] for r in ref],
                            yerr=[r[f"{metric}_std"] for r in ref], linestyle="none", marker="*", markersize=11,
                            color=colours[metric], markeredgecolor="black", capsize=3,
                            label=f"{metric}, authors' code")
        ax.set_yscale("log")
        if sweep == "n":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks(sorted({s["value"] for s in summary if s["sweep"] == "n"}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
        ax.set_xlabel(labels[sweep])
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("error (mean ± std)")
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"Figure 1 of Wu, Dimakis & Sanghavi (2019): {runs} runs per point; Zarr stores with 125,000-row "
                 "chunks, local threads. Dashed: the paper's method; solid: dist_relu's default; stars: the "
                 "authors' own code", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 runs of small points, for smoke tests")
    parser.add_argument("--runs", type=int, default=None, help="runs per point (default 10, quick 2)")
    parser.add_argument("--sweeps", default="n,d,kappa", help="comma-separated subset of n,d,kappa")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the saved summary CSV")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 10)
    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "figure1_quick" if args.quick else "figure1"
    if args.plot_only:
        with open(out / f"{stem}_summary.csv") as f:
            summary = [{k: (v if k in ("sweep", "method") else float(v)) for k, v in row.items()}
                       for row in csv.DictReader(f)]
        runs = int(summary[0]["runs"])
        return plot(summary, read_reference(), out / f"{stem}.png", runs)

    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dist-relu-figure1-") as workdir:
        for sweep in args.sweeps.split(","):
            for point in plan[sweep]:
                for seed in range(runs):
                    rows.extend({"sweep": sweep, **row} for row in run_point(Path(workdir), point, seed))
                print(f"{sweep} = {point[sweep]}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    with open(out / f"{stem}_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    reference = read_reference()
    plot(summary, reference, out / f"{stem}.png", runs)

    print(f"\n{'sweep':<6}{'value':>8}  {'method':<18}{'err_sigma':>18}{'err_b':>18}{'tv_bound':>18}")
    for s in sorted(summary, key=lambda s: (s["sweep"], s["value"], s["method"])):
        cells = "".join(f"{s[f'{m}_mean']:>10.4f} ±{s[f'{m}_std']:.4f}" for m in METRICS)
        print(f"{s['sweep']:<6}{s['value']:>8}  {s['method']:<18}{cells}")
    by_key = {(s["sweep"], s["value"], s["method"]): s for s in summary}
    print("\nthe paper's method against the authors' code (mean ± std over runs):")
    for r in reference:
        ours = by_key.get((r["sweep"], r["value"], "paper (ProjSGD)"))
        point = next((p for p in plan.get(r["sweep"], []) if p[r["sweep"]] == r["value"]), None)
        if ours is None or point is None or (point["n"], point["d"]) != (r["n"], r["d"]):
            continue  # compare only the same n, d and κ
        verdict = [f"{m}: {ours[f'{m}_mean']:.4f} vs {r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f} "
                   f"({'within' if abs(ours[f'{m}_mean'] - r[f'{m}_mean']) <= r[f'{m}_std'] else 'OUTSIDE'})"
                   for m in ("err_sigma", "err_b")]
        print(f"  {r['sweep']} = {r['value']:g}: " + "; ".join(verdict))
    for key in [("n", 200_000), ("n", 50_000)]:
        paper, default = by_key.get(key + ("paper (ProjSGD)",)), by_key.get(key + ("dist_relu default",))
        if paper and default:
            print(f"\nat {key[0]} = {key[1]:,}, d = 5: paper / default error ratio: err_sigma "
                  f"{paper['err_sigma_mean'] / default['err_sigma_mean']:.1f}x, err_b "
                  f"{paper['err_b_mean'] / default['err_b_mean']:.1f}x")
            break
    print(f"\nwrote {out / stem}.csv, {stem}_summary.csv, {stem}.png in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
