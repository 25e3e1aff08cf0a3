"""The fitted distribution ``ReLU(N(b, Σ))``, the repair of an estimated ``Σ̂``, and the paper's accuracy metrics.

Pure math on in-memory arrays (numpy; scipy and the compiled ``Φ₂`` where
said).
"""

import functools
from typing import NamedTuple

import numpy as np


class NearestCorrelation(NamedTuple):
    """The correlation matrix nearest to a symmetric matrix, and how its iteration ended."""

    matrix: np.ndarray  # (m, m): positive semidefinite, unit diagonal
    iterations: int  # alternating projections made; 0 when the input was a correlation matrix already
    converged: bool  # the iterates moved by less than the tolerance before max_iterations


def _is_positive_semidefinite(matrix):
    """Return whether a symmetric matrix's eigenvalues are all ``≥ 0`` up to rounding (``−m·ε·max|λ|``)."""
    if matrix.shape[0] == 0:
        return True
    values = np.linalg.eigvalsh(matrix)
    return bool(values[0] >= -matrix.shape[0] * np.finfo(np.float64).eps * np.abs(values).max())


def _positive_part(matrix):
    """Return the nearest positive semidefinite matrix in Frobenius norm: the eigenvalues clipped at 0."""
    values, vectors = np.linalg.eigh(matrix)
    part = (vectors * np.maximum(values, 0.0)) @ vectors.T
    return (part + part.T) / 2


def nearest_correlation(correlation, tolerance=1e-10, max_iterations=1000):
    """Return the correlation matrix nearest to ``correlation`` in Frobenius norm, by Higham's alternating projections.

    Parameters
    ----------
    correlation : ndarray, shape (m, m)
        A symmetric matrix, usually an estimated correlation matrix that is
        not positive semidefinite. Its diagonal does not change the answer.
    tolerance : float, default 1e-10
        Stop when the iterates ``X_k`` (positive semidefinite) and ``Y_k``
        (unit diagonal) each move by less than this, relative to their
        Frobenius norms, and lie within it of each other.
    max_iterations : int, default 1000

    Returns
    -------
    NearestCorrelation
        ``matrix`` (m, m), positive semidefinite up to rounding and with a
        diagonal of exactly 1; ``iterations``; ``converged``. A correlation
        matrix (unit diagonal, positive semidefinite up to rounding) is
        returned unchanged, with 0 iterations.

    Notes
    -----
    N. J. Higham, "Computing the nearest correlation matrix — a problem from
    finance", IMA J. Numer. Anal. 22 (2002) 329–343, Algorithm 3.3 with
    ``W = I``: alternate the projection ``P_S`` onto the positive
    semidefinite matrices (eigenvalues clipped at 0) and ``P_U`` onto the unit
    diagonal, with Dykstra's correction ``ΔS`` so that the limit is the
    nearest point of the intersection, not merely a point of it::

        R_k = Y_{k−1} − ΔS_{k−1};  X_k = P_S(R_k);  ΔS_k = X_k − R_k;  Y_k = P_U(X_k)

    Convergence is linear. The result is ``X_k`` scaled by ``D^{-1/2} X_k
    D^{-1/2}``, ``D = diag X_k``, and its diagonal set to 1: a congruence keeps
    it positive semidefinite, where ``Y_k`` may have eigenvalues down to
    ``−tolerance``. Each iteration costs one symmetric eigendecomposition,
    ``O(m³)``.
    """
    target = np.asarray(correlation, dtype=np.float64)
    if target.ndim != 2 or target.shape[0] != target.shape[1]:
        raise ValueError(f"need a square matrix; got shape {target.shape}")
    if not np.isfinite(target).all():
        raise ValueError("the matrix holds NaN or ±inf")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1; got {max_iterations}")
    target = (target + target.T) / 2
    if np.all(np.diag(target) == 1.0) and _is_positive_semidefinite(target):
        return NearestCorrelation(target, 0, True)
    unit_diagonal = target.copy()
    np.fill_diagonal(unit_diagonal, 1.0)
    correction = np.zeros_like(target)
    psd = previous_psd = unit_diagonal
    converged = False
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        shifted = unit_diagonal - correction
        psd = _positive_part(shifted)
        correction = psd - shifted
        previous_unit_diagonal, unit_diagonal = unit_diagonal, psd.copy()
        np.fill_diagonal(unit_diagonal, 1.0)
        size = np.linalg.norm(unit_diagonal)
        change = max(np.linalg.norm(psd - previous_psd) / np.linalg.norm(psd),
                     np.linalg.norm(unit_diagonal - previous_unit_diagonal) / size,
                     np.linalg.norm(unit_diagonal - psd) / size)
        previous_psd = psd
        if change <= tolerance:
            converged = True
            break
    diagonal = np.diag(psd)
    scale = 1 / np.sqrt(np.where(diagonal > 0, diagonal, 1.0))  # a zero diagonal has a zero row: any scale
    matrix = psd * np.outer(scale, scale)
    np.fill_diagonal(matrix, 1.0)
    return NearestCorrelation(matrix, iterations, converged)


