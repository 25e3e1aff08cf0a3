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


def _system_table(mixing, bias):
    """Return each coordinate's part of a row's latent system, a column each: ``a_i a_iᵀ`` (packed lower triangle), then ``−a_i b_i``.

    A row's system over its active set is the sum of its active coordinates'
    columns of this table, plus ``a_i y_i`` over its positives.
    """
    lower = np.tril_indices(mixing.shape[1])
    return np.ascontiguousarray(np.vstack([(mixing[:, lower[0]] * mixing[:, lower[1]]).T, -(mixing * bias[:, None]).T]))


# The kernels run their inner loops along the d coordinates, so that they
# vectorise; "reassoc" lets the sums over coordinates vectorise too (the
# order is fixed by the compiled code, the same for every chunk).
_FAST = {"reassoc", "contract"}


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _row_latent(row, mixing_t, bias, table, ridge, steps, active, fitted, system, normal, latent):
    """Solve one row's latent into ``latent``; leave its final active set and fitted values in ``active``, ``fitted``.

    The system starts from the positives; each step solves it, then adds
    the table columns of the zeros the latent violates and takes away those
    of the zeros it no longer does, until the active set holds still.
    """
    k, d = mixing_t.shape
    packed = k * (k + 1) // 2
    for i in range(d):
        active[i] = row[i] > 0
        fitted[i] = row[i] - bias[i] if active[i] else 0.0  # the targets, for now
    for p in range(packed):
        total = 0.0
        for i in range(d):
            total += table[p, i] if active[i] else 0.0
        system[p] = total
    for a in range(k):
        total = 0.0
        for i in range(d):
            total += mixing_t[a, i] * fitted[i]
        system[packed + a] = total
    for _ in range(steps):
        p = 0
        for a in range(k):
            for b in range(a + 1):
                normal[a, b] = system[p]
                p += 1
            normal[a, a] += ridge
        _cholesky_solve(normal, system[packed:], latent)
        fitted[:] = bias
        for a in range(k):
            value = latent[a]
            for i in range(d):
                fitted[i] += mixing_t[a, i] * value
        changed = False
        for i in range(d):
            changed |= ((row[i] > 0) | (fitted[i] > 0)) != active[i]
        if not changed:
            break
        for i in range(d):
            now = (row[i] > 0) | (fitted[i] > 0)
            if now != active[i]:
                active[i] = now
                sign = 1.0 if now else -1.0
                for p in range(packed + k):
                    system[p] += sign * table[p, i]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _latents(y, mixing_t, bias, table, ridge, steps):
    rows, d = y.shape
    k = mixing_t.shape[0]
    latents = np.empty((rows, k))
    row, active, fitted = np.empty(d), np.empty(d, dtype=np.bool_), np.empty(d)
    system, normal = np.empty(table.shape[0]), np.empty((k, k))
    for j in range(rows):
        row[:] = y[j]
        _row_latent(row, mixing_t, bias, table, ridge, steps, active, fitted, system, normal, latents[j])
    return latents


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _chunk_sums(y, mixing_t, bias, table, ridge, steps):
    """Sum a chunk's ``NormalEquations``, transposed (a row per term, a column per coordinate), gram and moments packed.

    One pass over the rows as read: each row is checked, its latent solved
    and its parts added.
    """
    rows, d = y.shape
    k = mixing_t.shape[0]
    k1 = k + 1
    packed = k1 * (k1 + 1) // 2
    gram, right = np.zeros((packed, d)), np.zeros((k1, d))
    positives, negatives, nonfinite = np.zeros(d, dtype=np.int64), np.zeros(d, dtype=np.int64), np.zeros(d, dtype=np.int64)
    moments, outer, extended = np.zeros(packed), np.empty(packed), np.ones(k1)
    row, active, fitted = np.empty(d), np.empty(d, dtype=np.bool_), np.empty(d)
    system, normal = np.empty(table.shape[0]), np.empty((k, k))
    loss, kept = 0.0, 0
    for j in range(rows):
        finite = True
        for i in range(d):
            value = np.float64(y[j, i])
            negatives[i] += value < 0
            if not np.isfinite(value):
                nonfinite[i] += 1
                finite = False
            row[i] = value
        if not finite:
            continue
        kept += 1
        _row_latent(row, mixing_t, bias, table, ridge, steps, active, fitted, system, normal, extended[:k])
        p = 0
        for a in range(k1):
            for b in range(a + 1):
                outer[p] = extended[a] * extended[b]
                moments[p] += outer[p]
                p += 1
        for i in range(d):
            positive = row[i] > 0
            residual = row[i] - fitted[i] if positive else max(fitted[i], 0.0)
            loss += residual * residual
            positives[i] += positive
        for a in range(k1):
            value = extended[a]
            for i in range(d):
                right[a, i] += row[i] * value
        for p in range(packed):
            value = outer[p]
            for i in range(d):
                gram[p, i] += value if active[i] else 0.0
    return gram.T, right.T, loss, positives, moments, np.column_stack((negatives, nonfinite)), kept


def _unpack(packed, k1):
    """Return the symmetric matrices (..., k1, k1) whose lower triangles are packed in the last axis."""
    lower = np.tril_indices(k1)
    full = np.zeros(packed.shape[:-1] + (k1, k1))
    full[..., lower[0], lower[1]] = packed
    full[..., lower[1], lower[0]] = packed
    return full


def _ridge(mixing):
    """The ridge that keeps a row's system solvable when its active set does not span ``R^k``."""
    return 1e-10 * float(np.einsum("ij,ij->", mixing, mixing)) / mixing.shape[1]


def _compiled_factors(factors):
    """Return the kernels' view of ``U``: ``Aᵀ``, ``b``, the system table, the ridge."""
    mixing, bias = factors[:, :-1], np.ascontiguousarray(factors[:, -1])
    return np.ascontiguousarray(mixing.T), bias, _system_table(mixing, bias), _ridge(mixing)


def solve_latents(y, factors, steps=5):
    """Return the latents ``c`` (r × k) of the rows of ``y`` (r × d) given ``U = [A, b]`` (d × (k+1)).

    Each row's ``c`` minimises the loss over its active set: the positives,
    fitted exactly, and the zeros whose ``a_i·c + b_i`` is positive. Starting
    from the positives alone, each step adds the zeros that the current
    ``c`` violates (and drops those it no longer does) and solves again,
    until the active set holds still (``steps`` at most). Compiled, row by row.
    """
    return _latents(np.ascontiguousarray(y), *_compiled_factors(factors), steps)


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
    """Return the ``NormalEquations`` of rows ``y`` (r × d, float32 or float64): latents solved given ``factors``, then summed.

    One compiled pass over the rows as they are read: each row's values are
    checked, its latent solved and its parts added. Rows holding NaN or
    ±inf are left out, and counted in ``problems``.
    """
    k1 = factors.shape[1]
    gram, right, loss, positives, moments, problems, rows = _chunk_sums(np.ascontiguousarray(y),
                                                                        *_compiled_factors(factors), steps)
    return NormalEquations(_unpack(gram, k1), right, loss, positives, _unpack(moments, k1), problems, rows)


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
