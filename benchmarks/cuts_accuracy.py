"""Accuracy of the correlations from K cut points per coordinate (polychoric tables) against one threshold.

A study at the level of the kernels: each estimator is run here from the
kernels the fit (``dist-relu fit --cuts K``) uses, on samples in memory,
with the margins ``(b̂, σ̂)`` and thresholds of all the samples, so that
every method, the reference included, shares the same margins; and the
product's own fits of the same samples, which take their thresholds and cut
points from a pilot of the first rows. For each truth kind,
each seed and ``x = ReLU(W z + b)``, ``z ~ N(0, I)`` (float32,
``kernels.relu_gaussian_chunk(rows, W, b, seed, piece)`` in pieces of at most
10⁵ rows, piece ``m`` drawn with chunk index ``m``):

- margins: ``(b̂, σ̂) = kernels.fit_coordinates(kernels.chunk_statistics(x))``
  (censored likelihood), thresholds ``t = max(0, b̂)``;
- ``default``: today's estimator, the tetrachoric inversion of the
  co-exceedances of ``t`` (``compiled.chunk_pass(x, t)``,
  ``popcount_counts``, ``tetrachoric_margins``, ``compiled.covariance_block``
  with unit scales);
- ``K=3``, ``K=5``: cut points ``kernels.cut_points(x[:pilot], t, K)``
  (``pilot = kernels.default_pilot_rows(n, 4 d)``, the first rows), the
  pass at ``(d, K)`` cut points, its ``(K·d)²`` counts, each coordinate's
  exceedances from the diagonal of its own K×K block,
  ``polychoric.standardised_cuts`` and ``polychoric.correlation_block``;
- ``fit default``, ``fit K=5``: ``dist_relu.ReLUGaussian(cuts=K).fit(x)`` on
  the local threads, ``ρ̂`` from its ``Σ̂`` (0 where a ``σ̂`` is 0);
- ``reference``: the full pairwise censored-normal likelihood in ``ρ`` with
  the margins fixed at the fitted ``(b̂, σ̂)`` (``z = (x − b̂)/σ̂``, censoring
  point ``c = −b̂/σ̂``; a row contributes ``log φ₂(z_i, z_j; ρ)`` when both
  are positive, ``log φ(z_i) + log Φ((c_j − ρ z_i)/√(1 − ρ²))`` when only
  ``x_i`` is, and ``log Φ₂(c_i, c_j; ρ)`` when both are zero), maximised
  by ``scipy.optimize.minimize_scalar(method="bounded")`` on ``(−0.9999,
  0.9999)``, ``xatol = 1e-8``. It costs O(n) per evaluation, so it is
  fitted on a subsample of pairs only: per seed, ``--reference-pairs``
  pairs ``i < j`` drawn without replacement by ``np.random.default_rng(seed)``
  (the same pairs for every truth kind of a seed). A pair with a
  coordinate that has no positive value (``σ̂ = 0``) gets ``ρ = 0``, as the
  other estimators give it.

Truth kinds (``rng = np.random.default_rng(seed)`` for the low-rank ones):

- ``figure1 clipped``: ``figure1_truth(d, kappa=25, seed, bias="clipped")``;
- ``figure1 gaussian``: the same with ``bias="gaussian"`` (negative biases);
- ``low-rank clipped``: ``W = rng.standard_normal((d, 3))``, ``b = max(0, N(0, 1))``;
- ``low-rank gaussian``: the same with ``b ~ N(0, 1)`` unclipped.

The truth's ``ρ`` is ``simulate.gram(W)`` normalised to unit diagonal.
Recorded per truth kind and seed, each the mean over pairs of ``(ρ̂ − ρ)²``:

- ``all``: every pair ``i < j``: default, K=3, K=5, fit default, fit K=5;
- ``all seen``: the same, over the pairs whose two coordinates both have a
  positive value (a coordinate with none has ``σ̂ = 0``, and every method
  gives its pairs ``ρ = 0``, whatever the truth);
- ``subsample``: the reference's pairs: default, K=3, K=5, reference;
- ``all ≥5%`` and ``subsample ≥5%``: the same, over the pairs whose two
  coordinates both have at least 5% positive values. With negative biases,
  pairs of rarely positive coordinates have (almost) no co-exceedances and
  every estimator is driven to ±1 or 0 there whatever its cut points: these
  columns show where cut points can help;
- ``all ≥5% co-exceeded``: of those, the pairs with at least one row where
  both exceed their thresholds ``t`` (a diagnostic: a strongly negative
  pair of a rarely positive coordinate can have none, and then every
  estimator from exceedance counts, whatever its cut points, is driven
  towards ``ρ = −1``, while the reference still sees the positive values);

and the process time per pair of ``correlation_block`` for each K (and of
``covariance_block``, the default's inversion, and the reference's
maximisation, for scale). Summarised per truth kind over the seeds: the mean
MSE per method and scope (the ``subsample ≥5%`` mean over the seeds with
any such pair), and ratios of the mean MSEs: K=5/default, K=3/default (all
pairs), K=5/reference, K=3/reference and default/reference (subsample),
and the same over the ≥5% pairs. The ratios against the reference also get
a 90% bootstrap interval: the subsample's (seed, pair) units pooled and
resampled, the same units for both methods (its 400 pairs are few). Every
method's ρ̂ on the subsample is in the JSON, with the truth. Results go to
``benchmarks/results/cuts_accuracy.{json,png}``.

    python benchmarks/cuts_accuracy.py            # d = 50, n = 5·10⁵, seeds 0..9, 40 reference pairs a seed
    python benchmarks/cuts_accuracy.py --quick    # d = 10, n = 5·10⁴, seeds 0..1, 10 reference pairs
    python benchmarks/cuts_accuracy.py --plot-only benchmarks/results/cuts_accuracy.json
"""

