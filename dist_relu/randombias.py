"""Mazumdar and Rawat's random-bias model ``y = ReLU(A c + b)``, out of core (docs/design.md §10).

Arbitrary latents ``c ∈ R^k`` per sample, a bias ``b`` random per coordinate
but fixed across samples. The fit alternates least squares
(``latent.py``): it starts in memory on a pilot (the first rows: PCA, then
``pilot_iterations`` rounds), then makes passes over the data, each one
read: every row chunk solves its latents and adds its part of the
coordinates' normal equations, summed as a tree; the driver solves ``d``
small systems. It stops when ``span(Â)`` moves by less than ``tolerance``,
or after ``max_passes``.
"""

import contextlib
import os
import warnings
from dataclasses import dataclass

import dask.array as da
import numpy as np

from . import fitstore, graph, io, latent, settings, storage
from .fitstore import MemoryOutput
from .model import RandomBiasModel, principal_sine
from .pipeline import Input, Stages, rechunk_by_tasks, whole_rows
from .scheduler import compute
from .settings import RandomBiasSettings


class NotConverged(UserWarning):
    """A random-bias fit stopped at ``max_passes`` before ``span(Â)`` settled."""


def default_pilot_rows(n, d):
    """Return the pilot's rows: 40 per coordinate, at least 2,000, at most ``n``."""
    return min(n, max(2_000, 40 * d))


@dataclass(frozen=True)
class RandomBiasFit:
    """A random-bias fit, computed: ``U = [Â, b̂]`` in the centred gauge, and how the passes went."""

    factors: np.ndarray  # (d, k+1): [Â, b̂], latents centred and whitened (latent.gauge)
    status: np.ndarray  # (d,) int8, latent.STATUS_NAMES
    losses: list  # the mean loss per sample at the start of each pass
    changes: list  # the sine by which span(Â) moved in each pass
    converged: bool
    rows: int  # rows fitted
    pilot_rows: int

    def components(self):
        return latent.components(self.factors, self.status)


def fit_random_bias(input, fit_settings, stages, progress=False):
    """Return the ``RandomBiasFit`` of ``input`` (a ``pipeline.Input``) with ``fit_settings``.

    Refuses (``io.InputError``) a rank not below ``d``, negative or
    non-finite values (as the one-layer model does), and data with fewer
    than ``k + 1`` coordinates that have ``k + 1`` positive samples. Warns
    (``NotConverged``) when ``max_passes`` end before the tolerance is met.
    """
    samples = whole_rows(input.samples)
    n, d = samples.shape
    k = fit_settings.rank
    if k >= d:
        raise io.InputError(f"rank {k} must be below the {d} coordinates: give --rank {d - 1} or less")
    pilot_rows = min(n, fit_settings.pilot_rows or default_pilot_rows(n, d))
    with stages("pilot"):
        (pilot,) = compute(samples[:pilot_rows], progress=progress)
    pilot = np.asarray(pilot, dtype=np.float64)
    finite = np.isfinite(pilot)
    io.check_values(_refused(np.stack([(pilot < 0).sum(axis=0), (~finite).sum(axis=0)], axis=1), fit_settings),
                    where=f" among the pilot's {pilot_rows:,} rows")
    pilot = pilot[finite.all(axis=1)]
    pilot_status = latent.coordinate_status((pilot > 0).sum(axis=0), k)
    _check_identifiable(pilot_status, k, f"the pilot's {len(pilot):,} rows", "a larger --pilot-rows")
    with stages("pilot"):
        factors = latent.pca_start(pilot, k)
        factors[pilot_status != latent.STATUS_OK] = 0.0  # not determined by the pilot: left to the passes
        factors = latent.alternate(pilot, factors, pilot_status, fit_settings.pilot_iterations,
                                   fit_settings.latent_steps)
    losses, changes, status, moments, rows = [], [], pilot_status, None, 0
    for number in range(1, fit_settings.max_passes + 1):
        with stages(f"pass {number}"):
            (summed,) = compute(graph.normal_equations(samples, factors, fit_settings.latent_steps,
                                                       fit_settings.split_every), progress=progress)
        equations = summed[0]
        if number == 1:
            io.check_values(_refused(equations.problems, fit_settings))
            rows = equations.rows
            if rows < k + 1:
                raise io.InputError(f"{n - rows:,} of {n:,} rows hold NaN or ±inf: fewer than {k + 1} are left")
            status = latent.coordinate_status(equations.positives, k)
            _check_identifiable(status, k, f"the {rows:,} samples", "more samples, or a smaller --rank")
        updated = latent.solve_factors(equations, status)
        losses.append(equations.loss / equations.rows)
        changes.append(principal_sine(latent.components(factors, status), latent.components(updated, status)))
        factors, moments = updated, equations.moments
        if changes[-1] < fit_settings.tolerance:
            break
    converged = changes[-1] < fit_settings.tolerance
    if not converged:
        warnings.warn(f"the random-bias fit did not converge in {fit_settings.max_passes} passes: span(Â) still "
                      f"moved by a sine of {changes[-1]:.2e} in the last (tolerance {fit_settings.tolerance:g}); "
                      "give more --max-passes", NotConverged, stacklevel=2)
    return RandomBiasFit(latent.gauge(factors, moments), status, losses, changes, bool(converged), int(rows),
                         int(pilot_rows))


