"""The ``dist-relu`` command line: simulate, fit, evaluate, report, demo."""

import ctypes
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np
import zarr
from click.core import ParameterSource

from . import __version__, fitstore, io, kernels, latent, storage
from . import report as reporting
from .convert import FORMATS
from .convert import convert as convert_file
from .entry import interrupted_exit
from .errors import ENVIRONMENT_ERRNOS, EnvironmentProblem
from .estimator import fit_to_zarr, merge_fits
from .fitstore import open_fit
from .randombias import NotConverged
from .randombias import fit_to_zarr as fit_random_bias
from .scheduler import scheduler
from .settings import OneLayerSettings, RandomBiasSettings, TwoLayerSettings
from .kernels import LATENT_LAWS
from .simulate import (BIAS_KINDS, figure1_truth, open_truth, open_truth_group, random_bias_truth, simulate_to_zarr,
                       two_layer_truth)
from .twolayer import fit_to_zarr as fit_two_layer


@dataclass(frozen=True)
class Model:
    """A model of `--model`: its settings, the function that fits it to Zarr, and the option it needs."""

    settings: type
    fit: Callable
    needs: str | None = None


MODELS = {"one-layer": Model(OneLayerSettings, fit_to_zarr),
          "two-layer": Model(TwoLayerSettings, fit_two_layer, "hidden"),
          "random-bias": Model(RandomBiasSettings, fit_random_bias, "rank")}

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_ENVIRONMENT = 4