import argparse
import datetime
import math
import os
import time

import numpy as np

import steps
from steps import package_fingerprint

TRUTH_KINDS = ("figure1 clipped", "figure1 gaussian", "low-rank clipped", "low-rank gaussian")
CLIPPED_KINDS = ("figure1 clipped", "low-rank clipped")
CUTS = (3, 5)
METHODS = ("default", "K=3", "K=5", "reference")
# The product's own fits of the same samples: dist_relu.ReLUGaussian(cuts=K).fit(x), thresholds and cut points
# from its pilot, ρ̂ from its Σ̂.
FIT_METHODS = {"fit default": 1, "fit K=5": 5}
SCOPES = {"all": METHODS[:3] + tuple(FIT_METHODS), "all seen": METHODS[:3] + tuple(FIT_METHODS), "subsample": METHODS,
          "all ≥5%": METHODS[:3], "subsample ≥5%": METHODS, "all ≥5% co-exceeded": METHODS[:3]}
RATIOS = {  # name: (scope, numerator, denominator)
    "K=5/default": ("all", "K=5", "default"),
    "K=3/default": ("all", "K=3", "default"),
    "fit K=5/fit default": ("all", "fit K=5", "fit default"),
    "K=5/default seen": ("all seen", "K=5", "default"),
    "K=5/reference": ("subsample", "K=5", "reference"),
    "K=3/reference": ("subsample", "K=3", "reference"),
    "default/reference": ("subsample", "default", "reference"),
    "K=5/default ≥5%": ("all ≥5%", "K=5", "default"),
    "K=3/default ≥5%": ("all ≥5%", "K=3", "default"),
    "K=5/reference ≥5%": ("subsample ≥5%", "K=5", "reference"),
    "default/reference ≥5%": ("subsample ≥5%", "default", "reference"),
    "K=5/default ≥5% co-exceeded": ("all ≥5% co-exceeded", "K=5", "default"),
}
# Ratios against the reference get a bootstrap interval: the subsample's (seed, pair) units pooled and resampled.
BOOTSTRAP = {"resamples": 2000, "levels": (0.05, 0.95), "seed": 0}
KAPPA = 25
RANK = 3
MIN_POSITIVE_FRACTION = 0.05
PIECE_ROWS = 100_000
TARGET_RATIO = 0.65  # the plot's dashed line: K=5 at most this times the default's MSE
REFERENCE_BOUND = 0.9999
RATIO_AXIS_TOP = 3.0  # the plot's ratio axes stop here; a longer bar is cut, its value written at the top


