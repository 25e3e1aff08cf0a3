"""Standard errors of the one-layer fit's estimates, by the delta method, from the fit's own sums (docs/design.md §11).

Every estimate is asymptotically a mean of per-sample influence functions,
so its variance is that of the influence function over ``n``:

- ``(b̂_i, σ̂_i)``, a maximum likelihood estimate: ``V_i s_i(x_i)``, with
  ``s_i`` the per-sample score and ``V_i`` the inverse of the observed
  information per sample (``coordinate_information``);
- ``ρ̂_ij``, the root of ``Φ₂(a_i, a_j; ρ) = C_ij/n``: a combination of the
  indicators ``I_i I_j``, ``I_i``, ``I_j`` (tetrachoric margins
  ``a = Φ⁻¹(c/n)``) or of ``I_i I_j`` and the Step 1 influences (margins
  ``(b̂ − t)/σ̂``);
- ``Σ̂_ij = σ̂_i σ̂_j ρ̂_ij``: ``σ_i σ_j ψ_ρ + ρ σ_j ψ_σi + ρ σ_i ψ_σj``.

The covariances between these pieces are expectations under the fitted
model of products of piecewise polynomials in a standard bivariate normal
``(z_i, z_j)`` of correlation ``ρ``: all of them follow from the orthant
moments ``E[z_i^p z_j^q 1{z_i > h} 1{z_j > k}]`` (``orthant_moments``), so
no second read of the data is needed.
"""

import math
from typing import NamedTuple

import numba
import numpy as np
from scipy import special

from . import compiled, kernels, polychoric

_NORMAL = 1.0 / math.sqrt(2.0 * math.pi)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pdf(x):
    return 0.0 if math.isinf(x) else _NORMAL * math.exp(-0.5 * x * x)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _times_pdf(power, x):
    """``x**power · φ(x)``, 0 at ±inf."""
    return 0.0 if math.isinf(x) else x**power * _NORMAL * math.exp(-0.5 * x * x)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _above(x):
    """``P(z > x)``."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _orthant(h, k, rho, rules, rule_limits):
    """``P(z_i > h, z_j > k) = Φ₂(−h, −k; ρ)``, with the inversion's quadrature (``compiled.orthant_pair``)."""
    return compiled.orthant_pair(-h, -k, rho, rules, rule_limits)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _face_moments(h, face, k, rho, sd, out):
    """Write ``φ(h) h^p E[Y^q 1{Y > k}]`` into ``out[p, q]`` (p, q ≤ 2), ``Y ~ N(ρh, sd²)``: the face ``z_i = h``.

    ``face`` is ``_pdf(h)``, which the caller may know already.
    """
    if math.isinf(h):
        out[:, :] = 0.0
        return
    mean = rho * h
    if math.isinf(k):
        tail = (1.0, mean, mean * mean + sd * sd)
    else:
        alpha = (k - mean) / sd
        upper, density = _above(alpha), _pdf(alpha)
        tail = (upper, mean * upper + sd * density, (mean * mean + sd * sd) * upper + sd * (k + mean) * density)
    for q in range(3):
        out[0, q] = face * tail[q]
        out[1, q] = face * h * tail[q]
        out[2, q] = face * h * h * tail[q]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _orthant_moments(h, k, face_h, face_k, rho, upper, t, b_i, b_j):
    """Fill ``t`` (3, 3) with ``E[z_i^p z_j^q 1{z_i > h} 1{z_j > k}]``, ``upper`` being ``t[0, 0]`` (see ``orthant_moments``).

    ``face_h`` and ``face_k`` are ``_pdf(h)`` and ``_pdf(k)``; ``b_i`` and
    ``b_j`` (3, 3) are scratch, the caller's, so that no call allocates.
    """
    sd = math.sqrt((1.0 - rho) * (1.0 + rho))
    _face_moments(h, face_h, k, rho, sd, b_i)  # b_i[p, q] = B_i(p, q)
    _face_moments(k, face_k, h, rho, sd, b_j)  # b_j[q, p] = B_j(p, q)
    t[0, 0] = upper
    t[1, 0] = b_i[0, 0] + rho * b_j[0, 0]
    t[0, 1] = b_j[0, 0] + rho * b_i[0, 0]
    t[1, 1] = b_i[0, 1] + rho * (t[0, 0] + b_j[1, 0])
    t[2, 0] = t[0, 0] + b_i[1, 0] + rho * b_j[0, 1]
    t[0, 2] = t[0, 0] + b_j[1, 0] + rho * b_i[0, 1]
    t[2, 1] = t[0, 1] + b_i[1, 1] + rho * (t[1, 0] + b_j[1, 1])
    t[1, 2] = t[1, 0] + b_j[1, 1] + rho * (t[0, 1] + b_i[1, 1])
    t[2, 2] = t[0, 2] + b_i[1, 2] + rho * (2.0 * t[1, 1] + b_j[2, 1])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _orthant_moments_many(h, k, rho, out, rules, rule_limits):
    b_i, b_j = np.empty((3, 3)), np.empty((3, 3))
    for m in range(h.size):
        _orthant_moments(h[m], k[m], _pdf(h[m]), _pdf(k[m]), rho[m], _orthant(h[m], k[m], rho[m], rules, rule_limits),
                         out[m], b_i, b_j)


def orthant_moments(h, k, rho):
    """Return ``T[..., p, q] = E[z_i^p z_j^q 1{z_i > h} 1{z_j > k}]`` for ``p, q ≤ 2`` (shape ``(..., 3, 3)``).

    ``(z_i, z_j)`` is standard bivariate normal with correlation ``|ρ| < 1``;
    ``h`` and ``k`` may be −inf (no bound). Broadcasts.

    Notes
    -----
    Stein's identity with the boundary terms of the orthant:
    ``T(p+1, q) = p T(p−1, q) + B_i(p, q) + ρ (q T(p, q−1) + B_j(p, q))`` and
    the same with the roles of ``i`` and ``j`` exchanged, where
    ``B_i(p, q) = φ(h) h^p E[Y^q 1{Y > k}]``, ``Y ~ N(ρh, 1 − ρ²)`` (the law
    of ``z_j`` on the face ``z_i = h``), and ``B_j`` likewise.
    """
    h, k, rho = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (h, k, rho)))
    out = np.empty(h.shape + (3, 3))
    _orthant_moments_many(np.ascontiguousarray(h).reshape(-1), np.ascontiguousarray(k).reshape(-1),
                          np.ascontiguousarray(rho).reshape(-1), out.reshape(-1, 3, 3), *compiled.ORTHANT_RULES)
    return out


# --------------------------------------------------------------------------
# Per coordinate: what the pairs' errors need of it
# --------------------------------------------------------------------------