class CovarianceRepair(NamedTuple):
    """A covariance made positive semidefinite with its variances kept, and how far it moved."""

    covariance: np.ndarray  # (d, d): the repaired Σ
    relative_distance: float  # ‖Σ_rep − Σ̂‖_F / ‖Σ̂‖_F, over the finite entries of Σ̂
    largest_change: float  # max |Σ_rep − Σ̂|, over the finite entries of Σ̂
    iterations: int  # of nearest_correlation; 0 when Σ̂ needed no repair
    converged: bool


def repaired_covariance(covariance, tolerance=1e-10, max_iterations=1000):
    """Return the covariance ``D R D`` nearest to ``covariance`` with its variances, and how far it moved.

    Parameters
    ----------
    covariance : ndarray, shape (d, d)
        A symmetric estimate ``Σ̂`` (``Σ̂_ij = σ̂_i σ̂_j ρ_ij``), not
        necessarily positive semidefinite.
    tolerance, max_iterations
        Of ``nearest_correlation``.

    Returns
    -------
    CovarianceRepair
        ``covariance`` is ``Σ̂`` itself when its coordinates of positive
        variance already make a positive semidefinite matrix (distance 0).

    Raises
    ------
    ValueError
        If a variance is negative, or an entry between two coordinates of
        finite positive variance is NaN or ±inf.

    Notes
    -----
    Only the correlations are repaired: ``D = diag(sqrt(diag Σ̂))`` and ``R``
    the nearest correlation matrix (``nearest_correlation``) of
    ``D⁻¹ Σ̂ D⁻¹``, over the coordinates of finite positive variance. So
    each coordinate keeps its variance exactly, and with it the marginal
    law ``ReLU(N(b_i, σ_i²))`` the fit estimated; clipping the eigenvalues of
    ``Σ̂`` instead changes the variances, and with them every coordinate's
    zero fraction ``Φ(−b_i/σ_i)`` (a coordinate of ``σ̂ = 0`` could become
    positive). A coordinate of zero variance (``σ̂ = 0``: all zero,
    constant) gets zero row and column, exactly; one of NaN or infinite
    variance (an estimate that failed) keeps its row and column as
    estimated (but 0 against those of zero variance), and takes no part in
    the repair of the others.
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1]:
        raise ValueError(f"need a square matrix; got shape {covariance.shape}")
    covariance = (covariance + covariance.T) / 2
    variance = np.diag(covariance).copy()
    if (variance < 0).any():
        raise ValueError(f"negative variance at coordinate(s) {np.flatnonzero(variance < 0).tolist()[:10]}")
    unknown = ~np.isfinite(variance)
    zero_variance = variance == 0
    positive_variance = ~unknown & ~zero_variance
    block = covariance[np.ix_(positive_variance, positive_variance)]
    if not np.isfinite(block).all():
        raise ValueError("Σ̂ holds NaN or ±inf between coordinates of finite positive variance")
    iterations, converged = 0, True
    if not _is_positive_semidefinite(block):
        scale = np.sqrt(variance[positive_variance])
        nearest = nearest_correlation(block / np.outer(scale, scale), tolerance, max_iterations)
        block = nearest.matrix * np.outer(scale, scale)
        np.fill_diagonal(block, variance[positive_variance])  # exactly, where D R D may differ by rounding
        iterations, converged = nearest.iterations, nearest.converged
    # Rows of unknown variance as estimated, except against a coordinate of zero variance: no covariance.
    as_estimated = (unknown[:, None] | unknown[None, :]) & ~zero_variance[:, None] & ~zero_variance[None, :]
    repaired = np.where(as_estimated, covariance, 0.0)
    repaired[np.ix_(positive_variance, positive_variance)] = block
    finite = np.isfinite(covariance)
    size = np.linalg.norm(covariance[finite])
    change = np.abs(repaired - covariance)[finite]
    return CovarianceRepair(repaired, float(np.linalg.norm(change) / size) if size > 0 else 0.0,
                            float(change.max(initial=0.0)), iterations, converged)


def covariance_error(estimate, truth):
    """Return ``‖Σ̂ − Σ*‖_F / ‖W*‖_F²`` (``‖W*‖_F² = tr Σ*``), the paper's ``err_Σ``."""
    return float(np.linalg.norm(np.asarray(estimate) - truth) / np.trace(truth))


