"""The one-layer model ``x = ReLU(W z + b)``: its estimates, the one orchestration of a fit, and its front doors.

``ReLUGaussian`` (in memory), ``relu_gaussian`` (the function), ``fit_to_zarr``
and ``merge_fits`` (to a Zarr group) all run ``write_fit``: the main pass of a
``plan.FitPlan`` (or the stored ``Sums`` of earlier fits) is stored with its
small results computed in the same graph, then the estimates are made from
what was stored (docs/design.md §2–§4) and checked before anything is
returned.
"""

import contextlib
import dataclasses
import os
from typing import NamedTuple

import dask.array as da
import numpy as np

from . import compiled, fitstore, graph, io, kernels, settings, storage, uncertainty
from .fitstore import MemoryOutput
from .model import RectifiedGaussian, predictive_check
from .pipeline import Input, Stages, check_checkpoint_location, rechunk_by_tasks
from .plan import likelihood_of, plan_fit
from .scheduler import compute
from .settings import OneLayerSettings


def estimates(statistics, counts, n_samples, thresholds, method, inversion, clip_bias, sgd_estimates=None,
              exponents=None, cut_counts=None, cut_points=None):
    """Return the lazy estimates from a fit's sums: ``Σ̂`` and the per-coordinate arrays.

    Parameters
    ----------
    statistics : dask array (d, 4)
        The sufficient statistics ``(n0, n1, S1, S2)``, in column blocks, the
        sums in units ``2**exponents``.
    counts : dask array (d, d)
        The co-exceedance counts ``C_ij``, in the same column blocks.
    n_samples : int
        The rows the sums are of.
    thresholds : ndarray (d,)
        The thresholds ``t`` the counts were made at.
    method, inversion, clip_bias
        As in ``ReLUGaussian``.
    sgd_estimates : ndarray (d, 2), optional
        The SGD's ``(µ̂, σ̂)`` (``method="sgd"``), used where the coordinate is ok.
    exponents : array (d,), optional
        The units of the sums; 0 by default.
    cut_counts, cut_points : dask array (K·d, K·d), ndarray (d, K), optional
        With ``K > 1`` cut points per coordinate: the counts of every cut
        point, in blocks ``K`` times as wide, and the cut points. ``Σ̂`` is
        then the polychoric estimate (``graph.cut_correlations``) with the
        likelihood's margins; ``inversion`` and ``clip_bias`` are for one cut.

    Returns
    -------
    dict of dask arrays
        ``covariance`` (d, d), ``bias``, ``scale``, ``status`` and
        ``positive_fraction`` (d,). Compute the per-coordinate arrays first and
        ``check_estimates`` them: ``Σ̂`` may not be representable. Not
        stored, for the standard errors: ``margins`` (d,), the inversion's,
        and ``likelihood_bias``, the maximum likelihood ``b̂`` before any
        clipping or SGD; with cut points, ``standardised_cuts`` (d, K).

    Notes
    -----
    ``Σ̂_ij = σ̂_i σ̂_j ρ_ij`` with ``ρ_ij`` the root of
    ``Φ₂(a_i, a_j; ρ) = C_ij / n``; the margins ``a`` are ``Φ⁻¹(C_ii / n)``
    (``inversion="tetrachoric"``) or ``(b̂_i − t_i)/σ̂_i`` (``"model"``).
    """
    bias, scale, status = graph.coordinate_estimates(statistics, likelihood_of(method), exponents)
    likelihood_bias = bias
    if sgd_estimates is not None:
        bias, scale = graph.with_degenerate(da.asarray(sgd_estimates), bias, scale, status)
    if clip_bias:
        # Before the margins: the paper thresholds at the clipped b̂ and inverts with a = 0.
        bias = da.maximum(bias, 0.0)
    if inversion == "tetrachoric":
        margins = graph.tetrachoric_margins(counts, n_samples)
    else:
        thresholds = da.from_array(np.asarray(thresholds), chunks=bias.chunks)
        margins = da.map_blocks(kernels.threshold_margins, bias, scale, thresholds, dtype=np.float64)
    if cut_counts is None:
        covariance, standardised = graph.covariance(counts, n_samples, margins, scale), None
    else:
        d, cuts = cut_points.shape
        standardised = graph.standardised_cuts(cut_points, likelihood_bias, scale)
        rho, _ = graph.cut_correlations(cut_counts, n_samples, da.diagonal(cut_counts).reshape(d, cuts), standardised)
        covariance = rho * scale[:, None] * scale[None, :]
    return {
        "covariance": covariance,
        "bias": bias,
        "scale": scale,
        "status": status,
        "positive_fraction": statistics[:, 1] / n_samples,
        "margins": margins,
        "likelihood_bias": likelihood_bias,
        **({} if standardised is None else {"standardised_cuts": standardised}),
    }


