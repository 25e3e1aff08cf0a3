"""A one-layer fit shown to a person: one self-contained HTML file, to judge how far to trust it.

``read_fit`` reads a fit's group; ``write_report`` draws one figure per
question (the correlations, their standard errors, b̂ and σ̂, the positive
fractions, the spectrum of Σ̂, the model check, what the fitted model predicts
against what the data had, the estimates against a truth), each a PNG
embedded as a data URI, and writes one HTML file that refers to nothing
outside itself, whole or not at all (``storage.write_file``).

matplotlib (the ``report`` extra) draws on its Agg canvas directly, never
through pyplot, so no figure is kept in pyplot's global list and the
backend of a program that calls this is left as it was.
"""

import base64
import html
import json
import time
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import zarr

from . import io, kernels, storage, uncertainty
from .errors import InputError
from .fitstore import MODEL, open_fit, open_fit_group
from .model import RectifiedGaussian, predictive_check
from .plan import likelihood_of

# A d × d heatmap has at most this many cells a side; a larger matrix is averaged over square blocks,
# which keeps the report small (under 5 MB at d = 4096) and its cells visible.
MAX_CELLS = 256
# Pairs drawn beyond the diagonal (Σ̂ against the truth, the model's co-exceedances against the data's); a
# larger matrix gives a random choice of them.
MAX_POINTS = 20_000
# The predictive check samples nothing, but needs the repair of Σ̂ (the nearest correlation matrix: one d × d
# eigendecomposition per iteration, and hundreds of iterations where Σ̂ is far from positive semidefinite). On
# fits of `dist-relu simulate --n 200000 --kappa 100 --bias gaussian` on a busy 2-core machine the report took
# 7 s at d = 100, 39 s at d = 300, 103 s at d = 500 and 408 s at d = 1000 (58 to 789 iterations), against 1-5 s
# without the check. The report makes it up to this d and says why it did not beyond.
PREDICTIVE_CHECK_MAX_DIMENSION = 500
# Coordinates named in a sentence or a table cell; the others are counted.
MAX_NAMED = 20
DPI = 100
MISSING_MATPLOTLIB = ("the report needs matplotlib: pip install 'dist_relu[report]' (in a checkout: "
                      "pip install '.[report]')")


@dataclass(frozen=True)
class ReportedFit:
    """What a report shows of a one-layer fit: its estimates, their standard errors when stored, its attributes."""

    path: str
    attributes: dict
    model: RectifiedGaussian  # Σ̂ and b̂
    scale: np.ndarray  # σ̂
    status: np.ndarray  # kernels.STATUS_* per coordinate
    positive_fraction: np.ndarray
    covariance_se: np.ndarray | None  # standard errors, when the fit stores them
    bias_se: np.ndarray | None
    scale_se: np.ndarray | None
    model_check: np.ndarray | None  # the model check's statistic (NaN: not checked); None in fits made before it
    thresholds: np.ndarray | None  # the state the predictive check needs: the thresholds t,
    zero_fraction: np.ndarray | None  # n0 / n per coordinate,
    counts: zarr.Array | None  # and C_ij (d × d), left in the store until the check reads it

    @property
    def dimension(self):
        return self.model.dimension


@dataclass(frozen=True)
class Truth:
    """The truth of simulated samples, and the fit's errors against it (``RectifiedGaussian.errors``)."""

    path: str
    covariance: np.ndarray
    bias: np.ndarray
    errors: dict


@dataclass(frozen=True)
class Spectrum:
    """The eigenvalues of Σ̂, largest first, and how far below 0 one must be to count as negative."""

    eigenvalues: np.ndarray
    tolerance: float  # d ε max|λ|: rounding of a positive semidefinite matrix

    @property
    def negative(self):
        return int((self.eigenvalues < -self.tolerance).sum())

    @property
    def zero(self):
        return int((np.abs(self.eigenvalues) <= self.tolerance).sum())


