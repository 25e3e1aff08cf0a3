"""Polychoric correlations: ``ρ`` of a pair by maximum likelihood of its table of cut-point categories.

Each coordinate has ``K`` cut points ``c_1 < … < c_K`` (its threshold among
them), and a value's category is the number of cut points it exceeds,
``0`` to ``K``. Under the model ``x_i = max(0, b_i + σ_i z_i)``, and for a cut
point ``c ≥ 0``, ``x_i > c`` exactly when ``z_i > h = (c − b_i)/σ_i``: two
coordinates' categories are those of the standard bivariate normal
``(z_i, z_j)``, with correlation ``ρ``, cut at their ``h``'s. With the
margins' ``h`` fixed (fitted first: the two-step estimator), a pair's table
``T`` of category counts has the log-likelihood

    ℓ(ρ) = Σ_ab T_ab log P_ab(ρ),

``P_ab`` the normal's probability of cell ``(a, b)``. The cells come from the
upper orthants ``U_ab = P[z_i > h_a, z_j > h_b] = Φ₂(−h_a, −h_b; ρ)`` (``h_0 =
−∞``) by inclusion and exclusion, and their derivatives from
``∂U_ab/∂ρ = φ₂(h_a, h_b; ρ)``, the density at the corner. ``fit_pairs`` finds
the root of the score by Fisher scoring kept inside a bracket; the expected
information per row, ``Σ_ab P'_ab² / P_ab``, comes with it.

The tables come from the same counts as today's pairs: with ``E_ab`` the
number of rows where ``x_i > c_a`` and ``x_j > c_b`` (``E_00 = n``, ``E_a0``
the margin's), ``T_ab = E_ab − E_(a+1)b − E_a(b+1) + E_(a+1)(b+1)``
(``cell_counts``). With ``K = 1`` and the margins' ``h`` those of the observed
exceedances, the likelihood's root is the tetrachoric inversion of
``Φ₂`` at the observed co-exceedance: today's estimator.
"""

import math

import numba
import numpy as np
from scipy import special

from . import compiled

# Where a search may start at most: the tetrachoric start can be ±1, where every density underflows.
_START_LIMIT = 0.99

# Below this a cell's probability is rounding: differences of orthant probabilities of order 1, each to
# about 1e-16. Such cells add nothing to the information.
_RELIABLE_CELL = 1e-12

# Pairs fitted at a time: their tables and cut points, about (K + 1)²·8 + 4K·8 bytes a pair.
_SLAB_PAIRS = 16_384


