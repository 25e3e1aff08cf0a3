"""dist_relu: learn the rectified Gaussian ``x = ReLU(W z + b)`` from samples larger than memory.

Estimates ``Σ = W Wᵀ`` and ``b`` out of core with Dask (Wu, Dimakis & Sanghavi,
NeurIPS 2019, and beyond). See ``ReLUGaussian``.
"""

__version__ = "0.1.0"

from .estimator import ReLUGaussian, fit_to_zarr, merge_fits, open_fit  # noqa: E402
from .model import RectifiedGaussian  # noqa: E402
from .simulate import figure1_truth, simulate_to_zarr  # noqa: E402

__all__ = ["ReLUGaussian", "RectifiedGaussian", "figure1_truth", "fit_to_zarr", "merge_fits", "open_fit",
           "simulate_to_zarr"]
