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
