"""The two-layer model ``x = A ReLU(W z + b)``: anchors by separable NMF, then the one-layer fit of the hidden layer.

Two reads of the samples (docs/design.md §9). The first makes the Gram
``XᵀX``, the value checks and, per row chunk, candidate anchors
(``separable.first_pass``), reduced as a tree; the anchors chosen among them
are data rows, and their unit directions are ``Â``. The second computes the
hidden layer ``M̂ = X Â⁺ᵀ`` chunk by chunk, with rounding of zeros set to 0,
and fits the one-layer model to it (``plan.plan_fit``, ``estimator.write_fit``)
in the same graph as two diagnostics: the rows outside the cone of ``Â`` and
the energy outside its span. Data that is not separable is refused.
"""

import contextlib
import os
from dataclasses import dataclass

import numpy as np

from . import fitstore, graph, io, separable, settings, storage
from .estimator import write_fit
from .fitstore import MemoryOutput
from .model import TwoLayerRectifiedGaussian
from .pipeline import Input, Stages, rechunk_by_tasks, whole_rows
from .plan import FitPlan, plan_fit
from .scheduler import compute
from .settings import GaussianFitSettings, OneLayerSettings, PipelineSettings, TwoLayerSettings

# Rows of the first rows kept for the refinement of noisy data's anchors, at most, and their bytes at most.
REFINE_ROWS = 1_000_000
REFINE_BYTES = 64 * 2**20
# With noise, hidden values below this many σ̂ ‖Â⁺_l‖ are zeros; one below minus that lies outside the cone.
NOISE_CUTOFF = 4.0
# The hidden layer's fit takes these settings from the two-layer model's.
_HIDDEN_SETTINGS = [name for name, _, _ in GaussianFitSettings.declared() + PipelineSettings.declared()]


@dataclass(frozen=True)
class AnchorPass:
    """The first read, computed: the Gram ``Σ xxᵀ``, the rows it sums, and the anchors chosen."""

    gram: np.ndarray  # (d, d) float64
    rows_kept: int
    anchors: separable.Anchors  # with noise, the columns of Â are refined from the anchors' directions
    noise: float  # σ̂ (separable.noise_level)
    refined: bool  # whether the facets were refitted (noise above separable.NOISELESS of the data's scale)

    def hidden_scales(self):
        """Return the root-mean-square (p,) of each hidden unit's values ``M̂ = X Â⁺ᵀ``, from the Gram."""
        projection = separable.hidden_projection(self.anchors.mixing)
        return np.sqrt(np.maximum(np.einsum("il,ij,jl->l", projection, self.gram, projection), 0) / self.rows_kept)


