"""Coverage of the fit's standard errors: do intervals ``estimate ± 1.96·SE`` hold the truth 95% of the time?

For every truth ``(W, b) = dist_relu.figure1_truth(d, kappa, seed, bias)``
(``Σ = W Wᵀ``, ``σ_i = sqrt(Σ_ii)``; with ``kappa = 1``, ``Σ = I``, so its
off-diagonal entries are 0, and ``kappa > 1`` gives correlated coordinates),
every ``n`` and every replication, the samples ``x = max(0, z Wᵀ + b)`` are
drawn in memory (numpy, float32, ``z`` standard normal, the seed a fixed
function of the truth, ``n`` and the replication) and fitted with
``dist_relu.ReLUGaussian(**settings).fit(X)`` (an ndarray: one dask chunk at
these sizes, dask's default local threads). The settings are the default
(``censored``, ``tetrachoric``) on every replication, and
``inversion="model"`` and ``method="truncated"`` on the first
``--alternative-reps`` replications of each truth and ``n`` (the same samples).

Per kind of entry (Σ's off-diagonal entries ``i < j``, Σ's diagonal, ``b``,
``σ``), ``n`` and settings:

- coverage: the fraction of entries with a finite standard error whose
  interval ``estimate ± 1.96·SE`` contains the truth, with its binomial
  half-width (1.96·sqrt(p(1 − p)/N), entries taken as independent);
- entries with an infinite SE (a pair whose 2×2 table of exceedances has an
  empty cell) and with a NaN SE, counted apart (not in the coverage); the
  NaN ones are split into those of coordinates with no estimate (``σ̂ = 0``)
  and the others;
- z-scores ``(estimate − truth)/SE``: their mean and standard deviation,
  pooled (≈ 0 and ≈ 1 if the errors are right), and 1.4826 times their
  median absolute deviation (a standard deviation that a few wild fits do
  not move);
- SE/SD: per entry of one truth and ``n``, the mean SE over its replications
  divided by the standard deviation of its estimates across them (≈ 1),
  pooled over the entries as ``1 / sqrt(mean(SD²/SE²))`` (SD² is unbiased;
  the ratio of one entry is not, and is noisy with few replications: its
  median and 10% and 90% quantiles over the entries are in the JSON). Entries
  with a non-finite SE in any replication are left out.

The same, per settings, split by bias kind, by ``n`` and the positive
fraction ``Φ(b_i/σ_i)`` of the coordinates involved (the smaller of the two
for a pair), and by the expected number of positives ``n·Φ(b_i/σ_i)``, to
find where the intervals fail.

Results go to ``benchmarks/results/se_coverage.{json,png}``. Run from a
checkout with ``PYTHONPATH=.`` to measure its own ``dist_relu`` whatever the
environment has installed (the JSON records the package's path). The name is
not ``coverage.py``: numba imports ``coverage`` when it can, and a script's
folder is first on ``sys.path``, so that name would break every benchmark.

    python benchmarks/se_coverage.py           # d = 5, 10; both bias kinds; kappa = 1, 10; n = 10⁴, 10⁵, 10⁶
    python benchmarks/se_coverage.py --quick   # d = 5, kappa = 10, n = 10⁴, 10⁵, 6 replications
    python benchmarks/se_coverage.py --plot-only benchmarks/results/se_coverage.json
"""

import argparse
import datetime
import os
import time
from pathlib import Path

import numpy as np
from scipy.special import ndtr

import steps
from steps import package_fingerprint

SETTINGS = {
    "default": {},
    "inversion=model": {"inversion": "model"},
    "method=truncated": {"method": "truncated"},
}
KINDS = ("Σ off-diagonal", "Σ diagonal", "b", "σ")
Z = 1.959963984540054  # the normal's 97.5% quantile
BAND = (0.93, 0.97)
POSITIVE_BINS = (0.0, 0.005, 0.02, 0.05, 0.2, 0.5, 0.8, 1.0)  # of the positive fraction of the coordinates involved
COUNT_BINS = (0, 100, 1_000, 10_000, 100_000, np.inf)  # of n times that fraction: the expected positives
COUNT_LABELS = ("< 10²", "10²–10³", "10³–10⁴", "10⁴–10⁵", "≥ 10⁵")
# The samples' seeds: SeedSequence([ENTROPY, d, round(100 κ), bias kind, truth seed, n, replication]).
ENTROPY = 20261130


