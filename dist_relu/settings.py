"""Settings of a fit, each declared once: its name, type, range, default and help.

A model's settings are a frozen dataclass whose fields are made by
``setting``. From that one declaration come the estimator class's
parameters (``signature``, ``parameters_doc``), the command line's options
(``dist_relu.cli``), the checks (``Settings.__post_init__``, the first
setting out of range raises ``ValueError`` by name) and the attributes stored
with a fit (``Settings.stored``). Adding an option is adding a field.

``PipelineSettings`` holds the settings every model shares (how the samples
are read, blocked and reduced); a model's class extends it.
"""

import dataclasses
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .compiled import COUNT_KERNELS


@dataclass(frozen=True)
class Spec:
    """How one setting is checked, offered on the command line and stored.

    Parameters
    ----------
    help : str
        One or two sentences, shown by ``--help`` and in the class's docstring.
    kind : type
        ``int``, ``float``, ``bool`` or ``str``.
    choices : tuple
        The values allowed (strings), if it is one of a list.
    minimum, maximum : number, optional
        The least and largest value of a number.
    open_minimum : bool
        The minimum itself is excluded.
    others : tuple
        Values allowed besides numbers in range: ``None``, ``"auto"``.
    size : bool
        A number of bytes: the command line reads 4GB, 512MiB or 1e9.
    stored : str or None
        The attribute it is stored under with a fit (``"group.key"`` nests),
        or None: not stored.
    stored_when : callable, optional
        Given the settings, whether the setting is stored (e.g. the SGD's
        settings only with ``method="sgd"``).
    cli_help : str, optional
        The command line's help where it should differ from ``help``.
    """

    help: str
    kind: type = int
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    others: tuple = ()
    size: bool = False
    stored: str | None = ""
    stored_when: Callable[[Any], bool] | None = None
    cli_help: str | None = None

    def check(self, name, value):
        """Raise ``ValueError`` naming the setting unless ``value`` is allowed."""
        if any(value is other or isinstance(value, str) and value == other for other in self.others):
            return
        if self.choices:
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"{name} must be one of {', '.join(self.choices)}; got {value!r}")
            return
        if self.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False; got {value!r}")
            return
        number = (int, np.integer) if self.kind is int else (int, float, np.integer, np.floating)
        in_range = isinstance(value, number) and not isinstance(value, (bool, np.bool_))
        if in_range and self.minimum is not None:
            in_range = value > self.minimum if self.open_minimum else value >= self.minimum
        if in_range and self.maximum is not None:
            in_range = value <= self.maximum
        if not in_range:
            raise ValueError(f"{name} must be {self.describe()}; got {value!r}")

    def describe(self):
        """Return what the setting may be, for a message: "an integer ≥ 1 or 'auto'"."""
        what = "an integer" if self.kind is int else "a number"
        if self.kind is int and self.minimum is not None and self.maximum == self.minimum + 1:
            what = f"{self.minimum:g} or {self.maximum:g}"
        elif self.minimum is not None and self.maximum is not None:
            what += f" from {self.minimum:g} to {self.maximum:g}"
        elif self.minimum is not None:
            what += f" {'>' if self.open_minimum else '≥'} {self.minimum:g}"
        return what + "".join(f" or {other!r}" for other in self.others)


def setting(default, help, **spec):
    """Return the dataclass field of a setting: its ``default`` and its ``Spec(help, **spec)``."""
    return dataclasses.field(default=default, metadata={"spec": Spec(help, **spec)})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of a model's settings: checked when made, listed by ``declared``, stored by ``stored``."""

    def __post_init__(self):
        for name, _, spec in self.declared():
            spec.check(name, getattr(self, name))

    @classmethod
    def declared(cls):
        """Return ``(name, default, spec)`` of each setting, in declaration order."""
        return [(field.name, field.default, field.metadata["spec"]) for field in dataclasses.fields(cls)]

    def values(self):
        """Return the settings as keyword arguments."""
        return {name: getattr(self, name) for name, _, _ in self.declared()}

    def stored(self, resolved=None):
        """Return the JSON-ready attributes that record these settings with a fit.

        ``resolved`` maps setting names to the values a fit settled on (the
        pilot's rows, the column block "auto" chose), stored instead.
        """
        resolved = resolved or {}
        attributes = {}
        for name, _, spec in self.declared():
            if spec.stored is None or spec.stored_when is not None and not spec.stored_when(self):
                continue
            value = resolved.get(name, getattr(self, name))
            if isinstance(value, (int, float, np.number)) and spec.kind in (int, float, bool):
                value = spec.kind(value)
            *groups, key = (spec.stored or name).split(".")
            target = attributes
            for group in groups:
                target = target.setdefault(group, {})
            target[key] = value
        return attributes