class CoordinateTerms(NamedTuple):
    """What a pair's standard error needs of each of its coordinates; fields of shape (d, ...)."""

    scale: np.ndarray  # σ̂
    zero_point: np.ndarray  # u = −b̂/σ̂: x = 0 where z ≤ u
    margin: np.ndarray  # a, the inversion's margin: the indicator is z > −a
    information: np.ndarray  # (d, 2, 2) V: n · Cov(b̂, σ̂) (kernels.coordinate_information)
    score_below: np.ndarray  # (d, 2, 3): the score (∂b, ∂σ) per sample where z ≤ u, polynomial in z
    score_step: np.ndarray  # (d, 2, 3): what it adds where z > u
    exceedances: np.ndarray  # c_i = C_ii, the samples above the threshold
    exponent: np.ndarray  # e: σ̂, the information and the scores are in units 2**e (the statistics')

    def stack(self):
        """Return the terms as one (d, 21) float64 array, to pass through a graph chunked by coordinates."""
        d = len(self.scale)
        return np.column_stack([self.scale, self.zero_point, self.margin, self.information.reshape(d, 4),
                                self.score_below.reshape(d, 6), self.score_step.reshape(d, 6), self.exceedances,
                                self.exponent])

    @classmethod
    def unstack(cls, stacked):
        d = len(stacked)
        return cls(stacked[:, 0], stacked[:, 1], stacked[:, 2], stacked[:, 3:7].reshape(d, 2, 2),
                   stacked[:, 7:13].reshape(d, 2, 3), stacked[:, 13:19].reshape(d, 2, 3), stacked[:, 19],
                   stacked[:, 20])

    def take(self, index):
        return CoordinateTerms(*(field[index] for field in self))