def truth_entries(weights, bias):
    """Return the truths and, per entry, its kind and positive fraction (the smaller of a pair's two)."""
    covariance = weights @ weights.T
    scale = np.sqrt(np.diag(covariance))
    positive = ndtr(bias / scale)
    rows, columns = np.triu_indices(len(bias), k=1)
    values = np.concatenate([covariance[rows, columns], np.diag(covariance), bias, scale])
    kinds = np.concatenate([np.full(rows.size, 0), np.full(len(bias), 1), np.full(len(bias), 2),
                            np.full(len(bias), 3)])
    fractions = np.concatenate([np.minimum(positive[rows], positive[columns]), positive, positive, positive])
    return values, kinds, fractions, (rows, columns)


def fitted_entries(fit, pairs):
    """Return the fit's estimates, standard errors and whether its coordinates have an estimate (``σ̂ > 0``).

    In the order of ``truth_entries``; a pair has an estimate when both of its coordinates have one.
    """
    rows, columns = pairs
    estimates = np.concatenate([fit.covariance_[rows, columns], np.diag(fit.covariance_), fit.bias_, fit.scale_])
    errors = np.concatenate([fit.covariance_se_[rows, columns], np.diag(fit.covariance_se_), fit.bias_se_,
                             fit.scale_se_])
    estimated = fit.scale_ > 0
    return estimates, errors, np.concatenate([estimated[rows] & estimated[columns], estimated, estimated, estimated])


