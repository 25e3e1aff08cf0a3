"""Math kernels: numpy and scipy only, one chunk or one block at a time.

Nothing here imports dask. Every function takes and returns plain arrays, so each
can be tested on its own against formulas and scipy (``tests/test_kernels.py``);
``graph.py`` decides which kernel runs on which blocks.

Notation follows ``docs/design.md``: a sample is ``x = max(0, y)``, ``y ~ N(b, Σ)``;
per coordinate ``n0`` zeros, ``n1`` positives, ``S1 = Σ_{x>0} x``,
``S2 = Σ_{x>0} x²``; thresholds ``t``; co-exceedance counts ``C = Iᵀ I`` with
``I = (X > t)``.
"""

from typing import NamedTuple

import numpy as np
from scipy import special

# Column order of a sufficient-statistics array of shape (d, 4).
STATISTICS = ("n_zero", "n_positive", "sum_positive", "sum_sq_positive")

# The sums S1 and S2 are kept in units of 2**e per column (``statistics_exponents``): e = 0 while the
# pilot's largest value lies in [2**-UNIT_WINDOW, 2**UNIT_WINDOW], where n·x² can neither overflow nor
# underflow float64; beyond it, e scales that value into [1/2, 1).
UNIT_WINDOW = 256
# |e| at most this: 2**-e is then a normal float64, one exact multiplier.
MAX_UNIT_EXPONENT = 1000

# Per-coordinate status codes (docs/design.md §2, footnote 3 of the paper).
STATUS_OK = 0
STATUS_FEW_POSITIVES = 1  # fewer positive values than min_positives(method): estimates and errors unreliable
STATUS_ALL_ZERO = 2  # no positive value: σ̂ = 0 and b̂ ≤ 0 is unidentifiable (reported as 0)
STATUS_CONSTANT = 3  # one positive value repeated in every sample: σ̂ = 0, b̂ = that value
STATUS_NOT_CONVERGED = 4  # the likelihood maximisation did not converge
STATUS_UNDETERMINED = 5  # b̂ and σ̂ estimated, but most of its correlations have no usable information
STATUS_NOT_NORMAL = 6  # its positive values do not look like the fitted censored normal (the model check)
STATUS_NAMES = {
    STATUS_OK: "ok",
    STATUS_FEW_POSITIVES: "few positives",
    STATUS_ALL_ZERO: "all zero",
    STATUS_CONSTANT: "constant",
    STATUS_NOT_CONVERGED: "not converged",
    STATUS_UNDETERMINED: "undetermined correlations",
    STATUS_NOT_NORMAL: "not censored normal",
}
# Below these many positive values, a coordinate's nominal 95% intervals were measured to cover its b, σ and
# Σ_ii less often than 93% of the time (benchmarks/README.md, "Coverage of the standard errors"): the censored
# likelihood's from about 100 positives up, the truncated one's, which sees the positives alone, from 1,000.
MIN_POSITIVES = {"censored": 100, "truncated": 1000}


def min_positives(method):
    """Return the positive values below which a coordinate fitted by ``method`` has the status "few positives"."""
    return MIN_POSITIVES[method]

# float32 sums of 0/1 products are exact up to 2**24 (the float32 mantissa).
_EXACT_FLOAT32_ROWS = 2**24


# --------------------------------------------------------------------------
# One chunk of samples
# --------------------------------------------------------------------------


def finite_rows(x):
    """Return a ``(rows,)`` boolean: which rows of ``x`` hold no NaN or ±inf."""
    return np.isfinite(x).all(axis=1)


def chunk_statistics(x, keep=None, exponents=None):
    """Return the sufficient statistics ``(n0, n1, S1, S2)`` of each column of ``x``.

    Parameters
    ----------
    x : ndarray, shape (rows, d)
        A chunk of samples.
    keep : ndarray of bool, shape (rows,), optional
        The rows to count (``finite_rows``); all by default.
    exponents : ndarray of int, shape (d,), optional
        ``S1`` and ``S2`` are sums of ``x·2**-e`` and its square
        (``statistics_exponents``); 0 by default.

    Returns
    -------
    ndarray, shape (d, 4), float64
        Columns in the order of ``STATISTICS``. Additive over row chunks: the
        statistics of a stack of chunks are the sum of theirs.
    """
    if keep is not None:
        x = x[keep]
    positive = x > 0
    values = np.where(positive, x, 0).astype(np.float64, copy=False)
    if exponents is not None:
        values = values * unit_multipliers(exponents)
    n1 = positive.sum(axis=0, dtype=np.int64)
    out = np.empty((x.shape[1], 4), dtype=np.float64)
    out[:, 0] = x.shape[0] - n1
    out[:, 1] = n1
    out[:, 2] = values.sum(axis=0)
    out[:, 3] = np.einsum("ij,ij->j", values, values)
    return out