def coordinate_terms(bias, scale, margins, information, exceedances, method="censored", exponents=None):
    """Return the ``CoordinateTerms`` of the Step 1 estimates, the inversion's margins and ``C_ii``.

    ``bias`` and ``scale`` are in the data's units, ``information`` in units
    ``2**exponents`` (``kernels.coordinate_information``; 0 by default); the
    terms are in the latter, so that data far from 1 in scale cannot
    overflow them.

    The score of ``(b, σ)`` per sample, with ``z = (x − b)/σ`` and
    ``u = −b/σ``: where ``x > 0`` it is ``(z, z² − 1)/σ`` (minus
    ``λ(−u)(1, u)/σ`` for the truncated likelihood, ``λ(v) = φ(v)/Φ(v)``);
    where ``x = 0``, ``−λ(u)(1, u)/σ`` (censored) or nothing (truncated).
    """
    bias, scale, margins = (np.asarray(v, dtype=np.float64) for v in (bias, scale, margins))
    exponents = np.zeros(len(scale), dtype=np.int64) if exponents is None else np.asarray(exponents, np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = -bias / scale
        scale = np.ldexp(scale, -exponents)
        density = np.where(np.isinf(u), 0.0, _NORMAL * np.exp(-0.5 * u * u))
        below = np.zeros(scale.shape + (2, 3))
        step = np.zeros(scale.shape + (2, 3))
        if method == "censored":
            mills = density / special.ndtr(u)
            below[:, 0, 0] = -mills / scale
            below[:, 1, 0] = -u * mills / scale
        elif method == "truncated":
            mills = density / special.ndtr(-u)
            step[:, 0, 0] = -mills / scale
            step[:, 1, 0] = -u * mills / scale
        else:
            raise ValueError(f"unknown method {method!r}: use 'censored' or 'truncated'")
        step[:, 0, 1] = 1.0 / scale
        step[:, 1, 2] = 1.0 / scale
        step[:, 1, 0] += -1.0 / scale
        step -= below  # where x > 0 the score is below + step
    return CoordinateTerms(scale, u, margins, np.asarray(information, dtype=np.float64), below, step,
                           np.asarray(exceedances, dtype=np.float64), exponents.astype(np.float64))


# --------------------------------------------------------------------------
# Per pair
# --------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _quadratic(c, cov):
    """``cᵀ cov c`` over the nonzero entries of ``c`` (an entry of ``cov`` that ``c`` does not weigh may be NaN)."""
    total = 0.0
    for a in range(c.size):
        if c[a] != 0.0:
            for b in range(c.size):
                if c[b] != 0.0:
                    total += c[a] * cov[a, b] * c[b]
    return total


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _influence(information, coefficients, moments, row, column, cov):
    """Write ``V Σ_x coefficients[:, x] moments[x]`` (a score's moment, carried by ``V``) into ``cov[row, column:column+2]``."""
    first = second = 0.0
    for x in range(3):
        first += coefficients[0, x] * moments[x]
        second += coefficients[1, x] * moments[x]
    cov[row, column] += information[0, 0] * first + information[0, 1] * second
    cov[row, column + 1] += information[1, 0] * first + information[1, 1] * second


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _score_products(first, second, moments, out):
    """Add ``Σ_xy first[c, x] second[e, y] moments[x, y]`` to ``out[c, e]``."""
    for c in range(2):
        for e in range(2):
            for x in range(3):
                for y in range(3):
                    out[c, e] += first[c, x] * second[e, y] * moments[x, y]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _with_step_one_influences(v_i, v_j, scores, cov, first):
    """Fill ``cov`` with ``Cov(ψ_i) = V_i``, ``Cov(ψ_j) = V_j`` and ``Cov(ψ_i, ψ_j) = V_i E[s_i s_jᵀ] V_j`` from
    row ``first``, and mirror its upper triangle: the Step 1 influences' block of a pair's covariance."""
    for x in range(2):
        for y in range(2):
            cov[first + x, first + y], cov[first + 2 + x, first + 2 + y] = v_i[x, y], v_j[x, y]
            total = 0.0
            for e in range(2):
                for f in range(2):
                    total += v_i[x, e] * scores[e, f] * v_j[f, y]
            cov[first + x, first + 2 + y] = total
    for a in range(cov.shape[0]):
        for b in range(a):
            cov[a, b] = cov[b, a]


# Where a pair's orthant moments are kept (``_pair_variance``'s scratch).
_BOTH, _AT_H_I, _AT_H_J, _AT_U_I, _AT_U_J, _U_I_H_J, _H_I_U_J, _U_I_U_J, _EVERYWHERE = range(9)


# What ``_pair_variance`` needs of each coordinate alone, made once per coordinate (``coordinate_edges``).
_EXCEEDED, _BOUND, _ABOVE_BOUND, _ABOVE_ZERO, _PDF_BOUND, _PDF_ZERO = range(6)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _coordinate_edges(margin, zero_point):
    """Per coordinate: ``P(z > −a)``, the bound ``h = max(−a, u)``, ``P(z > h)``, ``P(z > u)``, ``φ(h)``, ``φ(u)``."""
    edges = np.empty((margin.size, 6))
    for k in range(margin.size):
        bound = max(-margin[k], zero_point[k])
        edges[k, _EXCEEDED] = _above(-margin[k])
        edges[k, _BOUND] = bound
        edges[k, _ABOVE_BOUND] = _above(bound)
        edges[k, _ABOVE_ZERO] = _above(zero_point[k])
        edges[k, _PDF_BOUND] = _pdf(bound)
        edges[k, _PDF_ZERO] = _pdf(zero_point[k])
    return edges


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pair_variance(scale, zero_point, margin, information, below, step, edges, i, j, rho, p11, tetrachoric, rules,
                   rule_limits, moments, faces, lower_i, lower_j, cdf_i, cdf_j, uppers, totals, cov, c, scores, out):
    """Write ``(var_ρ, var_Σ)`` of the pair ``(i, j)`` into ``out`` (see ``pair_variances``); the rest is scratch."""
    a_i, a_j, u_i, u_j = margin[i], margin[j], zero_point[i], zero_point[j]
    h_i, h_j = edges[i, _BOUND], edges[j, _BOUND]
    p_i, p_j = edges[i, _EXCEEDED], edges[j, _EXCEEDED]
    sd = math.sqrt((1.0 - rho) * (1.0 + rho))
    density = math.exp(-(a_i * a_i - 2.0 * rho * a_i * a_j + a_j * a_j) / (2.0 * sd * sd)) / (2.0 * math.pi * sd)
    weight_i, weight_j = _above(-(a_j - rho * a_i) / sd), _above(-(a_i - rho * a_j) / sd)

    cov[:, :] = 0.0  # of (I_i I_j, I_i, I_j, ψ_i, ψ_j)
    cov[0, 0] = p11 * (1.0 - p11)
    cov[0, 1] = p11 * (1.0 - p_i)
    cov[0, 2] = p11 * (1.0 - p_j)
    cov[1, 1] = p_i * (1.0 - p_i)
    cov[2, 2] = p_j * (1.0 - p_j)
    cov[1, 2] = p11 - p_i * p_j

    # The three orthants bounded on both sides share ρ, and so one quadrature's sines; Φ(−u) = P(z > u).
    lower_i[0], lower_j[0], cdf_i[0], cdf_j[0] = -u_i, -h_j, edges[i, _ABOVE_ZERO], edges[j, _ABOVE_BOUND]
    lower_i[1], lower_j[1], cdf_i[1], cdf_j[1] = -h_i, -u_j, edges[i, _ABOVE_BOUND], edges[j, _ABOVE_ZERO]
    lower_i[2], lower_j[2], cdf_i[2], cdf_j[2] = -u_i, -u_j, edges[i, _ABOVE_ZERO], edges[j, _ABOVE_ZERO]
    compiled.orthant_same_correlation(lower_i, lower_j, cdf_i, cdf_j, rho, rules, rule_limits, uppers, totals)
    none = -math.inf
    face_h_i, face_h_j, face_u_i, face_u_j = edges[i, _PDF_BOUND], edges[j, _PDF_BOUND], edges[i, _PDF_ZERO], \
        edges[j, _PDF_ZERO]
    # Per orthant, in the order of _BOTH ... _EVERYWHERE: its bounds, φ at them, and P(z_i > h, z_j > k) (a
    # bound of −inf has φ = 0, and P(z > −inf) = 1).
    orthants = ((h_i, h_j, face_h_i, face_h_j, p11),
                (h_i, none, face_h_i, 0.0, edges[i, _ABOVE_BOUND]),
                (none, h_j, 0.0, face_h_j, edges[j, _ABOVE_BOUND]),
                (u_i, none, face_u_i, 0.0, edges[i, _ABOVE_ZERO]),
                (none, u_j, 0.0, face_u_j, edges[j, _ABOVE_ZERO]),
                (u_i, h_j, face_u_i, face_h_j, uppers[0]),
                (h_i, u_j, face_h_i, face_u_j, uppers[1]),
                (u_i, u_j, face_u_i, face_u_j, uppers[2]),
                (none, none, 0.0, 0.0, 1.0))
    for m in range(9):
        h, k, face_h, face_k, upper = orthants[m]
        _orthant_moments(h, k, face_h, face_k, rho, upper, moments[m], faces[0], faces[1])

    below_i, step_i, below_j, step_j = below[i], step[i], below[j], step[j]
    v_i, v_j = information[i], information[j]
    for coefficients, bound in ((below_i, _BOTH), (step_i, _BOTH)):  # E[I_i I_j s_i], s_i = below + step there
        _influence(v_i, coefficients, moments[bound, :, 0], 0, 3, cov)
    for coefficients, bound in ((below_j, _BOTH), (step_j, _BOTH)):
        _influence(v_j, coefficients, moments[bound, 0, :], 0, 5, cov)
    for coefficients in (below_i, step_i):  # E[I_i s_i]
        _influence(v_i, coefficients, moments[_AT_H_I, :, 0], 1, 3, cov)
    for coefficients in (below_j, step_j):  # E[I_j s_j]
        _influence(v_j, coefficients, moments[_AT_H_J, 0, :], 2, 5, cov)
    _influence(v_i, below_i, moments[_AT_H_J, :, 0], 2, 3, cov)  # E[I_j s_i]
    _influence(v_i, step_i, moments[_U_I_H_J, :, 0], 2, 3, cov)
    _influence(v_j, below_j, moments[_AT_H_I, 0, :], 1, 5, cov)  # E[I_i s_j]
    _influence(v_j, step_j, moments[_H_I_U_J, 0, :], 1, 5, cov)
    scores[:, :] = 0.0  # E[s_i s_jᵀ]
    _score_products(below_i, below_j, moments[_EVERYWHERE], scores)
    _score_products(step_i, below_j, moments[_AT_U_I], scores)
    _score_products(below_i, step_j, moments[_AT_U_J], scores)
    _score_products(step_i, step_j, moments[_U_I_U_J], scores)
    _with_step_one_influences(v_i, v_j, scores, cov, 3)

    c[:] = 0.0
    c[0] = 1.0 / density
    if tetrachoric:
        c[1], c[2] = -weight_i / density, -weight_j / density
    else:
        slope_i, slope_j = _pdf(a_i) * weight_i / (scale[i] * density), _pdf(a_j) * weight_j / (scale[j] * density)
        c[3], c[4], c[5], c[6] = -slope_i, slope_i * a_i, -slope_j, slope_j * a_j
    out[0] = _quadratic(c, cov)
    for a in range(7):
        c[a] *= scale[i] * scale[j]
    c[4] += rho * scale[j]
    c[6] += rho * scale[i]
    out[1] = _quadratic(c, cov)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pair_variances(scale, zero_point, margin, information, below, step, edges, first, second, rho, p11,
                    tetrachoric, rules, rule_limits, out):
    moments, faces, cov, c, scores = np.empty((9, 3, 3)), np.empty((2, 3, 3)), np.empty((7, 7)), np.empty(7), \
        np.empty((2, 2))
    lower_i, lower_j, cdf_i, cdf_j, uppers, totals = np.empty(3), np.empty(3), np.empty(3), np.empty(3), np.empty(3), \
        np.empty(3)
    for m in range(rho.size):
        _pair_variance(scale, zero_point, margin, information, below, step, edges, first[m], second[m], rho[m],
                       p11[m], tetrachoric, rules, rule_limits, moments, faces, lower_i, lower_j, cdf_i, cdf_j, uppers,
                       totals, cov, c, scores, out[m])


def coordinate_edges(terms):
    """Return what a pair's variance needs of each coordinate of ``terms`` alone: its bound, tails and densities."""
    margin, zero_point = (np.ascontiguousarray(field, dtype=np.float64) for field in (terms.margin, terms.zero_point))
    return _coordinate_edges(margin, zero_point)


def pair_variances(terms, first, second, rho, p11, inversion="tetrachoric", edges=None):
    """Return ``(var_ρ, var_Σ)`` per sample (divide by ``n``) of pairs ``i ≠ j`` with ``|ρ| < 1``.

    Parameters
    ----------
    terms : CoordinateTerms
    first, second : ndarray of int (P,)
        Each pair's coordinates, rows of ``terms``.
    rho : ndarray (P,)
        ``ρ̂_ij``.
    p11 : ndarray (P,)
        ``C_ij / n``.
    inversion : {"tetrachoric", "model"}
        The margins ``ρ̂`` was inverted with: ``Φ⁻¹(c_i/n)``, or
        ``(b̂_i − t_i)/σ̂_i`` (then ``ρ̂`` carries the Step 1 errors too).
    edges : ndarray, optional
        ``coordinate_edges(terms)``, made once by a caller whose many calls
        share ``terms``; made here by default.

    Notes
    -----
    The influence functions are linear in
    ``B = (I_i I_j, I_i, I_j, ψ_i, ψ_j)``, ``ψ = V s`` the Step 1 influences,
    so each variance is ``cᵀ Cov(B) c``. ``Cov(ψ_i) = V_i``; the rest are
    orthant moments at the fitted ``(u, −a, ρ)``. Where the indicator meets
    a score, its bound is taken at least ``u`` (the thresholds are not
    negative, so in the model ``−a ≥ u``). Compiled, pair by pair.
    """
    out = np.empty((len(rho), 2))
    edges = coordinate_edges(terms) if edges is None else edges
    _pair_variances(*(np.ascontiguousarray(field, dtype=np.float64) for field in terms[:6]), edges,
                    np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64),
                    np.asarray(rho, dtype=np.float64), np.asarray(p11, dtype=np.float64),
                    inversion == "tetrachoric", *compiled.ORTHANT_RULES, out)
    return out[:, 0], out[:, 1]