class ColumnBlock(click.ParamType):
    """``auto`` or a positive integer."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor an integer", param, ctx)
        if number < 1:
            self.fail(f"{number} is not ≥ 1", param, ctx)
        return number


class ByteSize(click.ParamType):
    """A number of bytes, as dask writes them: 4GB, 512MiB, 1e9."""

    name = "bytes"

    def convert(self, value, param, ctx):
        from dask.utils import parse_bytes

        try:
            number = parse_bytes(value)
        except (ValueError, TypeError):
            self.fail(f"{value!r} is not a size such as 4GB or 512MiB", param, ctx)
        if number <= 0:
            self.fail(f"{value!r} is not a positive size", param, ctx)
        return number


def _log(message):
    click.echo(message, err=True)


def _object_store_unreachable(error):
    """Return whether ``error`` says that an object store's endpoint or credentials cannot be had (s3fs's botocore)."""
    botocore = sys.modules.get("botocore.exceptions")  # imported only by s3fs, when an s3:// URL was used
    return botocore is not None and isinstance(error, (
        botocore.ConnectionError, botocore.HTTPClientError, botocore.NoCredentialsError,
        botocore.PartialCredentialsError, botocore.CredentialRetrievalError))


def _handle_errors(command):
    """Print one line on stderr for a failure and exit with its code (README: "Exit codes")."""

    @functools.wraps(command)
    def wrapper(*args, debug=False, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as interrupt:  # SIGINT, SIGTERM or SIGHUP (dist_relu.entry)
            interrupted_exit(interrupt, "no output was written; an earlier output is unchanged")
        except (io.InputError, FileExistsError, ValueError) as error:
            if debug:
                raise
            _log(f"error: {error}")
            sys.exit(EXIT_BAD_INPUT)
        except EnvironmentProblem as error:
            if debug:
                raise
            _log(f"error: {error}")
            sys.exit(EXIT_ENVIRONMENT)
        except OSError as error:
            if debug:
                raise
            if isinstance(error, PermissionError) and error.errno is None:  # s3fs's AccessDenied, and the like
                _log(f"error: permission denied: {error}")
                sys.exit(EXIT_ENVIRONMENT)
            if error.errno not in ENVIRONMENT_ERRNOS:
                _log(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)")
                sys.exit(EXIT_INTERNAL)
            where = f"{error.filename}: " if error.filename else ""
            _log(f"error: {where}{error.strerror or error}")
            sys.exit(EXIT_ENVIRONMENT)
        except Exception as error:
            if debug:
                raise
            if _object_store_unreachable(error):
                _log(f"error: {error}")
                sys.exit(EXIT_ENVIRONMENT)
            _log(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)")
            sys.exit(EXIT_INTERNAL)

    return click.option("--debug", is_flag=True, help="Show the traceback of a failure.")(wrapper)


def _scheduler_options(command):
    for name, what in (("key", "private key"), ("cert", "certificate"), ("ca-file", "certificate authority")):
        command = click.option(
            f"--tls-{name}", type=click.Path(dir_okay=False), default=None,
            help=f"PEM file of the {what} for a tls:// scheduler (default: the Dask config's "
            f"distributed.comm.tls settings).",
        )(command)
    command = click.option(
        "--workers", type=click.IntRange(min=1), default=None,
        help="Start a local cluster of N single-threaded worker processes (loopback only).",
    )(command)
    command = click.option(
        "--scheduler", "address", metavar="ADDRESS", default=None,
        help="Address of a running dask scheduler, e.g. tcp://10.0.0.5:8786 or tls://10.0.0.5:8786. "
        "Default: local threads.",
    )(command)
    return command


def _settings_options(*settings_classes):
    """Return a decorator adding one option per setting of the ``settings_classes`` (``dist_relu.settings``).

    A setting that several classes declare (they share it by inheritance) is one option.
    """
    declared = {name: (default, spec) for cls in settings_classes for name, default, spec in cls.declared()}

    def decorate(command):
        for name, (default, spec) in reversed(declared.items()):
            flag = "--" + name.replace("_", "-")
            help = spec.cli_help or spec.help
            if spec.kind is bool:
                command = click.option(flag, is_flag=True, default=default, help=help)(command)
                continue
            if spec.choices:
                kind = click.Choice(spec.choices)
            elif spec.size:
                kind = ByteSize()
            elif "auto" in spec.others:
                kind = ColumnBlock()
            elif spec.minimum is None and spec.maximum is None:
                kind = spec.kind
            else:
                number = click.IntRange if spec.kind is int else click.FloatRange
                kind = number(min=spec.minimum, max=spec.maximum, min_open=spec.open_minimum)
            command = click.option(flag, type=kind, default=default, show_default=default is not None,
                                   metavar="BYTES" if spec.size else None, help=help)(command)
        return command

    return decorate


def _progress_option(command):
    return click.option(
        "--progress/--no-progress", default=None,
        help="Show a progress bar on stderr. Default: when stderr is a terminal.",
    )(command)


def _want_progress(progress):
    return sys.stderr.isatty() if progress is None else progress


# glibc's M_ARENA_MAX (malloc.h): how many malloc arenas threads may spread over.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas=2):
    """Let glibc's malloc use at most ``arenas`` arenas, as ``MALLOC_ARENA_MAX=2`` would; return whether it did.

    Each thread that allocates a chunk can otherwise get an arena of its
    own, and the freed chunks left in them add up: a fit's peak memory grows
    with the number of chunks read (``benchmarks/scaling_n.py`` measures it).
    Call it before threads start. A ``MALLOC_ARENA_MAX`` already in the
    environment wins; other C libraries are left alone.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False  # not glibc


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dist-relu")
def main():
    """Learn the rectified Gaussian x = ReLU(W z + b), z ~ N(0, I), from samples.

    Estimates Σ = W Wᵀ and b from an (n, d) Zarr array of samples, out of core
    and in parallel with Dask: on local threads, a local cluster (--workers)
    or a running dask scheduler (--scheduler).

    \b
    Example:
      dist-relu simulate --n 1000000 --d 50 --out sim.zarr
      dist-relu fit sim.zarr --out fit.zarr
      dist-relu evaluate fit.zarr --truth sim.zarr
    """
    limit_malloc_arenas()  # before any thread starts
    _log_to_stderr()


def _log_to_stderr():
    """Show dist_relu's notes (a stale lock taken over, leftovers cleaned) on stderr, once."""
    logger = logging.getLogger("dist_relu")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@main.command()
