"""The plan of a one-layer fit: the main pass over the samples as one lazy graph (docs/design.md §2–§4).

``plan_fit`` lays the samples out (``pipeline``), finds the thresholds (a
pilot in the main pass's own graph, a full first pass computed here, or
given) and returns a ``FitPlan``: the main pass's ``Sums``, thresholds and
optional parts, lazy, and how the fit is made. Computing the plan's lazy
arrays reads the samples once; ``estimator`` turns them into the estimates.
"""

from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize

from . import graph, io, kernels, sgd
from .checkpoint import Checkpoint
from .fitstore import GroupSums, Sums
from .pipeline import Input, Layout, Stages, first_rows, open_checkpoint, plan_layout
from .scheduler import compute
from .settings import OneLayerSettings


@dataclass(frozen=True)
class MainPass:
    """The main pass over the samples: one graph, lazy, that reads them once.

    ``thresholds`` (d,) is lazy when a pilot in the same graph sets them, else
    computed. ``count_kernel`` is the index in ``compiled.COUNT_KERNELS`` of
    the kernel a task of the pass chose (with ``count_kernel="auto"``), lazy.
    ``sgd`` holds the SGD's ``(µ̂, σ̂)`` (d, 2) with ``method="sgd"``: lazy
    in one pass, computed in two.
    """

    sums: Sums
    thresholds: np.ndarray | da.Array
    count_kernel: da.Array | None
    sgd: np.ndarray | da.Array | None
    cut_points: da.Array | None = None  # (d, K) with cuts K > 1, lazy: the sums' counts are then (K·d, K·d)


@dataclass(frozen=True)
class FitPlan:
    """A one-layer fit, planned: its settings, layout, checkpoint and main pass.

    ``pilot_rows`` is the rows of the pilot that set the thresholds (one
    pass), 0 when they were given, None with two passes.
    """

    settings: OneLayerSettings
    input: Input
    layout: Layout
    checkpoint: Checkpoint | None
    pilot_rows: int | None
    main: MainPass

    def record(self):
        """Return the JSON-ready record of how the fit is made; the pass adds what it measured (``write_fit``)."""
        return {
            "n_coordinates": int(self.input.samples.shape[1]),
            **self.settings.stored({"pilot_rows": self.pilot_rows, "column_block": self.layout.column_block}),
            "row_chunk": self.layout.row_chunk,
            "memory": self.layout.memory,
            "checkpoint": None if self.checkpoint is None else {"url": self.checkpoint.url,
                                                               "blocks_resumed": self.checkpoint.resumed[0]},
        }


def likelihood_of(method):
    """Return the likelihood that finds degenerate coordinates and the pilot's thresholds for ``method``."""
    return "censored" if method == "sgd" else method