def find_anchors(input, fit_settings, stages, progress=False):
    """Read the samples once and return their ``AnchorPass``; refuse data whose cone has no ``p`` anchors."""
    samples = whole_rows(input.samples)
    n, d = samples.shape
    p, split_every = fit_settings.hidden, fit_settings.split_every
    if p > d:
        raise io.InputError(f"{p} hidden units cannot be found in {d} coordinates: give --hidden ≤ {d}")
    keep, tie = fit_settings.candidates_per_step, separable.tie_tolerance(samples.dtype)
    passes = graph.first_passes(samples, p, keep)
    gram, problems, rows = graph.first_pass_sums(passes, d, split_every)
    # The first rows, kept in memory for the refinement of noisy data's anchors; read once, with the pass.
    row_bytes = d * samples.dtype.itemsize
    refine_rows = min(n, fit_settings.refine_rows or min(REFINE_ROWS, max(1_000, REFINE_BYTES // row_bytes)))
    with stages("pass 1"):
        gram, problems, rows, root, first = compute(gram, problems, rows,
                                                    graph.candidate_tree(passes, p, keep, tie, split_every),
                                                    samples[:refine_rows], progress=progress)
    if not fit_settings.drop_nonfinite:
        io.check_values(problems)
    rows = int(rows)
    if rows < 2:
        raise io.InputError(f"{n - rows:,} of {n:,} rows hold NaN or ±inf: fewer than 2 samples are left")
    eigenvalues = np.linalg.eigvalsh(gram)[::-1]
    rank = int(np.count_nonzero(eigenvalues > eigenvalues[0] * d * np.finfo(np.float64).eps * 10))
    if rank < p:
        raise io.InputError(f"the samples span {rank} directions, fewer than the {p} hidden units asked for: "
                            f"give --hidden {rank} or fewer")
    basis = separable.top_basis(gram, p)
    try:
        anchors = separable.choose_anchors(root[0], basis, p, tie)
    except ValueError as error:
        raise io.InputError(f"{error}: the data are not those of x = A ReLU(W z + b) with {p} hidden units "
                            "(a smaller --hidden, or the one-layer model, may fit)") from None
    noise = separable.noise_level(gram, rows, p)
    refined = noise > separable.NOISELESS * np.sqrt(np.trace(gram) / (rows * d))
    if refined:
        first = np.asarray(first, dtype=np.float64)
        projected = first[np.isfinite(first).all(axis=1)] @ basis
        mixing = basis @ separable.refine_facets(projected, basis.T @ anchors.mixing, noise)
        anchors = separable.Anchors(anchors.rows, mixing / np.linalg.norm(mixing, axis=0))
    return AnchorPass(gram, rows, anchors, noise, bool(refined))


@dataclass(frozen=True)
class TwoLayerPlan:
    """A two-layer fit after its first read: the anchors, the cut-offs of zeros, and the plan of the hidden fit."""

    settings: TwoLayerSettings
    input: Input
    anchor_pass: AnchorPass
    cutoffs: np.ndarray  # (p,): hidden values below are zeros
    hidden: FitPlan  # the one-layer plan of M̂
    diagnostics: object  # lazy (3,): rows outside the cone, energy outside span(Â), energy

    def record(self):
        """Return how the fit is made (its stored settings), before the second read adds what it measured."""
        n, d = self.input.samples.shape
        return {"n_coordinates": int(d), **self.settings.stored(),
                "row_chunk": int(max(self.input.samples.chunks[0])),
                "cutoffs": [float(c) for c in self.cutoffs], "noise_level": self.anchor_pass.noise,
                "refined_facets": self.anchor_pass.refined}


def plan_two_layer(input, fit_settings, stages, progress=False):
    """Return the ``TwoLayerPlan`` of ``input``: the first read computed, the second planned."""
    anchor_pass = find_anchors(input, fit_settings, stages, progress)
    mixing = anchor_pass.anchors.mixing
    tolerance = fit_settings.zero_tolerance or separable.zero_tolerance(input.samples.dtype)
    projection = separable.hidden_projection(mixing)
    # A zero is a value below its rounding, or with noise within 4 σ̂ of 0 (the noise of M̂_l is σ̂ ‖Â⁺_l‖).
    cutoffs = np.maximum(tolerance * anchor_pass.hidden_scales(),
                         NOISE_CUTOFF * anchor_pass.noise * np.linalg.norm(projection, axis=0) * anchor_pass.refined)
    hidden, diagnostics = graph.hidden_layer(whole_rows(input.samples), mixing, projection, cutoffs,
                                             fit_settings.split_every)
    hidden_settings = OneLayerSettings(**{name: getattr(fit_settings, name) for name in _HIDDEN_SETTINGS})
    hidden_plan = plan_fit(Input(hidden, None, None), hidden_settings, stages=stages, progress=progress)
    return TwoLayerPlan(fit_settings, input, anchor_pass, cutoffs, hidden_plan, diagnostics)


def write_two_layer(output, hidden_output, plan, stages, progress=False):
    """Make the two-layer fit of ``plan`` and write it: ``Â`` and the anchors into ``output``, the hidden fit into ``hidden_output``.

    Returns the attributes of the fit.
    """
    measured = {}

    def check_separable(values):
        outside, energy_outside, energy = values["diagnostics"]
        rows = plan.anchor_pass.rows_kept
        measured.update(outside_fraction=float(outside / rows),
                        energy_outside=float(energy_outside / energy) if energy > 0 else 0.0)
        if measured["outside_fraction"] > plan.settings.max_outside:
            raise io.InputError(
                f"{int(outside):,} of {rows:,} rows ({measured['outside_fraction']:.2%}) lie outside the cone of the "
                f"{plan.settings.hidden} anchors found: the data are not separable (a hidden unit has no rows where "
                "it alone is active). Give more samples, a smaller --hidden (at most the latent dimension), "
                "or fit the one-layer model")

    hidden = plan.hidden
    hidden_attributes = write_fit(hidden_output, hidden.settings, hidden.layout.column_block, hidden.record(), stages,
                                  hidden.main.thresholds, hidden.main, progress=progress,
                                  extra={"diagnostics": plan.diagnostics}, check_extra=check_separable)
    anchors = plan.anchor_pass.anchors
    output.store({"mixing": anchors.mixing, "anchor_rows": anchors.rows})
    record = {**plan.record(), "n_samples": hidden_attributes["n_samples"], **measured}
    if plan.settings.drop_nonfinite:
        record["rows_dropped"] = hidden_attributes["rows_dropped"]
    attributes = fitstore.provenance(record, stages.elapsed(), stages.seconds, plan.input.label,
                                     plan.input.identity, model=fitstore.TWO_LAYER_MODEL)
    output.finish(attributes)
    return attributes


@rechunk_by_tasks
def _fit(source, fit_settings, outputs, *, array="samples", allow_missing_chunks=False, progress=False,
         checked_input=None):
    input = checked_input or Input.open(source, array, allow_missing_chunks)
    stages = Stages()
    with outputs as (output, hidden_output):
        plan = plan_two_layer(input, fit_settings, stages, progress)
        return write_two_layer(output, hidden_output, plan, stages, progress)


@contextlib.contextmanager
def _zarr_outputs(out, inputs, overwrite):
    """Yield the outputs of a two-layer fit at ``out``: the group, and its subgroup ``hidden``."""
    with fitstore.zarr_output(out, inputs, overwrite) as output:
        yield output, output.subgroup("hidden")


class TwoLayerReLU(settings.Estimator):
    """Estimate ``A``, ``W Wᵀ`` and ``b`` of ``x = A ReLU(W z + b)``, ``z ~ N(0, I_k)``, from samples.

    ``A`` (d × p) has full column rank and any signs; the hidden layer
    ``ReLU(W z + b)`` must be separable: every hidden unit has samples where
    it alone is active, which needs ``p ≤ k`` and enough samples for the
    rarest unit (docs/design.md §9).

    Parameters
    ----------
    {settings}

    Attributes
    ----------
    mixing_ : ndarray (d, p)
        ``Â``, unit columns, in the order the anchors were found.
    anchor_rows_ : ndarray (p,) of int64
        The rows of the samples whose directions are the columns of ``Â``.
    hidden_ : RectifiedGaussian
        The hidden layer's fit: ``D W Wᵀ D`` and ``D b``, ``D = diag ‖a_l‖``.
    hidden_status_ : ndarray (p,) of int8
    outside_fraction_ : float
        The fraction of rows outside the cone of ``Â`` (0 for separable data).
    energy_outside_ : float
        The fraction of the samples' energy outside ``span(Â)``.
    model_ : TwoLayerRectifiedGaussian
        The fitted distribution: ``sample``, ``errors``.
    settings_ : dict
        How the fit was made, as stored with a saved fit.
    """

    settings_class = TwoLayerSettings  # each setting's entry in Parameters is made from its declaration

    def fit(self, X, array="samples", allow_missing_chunks=False, progress=False):
        """Fit the model on samples ``X`` (as ``ReLUGaussian.fit`` takes them) and return ``self``.

        Reads the samples twice. Raises ``io.InputError`` when they are not
        separable with ``hidden`` units.
        """
        output, hidden_output = MemoryOutput(), MemoryOutput()
        _fit(X, TwoLayerSettings(**self.get_params()), contextlib.nullcontext((output, hidden_output)),
             array=array, allow_missing_chunks=allow_missing_chunks, progress=progress)
        self._outputs = output, hidden_output
        self.settings_ = output.attributes
        self.mixing_ = output.arrays["mixing"]
        self.anchor_rows_ = output.arrays["anchor_rows"]
        hidden = hidden_output.arrays
        self.hidden_status_ = hidden["status"]
        self.model_ = TwoLayerRectifiedGaussian(self.mixing_, hidden["covariance"], hidden["bias"])
        self.hidden_ = self.model_.hidden
        self.outside_fraction_ = self.settings_["outside_fraction"]
        self.energy_outside_ = self.settings_["energy_outside"]
        return self

    def transform(self, X, array="samples"):
        """Return the hidden layer ``M̂ = X Â⁺ᵀ`` of samples ``X`` as a lazy ``(n, p)`` dask array, zeros cleaned."""
        samples = whole_rows(io.open_samples(X, array=array))
        cutoffs = np.asarray(self.settings_["cutoffs"])
        values, _ = graph.hidden_layer(samples, self.mixing_, separable.hidden_projection(self.mixing_), cutoffs)
        return values

    def sample(self, n, seed=None):
        """Return ``n`` samples of the fitted distribution (``TwoLayerRectifiedGaussian.sample``)."""
        return self.model_.sample(n, seed)

    def save(self, path, overwrite=False):
        """Write the fit as a Zarr group at ``path``, as ``dist-relu fit --model two-layer`` writes it."""
        output, hidden_output = self._outputs
        with _zarr_outputs(path, [self.settings_["source"]], overwrite) as (group, hidden_group):
            hidden_group.store(hidden_output.arrays)
            hidden_group.finish(hidden_output.attributes)
            group.store(output.arrays)
            group.finish(output.attributes)


def two_layer_relu(X, **fit_settings):
    """Return ``(Â, Σ̂, b̂)`` of ``x = A ReLU(W z + b)`` from samples ``X``: unit columns, and the hidden layer's fit.

    Parameters
    ----------
    X : str, Path, zarr array or group, dask array or ndarray, shape (n, d)
    **fit_settings
        The settings of ``TwoLayerReLU``; ``hidden`` is required.

    Returns
    -------
    mixing : ndarray (d, p)
    covariance : ndarray (p, p)
        ``D W Wᵀ D``, ``D = diag ‖a_l‖``, in the order of ``mixing``'s columns.
    bias : ndarray (p,)
        ``D b``.
    """
    fit = TwoLayerReLU(**fit_settings).fit(X)
    return fit.mixing_, fit.hidden_.covariance, fit.hidden_.bias


def fit_to_zarr(source, out, *, array="samples", allow_missing_chunks=False, overwrite=False, progress=False,
                **fit_settings):
    """Fit the two-layer model to the samples at ``source``; write the fit as a Zarr group at ``out``.

    The group holds ``mixing`` (d × p, unit columns), ``anchor_rows`` (p,)
    and the group ``hidden``, a one-layer fit of the hidden layer in the
    layout of ``dist-relu fit``. Returns the group's attributes.
    """
    label = source if isinstance(source, (str, os.PathLike)) else None
    storage.check_output(out, fitstore.FORMAT, [label], overwrite)
    fit_settings = TwoLayerSettings(**fit_settings)
    input = Input.open(source, array, allow_missing_chunks)
    return _fit(source, fit_settings, _zarr_outputs(out, [label], overwrite), progress=progress, checked_input=input)