def read_fit(path):
    """Return the ``ReportedFit`` of the one-layer fit at ``path``; refuse anything else with ``InputError``."""
    model_name = open_fit_group(path).attrs.get("model", MODEL)
    if model_name != MODEL:
        raise InputError(f"{path} is a fit of the model {model_name}: the report shows fits of the one-layer "
                         f"model ({MODEL}) only")
    model, group = open_fit(path)

    def stored(name):
        return group[name][...] if name in group else None

    n_zero, n = stored("n_zero"), group.attrs.get("n_samples")
    return ReportedFit(str(path), dict(group.attrs), model, group["scale"][...], group["status"][...],
                       group["positive_fraction"][...], stored("covariance_se"), stored("bias_se"),
                       stored("scale_se"), stored("model_check"), stored("thresholds"),
                       n_zero / n if n_zero is not None and n else None,
                       group["counts"] if "counts" in group else None)


def require_matplotlib():
    """Raise ``InputError`` saying which extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(MISSING_MATPLOTLIB) from None


def write_report(fit, out, truth=None, overwrite=False):
    """Write the report of ``fit`` as the HTML file ``out``; return its size in bytes.

    Parameters
    ----------
    fit : ReportedFit
    out : str or Path
        The file to create (a path or fsspec URL). It appears only when
        complete; an existing file is replaced only with ``overwrite``, and
        only if it is a dist_relu report.
    truth : Truth, optional
        Adds the fit's errors against it and the estimates plotted against it.
    overwrite : bool, default False
    """
    require_matplotlib()
    storage.check_output(out, storage.REPORT_FORMAT, (fit.path, truth and truth.path), overwrite)
    data = render(fit, truth).encode()
    storage.write_file(out, data, storage.REPORT_FORMAT, (fit.path, truth and truth.path), overwrite)
    return len(data)


def render(fit, truth=None):
    """Return the report of ``fit`` (and its errors against ``truth``) as one HTML page."""
    d = fit.dimension
    stored = {name: value for name, value in fit.attributes.items() if name != "timings"}
    spectrum = spectrum_of(fit.model.covariance)
    sections = [
        _section("provenance", "Provenance", _table(_rows(stored))),
        _section("timings", "Timings", _timings_table(fit.attributes)),
        _section("status", "Coordinates", _status_table(fit)),
        _section("correlation", "Correlations ρ̂", _heatmap_text(d) + _figure(correlation_figure(fit))),
    ]
    if fit.covariance_se is not None:
        sections.append(_section("standard-errors", "Standard errors of Σ̂",
                                 _heatmap_text(d, STANDARD_ERROR_TEXT) + _jackknife_text(fit.attributes) +
                                 _figure(standard_error_figure(fit))))
    sections += [
        _section("estimates", "b̂ and σ̂ per coordinate", _figure(estimates_figure(fit))),
        _section("positive-fraction", "Positive fraction per coordinate", _figure(positive_fraction_figure(fit))),
        _section("spectrum", "Eigenvalues of Σ̂", _spectrum_text(spectrum) + _figure(spectrum_figure(spectrum))),
        _section("model-check", "Model check: do the positives look censored normal?", _model_check_content(fit)),
        _section("predictive-check", "Predictive check: what the fitted model predicts against the data",
                 _predictive_check_content(fit)),
    ]
    if truth is not None:
        sections.append(_section("truth", "Against the truth",
                                 _errors_table(truth) + _figure(truth_figure(fit, truth))))
    attributes = fit.attributes
    summary = (f"{attributes.get('n_samples', 0):,} samples × {d:,} coordinates; {attributes.get('method')}, "
               f"{attributes.get('passes')} pass(es), {attributes.get('inversion')}; made "
               f"{attributes.get('created')} by dist_relu {attributes.get('dist_relu_version')}")
    return PAGE.format(mark=storage.REPORT_MARK, title=html.escape(f"dist_relu fit: {fit.path}"), style=STYLE,
                       summary=html.escape(summary), body="\n".join(sections))


# -- figures: one function each, returning a matplotlib Figure ------------------------------------------

def correlation_figure(fit):
    """Return the heatmap of ρ̂_ij = Σ̂_ij / (σ̂_i σ̂_j), on a fixed −1..1 diverging scale."""
    correlation = _per_scales(fit.model.covariance, fit.scale)
    cells, block = block_average(correlation)
    figure = _new_figure(7.5, 6.2)
    axes = figure.add_subplot()
    image = _heatmap(axes, cells, block, fit.dimension, cmap="RdBu_r", vmin=-1, vmax=1)
    figure.colorbar(image, ax=axes, label="ρ̂")
    axes.set_title(_heatmap_title("ρ̂ = Σ̂ᵢⱼ / (σ̂ᵢ σ̂ⱼ)", fit.dimension), fontsize=10)
    return figure


def standard_error_figure(fit):
    """Return the heatmap of the standard errors of Σ̂ relative to σ̂_i σ̂_j (on the scale of ρ̂)."""
    relative = _per_scales(fit.covariance_se, fit.scale)
    cells, block = block_average(relative)
    finite = cells[np.isfinite(cells)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    figure = _new_figure(7.5, 6.2)
    axes = figure.add_subplot()
    image = _heatmap(axes, cells, block, fit.dimension, cmap="viridis", vmin=low, vmax=high)
    figure.colorbar(image, ax=axes, label="SE(Σ̂ᵢⱼ) / (σ̂ᵢ σ̂ⱼ)", extend="both")
    axes.set_title(_heatmap_title("SE(Σ̂ᵢⱼ) / (σ̂ᵢ σ̂ⱼ)", fit.dimension), fontsize=10)
    return figure


def estimates_figure(fit):
    """Return b̂ and σ̂ against the coordinate, with ±1.96 SE bars when the standard errors are stored."""
    index = np.arange(fit.dimension)
    flagged = fit.status != kernels.STATUS_OK
    size = 4 if fit.dimension <= 200 else 1.5
    figure = _new_figure(10, 6)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for axes, values, errors, name in ((top, fit.model.bias, fit.bias_se, "b̂"),
                                       (bottom, fit.scale, fit.scale_se, "σ̂")):
        if errors is None:
            axes.plot(index, values, ".", ms=size, color="C0", label=name)
        else:
            axes.errorbar(index, values, yerr=1.96 * errors, fmt=".", ms=size, color="C0", ecolor="C0",
                          elinewidth=0.5, alpha=0.8, label=f"{name} ± 1.96 SE")
        if flagged.any():
            axes.plot(index[flagged], values[flagged], "x", ms=5, color="C3", label="status not ok")
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right", fontsize=8)
    bottom.set_xlabel("coordinate")
    return figure


def positive_fraction_figure(fit):
    """Return the fraction of positive samples per coordinate, on a log scale, with the few-positives line."""
    index = np.arange(fit.dimension)
    fraction = fit.positive_fraction
    shown = fraction > 0
    figure = _new_figure(10, 3.5)
    axes = figure.add_subplot()
    axes.plot(index[shown], fraction[shown], ".", ms=4 if fit.dimension <= 200 else 1.5)
    n = fit.attributes.get("n_samples")
    if n:
        few = kernels.min_positives(likelihood_of(fit.attributes.get("method", "censored")))
        axes.axhline(few / n, color="C3", lw=0.8, label=f"{few:,} positives: below it, 'few positives'")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_yscale("log")
    axes.set_xlabel("coordinate")
    axes.set_ylabel("positive fraction")
    hidden = int((~shown).sum())
    axes.set_title(f"{hidden} coordinate{'s' * (hidden != 1)} with no positive sample not shown" if hidden else "",
                   fontsize=9)
    axes.grid(alpha=0.3, which="both")
    return figure


def spectrum_figure(spectrum):
    """Return |λ| of Σ̂'s eigenvalues by rank on a log scale, the negative ones marked."""
    values = spectrum.eigenvalues
    rank = np.arange(1, values.size + 1)
    negative = values < -spectrum.tolerance
    positive = values > spectrum.tolerance
    figure = _new_figure(10, 3.8)
    axes = figure.add_subplot()
    axes.plot(rank[positive], values[positive], ".", ms=3, label="λ > 0")
    if negative.any():
        axes.plot(rank[negative], -values[negative], ".", ms=4, color="C3", label="−λ, λ < 0")
    axes.set_yscale("log")
    axes.set_xlabel("rank")
    axes.set_ylabel("|λ|")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper right", fontsize=8)
    return figure