def truth(kind, d, seed):
    """Return ``(W, b)`` of a truth kind (see the module's docstring)."""
    from dist_relu import simulate

    if kind.startswith("figure1"):
        return simulate.figure1_truth(d, kappa=KAPPA, seed=seed, bias=kind.split()[1])
    rng = np.random.default_rng(seed)
    weights, bias = rng.standard_normal((d, RANK)), rng.standard_normal(d)
    return weights, (np.maximum(0.0, bias) if kind.endswith("clipped") else bias)


def samples(n, weights, bias, seed):
    """Return ``n`` float32 samples, drawn in pieces of at most ``PIECE_ROWS`` rows (chunk indices 0, 1, ...)."""
    from dist_relu import kernels

    pieces = [kernels.relu_gaussian_chunk(min(PIECE_ROWS, n - start), weights, bias, seed, index)
              for index, start in enumerate(range(0, n, PIECE_ROWS))]
    return np.ascontiguousarray(np.concatenate(pieces)) if len(pieces) > 1 else pieces[0]


def default_rho(x, thresholds):
    """Return today's ``ρ̂`` (d, d), the process seconds of its inversion and the co-exceedance counts (d, d)."""
    from dist_relu import compiled, kernels

    n, d = x.shape
    index = np.arange(d)
    single = compiled.chunk_pass(x, thresholds)
    counts = compiled.popcount_counts(single.indicators, single.indicators)
    margins = kernels.tetrachoric_margins(np.diag(counts), n)
    start = time.process_time()
    rho = compiled.covariance_block(counts, n, margins, margins, np.ones(d), np.ones(d), index, index)
    return rho, time.process_time() - start, counts


def cuts_rho(x, thresholds, bias, scale, k, pilot):
    """Return the polychoric ``ρ̂`` (d, d) from ``k`` cut points a coordinate, ``correlation_block``'s process
    seconds, and each coordinate's number of finite cut points."""
    from dist_relu import compiled, kernels, polychoric

    n, d = x.shape
    index = np.arange(d)
    cuts = kernels.cut_points(x[:pilot], thresholds, k)
    many = compiled.chunk_pass(x, cuts)
    counts = compiled.popcount_counts(many.indicators, many.indicators)
    exceeded = np.array([np.diag(counts.reshape(d, k, d, k)[p, :, p, :]) for p in range(d)])
    h = polychoric.standardised_cuts(cuts, bias, scale)
    start = time.process_time()
    rho, _ = polychoric.correlation_block(counts, n, exceeded, exceeded, h, h, index, index)
    return rho, time.process_time() - start, kernels.finite_cuts(cuts)


def pair_likelihood(x_i, x_j, bias_i, scale_i, bias_j, scale_j):
    """Return the negative mean log-likelihood of ``ρ`` of one pair, margins fixed (see the docstring)."""
    from scipy import special

    from dist_relu import compiled

    n = x_i.size
    positive_i, positive_j = x_i > 0, x_j > 0
    z_i = (x_i.astype(np.float64) - bias_i) / scale_i
    z_j = (x_j.astype(np.float64) - bias_j) / scale_j
    c_i, c_j = -bias_i / scale_i, -bias_j / scale_j
    both = positive_i & positive_j
    a, b = z_i[both], z_j[both]
    n_both, s_aa, s_bb, s_ab = both.sum(), a @ a, b @ b, a @ b
    only_i, only_j = z_i[positive_i & ~positive_j], z_j[positive_j & ~positive_i]
    n_none = int((~positive_i & ~positive_j).sum())
    log_root = 0.5 * math.log(2 * math.pi)
    constant = -0.5 * (only_i @ only_i + only_j @ only_j) - (only_i.size + only_j.size) * log_root

    def negative_mean(r):
        q = (1.0 - r) * (1.0 + r)
        total = constant + n_both * (-2 * log_root - 0.5 * math.log(q)) - (s_aa - 2 * r * s_ab + s_bb) / (2 * q)
        root = math.sqrt(q)
        total += special.log_ndtr((c_j - r * only_i) / root).sum() + special.log_ndtr((c_i - r * only_j) / root).sum()
        if n_none:
            total += n_none * math.log(max(float(compiled.orthant_probability(c_i, c_j, r)), 1e-300))
        return -total / n

    return negative_mean