def check_estimates(bias, scale, status, statistics=None, covariance_nonfinite=None):
    """Return nothing; raise unless the estimates may be returned (every path of a fit calls it, before any output).

    Every coordinate whose status is ok must have finite ``b̂``, ``σ̂`` and
    row of ``Σ̂``, and ``Σ̂ = σ̂_i σ̂_j ρ_ij`` must lie in float64's normal
    range. ``statistics`` (d, 4) are the sufficient statistics, and
    ``covariance_nonfinite`` (d,) counts the NaN or ±inf in each row of
    ``Σ̂``, once it is computed.

    Raises
    ------
    io.InputError
        When the data's scale is the cause: sums, estimates or ``Σ̂`` beyond
        float64's range. The message says to rescale the data.
    RuntimeError
        For any other non-finite estimate of an ok coordinate, naming the
        columns.
    """
    rescale = "rescale the data (multiply it by a power of two) and fit again"
    if statistics is not None:
        overflowed = _columns(~np.isfinite(np.asarray(statistics)[:, 2:]).all(axis=1))
        if overflowed:
            raise io.InputError(
                f"the sums of the positive values or of their squares overflow float64 in column(s) {overflowed}: "
                f"those columns hold values far larger than the first rows', which set the sums' units; {rescale}")
    sigma = np.asarray(scale)[np.isfinite(scale) & (np.asarray(scale) > 0)]
    if sigma.size:
        largest, smallest = sigma.max(), sigma.min()
        with np.errstate(over="ignore", under="ignore"):
            if not np.isfinite(largest * largest):
                raise io.InputError(
                    f"Σ̂ = σ̂_i σ̂_j ρ_ij would overflow float64 (σ̂ up to {largest:.3g}): {rescale}, "
                    f"e.g. by 2**{-np.frexp(largest)[1]}")
            if smallest * smallest < np.finfo(np.float64).tiny:
                raise io.InputError(
                    f"Σ̂ = σ̂_i σ̂_j ρ_ij would underflow float64's normal range (σ̂ down to {smallest:.3g}): "
                    f"{rescale}, e.g. by 2**{-np.frexp(smallest)[1]}")
    ok = np.asarray(status) == kernels.STATUS_OK
    overflowed = _columns(ok & (np.isinf(bias) | np.isinf(scale)))
    if overflowed:
        raise io.InputError(f"b̂ or σ̂ overflow float64 in column(s) {overflowed}: {rescale}")
    bad = ok & ~(np.isfinite(bias) & np.isfinite(scale))
    if covariance_nonfinite is not None:
        bad |= ok & (np.asarray(covariance_nonfinite) > 0)
    if bad.any():
        raise RuntimeError(f"the fit gave NaN or ±inf estimates (b̂, σ̂ or Σ̂) for column(s) {_columns(bad)}, "
                           "whose status is ok")


def _columns(mask):
    """Return the columns where ``mask`` is set, listed for a message ("" if none)."""
    return io.listed_columns(np.flatnonzero(mask))