# --------------------------------------------------------------------------
# Per pair, from a table of cut-point categories (the polychoric ρ̂)
# --------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _cut_pair_variance(scale, zero_point, information, below, step, i, j, h_i, h_j, rho, rules, rule_limits, out):
    """Write ``(var_ρ, var_Σ)`` per sample of the pair ``(i, j)``'s polychoric ``ρ̂`` into ``out`` (``cut_pair_variances``)."""
    k = h_i.size
    sd = math.sqrt((1.0 - rho) * (1.0 + rho))
    # The grid of each coordinate: −inf, the zero point u, the K standardised cuts (u ≤ h_1, cuts ≥ 0), +inf.
    # Its intervals are the fine cells' sides; interval 0 is z ≤ u, and interval g ≥ 1 lies in category g − 1.
    lines = k + 3
    grid_i, grid_j = np.empty(lines), np.empty(lines)
    grid_i[0], grid_j[0], grid_i[1], grid_j[1] = -math.inf, -math.inf, zero_point[i], zero_point[j]
    for a in range(k):
        grid_i[2 + a], grid_j[2 + a] = h_i[a], h_j[a]
    grid_i[lines - 1], grid_j[lines - 1] = math.inf, math.inf
    # Orthant moments T(g, e) = E[z_i^p z_j^q 1{z_i > grid_i[g]} 1{z_j > grid_j[e]}] at every corner.
    corners = (lines - 1) * (lines - 1)
    lower_i, lower_j, cdf_i, cdf_j = np.empty(corners), np.empty(corners), np.empty(corners), np.empty(corners)
    uppers, totals = np.empty(corners), np.empty(corners)
    for g in range(lines - 1):
        for e in range(lines - 1):
            m = g * (lines - 1) + e
            lower_i[m], lower_j[m] = -grid_i[g], -grid_j[e]
            cdf_i[m], cdf_j[m] = _above(grid_i[g]), _above(grid_j[e])
    compiled.orthant_same_correlation(lower_i, lower_j, cdf_i, cdf_j, rho, rules, rule_limits, uppers, totals)
    orthant = np.zeros((lines, lines, 3, 3))  # a bound of +inf (the last line) leaves nothing
    faces = np.empty((2, 3, 3))
    for g in range(lines - 1):
        for e in range(lines - 1):
            if grid_i[g] < math.inf and grid_j[e] < math.inf:  # _orthant_moments reads an infinite bound as none
                _orthant_moments(grid_i[g], grid_j[e], _pdf(grid_i[g]), _pdf(grid_j[e]), rho,
                                 uppers[g * (lines - 1) + e], orthant[g, e], faces[0], faces[1])
    # The fine cells' moments, and the categories' probabilities and their slopes in ρ.
    fine = np.empty((lines - 1, lines - 1, 3, 3))
    cells, slopes = np.zeros((k + 1, k + 1)), np.zeros((k + 1, k + 1))
    for g in range(lines - 1):
        for e in range(lines - 1):
            for p in range(3):
                for q in range(3):
                    fine[g, e, p, q] = orthant[g, e, p, q] - orthant[g + 1, e, p, q] - orthant[g, e + 1, p, q] \
                        + orthant[g + 1, e + 1, p, q]
            cells[max(g - 1, 0), max(e - 1, 0)] += fine[g, e, 0, 0]
    corner = np.zeros((k + 2, k + 2))  # φ₂ at the categories' corners (h_a, h_b), a, b = 1 … K
    above_i, above_j = np.zeros((k + 2, k + 2)), np.zeros((k + 2, k + 2))  # ∂U/∂h_i and ∂U/∂h_j there
    for a in range(1, k + 1):
        x = h_i[a - 1]
        if math.isfinite(x):
            above_i[a, 0] = -_pdf(x)
        for b in range(1, k + 1):
            y = h_j[b - 1]
            if math.isfinite(x) and math.isfinite(y):
                corner[a, b] = math.exp(-(x * x - 2.0 * rho * x * y + y * y) / (2.0 * sd * sd)) / (2.0 * math.pi * sd)
                above_i[a, b] = -_pdf(x) * _above((y - rho * x) / sd)
                above_j[a, b] = -_pdf(y) * _above((x - rho * y) / sd)
            if a == 1 and math.isfinite(y):
                above_j[0, b] = -_pdf(y)
    for a in range(k + 1):
        for b in range(k + 1):
            slopes[a, b] = corner[a, b] - corner[a + 1, b] - corner[a, b + 1] + corner[a + 1, b + 1]
    # The score of ρ is w_ab on category (a, b); its information; and G, the derivative of its mean in (b, σ).
    weights = np.zeros((k + 1, k + 1))
    info = 0.0
    g_i, g_j = np.zeros(2), np.zeros(2)
    for a in range(k + 1):
        for b in range(k + 1):
            if cells[a, b] > 1e-12:
                w = slopes[a, b] / cells[a, b]
                weights[a, b] = w
                info += w * slopes[a, b]
                # ∂P_ab/∂h_i,c: the category's lower cut c = a (a ≥ 1) and upper cut c = a + 1 (a < K).
                for c, sign in ((a, 1.0), (a + 1, -1.0)):
                    if 1 <= c <= k and math.isfinite(h_i[c - 1]):
                        change = sign * (above_i[c, b] - above_i[c, b + 1])
                        g_i[0] += w * change / scale[i]  # −w ∂P/∂h · ∂h/∂b, ∂h/∂b = −1/σ
                        g_i[1] += w * change * h_i[c - 1] / scale[i]  # ∂h/∂σ = −h/σ
                for c, sign in ((b, 1.0), (b + 1, -1.0)):
                    if 1 <= c <= k and math.isfinite(h_j[c - 1]):
                        change = sign * (above_j[a, c] - above_j[a + 1, c])
                        g_j[0] += w * change / scale[j]
                        g_j[1] += w * change * h_j[c - 1] / scale[j]
    if not info > 0.0:
        out[0], out[1] = math.nan, math.nan
        return
    # E[s_ρ s_i], E[s_ρ s_j] and E[s_i s_jᵀ] over the fine cells: the scores are below + step above u.
    score_i, score_j, scores = np.zeros(2), np.zeros(2), np.zeros((2, 2))
    coefficients_i, coefficients_j = np.empty((2, 3)), np.empty((2, 3))
    for g in range(lines - 1):
        for e in range(lines - 1):
            w = weights[max(g - 1, 0), max(e - 1, 0)]
            for c in range(2):
                for x in range(3):
                    coefficients_i[c, x] = below[i, c, x] + (step[i, c, x] if g >= 1 else 0.0)
                    coefficients_j[c, x] = below[j, c, x] + (step[j, c, x] if e >= 1 else 0.0)
            for c in range(2):
                for x in range(3):
                    score_i[c] += w * coefficients_i[c, x] * fine[g, e, x, 0]
                    score_j[c] += w * coefficients_j[c, x] * fine[g, e, 0, x]
            _score_products(coefficients_i, coefficients_j, fine[g, e], scores)
    # Cov of (s_ρ, ψ_i, ψ_j), ψ = V s the Step 1 influences, and ψ_ρ = (s_ρ + G_i ψ_i + G_j ψ_j) / I.
    v_i, v_j = information[i], information[j]
    cov = np.zeros((5, 5))
    cov[0, 0] = info
    for x in range(2):
        cov[0, 1 + x] = v_i[x, 0] * score_i[0] + v_i[x, 1] * score_i[1]
        cov[0, 3 + x] = v_j[x, 0] * score_j[0] + v_j[x, 1] * score_j[1]
    _with_step_one_influences(v_i, v_j, scores, cov, 1)
    coefficients = np.array([1.0, g_i[0], g_i[1], g_j[0], g_j[1]]) / info
    out[0] = _quadratic(coefficients, cov)
    coefficients *= scale[i] * scale[j]
    coefficients[2] += rho * scale[j]
    coefficients[4] += rho * scale[i]
    out[1] = _quadratic(coefficients, cov)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _cut_pair_variances(scale, zero_point, information, below, step, first, second, h_first, h_second, rho, rules,
                        rule_limits, out):
    for m in range(rho.size):
        _cut_pair_variance(scale, zero_point, information, below, step, first[m], second[m], h_first[m],
                           h_second[m], rho[m], rules, rule_limits, out[m])