def model_check_figure(fit, threshold):
    """Return the model check's statistic per coordinate on a log scale, the threshold and the failures marked."""
    index = np.arange(fit.dimension)
    statistic = fit.model_check
    failed = fit.status == kernels.STATUS_NOT_NORMAL
    with np.errstate(invalid="ignore"):
        positive, negative = statistic > 0, statistic < 0
    size = 4 if fit.dimension <= 200 else 1.5
    figure = _new_figure(10, 3.8)
    axes = figure.add_subplot()
    axes.plot(index[positive & ~failed], statistic[positive & ~failed], ".", ms=size, label="statistic")
    if negative.any():
        axes.plot(index[negative], -statistic[negative], "v", ms=size + 1, color="C1",
                  label="−statistic, where negative: passes, checks nothing")
    if failed.any():
        axes.plot(index[failed], statistic[failed], "x", ms=5, color="C3", label="failed: not censored normal")
    axes.axhline(threshold, color="C3", lw=0.8, label=f"threshold {threshold:.3g}")
    axes.set_yscale("log")
    axes.set_xlabel("coordinate")
    axes.set_ylabel("model check statistic")
    unchecked = int(np.isnan(statistic).sum())
    axes.set_title(f"{unchecked:,} coordinate{'s' * (unchecked != 1)} not checked (NaN) not shown" if unchecked
                   else "", fontsize=9)
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="best", fontsize=8)
    return figure