def write_fit(output, fit_settings, column_block, record, stages, thresholds, main=None, bases=(), source=None,
              data=None, parts=None, progress=False, extra=None, check_extra=None, cut_points=None):
    """Make a fit from a main pass and stored sums, write it into ``output``; return its attributes.

    The one orchestration of every fit. The main pass's sums (``main``, a
    ``plan.MainPass``) and the ``bases`` (``fitstore.Sums`` of stored fits
    being added to) are added and stored, and the pass's small results (rows
    kept, value checks, the count kernel chosen, the SGD's estimates) are
    computed in the same graph. Then the estimates are made from what was
    stored, checked (``check_estimates``) and written, Σ̂ block by block.

    Parameters
    ----------
    output : fitstore.ZarrOutput or fitstore.MemoryOutput
    fit_settings : OneLayerSettings
    column_block : int
        The column block the sums are chunked in.
    record : dict
        How the fit is made (``FitPlan.record``), completed here with what
        the pass measured: ``n_samples`` (the rows fitted), ``count_kernel``
        (the kernel chosen, with "auto") and ``rows_dropped``.
    stages : pipeline.Stages
    thresholds : array (d,)
        The thresholds the sums were counted at; lazy when a pilot in the
        main pass's graph sets them.
    main : plan.MainPass, optional
        None for a merge of stored fits.
    bases : sequence of fitstore.Sums
    source, data : str, optional
        Where the samples are and their identity, for the provenance.
    parts : list of dict, optional
        The pieces of samples the fit holds (update and merge); the new
        piece's ``n_samples`` is None until the pass has counted it.
    cut_points : ndarray (d, K), optional
        For a merge of fits with ``K > 1`` cut points (the main pass has its own).
    extra : dict of dask arrays, optional
        More results of the main pass's read, computed in its graph (a model
        that fits the one-layer model on values it derives from its samples
        adds its own sums here); their values go to ``check_extra``, which
        may refuse the fit before its estimates are made.

    Returns
    -------
    dict
        The attributes written with the fit.
    """
    sums = fitstore.total(([main.sums] if main else []) + list(bases))
    measured = {"rows_kept": sums.rows_kept, "value_problems": sums.value_problems,
                "count_kernel": main and main.count_kernel, "sgd": main and main.sgd}
    lazy = {name: value for name, value in measured.items() if isinstance(value, da.Array)}
    extra = extra or {}
    with stages(("pass" if fit_settings.passes == 1 else "pass 2") if main else "merge"):
        # Everything the pass makes is computed by one graph: computed apart, each array would be
        # optimised apart, and dask would fuse a second read of the samples into the smaller ones.
        cut_points = main.cut_points if main else cut_points
        computed = output.store(fitstore.sums_arrays(sums, thresholds, cut_points),
                                also=[*lazy.values(), *extra.values()], progress=progress)
    measured.update(zip(lazy, computed))
    if check_extra is not None:
        check_extra(dict(zip(extra, computed[len(lazy):])))
    if measured["value_problems"] is not None:
        io.check_values(measured["value_problems"])
    kept = int(measured["rows_kept"])
    if kept < 2:
        raise io.InputError(f"{sums.rows_read - kept:,} of {sums.rows_read:,} rows hold NaN or ±inf: fewer than 2 "
                            "samples are left")
    record = {**record, "n_samples": kept}
    if measured["count_kernel"] is not None:
        record["count_kernel"] = compiled.COUNT_KERNELS[int(measured["count_kernel"])]
    if fit_settings.drop_nonfinite:
        record["rows_dropped"] = sums.rows_read - kept
    cut_arrays = ()
    if cut_points is not None:
        stored_cuts = output.read("cut_points")
        cut_arrays = output.lazy("cut_counts", stored_cuts.shape[1] * column_block), stored_cuts
        # Coordinates the pilot gave fewer cut points (few values above 0, or ties).
        record["cuts_fewer"] = int(np.count_nonzero(kernels.finite_cuts(stored_cuts) < stored_cuts.shape[1]))
    with stages("inversion"):
        lazy_estimates = estimates(
            fitstore.stored_statistics(output, column_block), output.lazy("counts", column_block), kept,
            output.read("thresholds"), fit_settings.method, fit_settings.inversion, fit_settings.clip_bias,
            measured["sgd"], output.lazy("statistics_exponent", column_block), *cut_arrays)
        covariance = lazy_estimates.pop("covariance")
        per_coordinate = dict(zip(lazy_estimates, compute(*lazy_estimates.values(), progress=progress)))
        checked = per_coordinate["bias"], per_coordinate["scale"], per_coordinate["status"]
        check_estimates(*checked, np.stack([output.read(name) for name in kernels.STATISTICS], axis=1))
        (nonfinite,) = output.store({"covariance": covariance}, also=[graph.nonfinite_per_row(covariance)],
                                    progress=progress)
        check_estimates(*checked, covariance_nonfinite=nonfinite)
    with stages("standard errors"):
        errors, error_summary = _standard_errors(output, column_block, kept, fit_settings, per_coordinate,
                                                 progress)
        per_coordinate.update(errors)
        per_coordinate["model_check"], per_coordinate["status"] = _model_check(
            output, kept, fit_settings, per_coordinate["status"], per_coordinate.pop("terms"))
        if output.has("group_counts"):
            jackknife, record["jackknife"] = _jackknife(output, column_block, fit_settings, per_coordinate,
                                                        progress)
            per_coordinate.update(jackknife)
    checked = np.isfinite(per_coordinate["model_check"])
    record["standard_errors"] = error_summary._asdict()
    record["model_check"] = {"threshold": float(uncertainty.MODEL_CHECK_THRESHOLD),
                             "min_positives": uncertainty.MODEL_CHECK_MIN_POSITIVES,
                             "checked": int(np.count_nonzero(checked)),
                             "failed": int(np.count_nonzero(per_coordinate["status"] == kernels.STATUS_NOT_NORMAL))}
    with stages("write"):
        if fit_settings.drop_nonfinite:
            per_coordinate["rows_dropped"] = np.int64(record["rows_dropped"])
        output.store(per_coordinate)
    attributes = fitstore.provenance(record, stages.elapsed(), stages.seconds, source, data)
    if parts:
        # The new piece's rows are what the fit holds beyond the stored ones.
        new_rows = kept - sum(base.rows_kept for base in bases)
        attributes["parts"] = [part if part["n_samples"] is not None else
                               {**part, "n_samples": new_rows, "created": attributes["created"],
                                "fit_id": attributes["fit_id"]}
                               for part in parts]
    output.finish(attributes)
    return attributes