def bias_error(estimate, truth, truth_covariance):
    """Return ``‖b̂ − b*‖₂ / ‖W*‖_F``, the paper's ``err_b``."""
    return float(np.linalg.norm(np.asarray(estimate) - truth) / np.sqrt(np.trace(truth_covariance)))


def gaussian_kl(mean_p, cov_p, mean_q, cov_q):
    """Return ``KL(N(mean_p, cov_p) ‖ N(mean_q, cov_q))``; ``inf`` unless both covariances are positive definite."""
    try:
        chol_p = np.linalg.cholesky(cov_p)
        chol_q = np.linalg.cholesky(cov_q)
    except np.linalg.LinAlgError:
        return float("inf")
    d = len(mean_p)
    solved = np.linalg.solve(chol_q, chol_p)
    diff = np.linalg.solve(chol_q, np.asarray(mean_q) - mean_p)
    log_det = 2 * (np.log(np.diag(chol_q)).sum() - np.log(np.diag(chol_p)).sum())
    return float(0.5 * ((solved**2).sum() + diff @ diff - d + log_det))


def tv_upper_bound(bias, covariance, truth_bias, truth_covariance):
    """Return the paper's bound ``TV ≤ sqrt(min(KL(p‖q), KL(q‖p)) / 2)``, capped at 1.

    ``p = N(b̂, Σ̂)``, ``q = N(b*, Σ*)``; ReLU is a function, so the bound holds
    for the rectified distributions too (docs/design.md §6). It is 1 (no
    information) when ``Σ̂`` is not positive definite.
    """
    kl = min(
        gaussian_kl(bias, covariance, truth_bias, truth_covariance),
        gaussian_kl(truth_bias, truth_covariance, bias, covariance),
    )
    return float(min(1.0, np.sqrt(kl / 2)))


