"""The random-bias model ``y = ReLU(A c + b)`` on plain arrays: alternating least squares (docs/design.md §10).

Mazumdar and Rawat's latents ``c ∈ R^k`` are arbitrary, one per sample, and
the bias ``b`` is random per coordinate but fixed across samples. With
``U = [A, b]`` (d × (k+1)) and ``c̃ = [c; 1]``, the fit minimises

    Σ_{y_ij > 0} (y_ij − u_i·c̃_j)²  +  Σ_{y_ij = 0} max(0, u_i·c̃_j)²,

the censored program's equalities on the positives and its inequalities on
the zeros, by alternating: each sample's latent given ``U`` (a few
active-set least-squares steps), then each coordinate's ``u_i`` given the
latents, from normal equations over its active set (its positives and the
zeros whose inequality is violated), which are sums over samples.
"""

from typing import NamedTuple

import numba
import numpy as np


# Status of a coordinate (``RandomBiasReLU.status_``).
STATUS_OK = 0
STATUS_FEW_POSITIVES = 1  # fewer than k + 1 positive samples: its row of A is not identifiable
STATUS_NAMES = {STATUS_OK: "ok", STATUS_FEW_POSITIVES: "few_positives"}


@numba.njit(cache=True, nogil=True)
def _cholesky_solve(matrix, right, out):
    """Solve ``matrix · out = right`` in place of ``matrix`` (symmetric positive definite, lower triangle used)."""
    k = len(right)
    for j in range(k):
        total = matrix[j, j]
        for m in range(j):
            total -= matrix[j, m] * matrix[j, m]
        matrix[j, j] = np.sqrt(total)
        for i in range(j + 1, k):
            total = matrix[i, j]
            for m in range(j):
                total -= matrix[i, m] * matrix[j, m]
            matrix[i, j] = total / matrix[j, j]
    for i in range(k):
        total = right[i]
        for m in range(i):
            total -= matrix[i, m] * out[m]
        out[i] = total / matrix[i, i]
    for i in range(k - 1, -1, -1):
        total = out[i]
        for m in range(i + 1, k):
            total -= matrix[m, i] * out[m]
        out[i] = total / matrix[i, i]


@numba.njit(cache=True, nogil=True)
def _row_latent(y, mixing, bias, steps, ridge, active, fitted, normal, right, latent):
    """Solve one row's latent into ``latent``; leave its final active set and fitted values in ``active``, ``fitted``."""
    d, k = mixing.shape
    for i in range(d):
        active[i] = y[i] > 0
    for _ in range(steps):
        normal[:, :] = 0.0
        right[:] = 0.0
        for i in range(d):
            if active[i]:
                target = (y[i] if y[i] > 0 else 0.0) - bias[i]
                for a in range(k):
                    right[a] += mixing[i, a] * target
                    for b in range(a + 1):
                        normal[a, b] += mixing[i, a] * mixing[i, b]
        for a in range(k):
            normal[a, a] += ridge
        _cholesky_solve(normal, right, latent)
        changed = False
        for i in range(d):
            value = bias[i]
            for a in range(k):
                value += mixing[i, a] * latent[a]
            fitted[i] = value
            now = y[i] > 0 or value > 0
            if now != active[i]:
                changed = True
                active[i] = now
        if not changed:
            break


@numba.njit(cache=True, nogil=True)
def _latents(y, mixing, bias, steps, ridge):
    rows, d = y.shape
    k = mixing.shape[1]
    latents = np.empty((rows, k))
    active, fitted = np.empty(d, dtype=np.bool_), np.empty(d)
    normal, right = np.empty((k, k)), np.empty(k)
    for j in range(rows):
        _row_latent(y[j], mixing, bias, steps, ridge, active, fitted, normal, right, latents[j])
    return latents


@numba.njit(cache=True, nogil=True)
def _latents_and_active(y, mixing, bias, steps, ridge, latents, active):
    """Solve every row's latent into ``latents`` and its final active set into ``active``; return the loss."""
    rows, d = y.shape
    k = mixing.shape[1]
    fitted = np.empty(d)
    normal, right = np.empty((k, k)), np.empty(k)
    loss = 0.0
    for j in range(rows):
        _row_latent(y[j], mixing, bias, steps, ridge, active[j], fitted, normal, right, latents[j])
        for i in range(d):
            if y[j, i] > 0:
                loss += (y[j, i] - fitted[i]) ** 2
            elif fitted[i] > 0:
                loss += fitted[i] * fitted[i]
    return loss


def _ridge(mixing):
    """The ridge that keeps a row's system solvable when its active set does not span ``R^k``."""
    return 1e-10 * float(np.einsum("ij,ij->", mixing, mixing)) / mixing.shape[1]


def solve_latents(y, factors, steps=5):
    """Return the latents ``c`` (r × k) of the rows of ``y`` (r × d) given ``U = [A, b]`` (d × (k+1)).

    Each row's ``c`` minimises the loss over its active set: the positives,
    fitted exactly, and the zeros whose ``a_i·c + b_i`` is positive. Starting
    from the positives alone, each step adds the zeros that the current
    ``c`` violates (and drops those it no longer does) and solves again,
    until the active set holds still (``steps`` at most). Compiled, row by row.
    """
    mixing, bias = np.ascontiguousarray(factors[:, :-1]), np.ascontiguousarray(factors[:, -1])
    return _latents(np.ascontiguousarray(y, dtype=np.float64), mixing, bias, steps, _ridge(mixing))


