"""Which Zarr codec the sample stores should be written with: size on disk, write, read and fit time per codec.

A fit's floor is one read of the store, and a read is mostly decompression.
For each case ``KIND:d:n`` in ``--cases`` the script draws ``n × d`` float32
samples once, as ``dist_relu.simulate_to_zarr`` does
(``graph.simulated_samples(n, *figure1_truth(d, seed=0), 65_536, seed=0)``:
``ReLU(W z + b)`` with ``b ≥ 0``, so many exact zeros), keeps them in an
``.npy`` file, and writes them once per codec configuration (``CODECS``) into
a Zarr v3 group holding ``samples`` in ``--chunk-rows``-row chunks of all d
columns. The kinds:

- ``simulated``: the samples as drawn (float32, full mantissas);
- ``rounded``: the same values rounded to 3 significant decimal digits, as
  real measurements are, then stored as float32 (zeros stay exact zeros);
- ``grid``: the same values rounded to a fixed grid of 10⁻³.

Each step runs in a fresh Python process (``--child``) and is timed by
``steps.run_step`` after its imports, with its CPU seconds (user + system,
both threads). The children have ``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=
MKL_NUM_THREADS=1``, as ``dist-relu`` sets it:

- ``write``: the samples, memory-mapped from the ``.npy`` file (in the page
  cache), stored chunk by chunk with ``da.store`` on local threads into a new
  array with the codec, as ``simulate_to_zarr`` stores its samples (encode and
  write only: no drawing); one write per codec;
- ``read``: ``da.from_zarr(store, component="samples").sum().compute()`` on
  local threads (every codec must give the same sum: the codecs are lossless);
- ``fit``: ``dist_relu.fit_to_zarr(store, out, overwrite=True)``, default
  settings; the parent removes the output before each fit.

Per case: the writes, one untimed fit (it compiles what the numba cache
lacks), then ``--repeats`` rounds, each of one read per codec, then one fit
per codec (``--fit-codecs``; default all), the codecs' order rotated by one
each round. Reported per codec: the bytes on disk and the compression ratio
(raw / stored), the write's seconds, the medians of the reads and fits, read
MB/s (raw MB / read seconds), fit / read, and the ratios of each to the
current default's (``zstd-0``: zarr's default, zstd level 0, no shuffle).
The stores live in the page cache (the machine's memory holds them all), so a
read measures decompression and zarr's work, not the disk.

The choice: among the codecs of the Zarr v3 specification (not
``numcodecs.*``, which other Zarr implementations need not read), those whose
store is within ``--size-limit`` (1.2) times zstd-0's in every case; of these
the one with the smallest geometric mean over the cases of its read's median
over zstd-0's, if that mean is at most ``1 − --min-gain`` (0.95: a smaller
difference is within the runs' noise on a shared machine); else zstd-0. A codec
that stores the same bytes as zstd-0 (zstd level 3: level 0 means zstd's
default, 3) counts as zstd-0. The means of the reads' CPU seconds are reported
beside the wall times'.
Results go to ``benchmarks/results/codecs.{json,png}``.

    PYTHONPATH=. python benchmarks/codec_study.py        # simulated, rounded: d = 1000, n = 262,144; d = 100, n = 1,048,576
    PYTHONPATH=. python benchmarks/codec_study.py --cases grid:100:1048576 --out DIR
    python benchmarks/codec_study.py --quick             # rounded, d = 20, n = 32,768, 2 codecs, one round
    python benchmarks/codec_study.py --plot-only benchmarks/results/codecs.json
"""

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import steps
from fit_vs_read import SINGLE_THREAD_BLAS

READ = "import dask.array as da; TOTAL = da.from_zarr(STORE, component='samples').sum().compute()"
FIT = "import dist_relu; RESULT = dist_relu.fit_to_zarr(STORE, OUT, overwrite=True)"
WRITE = "WRITE()"
REFERENCE = "zstd-0"
KINDS = ("simulated", "rounded", "grid")
DEFAULT_CASES = ("simulated:1000:262144", "rounded:1000:262144", "simulated:100:1048576", "rounded:100:1048576")
QUICK_CODECS = ("zstd-0", "blosc-lz4-shuffle")


