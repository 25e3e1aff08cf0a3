"""dist_relu: learn the rectified Gaussian ``x = ReLU(W z + b)`` from samples larger than memory.

Estimates ``Σ = W Wᵀ`` and ``b`` out of core with Dask (Wu, Dimakis & Sanghavi,
NeurIPS 2019, and beyond). See ``ReLUGaussian``.
"""

__version__ = "0.1.0"

# Imported on first use, so that the command line's entry point (dist_relu.entry)
# handles interrupts before numpy, dask and numba are loaded.
_EXPORTS = {"ReLUGaussian": "estimator", "relu_gaussian": "estimator", "fit_to_zarr": "estimator",
            "merge_fits": "estimator", "TwoLayerReLU": "twolayer", "two_layer_relu": "twolayer",
            "RandomBiasReLU": "randombias", "random_bias_relu": "randombias", "RandomBiasModel": "model",
            "random_bias_truth": "simulate",
            "open_fit": "fitstore", "RectifiedGaussian": "model", "TwoLayerRectifiedGaussian": "model",
            "figure1_truth": "simulate", "two_layer_truth": "simulate", "simulate_to_zarr": "simulate"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dist_relu' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