class NormalEquations(NamedTuple):
    """Sums over samples, additive over row chunks, from which ``U`` is solved coordinate by coordinate."""

    gram: np.ndarray  # (d, k+1, k+1): Σ over each coordinate's active set of c̃ c̃ᵀ
    right: np.ndarray  # (d, k+1): Σ over each coordinate's positives of y c̃
    loss: float  # the loss at the U the latents were solved with
    positives: np.ndarray  # (d,) int64: positive samples per coordinate
    moments: np.ndarray  # (k+1, k+1): Σ c̃ c̃ᵀ over all samples (the latents' mean and covariance)
    problems: np.ndarray  # (d, 2) int64: negative and non-finite values per column (io.check_values)
    rows: int  # rows summed (without NaN or ±inf)


def normal_equations(y, factors, steps=5):
    """Return the ``NormalEquations`` of rows ``y`` (r × d): latents solved given ``factors``, then summed.

    Rows holding NaN or ±inf are left out, and counted in ``problems``.
    """
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(y)
    problems = np.stack([(y < 0).sum(axis=0), (~finite).sum(axis=0)], axis=1).astype(np.int64)
    y = np.ascontiguousarray(y[finite.all(axis=1)])
    mixing, bias = np.ascontiguousarray(factors[:, :-1]), np.ascontiguousarray(factors[:, -1])
    rows, (d, k) = len(y), mixing.shape
    latents, active = np.empty((rows, k)), np.empty((rows, d), dtype=np.bool_)
    loss = _latents_and_active(y, mixing, bias, steps, _ridge(mixing), latents, active)
    extended = np.column_stack([latents, np.ones(rows)])  # c̃
    outer = (extended[:, :, None] * extended[:, None, :]).reshape(rows, (k + 1) ** 2)
    gram = (active.T.astype(np.float64) @ outer).reshape(d, k + 1, k + 1)
    right = y.T @ extended  # the zeros add nothing (negative values refuse the fit: problems)
    return NormalEquations(gram, right, loss, (y > 0).sum(axis=0).astype(np.int64), extended.T @ extended,
                           problems, rows)


def add(*parts):
    """Return the sum of ``NormalEquations``, in the order given."""
    total = parts[0]
    for part in parts[1:]:
        total = NormalEquations(*(a + b for a, b in zip(total, part)))
    return total


def solve_factors(equations, status):
    """Return ``U`` (d × (k+1)) from summed ``NormalEquations``; rows of coordinates not ok are 0."""
    k1 = equations.right.shape[1]
    ok = status == STATUS_OK
    factors = np.zeros((len(status), k1))
    regular = equations.gram[ok] + 1e-12 * np.trace(equations.gram[ok], axis1=1, axis2=2)[:, None, None] * np.eye(k1)
    factors[ok] = np.linalg.solve(regular, equations.right[ok][:, :, None])[:, :, 0]
    return factors


def coordinate_status(positives, k):
    """Return the status (d,) int8 of each coordinate: ok with at least ``k + 1`` positive samples."""
    return np.where(positives >= k + 1, STATUS_OK, STATUS_FEW_POSITIVES).astype(np.int8)


def components(factors, status):
    """Return an orthonormal basis (d × k) of ``span(Â)``, on the coordinates that are ok (0 elsewhere)."""
    mixing = np.where((status == STATUS_OK)[:, None], factors[:, :-1], 0.0)
    basis, _, _ = np.linalg.svd(mixing, full_matrices=False)
    return basis


def pca_start(pilot, k):
    """Return a first ``U`` (d × (k+1)) from the pilot rows: ``A`` their top-``k`` principal directions, ``b`` their mean."""
    mean = pilot.mean(axis=0)
    _, singular, vectors = np.linalg.svd(pilot - mean, full_matrices=False)
    scale = singular[:k] / np.sqrt(len(pilot))
    return np.column_stack([vectors[:k].T * scale, mean])


def alternate(y, factors, status, iterations, steps=5):
    """Return ``U`` after ``iterations`` rounds of alternating least squares on rows ``y`` held in memory."""
    for _ in range(iterations):
        factors = solve_factors(normal_equations(y, factors, steps), status)
    return factors


def gauge(factors, moments):
    """Return ``U`` in the gauge where the latents have mean 0 and covariance I (``moments`` = Σ c̃ c̃ᵀ).

    Exact fits form an orbit ``A' = A G``, ``c' = G⁻¹(c − v)``, ``b' = b + A v``;
    this picks its member with centred, whitened latents, consistent when
    the true latents have mean 0.
    """
    k = factors.shape[1] - 1
    count = moments[k, k]
    mean = moments[:k, k] / count
    covariance = moments[:k, :k] / count - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    root = vectors * np.sqrt(np.maximum(values, 0.0))  # covariance = root rootᵀ
    mixing, bias = factors[:, :k], factors[:, k]
    return np.column_stack([mixing @ root, bias + mixing @ mean])