class StandardErrorSummary(NamedTuple):
    """How far a fit's ``Σ̂`` can be trusted, stored with it as the attribute ``standard_errors``."""

    entries: int  # Σ̂_ij with j ≥ i
    relative_above_10pct: int  # SE(Σ̂_ij)/|Σ̂_ij| > 0.1
    relative_above_50pct: int
    no_information: int  # SE(Σ̂_ij) infinite: a cell of the pair's 2×2 table of exceedances is empty
    undetermined_coordinates: int  # status "undetermined": most of the row's ρ̂ have SE > 0.5


def _standard_errors(output, column_block, n_samples, fit_settings, per_coordinate, progress):
    """Store ``correlation_se`` and ``covariance_se`` (d, d); return the per-coordinate results and a summary.

    By the delta method from what the fit stored (``uncertainty``), with no
    read of the samples. The SGD's ``b̂`` and ``σ̂`` have no likelihood to
    give their errors: with ``method="sgd"`` only ``SE(ρ̂)`` of the
    tetrachoric inversion is made, the rest is NaN. Returns ``bias_se``,
    ``scale_se``, the status, where ok coordinates whose correlations are
    mostly undetermined become ``STATUS_UNDETERMINED``, and the
    ``uncertainty.CoordinateTerms`` (in the statistics' units); and the
    ``StandardErrorSummary``.
    """
    margins, likelihood_bias = per_coordinate.pop("margins"), per_coordinate.pop("likelihood_bias")
    standardised = per_coordinate.pop("standardised_cuts", None)
    scale, status = per_coordinate["scale"], per_coordinate["status"]
    exponents = np.asarray(output.read("statistics_exponent"), dtype=np.int64)
    if fit_settings.method == "sgd":
        information = np.full((len(scale), 2, 2), np.nan)
    else:
        statistics = np.stack([output.read(name) for name in kernels.STATISTICS], axis=1)
        information = kernels.coordinate_information(statistics, likelihood_bias, scale, status,
                                                     fit_settings.method, exponents)
    counts = output.lazy("counts", column_block)
    (exceedances,) = compute(da.diagonal(counts))
    terms = uncertainty.coordinate_terms(likelihood_bias, scale, margins, information, exceedances,
                                         likelihood_of(fit_settings.method), exponents)
    covariance = output.lazy("covariance", column_block)
    if standardised is None:
        correlation_se, covariance_se = graph.standard_errors(counts, n_samples, covariance, terms.stack(),
                                                              fit_settings.inversion)
    else:
        correlation_se, covariance_se = graph.cut_standard_errors(covariance, n_samples, terms.stack(), standardised)
    (trust,) = output.store({"correlation_se": correlation_se, "covariance_se": covariance_se},
                            also=[graph.trust_counts(covariance, covariance_se, correlation_se)], progress=progress)
    d = len(scale)
    undetermined = trust[:, 3] > (d - 1) / 2
    status = np.where((status == kernels.STATUS_OK) & undetermined, kernels.STATUS_UNDETERMINED, status)
    summary = StandardErrorSummary(d * (d + 1) // 2, *(int(total) for total in trust[:, :3].sum(axis=0)),
                                   int(np.count_nonzero(undetermined)))
    with np.errstate(invalid="ignore"):
        return {"bias_se": np.ldexp(np.sqrt(information[:, 0, 0] / n_samples), exponents),
                "scale_se": np.ldexp(np.sqrt(information[:, 1, 1] / n_samples), exponents),
                "status": status.astype(np.int8), "terms": terms}, summary