# name: (description, the compressors as (factory, keyword arguments) pairs, in order)
CODECS = {
    "none": ("no compression", ()),
    "zstd-0": ("zstd level 0 (zstd's default, level 3), no shuffle: zarr's default", (("zstd", {"level": 0}),)),
    "zstd--1": ("zstd level −1 (zstd's fast levels)", (("zstd", {"level": -1}),)),
    "zstd-1": ("zstd level 1", (("zstd", {"level": 1}),)),
    "zstd-3": ("zstd level 3", (("zstd", {"level": 3}),)),
    "zstd-9": ("zstd level 9", (("zstd", {"level": 9}),)),
    "gzip-1": ("gzip level 1", (("gzip", {"level": 1}),)),
    "blosc-lz4-noshuffle": ("Blosc lz4, clevel 5, no shuffle", (("blosc", {"cname": "lz4", "shuffle": "noshuffle"}),)),
    "blosc-lz4-shuffle": ("Blosc lz4, clevel 5, byte shuffle", (("blosc", {"cname": "lz4", "shuffle": "shuffle"}),)),
    "blosc-lz4-bitshuffle": ("Blosc lz4, clevel 5, bit shuffle",
                             (("blosc", {"cname": "lz4", "shuffle": "bitshuffle"}),)),
    "blosc-zstd-shuffle": ("Blosc zstd, clevel 5, byte shuffle", (("blosc", {"cname": "zstd", "shuffle": "shuffle"}),)),
    "blosc-zstd-bitshuffle": ("Blosc zstd, clevel 5, bit shuffle",
                              (("blosc", {"cname": "zstd", "shuffle": "bitshuffle"}),)),
    "blosc-zstd1-shuffle": ("Blosc zstd, clevel 1, byte shuffle",
                            (("blosc", {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}),)),
    "blosc-zstd1-bitshuffle": ("Blosc zstd, clevel 1, bit shuffle",
                               (("blosc", {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"}),)),
    "blosc-zstd1-shuffle-4MB": ("Blosc zstd, clevel 1, byte shuffle, blocks of 4 MiB",
                                (("blosc", {"cname": "zstd", "clevel": 1, "shuffle": "shuffle", "blocksize": 2**22}),)),
    "numcodecs-lz4": ("numcodecs LZ4 (not in the Zarr v3 spec)", (("numcodecs.LZ4", {}),)),
    "numcodecs-shuffle-zstd-1": ("numcodecs byte shuffle (not in the Zarr v3 spec), then zstd level 1",
                                 (("numcodecs.Shuffle", {"elementsize": 4}), ("zstd", {"level": 1}))),
}


def codec_options(name):
    """Return ``create_array``'s keyword argument ``compressors`` for the codec configuration ``name``."""
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
    from zarr.codecs import numcodecs as zarr_numcodecs

    factories = {"zstd": ZstdCodec, "gzip": GzipCodec, "blosc": lambda **options: BloscCodec(typesize=4, **options),
                 "numcodecs.LZ4": zarr_numcodecs.LZ4, "numcodecs.Shuffle": zarr_numcodecs.Shuffle}
    compressors = [factories[factory](**options) for factory, options in CODECS[name][1]]
    return {"compressors": compressors or None}


def in_v3_spec(name):
    return not name.startswith("numcodecs-")


def round_significant(x, digits=3):
    """Round positive float32 values to ``digits`` significant decimal digits (zeros stay 0), in place, by blocks."""
    import numpy as np

    for start in range(0, x.shape[0], 65_536):
        block = x[start:start + 65_536].astype(np.float64)
        positive = block > 0
        exponent = np.zeros_like(block)
        exponent[positive] = np.floor(np.log10(block[positive]))
        scale = 10.0 ** (digits - 1 - exponent)
        x[start:start + 65_536] = np.where(positive, np.round(block * scale) / scale, 0.0)
    return x


def round_grid(x, step=1e-3):
    import numpy as np

    for start in range(0, x.shape[0], 65_536):
        x[start:start + 65_536] = np.round(x[start:start + 65_536].astype(np.float64) / step) * step
    return x


def child(step, store, out, npy, codec, chunk_rows):
    """Run one step here; print ``steps.run_step``'s record with the CPU seconds and the read's sum."""
    import dask.array as da
    import numpy as np
    import zarr

    import dist_relu

    def write():
        x = np.load(npy, mmap_mode="r")
        group = zarr.open_group(store, mode="w")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numcodecs.* are not in the v3 spec: zarr says so once per array
            array = group.create_array("samples", shape=x.shape, dtype=x.dtype, chunks=(int(chunk_rows), x.shape[1]),
                                       config={"write_empty_chunks": True}, **codec_options(codec))
        da.store(da.from_array(x, chunks=(int(chunk_rows), x.shape[1])), array, lock=False)

    namespace = {"STORE": store, "OUT": out, "WRITE": write}
    code = {"write": WRITE, "read": READ, "fit": FIT}[step]
    printed = io.StringIO()
    cpu = os.times()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps.run_step(code, namespace)
    cpu_seconds = sum(os.times()[:2]) - sum(cpu[:2])
    record = json.loads(printed.getvalue().strip().splitlines()[-1])
    record.update(cpu_seconds=cpu_seconds, dist_relu_file=dist_relu.__file__)
    if "TOTAL" in namespace:
        record["sum"] = float(namespace["TOTAL"])
    print(json.dumps(record))


def directory_bytes(path):
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run(step, store, out, npy, codec, chunk_rows):
    """Run ``step`` in a fresh process; return its record with the load average before it."""
    load = os.getloadavg()
    record = steps.measure(__file__, step, [store, out, npy, codec, chunk_rows],
                           env={**os.environ, **SINGLE_THREAD_BLAS}, attempts=2)
    record["load_average_before"] = load
    return record


def parse_case(text):
    kind, d, n = text.split(":")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return kind, int(d), int(float(n))


def draw(kind, d, n, chunk_rows, path):
    """Draw the samples as ``simulate_to_zarr`` does, round them for ``kind``, save them at ``path``; describe them."""
    import numpy as np

    import dist_relu
    from dist_relu import graph

    weights, bias = dist_relu.figure1_truth(d, seed=0)
    x = graph.simulated_samples(n, weights, bias, chunk_rows, 0, np.float32).compute()
    if kind == "rounded":
        round_significant(x)
    elif kind == "grid":
        round_grid(x)
    np.save(path, x)
    sample = x[:65_536]
    return {"zero_fraction": float((x == 0).mean()), "distinct_values_first_65536_rows": int(np.unique(sample).size),
            "max": float(x.max())}


def median(records, key):
    return statistics.median(r[key] for r in records)


def summarise(case, codecs):
    """Per codec: size, ratio, write, read and fit medians, and their ratios to zstd-0's."""
    raw_mb = case["n"] * case["d"] * 4 / 1e6
    summary = {}
    for codec in codecs:
        stored = case["stored_bytes"][codec]
        reads = case["reads"][codec]
        fits = case["fits"].get(codec, [])
        s = {"stored_mb": stored / 1e6, "compression_ratio": case["n"] * case["d"] * 4 / stored,
             "write_seconds": case["writes"][codec]["seconds"],
             "write_cpu_seconds": case["writes"][codec]["cpu_seconds"],
             "read_seconds": median(reads, "seconds"), "read_cpu_seconds": median(reads, "cpu_seconds"),
             "read_seconds_range": [min(r["seconds"] for r in reads), max(r["seconds"] for r in reads)]}
        s["read_mb_per_second"] = raw_mb / s["read_seconds"]
        if fits:
            s.update(fit_seconds=median(fits, "seconds"), fit_cpu_seconds=median(fits, "cpu_seconds"),
                     fit_seconds_range=[min(r["seconds"] for r in fits), max(r["seconds"] for r in fits)],
                     fit_pass_seconds=statistics.median(r["timings"].get("pass", 0.0) for r in fits))
            s["fit_over_read"] = s["fit_seconds"] / s["read_seconds"]
        summary[codec] = s
    base = summary[REFERENCE]
    for s in summary.values():
        s["size_over_reference"] = s["stored_mb"] / base["stored_mb"]
        s["write_over_reference"] = s["write_seconds"] / base["write_seconds"]
        s["read_over_reference"] = s["read_seconds"] / base["read_seconds"]
        s["read_cpu_over_reference"] = s["read_cpu_seconds"] / base["read_cpu_seconds"]
        if "fit_seconds" in s and "fit_seconds" in base:
            s["fit_over_reference"] = s["fit_seconds"] / base["fit_seconds"]
    # Paired: each read over the zstd-0 read of its round.
    for codec in codecs:
        paired = [r["seconds"] / r0["seconds"] for r, r0 in zip(case["reads"][codec], case["reads"][REFERENCE])]
        summary[codec]["read_paired_over_reference"] = paired
    return summary


def geometric_mean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def choose(cases, codecs, size_limit, min_gain):
    """Return the choice: of the v3-spec codecs within ``size_limit`` × zstd-0's size, the fastest to read.

    A codec replaces zstd-0 only if its reads take at most ``1 − min_gain``
    times zstd-0's (geometric mean over the cases of the ratios of the
    medians); a codec that stores the same bytes as zstd-0 in every case
    (zstd level 3 is zstd's default, which level 0 means) is zstd-0.
    Every codec's means are reported, wall and CPU.
    """
    ranking = {}
    for codec in codecs:
        summaries = [c["summary"][codec] for c in cases]
        same_bytes = codec != REFERENCE and all(c["stored_bytes"][codec] == c["stored_bytes"][REFERENCE]
                                                for c in cases)
        ranking[codec] = {
            "read_over_reference": geometric_mean(s["read_over_reference"] for s in summaries),
            "read_cpu_over_reference": geometric_mean(s["read_cpu_over_reference"] for s in summaries),
            "largest_size_over_reference": max(s["size_over_reference"] for s in summaries),
            "in_v3_spec": in_v3_spec(codec), "same_bytes_as_reference": same_bytes,
        }
        ranking[codec]["eligible"] = (in_v3_spec(codec) and not same_bytes
                                      and ranking[codec]["largest_size_over_reference"] <= size_limit)
    eligible = {c: r["read_over_reference"] for c, r in ranking.items() if r["eligible"]}
    best = min(eligible, key=eligible.get)
    chosen = best if eligible[best] <= 1 - min_gain else REFERENCE
    return {"size_limit": size_limit, "min_gain": min_gain, "ranking": ranking, "fastest_eligible": best,
            "chosen": chosen,
            "rule": f"the fastest read (geometric mean over the cases of the median read / {REFERENCE}'s) among the "
                    f"v3-spec codecs within {size_limit}× {REFERENCE}'s size in every case, if at most "
                    f"{1 - min_gain:g}; else {REFERENCE}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=parse_case, nargs="+", default=[parse_case(c) for c in DEFAULT_CASES],
                        metavar="KIND:D:N")
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    parser.add_argument("--fit-codecs", nargs="+", default=None,
                        help="the codecs whose stores are fitted (default: all)")
    parser.add_argument("--chunk-rows", type=int, default=65_536, help="rows per chunk (dist-relu simulate's default)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of reads and fits per case")
    parser.add_argument("--size-limit", type=float, default=1.2,
                        help="the largest store, relative to zstd-0's, that the default may write")
    parser.add_argument("--min-gain", type=float, default=0.05,
                        help="how much faster than zstd-0's a read must be to replace it (the runs' noise)")
    parser.add_argument("--workdir", default=None)
    steps.add_result_options(parser, f"rounded samples, d = 20, n = 32,768, 8,192-row chunks, codecs "
                                     f"{', '.join(QUICK_CODECS)}, one round, no warm-up fit")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if steps.replotted(args, plot):
        return
    warm_up = True
    if args.quick:
        args.cases, args.codecs = [("rounded", 20, 32_768)], list(QUICK_CODECS)
        args.chunk_rows, args.repeats, warm_up = 8_192, 1, False
    if REFERENCE not in args.codecs:
        args.codecs.insert(0, REFERENCE)
    fit_codecs = [c for c in args.codecs if args.fit_codecs is None or c in args.fit_codecs or c == REFERENCE]

    import dask
    import numcodecs
    import numpy as np
    import zarr

    import dist_relu

    load_before = os.getloadavg()
    fingerprint_before = steps.package_fingerprint()
    started = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dist-relu-codecs-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"dist_relu from {dist_relu.__file__}; load {load_before[0]:.2f}", flush=True)
    cases = []
    try:
        for kind, d, n in args.cases:
            npy = str(workdir / f"{kind}-d{d}-n{n}.npy")
            out = str(workdir / "fit.zarr")
            stores = {c: str(workdir / f"{kind}-d{d}-n{n}-{c}.zarr") for c in args.codecs}
            start = time.perf_counter()
            data = draw(kind, d, n, args.chunk_rows, npy)
            print(f"\n{kind}, d = {d}, n = {n:,}: drawn in {time.perf_counter() - start:.1f} s, "
                  f"{data['zero_fraction']:.1%} zeros, {data['distinct_values_first_65536_rows']:,} distinct values "
                  f"in the first 65,536 rows", flush=True)
            case = {"kind": kind, "d": d, "n": n, "chunk_rows": args.chunk_rows, "n_chunks": -(-n // args.chunk_rows),
                    "raw_mb": n * d * 4 / 1e6, "data": data, "writes": {}, "stored_bytes": {}, "metadata": {},
                    "reads": {c: [] for c in args.codecs}, "fits": {c: [] for c in fit_codecs}}
            for codec in args.codecs:
                r = run("write", stores[codec], out, npy, codec, args.chunk_rows)
                case["writes"][codec] = r
                case["stored_bytes"][codec] = directory_bytes(Path(stores[codec]) / "samples")
                meta = json.loads((Path(stores[codec]) / "samples" / "zarr.json").read_text())
                case["metadata"][codec] = meta["codecs"]
                print(f"  write {codec:<26} {r['seconds']:6.2f} s (CPU {r['cpu_seconds']:6.2f} s, load "
                      f"{r['load_average_before'][0]:.2f}), {case['stored_bytes'][codec] / 1e6:8.1f} MB, ratio "
                      f"{case['raw_mb'] * 1e6 / case['stored_bytes'][codec]:.2f}", flush=True)
            if warm_up:
                r = run("fit", stores[REFERENCE], out, npy, REFERENCE, args.chunk_rows)
                case["warm_up_fit"] = r
                print(f"  warm-up fit {r['seconds']:.2f} s", flush=True)
            for repeat in range(args.repeats):
                k = repeat % len(args.codecs)
                order = args.codecs[k:] + args.codecs[:k]
                for codec in order:
                    r = run("read", stores[codec], out, npy, codec, args.chunk_rows)
                    case["reads"][codec].append(r)
                    print(f"  round {repeat + 1} read {codec:<26} {r['seconds']:6.2f} s (CPU {r['cpu_seconds']:6.2f} s,"
                          f" load {r['load_average_before'][0]:.2f})", flush=True)
                for codec in [c for c in order if c in fit_codecs]:
                    shutil.rmtree(out, ignore_errors=True)
                    r = run("fit", stores[codec], out, npy, codec, args.chunk_rows)
                    case["fits"][codec].append(r)
                    print(f"  round {repeat + 1} fit  {codec:<26} {r['seconds']:6.2f} s (CPU {r['cpu_seconds']:6.2f} s,"
                          f" load {r['load_average_before'][0]:.2f})", flush=True)
            sums = {c: rs[0]["sum"] for c, rs in case["reads"].items()}
            case["same_sum_every_codec"] = len(set(sums.values())) == 1
            if not case["same_sum_every_codec"]:
                print(f"WARNING: the codecs' sums differ: {sums}")
            case["summary"] = summarise(case, args.codecs)
            cases.append(case)
            for path in [npy, out, *stores.values()]:
                shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    record = {
        "benchmark": "codecs",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "dtype": "float32", "chunking": f"{args.chunk_rows:,}-row chunks, all columns in one chunk",
        "scheduler": "local threads (dask's default)", "repeats": args.repeats, "reference": REFERENCE,
        "codecs": {c: {"description": CODECS[c][0], "in_v3_spec": in_v3_spec(c)} for c in args.codecs},
        "fit_codecs": fit_codecs,
        "steps": {"write": "da.store(da.from_array(np.load(npy, mmap_mode='r'), chunks), group.create_array("
                           "'samples', ..., config={'write_empty_chunks': True}, compressors=...), lock=False)",
                  "read": READ, "fit": FIT},
        "warm_up": warm_up,
        "order": "per case: the writes, one untimed fit (unless --quick), then rounds of one read per codec and "
                 "one fit per codec, the order rotated by one each round; each step a fresh process",
        "child_environment": SINGLE_THREAD_BLAS,
        "machine": steps.machine(load_before, cpu=steps.cpu_model()),
        "package_sources_sha256": {"before": fingerprint_before, "after": steps.package_fingerprint()},
        "versions": {"dist_relu": dist_relu.__version__, "numpy": np.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__, "numcodecs": numcodecs.__version__},
        "cases": cases,
    }
    record["choice"] = choose(cases, args.codecs, args.size_limit, args.min_gain)
    steps.write_results(record, args.out, "codecs_quick" if args.quick else "codecs", print_table, plot)


def case_label(case):
    return f"{case['kind']}, d = {case['d']}, n = {case['n']:,}"


def print_table(record):
    print(f"\nfloat32, {record['chunking']}, {record['scheduler']} ({record['machine']['cores']} cores); "
          f"medians of {record['repeats']} interleaved rounds, each step a fresh process")
    print(f"{'case':<34}{'codec':<26}{'ratio':>7}{'MB':>9}{'/zstd0':>8}{'write s':>9}{'read s':>8}{'/zstd0':>8}"
          f"{'read CPU':>9}{'MB/s':>7}{'fit s':>8}{'/zstd0':>8}{'fit/read':>9}")
    for case in record["cases"]:
        for codec, s in case["summary"].items():
            fit = (f"{s['fit_seconds']:>8.2f}{s.get('fit_over_reference', float('nan')):>8.3f}"
                   f"{s['fit_over_read']:>9.2f}"
                   if "fit_seconds" in s else f"{'—':>8}{'—':>8}{'—':>9}")
            print(f"{case_label(case):<34}{codec:<26}{s['compression_ratio']:>7.2f}{s['stored_mb']:>9.1f}"
                  f"{s['size_over_reference']:>8.2f}{s['write_seconds']:>9.2f}{s['read_seconds']:>8.2f}"
                  f"{s['read_over_reference']:>8.3f}{s['read_cpu_seconds']:>9.2f}{s['read_mb_per_second']:>7.0f}{fit}")
    choice = record["choice"]
    print(f"\ngeometric means over the cases, / {REFERENCE}'s: read (wall), read (CPU); the largest size / "
          f"{REFERENCE}'s; eligible (v3 spec, size within {choice['size_limit']}×, not {REFERENCE}'s bytes)")
    for codec, r in sorted(choice["ranking"].items(), key=lambda item: item[1]["read_over_reference"]):
        print(f"  {codec:<26}{r['read_over_reference']:>7.3f}{r['read_cpu_over_reference']:>7.3f}"
              f"{r['largest_size_over_reference']:>7.2f}  {'eligible' if r['eligible'] else ''}")
    print(f"chosen: {choice['chosen']} ({choice['rule']})")
    m = record["machine"]
    print(f"load average before {m['load_average_before'][0]:.2f}, after {m['load_average_after'][0]:.2f}")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = record["cases"]
    fig, axes = plt.subplots(2, len(cases), figsize=(5.2 * len(cases), 10), squeeze=False)
    chosen = record["choice"]["chosen"]
    for column, case in enumerate(cases):
        summary = case["summary"]
        codecs = list(summary)
        ax = axes[0][column]
        y = range(len(codecs))
        reads = [summary[c]["read_seconds"] for c in codecs]
        fits = [summary[c].get("fit_seconds", 0.0) for c in codecs]
        ax.barh([i + 0.2 for i in y], fits, 0.4, color="#1f77b4", label="fit (median)")
        ax.barh([i - 0.2 for i in y], reads, 0.4, color="#888888", label="read (median)")
        for i, c in enumerate(codecs):
            s = summary[c]
            text = f"×{s['compression_ratio']:.2f}, read {s['read_mb_per_second']:.0f} MB/s"
            if "fit_over_read" in s:
                text += f", fit/read {s['fit_over_read']:.2f}"
            ax.annotate(text, (max(reads[i], fits[i]), i), xytext=(3, -3), textcoords="offset points", fontsize=6)
        ax.set_yticks(list(y), [c + (" (chosen)" if c == chosen else "") for c in codecs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.9 * max(max(reads), max(fits)))
        ax.set_xlabel("seconds")
        ax.set_title(f"{case_label(case)}\n{case['raw_mb']:.0f} MB raw, {case['n_chunks']} chunks; "
                     f"×ratio = raw / stored", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax = axes[1][column]
        for c in codecs:
            s = summary[c]
            colour = "#d62728" if c == chosen else ("#2ca02c" if c == REFERENCE else "#1f77b4")
            ax.plot(s["compression_ratio"], s["read_mb_per_second"], "o", color=colour)
            ax.annotate(c, (s["compression_ratio"], s["read_mb_per_second"]), xytext=(3, 2),
                        textcoords="offset points", fontsize=6)
        base = summary[REFERENCE]
        limit = base["compression_ratio"] / record["choice"]["size_limit"]
        ax.axvline(limit, color="#888888", linestyle="dashed", lw=0.8, label=f"{REFERENCE}'s size × "
                                                                            f"{record['choice']['size_limit']}")
        ax.set_xlabel("compression ratio (raw / stored)")
        ax.set_ylabel("read MB/s (raw MB / median read seconds)")
        ax.legend(fontsize=7)
    fig.suptitle(f"codecs of the sample stores: float32, {record['chunking']},\n{record['scheduler']}, "
                 f"{record['machine']['cores']} cores, {record['date'][:10]}; chosen: {chosen}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
