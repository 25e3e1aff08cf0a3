"""Separable non-negative factorisation ``X = A M``, ``M ≥ 0``, on plain arrays (docs/design.md §9).

The two-layer model's samples are the rows of ``X = M Aᵀ`` (n × d) with
``M ≥ 0`` (n × p). When ``M`` is separable (every hidden unit has rows where
it alone is active), the rays of the cone spanned by the rows are the
columns of ``A``, up to positive scaling, and some rows lie on each ray: the
anchors. Mapped through a direction ``h`` with ``h·y > 0`` onto the
hyperplane ``h·y = 1``, the rows fill a simplex whose vertices are the
anchors, and the successive projection algorithm (SPA) finds them.

Everything here is numpy and scipy, one chunk or one candidate set at a time;
``graph`` reduces candidate sets as a tree (the hull of a union is the hull of
the parts' hulls, so a chunk that keeps its extreme rows loses nothing).
"""

from typing import NamedTuple

import numpy as np
from scipy.optimize import linprog

# Rows of the projection shorter than this fraction of the longest are left out: the origin has no direction.
_ZERO_ROW = 1e-12
# Below this, the mean unit direction leaves some row too close to the hyperplane h·y = 0; an LP finds h.
_MEAN_DIRECTION_MARGIN = 1e-3


class Candidates(NamedTuple):
    """Rows of the data that may be anchors: their global row indices and their values (float64)."""

    rows: np.ndarray  # (m,) int64
    values: np.ndarray  # (m, d) float64


def top_basis(gram, p):
    """Return the ``(d, p)`` orthonormal eigenvectors of the ``p`` largest eigenvalues of a Gram matrix."""
    values, vectors = np.linalg.eigh(gram)
    return vectors[:, ::-1][:, :p]


def pointed_direction(units):
    """Return ``h`` (p,) with ``h·u > 0`` for every row of ``units`` (unit vectors), or None when there is none.

    The mean direction when it clears every row by the margin; else the
    maximin direction ``argmax_{‖h‖∞ ≤ 1} min_j h·u_j`` by linear
    programming, over the rows that bind (cutting planes).
    """
    h = units.mean(axis=0)
    norm = np.linalg.norm(h)
    if norm > 0 and (units @ h).min() / norm > _MEAN_DIRECTION_MARGIN:
        return h / norm
    p = units.shape[1]
    active = np.argsort(units @ h)[: 4 * p] if norm > 0 else np.arange(min(len(units), 4 * p))
    for _ in range(100):
        # Variables (h, t): maximise t subject to u_j·h ≥ t, -1 ≤ h ≤ 1.
        result = linprog(np.r_[np.zeros(p), -1.0], A_ub=np.c_[-units[active], np.ones(len(active))],
                         b_ub=np.zeros(len(active)), bounds=[(-1, 1)] * p + [(None, 1)], method="highs")
        if result.status != 0 or -result.fun <= 0:
            return None
        h = result.x[:p]
        margins = units @ h
        if margins.min() > 0:
            return h / np.linalg.norm(h)
        active = np.union1d(active, np.argsort(margins)[: 4 * p])
    return None


def successive_projection(points, p, keep=1, rows=None, tie=0.0):
    """Return ``(chosen, candidates)``: SPA's ``p`` rows of ``points``, and the ``keep`` largest rows of each step.

    At each step the row of largest residual norm is chosen and every
    residual is projected on the orthogonal complement of its residual. With
    ``keep > 1`` the ``keep`` rows of largest residual of each step are kept
    as candidates too (at most ``keep·p`` distinct rows).

    Rows whose residual norm is within the relative ``tie`` of the largest
    are equal up to the data's rounding (all pure rows of one unit map to
    one vertex): of those, the one of least ``rows`` (global row index) is
    chosen, so that the anchors do not depend on how the rows were chunked.
    """
    residual = np.array(points, dtype=np.float64)
    rows = np.arange(len(residual)) if rows is None else np.asarray(rows)
    chosen, candidates = [], []
    for _ in range(min(p, len(residual))):
        norms = np.sqrt(np.einsum("ij,ij->i", residual, residual))
        largest = norms.max()
        if largest <= 0:
            break
        tied = np.flatnonzero(norms >= largest * (1 - tie))
        pick = tied[np.argmin(rows[tied])]
        chosen.append(pick)
        candidates.append(pick)
        more = min(keep - 1, len(norms))  # the next largest, found without a full sort
        if more:
            candidates.extend(np.argpartition(norms, len(norms) - more)[len(norms) - more:])
        u = residual[pick] / norms[pick]
        residual -= np.outer(residual @ u, u)
    return np.array(chosen, dtype=np.int64), np.unique(np.array(candidates, dtype=np.int64))


