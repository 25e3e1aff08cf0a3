"""The fit format: what a fit's Zarr group holds, the one writer of fits, and the checks of update and merge.

A fit is a Zarr group with the attribute ``format = "dist_relu.fit"``. It
holds the estimates (``covariance``, ``bias``, ``scale``, ``status``,
``positive_fraction``, ``rows_dropped`` with ``drop_nonfinite``) and the
fit's additive state, the ``Sums`` of its samples: ``thresholds``,
``counts``, the sufficient statistics (one array per ``kernels.STATISTICS``)
in units ``2**statistics_exponent``, and ``value_problems`` for one-pass
fits. Its attributes are the settings it was made with and its provenance
(``provenance``). docs/design.md §4 says why each part is kept.

Every fit is written through an output: ``ZarrOutput`` (a new group, inside
``storage.atomic_output``) or ``MemoryOutput`` (``ReLUGaussian.fit``), which
store the same arrays under the same names, so one orchestration writes
both and ``ReLUGaussian.save`` writes what ``dist-relu fit`` writes.
"""

import contextlib
import datetime
import functools
import operator
import uuid
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import zarr

from . import __version__, graph, io, kernels, storage
from .model import RandomBiasModel, RectifiedGaussian, TwoLayerRectifiedGaussian
from .scheduler import compute

FORMAT = storage.FIT_FORMAT
FORMAT_VERSION = 1
MODEL = "relu_gaussian"  # x = ReLU(W z + b), z ~ N(0, I)
TWO_LAYER_MODEL = "two_layer_relu"  # x = A ReLU(W z + b): mixing, anchor_rows, and hidden/ in this layout
RANDOM_BIAS_MODEL = "random_bias_relu"  # y = ReLU(A c + b): components, mixing, bias, status, loss, change


@dataclass(frozen=True)
class GroupSums:
    """The jackknife's state: the statistics and counts of each of ``G`` groups of rows, which add up to the fit's.

    In the units of the ``Sums`` they belong to; lazy, the groups on axis 0.
    """

    statistics: da.Array  # (G, d, 4)
    counts: da.Array  # (G, d, d) int64


@dataclass(frozen=True)
class Sums:
    """The additive state of a fit: sums over its samples, which add when fits of more samples are combined.

    Lazy dask arrays in column blocks, from a pass over samples or read from
    a stored fit.
    """

    statistics: da.Array  # (d, 4): n0, n1, S1, S2 per coordinate, the sums in units 2**statistics_exponent
    statistics_exponent: da.Array  # (d,) int64
    counts: da.Array  # (d, d) int64 co-exceedance counts
    value_problems: da.Array | None  # (d, 2) negative and non-finite values; None: not checked (two passes)
    rows_kept: int | da.Array  # rows summed; lazy (0-d) when rows with NaN or ±inf are dropped in the pass
    rows_read: int
    moments: da.Array | None = None  # (d, 2): Σ x³, Σ x⁴ of the positives, units as statistics; None: not kept
    groups: GroupSums | None = None  # the jackknife's groups; None: not kept


def total(sums):
    """Return the ``Sums`` of all ``sums`` together: statistics brought to common units, then added.

    Each part's sums are in its own units ``2**statistics_exponent``; they
    are brought to the largest units of any part, per column, by exact powers
    of two before adding. ``value_problems``, ``moments`` and ``groups`` are
    kept only if every part has them; group ``g`` of the total is every
    part's group ``g``.
    """
    if len(sums) == 1:
        return sums[0]
    exponents = functools.reduce(da.maximum, [da.asarray(part.statistics_exponent) for part in sums])
    statistics = functools.reduce(operator.add, [
        graph.rescaled_statistics(part.statistics, part.statistics_exponent, exponents) for part in sums])
    problems = [part.value_problems for part in sums]
    moments = None
    if all(part.moments is not None for part in sums):
        moments = functools.reduce(operator.add, [
            graph.rescaled_moments(part.moments, part.statistics_exponent, exponents) for part in sums])
    groups = None
    if all(part.groups is not None for part in sums):
        groups = GroupSums(
            functools.reduce(operator.add, [graph.rescaled_group_statistics(part.groups.statistics,
                                                                            part.statistics_exponent, exponents)
                                            for part in sums]),
            functools.reduce(operator.add, [part.groups.counts for part in sums]))
    return Sums(statistics, exponents, functools.reduce(operator.add, [part.counts for part in sums]),
                None if any(p is None for p in problems) else functools.reduce(operator.add, problems),
                functools.reduce(operator.add, [part.rows_kept for part in sums]),
                sum(part.rows_read for part in sums), moments, groups)