class Estimator:
    """Base of the estimator classes: the settings of ``settings_class`` as keyword parameters, checked at fit.

    As in scikit-learn, the constructor only stores the settings; ``fit``
    checks them (``settings_class(**self.get_params())``). A subclass gets
    the keyword-only signature of its settings, and its docstring's line
    ``{settings}`` becomes their numpydoc entries.
    """

    settings_class = Settings

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)

        def __init__(self, **fit_settings):
            Estimator.__init__(self, **fit_settings)

        __init__.__signature__ = signature(cls.settings_class)
        cls.__init__ = __init__
        if cls.__doc__:
            cls.__doc__ = cls.__doc__.replace("    {settings}\n", parameters_doc(cls.settings_class) + "\n")

    def __init__(self, **fit_settings):
        names = [name for name, _, _ in self.settings_class.declared()]
        unknown = sorted(set(fit_settings) - set(names))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown setting(s) {', '.join(unknown)}")
        for name, default, _ in self.settings_class.declared():
            setattr(self, name, fit_settings.get(name, default))

    def get_params(self):
        """Return the settings and their values (as scikit-learn does)."""
        return {name: getattr(self, name) for name, _, _ in self.settings_class.declared()}


def signature(settings_class):
    """Return the keyword-only signature ``(self, *, name=default, ...)`` of an estimator taking these settings."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                   for name, default, _ in settings_class.declared()]
    return inspect.Signature(parameters)


def parameters_doc(settings_class, indent="    ", width=88):
    """Return the numpydoc ``Parameters`` entries of the settings, for an estimator's docstring."""
    lines = []
    for name, default, spec in settings_class.declared():
        if spec.choices:
            kind = "{" + ", ".join(repr(choice) for choice in spec.choices) + "}"
        else:
            kind = {int: "int", float: "float", bool: "bool", str: "str"}[spec.kind]
            kind += "".join(f" or {other!r}" for other in spec.others if other is not None)
            kind += ", optional" if None in spec.others else ""
        lines.append(f"{indent}{name} : {kind}, default {default!r}")
        lines.extend(textwrap.wrap(spec.help, width, initial_indent=indent + "    ",
                                   subsequent_indent=indent + "    "))
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class PipelineSettings(Settings):
    """The settings every model shares: how the samples are read, blocked and reduced."""

    pilot_rows: int | None = setting(
        None, "Rows of the pilot: the first rows of the array, whose estimates set what the main pass needs "
        "(the one-layer model's thresholds). Default: a twentieth of the rows, at least 10,000 and at most "
        "100,000, and no more than 64 MiB of rows. The chunks holding them wait in memory until the pilot is done.",
        minimum=2, others=(None,),
        cli_help="Rows of the pilot that sets one-pass thresholds: the first rows, read once with the main "
        "pass (their chunks wait in memory for the thresholds). Default: n/20, between 10,000 and 100,000, "
        "and at most 64 MiB of rows.")
    column_block: int | str = setting(
        "auto", "Coordinates per column block: each count task holds two blocks of indicators and a "
        "column_block² block of counts. 'auto' takes the widest block whose tasks fit each worker thread's "
        "share of memory. Does not change results.",
        minimum=1, others=("auto",),
        cli_help="Coordinates per column block: memory per task; does not change results. auto: the widest "
        "block whose tasks fit each worker thread's share of memory.")
    memory_per_worker: int | None = setting(
        None, "Bytes of memory per worker process for column_block='auto'. Default: the distributed "
        "workers' memory limits, or this machine's memory on local threads.",
        minimum=1, others=(None,), size=True, stored=None,
        cli_help="Memory of each worker process for --column-block auto, e.g. 4GB. Default: the dask "
        "workers' memory limits, or this machine's memory on local threads.")
    split_every: int = setting(
        8, "Row chunks summed per task: the sums over row chunks run through segments of this many chunks "
        "(a checkpoint saves one per segment), and the two-layer model's reductions are trees of this "
        "fan-in. Does not change the counts; the sums only to rounding.", minimum=2)
    drop_nonfinite: bool = setting(
        False, "Leave out the rows that hold NaN or ±inf (counted in the fit's rows_dropped) instead of "
        "refusing the data. Found in the fit's own read: no extra pass.", kind=bool,
        cli_help="Leave out rows holding NaN or ±inf (counted in the output) instead of refusing the data.")