def simplex_points(projected):
    """Return ``(points, kept)``: the nonzero rows of ``projected`` on the hyperplane ``h·y = 1``, and their indices.

    Returns None for the points when no ``h`` has ``h·y > 0`` for every kept
    row: the rows do not span a pointed cone.
    """
    norms = np.linalg.norm(projected, axis=1)
    kept = np.flatnonzero(norms > _ZERO_ROW * max(norms.max(initial=0.0), np.finfo(np.float64).tiny))
    if kept.size == 0:
        return np.empty((0, projected.shape[1])), kept
    units = projected[kept] / norms[kept, None]
    h = pointed_direction(units)
    if h is None:
        return None, kept
    return projected[kept] / (projected[kept] @ h)[:, None], kept


def select_candidates(candidates, p, keep, tie=0.0):
    """Return the ``Candidates`` among ``candidates`` that SPA keeps, in the basis of their own top-``p`` directions.

    Used per chunk and at every node of the tree: the same selection on a
    union of candidate sets. When the rows do not span a pointed cone, every
    row is kept: the root then refuses the data, with the reason.
    """
    values = candidates.values
    if len(values) <= keep * p:
        return candidates
    basis = top_basis(values.T @ values, p)
    points, kept = simplex_points(values @ basis)
    if points is None:
        return candidates
    _, picked = successive_projection(points, p, keep, candidates.rows[kept], tie)
    return Candidates(candidates.rows[kept[picked]], values[kept[picked]])


def union(*parts):
    """Return the candidates of all ``parts`` together."""
    return Candidates(np.concatenate([part.rows for part in parts]),
                      np.concatenate([part.values for part in parts]))


def select_union(*parts, p, keep, tie):
    """Return the ``Candidates`` that ``select_candidates`` keeps of the union of ``parts``: a node of the tree."""
    return select_candidates(union(*parts), p, keep, tie)


class Anchors(NamedTuple):
    """The anchors chosen among the candidates: their row indices, and the unit columns of ``Â``."""

    rows: np.ndarray  # (p,) int64, in the order SPA chose them
    mixing: np.ndarray  # (d, p): the anchors' rows, normalised, as columns


def choose_anchors(candidates, basis, p, tie=0.0):
    """Return the ``Anchors``: SPA on the candidates projected on ``basis`` (the data's top-``p`` directions).

    Raises ``ValueError`` when the candidates do not span a pointed cone of
    ``p`` rays.
    """
    points, kept = simplex_points(candidates.values @ basis)
    if points is None:
        raise ValueError("the samples do not lie in a pointed cone: no direction h has h·x > 0 for all of them")
    chosen, _ = successive_projection(points, p, rows=candidates.rows[kept], tie=tie)
    if len(chosen) < p:
        raise ValueError(f"the samples span {len(chosen)} directions, fewer than the {p} hidden units")
    rows = candidates.values[kept[chosen]]
    return Anchors(candidates.rows[kept[chosen]], (rows / np.linalg.norm(rows, axis=1)[:, None]).T)


def hidden_projection(mixing):
    """Return ``Â⁺ᵀ`` (d, p): ``M̂ = X Â⁺ᵀ`` are the hidden layer's values of the rows of ``X``."""
    return np.linalg.pinv(mixing).T


def zero_tolerance(dtype):
    """Return the relative size below which a hidden value is rounding of a zero, for data stored as ``dtype``.

    ``X Â⁺ᵀ`` of a row where unit ``l`` is off is a sum of rounded products:
    about ``d·ε`` of the row's scale, with ``ε`` the store's precision.
    """
    return 1e-5 if np.dtype(dtype).itemsize <= 4 else 1e-10


class FirstPass(NamedTuple):
    """What the first read makes of one row chunk: the Gram's part, the value checks and the candidate anchors."""

    gram: np.ndarray  # (d, d) float64: Σ xxᵀ over the chunk's finite rows
    nonfinite: np.ndarray  # (d,) int64: NaN or ±inf values per column
    rows_kept: int  # rows without NaN or ±inf
    candidates: Candidates


def tie_tolerance(dtype):
    """Return the relative difference of residual norms that the rounding of values stored as ``dtype`` can make."""
    return 8 * np.finfo(np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.float64).eps