def _model_check(output, n_samples, fit_settings, status, terms):
    """Return the model check's statistic (d,) and the status with the coordinates that fail it marked.

    From the stored statistics and moments of the positives
    (``uncertainty.model_check``), in their units, and the standard errors'
    ``terms``; NaN where not checked (and everywhere unless
    ``method="censored"``, or for fits stored without the moments).
    """
    value = np.full(len(status), np.nan)
    # Only the censored likelihood's: with the truncated one, a fit of a few positives can land where the
    # check's covariance is not positive definite, and model data fails (benchmarks/README.md).
    if fit_settings.method != "censored" or not all(output.has(name) for name in fitstore.MOMENTS):
        return value, status
    statistics = np.stack([output.read(name) for name in kernels.STATISTICS], axis=1)
    moments = np.stack([output.read(name) for name in fitstore.MOMENTS], axis=1)
    value = uncertainty.model_check(statistics, moments, terms, n_samples)
    fails = np.isin(status, (kernels.STATUS_OK, kernels.STATUS_UNDETERMINED)) & \
        (value > uncertainty.MODEL_CHECK_THRESHOLD)
    return value, np.where(fails, kernels.STATUS_NOT_NORMAL, status).astype(np.int8)


def _jackknife(output, column_block, fit_settings, per_coordinate, progress):
    """Store the jackknife's ``jackknife_correlation_se`` and ``jackknife_covariance_se`` (d, d).

    From each group's stored sums (``uncertainty.jackknife_replicates``),
    with no read of the samples. Returns ``jackknife_bias_se`` and
    ``jackknife_scale_se`` (d,), and the record of how the jackknife's
    errors compare with the analytic ones: for each estimate, the root of the
    mean ratio of their squares (of the variances) over the entries where
    both are finite and positive.
    """
    statistics = np.stack([output.read(name) for name in kernels.STATISTICS], axis=1)
    cut_points = output.read("cut_points") if output.has("cut_points") else None
    cuts = 1 if cut_points is None else cut_points.shape[1]
    group_counts = output.lazy("group_counts", (1, cuts * column_block, cuts * column_block))
    counts = output.lazy("counts" if cut_points is None else "cut_counts", cuts * column_block)
    exceedances, group_exceedances = compute(da.diagonal(counts), da.diagonal(group_counts, axis1=1, axis2=2))
    if cut_points is not None:  # every cut point's, (d, K) and (G, d, K)
        exceedances = exceedances.reshape(-1, cuts)
        group_exceedances = group_exceedances.reshape(len(group_exceedances), -1, cuts)
    replicates = uncertainty.jackknife_replicates(
        statistics, output.read("group_statistics"), exceedances, group_exceedances,
        output.read("statistics_exponent"), output.read("thresholds"), likelihood_of(fit_settings.method),
        fit_settings.inversion, fit_settings.clip_bias, cut_points)
    correlation_se, covariance_se = graph.jackknife_standard_errors(group_counts, counts, replicates)
    analytic = {name: output.lazy(name, column_block) for name in ("correlation_se", "covariance_se")}
    ratios = output.store({"jackknife_correlation_se": correlation_se, "jackknife_covariance_se": covariance_se},
                          also=[graph.variance_ratio_sums(correlation_se, analytic["correlation_se"]),
                                graph.variance_ratio_sums(covariance_se, analytic["covariance_se"])],
                          progress=progress)
    errors = {"jackknife_bias_se": np.sqrt(uncertainty.jackknife_variance(replicates.bias)),
              "jackknife_scale_se": np.sqrt(uncertainty.jackknife_variance(replicates.scale))}
    ratios = [*ratios, *(uncertainty.variance_ratio_sums(errors[f"jackknife_{name}_se"], per_coordinate[f"{name}_se"])
                         for name in ("bias", "scale"))]
    record = {"groups": int(len(replicates.rows))}
    for name, (ratio_sum, compared) in zip(("correlation", "covariance", "bias", "scale"), ratios):
        record[f"{name}_ratio"] = float(np.sqrt(ratio_sum / compared)) if compared else None
    return errors, record


@rechunk_by_tasks
def _fit(source, fit_settings, output, *, array="samples", allow_missing_chunks=False, progress=False,
         checkpoint=None, thresholds=None, bases=(), parts=None, checked_input=None, cut_points=None):
    """Fit the samples at ``source`` into ``output`` (a context manager yielding an output); return the attributes."""
    input = checked_input or Input.open(source, array, allow_missing_chunks)
    stages = Stages()
    with output as opened:
        plan = plan_fit(input, fit_settings, checkpoint, thresholds, stages, progress, cut_points)
        stored = [fitstore.stored_sums(group, plan.layout.column_block) for group in bases]
        return write_fit(opened, fit_settings, plan.layout.column_block, plan.record(), stages, plan.main.thresholds,
                         plan.main, stored, input.label, input.identity, parts, progress)


