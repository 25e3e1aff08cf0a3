"""Simulated data sets: the paper's Figure-1 generators, and samples written straight to Zarr."""

import numpy as np

from . import graph, io, kernels, storage

BIAS_KINDS = ("clipped", "gaussian")


def figure1_truth(d, kappa=1.0, seed=0, bias="clipped"):
    """Return ``(W, b)`` drawn as in the paper's Figure 1 (docs/design.md §6).

    Parameters
    ----------
    d : int
        Dimension.
    kappa : float, default 1.0
        Condition number of ``W Wᵀ``, at least 1.
    seed : int, default 0
    bias : {"clipped", "gaussian"}, default "clipped"
        ``b ~ N(0, I)`` clipped at 0 (the paper) or left as drawn.

    Returns
    -------
    weights : ndarray (d, d)
    bias : ndarray (d,)

    Notes
    -----
    ``W = U diag(λ⁰, λ⁻¹, …, λ^-(d-1))`` with ``U`` the orthogonal factor of the
    SVD of a Gaussian ``d × d`` matrix and ``λ = κ^(1/(2(d−1)))``, so ``W Wᵀ``
    has condition number ``κ``.
    """
    if bias not in BIAS_KINDS:
        raise ValueError(f"bias must be one of {', '.join(BIAS_KINDS)}; got {bias!r}")
    if d < 1 or kappa < 1:
        raise ValueError(f"need d ≥ 1 and kappa ≥ 1; got d={d}, kappa={kappa}")
    rng = np.random.default_rng(seed)
    u, _, _ = np.linalg.svd(rng.standard_normal((d, d)))
    ratio = kappa ** (1 / (2 * (d - 1))) if d > 1 else 1.0
    weights = u * ratio ** -np.arange(d)
    b = rng.standard_normal(d)
    if bias == "clipped":
        b = np.maximum(0.0, b)
    return weights, b