def _refused(problems, fit_settings):
    """Return the value problems that refuse the data: negative values, and non-finite ones unless dropped."""
    return problems * [1, 0] if fit_settings.drop_nonfinite else problems


def _check_identifiable(status, k, where, advice):
    ok = int(np.count_nonzero(status == latent.STATUS_OK))
    if ok < k + 1:
        raise io.InputError(f"only {ok} coordinate(s) have {k + 1} or more positive values among {where}; a "
                            f"rank-{k} subspace needs at least {k + 1}: give {advice}")


def write_random_bias(output, fit, input, fit_settings, stages, record_extra=None):
    """Write ``fit`` into ``output`` (``fitstore.ZarrOutput`` or ``MemoryOutput``); return its attributes."""
    k = fit_settings.rank
    output.store({"components": fit.components(), "mixing": fit.factors[:, :k], "bias": fit.factors[:, k],
                  "status": fit.status, "loss": np.asarray(fit.losses), "change": np.asarray(fit.changes)})
    n, d = input.samples.shape
    record = {"n_samples": fit.rows, "n_coordinates": int(d),
              **fit_settings.stored({"pilot_rows": fit.pilot_rows}),
              "row_chunk": int(max(input.samples.chunks[0])), "n_passes": len(fit.losses),
              "converged": fit.converged, **(record_extra or {})}
    if fit_settings.drop_nonfinite:
        record["rows_dropped"] = int(n) - fit.rows
    attributes = fitstore.provenance(record, stages.elapsed(), stages.seconds, input.label, input.identity,
                                     model=fitstore.RANDOM_BIAS_MODEL)
    output.finish(attributes)
    return attributes


@rechunk_by_tasks
def _fit(source, fit_settings, outputs, *, array="samples", allow_missing_chunks=False, progress=False,
         checked_input=None):
    input = checked_input or Input.open(source, array, allow_missing_chunks)
    stages = Stages()
    with outputs as output:
        return write_random_bias(output, fit_random_bias(input, fit_settings, stages, progress), input,
                                 fit_settings, stages)


def _latents_block(x, factors, steps):
    x = np.asarray(x, dtype=np.float64)
    return latent.solve_latents(x, factors, steps)