def chunk_largest_values(x):
    """Return ``(d,)`` float64: the largest finite positive value of each column of ``x`` (0 where none)."""
    # fmax passes over NaN; a reduction makes no temporary the size of the chunk.
    largest = np.fmax.reduce(x, axis=0, initial=0).astype(np.float64)
    for j in np.flatnonzero(np.isinf(largest)):  # rare: +inf is refused unless rows holding it are dropped
        column = x[:, j]
        largest[j] = column[np.isfinite(column)].max(initial=0)
    return largest


def statistics_exponents(largest):
    """Return ``(d,)`` int64 exponents ``e``: the statistics sum ``x·2**-e``, whose squares stay in float64's range.

    ``largest`` is each column's largest value in the pilot
    (``chunk_largest_values``). ``e = 0`` where it is 0 or within
    ``2**±UNIT_WINDOW``, so that ordinary data are summed as they are;
    elsewhere ``e`` is its binary exponent (``frexp``), at most
    ``MAX_UNIT_EXPONENT`` in size. Multiplying by a power of two is exact,
    so the sums are those of the data in other units, to the bit.
    """
    largest = np.asarray(largest, dtype=np.float64)
    exponents = np.clip(np.frexp(largest)[1], -MAX_UNIT_EXPONENT, MAX_UNIT_EXPONENT).astype(np.int64)
    ordinary = (largest == 0) | ((largest >= 2.0**-UNIT_WINDOW) & (largest <= 2.0**UNIT_WINDOW))
    return np.where(ordinary, 0, exponents)


def unit_multipliers(exponents):
    """Return ``(d,)`` float64 ``2**-e``: what each value is multiplied by before it is summed."""
    return np.ldexp(1.0, -np.asarray(exponents, dtype=np.int64))


def positive_moments(x, keep=None, exponents=None):
    """Return ``(Σ x³, Σ x⁴)`` over the positive values of each column (d, 2), in units ``2**exponents``.

    The reference of the fused pass's ``moments`` (``compiled.chunk_pass``), for the model check.
    """
    x = np.asarray(x, dtype=np.float64)
    if keep is not None:
        x = x[np.asarray(keep, dtype=bool)]
    multipliers = np.ones(x.shape[1]) if exponents is None else unit_multipliers(exponents)
    positive = np.where(x > 0, x, 0.0) * multipliers
    return np.stack([(positive**3).sum(axis=0), (positive**4).sum(axis=0)], axis=1)


def _rescaled(sums, exponents, target, powers):
    """Return ``sums`` (..., d, k) with column ``c`` multiplied by ``2**(powers[c]·(e − target))``, exactly."""
    shift = np.asarray(exponents, dtype=np.int64) - np.asarray(target, dtype=np.int64)
    out = np.array(sums, dtype=np.float64)
    for column, power in enumerate(powers):
        if power:
            out[..., column] = np.ldexp(out[..., column], power * shift)
    return out


def rescaled_moments(moments, exponents, target):
    """Return ``positive_moments`` (d, 2) in units ``2**target``: ``Σ x³`` times ``2**3(e − target)``, ``Σ x⁴`` ``2**4(...)``."""
    return _rescaled(moments, exponents, target, (3, 4))


def rescaled_statistics(statistics, exponents, target):
    """Return ``statistics`` (..., d, 4) in units ``2**target`` instead of ``2**exponents``.

    ``S1`` is multiplied by ``2**(e − target)`` and ``S2`` by its square:
    exact, unless a sum falls below float64's normal range (only a sum
    negligible beside those in ``target``'s units can). With ``target ==
    exponents`` the bits are unchanged.
    """
    return _rescaled(statistics, exponents, target, (0, 0, 1, 2))