def simulate_to_zarr(out, weights, bias, n_samples, chunk_rows=65_536, seed=0, dtype="float32",
                     overwrite=False, progress=False, mixing=None, noise=0.0, latent="gaussian"):
    """Write ``n_samples`` samples of ``ReLU(W z + b)`` (or ``A ReLU(W z + b)``) and the truth as a Zarr group at ``out``.

    Chunks are drawn in parallel on the current scheduler, each from a
    generator seeded by ``(seed, chunk index)``, so the data do not depend on
    the scheduler. The group appears only when complete
    (``storage.atomic_output``).

    Parameters
    ----------
    out : str or Path
        The new group (a path or fsspec URL).
    weights : ndarray (d, k)
    bias : ndarray (d,)
    n_samples : int
    chunk_rows : int, default 65,536
        Rows per stored chunk.
    seed : int, default 0
    dtype : {"float32", "float64"}, default "float32"
    overwrite : bool, default False
        Replace an earlier samples store at ``out`` (never anything else).
    progress : bool, default False
    mixing : ndarray (d, p), optional
        ``A`` of the two-layer model ``x = A ReLU(W z + b)``; ``weights`` and
        ``bias`` are then the hidden layer's (p × k, p).
    noise : float, default 0
        Standard deviation of Gaussian noise added to every value.
    latent : {"gaussian", "uniform", "t3", "sparse"}, default "gaussian"
        The law of the latents ``z`` (``kernels.draw_latents``): other than
        Gaussian, the samples are Mazumdar and Rawat's random-bias model
        ``ReLU(A c + b)`` with ``A`` = ``weights``.

    Returns
    -------
    dict
        The attributes written with the group, which holds ``samples``
        (n, d), chunked ``(chunk_rows, d)``, and ``truth/weights``,
        ``truth/covariance``, ``truth/bias`` (and ``truth/mixing``).
    """
    weights = np.asarray(weights, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    if weights.ndim != 2 or bias.shape != (weights.shape[0],):
        raise ValueError(f"weights must be (d, k) and bias (d,); got {weights.shape} and {bias.shape}")
    if mixing is not None:
        mixing = np.asarray(mixing, dtype=np.float64)
        if mixing.ndim != 2 or mixing.shape[1] != weights.shape[0]:
            raise ValueError(f"mixing must be (d, {weights.shape[0]}); got {mixing.shape}")
    if n_samples < 1 or chunk_rows < 1:
        raise ValueError("n_samples and chunk_rows must be positive")
    if not noise >= 0:
        raise ValueError(f"noise must be ≥ 0; got {noise}")
    if latent not in kernels.LATENT_LAWS:
        raise ValueError(f"latent must be one of {', '.join(kernels.LATENT_LAWS)}; got {latent!r}")
    samples = graph.simulated_samples(n_samples, weights, bias, chunk_rows, seed, dtype, mixing, noise, latent)
    law = "z ~ N(0, I)" if latent == "gaussian" else f"z ~ {latent}"
    model = f"x = ReLU(W z + b), {law}" if mixing is None else f"x = A ReLU(W z + b), {law}"
    attributes = {
        "format": storage.SAMPLES_FORMAT, "generator": "dist_relu.simulate",
        "model": model + (f" + N(0, {noise:g}² I)" if noise else ""),
        "n_samples": int(n_samples), "seed": int(seed), "chunk_rows": int(chunk_rows),
    }
    with storage.atomic_output(out, storage.SAMPLES_FORMAT, (), overwrite) as partial:
        io.write_group(partial, {"samples": samples}, attributes, progress=progress, codecs=io.SAMPLE_CODECS)
        truth = {"weights": weights, "covariance": gram(weights), "bias": bias}
        if mixing is not None:
            truth["mixing"] = mixing
        io.write_group(f"{partial}/truth", truth, {"note": "the parameters the samples were drawn from",
                                                   "noise": float(noise), "latent": latent})
    return attributes


def gram(weights, rows=1024):
    """Return ``W Wᵀ``, exactly symmetric, made by blocks of ``rows`` rows: GEMM on the upper triangle, mirrored.

    numpy hands ``W @ W.T`` itself to BLAS's SYRK, which OpenBLAS's threads
    crashed in (SIGSEGV) from ``d`` ≈ 15,000 on this project's machines.
    """
    d = weights.shape[0]
    out = np.empty((d, d), dtype=np.result_type(weights, np.float64))
    for start in range(0, d, rows):
        stop = min(start + rows, d)
        out[start:stop, start:] = weights[start:stop] @ weights[start:].T
        out[start:, start:stop] = out[start:stop, start:].T
    return out


def two_layer_truth(d, hidden, kappa=1.0, seed=0, bias="clipped"):
    """Return ``(A, W, b)`` of a two-layer truth: ``A`` (d × p) standard Gaussian, ``(W, b)`` as ``figure1_truth(p)``.

    ``W`` is square (``k = p``), so the hidden layer is separable.
    """
    weights, b = figure1_truth(hidden, kappa=kappa, seed=seed, bias=bias)
    return np.random.default_rng([seed, 2]).standard_normal((d, hidden)), weights, b


def random_bias_truth(d, rank, seed=0):
    """Return ``(A, b)`` of a random-bias truth: both standard normal, ``A`` d × ``rank``."""
    rng = np.random.default_rng([seed, 3])
    return rng.standard_normal((d, rank)), rng.standard_normal(d)


def open_truth_group(path):
    """Return the ``truth`` group stored beside simulated samples at ``path``."""
    import zarr

    where = storage.location(path)
    if not where.exists():
        raise io.InputError(f"{path}: no such file or directory")
    try:
        return zarr.open_group(where.url, mode="r")["truth"]
    except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
        raise io.InputError(f"{path} holds no truth/ group: it was not written by dist-relu simulate") from error


def open_truth(path):
    """Return the truth stored beside simulated samples at ``path``.

    ``(covariance, bias)``, or ``(mixing, covariance, bias)`` for samples of
    the two-layer model.
    """
    truth = open_truth_group(path)
    if "mixing" in truth:
        return truth["mixing"][:], truth["covariance"][:], truth["bias"][:]
    return truth["covariance"][:], truth["bias"][:]