METHODS = ("censored", "truncated", "sgd")
INVERSIONS = ("tetrachoric", "model")


def _with_sgd(settings):
    return settings.method == "sgd"


@dataclass(frozen=True, kw_only=True)
class GaussianFitSettings(Settings):
    """How a rectified Gaussian ``ReLU(N(b, Σ))`` is estimated from its samples: Step 1's method, Step 2's inversion."""

    method: str = setting(
        "censored", "Step 1 estimator of (b_i, σ_i): censored-normal (Tobit) maximum likelihood, zeros "
        "included; the maximum of the paper's truncated-normal likelihood of the positives alone; or the "
        "paper's projected-SGD NormBiasEst, which assumes b ≥ 0.", kind=str, choices=METHODS,
        cli_help="Step 1: censored-normal MLE (zeros used), the truncated-normal MLE of the positives, "
        "or the paper's projected-SGD NormBiasEst (assumes b ≥ 0).")
    inversion: str = setting(
        "tetrachoric", "Margins used to invert the orthant probability: Φ⁻¹(c_i/n), the exceedance fraction "
        "each threshold had, or (b̂_i − t_i)/σ̂_i from the Step 1 estimates.", kind=str, choices=INVERSIONS,
        cli_help="Margins of the orthant inversion: measured exceedance fractions or (b̂−t)/σ̂.")
    clip_bias: bool = setting(
        False, "Report max(0, b̂), as the paper does. The thresholds are clipped either way.", kind=bool,
        cli_help="Report max(0, b̂), as the paper does.")
    count_kernel: str = setting(
        "auto", "How the co-exceedance counts are made: AND and popcount of bit-packed indicators, or "
        "float32 GEMM of unpacked ones. 'auto' times both on a block of the fit's shape and takes the faster. "
        "The counts are the same exact integers.", kind=str, choices=COUNT_KERNELS)
    seed: int = setting(0, "Seed of the SGD's draws (method sgd); results do not depend on the scheduler or "
                        "the chunking.", stored="sgd.seed", stored_when=_with_sgd)
    sgd_batches: int = setting(1, "Bootstrap batches B of NormBiasEst (method sgd); the authors used 1.",
                               minimum=1, stored="sgd.batches", stored_when=_with_sgd)
    sgd_radius: float = setting(
        3.0, "Projection box r of ProjSGD: 1/r ≤ 1/σ² ≤ r, |µ/σ²| ≤ r, in standardised units (method sgd); "
        "the authors used 3.", kind=float, minimum=1, open_minimum=True, stored="sgd.radius",
        stored_when=_with_sgd)
    sgd_lambda: float = setting(0.1, "Step size 1/(λt) of ProjSGD (method sgd); the authors used 0.1.",
                                kind=float, minimum=0, open_minimum=True, stored="sgd.lambda",
                                stored_when=_with_sgd)
    sgd_minibatch: int = setting(10, "Positives per SGD step (method sgd); the authors used 10.", minimum=1,
                                 stored="sgd.minibatch", stored_when=_with_sgd)