def first_pass(x, first_row, p, keep):
    """Return the ``FirstPass`` of row chunk ``x`` (whole rows), whose first row is ``first_row`` of the array."""
    finite = np.isfinite(x)
    whole = finite.all(axis=1)
    rows = np.flatnonzero(whole)
    values = np.asarray(x[rows], dtype=np.float64)
    gram = values.T @ values
    # Rows whose projection is within the noise of the origin have no direction (with noise, they would
    # surround the origin and leave no pointed cone): 20 σ̂ √p, σ̂ the chunk's own (noise_level).
    strong = np.linalg.norm(values @ top_basis(gram, p), axis=1) > 20 * noise_level(gram, rows.size, p) * np.sqrt(p)
    candidates = select_candidates(Candidates(rows[strong] + first_row, values[strong]), p, keep,
                                   tie_tolerance(x.dtype))
    return FirstPass(gram, (~finite).sum(axis=0).astype(np.int64), int(rows.size), candidates)


class HiddenPass(NamedTuple):
    """What the second read makes of one row chunk: its hidden values and how well ``Â`` explains it."""

    values: np.ndarray  # (r, p) float64, M̂ with rounding of zeros set to 0; NaN rows stay NaN
    diagnostics: np.ndarray  # (3,): rows outside the cone, energy outside span(Â), energy


def hidden_pass(x, mixing, projection, cutoffs):
    """Return the ``HiddenPass`` of row chunk ``x``: ``M̂ = x Â⁺ᵀ`` cleaned (``hidden_values``), and diagnostics.

    The energy outside ``span(Â)`` is ``Σ ‖x − M̂ Âᵀ‖²`` over the finite rows,
    before cleaning; the energy is ``Σ ‖x‖²``.
    """
    x = np.asarray(x, dtype=np.float64)
    raw = x @ projection
    finite = np.isfinite(raw).all(axis=1)
    residual = x[finite] - raw[finite] @ mixing.T
    outside = np.count_nonzero((raw[finite] < -cutoffs).any(axis=1))
    values = np.where(raw < cutoffs, 0.0, raw)
    values[~finite] = np.nan
    diagnostics = np.array([outside, np.einsum("ij,ij->", residual, residual), np.einsum("ij,ij->", x[finite], x[finite])])
    return HiddenPass(values, diagnostics)


# Noise below this fraction of the data's root-mean-square is rounding: the anchors are then data rows, unrefined.
NOISELESS = 1e-5


def noise_level(gram, rows, p):
    """Return ``σ̂``: the root-mean-square per coordinate of what lies outside the top-``p`` directions of a Gram.

    ``sqrt(mean(λ_{p+1}, …, λ_d) / rows)`` from the Gram's eigenvalues; 0 when ``d = p``.
    """
    eigenvalues = np.linalg.eigvalsh(gram)[::-1]
    return float(np.sqrt(max(eigenvalues[p:].mean(), 0.0) / rows)) if len(eigenvalues) > p and rows else 0.0


def refine_facets(projected, mixing_basis, noise, iterations=30):
    """Return ``B`` (p × p) refined from ``mixing_basis``: the columns of ``Â`` in the basis, fitted to the facets.

    Unit ``l`` is off exactly where ``f_l·y = 0``, ``f_l`` the rows of
    ``F = B⁻¹``; with noise, SPA's anchors are noise extremes, but the rows
    on each facet are many. Each iteration refits every facet as the least
    eigenvector of ``Σ w_j y_j y_jᵀ``, ``w_j = exp(−(f_l·y_j)²/2s²)``, with
    ``s`` shrinking from 0.04 ``rms(‖y‖)`` by 0.7 per iteration to ``2σ̂``.
    ``projected`` (r × p) are rows in the basis.
    """
    facets = np.linalg.inv(mixing_basis)
    facets /= np.linalg.norm(facets, axis=1)[:, None]
    scale = np.sqrt(np.mean(np.einsum("ij,ij->i", projected, projected)))
    for iteration in range(iterations):
        width = max(2 * noise, 0.04 * scale * 0.7**iteration)
        for l, facet in enumerate(facets):
            weights = np.exp(-0.5 * (projected @ facet / width) ** 2)
            least = np.linalg.eigh((projected * weights[:, None]).T @ projected)[1][:, 0]
            facets[l] = least if least @ facet > 0 else -least
    return np.linalg.inv(facets)