def nonfinite_per_row(block):
    """Return ``(rows,)`` int64: how many NaN or ±inf values each row of ``block`` holds."""
    return (~np.isfinite(block)).sum(axis=1, dtype=np.int64)


def chunk_value_problems(x, keep=None):
    """Return ``(d, 2)`` int64 counts per column of values a ReLU cannot produce: negatives, and NaN or ±inf."""
    if keep is not None:
        x = x[keep]
    out = np.empty((x.shape[1], 2), dtype=np.int64)
    out[:, 0] = (x < 0).sum(axis=0)
    out[:, 1] = (~np.isfinite(x)).sum(axis=0)
    return out


def exceedance_indicators(x, thresholds, keep=None):
    """Return the 0/1 indicator ``x > thresholds`` of the kept rows as float32 (ready for exact GEMM)."""
    if keep is not None:
        x = x[keep]
    return (x > thresholds).astype(np.float32)


def count_dtype(rows):
    """Return the narrowest unsigned integer type that holds every count of ``rows`` rows exactly.

    A chunk's partial counts travel between worker processes on a cluster:
    in ``uint16`` (up to 65,535 rows) they are a quarter of the bytes of int64.
    """
    for dtype in (np.uint16, np.uint32):
        if rows <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def coexceedance_partial(indicators_i, indicators_j):
    """Return the exact integer count block ``Iᵢᵀ Iⱼ`` of two indicator blocks.

    Parameters
    ----------
    indicators_i, indicators_j : ndarray, shapes (rows, d_i) and (rows, d_j)
        0/1 float32 indicators of the same rows, two column blocks.

    Returns
    -------
    ndarray, shape (d_i, d_j), int64
        ``C[k, l] = #{m : I[m, k] = 1 and J[m, l] = 1}``.

    Notes
    -----
    numpy's integer matmul does not use BLAS; float32 GEMM of 0/1 values is
    ~100x faster and exact while every partial sum stays below 2**24, so
    longer row blocks are cut into pieces of at most 2**24 rows.
    """
    rows = indicators_i.shape[0]
    out = np.zeros((indicators_i.shape[1], indicators_j.shape[1]), dtype=np.int64)
    for start in range(0, rows, _EXACT_FLOAT32_ROWS):
        stop = start + _EXACT_FLOAT32_ROWS
        out += (indicators_i[start:stop].T @ indicators_j[start:stop]).astype(np.int64)
    return out


# A coordinate gets a cut point above its threshold only for every this many of the pilot's values above it,
# so that each category above the threshold holds about this many of the pilot's rows at least.
CUT_MIN_PER_CATEGORY = 20