def simulate(weights, bias, n, seed):
    """``n`` float32 samples of ``max(0, z Wᵀ + b)``, ``z`` standard normal, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(bias)), dtype=np.float32) @ weights.T.astype(np.float32)
    x += bias.astype(np.float32)
    return np.maximum(x, 0, out=x)


def run_cell(dist_relu, truth, n, reps, alternative_reps):
    """Fit ``reps`` replications of one truth at one ``n``; return the estimates and errors per settings."""
    weights, bias = dist_relu.figure1_truth(truth["d"], kappa=truth["kappa"], seed=truth["seed"],
                                            bias=truth["bias"])
    values, kinds, fractions, pairs = truth_entries(weights, bias)
    out = {name: {"estimates": [], "errors": [], "estimated": [], "failed": 0, "seconds": 0.0} for name in SETTINGS}
    for rep in range(reps):
        seed = np.random.SeedSequence([ENTROPY, truth["d"], round(100 * truth["kappa"]),
                                       ("clipped", "gaussian").index(truth["bias"]), truth["seed"], n, rep])
        x = simulate(weights, bias, n, seed)
        for name, settings in SETTINGS.items():
            if name != "default" and rep >= alternative_reps:
                continue
            start = time.perf_counter()
            try:
                fit = dist_relu.ReLUGaussian(**settings).fit(x)
            except Exception as error:  # recorded, not fatal: a failed fit is no interval
                out[name]["failed"] += 1
                out[name].setdefault("errors_raised", []).append(f"{type(error).__name__}: {error}")
                continue
            finally:
                out[name]["seconds"] += time.perf_counter() - start
            for key, value in zip(("estimates", "errors", "estimated"), fitted_entries(fit, pairs)):
                out[name][key].append(value)
    for entry in out.values():
        for key in ("estimates", "errors", "estimated"):
            entry[key] = np.array(entry[key]).reshape(-1, values.size)
    return {"values": values, "kinds": kinds, "fractions": fractions, "fits": out}


def summarise(cells, select=lambda cell, kinds, fractions: np.ones(kinds.size, bool)):
    """Pool the cells' entries that ``select`` keeps: coverage, non-finite SEs, z-scores, SE/SD."""
    covered = total = infinite = missing = missing_estimated = 0
    scores = []
    z_sum = z_squares = 0.0
    ratios, variance_ratios = [], []
    for cell in cells:
        keep = select(cell, cell["kinds"], cell["fractions"])
        if not keep.any():
            continue
        estimates, errors = cell["estimates"][:, keep], cell["errors"][:, keep]
        truth = cell["values"][keep]
        finite = np.isfinite(errors)
        infinite += int(np.isinf(errors).sum())
        missing += int(np.isnan(errors).sum())
        missing_estimated += int((np.isnan(errors) & cell["estimated"][:, keep]).sum())
        z = (estimates - truth)[finite] / errors[finite]
        covered += int((np.abs(z) <= Z).sum())
        total += z.size
        z_sum += float(z.sum())
        z_squares += float((z * z).sum())
        scores.append(z)
        if len(estimates) >= 3:
            whole = finite.all(axis=0)
            spread = estimates[:, whole].std(axis=0, ddof=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = errors[:, whole].mean(axis=0) / spread
            good = np.isfinite(ratio) & (ratio > 0)
            ratios.extend(ratio[good].tolist())
            variance_ratios.extend((1 / ratio[good] ** 2).tolist())
    result = {"entries": total, "infinite_se": infinite, "nan_se": missing, "nan_se_estimated": missing_estimated}
    if total:
        p = covered / total
        z_mean = z_sum / total
        scores = np.concatenate(scores)
        result.update(coverage=p, half_width=Z * np.sqrt(p * (1 - p) / total), z_mean=z_mean,
                      z_sd=float(np.sqrt(max(z_squares / total - z_mean**2, 0.0) * total / max(total - 1, 1))),
                      z_sd_robust=float(1.482602 * np.median(np.abs(scores - np.median(scores)))),
                      z_max_abs=float(np.abs(scores).max()))
    if ratios:
        # SD² / SE² is unbiased entry by entry (SD/SE is not: E[1/s] > 1/σ), so it is pooled before the root.
        result.update(se_over_sd=float(1 / np.sqrt(np.mean(variance_ratios))),
                      se_over_sd_median=float(np.median(ratios)), se_over_sd_q10=float(np.quantile(ratios, 0.1)),
                      se_over_sd_q90=float(np.quantile(ratios, 0.9)), se_over_sd_entries=len(ratios))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--kappa", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--bias", nargs="+", default=["clipped", "gaussian"], choices=["clipped", "gaussian"])
    parser.add_argument("--truth-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reps", type=int, nargs="+", default=[40, 40, 20],
                        help="replications per truth, one per --n (default settings)")
    parser.add_argument("--alternative-reps", type=int, nargs="+", default=[20, 20, 10],
                        help="of them, how many are also fitted with inversion=model and method=truncated")
    steps.add_result_options(parser, "d = 5, kappa = 10, n = 10⁴, 10⁵, 6 replications")
    args = parser.parse_args()
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.d, args.kappa, args.truth_seeds, args.n = [5], [10.0], [0], [10_000, 100_000]
        args.reps, args.alternative_reps = [6, 6], [3, 3]
    if not len(args.n) == len(args.reps) == len(args.alternative_reps):
        parser.error("--n, --reps and --alternative-reps need one value per n")

    import dask

    import dist_relu
    import dist_relu.io

    print(f"dist_relu from {Path(dist_relu.__file__).parent}", flush=True)
    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    started = time.perf_counter()
    truths = [{"d": d, "kappa": kappa, "bias": bias, "seed": seed}
              for d in args.d for kappa in args.kappa for bias in args.bias for seed in args.truth_seeds]
    reps = dict(zip(args.n, args.reps))
    alternative_reps = dict(zip(args.n, args.alternative_reps))
    # The row chunks dask splits an ndarray of the largest d into (dist_relu.io.open_samples).
    chunking = {n: len(dist_relu.io.open_samples(np.zeros((n, max(args.d)), np.float32)).chunks[0]) for n in args.n}
    cells = {name: [] for name in SETTINGS}
    per_truth = []
    for truth in truths:
        weights, bias = dist_relu.figure1_truth(truth["d"], kappa=truth["kappa"], seed=truth["seed"],
                                                bias=truth["bias"])
        covariance = weights @ weights.T
        scale = np.sqrt(np.diag(covariance))
        correlation = covariance / np.outer(scale, scale)
        positive = ndtr(bias / scale).tolist()
        per_truth.append({**truth, "bias_values": bias.tolist(), "positive_fraction": positive,
                          "max_abs_correlation": float(np.abs(correlation - np.eye(len(bias))).max())})
        for n in args.n:
            start = time.perf_counter()
            cell = run_cell(dist_relu, truth, n, reps[n], min(alternative_reps[n], reps[n]))
            for name, fits in cell["fits"].items():
                cells[name].append({**truth, "n": n, "values": cell["values"], "kinds": cell["kinds"],
                                    "fractions": cell["fractions"], "estimates": fits["estimates"],
                                    "errors": fits["errors"], "estimated": fits["estimated"], "failed": fits["failed"],
                                    "errors_raised": fits.get("errors_raised", []), "seconds": fits["seconds"]})
            default = summarise([cells["default"][-1]])
            print(f"d = {truth['d']:>2}, kappa = {truth['kappa']:g}, {truth['bias']:>8}, seed {truth['seed']}, "
                  f"n = {n:>9,}: {reps[n]} replications in {time.perf_counter() - start:.1f} s; default coverage "
                  f"{default.get('coverage', float('nan')):.3f} over {default['entries']} entries, "
                  f"{default['infinite_se']} inf, {default['nan_se']} NaN", flush=True)

    table = []
    for name in SETTINGS:
        for n in args.n:
            at_n = [c for c in cells[name] if c["n"] == n]
            fits = sum(len(c["estimates"]) for c in at_n)
            if not fits:
                continue
            for k, kind in enumerate(KINDS):
                row = {"settings": name, "n": n, "kind": kind, "fits": fits,
                       "failed_fits": sum(c["failed"] for c in at_n),
                       **summarise(at_n, lambda cell, kinds, fractions, k=k: kinds == k)}
                table.append(row)
    breakdown = []
    for name in SETTINGS:
        for n in args.n:
            at_n = [c for c in cells[name] if c["n"] == n and len(c["estimates"])]
            for bias_kind in args.bias:
                for k, kind in enumerate(KINDS):
                    row = summarise([c for c in at_n if c["bias"] == bias_kind],
                                    lambda cell, kinds, fractions, k=k: kinds == k)
                    breakdown.append({"by": "bias", "settings": name, "bias": bias_kind, "n": n, "kind": kind, **row})
            for low, high in zip(POSITIVE_BINS[:-1], POSITIVE_BINS[1:]):
                for k, kind in enumerate(KINDS):
                    row = summarise(at_n, lambda cell, kinds, fractions, k=k, low=low, high=high:
                                    (kinds == k) & (fractions >= low) & (fractions < high + (high == 1.0)))
                    if row["entries"] or row["infinite_se"] or row["nan_se"]:
                        breakdown.append({"by": "positive_fraction", "settings": name, "low": low, "high": high,
                                          "n": n, "kind": kind, **row})
        fitted = [c for c in cells[name] if len(c["estimates"])]
        for low, high in zip(COUNT_BINS[:-1], COUNT_BINS[1:]):
            for k, kind in enumerate(KINDS):
                row = summarise(fitted, lambda cell, kinds, fractions, k=k, low=low, high=high:
                                (kinds == k) & (cell["n"] * fractions >= low) & (cell["n"] * fractions < high))
                if row["entries"] or row["infinite_se"] or row["nan_se"]:
                    breakdown.append({"by": "expected_positives", "settings": name, "low": low,
                                      "high": high if np.isfinite(high) else None, "kind": kind, **row})
    failures = {name: sorted({e for c in cells[name] for e in c["errors_raised"]})[:10] for name in SETTINGS}
    record = {
        "benchmark": "se_coverage",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "fit_seconds": {name: sum(c["seconds"] for c in cells[name]) for name in SETTINGS},
        "dtype": "float32", "data": "in memory (numpy ndarray), simulated per replication",
        "chunking": {"row_chunks_at_largest_d": {str(n): chunks for n, chunks in chunking.items()},
                     "note": "dask splits an ndarray into row chunks of at most 64 MiB, all columns"},
        "scheduler": "local threads (dask's default)",
        "nominal": 0.95, "z": Z, "band": BAND,
        "settings": SETTINGS, "d": args.d, "kappa": args.kappa, "bias": args.bias, "truth_seeds": args.truth_seeds,
        "n": args.n, "reps": reps, "alternative_reps": alternative_reps,
        "seeds": f"samples: np.random.SeedSequence([{ENTROPY}, d, round(100 kappa), bias kind (0 clipped, 1 gaussian), "
                 "truth seed, n, replication]); truth: figure1_truth(d, kappa, seed=truth seed, bias)",
        "fits": {name: sum(len(c["estimates"]) for c in cells[name]) for name in SETTINGS},
        "failed_fits": {name: sum(c["failed"] for c in cells[name]) for name in SETTINGS},
        "failure_messages": failures,
        "truths": per_truth,
        "machine": steps.machine(load_before, cpu=steps.cpu_model()),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "dist_relu_path": str(Path(dist_relu.__file__).parent),
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__},
        "table": table,
        "breakdown": breakdown,
    }
    steps.write_results(record, args.out, "se_coverage_quick" if args.quick else "se_coverage", print_table, plot)