# The stored names of ``Sums.moments``' columns.
MOMENTS = ("sum_cube_positive", "sum_fourth_positive")


def sums_arrays(sums, thresholds, cut_points=None):
    """Return the arrays that store ``sums`` counted at ``thresholds``, by their names in the group.

    With ``cut_points`` ``(d, K)``, ``K > 1``, the sums' counts are those of
    every cut point, ``(K·d, K·d)``: stored as ``cut_counts``, with the
    cut points, and ``counts`` those of the thresholds, each one of its
    coordinate's cut points (``graph.threshold_counts``).
    """
    arrays = {"counts": sums.counts, "thresholds": thresholds, "statistics_exponent": sums.statistics_exponent}
    if cut_points is not None:
        arrays.update(counts=graph.threshold_counts(sums.counts, cut_points, thresholds), cut_counts=sums.counts,
                      cut_points=cut_points)
    arrays.update({name: sums.statistics[:, k] for k, name in enumerate(kernels.STATISTICS)})
    if sums.value_problems is not None:
        arrays["value_problems"] = sums.value_problems
    if sums.moments is not None:
        arrays.update({name: sums.moments[:, k] for k, name in enumerate(MOMENTS)})
    if sums.groups is not None:
        arrays.update(group_statistics=sums.groups.statistics, group_counts=sums.groups.counts)
    return arrays


class ZarrOutput:
    """A fit's Zarr group: ``create`` a new one (inside ``storage.atomic_output``'s partial directory)."""

    def __init__(self, group, path=None):
        self.group = group
        self.path = path  # where it was created, for its subgroups

    @classmethod
    def create(cls, path):
        return cls(io.new_group(path), str(path))

    def subgroup(self, name):
        """Return a new ``ZarrOutput`` for the group ``name`` inside this one."""
        return ZarrOutput.create(f"{self.path}/{name}")

    def store(self, arrays, also=(), progress=False):
        """Write ``arrays`` (dask arrays block by block); return the values of ``also``, computed in the same graph."""
        return io.store_arrays(self.group, arrays, progress=progress, also=also)

    def lazy(self, name, chunks):
        """Return the stored array ``name`` as a dask array in ``chunks``."""
        return io.lazy_array(self.group[name]).rechunk(chunks)

    def read(self, name):
        return self.group[name][...]

    def has(self, name):
        return name in self.group

    def finish(self, attributes):
        self.group.update_attributes(attributes)  # one metadata write, not one per key


class MemoryOutput:
    """A fit kept in memory, as numpy arrays under the names a stored fit gives them."""

    def __init__(self):
        self.arrays = {}
        self.attributes = None

    def store(self, arrays, also=(), progress=False):
        values = compute(*arrays.values(), *also, progress=progress)
        self.arrays.update(zip(arrays, values[:len(arrays)]))
        return values[len(arrays):]

    def lazy(self, name, chunks):
        return da.from_array(self.arrays[name], chunks=chunks)

    def read(self, name):
        return self.arrays[name]

    def has(self, name):
        return name in self.arrays

    def finish(self, attributes):
        self.attributes = attributes


@contextlib.contextmanager
def zarr_output(out, inputs, overwrite):
    """Yield a new ``ZarrOutput`` that appears at ``out`` only when complete (``storage.atomic_output``)."""
    with storage.atomic_output(out, FORMAT, inputs, overwrite) as partial:
        yield ZarrOutput.create(partial)


def stored_statistics(output, column_block):
    """Return an output's sufficient statistics as one lazy ``(d, 4)`` array in column blocks."""
    columns = [output.lazy(name, column_block) for name in kernels.STATISTICS]
    return da.stack(columns, axis=1).rechunk((column_block, 4))