@dataclass(frozen=True, kw_only=True)
class OneLayerSettings(PipelineSettings, GaussianFitSettings):
    """The settings of the one-layer model ``x = ReLU(W z + b)`` (``ReLUGaussian``)."""

    passes: int = setting(
        1, "1: thresholds from a pilot of pilot_rows rows, then statistics and counts in one read. 2: the "
        "paper's order, thresholds max(0, b̂) from a full first read, counts in a second.", minimum=1, maximum=2,
        cli_help="1: pilot thresholds, one read. 2: thresholds from a full first read (the paper).")
    jackknife_groups: int = setting(
        0, "Also estimate the standard errors by a delete-a-group jackknife over this many groups of consecutive "
        "rows (0: none; else at least 2): the fit keeps each group's statistics and counts, G copies of the d×d "
        "counts, stored with it, and refits Σ̂ once per group left out. Not with method 'sgd'.", minimum=0,
        cli_help="Also give jackknife standard errors over G groups of consecutive rows (0: none, else ≥ 2); "
        "keeps G copies of the d×d counts.")
    cuts: int = setting(
        1, "Cut points per coordinate for the correlations: 1, the threshold alone (each pair's 2×2 table of "
        "exceedances, inverted); K > 1, 0 below a positive threshold, the threshold and quantiles of the pilot's "
        "values above it, and each pair's ρ by maximum likelihood of its (K+1)×(K+1) table: closer to the truth "
        "for the same samples, K² the counts and their memory. Not with method 'sgd'.",
        minimum=1, maximum=8, stored="cuts", stored_when=lambda settings: settings.cuts > 1,
        cli_help="Cut points per coordinate (1: the threshold alone; K > 1: each pair's (K+1)×(K+1) table, "
        "K² the counts' work and memory).")

    def __post_init__(self):
        super().__post_init__()
        if self.jackknife_groups == 1:
            raise ValueError("jackknife_groups must be 0 (none) or at least 2; got 1")
        if self.jackknife_groups and self.method == "sgd":
            raise ValueError("jackknife_groups needs a likelihood: the SGD's estimates are not sums of the groups'; "
                             "use method 'censored' or 'truncated'")
        if self.cuts > 1 and self.method == "sgd":
            raise ValueError(f"cuts {self.cuts} takes the margins from a likelihood: method 'censored' or "
                             "'truncated'")


@dataclass(frozen=True, kw_only=True)
class TwoLayerSettings(PipelineSettings, GaussianFitSettings):
    """The settings of the two-layer model ``x = A ReLU(W z + b)`` (``TwoLayerReLU``).

    The hidden layer is fitted as the one-layer model, with one pass, from the
    first read's anchors; ``GaussianFitSettings`` say how.
    """

    hidden: int | None = setting(
        None, "Hidden units p of the two-layer model: the columns of A, at most the latent dimension k (required "
        "for that model).", minimum=1)
    candidates_per_step: int = setting(
        4, "Two-layer model: rows each chunk keeps per step of the successive projection, as candidate anchors "
        "(m): more guard "
        "against a chunk that holds a rare unit's only pure rows.", minimum=1)
    zero_tolerance: float | None = setting(
        None, "Two-layer model: hidden values below this fraction of their unit's root-mean-square are rounding "
        "of a zero, and "
        "set to 0. Default: 1e-5 for data stored in float32 or narrower, 1e-10 for float64.",
        kind=float, minimum=0, open_minimum=True, others=(None,))
    max_outside: float = setting(
        0.001, "Two-layer model: the largest fraction of rows outside the cone of the anchors (a hidden value "
        "below minus the "
        "zero tolerance) that is accepted; more, and the data is refused as not separable.",
        kind=float, minimum=0, maximum=1)
    refine_rows: int | None = setting(
        None, "Two-layer model: the first rows kept in memory to refit the anchors' facets when the data hold "
        "noise. Default: a million, and no more than 64 MiB of rows.", minimum=2, others=(None,))


@dataclass(frozen=True, kw_only=True)
class RandomBiasSettings(PipelineSettings):
    """The settings of Mazumdar and Rawat's random-bias model ``y = ReLU(A c + b)`` (``RandomBiasReLU``).

    Its pilot (``pilot_rows``) is the rows its alternating least squares
    starts on, in memory; default: 40 per coordinate, at least 2,000.
    """

    rank: int | None = setting(
        None, "Random-bias model: the latent dimension k, the rank of A (required for that model; 1 ≤ k < d).",
        minimum=1)
    max_passes: int = setting(
        5, "Random-bias model: the most passes over the data after the pilot; a fit that has not converged "
        "by then is returned with a warning.", minimum=1)
    tolerance: float = setting(
        1e-7, "Random-bias model: the fit has converged when span(Â) moves by a sine below this in a pass.",
        kind=float, minimum=0, open_minimum=True)
    latent_steps: int = setting(
        5, "Random-bias model: active-set least-squares steps per sample's latent.", minimum=1)
    pilot_iterations: int = setting(
        200, "Random-bias model: rounds of alternating least squares on the pilot, in memory.", minimum=1)
