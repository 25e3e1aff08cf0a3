"""How much of a censored margin's information on ``ρ`` its cut points keep, at ``ρ = 0``: a calculation.

At ``ρ = 0`` the information on ``ρ`` of a pair's table is the product of a
quantity per margin, ``A = Σ_cat p_cat · E[z | cat]²`` over the margin's
categories (the derivative of the cell probabilities in ``ρ`` at ``ρ = 0`` is
``(φ(h_a) − φ(h_(a+1)))(φ(h_b) − φ(h_(b+1)))``, and ``E[z | cat] = (φ(h_a) −
φ(h_(a+1)))/p_cat``). For the censored values themselves, ``z`` seen above
the censoring point ``u = −b/σ`` and only ``z ≤ u`` below it, the same
quantity is ``A_ref = ∫_u^∞ z² φ(z) dz + φ(u)²/Φ(u)``. So ``A_ref/A`` per
margin, and its product over a pair's two margins, is the factor by which
the variance of ``ρ̂`` from the table exceeds that of the pairwise censored
likelihood at ``ρ = 0`` (margins known).

For margins ``b/σ`` in ``--biases`` and ``K`` in ``(3, 5)``, with the cut
points in the model's standard units:

- ``threshold first``: the threshold ``t = max(0, b)`` and ``K − 1`` quantiles
  of the values above it at levels ``a/K`` (the rule before 0 was a cut
  point below a positive threshold);
- ``kernels.cut_points``: the fit's rule, 0 below a positive threshold, then
  the threshold, then quantiles above it (at ``b ≤ 0`` the same as above);
- ``best``: the ``K`` cut points at or above ``u`` that maximise ``A``
  (Nelder–Mead from equal-probability cut points of the positive part).

The rules' quantiles are those of the model's law, as a large pilot would
give. Results go to ``benchmarks/results/cut_information.{json,png}``.

    python benchmarks/cut_information.py
    python benchmarks/cut_information.py --plot-only benchmarks/results/cut_information.json
"""

import argparse
import datetime
import os

import numpy as np

import steps

RULES = ("threshold first", "kernels.cut_points", "best")
BIASES = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
CUTS = (3, 5)


def reference_information(u):
    """Return ``A_ref`` of a margin censored at ``u``: ``∫_u^∞ z² φ + φ(u)²/Φ(u)``."""
    from scipy import stats

    return (stats.norm.sf(u) + u * stats.norm.pdf(u)) + stats.norm.pdf(u) ** 2 / stats.norm.cdf(u)


def table_information(points):
    """Return ``A = Σ p · E[z | cat]²`` of the categories that the cut points (standard units) make."""
    from scipy import stats

    edges = np.concatenate([[-np.inf], np.sort(points), [np.inf]])
    probability = stats.norm.cdf(edges[1:]) - stats.norm.cdf(edges[:-1])
    density = stats.norm.pdf(edges[:-1]) - stats.norm.pdf(edges[1:])
    used = probability > 0
    return float(np.sum(density[used] ** 2 / probability[used]))


def rule_points(bias, cuts, rule):
    """Return a rule's ``cuts`` cut points in standard units ``h = (c − b)/σ`` for a margin with ``b/σ = bias``."""
    from scipy import optimize, stats

    u, t = -bias, max(0.0, -bias)  # the censoring point and the threshold max(0, b), in standard units
    above = stats.norm.cdf(t)

    def quantiles(count):  # levels a/(count + 1) of the law above the threshold
        return list(stats.norm.ppf(above + (1 - above) * np.arange(1, count + 1) / (count + 1)))

    if rule == "threshold first":
        return np.array([t] + quantiles(cuts - 1))
    if rule == "kernels.cut_points":
        low = [u] if bias > 0 else []
        return np.array(low + [t] + quantiles(cuts - 1 - len(low)))
    start = stats.norm.ppf(stats.norm.cdf(u) + stats.norm.sf(u) * np.arange(1, cuts) / cuts)
    found = optimize.minimize(lambda h: -table_information(np.concatenate([[u], np.maximum(h, u)])), start,
                              method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-13, "maxiter": 20_000})
    return np.concatenate([[u], np.sort(np.maximum(found.x, u))])


def study():
    rows = []
    for bias in BIASES:
        for cuts in CUTS:
            reference = reference_information(-bias)
            for rule in RULES:
                points = rule_points(bias, cuts, rule)
                ratio = reference / table_information(points)
                rows.append({"bias": bias, "cuts": cuts, "rule": rule, "points": points.tolist(),
                             "variance_ratio_margin": ratio, "variance_ratio_pair": ratio ** 2})
    return rows


def print_table(record):
    print("A_ref/A per margin (a pair of two such margins: its square)")
    print(f"{'b/σ':>6} {'K':>2} " + " ".join(f"{rule:>20}" for rule in RULES))
    for bias in record["biases"]:
        for cuts in record["cuts"]:
            values = {row["rule"]: row["variance_ratio_margin"] for row in record["rows"]
                      if row["bias"] == bias and row["cuts"] == cuts}
            print(f"{bias:6.2f} {cuts:2d} " + " ".join(f"{values[rule]:20.4f}" for rule in RULES))


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(record["cuts"]), figsize=(10, 4), sharey=True)
    for ax, cuts in zip(np.atleast_1d(axes), record["cuts"]):
        for rule in RULES:
            mine = [row for row in record["rows"] if row["cuts"] == cuts and row["rule"] == rule]
            ax.plot([row["bias"] for row in mine], [row["variance_ratio_margin"] for row in mine], "o-", label=rule)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"K = {cuts}")
        ax.set_xlabel("b/σ of the margin")
    np.atleast_1d(axes)[0].set_ylabel("variance of ρ̂ / censored likelihood's, per margin, at ρ = 0")
    np.atleast_1d(axes)[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    steps.add_result_options(parser, "the same calculation (it takes a few seconds)")
    args = parser.parse_args()
    if steps.replotted(args, plot):
        return
    load = os.getloadavg()
    before = steps.package_fingerprint()
    rows = study()
    record = {"benchmark": "cut_information", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "biases": list(BIASES), "cuts": list(CUTS), "rules": list(RULES), "rows": rows,
              "machine": steps.machine(load),
              "package_sources_sha256": {"before": before, "after": steps.package_fingerprint()}}
    steps.write_results(record, args.out, "cut_information", print_table, plot)


if __name__ == "__main__":
    main()
