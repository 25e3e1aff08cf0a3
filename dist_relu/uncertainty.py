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

from typing import NamedTuple

import numpy as np
from scipy import special

from . import kernels

_NORMAL = 1.0 / np.sqrt(2.0 * np.pi)


def _pdf(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.isinf(x), 0.0, _NORMAL * np.exp(-0.5 * x * x))


def _times_pdf(power, x):
    """Return ``x**power · φ(x)``, 0 at ``x = ±inf``."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.isinf(x), 0.0, x**power * _NORMAL * np.exp(-0.5 * x * x))


def tail_moments(c):
    """Return ``E[z^p 1{z > c}]`` for ``p = 0, 1, 2``, ``z`` standard normal, stacked on the last axis."""
    c = np.asarray(c, dtype=np.float64)
    upper = special.ndtr(-c)
    return np.stack([upper, _pdf(c), upper + _times_pdf(1, c)], axis=-1)


def _conditional_moments(mean, sd, c):
    """Return ``E[Y^p 1{Y > c}]``, ``p = 0, 1, 2``, for ``Y ~ N(mean, sd²)``, ``sd > 0``; ``c`` may be −inf."""
    with np.errstate(invalid="ignore"):
        alpha = np.where(np.isinf(c), -np.inf, (c - mean) / sd)
    upper, density = special.ndtr(-alpha), _pdf(alpha)
    finite_c = np.where(np.isinf(c), 0.0, c)
    return (upper,
            mean * upper + sd * density,
            (mean * mean + sd * sd) * upper + sd * (finite_c + mean) * density)


def orthant_moments(h, k, rho, upper=None):
    """Return ``T[..., p, q] = E[z_i^p z_j^q 1{z_i > h} 1{z_j > k}]`` for ``p, q ≤ 2`` (shape ``(..., 3, 3)``).

    ``(z_i, z_j)`` is standard bivariate normal with correlation ``|ρ| < 1``;
    ``h`` and ``k`` may be −inf (no bound). ``upper`` is ``T[..., 0, 0]``,
    ``P(z_i > h, z_j > k)``, when it is known already.

    Notes
    -----
    Stein's identity with the boundary terms of the orthant:
    ``T(p+1, q) = p T(p−1, q) + B_i(p, q) + ρ (q T(p, q−1) + B_j(p, q))`` and
    the same with the roles of ``i`` and ``j`` exchanged, where
    ``B_i(p, q) = φ(h) h^p E[Y^q 1{Y > k}]``, ``Y ~ N(ρh, 1 − ρ²)`` (the law
    of ``z_j`` on the face ``z_i = h``), and ``B_j`` likewise.
    """
    h, k, rho = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (h, k, rho)))
    sd = np.sqrt((1.0 - rho) * (1.0 + rho))
    if upper is None:
        # Bounds beyond ±40 standard deviations are the same as infinite ones, and keep the integrand finite.
        upper = kernels.orthant_probability(-np.clip(h, -40, 40), -np.clip(k, -40, 40), rho)
    finite_h, finite_k = np.where(np.isinf(h), 0.0, h), np.where(np.isinf(k), 0.0, k)
    on_h = _conditional_moments(rho * finite_h, sd, k)  # z_j on the face z_i = h
    on_k = _conditional_moments(rho * finite_k, sd, h)
    face_h = [_times_pdf(p, h) for p in range(2)]  # φ(h) h^p
    face_k = [_times_pdf(q, k) for q in range(3)]

    def b_i(p, q):
        return face_h[p] * on_h[q]

    def b_j(p, q):
        return face_k[q] * on_k[p]

    t = np.empty(h.shape + (3, 3))
    t[..., 0, 0] = upper
    t[..., 1, 0] = b_i(0, 0) + rho * b_j(0, 0)
    t[..., 0, 1] = b_j(0, 0) + rho * b_i(0, 0)
    t[..., 1, 1] = b_i(0, 1) + rho * (t[..., 0, 0] + b_j(0, 1))
    t[..., 2, 0] = t[..., 0, 0] + b_i(1, 0) + rho * b_j(1, 0)
    t[..., 0, 2] = t[..., 0, 0] + b_j(0, 1) + rho * b_i(0, 1)
    t[..., 2, 1] = t[..., 0, 1] + b_i(1, 1) + rho * (t[..., 1, 0] + b_j(1, 1))
    t[..., 1, 2] = t[..., 1, 0] + b_j(1, 1) + rho * (t[..., 0, 1] + b_i(1, 1))
    t[..., 2, 2] = t[..., 0, 2] + b_i(1, 2) + rho * (2.0 * t[..., 1, 1] + b_j(1, 2))
    return t


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

    def stack(self):
        """Return the terms as one (d, 20) float64 array, to pass through a graph chunked by coordinates."""
        d = len(self.scale)
        return np.column_stack([self.scale, self.zero_point, self.margin, self.information.reshape(d, 4),
                                self.score_below.reshape(d, 6), self.score_step.reshape(d, 6), self.exceedances])

    @classmethod
    def unstack(cls, stacked):
        d = len(stacked)
        return cls(stacked[:, 0], stacked[:, 1], stacked[:, 2], stacked[:, 3:7].reshape(d, 2, 2),
                   stacked[:, 7:13].reshape(d, 2, 3), stacked[:, 13:19].reshape(d, 2, 3), stacked[:, 19])

    def take(self, index):
        return CoordinateTerms(*(field[index] for field in self))


def coordinate_terms(bias, scale, margins, information, exceedances, method="censored"):
    """Return the ``CoordinateTerms`` of the Step 1 estimates, the inversion's margins and ``C_ii``.

    The score of ``(b, σ)`` per sample, with ``z = (x − b)/σ`` and
    ``u = −b/σ``: where ``x > 0`` it is ``(z, z² − 1)/σ`` (minus
    ``λ(−u)(1, u)/σ`` for the truncated likelihood, ``λ(v) = φ(v)/Φ(v)``);
    where ``x = 0``, ``−λ(u)(1, u)/σ`` (censored) or nothing (truncated).
    """
    bias, scale, margins = (np.asarray(v, dtype=np.float64) for v in (bias, scale, margins))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = -bias / scale
        density = _pdf(u)
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
                           np.asarray(exceedances, dtype=np.float64))


# --------------------------------------------------------------------------
# Per pair
# --------------------------------------------------------------------------


def pair_variances(terms_i, terms_j, rho, p11, inversion="tetrachoric"):
    """Return ``(var_ρ, var_Σ)`` per sample (divide by ``n``) of pairs ``i ≠ j`` with ``|ρ| < 1``.

    Parameters
    ----------
    terms_i, terms_j : CoordinateTerms
        Of each pair's two coordinates (fields of shape (P, ...)).
    rho : ndarray (P,)
        ``ρ̂_ij``.
    p11 : ndarray (P,)
        ``C_ij / n``.
    inversion : {"tetrachoric", "model"}
        The margins ``ρ̂`` was inverted with: ``Φ⁻¹(c_i/n)``, or
        ``(b̂_i − t_i)/σ̂_i`` (then ``ρ̂`` carries the Step 1 errors too).

    Notes
    -----
    The influence functions are linear in
    ``B = (I_i I_j, I_i, I_j, ψ_i, ψ_j)``, ``ψ = V s`` the Step 1 influences,
    so each variance is ``cᵀ Cov(B) c``. ``Cov(ψ_i) = V_i``; the rest are
    orthant moments at the fitted ``(u, −a, ρ)``. Where the indicator meets
    a score, its bound is taken at least ``u`` (the thresholds are not
    negative, so in the model ``−a ≥ u``).
    """
    a_i, a_j = terms_i.margin, terms_j.margin
    h_i = np.maximum(-a_i, terms_i.zero_point)
    h_j = np.maximum(-a_j, terms_j.zero_point)
    u_i, u_j = terms_i.zero_point, terms_j.zero_point
    p_i, p_j = special.ndtr(a_i), special.ndtr(a_j)
    sd = np.sqrt((1.0 - rho) * (1.0 + rho))
    density = np.exp(-(a_i * a_i - 2 * rho * a_i * a_j + a_j * a_j) / (2 * sd * sd)) / (2 * np.pi * sd)
    weight_i, weight_j = special.ndtr((a_j - rho * a_i) / sd), special.ndtr((a_i - rho * a_j) / sd)

    pairs = len(rho)
    cov = np.zeros((pairs, 7, 7))
    cov[:, 0, 0] = p11 * (1 - p11)
    cov[:, 0, 1] = cov[:, 1, 0] = p11 * (1 - p_i)
    cov[:, 0, 2] = cov[:, 2, 0] = p11 * (1 - p_j)
    cov[:, 1, 1] = p_i * (1 - p_i)
    cov[:, 2, 2] = p_j * (1 - p_j)
    cov[:, 1, 2] = cov[:, 2, 1] = p11 - p_i * p_j
    if inversion == "tetrachoric":
        c_rho = np.stack([np.ones(pairs), -weight_i, -weight_j], axis=1) / density[:, None]
        var_rho = np.einsum("pa,pab,pb->p", c_rho, cov[:, :3, :3], c_rho)
    none = np.full(pairs, -np.inf)
    both = orthant_moments(h_i, h_j, rho, upper=p11)
    i_only, j_only = tail_moments(h_i), tail_moments(h_j)
    at_h_i = orthant_moments(h_i, none, rho, upper=i_only[:, 0])  # 1{z_i > h_i} z_i^p z_j^q
    at_h_j = orthant_moments(none, h_j, rho, upper=j_only[:, 0])
    zero_i, zero_j = special.ndtr(-u_i), special.ndtr(-u_j)
    at_u_i = orthant_moments(u_i, none, rho, upper=zero_i)
    at_u_j = orthant_moments(none, u_j, rho, upper=zero_j)
    u_i_h_j = orthant_moments(u_i, h_j, rho)
    h_i_u_j = orthant_moments(h_i, u_j, rho)
    u_i_u_j = orthant_moments(u_i, u_j, rho)
    everywhere = orthant_moments(none, none, rho, upper=np.ones(pairs))

    below_i, step_i = terms_i.score_below, terms_i.score_step  # (P, 2, 3)
    below_j, step_j = terms_j.score_below, terms_j.score_step
    above_i, above_j = below_i + step_i, below_j + step_j
    # E[score · indicator]: (P, 2) each.
    both_i = np.einsum("pcx,px->pc", above_i, both[:, :, 0])  # E[I_i I_j s_i]
    both_j = np.einsum("pcy,py->pc", above_j, both[:, 0, :])
    own_i = np.einsum("pcx,px->pc", above_i, i_only)  # E[I_i s_i]
    own_j = np.einsum("pcy,py->pc", above_j, j_only)
    other_i = (np.einsum("pcx,px->pc", below_i, at_h_j[:, :, 0])  # E[I_j s_i]
               + np.einsum("pcx,px->pc", step_i, u_i_h_j[:, :, 0]))
    other_j = (np.einsum("pcy,py->pc", below_j, at_h_i[:, 0, :])
               + np.einsum("pcy,py->pc", step_j, h_i_u_j[:, 0, :]))
    scores = (np.einsum("pcx,pdy,pxy->pcd", below_i, below_j, everywhere)  # E[s_i s_jᵀ]
              + np.einsum("pcx,pdy,pxy->pcd", step_i, below_j, at_u_i)
              + np.einsum("pcx,pdy,pxy->pcd", below_i, step_j, at_u_j)
              + np.einsum("pcx,pdy,pxy->pcd", step_i, step_j, u_i_u_j))
    v_i, v_j = terms_i.information, terms_j.information
    influence_i = lambda moments: np.einsum("pcd,pd->pc", v_i, moments)  # noqa: E731
    influence_j = lambda moments: np.einsum("pcd,pd->pc", v_j, moments)  # noqa: E731
    cov[:, 0, 3:5], cov[:, 1, 3:5], cov[:, 2, 3:5] = influence_i(both_i), influence_i(own_i), influence_i(other_i)
    cov[:, 0, 5:7], cov[:, 1, 5:7], cov[:, 2, 5:7] = influence_j(both_j), influence_j(other_j), influence_j(own_j)
    cov[:, 3:5, 0:3] = cov[:, 0:3, 3:5].transpose(0, 2, 1)
    cov[:, 5:7, 0:3] = cov[:, 0:3, 5:7].transpose(0, 2, 1)
    cov[:, 3:5, 3:5], cov[:, 5:7, 5:7] = v_i, v_j
    cov[:, 3:5, 5:7] = v_i @ scores @ v_j
    cov[:, 5:7, 3:5] = cov[:, 3:5, 5:7].transpose(0, 2, 1)

    c = np.zeros((pairs, 7))
    if inversion == "tetrachoric":
        c[:, :3] = c_rho
    else:
        scale_i, scale_j = terms_i.scale, terms_j.scale
        c[:, 0] = 1.0
        c[:, 3:5] = -(_pdf(a_i) * weight_i / scale_i)[:, None] * np.stack([np.ones(pairs), -a_i], 1)
        c[:, 5:7] = -(_pdf(a_j) * weight_j / scale_j)[:, None] * np.stack([np.ones(pairs), -a_j], 1)
        c /= density[:, None]
        var_rho = np.einsum("pa,pab,pb->p", c, cov, c)
    scale_i, scale_j = terms_i.scale, terms_j.scale
    c *= (scale_i * scale_j)[:, None]
    c[:, 4] += rho * scale_j
    c[:, 6] += rho * scale_i
    return var_rho, np.einsum("pa,pab,pb->p", c, cov, c)


# Pairs per slab of a block: each holds about 2 KB of temporaries (``pair_variances``).
SLAB_PAIRS = 8_192


def standard_error_block(counts, n, covariance, terms_i, terms_j, index_i, index_j, inversion="tetrachoric"):
    """Return the standard errors ``(SE(ρ̂), SE(Σ̂))`` of a block of pairs, stacked: shape (2, d_i, d_j).

    Parameters
    ----------
    counts, covariance : ndarray (d_i, d_j)
        The block's co-exceedance counts ``C_ij`` and its ``Σ̂``.
    n : int
    terms_i, terms_j : ndarray (d_i, 20), (d_j, 20)
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
        numerically near ``±1``).
    """
    terms_i, terms_j = CoordinateTerms.unstack(terms_i), CoordinateTerms.unstack(terms_j)
    out = np.full((2,) + counts.shape, np.nan)
    diagonal = counts.shape[0] == counts.shape[1] and np.array_equal(index_i, index_j)
    if diagonal:
        rows, columns = np.triu_indices(counts.shape[0], k=1)
    else:
        rows, columns = (k.ravel() for k in np.indices(counts.shape))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, rows.size, SLAB_PAIRS):
            i, j = rows[start:start + SLAB_PAIRS], columns[start:start + SLAB_PAIRS]
            pair_i, pair_j = terms_i.take(i), terms_j.take(j)
            rho = covariance[i, j] / (pair_i.scale * pair_j.scale)
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
                var_rho, var_sigma = pair_variances(pair_i.take(fit), pair_j.take(fit), rho[fit], both[fit] / n,
                                                    inversion)
                se[0, fit], se[1, fit] = np.sqrt(var_rho / n), np.sqrt(var_sigma / n)
            out[:, i, j] = se
        if diagonal:
            out[:, columns, rows] = out[:, rows, columns]
        same = index_i[:, None] == index_j[None, :]
        sigma_se = np.sqrt(terms_i.information[:, 1, 1] / n)
        own_sigma = np.broadcast_to((2 * terms_i.scale * sigma_se)[:, None], counts.shape)
        out[0][same] = np.where(terms_i.scale[:, None] > 0, 0.0, np.nan).repeat(counts.shape[1], 1)[same]
        out[1][same] = own_sigma[same]
    return out