class RectifiedGaussian:
    """The distribution of ``ReLU(y)``, ``y ~ N(bias, covariance)``.

    Parameters
    ----------
    covariance : ndarray, shape (d, d)
        ``Σ = W Wᵀ``; as estimated it need not be positive semidefinite.
        Sampling and ``factor`` use its repair (``repaired_covariance``),
        which keeps every variance.
    bias : ndarray, shape (d,)
    """

    def __init__(self, covariance, bias):
        self.covariance = np.asarray(covariance, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)

    @property
    def dimension(self):
        return self.bias.shape[0]

    @functools.cached_property
    def repair(self):
        """The ``CovarianceRepair`` of ``covariance``: computed on first use, then kept."""
        return repaired_covariance(self.covariance)

    @functools.cached_property
    def _factor(self):
        repaired = self.repair.covariance
        variance = np.diag(repaired)
        positive_variance = np.isfinite(variance) & (variance > 0)
        # Rows of σ = 0 exactly 0, so that those coordinates sample as ReLU(b̂) exactly.
        factor = np.zeros(repaired.shape)
        factor[~np.isfinite(variance)] = np.nan
        values, vectors = np.linalg.eigh(repaired[np.ix_(positive_variance, positive_variance)])
        factor[positive_variance, :positive_variance.sum()] = vectors * np.sqrt(np.maximum(values, 0))
        return factor

    def factor(self):
        """Return ``Ŵ`` (d×d) with ``Ŵ Ŵᵀ`` the repaired covariance (``repair.covariance``).

        Returns
        -------
        ndarray (d, d)
            ``V diag(sqrt(λ))`` from the eigendecomposition of the repaired
            covariance on the coordinates of positive variance (eigenvalues
            of rounding's size below 0 taken as 0); rows of the coordinates
            of zero variance exactly 0, and NaN for those whose variance is not
            finite.
        """
        return self._factor.copy()

    def sample(self, n, seed=None):
        """Return ``n`` samples ``ReLU(Ŵ z + b)``, ``z ~ N(0, I)``, ``Ŵ = factor()``.

        Each coordinate has its estimated marginal law ``ReLU(N(b_i, Σ_ii))``;
        one of zero variance is ``ReLU(b_i)`` in every sample, exactly.

        Parameters
        ----------
        n : int
        seed : int or numpy Generator, optional

        Returns
        -------
        ndarray (n, d)
        """
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.dimension))
        return np.maximum(0.0, z @ self._factor.T + self.bias)

    def errors(self, truth_covariance, truth_bias):
        """Return the paper's metrics against a truth (docs/design.md §6).

        Parameters
        ----------
        truth_covariance : ndarray (d, d)
            ``Σ* = W* W*ᵀ``.
        truth_bias : ndarray (d,)

        Returns
        -------
        dict
            ``err_sigma`` = ``‖Σ̂ − Σ*‖_F / ‖W*‖_F²``, ``err_b`` =
            ``‖b̂ − b*‖₂ / ‖W*‖_F`` and ``tv_bound`` =
            ``sqrt(min(KL(p‖q), KL(q‖p)) / 2)``, capped at 1.
        """
        truth_covariance = np.asarray(truth_covariance, dtype=np.float64)
        truth_bias = np.asarray(truth_bias, dtype=np.float64)
        d = self.bias.shape[0]
        if truth_covariance.shape != (d, d) or truth_bias.shape != (d,):
            raise ValueError(f"the truth has {truth_bias.shape[0] if truth_bias.ndim else 0} coordinates "
                             f"(covariance {truth_covariance.shape}); the fit has {d}")
        return {
            "err_sigma": covariance_error(self.covariance, truth_covariance),
            "err_b": bias_error(self.bias, truth_bias, truth_covariance),
            "tv_bound": tv_upper_bound(self.bias, self.covariance, truth_bias, truth_covariance),
        }


class PredictiveCheck(NamedTuple):
    """What a fitted model predicts against what its data had, per coordinate and per pair."""

    model_zero_fraction: np.ndarray  # (d,): P(x_i = 0) under the model
    data_zero_fraction: np.ndarray  # (d,): n0_i / n
    model_coexceedance: np.ndarray  # (d, d): P(x_i > t_i, x_j > t_j) under the model; diagonal P(x_i > t_i)
    data_coexceedance: np.ndarray  # (d, d): C_ij / n
    zero_fraction_error: np.ndarray  # (d,): |model − data|
    coexceedance_error: np.ndarray  # (d,): max over j of |model − data|, the diagonal included, NaN left out
    largest_zero_fraction_error: float  # max over the coordinates, NaN left out
    largest_coexceedance_error: float  # max over the pairs, NaN left out