class ReLUGaussian(settings.Estimator):
    """Estimate ``Σ = W Wᵀ`` and ``b`` of ``x = ReLU(W z + b)``, ``z ~ N(0, I)``, from samples.

    Parameters
    ----------
    {settings}

    Attributes
    ----------
    covariance_ : ndarray (d, d)
        ``Σ̂``; not necessarily positive semidefinite.
    bias_, scale_ : ndarray (d,)
        ``b̂`` and ``σ̂``.
    status_ : ndarray (d,) of int8
        Per-coordinate status, ``kernels.STATUS_NAMES``.
    positive_fraction_ : ndarray (d,)
        Fraction of positive samples per coordinate: a coordinate with few
        positives (``b ≪ 0``) needs many samples.
    covariance_se_, correlation_se_ : ndarray (d, d)
        Standard errors of ``Σ̂`` and of the correlations ``ρ̂_ij``, by the
        delta method (docs/design.md §11): ``inf`` where the counts carry no
        information (``ρ̂`` pinned at ±1, a threshold nobody or everybody
        exceeds), NaN where a coordinate has no estimate (``σ̂ = 0``) or, with
        ``method="sgd"``, for ``Σ̂``.
    bias_se_, scale_se_ : ndarray (d,)
        Standard errors of ``b̂`` and ``σ̂``, from the likelihood's observed
        information; NaN for degenerate coordinates and with ``method="sgd"``.
    jackknife_covariance_se_, jackknife_correlation_se_, jackknife_bias_se_, jackknife_scale_se_ : ndarray or None
        With ``jackknife_groups`` ``G``, the delete-a-group jackknife's
        standard errors over ``G`` groups of consecutive rows; None without.
        The attribute ``settings_["jackknife"]`` compares them with the
        analytic ones (docs/design.md §11).
    model_check_ : ndarray (d,)
        The model check's statistic: about χ²(2) where the coordinate's
        positive values follow the fitted censored normal; a coordinate above
        ``uncertainty.MODEL_CHECK_THRESHOLD`` has the status "not censored
        normal". NaN where not checked (fewer than 10,000 positives; a
        method other than "censored").
    thresholds_ : ndarray (d,)
    counts_ : ndarray (d, d) of int64
        Co-exceedance counts ``C_ij = #{m : x_mi > t_i, x_mj > t_j}``.
    cut_points_ : ndarray (d, K) or None
        With ``cuts`` ``K > 1``, each coordinate's cut points, increasing, its
        threshold among them (``+inf`` where the pilot gave fewer); else None.
    statistics_ : ndarray (d, 4)
        ``(n0, n1, S1, S2)`` per coordinate, the sums in units
        ``2**statistics_exponent_``.
    statistics_exponent_ : ndarray (d,) of int64
        The units of the sums: ``S1`` sums ``x·2**-e``, ``S2`` its square
        (``kernels.statistics_exponents``); 0 unless the data lie beyond
        ``2**±256``, where the squares could overflow or underflow.
    n_samples_ : int
    model_ : RectifiedGaussian
        The fitted distribution: ``sample``, ``factor``, ``repair``, ``errors``.
    settings_ : dict
        How the fit was made, as stored with a saved fit.

    Notes
    -----
    ``Σ̂_ij = σ̂_i σ̂_j ρ_ij`` with ``ρ_ij`` the root of
    ``Φ₂(a_i, a_j; ρ) = C_ij / n``. With ``a = 0`` this is the paper's
    ``ρ = cos(π − 2π C_ij/n)``.

    Examples
    --------
    >>> est = ReLUGaussian().fit("samples.zarr")        # doctest: +SKIP
    >>> est.model_.errors(truth_covariance, truth_bias)  # doctest: +SKIP
    
    """

    settings_class = OneLayerSettings  # each setting's entry in Parameters is made from its declaration

    def fit(self, X, array="samples", allow_missing_chunks=False, progress=False, checkpoint=None):
        """Fit the estimator on samples ``X`` and return ``self``.

        Runs on the default ``distributed`` client if there is one, else on
        local threads.

        Parameters
        ----------
        X : str, Path, zarr array or group, dask array or ndarray, shape (n, d)
            A path or URL of a Zarr array, or of a group holding one named
            ``array``; or the samples themselves.
        array : str, default "samples"
        allow_missing_chunks : bool, default False
            Read chunks absent from the store as the fill value.
        progress : bool, default False
            Show a progress bar on stderr.
        checkpoint : str, optional
            A directory or URL that keeps the main pass's partial sums, so that
            a rerun after an interruption resumes.

        Returns
        -------
        self
        """
        fit_settings = OneLayerSettings(**self.get_params())
        if checkpoint is not None:
            check_checkpoint_location(checkpoint, None, [X if isinstance(X, (str, os.PathLike)) else None])
        output = MemoryOutput()
        _fit(X, fit_settings, contextlib.nullcontext(output), array=array,
             allow_missing_chunks=allow_missing_chunks, progress=progress, checkpoint=checkpoint)
        arrays = output.arrays
        self.settings_ = output.attributes
        self.covariance_ = arrays["covariance"]
        self.bias_ = arrays["bias"]
        self.scale_ = arrays["scale"]
        self.status_ = arrays["status"]
        self.positive_fraction_ = arrays["positive_fraction"]
        self.covariance_se_ = arrays["covariance_se"]
        self.correlation_se_ = arrays["correlation_se"]
        self.bias_se_ = arrays["bias_se"]
        self.scale_se_ = arrays["scale_se"]
        self.model_check_ = arrays["model_check"]
        for name in ("covariance", "correlation", "bias", "scale"):
            setattr(self, f"jackknife_{name}_se_", arrays.get(f"jackknife_{name}_se"))
        self.thresholds_ = arrays["thresholds"]
        self.counts_ = arrays["counts"]
        self.cut_points_ = arrays.get("cut_points")
        self.statistics_ = np.stack([arrays[name] for name in kernels.STATISTICS], axis=1)
        self.statistics_exponent_ = np.asarray(arrays["statistics_exponent"], dtype=np.int64)
        self.n_samples_ = self.settings_["n_samples"]
        self.model_ = RectifiedGaussian(self.covariance_, self.bias_)
        self._arrays = arrays
        return self

    def predictive_check(self):
        """Return the fitted model's zero fractions and co-exceedance rates against its data's (``model.predictive_check``).

        From the fit's state, with no read of the data; it repairs ``Σ̂``
        (``model_.repair``, once per model), which takes about a minute at
        ``d = 1000`` and grows like ``d³``.

        Returns
        -------
        model.PredictiveCheck
        """
        return predictive_check(self.model_, self.thresholds_, self.counts_, self.n_samples_,
                                self.statistics_[:, 0] / self.n_samples_)

    def save(self, path, overwrite=False):
        """Write the fit as a Zarr group at ``path``, as ``dist-relu fit`` writes it (``fitstore``).

        Parameters
        ----------
        path : str or Path
            The new group (a path or fsspec URL); it appears only when complete.
        overwrite : bool, default False
            Replace an earlier fit at ``path`` (never anything else).
        """
        with fitstore.zarr_output(path, [self.settings_["source"]], overwrite) as output:
            output.store(self._arrays)
            output.finish(self.settings_)