def reference_rho(x_i, x_j, bias_i, scale_i, bias_j, scale_j):
    """Return the reference ``ρ̂`` of one pair: the pairwise censored likelihood's maximum, margins fixed."""
    from scipy import optimize

    if not (scale_i > 0 and scale_j > 0):
        return 0.0  # a coordinate with no positive value: nothing to say about ρ (the others give 0 too)
    negative_mean = pair_likelihood(x_i, x_j, bias_i, scale_i, bias_j, scale_j)
    result = optimize.minimize_scalar(negative_mean, bounds=(-REFERENCE_BOUND, REFERENCE_BOUND), method="bounded",
                                      options={"xatol": 1e-8})
    return float(result.x)


def fitted_rho(x, cuts):
    """Return ``ρ̂`` (d, d) of the product's fit ``ReLUGaussian(cuts=cuts).fit(x)``: 0 where a ``σ̂`` is 0, as the
    kernels give."""
    import dist_relu

    covariance = dist_relu.ReLUGaussian(cuts=cuts).fit(x).covariance_
    scale = np.sqrt(np.diag(covariance))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = covariance / np.outer(scale, scale)
    return np.where(np.isfinite(rho), rho, 0.0)


def mse(errors, mask):
    """Return the mean of ``errors[mask]``, or None where the mask is empty."""
    return float(np.mean(errors[mask])) if mask.any() else None