@click.option("--n", "n_samples", type=click.IntRange(min=1), required=True, help="Number of samples.")
@click.option("--d", "dimension", type=click.IntRange(min=1), required=True, help="Number of coordinates.")
@click.option("--out", required=True, help="Zarr group to create (a path or fsspec URL).")
@click.option("--kappa", type=click.FloatRange(min=1), default=1.0, show_default=True,
              help="Condition number of Σ = W Wᵀ.")
@click.option("--bias", "bias_kind", type=click.Choice(BIAS_KINDS), default="clipped", show_default=True,
              help="b ~ N(0, I) clipped at 0 (the paper's Figure 1) or left Gaussian (negative biases).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of W, b and the samples.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=65_536, show_default=True,
              help="Rows per Zarr chunk.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--model", type=click.Choice(list(MODELS)), default="one-layer", show_default=True,
              help="one-layer: x = ReLU(W z + b). two-layer: x = A ReLU(W z + b) with A (d × hidden) standard "
              "Gaussian and W, b of the paper's Figure 1 for the hidden layer (square W: separable). "
              "random-bias: y = ReLU(A c + b), A (d × rank) and b standard normal, c of the law --latent.")
@click.option("--hidden", type=click.IntRange(min=1), default=None,
              help="Hidden units of --model two-layer (required there).")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="Latent dimension of --model random-bias (required there).")
@click.option("--latent", type=click.Choice(LATENT_LAWS), default="uniform", show_default=True,
              help="The latents' law for --model random-bias: uniform on [−1, 1], Student t₃, sparse "
              "(Bernoulli(0.3) × normal) or Gaussian.")