def relu_gaussian(X, **fit_settings):
    """Return ``(Σ̂, b̂)``: the estimates of ``Σ = W Wᵀ`` and ``b`` of ``x = ReLU(W z + b)`` from samples ``X``.

    Parameters
    ----------
    X : str, Path, zarr array or group, dask array or ndarray, shape (n, d)
        As in ``ReLUGaussian.fit``.
    **fit_settings
        The settings of ``ReLUGaussian``.

    Returns
    -------
    covariance : ndarray (d, d)
        ``Σ̂``; not necessarily positive semidefinite.
    bias : ndarray (d,)
        ``b̂``.

    Notes
    -----
    Step 1 estimates ``(b_i, σ_i)`` per coordinate; Step 2 counts the
    co-exceedances ``C_ij`` of the thresholds ``t`` and sets
    ``Σ̂_ij = σ̂_i σ̂_j ρ_ij``, ``ρ_ij`` the root of ``Φ₂(a_i, a_j; ρ) = C_ij / n``.
    With ``a = 0`` this is the paper's ``ρ = cos(π − 2π C_ij/n)``.
    """
    output = MemoryOutput()
    _fit(X, OneLayerSettings(**fit_settings), contextlib.nullcontext(output))
    return output.arrays["covariance"], output.arrays["bias"]