def predictive_check_figure(check):
    """Return the model's zero fractions and co-exceedance rates against the data's, with the line y = x."""
    d = check.model_zero_fraction.size
    rows, columns = _off_diagonal_pairs(d)
    figure = _new_figure(10, 4.6)
    left, right = figure.subplots(1, 2)
    left.plot(check.data_zero_fraction, check.model_zero_fraction, ".", ms=3)
    left.set_xlabel("zero fraction in the data")
    left.set_ylabel("zero fraction of the model")
    right.plot(check.data_coexceedance[rows, columns], check.model_coexceedance[rows, columns], ".", ms=2,
               alpha=0.5, label=_pairs_label(rows, d))
    right.plot(np.diag(check.data_coexceedance), np.diag(check.model_coexceedance), ".", ms=3, color="C1",
               label="the diagonal: P(xᵢ > tᵢ)")
    right.set_xlabel("P(xᵢ > tᵢ, xⱼ > tⱼ) in the data")
    right.set_ylabel("P(xᵢ > tᵢ, xⱼ > tⱼ) of the model")
    for axes in (left, right):
        axes.plot([0, 1], [0, 1], color="0.4", lw=0.8, label="y = x")
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
        axes.set_aspect("equal")
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", fontsize=8)
    return figure


def truth_figure(fit, truth):
    """Return Σ̂ entries against Σ* and b̂ against b*, with the line y = x."""
    d = fit.dimension
    covariance = fit.model.covariance
    rows, columns = _off_diagonal_pairs(d)
    figure = _new_figure(10, 4.6)
    left, right = figure.subplots(1, 2)
    left.plot(truth.covariance[rows, columns], covariance[rows, columns], ".", ms=2, alpha=0.5,
              label=_pairs_label(rows, d))
    left.plot(np.diag(truth.covariance), np.diag(covariance), ".", ms=3, color="C1", label="diagonal")
    left.set_xlabel("Σ*ᵢⱼ")
    left.set_ylabel("Σ̂ᵢⱼ")
    right.plot(truth.bias, fit.model.bias, ".", ms=3)
    right.set_xlabel("b*ᵢ")
    right.set_ylabel("b̂ᵢ")
    for axes in (left, right):
        low, high = axes.get_xlim()
        axes.plot([low, high], [low, high], color="0.4", lw=0.8, label="y = x")
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", fontsize=8)
    return figure