def one_run(kind, seed, d, n, reference_pairs):
    """Return the record of one truth kind and seed: every estimator's MSEs and their process times per pair."""
    from dist_relu import kernels, simulate

    weights, bias_true = truth(kind, d, seed)
    started = time.perf_counter()
    x = samples(n, weights, bias_true, seed)
    statistics = kernels.chunk_statistics(x)
    bias, scale, status = kernels.fit_coordinates(statistics)
    thresholds = np.maximum(0.0, bias)
    pilot = kernels.default_pilot_rows(n, d * 4)
    covariance = simulate.gram(weights)
    rho_true = covariance / np.sqrt(np.outer(np.diag(covariance), np.diag(covariance)))
    upper = np.triu_indices(d, 1)
    n_pairs = upper[0].size

    estimates, seconds, finite = {}, {}, {}
    estimates["default"], seconds["default"], coexceedances = default_rho(x, thresholds)
    for k in CUTS:
        estimates[f"K={k}"], seconds[f"K={k}"], finite[f"K={k}"] = cuts_rho(x, thresholds, bias, scale, k, pilot)

    chosen = np.sort(np.random.default_rng(seed).choice(n_pairs, size=min(reference_pairs, n_pairs), replace=False))
    start = time.process_time()
    reference = np.array([reference_rho(x[:, i], x[:, j], bias[i], scale[i], bias[j], scale[j])
                          for i, j in zip(upper[0][chosen], upper[1][chosen])])
    seconds["reference"] = time.process_time() - start

    positive_fraction = statistics[:, 1] / n
    frequent = positive_fraction >= MIN_POSITIVE_FRACTION
    pair_frequent = frequent[upper[0]] & frequent[upper[1]]
    in_subsample = np.zeros(n_pairs, dtype=bool)
    in_subsample[chosen] = True
    coexceeded = coexceedances[upper] > 0
    seen = positive_fraction > 0
    masks = {"all": np.ones(n_pairs, dtype=bool), "all seen": seen[upper[0]] & seen[upper[1]],
             "subsample": in_subsample,
             "all ≥5%": pair_frequent, "subsample ≥5%": in_subsample & pair_frequent,
             "all ≥5% co-exceeded": pair_frequent & coexceeded}
    for method, cuts in FIT_METHODS.items():
        estimates[method] = fitted_rho(x, cuts)
    squared = {method: (estimates[method][upper] - rho_true[upper]) ** 2 for method in SCOPES["all"]}
    squared["reference"] = np.full(n_pairs, np.nan)
    squared["reference"][chosen] = (reference - rho_true[upper][chosen]) ** 2
    errors = {scope: {method: mse(squared[method], masks[scope]) for method in methods}
              for scope, methods in SCOPES.items()}
    per_pair = {method: seconds[method] / (len(chosen) if method == "reference" else n_pairs) for method in METHODS}
    return {
        "kind": kind, "seed": seed, "d": d, "n": n, "pilot_rows": pilot, "pairs": n_pairs,
        "reference_pairs": [[int(upper[0][m]), int(upper[1][m])] for m in chosen],
        "pairs_in_scope": {scope: int(mask.sum()) for scope, mask in masks.items()},
        "coordinates_status_not_ok": int((status != kernels.STATUS_OK).sum()),
        "positive_fraction": {"min": float(positive_fraction.min()), "median": float(np.median(positive_fraction)),
                              "below_5%": int((~frequent).sum())},
        "finite_cuts_mean": {name: float(np.mean(values)) for name, values in finite.items()},
        "mse": errors,
        "process_seconds_per_pair": per_pair,
        "pairs_without_coexceedance": {"all": int((~coexceeded).sum()),
                                       "all ≥5%": int((pair_frequent & ~coexceeded).sum())},
        "subsample": {"truth": rho_true[upper][chosen].tolist(), "reference": reference.tolist(),
                      **{method: estimates[method][upper][chosen].tolist() for method in METHODS[:3]},
                      "both_≥5%": pair_frequent[chosen].tolist(),
                      "coexceedances": coexceedances[upper][chosen].astype(int).tolist()},
        "wall_seconds": time.perf_counter() - started,
    }


def summarise(runs):
    """Return per truth kind: mean MSEs per scope and method over the seeds, ratios of them, and mean times per pair."""
    summary = {}
    for kind in TRUTH_KINDS:
        mine = [run for run in runs if run["kind"] == kind]
        if not mine:
            continue
        mean_mse = {}
        for scope, methods in SCOPES.items():
            mean_mse[scope] = {}
            for method in methods:
                values = [run["mse"][scope][method] for run in mine if run["mse"][scope][method] is not None]
                mean_mse[scope][method] = float(np.mean(values)) if values else None
        ratios = {}
        for name, (scope, numerator, denominator) in RATIOS.items():
            top, bottom = mean_mse[scope][numerator], mean_mse[scope][denominator]
            ratios[name] = top / bottom if top is not None and bottom else None
        summary[kind] = {
            "seeds": len(mine),
            "mean_mse": mean_mse,
            "ratios": ratios,
            "reference_ratio_intervals": reference_intervals(mine),
            "pairs_without_coexceedance": {scope: int(sum(run["pairs_without_coexceedance"][scope] for run in mine))
                                           for scope in ("all", "all ≥5%")},
            "seeds_with_subsample_≥5%_pairs": sum(run["mse"]["subsample ≥5%"]["default"] is not None
                                                  for run in mine),
            "mean_pairs_in_scope": {scope: float(np.mean([run["pairs_in_scope"][scope] for run in mine]))
                                    for scope in SCOPES},
            "mean_process_seconds_per_pair": {method: float(np.mean([run["process_seconds_per_pair"][method]
                                                                    for run in mine])) for method in METHODS},
        }
    return summary