def cut_pair_variances(terms, first, second, h_first, h_second, rho):
    """Return ``(var_ρ, var_Σ)`` per sample (divide by ``n``) of pairs' polychoric ``ρ̂`` (``polychoric``).

    ``ρ̂`` maximises the likelihood of the pair's table of cut-point
    categories with the margins' standardised cut points ``h = (c − b̂)/σ̂``
    (``h_first``, ``h_second``, ``(P, K)``, increasing, ``+inf`` for a
    missing cut). Its influence is ``(s_ρ + G_i ψ_i + G_j ψ_j)/I``: ``s_ρ``
    the table's score (``P'_ab/P_ab`` on category ``(a, b)``), ``I`` its
    information, ``ψ = V s`` the Step 1 influences and ``G`` the derivative
    of the score's mean in ``(b, σ)`` (``−Σ_ab w_ab ∂P_ab/∂θ``), through the
    cut points' ``h``. Every covariance is a sum of orthant moments over the
    cells of the grid the cut points and the zero points ``u`` make.
    ``Σ̂ = σ̂_i σ̂_j ρ̂`` adds the scales' influences, as ``pair_variances``.
    In the terms' units (``CoordinateTerms``); NaN where the table carries
    no information.
    """
    out = np.empty((len(rho), 2))
    _cut_pair_variances(*(np.ascontiguousarray(field, dtype=np.float64) for field in
                          (terms.scale, terms.zero_point, terms.information, terms.score_below, terms.score_step)),
                        np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64),
                        np.ascontiguousarray(h_first, dtype=np.float64), np.ascontiguousarray(h_second, dtype=np.float64),
                        np.asarray(rho, dtype=np.float64), *compiled.ORTHANT_RULES, out)
    return out[:, 0], out[:, 1]


SLAB_PAIRS = 8_192