def plan_fit(input, settings, checkpoint=None, thresholds=None, stages=None, progress=False, cut_points=None):
    """Return the ``FitPlan`` of fitting ``input`` (a ``pipeline.Input``) with ``settings``.

    With one pass, the pilot that sets the thresholds (the first
    ``pilot_rows`` rows) is part of the main pass's graph, and nothing is
    computed here. With two, the whole Step 1 is computed here first (with
    ``method="sgd"``, one read for the standardisation and one for the SGD),
    timed in ``stages`` as ``pass 1`` and ``sgd``.

    Parameters
    ----------
    input : pipeline.Input
    settings : OneLayerSettings
    checkpoint : str, optional
        Directory or fsspec URL where the running sums are saved at the end of
        each segment of ``split_every`` row chunks; a rerun of the same fit
        starts from the last ones saved there.
    thresholds : ndarray (d,), optional
        Count at these thresholds (another fit's, so that the two can be
        merged) instead of the pilot's. One pass, not with ``method="sgd"``.
    cut_points : ndarray (d, K), optional
        With ``settings.cuts`` ``K > 1`` and given ``thresholds``, the cut
        points to count at (another fit's; each coordinate's threshold among them).
    stages : pipeline.Stages, optional
    progress : bool

    Returns
    -------
    FitPlan
    """
    stages = Stages() if stages is None else stages
    if settings.cuts > 1 and thresholds is not None:
        cut_points = None if cut_points is None else np.asarray(cut_points, dtype=np.float64)
        if cut_points is None or cut_points.shape != (len(thresholds), settings.cuts) or \
                not (cut_points == np.asarray(thresholds)[:, None]).any(axis=1).all():
            raise ValueError(f"cuts {settings.cuts} with given thresholds needs the cut points they are among "
                             f"({len(thresholds)}, {settings.cuts}): give a fit made with --cuts {settings.cuts}")
    elif cut_points is not None:
        raise ValueError("cut points are for a fit with cuts > 1 at given thresholds")
    samples = input.samples
    n, d = samples.shape
    layout = plan_layout(samples, settings.column_block, settings.memory_per_worker, settings.split_every,
                         settings.jackknife_groups, input.largest_object, settings.cuts)
    passed, column_chunks, split_every = layout.passed, layout.column_chunks, settings.split_every
    checkpoint = open_checkpoint(checkpoint, input, layout, split_every, settings.drop_nonfinite)
    sgd_settings = {"seed": settings.seed, "n_batches": settings.sgd_batches, "radius": settings.sgd_radius,
                    "step_scale": settings.sgd_lambda, "minibatch": settings.sgd_minibatch}
    likelihood = likelihood_of(settings.method)
    # With drop_nonfinite, rows holding NaN or ±inf are left out of every kernel.
    keep = graph.finite_row_mask(passed) if settings.drop_nonfinite else None
    # The first rows (with one pass, the pilot's) set the units 2**e of the statistics' sums, so that
    # no sum of squares overflows or underflows (kernels.statistics_exponents); e = 0 for ordinary data.
    pilot_rows = first_rows(samples, settings.pilot_rows)
    exponents = graph.column_exponents(passed[:pilot_rows]).rechunk({0: column_chunks})
    estimates = None
    if thresholds is not None:
        if settings.passes != 1 or settings.method == "sgd":
            raise ValueError("given thresholds are for one-pass fits with the censored or truncated likelihood")
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.shape != (d,) or not np.all(thresholds >= 0):
            raise ValueError(f"thresholds must be {d} numbers ≥ 0; got shape {thresholds.shape}")
        pilot_rows = 0
        scope = tokenize(thresholds) if cut_points is None else tokenize(thresholds, cut_points)
    elif settings.passes == 1:
        # Thresholds from a pilot, the first pilot_rows rows, in the main pass's own graph: the pilot's
        # chunks are read once for both, and no chunk is counted before the thresholds are known.
        pilot_passes = graph.chunk_passes(passed[:pilot_rows], keep=None if keep is None else keep[:pilot_rows],
                                          column_chunks=column_chunks, exponents=exponents)
        pilot_statistics = graph.column_statistics(pilot_passes, split_every)
        whole = {0: d}
        # The thresholds (and cut points) it makes of the fingerprinted data.
        scope = f"pilot-{pilot_rows}-{likelihood}" + (f"-cuts-{settings.cuts}" if settings.cuts > 1 else "")
        thresholds = da.blockwise(
            _pilot_thresholds, "i", pilot_statistics.rechunk(whole), "ia",
            graph.value_problems(pilot_passes, split_every).rechunk(whole), "ib", exponents.rechunk(whole), "i",
            likelihood, None, pilot_rows, None,
            None if checkpoint is None else checkpoint.child(f"thresholds-{scope}"), None,
            concatenate=True, dtype=np.float64, meta=np.empty(0, dtype=np.float64),
        ).rechunk({0: column_chunks})
        sgd_statistics = pilot_statistics  # they standardise the SGD's positives
    else:
        # The paper's order: Step 1 on all the data first. The second pass
        # recomputes the (bit-identical) statistics in its fused pass.
        pilot_rows = None
        first = None if checkpoint is None else checkpoint.child("pass-1")
        first_passes = graph.chunk_passes(passed, keep=keep, column_chunks=column_chunks, exponents=exponents)
        with stages("pass 1"):
            first_pass, first_problems, exponents = compute(
                graph.column_statistics(first_passes, split_every, first),
                graph.value_problems(first_passes, split_every, first), exponents, progress=progress)
        io.check_values(first_problems)
        first_estimates = kernels.fit_coordinates(first_pass, likelihood, exponents)
        first_bias = first_estimates[0]
        sgd_statistics = first_pass
        if settings.method == "sgd":
            with stages("sgd"):
                (estimates,) = compute(graph.sgd_estimates(layout.blocked, sgd_statistics, keep=keep,
                                                           exponents=exponents, **sgd_settings), progress=progress)
            first_bias = sgd.with_degenerate(estimates, *first_estimates)[0]
        thresholds = np.maximum(0.0, first_bias)
        scope = tokenize(thresholds) + (f"-cuts-{settings.cuts}" if settings.cuts > 1 else "")

    # The main pass: its partial sums are checkpointed under the thresholds (and cut points) they were counted at.
    main = None if checkpoint is None else checkpoint.child(f"thresholds-{scope}")
    if cut_points is not None:
        cut_points = da.from_array(cut_points, chunks=(column_chunks, settings.cuts))
    elif settings.cuts > 1:
        # 0 below a positive threshold, the threshold, and quantiles of the pilot's values above it, in the main
        # pass's graph as the thresholds (with two passes, of the first rows' values, at the first pass's
        # thresholds).
        cut_rows = first_rows(samples, settings.pilot_rows) if pilot_rows is None else pilot_rows
        cut_points = graph.pilot_cut_points(passed[:cut_rows], thresholds, settings.cuts, column_chunks, main)
    main_passes = graph.chunk_passes(passed, thresholds if cut_points is None else cut_points, keep, column_chunks,
                                     exponents)
    # With "auto", a task of the pass chooses; the record says which once it has run.
    chosen = graph.count_kernel_choice(main_passes) if settings.count_kernel == "auto" else None
    kernel = settings.count_kernel if chosen is None else chosen
    if layout.row_groups is None:
        groups = None
        statistics = graph.column_statistics(main_passes, split_every, main)
        counts = graph.coexceedance_counts(main_passes, split_every, main, kernel, cuts=settings.cuts)
    else:
        # The jackknife's state: each group's sums, which add up to the pass's.
        groups = GroupSums(graph.column_statistics(main_passes, split_every, main, layout.row_groups),
                           graph.coexceedance_counts(main_passes, split_every, main, kernel, layout.row_groups,
                                                     settings.cuts))
        statistics, counts = groups.statistics.sum(axis=0), groups.counts.sum(axis=0)
    if settings.method == "sgd" and estimates is None:
        estimates = graph.sgd_estimates(layout.blocked, sgd_statistics, keep=keep, exponents=exponents,
                                        **sgd_settings)
    sums = Sums(
        statistics=statistics,
        statistics_exponent=exponents,
        counts=counts,
        # Checked after the main pass (io.check_values): the pilot saw only some rows. Two passes checked
        # every row in the first.
        value_problems=graph.value_problems(main_passes, split_every, main) if settings.passes == 1 else None,
        rows_kept=graph.rows_kept(keep, split_every, main) if settings.drop_nonfinite else int(n),
        rows_read=int(n),
        moments=graph.positive_moments(main_passes, split_every, main),
        groups=groups,
    )
    return FitPlan(settings, input, layout, checkpoint, pilot_rows,
                   MainPass(sums, thresholds, chosen, estimates, cut_points))


def _pilot_thresholds(statistics, problems, exponents, likelihood, pilot_rows, checkpoint):
    """Return the pilot's thresholds ``max(0, b̂)``, once its values pass the checks (bad data stops here).

    With a ``checkpoint``, the thresholds must equal those its partial sums
    were counted at: a resumed fit never mixes counts of other data.
    """
    io.check_values(problems, where=f" among the pilot's {pilot_rows:,} rows")
    thresholds = np.maximum(0.0, kernels.fit_coordinates(statistics, likelihood, exponents)[0])
    if checkpoint is not None:
        checkpoint.bind("thresholds", thresholds)
    return thresholds