def cut_points(values, thresholds, cuts, min_per_category=CUT_MIN_PER_CATEGORY):
    """Return ``(d, cuts)`` cut points per column, increasing: 0 below a positive threshold, the threshold, then
    quantiles of its values above it.

    ``values`` are the pilot's rows, ``(rows, d)``, or a list of blocks of
    them (so that a pilot of many chunks is never copied whole); non-finite
    values are left out. ``thresholds`` ``(d,)`` are not negative. With
    ``cuts > 1``, a column whose threshold is above 0 and that has at least
    ``min_per_category`` values in ``(0, t]`` gets 0 as its first cut point:
    a value's being positive at all is the most telling split below the
    threshold (the censored part of the margin), and the threshold alone
    would lump those values with the zeros. The threshold is always a cut
    point. Then, with ``m_j`` values above the threshold and ``r`` cut points
    left, column ``j`` gets ``min(r, max(0, m_j // min_per_category − 1))``
    more: the values at the levels ``a/(k + 1)`` (``a = 1 … k``) of those
    above the threshold (the lower quantiles: each cut point is a value
    seen), each once. Columns with fewer, whether from few values or from
    ties, are filled with ``+inf``: no value exceeds it, so its category is
    empty and carries nothing. ``finite_cuts`` counts each column's.
    """
    blocks = values if isinstance(values, (list, tuple)) else [values]
    thresholds = np.asarray(thresholds, dtype=np.float64)
    points = np.full((thresholds.size, cuts), np.inf)
    for j, threshold in enumerate(thresholds):
        columns = [np.asarray(block[:, j], dtype=np.float64) for block in blocks]  # a column at a time
        low = cuts > 1 and threshold > 0 and \
            sum(np.count_nonzero((column > 0) & (column <= threshold)) for column in columns) >= min_per_category
        above = np.concatenate([column[(column > threshold) & (column < np.inf)] for column in columns])
        start = 1 + int(low)
        wanted = min(cuts - start, max(0, above.size // min_per_category - 1))
        points[j, :start] = (0.0, threshold) if low else (threshold,)
        if wanted > 0:
            ranks = np.floor(np.arange(1, wanted + 1) / (wanted + 1) * (above.size - 1)).astype(np.int64)
            chosen = np.unique(np.partition(above, ranks)[ranks])  # the order statistics, without a whole sort
            points[j, start:start + chosen.size] = chosen
    return points


def finite_cuts(points):
    """Return how many finite cut points each column of ``cut_points`` has."""
    return np.isfinite(points).sum(axis=1)


# The most the default pilot holds in memory (its chunks wait for the thresholds, see plan.plan_fit).
PILOT_BYTES = 64 * 2**20


def default_pilot_rows(n_rows, row_bytes):
    """Return the pilot's default size: a twentieth of the rows, at least 10,000 and at most 100,000.

    At large ``d`` it is fewer, so that the pilot's rows (``row_bytes`` each)
    hold at most ``PILOT_BYTES``, and at least 1,000 rows: at d = 4096 in
    float32, 4,096 rows. The thresholds need few rows (they affect only the
    variance), and this depends on ``d``, never on the chunking.
    """
    return int(min(n_rows, 100_000, max(10_000, n_rows // 20), max(1_000, PILOT_BYTES // row_bytes)))


LATENT_LAWS = ("gaussian", "uniform", "t3", "sparse")


def draw_latents(rng, rows, k, law="gaussian"):
    """Return ``rows × k`` latents: standard normal, uniform on [−1, 1], Student t₃, or Bernoulli(0.3) × normal."""
    if law == "gaussian":
        return rng.standard_normal((rows, k))
    if law == "uniform":
        return rng.uniform(-1.0, 1.0, (rows, k))
    if law == "t3":
        return rng.standard_t(3, (rows, k))
    if law == "sparse":
        return (rng.random((rows, k)) < 0.3) * rng.standard_normal((rows, k))
    raise ValueError(f"latent must be one of {', '.join(LATENT_LAWS)}; got {law!r}")


def relu_gaussian_chunk(rows, weights, bias, seed, chunk_index, dtype=np.float32, mixing=None, noise=0.0,
                        latent="gaussian"):
    """Return ``rows`` samples ``ReLU(W z + b)`` drawn from a generator seeded by ``(seed, chunk_index)``.

    Seeding by the chunk's index makes the data independent of which worker
    draws which chunk, and of the order they run in. With ``mixing`` ``A``
    (d × p), the samples are ``A ReLU(W z + b)`` (the two-layer model); with
    ``noise`` σ, ``N(0, σ² I)`` is added, drawn after ``z`` from the same
    generator (so the noiseless draws are the same). ``latent`` other than
    "gaussian" draws ``z`` from another law (``draw_latents``): Mazumdar and
    Rawat's random-bias model ``ReLU(A c + b)``, with ``weights`` as ``A``.
    """
    rng = np.random.default_rng([seed, chunk_index])
    z = draw_latents(rng, rows, weights.shape[1], latent)
    samples = np.maximum(0.0, z @ weights.T + bias)
    if mixing is not None:
        samples = samples @ mixing.T
    if noise:
        samples += noise * rng.standard_normal(samples.shape)
    return samples.astype(dtype)


# --------------------------------------------------------------------------
# Step 1: per-coordinate bias and scale from (n0, n1, S1, S2)
# --------------------------------------------------------------------------


def _log_ndtr_derivatives(v):
    """Return ``log Φ(v)`` and its first two derivatives, stable in both tails."""
    log_cdf = special.log_ndtr(v)
    mills = np.exp(-0.5 * v * v - 0.5 * np.log(2 * np.pi) - log_cdf)  # φ(v)/Φ(v)
    return log_cdf, mills, -mills * (v + mills)


def _likelihood(gamma, tau, cut, w_cens, sign, w1, s1, s2):
    """Per-sample log-likelihood, gradient and Hessian in Olsen's ``(γ, τ)``.

    ``ℓ = w_cens·log Φ(sign·(cut·τ − γ)) + w1·log τ − ½(τ² s2 − 2τγ s1 + w1 γ²)``:
    censored normal with ``(w_cens, sign) = (n0/n, +1)``, truncated with
    ``(−n1/n, −1)``; ``cut`` is the censoring point in the standardised units.
    """
    u = sign * (cut * tau - gamma)
    log_cdf, d1, d2 = _log_ndtr_derivatives(u)
    value = w_cens * log_cdf + w1 * np.log(tau) - 0.5 * (tau**2 * s2 - 2 * tau * gamma * s1 + w1 * gamma**2)
    g_gamma = -w_cens * sign * d1 + tau * s1 - w1 * gamma
    g_tau = cut * w_cens * sign * d1 + w1 / tau - tau * s2 + gamma * s1
    h_gg = w_cens * d2 - w1
    h_gt = -cut * w_cens * d2 + s1
    h_tt = cut**2 * w_cens * d2 - w1 / tau**2 - s2
    return value, g_gamma, g_tau, h_gg, h_gt, h_tt


def _maximise(cut, w_cens, sign, w1, s1, s2, max_iter=100, tol=1e-11):
    """Return ``(γ, τ, converged)``: damped Newton ascent, vectorised over coordinates."""
    gamma = np.zeros_like(cut)
    tau = np.ones_like(cut)
    active = np.ones(cut.shape, dtype=bool)
    converged = np.zeros(cut.shape, dtype=bool)
    args = lambda m: (cut[m], w_cens[m], sign, w1[m], s1[m], s2[m])  # noqa: E731
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        g, t = gamma[idx], tau[idx]
        value, gg, gt, hgg, hgt, htt = _likelihood(g, t, *args(idx))
        det = hgg * htt - hgt**2
        step_g = -(htt * gg - hgt * gt) / det
        step_t = -(hgg * gt - hgt * gg) / det
        # Where the Hessian is not negative definite numerically, take a gradient step.
        bad = ~(det > 0) | ~(hgg < 0)
        step_g = np.where(bad, gg, step_g)
        step_t = np.where(bad, gt, step_t)
        alpha = np.ones_like(g)
        for _halving in range(60):
            new_g, new_t = g + alpha * step_g, t + alpha * step_t
            ok = new_t > 0
            new_value = np.full_like(g, -np.inf)
            new_value[ok] = _likelihood(new_g[ok], new_t[ok], *args(idx[ok]))[0]
            accept = new_value >= value - 1e-15 * np.abs(value)
            if accept.all():
                break
            alpha = np.where(accept, alpha, alpha / 2)
        gamma[idx] = np.where(accept, new_g, g)
        tau[idx] = np.where(accept, new_t, t)
        size = np.abs(alpha * step_g) + np.abs(alpha * step_t) / t
        done = accept & (size < tol)
        converged[idx[done]] = True
        active[idx[done | ~accept]] = False
    return gamma, tau, converged


def fit_coordinates(statistics, method="censored", exponents=None):
    """Return ``(bias, scale, status)`` of each coordinate from its sufficient statistics.

    Parameters
    ----------
    statistics : ndarray, shape (d, 4)
        ``(n0, n1, S1, S2)`` per coordinate, as from ``chunk_statistics`` summed.
    method : {"censored", "truncated"}
        ``"censored"`` (Tobit) maximises the likelihood of the censored normal,
        zeros included; ``"truncated"`` that of the positives alone, as the paper
        does.
    exponents : ndarray of int, shape (d,), optional
        The units ``2**e`` of ``S1`` and ``S2`` (``statistics_exponents``);
        0 by default.

    Returns
    -------
    bias, scale : ndarray, shape (d,), float64
        ``b̂`` and ``σ̂`` in the data's units, not clipped.
    status : ndarray, shape (d,), int8
        One of the ``STATUS_*`` codes.

    Notes
    -----
    The positives are first standardised by their mean ``m`` and standard
    deviation ``s`` (so the censoring point becomes ``c = −m/s``), then Newton's
    method with step halving maximises the globally concave log-likelihood in
    Olsen's parameters ``γ = µ/σ``, ``τ = 1/σ`` (docs/design.md §2), starting from
    the moments of the positives. The statistics are divided by ``n``, so the
    tolerance does not depend on the sample size. Standardising makes the
    solve exactly equivariant under a power-of-two change of units: it runs
    in the statistics' units, and ``b̂`` and ``σ̂`` are then multiplied by
    ``2**e``, exactly.
    """
    # NaN/inf input is reported by io.check_values, estimates beyond float64 by estimator.check_estimates.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        bias, scale, status = _fit_coordinates(np.asarray(statistics, dtype=np.float64), method)
        if exponents is not None:
            bias, scale = np.ldexp(bias, exponents), np.ldexp(scale, exponents)
    return bias, scale, status


class _Standardised(NamedTuple):
    """Coordinates' statistics per sample, with the positives standardised by their mean and standard deviation."""

    mean: np.ndarray  # m, the positives' mean
    sd: np.ndarray  # s, their standard deviation (the value itself where they are all equal)
    likelihood: tuple  # (cut, w_cens, sign, w1, s1, s2) of ``_likelihood``


def _standardised(statistics, method):
    """Return the ``_Standardised`` statistics of coordinates with some positive values (``(d, 4)``, units as stored)."""
    n0, n1, s1_raw, s2_raw = statistics.T
    n = n0 + n1
    m = s1_raw / n1
    v = np.maximum(s2_raw / n1 - m**2, 0.0)
    # Positives all equal but zeros present: standardise by the value itself.
    s = np.where(v > 1e-12 * m**2, np.sqrt(v), m)
    w1 = n1 / n
    s1 = (s1_raw - n1 * m) / (s * n)
    s2 = (s2_raw - 2 * m * s1_raw + n1 * m**2) / (s**2 * n)
    if method == "censored":
        w_cens, sign = n0 / n, 1.0
    elif method == "truncated":
        w_cens, sign = -w1, -1.0
    else:
        raise ValueError(f"unknown method {method!r}: use 'censored' or 'truncated'")
    return _Standardised(m, s, (-m / s, w_cens, sign, w1, s1, s2))


def coordinate_information(statistics, bias, scale, status, method="censored", exponents=None):
    """Return ``V`` (d, 2, 2): ``n`` times the covariance of ``(b̂_i, σ̂_i)``, the inverse observed information per sample.

    In the statistics' units ``2**exponents`` (``b̂`` and ``σ̂`` are given in
    the data's): ``V_i · 4**e_i`` in the data's, which float64 may not hold.

    The Hessian of the log-likelihood per sample at the estimates, in
    Olsen's parameters of the standardised positives (``_likelihood``),
    inverted and carried to ``(b, σ)`` by the Jacobian of
    ``b = m + s γ/τ``, ``σ = s/τ``. NaN where the status is neither ok nor
    few positives (no estimate to have an error).
    """
    statistics = np.asarray(statistics, dtype=np.float64)
    exponents = np.zeros(len(statistics), dtype=np.int64) if exponents is None else np.asarray(exponents)
    information = np.full((len(statistics), 2, 2), np.nan)
    solved = np.isin(status, (STATUS_OK, STATUS_FEW_POSITIVES)) & (np.asarray(scale) > 0)
    if not solved.any():
        return information
    standard = _standardised(statistics[solved], method)
    scale_units = np.ldexp(np.asarray(scale, dtype=np.float64)[solved], -exponents[solved])
    bias_units = np.ldexp(np.asarray(bias, dtype=np.float64)[solved], -exponents[solved])
    tau = standard.sd / scale_units
    gamma = (bias_units - standard.mean) / scale_units
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        _, _, _, h_gg, h_gt, h_tt = _likelihood(gamma, tau, *standard.likelihood)
        hessian = np.stack([np.stack([h_gg, h_gt], -1), np.stack([h_gt, h_tt], -1)], -2)
        jacobian = np.zeros_like(hessian)  # d(b, σ)/d(γ, τ)
        jacobian[:, 0, 0] = standard.sd / tau
        jacobian[:, 0, 1] = -standard.sd * gamma / tau**2
        jacobian[:, 1, 1] = -standard.sd / tau**2
        covariance = jacobian @ np.linalg.inv(-hessian) @ jacobian.transpose(0, 2, 1)
    information[solved] = covariance
    return information


def _fit_coordinates(statistics, method):
    n0, n1, s1_raw, s2_raw = statistics.T
    n = n0 + n1
    d = statistics.shape[0]
    bias = np.zeros(d)
    scale = np.zeros(d)
    status = np.full(d, STATUS_OK, dtype=np.int8)

    safe_n1 = np.maximum(n1, 1)
    mean = s1_raw / safe_n1
    var = np.maximum(s2_raw / safe_n1 - mean**2, 0.0)
    all_zero = n1 == 0
    constant = ~all_zero & (n0 == 0) & (var <= 1e-12 * mean**2)
    status[all_zero] = STATUS_ALL_ZERO
    status[constant] = STATUS_CONSTANT
    bias[constant] = mean[constant]

    solve = ~all_zero & ~constant
    if solve.any():
        standard = _standardised(statistics[solve], method)
        gamma, tau, converged = _maximise(*standard.likelihood)
        bias[solve] = standard.mean + standard.sd * gamma / tau
        scale[solve] = standard.sd / tau
        sub = status[solve]
        sub[n1[solve] < min_positives(method)] = STATUS_FEW_POSITIVES
        sub[~converged] = STATUS_NOT_CONVERGED
        status[solve] = sub
    return bias, scale, status


# --------------------------------------------------------------------------
# Step 2: per pair, invert the bivariate normal orthant probability
# --------------------------------------------------------------------------

GL_NODES, GL_WEIGHTS = np.polynomial.legendre.leggauss(32)


def _orthant_integrand(a_i, a_j, s):
    """Return ``exp(−(a_i² + a_j² − 2 a_i a_j sin s) / (2 cos² s))``: ``2π φ₂`` after ``r = sin s``."""
    c2 = np.cos(s) ** 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g = np.exp(-(a_i**2 + a_j**2 - 2 * a_i * a_j * np.sin(s)) / (2 * c2))
    return np.where(c2 > 0, g, 0.0)


def _orthant_increment(a_i, a_j, theta):
    """Return ``Φ₂(a_i, a_j; sin θ) − Φ(a_i)Φ(a_j) = (1/2π)∫₀^θ g(s) ds`` by Gauss–Legendre."""
    s = theta[..., None] * (0.5 * (GL_NODES + 1))
    g = _orthant_integrand(a_i[..., None], a_j[..., None], s)
    return theta * (g @ GL_WEIGHTS) / (4 * np.pi)


def orthant_probability(a_i, a_j, rho):
    """Return ``Φ₂(a_i, a_j; ρ) = P[Z_i ≤ a_i, Z_j ≤ a_j]`` for standard normals of correlation ρ.

    Uses ``Φ₂ = Φ(a_i)Φ(a_j) + ∫₀^ρ φ₂(a_i, a_j; r) dr`` with ``r = sin s``,
    which makes the integrand smooth up to ``|ρ| = 1``. Broadcasts.
    """
    a_i, a_j, rho = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a_i, a_j, rho)))
    theta = np.arcsin(np.clip(rho, -1, 1))
    return special.ndtr(a_i) * special.ndtr(a_j) + _orthant_increment(a_i, a_j, theta)


def invert_orthant(a_i, a_j, p, max_iter=60, tol=1e-13):
    """Return ``ρ`` with ``Φ₂(a_i, a_j; ρ) = p``, clipped to ``[−1, 1]``. Broadcasts.

    ``Φ₂`` increases in ``ρ``; the root is found in ``θ = arcsin ρ`` by Newton's
    method kept inside a shrinking bracket (bisection when a step leaves it).
    For ``a_i = a_j = 0`` the first step is exact: ``θ = 2π(p − ¼)``, which is
    the paper's Lemma 2, ``ρ = cos(π − 2πp)``. Where ``p`` lies outside the
    attainable range ``[max(0, Φ(a_i)+Φ(a_j)−1), min(Φ(a_i), Φ(a_j))]`` the
    answer is clipped to ``−1`` or ``1``; where an ``a`` is not finite (a
    threshold nobody or everybody exceeds) the pair carries no information and
    ``ρ`` is 0.
    """
    a_i, a_j, p = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a_i, a_j, p)))
    cdf_i, cdf_j = special.ndtr(a_i), special.ndtr(a_j)
    target = p - cdf_i * cdf_j
    low_end = p <= np.maximum(0.0, cdf_i + cdf_j - 1)
    high_end = p >= np.minimum(cdf_i, cdf_j)
    informative = np.isfinite(a_i) & np.isfinite(a_j)
    interior = informative & ~low_end & ~high_end

    rho = np.where(high_end, 1.0, np.where(low_end, -1.0, 0.0))
    rho[~informative] = 0.0
    if not interior.any():
        return rho
    ai, aj, q = a_i[interior], a_j[interior], target[interior]
    lo = np.full(q.shape, -np.pi / 2)
    hi = np.full(q.shape, np.pi / 2)
    theta = np.clip(2 * np.pi * q, lo, hi)
    for _ in range(max_iter):
        f = _orthant_increment(ai, aj, theta) - q
        lo = np.where(f < 0, theta, lo)
        hi = np.where(f > 0, theta, hi)
        slope = _orthant_integrand(ai, aj, theta) / (2 * np.pi)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = theta - f / slope
        outside = ~((new > lo) & (new < hi))
        new = np.where(outside, 0.5 * (lo + hi), new)
        change = np.abs(new - theta)
        theta = new
        if change.max() < tol:
            break
    rho[interior] = np.sin(theta)
    return rho