def provenance(record, seconds, timings, source=None, data=None, model=MODEL):
    """Return the attributes of a fit: its format, model, identity and provenance, then ``record`` (how it was made)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "fit_id": uuid.uuid4().hex,  # what merge and update know this fit by
        "data": data,  # io.stored_data of the samples, when known
        "dist_relu_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "timings": dict(timings),
        "source": None if source is None else str(source),
        "versions": {"numpy": np.__version__, "dask": dask.__version__, "zarr": zarr.__version__},
        **record,
    }


def open_fit_group(path):
    """Return the Zarr group of a stored fit, refusing anything else."""
    where = storage.location(path)
    if not where.exists():
        raise io.InputError(f"{path}: no such file or directory")
    try:
        group = zarr.open_group(where.url, mode="r")
    except Exception as error:
        raise io.InputError(f"{path}: not a Zarr group ({error})") from error
    if group.attrs.get("format") != FORMAT:
        raise io.InputError(f"{path} is not a dist_relu fit (no format attribute {FORMAT!r})")
    return group


def open_fit(path):
    """Open a fit written by ``dist-relu fit``, ``fit_to_zarr``, ``merge_fits`` or an estimator's ``save``.

    Parameters
    ----------
    path : str or Path
        The fit's group (a path or fsspec URL).

    Returns
    -------
    model : RectifiedGaussian, TwoLayerRectifiedGaussian or RandomBiasModel
        The fitted distribution, read into memory.
    group : zarr.Group
        The group, read-only: its arrays and attributes.
    """
    group = open_fit_group(path)
    if group.attrs.get("model") == TWO_LAYER_MODEL:
        hidden = group["hidden"]
        return TwoLayerRectifiedGaussian(group["mixing"][:], hidden["covariance"][:], hidden["bias"][:]), group
    if group.attrs.get("model") == RANDOM_BIAS_MODEL:
        return RandomBiasModel(group["mixing"][:], group["bias"][:], group["status"][:]), group
    return RectifiedGaussian(group["covariance"][:], group["bias"][:]), group


def stored_sums(group, column_block):
    """Return the ``Sums`` of a stored fit, lazily, in column blocks of ``column_block``."""
    output = ZarrOutput(group)
    if "statistics_exponent" in group:
        exponents = output.lazy("statistics_exponent", column_block)
    else:  # fits stored before the units were kept: units of 1
        exponents = da.zeros(group["sum_positive"].shape, chunks=column_block, dtype=np.int64)
    problems = output.lazy("value_problems", (column_block, 2)) if "value_problems" in group else None
    moments = None
    if all(name in group for name in MOMENTS):  # fits stored before the model check have none
        moments = da.stack([output.lazy(name, column_block) for name in MOMENTS], axis=1).rechunk((column_block, 2))
    # With cut points, the counts are those of every cut point, in blocks K times as wide.
    counted = column_block * (group["cut_points"].shape[1] if "cut_points" in group else 1)
    groups = None
    if "group_counts" in group:
        n_groups = group["group_counts"].shape[0]
        groups = GroupSums(output.lazy("group_statistics", (n_groups, column_block, 4)),
                           output.lazy("group_counts", (n_groups, counted, counted)))
    kept = int(group.attrs["n_samples"])
    counts = output.lazy("cut_counts" if "cut_points" in group else "counts", counted)
    return Sums(stored_statistics(output, column_block), exponents, counts, problems,
                kept, kept + int(group.attrs.get("rows_dropped") or 0), moments, groups)


def stored_cut_points(group):
    """Return the ``(d, K)`` cut points a stored fit counted at, or None for a fit of one cut point."""
    return group["cut_points"][:] if "cut_points" in group else None


# The settings that new samples added to a stored fit must be counted with.
ADDITIVE_SETTINGS = ("method", "inversion", "clip_bias", "drop_nonfinite", "split_every", "column_block",
                     "jackknife_groups", "cuts")
# What a setting was before it was stored: no jackknife, one cut point (stored only when K > 1).
_UNSTORED = {"jackknife_groups": 0, "cuts": 1}


def additive_settings(group):
    """Return the ``ADDITIVE_SETTINGS`` a stored fit was made with (``_UNSTORED`` where it has none)."""
    return {key: group.attrs.get(key, _UNSTORED[key]) if key in _UNSTORED else group.attrs[key]
            for key in ADDITIVE_SETTINGS}


def check_additive(groups, d):
    """Raise ``InputError`` unless the stored fits can take more samples: one pass, additive, same thresholds."""
    for group in groups:
        attrs = group.attrs
        if attrs.get("model", MODEL) != MODEL:
            raise io.InputError(f"{group.store_path} is a fit of the model {attrs['model']}: only fits of the "
                                "one-layer model can be updated or merged")
        if attrs["method"] == "sgd" or attrs["passes"] != 1:
            raise io.InputError(
                f"{group.store_path} was fitted with --method {attrs['method']} --passes {attrs['passes']}: only "
                "one-pass fits with the censored or truncated likelihood hold additive state (the SGD's "
                "estimates and a first pass's thresholds are not sums)")
        if attrs["n_coordinates"] != d:
            raise io.InputError(f"{group.store_path} has {attrs['n_coordinates']} coordinates; the data has {d}")
        # Its counts are read at each coordinate's threshold among its cut points (graph.threshold_counts).
        if "cut_points" in group and not (group["cut_points"][:] == group["thresholds"][:][:, None]).any(axis=1).all():
            raise io.InputError(f"{group.store_path}: its thresholds are not among its cut points; the fit has been "
                                "altered since dist_relu wrote it")
    first = groups[0]
    for group in groups[1:]:
        settings, first_settings = additive_settings(group), additive_settings(first)
        for key in ("method", "inversion", "clip_bias", "drop_nonfinite", "jackknife_groups", "cuts"):
            if settings[key] != first_settings[key]:
                raise io.InputError(f"{group.store_path} and {first.store_path} differ in {key}: "
                                    f"{settings[key]!r} and {first_settings[key]!r}")
        if not np.array_equal(group["thresholds"][:], first["thresholds"][:]):
            raise io.InputError(
                f"{group.store_path} and {first.store_path} were counted at different thresholds: fit the "
                "pieces with the thresholds of one of them (--thresholds-from FIT) to merge them")
        if "cut_points" in group and not np.array_equal(group["cut_points"][:], first["cut_points"][:]):
            raise io.InputError(
                f"{group.store_path} and {first.store_path} were counted at different cut points: fit the "
                "pieces with the cut points of one of them (--thresholds-from FIT) to merge them")


def part(source, n_samples, created, data, fit_id=None):
    """Return the record of one piece of samples that a fit holds."""
    return {"source": None if source is None else str(source), "n_samples": n_samples, "created": created,
            "data": data, "fit_id": fit_id}


def parts(groups, new=None):
    """Return the pieces a merged fit is made of: each stored fit's (or its own pieces), then ``new``.

    Raises ``InputError`` when a piece would be counted twice: the same
    stored fit, or samples with the same identity (``io.data_identity``).
    """
    pieces, holders = [], []
    for group in groups:
        attrs = group.attrs
        own = attrs.get("parts") or [part(attrs.get("source"), attrs["n_samples"], attrs.get("created"),
                                          attrs.get("data"), attrs.get("fit_id"))]
        pieces.extend(own)
        holders.extend([group.store_path] * len(own))
    if new:
        pieces.append(new)
        holders.append("the new samples")
    seen = {}
    for piece, holder in zip(pieces, holders):
        # Fits written before fits had identities are known by their source and creation time.
        keys = [("fit", piece.get("fit_id") or f"{piece['source']}@{piece['created']}")] if piece is not new else []
        keys += [("data", piece["data"])] if piece.get("data") else []
        for key in keys:
            if key in seen and seen[key][1] is not holder:
                raise io.InputError(
                    f"the samples of {piece['source'] or 'an in-memory array'} would be counted twice: they are in "
                    f"{seen[key][1]} and in {holder}; merge and update take each piece once")
            seen[key] = (piece, holder)
    return pieces