def standard_error_block(counts, n, covariance, terms_i, terms_j, index_i, index_j, inversion="tetrachoric"):
    """Return the standard errors ``(SE(ρ̂), SE(Σ̂))`` of a block of pairs, stacked: shape (2, d_i, d_j).

    Parameters
    ----------
    counts, covariance : ndarray (d_i, d_j)
        The block's co-exceedance counts ``C_ij`` and its ``Σ̂``.
    n : int
    terms_i, terms_j : ndarray (d_i, 21), (d_j, 21)
        ``CoordinateTerms.stack()`` of the block's rows and columns.
    index_i, index_j : ndarray of int
        Their coordinate numbers: where equal, ``ρ = 1`` exactly and
        ``SE(Σ̂_ii) = 2 σ̂_i SE(σ̂_i)``.
    inversion : {"tetrachoric", "model"}

    Returns
    -------
    ndarray (2, d_i, d_j)
        NaN where a coordinate has no estimate to err (``σ̂ = 0``, or its
        Step 1 has no information, as with the SGD's estimates for ``SE(Σ̂)``),
        ``inf`` where the counts carry no information on how close ``ρ`` is
        to ``±1``: a cell of the pair's 2×2 table of exceedances is empty
        (then the orthant probability is at its bound, and ``ρ̂`` at or
        numerically near ``±1``); and where the delta method gives no
        positive variance (the fitted model far from the observed
        exceedances, as a truncated fit of a few positives can be).
    """
    terms = CoordinateTerms.unstack(np.concatenate([terms_i, terms_j]))  # the rows', then the columns'
    terms_i, terms_j = CoordinateTerms.unstack(terms_i), CoordinateTerms.unstack(terms_j)
    out = np.full((2,) + counts.shape, np.nan)
    edges = coordinate_edges(terms)  # once for the block's slabs
    diagonal = counts.shape[0] == counts.shape[1] and np.array_equal(index_i, index_j)
    if diagonal:
        rows, columns = np.triu_indices(counts.shape[0], k=1)
    else:
        rows, columns = (k.ravel() for k in np.indices(counts.shape))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, rows.size, SLAB_PAIRS):
            i, j = rows[start:start + SLAB_PAIRS], columns[start:start + SLAB_PAIRS]
            pair_i, pair_j = terms_i.take(i), terms_j.take(j)
            units = (pair_i.exponent + pair_j.exponent).astype(np.int64)  # of Σ̂_ij in the terms' units
            rho = np.ldexp(covariance[i, j], -units) / (pair_i.scale * pair_j.scale)
            both = counts[i, j]
            cells = np.stack([both, pair_i.exceedances - both, pair_j.exceedances - both,
                              n - pair_i.exceedances - pair_j.exceedances + both])
            informed = (cells.min(axis=0) > 0) & np.isfinite(pair_i.margin) & np.isfinite(pair_j.margin)
            informed &= np.abs(rho) < 1
            estimated = (pair_i.scale > 0) & (pair_j.scale > 0)
            error = np.where(estimated, np.inf, np.nan)
            se = np.stack([error, error.copy()])
            fit = np.flatnonzero(informed & estimated)
            if fit.size:
                var_rho, var_sigma = pair_variances(terms, i[fit], len(terms_i.scale) + j[fit], rho[fit],
                                                    both[fit] / n, inversion, edges)
                # The delta method fails where the orthant density vanishes (ρ̂ numerically at ±1): no information.
                se[0, fit] = np.where(var_rho > 0, np.sqrt(var_rho / n), np.where(np.isnan(var_rho), np.nan, np.inf))
                se[1, fit] = np.where(var_sigma > 0, np.ldexp(np.sqrt(var_sigma / n), units[fit]),
                                      np.where(np.isnan(var_sigma), np.nan, np.inf))
            out[:, i, j] = se
        _mirrored_with_own(out, diagonal, rows, columns, terms_i, index_i, index_j, n)
    return out


def _mirrored_with_own(out, diagonal, rows, columns, terms_i, index_i, index_j, n):
    """Mirror a diagonal block's upper triangle of ``out`` (2, d_i, d_j), and set each coordinate's own entries.

    ``SE(ρ̂_ii) = 0`` and ``SE(Σ̂_ii) = 2 σ̂_i SE(σ̂_i)`` (NaN without an estimate).
    """
    if diagonal:
        out[:, columns, rows] = out[:, rows, columns]
    same = index_i[:, None] == index_j[None, :]
    sigma_se = np.sqrt(terms_i.information[:, 1, 1] / n)
    own = np.ldexp(2 * terms_i.scale * sigma_se, 2 * terms_i.exponent.astype(np.int64))
    own_sigma = np.broadcast_to(own[:, None], out.shape[1:])
    out[0][same] = np.where(terms_i.scale[:, None] > 0, 0.0, np.nan).repeat(out.shape[2], 1)[same]
    out[1][same] = own_sigma[same]


def cut_standard_error_block(n, covariance, terms_i, terms_j, h_i, h_j, index_i, index_j):
    """Return ``(SE(ρ̂), SE(Σ̂))`` of a block of pairs' polychoric estimates, stacked: shape (2, d_i, d_j).

    As ``standard_error_block``, by ``cut_pair_variances``: ``covariance``
    is the block's ``Σ̂``, ``terms_i`` and ``terms_j`` the ``CoordinateTerms``
    stacked, ``h_i`` and ``h_j`` ``(d_i, K)`` and ``(d_j, K)`` the
    coordinates' standardised cut points (``polychoric.standardised_cuts``).
    NaN where a coordinate has no estimate (``σ̂ = 0``), ``inf`` where the
    pair's table carries no information (``ρ̂`` at ``±1``).
    """
    terms = CoordinateTerms.unstack(np.concatenate([terms_i, terms_j]))
    terms_i, terms_j = CoordinateTerms.unstack(terms_i), CoordinateTerms.unstack(terms_j)
    h = np.concatenate([h_i, h_j])
    out = np.full((2,) + covariance.shape, np.nan)
    diagonal = covariance.shape[0] == covariance.shape[1] and np.array_equal(index_i, index_j)
    rows, columns = np.triu_indices(covariance.shape[0], k=1) if diagonal else \
        (k.ravel() for k in np.indices(covariance.shape))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, rows.size, SLAB_PAIRS):
            i, j = rows[start:start + SLAB_PAIRS], columns[start:start + SLAB_PAIRS]
            pair_i, pair_j = terms_i.take(i), terms_j.take(j)
            units = (pair_i.exponent + pair_j.exponent).astype(np.int64)
            rho = np.ldexp(covariance[i, j], -units) / (pair_i.scale * pair_j.scale)
            estimated = (pair_i.scale > 0) & (pair_j.scale > 0)
            se = np.stack([np.where(estimated, np.inf, np.nan)] * 2)
            fit = np.flatnonzero(estimated & (np.abs(rho) < 1))
            if fit.size:
                second = len(terms_i.scale) + j[fit]
                var_rho, var_sigma = cut_pair_variances(terms, i[fit], second, h[i[fit]], h[second], rho[fit])
                se[0, fit] = np.where(var_rho > 0, np.sqrt(var_rho / n), np.inf)
                se[1, fit] = np.where(var_sigma > 0, np.ldexp(np.sqrt(var_sigma / n), units[fit]), np.inf)
            out[:, i, j] = se
        _mirrored_with_own(out, diagonal, rows, columns, terms_i, index_i, index_j, n)
    return out


# What the summary calls an undetermined correlation: a 95% interval wider than ±1 (or none at all).
UNDETERMINED_CORRELATION_SE = 0.5
RELATIVE_ERROR_LEVELS = (0.1, 0.5)


def trust_counts(covariance, covariance_se, correlation_se, first_row, first_column):
    """Return per row of a block (rows, 4) int64: how far its entries can be trusted.

    Columns: entries ``Σ̂_ij`` with ``j ≥ i`` whose relative standard error
    ``SE(Σ̂_ij)/|Σ̂_ij|`` is above 10%, above 50%, and infinite (no
    information); and correlations ``ρ̂_ij``, ``j ≠ i``, that are undetermined
    (``SE(ρ̂_ij) > 0.5`` or infinite). NaN (no estimate) counts nowhere.
    ``first_row`` and ``first_column`` place the block in ``Σ̂``.
    """
    rows = first_row + np.arange(covariance.shape[0])[:, None]
    columns = first_column + np.arange(covariance.shape[1])[None, :]
    upper = columns >= rows
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = covariance_se / np.abs(covariance)
    counts = [((relative > level) & upper).sum(axis=1) for level in RELATIVE_ERROR_LEVELS]
    counts.append((np.isinf(covariance_se) & upper).sum(axis=1))
    counts.append(((correlation_se > UNDETERMINED_CORRELATION_SE) & (columns != rows)).sum(axis=1))
    return np.stack(counts, axis=1).astype(np.int64)


