"""The fitted distribution ``ReLU(N(b, Σ))`` and the paper's accuracy metrics (numpy only)."""

import numpy as np


def psd_projection(covariance):
    """Return the nearest positive semidefinite matrix in Frobenius norm (eigenvalues clipped at 0)."""
    covariance = np.asarray(covariance, dtype=np.float64)
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    return (vectors * np.maximum(values, 0)) @ vectors.T


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
    bias : ndarray, shape (d,)
    """

    def __init__(self, covariance, bias):
        self.covariance = np.asarray(covariance, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)

    @property
    def dimension(self):
        return self.bias.shape[0]

    def factor(self):
        """Return ``Ŵ`` (d×d) with ``Ŵ Ŵᵀ = Σ̂₊``, the PSD projection of the covariance.

        Returns
        -------
        ndarray (d, d)
            ``V diag(sqrt(max(λ, 0)))`` from the eigendecomposition ``Σ̂ = V diag(λ) Vᵀ``.
        """
        values, vectors = np.linalg.eigh((self.covariance + self.covariance.T) / 2)
        return vectors * np.sqrt(np.maximum(values, 0))

    def sample(self, n, seed=None):
        """Return ``n`` samples ``ReLU(Ŵ z + b)``, ``z ~ N(0, I)``.

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
        return np.maximum(0.0, z @ self.factor().T + self.bias)

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