def cell_counts(exceedances):
    """Return the ``(…, K+1, K+1)`` category counts of cumulative ``exceedances`` ``E`` (see above).

    ``E[..., a, b]`` counts the rows where ``x_i > c_a`` and ``x_j > c_b``,
    with ``c_0 = −∞`` (so ``E[..., 0, 0] = n``). Integers in, the same type
    out.
    """
    padded = np.zeros(exceedances.shape[:-2] + (exceedances.shape[-2] + 1, exceedances.shape[-1] + 1),
                      dtype=exceedances.dtype)
    padded[..., :-1, :-1] = exceedances
    return padded[..., :-1, :-1] - padded[..., 1:, :-1] - padded[..., :-1, 1:] + padded[..., 1:, 1:]


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _corner_density(x, y, r):
    """Return ``φ₂(x, y; r)``, 0 at an infinite corner."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return 0.0
    one_minus = (1.0 - r) * (1.0 + r)
    return math.exp(-(x * x - 2.0 * r * x * y + y * y) / (2.0 * one_minus)) / (2.0 * math.pi * math.sqrt(one_minus))


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _score(h_i, h_j, table, r, corners_i, corners_j, cdf_i, cdf_j, orthants, totals, upper, slope, rules, limits):
    """Return ``(score, information)`` per row of one pair at ``ρ = r``: ``ℓ'(r)/n`` and ``Σ P'²/P``."""
    k = h_i.size
    compiled.orthant_same_correlation(corners_i, corners_j, cdf_i, cdf_j, r, rules, limits, orthants, totals)
    upper[:] = 0.0
    slope[:] = 0.0
    upper[0, 0] = 1.0
    for a in range(k):
        upper[a + 1, 0] = cdf_i[a * k]  # Φ(−h_a) = P[z_i > h_a]
        upper[0, a + 1] = cdf_j[a]
        for b in range(k):
            upper[a + 1, b + 1] = orthants[a * k + b]
            slope[a + 1, b + 1] = _corner_density(h_i[a], h_j[b], r)
    n = 0.0
    for a in range(k + 1):
        for b in range(k + 1):
            n += table[a, b]
    score = 0.0
    information = 0.0
    for a in range(k + 1):
        for b in range(k + 1):
            p = upper[a, b] - upper[a + 1, b] - upper[a, b + 1] + upper[a + 1, b + 1]
            dp = slope[a, b] - slope[a + 1, b] - slope[a, b + 1] + slope[a + 1, b + 1]
            if p > _RELIABLE_CELL:
                score += table[a, b] * dp / p
                information += dp * dp / p
            elif table[a, b] > 0.0:
                score += table[a, b] * dp / _RELIABLE_CELL  # rows where ρ all but rules them out push it away
    return score / max(n, 1.0), information


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _fit_pairs(h_i, h_j, tables, start, rho, information, rules, limits, max_iter, tol):
    pairs, k = h_i.shape
    corners_i = np.empty(k * k)
    corners_j = np.empty(k * k)
    cdf_i = np.empty(k * k)
    cdf_j = np.empty(k * k)
    orthants = np.empty(k * k)
    totals = np.empty(k * k)
    upper = np.zeros((k + 2, k + 2))
    slope = np.zeros((k + 2, k + 2))
    for m in range(pairs):
        for a in range(k):
            for b in range(k):
                corners_i[a * k + b] = -h_i[m, a]
                corners_j[a * k + b] = -h_j[m, b]
                cdf_i[a * k + b] = 0.5 * math.erfc(h_i[m, a] / math.sqrt(2.0))
                cdf_j[a * k + b] = 0.5 * math.erfc(h_j[m, b] / math.sqrt(2.0))
        table = tables[m]
        informative_i = informative_j = False
        for a in range(k):
            informative_i = informative_i or math.isfinite(h_i[m, a])
            informative_j = informative_j or math.isfinite(h_j[m, a])
        if not (informative_i and informative_j):
            rho[m], information[m] = 0.0, 0.0  # no cut inside one margin: the table says nothing of ρ
            continue
        low, high = -1.0, 1.0
        r = min(max(start[m], -_START_LIMIT), _START_LIMIT)
        info = 0.0
        for _ in range(max_iter):
            score, info = _score(h_i[m], h_j[m], table, r, corners_i, corners_j, cdf_i, cdf_j, orthants, totals,
                                 upper, slope, rules, limits)
            new = math.nan
            if info > 0.0 and score == score:
                if score > 0.0:
                    low = r
                else:
                    high = r
                new = r + score / info
            # Outside the bracket, or where the likelihood is flat to rounding (near ρ = ±1 every corner's
            # density underflows, and neither the score nor the information says which way to go): bisect.
            if not low < new < high:
                new = 0.5 * (low + high)
            change = abs(new - r)
            r = new
            if change < tol:
                break
        rho[m] = r
        information[m] = info


def fit_pairs(h_i, h_j, tables, start=None, max_iter=100, tol=1e-12):
    """Return ``(ρ, information)`` of each pair: the maximum-likelihood ``ρ`` of its table, and ``Σ P'²/P`` there.

    ``h_i`` and ``h_j`` ``(pairs, K)`` are the two margins' standardised cut
    points, increasing; ``tables`` ``(pairs, K+1, K+1)`` the pairs' category
    counts (``cell_counts``); ``start`` ``(pairs,)`` where each search starts
    (0 by default). ``n·information`` is the expected information on ``ρ``
    with the margins known, so ``1/√(n·information)`` is its standard error
    then. A pair whose margins have no finite cut point has ``ρ = 0``.
    """
    h_i = np.ascontiguousarray(h_i, dtype=np.float64)
    h_j = np.ascontiguousarray(h_j, dtype=np.float64)
    tables = np.ascontiguousarray(tables, dtype=np.float64)
    if h_i.ndim != 2 or h_i.shape != h_j.shape or tables.shape != (h_i.shape[0],) + (h_i.shape[1] + 1,) * 2:
        raise ValueError(f"cut points {h_i.shape}, {h_j.shape} and tables {tables.shape} do not match")
    pairs = h_i.shape[0]
    start = np.zeros(pairs) if start is None else np.ascontiguousarray(np.broadcast_to(start, (pairs,)), np.float64)
    rho, information = np.empty(pairs), np.empty(pairs)
    _fit_pairs(h_i, h_j, tables, start, rho, information, *compiled.ORTHANT_RULES, max_iter, tol)
    return rho, information


def standardised_cuts(cuts, bias, scale):
    """Return ``h = (c − b̂)/σ̂`` ``(d, K)`` of each coordinate's cut points; ``+inf`` where ``σ̂`` is not > 0."""
    cuts, bias, scale = (np.asarray(v, dtype=np.float64) for v in (cuts, bias, scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (cuts - bias[:, None]) / scale[:, None]
    return np.where((scale > 0)[:, None], h, np.inf)


def correlation_block(counts, n, margins_i, margins_j, h_i, h_j, index_i, index_j):
    """Return ``(ρ, information)`` ``(d_i, d_j)`` of a block pair from the counts of its ``K`` indicators a value.

    ``counts`` ``(K·d_i, K·d_j)`` are the block pair's co-exceedances,
    coordinate ``p``'s cut ``a`` in row ``p·K + a`` (``compiled.chunk_pass``
    with ``(d, K)`` thresholds); ``margins_i`` ``(d_i, K)`` each coordinate's
    exceedances of its cut points (the diagonal of its own block's counts);
    ``h_i`` ``(d_i, K)`` its standardised cut points (``standardised_cuts``).
    Each pair's search starts from the tetrachoric ``ρ`` of its first cut
    points. Where ``index_i`` equals ``index_j``, ``ρ = 1``; a block on the
    diagonal is fitted on its upper triangle and mirrored.
    """
    d_i, k = margins_i.shape
    d_j = margins_j.shape[0]
    rho, information = np.empty((d_i, d_j)), np.zeros((d_i, d_j))
    diagonal = d_i == d_j and np.array_equal(index_i, index_j)
    rows, columns = np.triu_indices(d_i, k=1) if diagonal else (v.ravel() for v in np.indices((d_i, d_j)))
    grid = counts.reshape(d_i, k, d_j, k)
    first_i, first_j = special.ndtri(margins_i[:, 0] / n), special.ndtri(margins_j[:, 0] / n)
    for start in range(0, rows.size, _SLAB_PAIRS):
        p, q = rows[start:start + _SLAB_PAIRS], columns[start:start + _SLAB_PAIRS]
        exceedances = np.empty((p.size, k + 1, k + 1), dtype=np.int64)
        exceedances[:, 0, 0] = n
        exceedances[:, 1:, 0] = margins_i[p]
        exceedances[:, 0, 1:] = margins_j[q]
        exceedances[:, 1:, 1:] = grid[p, :, q, :]
        begin = compiled.invert_orthant(first_i[p], first_j[q], grid[p, 0, q, 0] / n)
        rho[p, q], information[p, q] = fit_pairs(h_i[p], h_j[q], cell_counts(exceedances), begin)
    if diagonal:
        rho[columns, rows], information[columns, rows] = rho[rows, columns], information[rows, columns]
    rho[index_i[:, None] == index_j[None, :]] = 1.0
    return rho, information