# The inversion works on at most this many pairs at once; each holds about
# INVERSION_BYTES_PER_PAIR of temporaries (measured with tracemalloc: ~700),
# and the pair indices of a block take 16 bytes per pair besides.
INVERSION_SLAB_PAIRS = 65_536
INVERSION_BYTES_PER_PAIR = 800


def covariance_block(counts, n, a_i, a_j, scale_i, scale_j, index_i, index_j, invert=None):
    """Return the block ``Σ̂_ij = σ̂_i σ̂_j ρ_ij`` from co-exceedance counts.

    Parameters
    ----------
    counts : ndarray, shape (d_i, d_j), int64
        Co-exceedance counts of the block.
    n : int
        Number of samples.
    a_i, a_j : ndarray, shapes (d_i,) and (d_j,)
        Standardised threshold margins (``threshold_margins`` or
        ``tetrachoric_margins``).
    scale_i, scale_j : ndarray
        ``σ̂`` of the block's rows and columns.
    index_i, index_j : ndarray of int
        Global coordinate numbers of the block's rows and columns: where they
        are equal, ``ρ = 1`` and ``Σ̂_ii = σ̂_i²`` by definition.
    invert : callable, optional
        The inversion, ``invert_orthant`` by default (the fit uses the
        compiled ``compiled.invert_orthant``, which gives the same ρ).
    """
    invert = invert_orthant if invert is None else invert
    rho = np.empty(counts.shape, dtype=np.float64)
    diagonal = counts.shape[0] == counts.shape[1] and np.array_equal(index_i, index_j)
    if diagonal:
        # A block on the diagonal is symmetric: invert its upper triangle and mirror it.
        rows, columns = np.triu_indices(counts.shape[0], k=1)
    else:
        rows, columns = (k.ravel() for k in np.indices(counts.shape))
    # Slabs keep the inversion's temporaries (INVERSION_BYTES_PER_PAIR each) to
    # INVERSION_SLAB_PAIRS pairs, whatever the block's size.
    for start in range(0, rows.size, INVERSION_SLAB_PAIRS):
        i, j = rows[start:start + INVERSION_SLAB_PAIRS], columns[start:start + INVERSION_SLAB_PAIRS]
        rho[i, j] = invert(a_i[i], a_j[j], counts[i, j] / n)
    if diagonal:
        rho[columns, rows] = rho[rows, columns]
    rho[index_i[:, None] == index_j[None, :]] = 1.0
    return scale_i[:, None] * scale_j[None, :] * rho


def tetrachoric_margins(exceedance_counts, n):
    """Return ``a_i = Φ⁻¹(c_i/n)``: the margin each threshold actually had (docs/design.md §3)."""
    return special.ndtri(np.asarray(exceedance_counts) / n)


def threshold_margins(bias, scale, thresholds):
    """Return model-based ``a_i = (b̂_i − t_i)/σ̂_i``; ``−inf`` where ``σ̂_i = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (np.asarray(bias) - thresholds) / scale
    return np.where(scale > 0, a, -np.inf)