def _format(row, key, spec, missing="—"):
    return format(row[key], spec) if key in row else missing


def print_table(record):
    print(f"\nnominal 95% intervals (estimate ± 1.96·SE); d = {record['d']}, kappa = {record['kappa']}, "
          f"bias {record['bias']}, truth seeds {record['truth_seeds']}; fits {record['fits']}, "
          f"failed {record['failed_fits']}; {record['wall_seconds']:.0f} s")
    print("NaN: no estimate (σ̂ = 0) / with an estimate; robust: 1.4826·MAD of z; SE/SD: 1/sqrt(mean SD²/SE²)")
    print(f"{'settings':>17}{'n':>11}{'kind':>16}{'fits':>6}{'coverage':>10}{'±':>7}{'entries':>9}{'inf':>6}"
          f"{'NaN':>10}{'z mean':>8}{'z sd':>8}{'robust':>7}{'SE/SD':>7}  per entry 10–90%")
    for row in record["table"]:
        flag = "" if "coverage" not in row or BAND[0] <= row["coverage"] <= BAND[1] else "  *"
        nan = f"{row['nan_se'] - row['nan_se_estimated']}/{row['nan_se_estimated']}"
        print(f"{row['settings']:>17}{row['n']:>11,}{row['kind']:>16}{row['fits']:>6}"
              f"{_format(row, 'coverage', '>10.3f')}{_format(row, 'half_width', '>7.3f')}{row['entries']:>9}"
              f"{row['infinite_se']:>6}{nan:>10}{_format(row, 'z_mean', '>8.2f')}{_format(row, 'z_sd', '>8.2f')}"
              f"{_format(row, 'z_sd_robust', '>7.2f')}{_format(row, 'se_over_sd', '>7.2f')}"
              + (f"  {row['se_over_sd_q10']:.2f}–{row['se_over_sd_q90']:.2f}" if "se_over_sd_q10" in row else "")
              + flag)
    print("* outside 93–97%")
    print("\nby the expected number of positives n·Φ(b/σ) of the coordinates involved (a pair's smaller one), all n")
    print(f"{'settings':>17}{'positives':>18}{'coverage':>28}{'z sd':>28}{'entries':>14}{'inf':>6}{'NaN':>9}")
    rows = [r for r in record["breakdown"] if r["by"] == "expected_positives"]
    for name in SETTINGS:
        for low in sorted({r["low"] for r in rows if r["settings"] == name}):
            members = {r["kind"]: r for r in rows if r["settings"] == name and r["low"] == low}
            high = next(iter(members.values()))["high"]
            label = f"{low:,}–{high:,}" if high is not None else f"≥ {low:,}"
            coverage = " ".join(_format(members[k], "coverage", ">6.3f", "     —") if k in members else "     —"
                                for k in KINDS)
            z_sd = " ".join(_format(members[k], "z_sd", ">6.2f", "     —") if k in members else "     —"
                            for k in KINDS)
            entries = "/".join(str(members[k]["entries"]) if k in members else "0" for k in KINDS[:2])
            infinite = sum(m["infinite_se"] for m in members.values())
            nan = "/".join(str(sum(m[key] for m in members.values())) for key in ("nan_se", "nan_se_estimated"))
            print(f"{name:>17}{label:>18}{coverage:>28}{z_sd:>28}{entries:>14}{infinite:>6}{nan:>9}")
    for by, title in (("positive_fraction", "by the positive fraction Φ(b/σ) of the coordinates involved "
                                            "(a pair's smaller one)"), ("bias", "by bias kind")):
        print(f"\n{title}: coverage and z sd of Σ off-diagonal, Σ diagonal, b, σ")
        print(f"{'settings':>17}{'n':>11}{'group':>13}{'coverage':>28}{'z sd':>28}{'entries':>14}{'inf':>6}"
              f"{'NaN':>9}")
        rows = [r for r in record["breakdown"] if r["by"] == by]
        groups = sorted({(r["settings"], r["n"], r.get("bias") or r["low"], r.get("high")) for r in rows},
                        key=lambda g: (list(SETTINGS).index(g[0]), g[1], str(g[2])))
        for name, n, group, high in groups:
            members = {r["kind"]: r for r in rows if (r["settings"], r["n"], r.get("bias") or r["low"],
                                                      r.get("high")) == (name, n, group, high)}
            label = group if by == "bias" else f"{group:.3f}–{high:.3f}"
            coverage = " ".join(_format(members[k], "coverage", ">6.3f", "     —") if k in members else "     —"
                                for k in KINDS)
            z_sd = " ".join(_format(members[k], "z_sd", ">6.2f", "     —") if k in members else "     —"
                            for k in KINDS)
            entries = "/".join(str(members[k]["entries"]) if k in members else "0" for k in KINDS[:2])
            infinite = sum(m["infinite_se"] for m in members.values())
            nan = "/".join(str(sum(m[key] for m in members.values())) for key in ("nan_se", "nan_se_estimated"))
            print(f"{name:>17}{n:>11,}{label:>13}{coverage:>28}{z_sd:>28}{entries:>14}{infinite:>6}{nan:>9}")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"default": "#1f77b4", "inversion=model": "#ff7f0e", "method=truncated": "#2ca02c"}
    offsets = {"default": 1.0, "inversion=model": 0.9, "method=truncated": 1.1}
    shifts = {"default": 0.0, "inversion=model": -0.12, "method=truncated": 0.12}
    spread_limits = (0.8, 1.3)
    fig, axes = plt.subplots(3, len(KINDS), figsize=(16, 11))
    for column, kind in enumerate(KINDS):
        ax_c, ax_r, ax_p = axes[:, column]
        for ax in (ax_c, ax_p):
            ax.axhspan(*BAND, color="#dddddd", label="93–97%")
            ax.axhline(0.95, color="grey", lw=0.8)
        ax_r.axhspan(0.9, 1.1, color="#eeeeee")
        ax_r.axhline(1.0, color="grey", lw=0.8)
        for name, colour in colours.items():
            rows = [r for r in record["table"] if r["settings"] == name and r["kind"] == kind and "coverage" in r]
            if not rows:
                continue
            x = [r["n"] * offsets[name] for r in rows]
            ax_c.errorbar(x, [r["coverage"] for r in rows], yerr=[r["half_width"] for r in rows], marker="o",
                          color=colour, capsize=3, label=name)
            for key, style, label in (("z_sd", "-o", "z sd"), ("se_over_sd", "--s", "mean SE / SD")):
                points = [(r["n"] * offsets[name], r[key]) for r in rows if key in r]
                shown = [(x, min(max(y, spread_limits[0]), spread_limits[1])) for x, y in points]
                ax_r.plot(*zip(*shown), style, color=colour, markerfacecolor="none" if key != "z_sd" else colour,
                          label=f"{label}, {name}")
                for (x, y), (_, at) in zip(points, shown):
                    if y != at:
                        ax_r.annotate(f"{y:.1f}", (x, at), textcoords="offset points",
                                      xytext=(0, -12 if at == spread_limits[1] else 6), ha="center", fontsize=7,
                                      color=colour)
            bins = [r for r in record["breakdown"]
                    if r["by"] == "expected_positives" and r["settings"] == name and r["kind"] == kind
                    and "coverage" in r]
            centres = [COUNT_BINS.index(r["low"]) + shifts[name] for r in bins]
            ax_p.errorbar(centres, [r["coverage"] for r in bins], yerr=[r["half_width"] for r in bins], marker="o",
                          color=colour, capsize=3, label=name)
        ax_c.set_title(kind, fontsize=10)
        ax_c.set_ylim(min(0.85, ax_c.get_ylim()[0]), 1.0)
        ax_r.set_ylim(*spread_limits)
        ax_p.set_ylim(min(0.5, ax_p.get_ylim()[0]), 1.0)
        for ax in (ax_c, ax_r):
            ax.set_xscale("log")
            ax.set_xlabel("n")
        ax_p.set_xticks(range(len(COUNT_BINS) - 1), COUNT_LABELS, fontsize=8)
        ax_p.set_xlim(-0.5, len(COUNT_BINS) - 1.5)
        ax_p.set_xlabel("expected positives n·Φ(b/σ) (a pair's smaller one)")
    axes[0, 0].set_ylabel("coverage of estimate ± 1.96·SE")
    axes[1, 0].set_ylabel("z sd, mean SE / SD\n(values off the axis written beside its edge)")
    axes[2, 0].set_ylabel("coverage, all n, by expected positives")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    axes[1, -1].legend(fontsize=6, loc="upper right", ncol=1)
    fig.suptitle(f"coverage of nominal 95% intervals: figure1_truth(d ∈ {record['d']}, κ ∈ {record['kappa']}, "
                 f"bias ∈ {record['bias']}, truth seeds {record['truth_seeds']})\nreplications per truth "
                 f"{record['reps']}, inversion=model and method=truncated on the first {record['alternative_reps']} "
                 f"of them; float32 in memory, {record['scheduler']}, {record['machine']['cores']} cores",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