def predictive_check(model, thresholds, counts, n_samples, zero_fraction):
    """Return the model's zero fractions and co-exceedance rates against those its data had.

    Parameters
    ----------
    model : RectifiedGaussian
        The fitted distribution; its repaired covariance is the one checked.
    thresholds : ndarray (d,)
        The thresholds ``t ≥ 0`` the counts were made at (``thresholds_``).
    counts : ndarray (d, d)
        The co-exceedance counts ``C_ij = #{m : x_mi > t_i, x_mj > t_j}``
        (``counts_``).
    n_samples : int
    zero_fraction : ndarray (d,)
        The data's fraction of zeros per coordinate, ``n0/n`` from the
        statistics (``statistics_[:, 0] / n_samples_``).

    Returns
    -------
    PredictiveCheck

    Notes
    -----
    From the fit's state alone; no data is read. The model's zero fraction is
    ``Φ(−b_i/σ_i)``, ``σ_i² = Σ_ii`` (1 or 0 where ``σ_i = 0``, as
    ``ReLU(b_i)`` is 0 or not); its co-exceedance rate is ``Φ₂(a_i, a_j;
    ρ_ij)``, ``a_i = (b_i − t_i)/σ_i``, with ``ρ`` the repaired correlations
    (``compiled.orthant_probability``); where ``σ_i = 0``, ``x_i > t_i`` is
    certain or impossible (``a_i = ±inf``). A coordinate whose variance is
    not finite gets NaN. Runs in memory, on about eight ``d × d`` float64
    arrays at once (8d² bytes each, 134 MB at ``d = 4096``), after the
    repair (``RectifiedGaussian.repair``): meant for the ``d`` at which
    ``Σ̂`` and the counts are held in memory, as ``ReLUGaussian`` holds them.
    """
    from scipy import special

    from . import compiled

    counts = np.asarray(counts, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    covariance = model.repair.covariance
    scale = np.sqrt(np.diag(covariance))
    # Where σ = 0, x_i = ReLU(b_i) in every sample: x_i = 0 and x_i > t_i are certain or impossible.
    degenerate = scale == 0
    divisor = np.where(degenerate, 1.0, scale)
    zero_margin = np.where(degenerate, np.where(model.bias > 0, -np.inf, np.inf), -model.bias / divisor)
    exceedance_margin = np.where(degenerate, np.where(np.maximum(model.bias, 0.0) > thresholds, np.inf, -np.inf),
                                 (model.bias - thresholds) / divisor)
    correlation = covariance / np.outer(divisor, divisor)
    np.fill_diagonal(correlation, 1.0)
    model_zero_fraction = special.ndtr(zero_margin)
    model_coexceedance = compiled.orthant_probability(exceedance_margin[:, None], exceedance_margin[None, :],
                                                      correlation)
    data_zero_fraction = np.asarray(zero_fraction, dtype=np.float64)
    data_coexceedance = counts / n_samples
    zero_fraction_error = np.abs(model_zero_fraction - data_zero_fraction)
    # fmax passes over NaN: a coordinate of unknown variance does not hide the others' errors.
    coexceedance_error = np.fmax.reduce(np.abs(model_coexceedance - data_coexceedance), axis=1)
    return PredictiveCheck(model_zero_fraction, data_zero_fraction, model_coexceedance, data_coexceedance,
                           zero_fraction_error, coexceedance_error,
                           float(np.fmax.reduce(zero_fraction_error, initial=0.0)),
                           float(np.fmax.reduce(coexceedance_error, initial=0.0)))


def principal_sine(first, second):
    """Return the sine of the largest principal angle between the column spaces of ``first`` and ``second``.

    The largest singular value of ``(I − Q₁Q₁ᵀ) Q₂``, accurate down to the
    rounding of the bases (``sqrt(1 − cos²)`` would stop at about 1.5·10⁻⁸).
    """
    q1, _ = np.linalg.qr(first)
    q2, _ = np.linalg.qr(second)
    return float(min(1.0, np.linalg.norm(q2 - q1 @ (q1.T @ q2), ord=2)))


def match_columns(estimate, truth):
    """Return ``(order, sines)``: the truth's column matched to each column of ``estimate``, and their angles' sines.

    Columns are compared by ``|cos|`` (the Hungarian method maximises the sum);
    ``sines[l]`` is the sine of the angle between ``estimate[:, l]`` and
    ``truth[:, order[l]]``.
    """
    from scipy.optimize import linear_sum_assignment

    unit = estimate / np.linalg.norm(estimate, axis=0)
    truth_unit = truth / np.linalg.norm(truth, axis=0)
    cosines = np.abs(unit.T @ truth_unit)
    rows, order = linear_sum_assignment(-cosines)
    return order, np.sqrt(np.maximum(0.0, 1.0 - cosines[rows, order] ** 2))


class TwoLayerRectifiedGaussian:
    """The distribution of ``A ReLU(y)``, ``y ~ N(bias, covariance)``: the two-layer model.

    Parameters
    ----------
    mixing : ndarray, shape (d, p)
        ``A``; as fitted, its columns have unit norm (the gauge below).
    covariance : ndarray, shape (p, p)
        ``Σ = W Wᵀ`` of the hidden layer, in the gauge of ``mixing``.
    bias : ndarray, shape (p,)

    Notes
    -----
    ``(A P D, D⁻¹ Pᵀ W Q, D⁻¹ Pᵀ b)`` gives the same distribution for any
    permutation ``P``, positive diagonal ``D`` and orthogonal ``Q``. A fit
    has unit columns of ``A``, so it estimates ``D W Wᵀ D`` and ``D b`` with
    ``D = diag ‖a_l‖``, its hidden units in the order of its anchors.
    """

    def __init__(self, mixing, covariance, bias):
        self.mixing = np.asarray(mixing, dtype=np.float64)
        self.hidden = RectifiedGaussian(covariance, bias)

    def sample(self, n, seed=None):
        """Return ``n`` samples ``Â ReLU(Ŵ z + b̂)``, ``z ~ N(0, I)``, as an ``(n, d)`` array."""
        return self.hidden.sample(n, seed) @ self.mixing.T

    def errors(self, truth_mixing, truth_covariance, truth_bias):
        """Return the metrics against a truth, after matching the hidden units and bringing it to the fit's gauge.

        Parameters
        ----------
        truth_mixing : ndarray (d, p)
        truth_covariance : ndarray (p, p)
            ``W Wᵀ`` of the truth's hidden layer.
        truth_bias : ndarray (p,)

        Returns
        -------
        dict
            ``anchor_sin_max``, the largest sine between a column of ``Â`` and
            its matched column of ``A``; ``err_sigma``, ``err_b`` and
            ``tv_bound`` of the hidden layer against ``D W Wᵀ D`` and ``D b``
            in the fit's order (``RectifiedGaussian.errors``).
        """
        truth_mixing = np.asarray(truth_mixing, dtype=np.float64)
        if truth_mixing.shape != self.mixing.shape:
            raise ValueError(f"the truth's mixing is {truth_mixing.shape}; the fit's is {self.mixing.shape}")
        covariance, bias = gauged_truth(self.mixing, truth_mixing, truth_covariance, truth_bias)
        _, sines = match_columns(self.mixing, truth_mixing)
        return {"anchor_sin_max": float(sines.max()), **self.hidden.errors(covariance, bias)}


def gauged_truth(mixing, truth_mixing, truth_covariance, truth_bias):
    """Return the truth's ``(D W Wᵀ D, D b)``, ``D = diag ‖a_l‖``, its units in the order matched to ``mixing``."""
    order, _ = match_columns(mixing, np.asarray(truth_mixing, dtype=np.float64))
    scale = np.linalg.norm(truth_mixing, axis=0)[order]
    covariance = np.asarray(truth_covariance, dtype=np.float64)[np.ix_(order, order)] * np.outer(scale, scale)
    return covariance, np.asarray(truth_bias, dtype=np.float64)[order] * scale


class RandomBiasModel:
    """Mazumdar and Rawat's ``y = ReLU(A c + b)``, as fitted: ``Â``, ``b̂`` and which coordinates are identifiable.

    Parameters
    ----------
    mixing : ndarray (d, k)
    bias : ndarray (d,)
    status : ndarray (d,) of int8
        0 where the coordinate's row of ``A`` is identifiable (``latent.STATUS_OK``).
    """

    def __init__(self, mixing, bias, status):
        self.mixing = np.asarray(mixing, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)
        self.status = np.asarray(status)

    def errors(self, truth_mixing):
        """Return ``subspace_sine``: the sine of the largest principal angle between ``span(Â)`` and ``span(A)``.

        On the coordinates the fit found identifiable; ``identifiable`` is their number.
        """
        truth_mixing = np.asarray(truth_mixing, dtype=np.float64)
        if truth_mixing.shape != self.mixing.shape:
            raise ValueError(f"the truth's A is {truth_mixing.shape}; the fit's is {self.mixing.shape}")
        ok = self.status == 0
        return {"subspace_sine": principal_sine(self.mixing[ok], truth_mixing[ok]), "identifiable": int(ok.sum())}