def fit_to_zarr(source, out, *, array="samples", allow_missing_chunks=False, overwrite=False, progress=False,
                checkpoint=None, update=None, thresholds_from=None, thresholds=None, **fit_settings):
    """Fit the samples at ``source`` and write the fit as a Zarr group at ``out``; return its attributes.

    Parameters
    ----------
    source : str, Path, zarr array or group, dask array or ndarray
        As ``X`` of ``ReLUGaussian.fit``.
    out : str or Path
        The new group (a path or fsspec URL). It appears only when complete
        (``storage.atomic_output``).
    overwrite : bool, default False
        Replace an earlier fit at ``out`` (never anything else).
    checkpoint : str, optional
        A directory or URL that keeps the main pass's partial sums, so that a
        rerun after an interruption resumes where it stopped.
    update : str, optional
        A stored one-pass fit: the samples are counted at its thresholds, with
        its settings, and its sums are added. The result is the fit of both
        sets of samples together, without reading the old ones again; samples
        that the fit holds already are refused.
    thresholds_from : str, optional
        Count at this stored fit's thresholds (or at ``thresholds``, an array),
        so that the two fits can be merged (``merge_fits``).
    **fit_settings
        The settings of ``ReLUGaussian``.

    Returns
    -------
    dict
        The attributes written with the fit; ``timings`` holds the seconds of
        its stages: the pilot's or first pass, the main pass, the inversion
        (Σ̂ from the stored counts, written block by block) and the write.
    """
    label = source if isinstance(source, (str, os.PathLike)) else None
    inputs = [label, update, thresholds_from]
    storage.check_output(out, fitstore.FORMAT, inputs, overwrite)  # before any work; again under the output's lock
    fit_settings = OneLayerSettings(**fit_settings)
    input = Input.open(source, array, allow_missing_chunks)
    bases = [] if update is None else [fitstore.open_fit_group(update)]
    cut_points = None
    if thresholds_from is not None:
        if thresholds is not None:
            raise ValueError("give thresholds or thresholds_from, not both")
        given = fitstore.open_fit_group(thresholds_from)
        thresholds = given["thresholds"][:]
        cut_points = fitstore.stored_cut_points(given) if fit_settings.cuts > 1 else None
    parts = None
    if bases:
        if thresholds is not None:
            raise ValueError("update already counts at the thresholds of the fit it adds to; drop the thresholds")
        fitstore.check_additive(bases, input.samples.shape[1])
        fit_settings = dataclasses.replace(fit_settings, **fitstore.additive_settings(bases[0]))
        thresholds = bases[0]["thresholds"][:]
        cut_points = fitstore.stored_cut_points(bases[0])
        parts = fitstore.parts(bases, fitstore.part(input.label, None, None, input.identity))
    if checkpoint is not None:
        check_checkpoint_location(checkpoint, out, inputs)
    return _fit(source, fit_settings, fitstore.zarr_output(out, inputs, overwrite), progress=progress,
                checkpoint=checkpoint, thresholds=thresholds, bases=bases, parts=parts, checked_input=input,
                cut_points=cut_points)


@rechunk_by_tasks
def merge_fits(fits, out, *, overwrite=False, progress=False):
    """Add the sums of stored one-pass fits made at the same thresholds; write the fit of all their samples.

    The pieces of a large job fitted apart (``fit_to_zarr(..., thresholds_from=``
    a first fit, or ``update``) combine here into the fit of the concatenated
    data: counts and sample counts exactly, statistics and Σ̂ to rounding.

    Parameters
    ----------
    fits : list of str
        Two or more stored fits.
    out : str or Path
        The new group.

    Returns
    -------
    dict
        The attributes written at ``out``.
    """
    if len(fits) < 2:
        raise ValueError("give at least two fits to merge")
    storage.check_output(out, fitstore.FORMAT, fits, overwrite)
    bases = [fitstore.open_fit_group(fit) for fit in fits]
    fitstore.check_additive(bases, bases[0]["thresholds"].shape[0])
    parts = fitstore.parts(bases)
    stages = Stages()
    first = bases[0].attrs
    record = {key: first[key] for key in ("n_coordinates", "drop_nonfinite", "method", "passes", "inversion",
                                          "pilot_rows", "clip_bias", "column_block", "row_chunk", "split_every",
                                          "count_kernel")}
    fit_settings = OneLayerSettings(**fitstore.additive_settings(bases[0]))
    stored_settings = fit_settings.stored()  # "cuts" only where K > 1, as a fit stores it
    record.update(checkpoint=None, memory=None, jackknife_groups=fit_settings.jackknife_groups,
                  **{key: stored_settings[key] for key in ("cuts",) if key in stored_settings})
    stored = [fitstore.stored_sums(group, fit_settings.column_block) for group in bases]
    with fitstore.zarr_output(out, fits, overwrite) as output:
        return write_fit(output, fit_settings, fit_settings.column_block, record, stages,
                         bases[0]["thresholds"][:], bases=stored, parts=parts, progress=progress,
                         cut_points=fitstore.stored_cut_points(bases[0]))