def reference_intervals(runs):
    """Return, per ratio against the reference, its pooled value and bootstrap interval over the subsample's pairs.

    The (seed, pair) units of the subsample (those with both coordinates ≥5%
    positive, for the ≥5% ratios) are pooled and resampled with replacement,
    the same units for both methods of a ratio (``BOOTSTRAP``): the ratio of
    the mean squared errors, and its percentiles.
    """
    rng = np.random.default_rng(BOOTSTRAP["seed"])
    squared = {method: np.concatenate([(np.array(run["subsample"][method]) - run["subsample"]["truth"]) ** 2
                                       for run in runs]) for method in METHODS}
    frequent = np.concatenate([run["subsample"]["both_≥5%"] for run in runs]).astype(bool)
    out = {}
    for name, (scope, numerator, denominator) in RATIOS.items():
        if denominator != "reference":
            continue
        keep = frequent if scope.endswith("≥5%") else np.ones(frequent.size, dtype=bool)
        top, bottom = squared[numerator][keep], squared[denominator][keep]
        if not bottom.size or not bottom.sum() > 0:
            out[name] = None
            continue
        draws = rng.integers(0, top.size, size=(BOOTSTRAP["resamples"], top.size))
        ratios = top[draws].sum(axis=1) / bottom[draws].sum(axis=1)
        low, high = np.quantile(ratios, BOOTSTRAP["levels"])
        out[name] = {"pooled": float(top.sum() / bottom.sum()), "low": float(low), "high": float(high),
                     "pairs": int(top.size)}
    return out