@click.option("--noise", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Standard deviation of Gaussian noise added to every value (the one-layer model's samples "
              "then have negative values, which its fit refuses).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@_scheduler_options
@_progress_option
@_handle_errors
def simulate(n_samples, dimension, out, kappa, bias_kind, seed, chunk_rows, dtype, model, hidden, rank, latent,
             noise, overwrite, address, workers, progress, **tls):
    """Simulate samples of ReLU(W z + b) into a Zarr group, with the truth beside them.

    W and b are drawn as in the paper's Figure 1: W an orthonormal matrix
    scaled to condition number --kappa, b ~ N(0, I). The group holds
    `samples` (n, d) and `truth/{weights,covariance,bias}` (and
    `truth/mixing` with --model two-layer).

    \b
    Example:
      dist-relu simulate --n 1000000 --d 50 --out sim.zarr --workers 2
      dist-relu simulate --n 100000 --d 20 --model two-layer --hidden 5 --out mixed.zarr
      dist-relu simulate --n 20000 --d 50 --model random-bias --rank 3 --latent t3 --out rb.zarr
    """
    for option, value, owner in (("--hidden", hidden, "two-layer"), ("--rank", rank, "random-bias")):
        if (model == owner) != (value is not None):
            raise ValueError(f"{option} goes with --model {owner}, and --model {owner} needs {option}")
    mixing, law = None, "gaussian"
    if model == "two-layer":
        mixing, weights, bias = two_layer_truth(dimension, hidden, kappa=kappa, seed=seed, bias=bias_kind)
    elif model == "random-bias":
        if rank >= dimension:
            raise ValueError(f"--rank must be below --d ({dimension})")
        (weights, bias), law = random_bias_truth(dimension, rank, seed=seed), latent
    else:
        weights, bias = figure1_truth(dimension, kappa=kappa, seed=seed, bias=bias_kind)
    start = time.perf_counter()
    with scheduler(address, workers, log=_log, **tls):
        simulate_to_zarr(out, weights, bias, n_samples, chunk_rows=chunk_rows, seed=seed, dtype=dtype,
                         overwrite=overwrite, progress=_want_progress(progress), mixing=mixing, noise=noise,
                         latent=law)
    _log(f"wrote {n_samples:,} samples × {dimension} coordinates to {out} in {time.perf_counter() - start:.1f} s")


@main.command()
@click.argument("samples")
@click.option("--out", required=True, help="Zarr group to create for the fit (a path or fsspec URL).")
@click.option("--array", default="samples", show_default=True,
              help="Name of the samples array when SAMPLES is a Zarr group.")
@click.option("--allow-missing-chunks", is_flag=True,
              help="Read chunks absent from the store as the fill value (for writers that skip all-zero chunks).")
@click.option("--model", type=click.Choice(list(MODELS)), default="one-layer", show_default=True,
              help="one-layer: x = ReLU(W z + b). two-layer: x = A ReLU(W z + b), A of any sign, found by "
              "separable NMF in a first read (needs --hidden). random-bias: y = ReLU(A c + b) with arbitrary "
              "latents c and a random bias (Mazumdar and Rawat; needs --rank).")
@_settings_options(*(model.settings for model in MODELS.values()))
@click.option("--update", metavar="FIT", default=None,
              help="Add SAMPLES to the one-pass fit FIT: count them at FIT's thresholds, with its settings, and "
              "add FIT's statistics and counts. The result is the fit of both, without rereading FIT's data.")
@click.option("--thresholds-from", metavar="FIT", default=None,
              help="Count at the thresholds of the fit FIT instead of a pilot's, so that this fit and FIT can be "
              "combined with `dist-relu merge`.")
@click.option("--checkpoint", metavar="DIR", default=None,
              help="Keep the main pass's partial sums in DIR (a path or URL the workers can reach) as they "
              "finish; rerun the same command after an interruption to resume where it stopped.")
@click.option("--overwrite", is_flag=True, help="Replace an existing fit at --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@_scheduler_options
@_progress_option
@_handle_errors
def fit(samples, out, array, allow_missing_chunks, model, update, thresholds_from, checkpoint, overwrite, as_json,
        address, workers, progress, **options):
    """Fit Σ̂ and b̂ to the samples in SAMPLES and write them to a Zarr group.

    SAMPLES is a Zarr array of shape (n, d), rows being samples, or a Zarr
    group holding one (named by --array). The output group holds `covariance`
    (Σ̂), `bias` (b̂), `scale` (σ̂), `status`, `positive_fraction`,
    `thresholds`, `counts` and the sufficient statistics, with the fit's
    settings and provenance as attributes. It appears only once complete.

    \b
    Examples:
      dist-relu fit sim.zarr --out fit.zarr
      dist-relu fit data.zarr --array x --out fit.zarr --workers 2 --json
      dist-relu fit data.zarr --out fit.zarr --scheduler tcp://10.0.0.5:8786 --checkpoint fit.checkpoint
      dist-relu fit s3://bucket/data.zarr --out s3://bucket/fit.zarr --scheduler tls://10.0.0.5:8786 \\
          --tls-ca-file ca.pem --tls-cert client.pem --tls-key client-key.pem
      dist-relu fit sim.zarr --out paper.zarr --method sgd --passes 2 --inversion model --clip-bias
      dist-relu fit new.zarr --update fit.zarr --out fit-with-new.zarr
      dist-relu fit mixed.zarr --model two-layer --hidden 5 --out fit.zarr

    With --model two-layer the group holds `mixing` (d × p, unit columns),
    `anchor_rows`, and the group `hidden`: the one-layer fit of the hidden
    layer, in the layout above.
    """
    if update and thresholds_from:
        raise ValueError("--update already counts at the thresholds of the fit it adds to; drop --thresholds-from")
    chosen = MODELS[model]
    if chosen.needs and options[chosen.needs] is None:
        raise ValueError(f"--model {model} needs --{chosen.needs}")
    fit_settings = {name: options[name] for name, _, _ in chosen.settings.declared()}
    context = click.get_current_context()
    given = [name for name in options if context.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    foreign = [f"--{name.replace('_', '-')}" for name in given
               if name not in fit_settings and not name.startswith("tls_")]
    one_layer_only = {"checkpoint": checkpoint, "update": update, "thresholds_from": thresholds_from}
    if model != "one-layer":
        foreign += [f"--{name.replace('_', '-')}" for name, value in one_layer_only.items() if value]
        one_layer_only = {}
    if foreign:
        raise ValueError(f"{', '.join(foreign)} do{'es' * (len(foreign) == 1)} not apply to --model {model}")
    tls = {name: options[name] for name in options if name.startswith("tls_")}
    with scheduler(address, workers, log=_log, **tls), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NotConverged)
        attributes = chosen.fit(samples, out, array=array, allow_missing_chunks=allow_missing_chunks,
                                overwrite=overwrite, progress=_want_progress(progress), **one_layer_only,
                                **fit_settings)
    for warning in caught:
        if issubclass(warning.category, NotConverged):
            _log(f"warning: {warning.message}")
    _print_summary(out, attributes, as_json)


def _print_summary(out, attributes, as_json):
    group = zarr.open_group(storage.location(out).url, mode="r")  # the per-coordinate arrays only: Σ̂ may be large
    two_layer = attributes["model"] == "two_layer_relu"
    random_bias = attributes["model"] == "random_bias_relu"
    if two_layer:
        anchors, group = group["anchor_rows"][:], group["hidden"]
    status = group["status"][:]
    status_names = latent.STATUS_NAMES if random_bias else kernels.STATUS_NAMES
    summary = {
        "out": str(out),
        "n_samples": attributes["n_samples"],
        "n_coordinates": attributes["n_coordinates"],
        "seconds": attributes["seconds"],
        "timings": attributes["timings"],
        "status": {status_names[code]: int((status == code).sum()) for code in np.unique(status)},
    }
    if random_bias:
        summary.update(rank=attributes["rank"], n_passes=attributes["n_passes"], converged=attributes["converged"],
                       loss=[float(loss) for loss in group["loss"][:]], change=[float(c) for c in group["change"][:]])
    else:
        summary["min_positive_fraction"] = float(group["positive_fraction"][:].min())
        for key in ("standard_errors", "jackknife", "model_check"):
            if attributes.get(key):
                summary[key] = attributes[key]
    if two_layer:
        summary.update(hidden=attributes["hidden"], anchor_rows=[int(row) for row in anchors],
                       outside_fraction=attributes["outside_fraction"], energy_outside=attributes["energy_outside"])
    if as_json:
        click.echo(json.dumps(summary | {"settings": attributes}, indent=2))
        return
    if two_layer:
        click.echo(f"fitted {summary['n_samples']:,} samples × {summary['n_coordinates']} coordinates to "
                   f"x = A ReLU(W z + b) with {attributes['hidden']} hidden units in {summary['seconds']:.1f} s "
                   f"({attributes['method']}, {attributes['inversion']})")
        click.echo(f"anchors: rows {', '.join(map(str, summary['anchor_rows']))}; rows outside their cone: "
                   f"{summary['outside_fraction']:.2%}; energy outside their span: {summary['energy_outside']:.2e}")
    elif random_bias:
        click.echo(f"fitted {summary['n_samples']:,} samples × {summary['n_coordinates']} coordinates to "
                   f"y = ReLU(A c + b) of rank {attributes['rank']} in {summary['seconds']:.1f} s, "
                   f"{attributes['n_passes']} pass{'es' * (attributes['n_passes'] > 1)} after the pilot"
                   + ("" if attributes["converged"] else " (not converged)"))
        click.echo("span(Â) moved by: " + ", ".join(f"{change:.1e}" for change in summary["change"]))
    else:
        correlations = attributes["inversion"]
        if attributes.get("cuts", 1) > 1:
            fewer = attributes.get("cuts_fewer", 0)
            correlations = f"{attributes['cuts']} cut points"
            if fewer:
                correlations += f", fewer for {fewer} coordinate{'s' * (fewer > 1)}"
        click.echo(
            f"fitted {summary['n_samples']:,} samples × {summary['n_coordinates']} coordinates "
            f"in {summary['seconds']:.1f} s ({attributes['method']}, {attributes['passes']} "
            f"pass{'es' if attributes['passes'] == 2 else ''}, {correlations})"
        )
    click.echo("stages: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in summary["timings"].items()))
    click.echo("coordinates: " + ", ".join(f"{count} {name}" for name, count in summary["status"].items()))
    if "standard_errors" in summary:
        errors = summary["standard_errors"]
        click.echo(f"standard errors: of the {errors['entries']:,} entries of Σ̂ (j ≥ i), "
                   f"{errors['relative_above_10pct']:,} have a relative error above 10%, "
                   f"{errors['relative_above_50pct']:,} above 50%, {errors['no_information']:,} have no information "
                   "(an empty cell in their table of exceedances)")
    if "jackknife" in summary:
        ratios = summary["jackknife"]
        shown = ", ".join(f"{ratios[f'{key}_ratio']:.2f} for {name}" for key, name in
                          (("covariance", "Σ̂"), ("correlation", "ρ̂"), ("bias", "b̂"), ("scale", "σ̂"))
                          if ratios[f"{key}_ratio"] is not None)
        click.echo(f"jackknife over {ratios['groups']} groups of rows: its standard errors are {shown or 'none'} "
                   "times the analytic ones (root mean square of the ratio)")
    if "model_check" in summary:
        check = summary["model_check"]
        click.echo(f"model check: {check['failed']} of the {check['checked']} coordinates checked (those with "
                   f"{check['min_positives']:,} positives or more) do not look like a censored normal")
    for code in np.unique(status[status != 0]):
        columns = np.flatnonzero(status == code)
        listed = io.listed_columns(columns, 20)
        click.echo(f"  {status_names[code]}: column{'s' if columns.size > 1 else ''} {listed}")
    if attributes.get("checkpoint") and attributes["checkpoint"]["blocks_resumed"]:
        click.echo(f"resumed {attributes['checkpoint']['blocks_resumed']:,} blocks of partial sums "
                   f"from {attributes['checkpoint']['url']}")
    for part in attributes.get("parts") or []:
        click.echo(f"  part: {part['n_samples']:,} samples of {part['source']}")
    if attributes.get("rows_dropped"):
        click.echo(f"left out {attributes['rows_dropped']:,} rows holding NaN or ±inf")
    click.echo(f"wrote {out}")


@main.command()
@click.argument("fits", metavar="FIT...", nargs=-1, required=True)
@click.option("--out", required=True, help="Zarr group to create for the merged fit (a path or fsspec URL).")
@click.option("--overwrite", is_flag=True, help="Replace an existing fit at --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@_scheduler_options
@_progress_option
@_handle_errors
def merge(fits, out, overwrite, as_json, address, workers, progress, **tls):
    """Combine one-pass fits of different samples, counted at the same thresholds, into the fit of all of them.

    Adds their sufficient statistics, counts and sample counts, then estimates
    b̂ and Σ̂ again: the result equals a fit of the concatenated samples
    (counts exactly, Σ̂ to rounding). Fit the pieces with
    --thresholds-from FIRST so that their thresholds agree.

    \b
    Example:
      dist-relu fit part1.zarr --out fit1.zarr
      dist-relu fit part2.zarr --thresholds-from fit1.zarr --out fit2.zarr
      dist-relu merge fit1.zarr fit2.zarr --out fit.zarr
    """
    with scheduler(address, workers, log=_log, **tls):
        attributes = merge_fits(list(fits), out, overwrite=overwrite, progress=_want_progress(progress))
    _print_summary(out, attributes, as_json)


@main.command()
@click.argument("source")
@click.option("--out", required=True, help="Zarr group to create (a path or fsspec URL).")
@click.option("--format", "file_format", type=click.Choice(sorted(set(FORMATS.values()))), default=None,
              help="Input format. Default: from the file's suffix.")
@click.option("--dataset", default=None, help="The array inside an .npz or HDF5 file that holds several.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="Rows per Zarr chunk. Default: about 32 MB per chunk (printed).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@click.option("--header/--no-header", default=None,
              help="CSV/TSV: the first line is a header to skip, whatever it holds (--header), or data "
                   "(--no-header). Default: a header when it is not numbers, every cell is filled and some "
                   "cell is a word.")
@_handle_errors
def convert(source, out, file_format, dataset, chunk_rows, overwrite, header):
    """Convert .npy, .npz, CSV/TSV, HDF5 or Parquet samples into a Zarr group for `fit`.

    Streams the input in blocks of rows (it is never loaded whole) into the
    array `samples` of a new Zarr group, chunked by rows. Rows are samples,
    columns coordinates. Objects are never unpickled. HDF5 and Parquet need
    `pip install 'dist_relu[convert]'` (in a checkout: `pip install '.[convert]'`).

    CSV/TSV files are UTF-8 (a byte-order mark is fine) with `,` or tab
    between cells and a point as decimal mark: decimal commas (1,5) and
    empty cells are errors that name the line. A header line is detected
    (see --header), lines starting with # are skipped as comments, blank
    lines are skipped; what was skipped is printed.

    \b
    Example:
      dist-relu convert measurements.csv --out data.zarr
      dist-relu convert run.h5 --dataset activations --out data.zarr --chunk-rows 100000
    """
    summary = convert_file(source, out, format=file_format, dataset=dataset, chunk_rows=chunk_rows,
                           overwrite=overwrite, header=header)
    skipped = []
    if summary["header"] is not None:
        line = summary["header"]
        skipped.append(f"a header line {line if len(line) <= 80 else line[:77] + '...'!r}")
    if summary["comment_lines"]:
        skipped.append(f"{summary['comment_lines']:,} comment line{'s' * (summary['comment_lines'] != 1)}")
    click.echo(f"converted {summary['n_samples']:,} rows × {summary['n_coordinates']} columns of {source} "
               f"({summary['format']}) to {out}/samples, {summary['dtype']}, chunks of {summary['chunk_rows']:,} rows"
               + (f"; skipped {' and '.join(skipped)}" if skipped else ""))


@main.command()
@click.argument("fit_path", metavar="FIT")
@click.option("--truth", required=True,
              help="A store written by `dist-relu simulate`, holding truth/.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_handle_errors
def evaluate(fit_path, truth, as_json):
    """Compare a fit with the truth of simulated data (the paper's metrics).

    err_sigma = ‖Σ̂ − Σ*‖_F / ‖W*‖_F², err_b = ‖b̂ − b*‖₂ / ‖W*‖_F, and the
    upper bound on the total-variation distance sqrt(min KL / 2). For a
    two-layer fit, also anchor_sin_max, the largest sine between a column
    of Â and its matched column of A; the hidden layer's metrics are in the
    fit's gauge (the truth's D W Wᵀ D and D b, D = diag ‖a_l‖).

    \b
    Example:
      dist-relu evaluate fit.zarr --truth sim.zarr
    """
    model, group = open_fit(fit_path)
    _, metrics = _against_truth(fit_path, model, group.attrs.get("model", "relu_gaussian"), truth)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        for name, value in metrics.items():
            click.echo(f"{name:>10} = {value:.3e}" if name in ("anchor_sin_max", "subspace_sine") else
                       f"{name:>10} = {value}" if isinstance(value, int) else f"{name:>10} = {value:.5f}")


def _against_truth(fit_path, model, fitted, truth):
    """Return the truth stored at ``truth`` (a tuple of arrays), and the metrics of ``model`` against it.

    ``fitted`` names the model that ``model`` is a fit of (its ``model`` attribute); ``evaluate`` and
    ``report`` compare with the truth through this one function.
    """
    if fitted == "random_bias_relu":
        truth_values = (open_truth_group(truth)["weights"][:],)
    else:
        truth_values = open_truth(truth)
    if fitted != "random_bias_relu" and (fitted == "two_layer_relu") != (len(truth_values) == 3):
        raise io.InputError(f"{fit_path} is a fit of the {fitted} model; {truth} holds the truth of the "
                            f"{'two' if len(truth_values) == 3 else 'one'}-layer model")
    try:
        return truth_values, model.errors(*truth_values)
    except ValueError as error:
        raise io.InputError(f"{truth} does not match the fit {fit_path}: {error}") from None


@main.command()
@click.argument("fit_path", metavar="FIT")
@click.option("--out", required=True, help="HTML file to create (a path or fsspec URL).")
@click.option("--truth", default=None,
              help="A store written by `dist-relu simulate`: adds the fit's errors against its truth (as "
              "`dist-relu evaluate` gives them) and the estimates plotted against the truth.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report at --out (never any other file).")
@_handle_errors
def report(fit_path, out, truth, overwrite):
    """Write one self-contained HTML file showing how far to trust a one-layer fit.

    It holds the fit's provenance and stage timings; a heatmap of the
    correlations ρ̂ = Σ̂ᵢⱼ / (σ̂ᵢ σ̂ⱼ) (block-averaged to at most 256 × 256
    cells at large d); b̂ and σ̂ per coordinate; the positive fraction and
    status of each coordinate; and the eigenvalues of Σ̂ (is it positive
    semidefinite?). When the fit stores standard errors (`covariance_se`,
    `bias_se`, `scale_se`), a heatmap of those of Σ̂ relative to σ̂ᵢ σ̂ⱼ
    and ±1.96 SE bars on b̂ and σ̂. With --truth, err_sigma, err_b and
    tv_bound and the estimates plotted against the truth.

    Images are embedded: the file refers to nothing outside itself. It
    appears only when complete. Fits of the two-layer and random-bias
    models are refused. Needs matplotlib: `pip install 'dist_relu[report]'`.

    \b
    Example:
      dist-relu report fit.zarr --out report.html
      dist-relu report fit.zarr --out report.html --truth sim.zarr
    """
    reporting.require_matplotlib()
    storage.check_output(out, storage.REPORT_FORMAT, (fit_path, truth), overwrite)  # before reading Σ̂
    fitted = reporting.read_fit(fit_path)
    known = None
    if truth is not None:
        (covariance, bias), metrics = _against_truth(fit_path, fitted.model, fitstore.MODEL, truth)
        known = reporting.Truth(str(truth), covariance, bias, metrics)
    size = reporting.write_report(fitted, out, known, overwrite=overwrite)
    _log(f"wrote {out} ({size / 1e6:.1f} MB)")


@main.command()
@click.option("--n", "n_samples", type=click.IntRange(min=2), default=1_000_000, show_default=True)
@click.option("--d", "dimension", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep the simulated data and the fit here, as samples.zarr and fit.zarr (default: a temporary "
              "directory, removed).")
@click.option("--overwrite", is_flag=True,
              help="Replace samples.zarr and fit.zarr in --workdir if an earlier demo wrote them.")
@_scheduler_options
@_progress_option
@_handle_errors
def demo(n_samples, dimension, seed, workdir, overwrite, address, workers, progress, **tls):
    """Simulate a data set, fit it, and print how close the fit is to the truth.

    \b
    Example:
      dist-relu demo --n 1000000 --d 50
    """
    keep = workdir is not None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="dist-relu-demo-"))
    samples, fit_out = workdir / "samples.zarr", workdir / "fit.zarr"
    show = _want_progress(progress)
    try:
        # Both outputs are checked before either is written: a refusal leaves the directory as it was.
        storage.check_output(samples, storage.SAMPLES_FORMAT, (), overwrite)
        storage.check_output(fit_out, storage.FIT_FORMAT, (), overwrite)
        weights, bias = figure1_truth(dimension, seed=seed)
        with scheduler(address, workers, log=_log, **tls):
            start = time.perf_counter()
            simulate_to_zarr(samples, weights, bias, n_samples, seed=seed, overwrite=overwrite, progress=show)
            simulated = time.perf_counter() - start
            attributes = fit_to_zarr(samples, fit_out, overwrite=overwrite, progress=show)
        model, _ = open_fit(fit_out)
        metrics = model.errors(*open_truth(samples))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    click.echo(f"simulated {n_samples:,} samples × {dimension} coordinates in {simulated:.1f} s")
    click.echo(f"fitted them in {attributes['seconds']:.1f} s (censored MLE, one pass, tetrachoric)")
    click.echo(f"err_sigma = {metrics['err_sigma']:.5f}   (‖Σ̂ − Σ*‖_F / ‖W*‖_F²)")
    click.echo(f"err_b     = {metrics['err_b']:.5f}   (‖b̂ − b*‖₂ / ‖W*‖_F)")
    click.echo(f"tv_bound  = {metrics['tv_bound']:.5f}   (upper bound on the total-variation distance)")
    if keep:
        click.echo(f"data and fit kept in {workdir}")