# --------------------------------------------------------------------------
# The delete-a-group jackknife: the fit remade with each group of rows left out.
# --------------------------------------------------------------------------

class JackknifeReplicates(NamedTuple):
    """The per-coordinate estimates of the fit remade with each of ``G`` groups of rows left out."""

    bias: np.ndarray  # (G, d): b̂ as reported (clipped with clip_bias)
    scale: np.ndarray  # (G, d): σ̂
    margins: np.ndarray  # (G, d): the inversion's margins a; with cut points (G, d, K), their exceedances
    rows: np.ndarray  # (G,) int64: the rows left in
    standardised: np.ndarray | None = None  # (G, d, K) with cut points: (c − b̂)/σ̂ with the likelihood's b̂


def jackknife_replicates(statistics, group_statistics, exceedances, group_exceedances, exponents, thresholds, method,
                         inversion, clip_bias, cut_points=None):
    """Return the ``JackknifeReplicates`` of a fit from its sums and each group's.

    Parameters
    ----------
    statistics : ndarray (d, 4)
        The fit's ``(n0, n1, S1, S2)``, in units ``2**exponents``.
    group_statistics : ndarray (G, d, 4)
        Each group's, in the same units; they add up to ``statistics``.
    exceedances : ndarray (d,)
        The diagonal of the counts, ``c_i``; ``group_exceedances`` (G, d) each group's.
        With ``cut_points`` (d, K), the exceedances of every cut point, (d, K)
        and (G, d, K): the replicates' margins are then those of the tables,
        with the cut points standardised by each replicate's margins.
    exponents, thresholds : ndarray (d,)
    method : {"censored", "truncated"}
    inversion : {"tetrachoric", "model"}
    clip_bias : bool
        As the fit was made: replicate ``g`` is the fit of the sums less group
        ``g``'s, made as the fit itself was.
    """
    replicates = []
    for group, group_exceedance in zip(group_statistics, group_exceedances):
        rest = statistics - group
        rows = int(round(rest[0, 0] + rest[0, 1]))  # n0 + n1: every kept row, zero or positive
        bias, scale, _ = kernels.fit_coordinates(rest, method, exponents)
        standardised = None if cut_points is None else polychoric.standardised_cuts(cut_points, bias, scale)
        bias = np.maximum(bias, 0.0) if clip_bias else bias
        if cut_points is not None:
            margins = exceedances - group_exceedance
        elif inversion == "tetrachoric":
            margins = kernels.tetrachoric_margins(exceedances - group_exceedance, rows)
        else:
            margins = kernels.threshold_margins(bias, scale, thresholds)
        replicates.append((bias, scale, margins, rows, standardised))
    bias, scale, margins, rows, standardised = zip(*replicates)
    return JackknifeReplicates(np.array(bias), np.array(scale), np.array(margins), np.array(rows, dtype=np.int64),
                               None if cut_points is None else np.array(standardised))


def jackknife_variance(replicates):
    """Return the delete-a-group jackknife variance ``(G − 1)/G · Σ_g (θ_g − θ̄)²`` of replicates on axis 0."""
    replicates = np.asarray(replicates, dtype=np.float64)
    n_groups = replicates.shape[0]
    return (n_groups - 1) / n_groups * ((replicates - replicates.mean(axis=0)) ** 2).sum(axis=0)


def jackknife_block(group_counts, counts, rows, margins_i, margins_j, scale_i, scale_j, index_i, index_j):
    """Return the jackknife standard errors ``(SE(ρ̂), SE(Σ̂))`` of a block of pairs, stacked: shape (2, d_i, d_j).

    Parameters
    ----------
    group_counts : ndarray (G, d_i, d_j)
        Each group's co-exceedance counts of the block; ``counts`` (d_i, d_j) all of them.
    rows : ndarray (G,)
        ``JackknifeReplicates.rows``.
    margins_i, margins_j, scale_i, scale_j : ndarray (G, d_i), (G, d_j)
        The replicates' margins and ``σ̂`` of the block's rows and columns.
    index_i, index_j : ndarray of int
        Their coordinate numbers (``compiled.covariance_block``).

    Returns
    -------
    ndarray (2, d_i, d_j)
        NaN where a replicate has no estimate. The replicates are summed as
        they are made (Welford's update), so a task holds a few blocks
        besides the ``G`` count blocks.
    """
    ones_i, ones_j = np.ones(counts.shape[0]), np.ones(counts.shape[1])
    return _jackknife_errors(
        (compiled.covariance_block(counts - group_counts[g], rows[g], margins_i[g], margins_j[g], ones_i, ones_j,
                                   index_i, index_j) for g in range(group_counts.shape[0])),
        scale_i, scale_j)


def cut_jackknife_block(group_counts, counts, rows, exceeded_i, exceeded_j, h_i, h_j, scale_i, scale_j, index_i,
                        index_j):
    """Return the jackknife standard errors ``(SE(ρ̂), SE(Σ̂))`` of a block of pairs' polychoric estimates.

    As ``jackknife_block``, with the counts of every cut point: ``group_counts``
    ``(G, K·d_i, K·d_j)`` and ``counts`` ``(K·d_i, K·d_j)``; ``exceeded_i``
    ``(G, d_i, K)`` each replicate's exceedances of the cut points and
    ``h_i`` ``(G, d_i, K)`` its standardised cut points
    (``JackknifeReplicates.margins`` and ``.standardised``). Each replicate
    refits every pair's table (``polychoric.correlation_block``).
    """
    return _jackknife_errors(
        (polychoric.correlation_block(counts - group_counts[g], rows[g], exceeded_i[g], exceeded_j[g], h_i[g], h_j[g],
                                      index_i, index_j)[0] for g in range(group_counts.shape[0])),
        scale_i, scale_j)


def _jackknife_errors(correlations, scale_i, scale_j):
    """Return the jackknife's ``(SE(ρ̂), SE(Σ̂))`` (2, d_i, d_j) of replicates' ``ρ`` blocks, made one at a time.

    Replicate ``g``'s ``Σ̂`` is its ``ρ`` times ``σ̂_i σ̂_j`` (``scale_i``,
    ``scale_j``, ``(G, d)``). The replicates are summed as they are made
    (Welford's update), so only a few blocks are held at once.
    """
    mean = squares = None
    for g, rho in enumerate(correlations):
        replicate = np.stack([rho, rho * np.multiply.outer(scale_i[g], scale_j[g])])
        if mean is None:
            mean, squares = np.zeros_like(replicate), np.zeros_like(replicate)
        step = replicate - mean
        mean += step / (g + 1)
        squares += step * (replicate - mean)
    n_groups = len(scale_i)
    return np.sqrt((n_groups - 1) / n_groups * squares)