class RandomBiasReLU(settings.Estimator):
    """Estimate ``span(A)`` and ``b`` of ``y = ReLU(A c + b)``: arbitrary latents, a random bias per coordinate.

    Mazumdar and Rawat's model (NeurIPS 2019). The latents need not be
    Gaussian, where the one-layer model's fit is biased; only ``span(A)`` on
    the coordinates with at least ``k + 1`` positives is identifiable, and
    ``A``, ``b`` and the latents are reported in the gauge where the latents
    have mean 0 and covariance I (docs/design.md §10).

    Parameters
    ----------
    {settings}

    Attributes
    ----------
    components_ : ndarray (d, k)
        An orthonormal basis of ``span(Â)`` (0 on coordinates that are not ok).
    mixing_, bias_ : ndarray (d, k), (d,)
        ``Â`` and ``b̂`` in the centred, whitened gauge.
    status_ : ndarray (d,) of int8
        ``latent.STATUS_NAMES``: ok, or few_positives (fewer than ``k + 1``).
    n_passes_ : int
    loss_ : ndarray (passes,)
        The mean loss per sample at the start of each pass.
    converged_ : bool
    model_ : RandomBiasModel
    settings_ : dict
    """

    settings_class = RandomBiasSettings  # each setting's entry in Parameters is made from its declaration

    def fit(self, X, array="samples", allow_missing_chunks=False, progress=False):
        """Fit the model on samples ``X`` (as ``ReLUGaussian.fit`` takes them) and return ``self``."""
        output = MemoryOutput()
        _fit(X, RandomBiasSettings(**self.get_params()), contextlib.nullcontext(output), array=array,
             allow_missing_chunks=allow_missing_chunks, progress=progress)
        arrays = output.arrays
        self.settings_ = output.attributes
        self.components_, self.mixing_, self.bias_ = arrays["components"], arrays["mixing"], arrays["bias"]
        self.status_, self.loss_ = arrays["status"], arrays["loss"]
        self.n_passes_, self.converged_ = self.settings_["n_passes"], self.settings_["converged"]
        self.model_ = RandomBiasModel(self.mixing_, self.bias_, self.status_)
        self._arrays = arrays
        return self

    def transform(self, X, array="samples"):
        """Return the latents of samples ``X`` in the fit's gauge, as a lazy ``(n, k)`` dask array."""
        samples = whole_rows(io.open_samples(X, array=array))
        factors = np.column_stack([self.mixing_, self.bias_])
        return samples.map_blocks(_latents_block, factors, self.latent_steps, chunks=(samples.chunks[0], (self.rank,)),
                                  dtype=np.float64, meta=np.empty((0, 0)))

    def reconstruct(self, X, array="samples"):
        """Return ``ReLU(Â ĉ + b̂)`` of samples ``X``, lazily: the fit's reconstruction of each sample."""
        return da.maximum(self.transform(X, array) @ self.mixing_.T + self.bias_, 0.0)

    def save(self, path, overwrite=False):
        """Write the fit as a Zarr group at ``path``, as ``dist-relu fit --model random-bias`` writes it."""
        with fitstore.zarr_output(path, [self.settings_["source"]], overwrite) as output:
            output.store(self._arrays)
            output.finish(self.settings_)


def random_bias_relu(X, **fit_settings):
    """Return ``(components, mixing, bias)`` of ``y = ReLU(A c + b)`` from samples ``X``.

    Parameters
    ----------
    X : str, Path, zarr array or group, dask array or ndarray, shape (n, d)
    **fit_settings
        The settings of ``RandomBiasReLU``; ``rank`` is required.

    Returns
    -------
    components : ndarray (d, k)
        An orthonormal basis of ``span(Â)``.
    mixing, bias : ndarray (d, k), (d,)
        ``Â`` and ``b̂`` in the gauge where the latents have mean 0 and covariance I.
    """
    fit = RandomBiasReLU(**fit_settings).fit(X)
    return fit.components_, fit.mixing_, fit.bias_


def fit_to_zarr(source, out, *, array="samples", allow_missing_chunks=False, overwrite=False, progress=False,
                **fit_settings):
    """Fit the random-bias model to the samples at ``source``; write it as a Zarr group at ``out``.

    The group holds ``components``, ``mixing``, ``bias``, ``status``, and the
    ``loss`` and ``change`` of each pass. Returns its attributes.
    """
    label = source if isinstance(source, (str, os.PathLike)) else None
    storage.check_output(out, fitstore.FORMAT, [label], overwrite)
    fit_settings = RandomBiasSettings(**fit_settings)
    input = Input.open(source, array, allow_missing_chunks)
    return _fit(source, fit_settings, fitstore.zarr_output(out, [label], overwrite), progress=progress, checked_input=input)
