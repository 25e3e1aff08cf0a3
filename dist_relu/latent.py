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

import numpy as np


# Status of a coordinate (``RandomBiasReLU.status_``).
STATUS_OK = 0
STATUS_FEW_POSITIVES = 1  # fewer than k + 1 positive samples: its row of A is not identifiable
STATUS_NAMES = {STATUS_OK: "ok", STATUS_FEW_POSITIVES: "few_positives"}


def solve_latents(y, factors, steps=5):
    """Return the latents ``c`` (r × k) of the rows of ``y`` (r × d) given ``U = [A, b]`` (d × (k+1)).

    Each row's ``c`` minimises the loss over its active set: the positives,
    fitted exactly, and the zeros whose ``a_i·c + b_i`` is positive. Starting
    from the positives alone, each step adds the zeros that the current
    ``c`` violates and solves again (``steps`` at most). The ``k × k``
    systems of all rows are formed by one matrix product and solved together.
    """
    mixing, bias = factors[:, :-1], factors[:, -1]
    k = mixing.shape[1]
    positive = y > 0
    outer = (mixing[:, :, None] * mixing[:, None, :]).reshape(len(mixing), k * k)  # (d, k²): a_i a_iᵀ
    targets = np.where(positive, y - bias, -bias)  # a_i·c should equal this on the active set
    active = positive | (bias > 0)  # the positives, and the zeros that c = 0 violates
    latents = np.zeros((len(y), k))
    ridge = 1e-10 * np.einsum("ij,ij->", mixing, mixing) / k * np.eye(k)
    pending = np.arange(len(y))  # rows whose active set changed in the last step
    for _ in range(steps):
        weights = active[pending].astype(np.float64)
        normal = (weights @ outer).reshape(-1, k, k) + ridge
        right = (weights * targets[pending]) @ mixing
        latents[pending] = np.linalg.solve(normal, right[:, :, None])[:, :, 0]
        now = positive[pending] | (latents[pending] @ mixing.T + bias > 0)
        changed = (now != active[pending]).any(axis=1)
        active[pending] = now
        pending = pending[changed]
        if pending.size == 0:
            break
    return latents


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
    y = y[finite.all(axis=1)]
    latents = solve_latents(y, factors, steps)
    extended = np.column_stack([latents, np.ones(len(y))])  # c̃
    fitted = extended @ factors.T
    positive = y > 0
    active = positive | (fitted > 0)
    residual = np.where(positive, y - fitted, np.maximum(fitted, 0.0))
    k1 = extended.shape[1]
    outer = (extended[:, :, None] * extended[:, None, :]).reshape(len(y), k1 * k1)
    gram = (active.T.astype(np.float64) @ outer).reshape(-1, k1, k1)
    right = np.where(positive, y, 0.0).T @ extended
    return NormalEquations(gram, right, float(np.einsum("ij,ij->", residual, residual)),
                           positive.sum(axis=0).astype(np.int64), extended.T @ extended, problems, len(y))


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