def variance_ratio_sums(numerator, denominator):
    """Return ``(Σ (numerator/denominator)², count)`` over the entries where both are finite and positive.

    For standard errors, the sum of their variances' ratio: its mean is
    unbiased where the numerator's variance estimate is (a jackknife's,
    ``χ²(G − 1)/(G − 1)`` about the truth), as a mean of logarithms is not.
    """
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    compared = np.isfinite(numerator) & np.isfinite(denominator) & (numerator > 0) & (denominator > 0)
    return np.array([((numerator[compared] / denominator[compared]) ** 2).sum(), np.count_nonzero(compared)])


# --------------------------------------------------------------------------
# The model check: do the positives look like the fitted censored normal?
# --------------------------------------------------------------------------

# A coordinate fails above the χ²(2) quantile of 1 − 10⁻⁸. The statistic's tail reaches its χ²(2) limit
# slowly (it weighs fourth powers): on data from the model the nominal 10⁻⁴ quantile was exceeded 2.4·10⁻³
# of the time with 1,200 positives and 4.3·10⁻⁴ with 12,000, and the threshold 10⁻⁵ of the time with 12,000
# (benchmarks/README.md). Only coordinates with MODEL_CHECK_MIN_POSITIVES positives are checked.
MODEL_CHECK_THRESHOLD = -2.0 * np.log(1e-8)
MODEL_CHECK_MIN_POSITIVES = 10_000
# Where |b̂|/σ̂ is larger, the moments about b̂ lose too many digits to the power sums: not checked.
MODEL_CHECK_MAX_BIAS_RATIO = 1e3


def _tail_moments(u, powers):
    """Return ``M_p = E[z^p 1{z > u}]`` for ``p = 0 … powers`` (columns), ``z`` standard normal."""
    density = np.where(np.isinf(u), 0.0, _NORMAL * np.exp(-0.5 * u * u))
    moments = [special.ndtr(-u), density]
    for p in range(2, powers + 1):
        moments.append((p - 1) * moments[p - 2] + np.where(np.isinf(u), 0.0, u ** (p - 1)) * density)
    return np.stack(moments, axis=-1)


def model_check(statistics, moments, terms, n):
    """Return the model check's statistic per coordinate (d,): about χ²(2) where the coordinate follows the model.

    The third and fourth moments of the positives about ``b̂``, in units of
    ``σ̂`` (``Σ_{x>0} ((x − b̂)/σ̂)^k / n``, ``k = 3, 4``, from the stored power
    sums), against what the fitted censored normal gives them
    (``E[z^k 1{z > u}]``, ``u = −b̂/σ̂``), each difference weighed by its
    covariance under the model: that of its influence function, which
    includes the estimation of ``b̂`` and ``σ̂`` (through ``terms``' scores and
    information), every moment of it the model's, so that it is a covariance
    (positive semidefinite) even where the data are far from the model. ``statistics`` (d, 4), ``moments`` (d, 2) and ``terms``
    (``CoordinateTerms``) are in the same units, the statistics'. NaN
    where there is nothing to check: no estimate or information, fewer than
    ``MODEL_CHECK_MIN_POSITIVES`` positives, or ``|b̂|/σ̂`` above
    ``MODEL_CHECK_MAX_BIAS_RATIO``. A coordinate fails above
    ``MODEL_CHECK_THRESHOLD``.
    """
    n0, n1, s1, s2 = np.asarray(statistics, dtype=np.float64).T
    s3, s4 = np.asarray(moments, dtype=np.float64).T
    scale, u = terms.scale, terms.zero_point
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bias = -u * scale
        # Σ (x − b)^k over the positives, from the power sums.
        third = s3 - 3 * bias * s2 + 3 * bias**2 * s1 - bias**3 * n1
        fourth = s4 - 4 * bias * s3 + 6 * bias**2 * s2 - 4 * bias**3 * s1 + bias**4 * n1
        observed = np.stack([third / scale**3, fourth / scale**4], axis=1) / n
        tail = _tail_moments(u, 8)  # (d, 9)
        expected = tail[:, 3:5]
        # d(observed − expected)/d(b, σ) at the truth, per k: the standardisation and the tail's bound move.
        density_powers = np.stack([np.where(np.isinf(u), 0.0, u**k) for k in (3, 4, 5)], axis=1) * \
            np.where(np.isinf(u), 0.0, _NORMAL * np.exp(-0.5 * u * u))[:, None]
        slope = np.empty((len(u), 2, 2))
        for row, k in enumerate((3, 4)):
            slope[:, row, 0] = -(k * tail[:, k - 1] + density_powers[:, row]) / scale
            slope[:, row, 1] = -(k * tail[:, k] + density_powers[:, row + 1]) / scale
        # E[s z^l 1{z > u}]: the positives' score (below + step, polynomial in z) against z^l.
        above = terms.score_below + terms.score_step  # (d, 2, 3)
        score_moments = np.stack([np.einsum("dcx,dx->dc", above, tail[:, l:l + 3]) for l in (3, 4)], axis=2)
        influence = terms.information @ score_moments  # (d, 2 (b, σ), 2 (k)): E[ψ z^k 1]
        # E[s sᵀ] under the model: the observed information V is not its inverse away from the model, and
        # every piece of the covariance must be the model's for it to be one (positive semidefinite).
        everywhere = np.array([1.0, 0.0, 1.0, 0.0, 3.0])[np.add.outer(np.arange(3), np.arange(3))]  # E[z^(x+y)]
        beyond = tail[:, np.add.outer(np.arange(3), np.arange(3))]  # (d, 3, 3): E[z^(x+y) 1{z > u}]
        below, step = terms.score_below, terms.score_step
        score_products = np.einsum("dcx,xy,dey->dce", below, everywhere, below) + \
            np.einsum("dcx,dxy,dey->dce", below, beyond, step) + np.einsum("dcx,dxy,dey->dce", step, beyond, below) + \
            np.einsum("dcx,dxy,dey->dce", step, beyond, step)
        covariance = np.stack([np.stack([tail[:, k + l] - tail[:, k] * tail[:, l] for l in (3, 4)], -1)
                               for k in (3, 4)], -2)
        cross = slope @ influence  # (d, k, l)
        carried = slope @ terms.information
        covariance = covariance + cross + cross.transpose(0, 2, 1) + \
            carried @ score_products @ carried.transpose(0, 2, 1)
        difference = observed - expected
        solved = np.linalg.solve(covariance, difference[:, :, None])[:, :, 0]
        value = n * np.einsum("dk,dk->d", difference, solved)
    checkable = (scale > 0) & np.isfinite(terms.information).all(axis=(1, 2)) & (n1 >= MODEL_CHECK_MIN_POSITIVES) & \
        (np.abs(u) <= MODEL_CHECK_MAX_BIAS_RATIO) & np.isfinite(value)
    return np.where(checkable, value, np.nan)