# -- the numbers behind the figures ---------------------------------------------------------------------

def block_average(matrix, max_cells=MAX_CELLS):
    """Return ``matrix`` averaged over square blocks so that it has at most ``max_cells`` a side, and the block's side.

    NaN entries are left out of their block's mean; a block of NaN only is NaN.
    """
    d = matrix.shape[0]
    block = block_side(d, max_cells)
    if block == 1:
        return matrix, 1
    cells = -(-d // block)
    padded = np.full((cells * block, cells * block), np.nan)
    padded[:d, :d] = matrix
    blocks = padded.reshape(cells, block, cells, block)
    counts = np.isfinite(blocks).sum(axis=(1, 3))
    sums = np.nansum(blocks, axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan), block


def block_side(d, max_cells=MAX_CELLS):
    """Return the side of the square blocks that bring a ``d × d`` matrix to at most ``max_cells`` a side."""
    return -(-d // max_cells)


def spectrum_of(covariance):
    """Return the ``Spectrum`` of a symmetric matrix."""
    values = np.linalg.eigvalsh((covariance + covariance.T) / 2)[::-1]
    largest = float(np.abs(values).max()) if values.size else 0.0
    return Spectrum(values, values.size * np.finfo(np.float64).eps * largest)


def _per_scales(matrix, scale):
    """Return ``matrix_ij / (scale_i scale_j)``, NaN where a scale is 0 (degenerate coordinates)."""
    scale = np.where(scale > 0, scale, np.nan)
    return matrix / scale[:, None] / scale[None, :]


def _off_diagonal_pairs(d):
    """Return ``(rows, columns)`` of the pairs ``i < j`` to draw: all of them, or ``MAX_POINTS`` at random."""
    return np.triu_indices(d, k=1) if d * (d - 1) // 2 <= MAX_POINTS else _random_pairs(d)


def _pairs_label(rows, d):
    pairs = d * (d - 1) // 2
    return "off the diagonal" + ("" if rows.size == pairs else f" ({rows.size:,} at random of {pairs:,})")


def _random_pairs(d, seed=0):
    """Return ``MAX_POINTS`` distinct pairs ``i < j`` drawn at random (the same ones every time)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(d * d, size=3 * MAX_POINTS, replace=False)
    rows, columns = np.divmod(flat, d)
    keep = rows < columns
    return rows[keep][:MAX_POINTS], columns[keep][:MAX_POINTS]


# -- drawing --------------------------------------------------------------------------------------------

def _new_figure(width, height):
    """Return an empty matplotlib Figure on its own Agg canvas (pyplot never sees it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _heatmap(axes, cells, block, d, cmap, vmin, vmax):
    """Draw ``cells`` (blocks of ``block`` coordinates) on ``axes``, NaN (degenerate coordinates) in grey."""
    import matplotlib

    side = cells.shape[0] * block
    image = axes.imshow(np.ma.masked_invalid(cells), interpolation="nearest", vmin=vmin, vmax=vmax,
                        cmap=matplotlib.colormaps[cmap].with_extremes(bad="0.8"),
                        extent=(-0.5, side - 0.5, side - 0.5, -0.5))
    axes.set_xlim(-0.5, d - 0.5)
    axes.set_ylim(d - 0.5, -0.5)
    axes.set_xlabel("coordinate j")
    axes.set_ylabel("coordinate i")
    return image


def _block_note(d):
    """Return what block-averaging did to a ``d × d`` heatmap, or "" when it was not averaged."""
    block = block_side(d)
    if block == 1:
        return ""
    cells = -(-d // block)
    return f"block-averaged: {cells} × {cells} cells, each the mean of {block} × {block} entries (d = {d:,})"


def _heatmap_title(what, d):
    note = _block_note(d)
    return f"{what}\n{note}" if note else what


def _png_uri(figure):
    """Return ``figure`` as a PNG data URI, and free it."""
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})  # no URL in the file
    figure.clear()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- HTML -----------------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{mark}
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
{body}
</body>
</html>
"""

STYLE = """
body { font-family: sans-serif; max-width: 1050px; margin: 1em auto; padding: 0 1em; color: #222; }
h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
table table { font-size: 1em; }
img { max-width: 100%; }
"""


def _section(name, heading, content):
    return f'<section id="{name}">\n<h2>{html.escape(heading)}</h2>\n{content}\n</section>'


def _figure(figure):
    return f'<figure><img src="{_png_uri(figure)}" alt=""></figure>'


def _table(rows, header=None):
    """Return an HTML table of ``rows`` (each a tuple of cells, already HTML)."""
    head = "<tr>" + "".join(f"<th>{cell}</th>" for cell in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _value(value):
    """Return a stored attribute as HTML: nested tables for mappings and lists of them, JSON for the rest."""
    if isinstance(value, dict):
        return _table(_rows(value)) if value else "{}"
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return "".join(_value(item) for item in value)
    if isinstance(value, str):
        return html.escape(value)
    return html.escape(json.dumps(value))


def _rows(mapping):
    return [(html.escape(str(name)), _value(value)) for name, value in mapping.items()]


def _timings_table(attributes):
    timings = attributes.get("timings") or {}
    total = attributes.get("seconds")
    rows = [(html.escape(stage), f"{seconds:.3f}", f"{seconds / total:.0%}" if total else "")
            for stage, seconds in timings.items()]
    rows.append(("<b>total</b>", f"{total:.3f}" if total is not None else "", ""))
    return _table(rows, ("stage", "seconds", "of the total"))


def _listed(columns):
    """Return the first ``MAX_NAMED`` of ``columns`` separated by commas, and how many more there are."""
    return io.listed_columns(columns, MAX_NAMED)


def _status_table(fit):
    rows = []
    for code, name in kernels.STATUS_NAMES.items():
        columns = np.flatnonzero(fit.status == code)
        rows.append((html.escape(name), f"{columns.size:,}", "" if code == kernels.STATUS_OK else _listed(columns)))
    return _table(rows, ("status", "coordinates", "which"))


STANDARD_ERROR_TEXT = ("SE(Σ̂ᵢⱼ) / (σ̂ᵢ σ̂ⱼ): the standard error on the scale of ρ̂, comparable across "
                       "coordinates (relative to |Σ̂ᵢⱼ| it would be unbounded where Σ̂ᵢⱼ is near 0). "
                       "The colour scale runs from the 1st to the 99th percentile of the cells. Infinite errors "
                       "(no information: an empty cell in the pair's table of exceedances) are grey too. ")


def _jackknife_text(attributes):
    """Return how the jackknife's standard errors compare with these, when the fit made them."""
    ratios = attributes.get("jackknife")
    if not ratios:
        return ""
    shown = [f"{ratios[f'{key}_ratio']:.2f} for {name}" for key, name in
             (("covariance", "Σ̂"), ("correlation", "ρ̂"), ("bias", "b̂"), ("scale", "σ̂"))
             if ratios.get(f"{key}_ratio") is not None]
    return (f"<p>A delete-a-group jackknife over {ratios['groups']} groups of consecutive rows gives standard "
            f"errors {html.escape(', '.join(shown) or 'none')} times these (root mean square of the ratio). Each "
            "jackknife error scatters about 1/√(2(G − 1)) about the truth; a ratio far from 1 means the analytic "
            "errors' assumptions (independent samples from one law) fail for this data.</p>")


def _heatmap_text(d, what=""):
    note = _block_note(d)
    text = what + "Grey: coordinates with σ̂ = 0 (status all zero or constant)."
    if note:
        text += f" {note.capitalize()}."
    return f"<p>{html.escape(text)}</p>"


def _spectrum_text(spectrum):
    d, zero = spectrum.eigenvalues.size, spectrum.zero
    verdict = ("Σ̂ is positive semidefinite (to rounding)." if not spectrum.negative else
               "Σ̂ is not positive semidefinite: factor() and sample() use its repair, the estimated variances "
               "with the nearest correlation matrix.")
    return (f"<p>Smallest eigenvalue {spectrum.eigenvalues[-1]:.4g}, largest {spectrum.eigenvalues[0]:.4g}; "
            f"{spectrum.negative:,} of {d:,} are negative (below −{spectrum.tolerance:.2g}, the rounding of "
            f"d ε max|λ|){f', {zero:,} are 0 to that rounding' if zero else ''}. {html.escape(verdict)}</p>")


ERROR_NAMES = {"err_sigma": "‖Σ̂ − Σ*‖_F / ‖W*‖_F²", "err_b": "‖b̂ − b*‖₂ / ‖W*‖_F",
               "tv_bound": "upper bound on the total-variation distance, sqrt(min KL / 2)"}


def _errors_table(truth):
    rows = [(html.escape(name), f'<span class="metric" id="{html.escape(name)}" data-value="{value!r}">'
             f"{value:.5f}</span>", html.escape(ERROR_NAMES.get(name, "")))
            for name, value in truth.errors.items()]
    return f"<p>Truth: {html.escape(truth.path)}</p>" + _table(rows, ("metric", "value", "what it is"))


def _model_check_content(fit):
    """Return the model check's section: which coordinates were checked and failed, and the statistic's figure."""
    if fit.model_check is None:
        return ("<p>This fit was stored before the model check existed: it has no <code>model_check</code> "
                "statistic, and no coordinate was checked.</p>")
    summary = fit.attributes.get("model_check") or {}
    threshold = summary.get("threshold", uncertainty.MODEL_CHECK_THRESHOLD)
    min_positives = summary.get("min_positives", uncertainty.MODEL_CHECK_MIN_POSITIVES)
    checked = np.isfinite(fit.model_check)
    failed = np.flatnonzero(fit.status == kernels.STATUS_NOT_NORMAL)
    with np.errstate(invalid="ignore"):
        negative = np.flatnonzero(fit.model_check < 0)
    text = (f"Are the third and fourth moments of each coordinate's positive values those of the fitted censored "
            f"normal? The statistic is about χ²(2) on data from the model; a coordinate fails above "
            f"{threshold:.3g} and gets the status 'not censored normal': its b̂, σ̂ and row of Σ̂ describe a normal "
            f"that is not there. Checked: the coordinates with at least {min_positives:,} positives, fitted with "
            f"the censored likelihood; {int(checked.sum()):,} of {fit.dimension:,} here.")
    if not checked.any():
        method = fit.attributes.get("method")
        if method not in (None, "censored"):
            text += f" This fit's likelihood is {method}: the check is made for the censored one only."
        return f"<p>{html.escape(text)}</p>"
    if failed.size:
        text += f" Failed: {failed.size:,}, coordinate{'s' * (failed.size != 1)} {_listed(failed)}."
    else:
        text += " None failed."
    if negative.size:
        text += (f" {negative.size:,} ha{'ve' if negative.size != 1 else 's'} a negative statistic (coordinate"
                 f"{'s' * (negative.size != 1)} {_listed(negative)}), which a quadratic form cannot have: the "
                 "check's covariance was not positive definite there, and such a coordinate passes whatever its "
                 "positives look like.")
    return f"<p>{html.escape(text)}</p>" + _figure(model_check_figure(fit, threshold))


def _predictive_check_content(fit):
    """Return the predictive check's section: its largest errors and its figure, or why it was not made."""
    d = fit.dimension
    if d > PREDICTIVE_CHECK_MAX_DIMENSION:
        return (f"<p>Not made: d = {d:,} is above {PREDICTIVE_CHECK_MAX_DIMENSION:,}, the largest d the report "
                "makes it at. The check needs the repair of Σ̂ (the nearest correlation matrix: one d × d "
                "eigendecomposition per iteration, growing like d³; at d = 1,000 the report took 7 minutes, most "
                "of them for the repair, where it takes 5 s without it). In Python it is "
                "<code>dist_relu.model.predictive_check</code> (README, \"Python\").</p>")
    if fit.thresholds is None or fit.zero_fraction is None or fit.counts is None:
        return "<p>Not made: the fit does not store the thresholds, the zero counts and the co-exceedance counts.</p>"
    start = time.perf_counter()
    try:
        repair = fit.model.repair
    except ValueError as why:
        return f"<p>Not made: Σ̂ cannot be repaired ({html.escape(str(why))}).</p>"
    check = predictive_check(fit.model, fit.thresholds, fit.counts[...], fit.attributes["n_samples"],
                             fit.zero_fraction)
    seconds = time.perf_counter() - start
    worst = int(np.nanargmax(check.zero_fraction_error)) if np.isfinite(check.zero_fraction_error).any() else None
    pair_error = np.abs(check.model_coexceedance - check.data_coexceedance)
    worst_pair = np.unravel_index(np.nanargmax(pair_error), pair_error.shape) if np.isfinite(pair_error).any() \
        else None
    text = ("What the fitted model ReLU(N(b̂, Σ̂₊)) predicts, from the fit's stored state (no sample is read or "
            "drawn), against what the data had: each coordinate's fraction of zeros, and each pair's rate of "
            "exceeding the fit's thresholds together, P(xᵢ > tᵢ, xⱼ > tⱼ) (on the diagonal, P(xᵢ > tᵢ)). Σ̂₊ is "
            "Σ̂ repaired, as sample() draws from it.")
    zero_where = (f" (coordinate {worst}: model {check.model_zero_fraction[worst]:.4f}, data "
                  f"{check.data_zero_fraction[worst]:.4f})" if worst is not None else "")
    pair_where = (f" ({_pair_name(*worst_pair)}: model {check.model_coexceedance[worst_pair]:.4f}, data "
                  f"{check.data_coexceedance[worst_pair]:.4f})" if worst_pair is not None else "")
    if repair.iterations == 0:
        repaired = "Σ̂ needed no repair: it is positive semidefinite"
    else:
        repaired = (f"The repair moved Σ̂ by {repair.relative_distance:.3g} of its norm (largest change "
                    f"{repair.largest_change:.3g}) in {repair.iterations:,} iterations"
                    f"{'' if repair.converged else ', and did not converge'}")
    numbers = [f"Largest zero-fraction error: {_check_number('largest_zero_fraction_error', check)}"
               f"{html.escape(zero_where)}",
               f"Largest co-exceedance error: {_check_number('largest_coexceedance_error', check)}"
               f"{html.escape(pair_where)}",
               html.escape(f"{repaired}; the check took {seconds:.2f} s.")]
    return (f"<p>{html.escape(text)}</p><ul>" + "".join(f"<li>{line}</li>" for line in numbers) + "</ul>"
            + _figure(predictive_check_figure(check)))


def _pair_name(i, j):
    return f"coordinate {i}'s P(xᵢ > tᵢ)" if i == j else f"pair {i}, {j}"


def _check_number(name, check):
    """Return one of the predictive check's numbers as HTML that names it and holds its exact value."""
    value = getattr(check, name)
    return f'<span class="check" data-name="{name}" data-value="{value!r}">{value:.4f}</span>'