def warm_up():
    """Compile (or load from numba's cache) every kernel once, on a tiny block, so that no timing pays for it."""
    from dist_relu import kernels

    weights, bias = truth("low-rank clipped", 4, 0)
    x = samples(2_000, weights, bias, 0)
    fitted, scale, _ = kernels.fit_coordinates(kernels.chunk_statistics(x))
    thresholds = np.maximum(0.0, fitted)
    default_rho(x, thresholds)
    cuts_rho(x, thresholds, fitted, scale, 3, 2_000)
    fitted_rho(x, 3)
    reference_rho(x[:, 0], x[:, 1], fitted[0], scale[0], fitted[1], scale[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0 .. SEEDS − 1 per truth kind")
    parser.add_argument("--reference-pairs", type=int, default=40, help="pairs a seed fitted by the reference")
    steps.add_result_options(parser, "d = 10, n = 5·10⁴, seeds 0..1, 10 reference pairs")
    args = parser.parse_args()
    if steps.replotted(args, plot):
        return
    if args.quick:
        args.d, args.n, args.seeds, args.reference_pairs = 10, 50_000, 2, 10

    import scipy

    import dist_relu

    load_before = os.getloadavg()
    fingerprint_before = package_fingerprint()
    started = time.perf_counter()
    warm_up()
    runs = []
    for kind in TRUTH_KINDS:
        for seed in range(args.seeds):
            run = one_run(kind, seed, args.d, args.n, args.reference_pairs)
            runs.append(run)
            e = run["mse"]
            print(f"{kind:>18} seed {seed}: MSE all: default {e['all']['default']:.3g}, K=3 {e['all']['K=3']:.3g}, "
                  f"K=5 {e['all']['K=5']:.3g}; subsample reference {e['subsample']['reference']:.3g} "
                  f"(default {e['subsample']['default']:.3g}, K=5 {e['subsample']['K=5']:.3g}); "
                  f"{run['wall_seconds']:.1f} s", flush=True)

    record = {
        "benchmark": "cuts_accuracy",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "level": "kernels, with the margins and thresholds of all the samples; and the product's fits "
                 "(ReLUGaussian(cuts=K).fit(x): thresholds and cut points from its pilot)",
        "d": args.d, "n": args.n, "seeds": list(range(args.seeds)), "reference_pairs": args.reference_pairs,
        "truth_kinds": {
            "figure1 clipped": f"figure1_truth(d, kappa={KAPPA}, seed, bias='clipped')",
            "figure1 gaussian": f"figure1_truth(d, kappa={KAPPA}, seed, bias='gaussian')",
            "low-rank clipped": f"rng = default_rng(seed); W = rng.standard_normal((d, {RANK})), "
                                "b = max(0, rng.standard_normal(d))",
            "low-rank gaussian": f"rng = default_rng(seed); W = rng.standard_normal((d, {RANK})), "
                                 "b = rng.standard_normal(d)",
        },
        "samples": f"float32, kernels.relu_gaussian_chunk in pieces of at most {PIECE_ROWS:,} rows, chunk index = "
                   "piece number, seed = the truth's seed",
        "cuts": list(CUTS), "min_positive_fraction": MIN_POSITIVE_FRACTION,
        "reference": "pairwise censored-normal likelihood in ρ, margins fixed at the fitted (b̂, σ̂); "
                     f"minimize_scalar bounded (±{REFERENCE_BOUND}), xatol 1e-8; pairs: "
                     "default_rng(seed).choice(pairs, reference_pairs, replace=False)",
        "methods": list(METHODS), "scopes": {scope: list(methods) for scope, methods in SCOPES.items()},
        "ratio_definitions": {name: f"mean MSE {top} / mean MSE {bottom} ({scope})"
                              for name, (scope, top, bottom) in RATIOS.items()},
        "timing": "process_time of correlation_block (K=3, K=5), covariance_block (default) and the reference's "
                  "maximisations, divided by the pairs they fitted",
        "target_ratio": TARGET_RATIO,
        "bootstrap": {**BOOTSTRAP, "units": "the subsample's (seed, pair) units, pooled (≥5% ratios: those pairs)"},
        "machine": steps.machine(load_before, cpu=steps.cpu_model()),
        "package_sources_sha256": {"before": fingerprint_before, "after": package_fingerprint()},
        "dist_relu_path": os.path.dirname(dist_relu.__file__),
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "scipy": scipy.__version__},
        "runs": runs,
        "summary": summarise(runs),
    }
    steps.write_results(record, args.out, "cuts_accuracy_quick" if args.quick else "cuts_accuracy", print_table, plot)


def _format(value, spec=".3g"):
    return "—" if value is None else format(value, spec)


def print_table(record):
    print(f"\nd = {record['d']}, n = {record['n']:,}, seeds {record['seeds'][0]}..{record['seeds'][-1]}, "
          f"{record['reference_pairs']} reference pairs a seed; mean over seeds of the MSE of ρ̂ (i < j)")
    for scope, methods in SCOPES.items():
        print(f"\n{scope:<16}" + "".join(f"{method:>12}" for method in methods) + f"{'pairs a seed':>14}")
        for kind, s in record["summary"].items():
            print(f"{kind:<16}" + "".join(f"{_format(s['mean_mse'][scope][method]):>12}" for method in methods)
                  + f"{s['mean_pairs_in_scope'][scope]:>14.1f}")
    for title, names in (("all pairs (reference: its subsample)", [n for n in RATIOS if "≥5%" not in n]),
                         ("pairs of coordinates both ≥5% positive", [n for n in RATIOS if "≥5%" in n])):
        print(f"\nratios of mean MSEs, {title}")
        print(f"{'':<18}" + "".join(f"{name:>{max(12, len(name) + 2)}}" for name in names))
        for kind, s in record["summary"].items():
            print(f"{kind:<18}" + "".join(f"{_format(s['ratios'][name], '.3f'):>{max(12, len(name) + 2)}}"
                                          for name in names))
    levels = "–".join(f"{100 * level:g}%" for level in record["bootstrap"]["levels"])
    print(f"\nratios against the reference, pooled over the subsample's pairs, with {levels} bootstrap intervals")
    names = [name for name in RATIOS if RATIOS[name][2] == "reference"]
    print(f"{'':<18}" + "".join(f"{name:>26}" for name in names))
    for kind, s in record["summary"].items():
        cells = []
        for name in names:
            entry = s["reference_ratio_intervals"][name]
            cells.append("—" if entry is None else f"{entry['pooled']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]")
        print(f"{kind:<18}" + "".join(f"{cell:>26}" for cell in cells))
    print("\npairs without any co-exceedance of the thresholds, over all seeds:")
    for kind, s in record["summary"].items():
        print(f"  {kind}: {s['pairs_without_coexceedance']['all']} of all pairs, "
              f"{s['pairs_without_coexceedance']['all ≥5%']} of those both ≥5% positive")
    print("\nprocess seconds per pair (µs): default = covariance_block, K = correlation_block, reference = its "
          "maximisation")
    print(f"{'':<18}" + "".join(f"{method:>12}" for method in METHODS))
    for kind, s in record["summary"].items():
        print(f"{kind:<18}" + "".join(f"{1e6 * s['mean_process_seconds_per_pair'][method]:>12.1f}"
                                      for method in METHODS))


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = record["summary"]
    kinds = list(summary)
    x = np.arange(len(kinds))
    fig, (ax_all, ax_frequent, ax_mse) = plt.subplots(1, 3, figsize=(17, 5.2))
    frequent = ("K=5/default ≥5%", "K=3/default ≥5%", "K=5/reference ≥5%", "default/reference ≥5%",
                "K=5/default ≥5% co-exceeded")
    panels = ((ax_all, ("K=5/default", "K=3/default", "fit K=5/fit default", "K=5/default seen", "K=5/reference",
                        "K=3/reference", "default/reference"),
               "all pairs (reference ratios: its subsample)"),
              (ax_frequent, frequent, "pairs of coordinates both ≥ 5% positive (reference ratios: its subsample)"))
    colours = {"K=5/default": "#1f77b4", "K=3/default": "#aec7e8", "K=5/reference": "#2ca02c",
               "K=3/reference": "#98df8a", "default/reference": "#d62728"}
    for ax, names, title in panels:
        width = 0.8 / len(names)
        for m, name in enumerate(names):
            heights = [summary[kind]["ratios"][name] or np.nan for kind in kinds]
            bars = ax.bar(x + (m - (len(names) - 1) / 2) * width, heights, width,
                          color=colours.get(name.removesuffix(" ≥5%"), "#17becf"), label=name)
            for bar, height in zip(bars, heights):
                if np.isfinite(height):  # a bar beyond the axis is drawn to its top, its value written there
                    cut = height > RATIO_AXIS_TOP
                    ax.annotate(f"{height:.2f}", (bar.get_x() + width / 2, min(height, RATIO_AXIS_TOP)),
                                ha="center", va="top" if cut else "bottom", fontsize=6, rotation=90 if cut else 0,
                                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1} if cut else None)
        ax.axhline(record.get("target_ratio", TARGET_RATIO), color="k", ls="--", lw=1,
                   label=f"{record.get('target_ratio', TARGET_RATIO)}")
        ax.axhline(1.0, color="#888888", lw=0.8)
        ax.set_xticks(x, [kind.replace(" ", "\n", 1) for kind in kinds], fontsize=8)
        ax.set_ylim(0, RATIO_AXIS_TOP * 1.05)
        ax.set_ylabel(f"ratio of mean MSEs of ρ̂ (axis cut at {RATIO_AXIS_TOP:g})")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    width = 0.2
    for m, method in enumerate(METHODS):
        heights = [summary[kind]["mean_mse"]["subsample"][method] for kind in kinds]
        ax_mse.bar(x + (m - 1.5) * width, heights, width, color=("#d62728", "#aec7e8", "#1f77b4", "#7f7f7f")[m],
                   label=method)
    ax_mse.set_yscale("log")
    ax_mse.set_xticks(x, [kind.replace(" ", "\n", 1) for kind in kinds], fontsize=8)
    ax_mse.set_ylabel("mean MSE of ρ̂ over seeds")
    ax_mse.set_title("mean MSE on the reference's pairs (all four on the same pairs)", fontsize=9)
    ax_mse.legend(fontsize=7)
    fig.suptitle(f"ρ̂ from K cut points (polychoric) vs one threshold (tetrachoric) vs the pairwise censored "
                 f"likelihood: d = {record['d']}, n = {record['n']:,}, {len(record['seeds'])} seeds, "
                 f"{record['reference_pairs']} reference pairs a seed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
