"""Compiled kernels (numba): the fused pass over a chunk, co-exceedance counts of bit-packed indicators, and
the bivariate normal orthant probability Φ₂ and its inversion, pair by pair.

The fused pass touches each value once: it adds to the column's sufficient
statistics and value checks, and sets the value's exceedance bit. Indicators
are packed 64 rows to a ``uint64`` word, row ``r`` of the chunk's kept rows in
bit ``r % 64`` of word ``r // 64`` (so a little-endian byte view unpacks with
``np.unpackbits(..., bitorder="little")``): 1 bit per value, 1/32 of float32
samples.

Two count kernels give the same exact integers: ``popcount_counts`` (AND and
popcount of packed words, ``d_i·d_j·rows/64`` word operations) and
``gemm_counts`` (indicators unpacked to float32, then BLAS GEMM,
``kernels.coexceedance_partial``). ``choose_count_kernel`` times both on a
block of the shape at hand and keeps the faster (docs/design.md §5).
"""

import functools
import math
import time
from typing import NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from . import kernels

COUNT_KERNELS = ("auto", "popcount", "gemm")


@intrinsic
def _popcount64(typingctx, value):
    """The CPU's population count of a uint64 (LLVM ``ctpop``)."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, signature, arguments):
        return builder.ctpop(arguments[0])

    return signature, codegen


class ChunkPass(NamedTuple):
    """What the fused pass makes of one chunk (one row chunk, one column block)."""

    statistics: np.ndarray  # (d, 4) float64, as kernels.chunk_statistics (S1, S2 in units 2**e)
    problems: np.ndarray  # (d, 2) int64, as kernels.chunk_value_problems
    indicators: np.ndarray  # (K·d, words) uint64, bit-packed x > t of the kept rows; column j's cut a in row j·K + a
    rows: int  # kept rows, the number of valid bits per column
    moments: np.ndarray  # (d, 2) float64: Σ x³ and Σ x⁴ over the positives, in units 2**e (the model check)


@numba.njit(nogil=True, cache=True)
def _chunk_pass(x, first_column, thresholds, multipliers, keep, statistics, problems, packed, moments):
    rows = x.shape[0]
    cuts, d = thresholds.shape  # the block: columns first_column ... first_column + d - 1 of x
    # One contiguous accumulator per quantity, and no branch on the values in
    # the inner loop, so that it vectorises across the columns.
    n_positive = np.zeros(d, dtype=np.int64)
    sums = np.zeros(d, dtype=np.float64)
    sums_sq = np.zeros(d, dtype=np.float64)
    negative = np.zeros(d, dtype=np.int64)
    nonfinite = np.zeros(d, dtype=np.int64)
    word = np.zeros((cuts, d), dtype=np.uint64)
    sums_cube = np.zeros(d, dtype=np.float64)
    sums_fourth = np.zeros(d, dtype=np.float64)
    first_cut = thresholds[0]
    kept = 0
    for r in range(rows):
        if not keep[r]:
            continue
        shift = np.uint64(kept & 63)
        # A slice of the row, and its indicator as a shifted 0 or 1: the loop vectorises without gathers
        # or branches (2.2 times as fast as x[r, first_column + j] and a conditional bit).
        row = x[r, first_column:first_column + d]
        first_word = word[0]
        for j in range(d):
            value = np.float64(row[j])
            # Summed in units of 2**e (kernels.statistics_exponents): exact, and no overflow at any scale.
            positive = (value if value > 0.0 else 0.0) * multipliers[j]
            n_positive[j] += value > 0.0
            sums[j] += positive
            square = positive * positive
            sums_sq[j] += square
            sums_cube[j] += square * positive
            sums_fourth[j] += square * square
            negative[j] += value < 0.0
            nonfinite[j] += not (value - value == 0.0)  # NaN and ±inf
            first_word[j] |= np.uint64(value > first_cut[j]) << shift
        for a in range(1, cuts):  # further cut points, each its own vectorised sweep of the row
            cut, cut_word = thresholds[a], word[a]
            for j in range(d):
                cut_word[j] |= np.uint64(np.float64(row[j]) > cut[j]) << shift
        kept += 1
        if kept & 63 == 0:
            slot = (kept >> 6) - 1
            for j in range(d):
                for a in range(cuts):
                    packed[j * cuts + a, slot] = word[a, j]
                    word[a, j] = 0
    if kept & 63:
        for j in range(d):
            for a in range(cuts):
                packed[j * cuts + a, kept >> 6] = word[a, j]
    for j in range(d):
        statistics[j, 0] = kept - n_positive[j]
        statistics[j, 1] = n_positive[j]
        statistics[j, 2] = sums[j]
        statistics[j, 3] = sums_sq[j]
        problems[j, 0] = negative[j]
        problems[j, 1] = nonfinite[j]
        moments[j, 0] = sums_cube[j]
        moments[j, 1] = sums_fourth[j]
    return kept


def chunk_pass(x, thresholds, keep=None, first_column=0, exponents=None):
    """Return the ``ChunkPass`` of a chunk ``x`` at ``thresholds``, over the rows ``keep`` keeps.

    ``thresholds`` are ``(d,)``, one per column, or ``(d, K)``, ``K`` cut
    points per column: then each value has ``K`` indicator bits, column
    ``j``'s cut ``a`` in indicator row ``j·K + a``.
    The block is columns ``first_column`` to ``first_column + d - 1`` of
    ``x`` (all of them by default), so a row chunk of all columns is passed
    block by block without copying it. ``x`` is copied first only if it is
    not C-contiguous (a view of a wider chunk, or Fortran order): the kernel
    vectorises across a row only when the row is contiguous, and a copy
    followed by the contiguous pass costs less than the strided pass. The
    statistics' sums are of
    ``x·2**-e`` for the block's ``exponents`` (d,) (0 by default), as
    ``kernels.chunk_statistics``; the thresholds and checks see ``x``.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim not in (1, 2):
        raise ValueError(f"thresholds must be (d,) or (d, K); got shape {thresholds.shape}")
    cut_major = np.ascontiguousarray(thresholds.reshape(thresholds.shape[0], -1).T)  # (K, d)
    cuts, d = cut_major.shape
    multipliers = np.ones(d) if exponents is None else kernels.unit_multipliers(exponents)
    if x.ndim != 2 or not 0 <= first_column <= x.shape[1] - d:
        raise ValueError(f"columns {first_column}..{first_column + d - 1} are not in a chunk of shape {x.shape}")
    if not x.flags.c_contiguous:
        x, first_column = np.ascontiguousarray(x[:, first_column:first_column + d]), 0
    rows = x.shape[0]
    keep = np.ones(rows, dtype=np.bool_) if keep is None else np.asarray(keep, dtype=np.bool_)
    n_kept = int(keep.sum())
    statistics = np.zeros((d, 4), dtype=np.float64)
    problems = np.zeros((d, 2), dtype=np.int64)
    packed = np.zeros((cuts * d, -(-n_kept // 64)), dtype=np.uint64)
    moments = np.zeros((d, 2), dtype=np.float64)
    _chunk_pass(x, first_column, cut_major, multipliers, keep, statistics, problems, packed, moments)
    return ChunkPass(statistics, problems, packed, n_kept, moments)


def unpack_indicators(packed, rows):
    """Return the ``(rows, d)`` float32 0/1 indicators of bit-packed ``packed`` (d, words)."""
    bits = np.unpackbits(np.ascontiguousarray(packed).view(np.uint8), axis=1, count=rows, bitorder="little")
    return bits.T.astype(np.float32)


@numba.njit(nogil=True, cache=True, inline="always")
def _tile_counts(a, b, i, j, out):
    """Count the 4 × 4 pairs of rows ``i … i+3`` of ``a`` and ``j … j+3`` of ``b`` into ``out``.

    Sixteen running sums, each word of the eight rows loaded once: the loop
    over words vectorises with every sum in a register (an array of sums
    would live in memory and run at a quarter of the speed).
    """
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = np.uint64(0)
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = np.uint64(0)
    for w in range(a.shape[1]):
        a0, a1, a2, a3 = a[i, w], a[i + 1, w], a[i + 2, w], a[i + 3, w]
        b0, b1, b2, b3 = b[j, w], b[j + 1, w], b[j + 2, w], b[j + 3, w]
        c00 += _popcount64(a0 & b0); c01 += _popcount64(a0 & b1); c02 += _popcount64(a0 & b2)
        c03 += _popcount64(a0 & b3); c10 += _popcount64(a1 & b0); c11 += _popcount64(a1 & b1)
        c12 += _popcount64(a1 & b2); c13 += _popcount64(a1 & b3); c20 += _popcount64(a2 & b0)
        c21 += _popcount64(a2 & b1); c22 += _popcount64(a2 & b2); c23 += _popcount64(a2 & b3)
        c30 += _popcount64(a3 & b0); c31 += _popcount64(a3 & b1); c32 += _popcount64(a3 & b2)
        c33 += _popcount64(a3 & b3)
    out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = c00, c01, c02, c03
    out[i + 1, j], out[i + 1, j + 1], out[i + 1, j + 2], out[i + 1, j + 3] = c10, c11, c12, c13
    out[i + 2, j], out[i + 2, j + 1], out[i + 2, j + 2], out[i + 2, j + 3] = c20, c21, c22, c23
    out[i + 3, j], out[i + 3, j + 1], out[i + 3, j + 2], out[i + 3, j + 3] = c30, c31, c32, c33


@numba.njit(nogil=True, cache=True)
def _popcount_counts(a, b, out, symmetric):
    d_i, words = a.shape
    d_j = b.shape[0]
    for i in range(0, d_i, 4):
        for j in range(i if symmetric else 0, d_j, 4):  # symmetric: the tiles on and above the diagonal
            if i + 4 <= d_i and j + 4 <= d_j:
                _tile_counts(a, b, i, j, out)
                continue
            for k in range(i, min(i + 4, d_i)):  # a tile cut by the last row or column
                for m in range(j, min(j + 4, d_j)):
                    total = np.uint64(0)
                    for w in range(words):
                        total += _popcount64(a[k, w] & b[m, w])
                    out[k, m] = total
    if symmetric:
        for i in range(d_i):
            for j in range(i):
                out[i, j] = out[j, i]


def popcount_counts(packed_i, packed_j, dtype=np.int64):
    """Return the exact ``(d_i, d_j)`` counts of rows where both indicators are set, by AND and popcount.

    ``packed_i`` and ``packed_j`` are bit-packed blocks of the same rows
    (padding bits zero). When both are the same block, only its upper triangle
    is counted and mirrored. ``dtype`` must hold the number of rows.
    """
    out = np.empty((packed_i.shape[0], packed_j.shape[0]), dtype=dtype)
    _popcount_counts(np.ascontiguousarray(packed_i), np.ascontiguousarray(packed_j), out, packed_i is packed_j)
    return out


def gemm_counts(packed_i, packed_j, rows):
    """Return the same counts as ``popcount_counts``, by unpacking to float32 and exact GEMM."""
    indicators_i = unpack_indicators(packed_i, rows)
    indicators_j = indicators_i if packed_j is packed_i else unpack_indicators(packed_j, rows)
    return kernels.coexceedance_partial(indicators_i, indicators_j)


def count_block(packed_i, packed_j, rows, kernel):
    """Return the counts of two packed blocks of ``rows`` rows with ``kernel`` ("popcount" or "gemm"), in ``kernels.count_dtype(rows)``."""
    if kernel == "popcount":
        return popcount_counts(packed_i, packed_j, kernels.count_dtype(rows))
    return gemm_counts(packed_i, packed_j, rows).astype(kernels.count_dtype(rows))


# The timing block of choose_count_kernel is at most this wide and this long:
# both kernels' rates per pair-sample settle well before that size.
_TIMING_COLUMNS, _TIMING_ROWS = 256, 65_536


@functools.lru_cache(maxsize=64)
def choose_count_kernel(d_i, d_j, rows, repeats=3):
    """Return ``"popcount"`` or ``"gemm"``, whichever counted a random block of this shape faster here.

    Both give the same integers, so the choice changes only the speed. Timed
    where it runs (a worker thread, for a fit), best of ``repeats`` (GEMM
    stops after one run when that took twice popcount's best), on a block
    of at most 256 columns and 65,536 rows; cached per shape.
    """
    d_i, d_j, rows = min(d_i, _TIMING_COLUMNS), min(d_j, _TIMING_COLUMNS), min(rows, _TIMING_ROWS)
    rng = np.random.default_rng(0)
    words = -(-rows // 64)
    packed_i = rng.integers(0, 2**63, size=(d_i, words), dtype=np.uint64)
    packed_j = packed_i if d_j == d_i else rng.integers(0, 2**63, size=(d_j, words), dtype=np.uint64)
    if rows % 64:
        packed_i[:, -1] &= np.uint64((1 << (rows % 64)) - 1)
        packed_j[:, -1] &= np.uint64((1 << (rows % 64)) - 1)
    seconds = {}
    for kernel in ("popcount", "gemm"):
        count_block(packed_i[:1], packed_j[:1], rows, kernel)  # compile, warm up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            count_block(packed_i, packed_j, rows, kernel)
            best = min(best, time.perf_counter() - start)
            if best > 2 * seconds.get("popcount", float("inf")):
                break  # twice the other's best after one run: its repeats would not change the choice
        seconds[kernel] = best
    return min(seconds, key=seconds.get)


# --------------------------------------------------------------------------
# The orthant inversion, pair by pair
# --------------------------------------------------------------------------


# Gauss–Legendre rules shorter than the reference's 32 nodes, and the |θ| up to
# which each gives the reference's increment to rounding (≤ 2e-16, measured
# on a grid of |a_i|, |a_j| ≤ 3 and |θ| up to each limit): most pairs have
# |ρ| < 0.7 and need only 12 nodes.
_SHORT_RULES = ((0.8, 12), (1.0, 16), (1.2, 20))
_SHORT_RULE_MAX_MARGIN = 3.0
_RULES = tuple(np.polynomial.legendre.leggauss(m) for _, m in _SHORT_RULES) + ((kernels.GL_NODES, kernels.GL_WEIGHTS),)
_RULE_LIMITS = np.array([limit for limit, _ in _SHORT_RULES])


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _orthant_increment(theta, squares, product, moderate, rules, rule_limits):
    """Return ``Φ₂(a_i, a_j; sin θ) − Φ(a_i)Φ(a_j) = (1/2π)∫₀^θ g(s) ds`` by Gauss–Legendre.

    ``squares = a_i² + a_j²``, ``product = 2 a_i a_j``; ``moderate`` when
    ``max(|a_i|, |a_j|) ≤ 3``, where the shortest rule exact to rounding at
    this ``|θ|`` is used (``_SHORT_RULES``), else the reference's 32 nodes.
    """
    rule = len(rules) - 1
    if moderate:
        for r in range(len(rules) - 1):
            if abs(theta) <= rule_limits[r]:
                rule = r
                break
    nodes, weights = rules[rule]
    total = 0.0
    for m in range(nodes.size):
        s = theta * 0.5 * (nodes[m] + 1.0)
        sine = math.sin(s)
        c2 = (1.0 - sine) * (1.0 + sine)  # cos² s, to full relative precision near |s| = π/2
        if c2 > 0.0:
            total += weights[m] * math.exp(-(squares - product * sine) / (2.0 * c2))
    return theta * total / (4.0 * math.pi)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _invert_pairs(a_i, a_j, p, out, rules, rule_limits, max_iter, tol):
    two_pi = 2.0 * math.pi
    for k in range(p.size):
        ai, aj, target_p = a_i[k], a_j[k], p[k]
        if not (math.isfinite(ai) and math.isfinite(aj)):
            out[k] = 0.0  # a threshold nobody or everybody exceeds: no information
            continue
        cdf_i = 0.5 * math.erfc(-ai / math.sqrt(2.0))
        cdf_j = 0.5 * math.erfc(-aj / math.sqrt(2.0))
        if target_p >= min(cdf_i, cdf_j):
            out[k] = 1.0
            continue
        if target_p <= max(0.0, cdf_i + cdf_j - 1.0):
            out[k] = -1.0
            continue
        q = target_p - cdf_i * cdf_j
        squares, product = ai * ai + aj * aj, 2.0 * ai * aj
        lo, hi = -0.5 * math.pi, 0.5 * math.pi
        theta = min(max(two_pi * q, lo), hi)
        moderate = max(abs(ai), abs(aj)) <= _SHORT_RULE_MAX_MARGIN
        for _ in range(max_iter):
            f = _orthant_increment(theta, squares, product, moderate, rules, rule_limits) - q
            if f < 0.0:
                lo = theta
            if f > 0.0:
                hi = theta
            sine = math.sin(theta)
            c2 = (1.0 - sine) * (1.0 + sine)
            exponent = (squares - product * sine) / (2.0 * c2) if c2 > 0.0 else math.inf
            slope = math.exp(-exponent) / two_pi
            new = theta - f / slope
            newton = new > lo and new < hi
            if not newton:
                new = 0.5 * (lo + hi)
            change = abs(new - theta)
            theta = new
            if change < tol:
                break
            # Newton's next error is about |f''/2f'|·change² = |exponent'(θ)|/2·change². Where that is
            # below tol, the step that would confirm it is skipped (a fifth of the steps). Only for
            # |θ| < 1.2: nearer ±π/2 the exponent's derivatives grow too fast for the estimate.
            if newton and abs(theta) < 1.2:
                curvature = abs(2.0 * (squares - product * sine) * sine - product * c2) / (4.0 * c2 * math.sqrt(c2))
                if curvature * change * change < 0.1 * tol:
                    break
        out[k] = math.sin(theta)


def invert_orthant(a_i, a_j, p, max_iter=60, tol=1e-13):
    """Return ``ρ`` with ``Φ₂(a_i, a_j; ρ) = p``: ``kernels.invert_orthant``, compiled, pair by pair.

    The same Newton steps in ``θ = arcsin ρ`` inside a bracket, but each pair
    stops when it has converged (for ``|θ| < 1.2``, as soon as Newton's error
    estimate for its next step is below ``tol``), no temporaries are held beyond the output,
    and where the integrand is smooth a shorter Gauss–Legendre rule than the
    reference's 32 nodes is used (``_SHORT_RULES``). Broadcasts.
    """
    a_i, a_j, p = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a_i, a_j, p)))
    out = np.empty(p.shape, dtype=np.float64)
    flat = out.reshape(-1)
    _invert_pairs(np.ascontiguousarray(a_i).reshape(-1), np.ascontiguousarray(a_j).reshape(-1),
                  np.ascontiguousarray(p).reshape(-1), flat, _RULES, _RULE_LIMITS, max_iter, tol)
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy")
def orthant_pair(ai, aj, r, rules, rule_limits):
    """Return ``Φ₂(ai, aj; r)`` of one pair (see ``orthant_probability``); ``rules`` and ``rule_limits`` are
    ``ORTHANT_RULES``. For numba kernels of other modules; numpy callers use ``orthant_probability``."""
    cdf_i = 0.5 * math.erfc(-ai / math.sqrt(2.0))
    cdf_j = 0.5 * math.erfc(-aj / math.sqrt(2.0))
    lowest, highest = max(0.0, cdf_i + cdf_j - 1.0), min(cdf_i, cdf_j)
    if math.isnan(ai) or math.isnan(aj) or math.isnan(r):
        return math.nan
    if not (math.isfinite(ai) and math.isfinite(aj)):
        return cdf_i * cdf_j  # a margin of ±inf: a certain event or an impossible one, whatever ρ
    if r >= 1.0:
        return highest
    if r <= -1.0:
        return lowest
    increment = _orthant_increment(math.asin(r), ai * ai + aj * aj, 2.0 * ai * aj,
                                   max(abs(ai), abs(aj)) <= _SHORT_RULE_MAX_MARGIN, rules, rule_limits)
    return min(max(cdf_i * cdf_j + increment, lowest), highest)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def orthant_same_correlation(ai, aj, cdf_i, cdf_j, r, rules, rule_limits, out, totals):
    """Write ``Φ₂(ai[m], aj[m]; r)`` into ``out[m]`` for every ``m``: ``orthant_pair`` of pairs with one ``r``.

    ``cdf_i`` and ``cdf_j`` are the margins' ``Φ(ai)`` and ``Φ(aj)``, as
    ``0.5 · erfc(−a / √2)``: callers that know them already pay no more
    error functions. The pairs share ``θ = asin r`` and the sines at the
    quadrature's nodes, so each pair after the first costs one exponential
    per node. ``totals`` is scratch of ``out``'s size, the caller's, so that
    no call allocates. The rule is the
    one the least moderate pair needs (the reference's 32 nodes if any margin
    exceeds 3), so a pair may get more nodes than ``orthant_pair`` gives it:
    the same value to rounding.
    """
    count = ai.size
    moderate = True
    for m in range(count):
        if math.isnan(ai[m]) or math.isnan(aj[m]) or math.isnan(r):
            out[m] = math.nan
            continue
        out[m] = cdf_i[m] * cdf_j[m]
        if not (math.isfinite(ai[m]) and math.isfinite(aj[m])):
            continue  # a margin of ±inf: a certain event or an impossible one, whatever ρ
        if r >= 1.0:
            out[m] = min(cdf_i[m], cdf_j[m])
        elif r <= -1.0:
            out[m] = max(0.0, cdf_i[m] + cdf_j[m] - 1.0)
        moderate = moderate and max(abs(ai[m]), abs(aj[m])) <= _SHORT_RULE_MAX_MARGIN
    if math.isnan(r) or not -1.0 < r < 1.0:
        return
    theta = math.asin(r)
    rule = len(rules) - 1
    if moderate:
        for k in range(len(rules) - 1):
            if abs(theta) <= rule_limits[k]:
                rule = k
                break
    nodes, weights = rules[rule]
    totals[:] = 0.0
    for node in range(nodes.size):
        sine = math.sin(theta * 0.5 * (nodes[node] + 1.0))
        c2 = (1.0 - sine) * (1.0 + sine)  # cos² s, to full relative precision near |s| = π/2
        if c2 > 0.0:
            for m in range(count):
                totals[m] += weights[node] * math.exp(-(ai[m] * ai[m] + aj[m] * aj[m] - 2.0 * ai[m] * aj[m] * sine)
                                                      / (2.0 * c2))
    for m in range(count):
        if math.isfinite(ai[m]) and math.isfinite(aj[m]):
            value = cdf_i[m] * cdf_j[m] + theta * totals[m] / (4.0 * math.pi)
            out[m] = min(max(value, max(0.0, cdf_i[m] + cdf_j[m] - 1.0)), min(cdf_i[m], cdf_j[m]))


# The quadrature's rules, as orthant_pair takes them.
ORTHANT_RULES = (_RULES, _RULE_LIMITS)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _orthant_pairs(a_i, a_j, rho, out, rules, rule_limits):
    for k in range(rho.size):
        out[k] = orthant_pair(a_i[k], a_j[k], rho[k], rules, rule_limits)


def orthant_probability(a_i, a_j, rho):
    """Return ``Φ₂(a_i, a_j; ρ) = P[Z_i ≤ a_i, Z_j ≤ a_j]``: ``kernels.orthant_probability``, compiled.

    Pair by pair, with the quadrature the inversion solves with (``_orthant_increment``), so
    ``orthant_probability(a_i, a_j, invert_orthant(a_i, a_j, p))`` gives back
    ``p``. A margin of ``±inf`` gives ``Φ(a_i)Φ(a_j)`` whatever ``ρ``; the
    result lies within the Fréchet bounds ``[max(0, Φ(a_i) + Φ(a_j) − 1),
    min(Φ(a_i), Φ(a_j))]``. NaN in, NaN out. Broadcasts.
    """
    a_i, a_j, rho = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a_i, a_j, rho)))
    out = np.empty(rho.shape, dtype=np.float64)
    _orthant_pairs(np.ascontiguousarray(a_i).reshape(-1), np.ascontiguousarray(a_j).reshape(-1),
                   np.ascontiguousarray(rho).reshape(-1), out.reshape(-1), _RULES, _RULE_LIMITS)
    return out


def covariance_block(counts, n, a_i, a_j, scale_i, scale_j, index_i, index_j):
    """Return ``kernels.covariance_block`` with the compiled inversion."""
    return kernels.covariance_block(counts, n, a_i, a_j, scale_i, scale_j, index_i, index_j, invert=invert_orthant)
