"""Measuring one step of a benchmark in a fresh Python process: its seconds and its own peak memory.

A script runs itself with ``--child STEP ARGS...``; the child imports what the
step needs, resets the kernel's high-water mark of resident memory (Linux:
writing "5" to /proc/self/clear_refs), runs the step's code and prints one
JSON line. Imports peak transiently above where they settle, so the peak is
reported above the resident memory after them.
"""

import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple


def status_kb(field):
    """Return a field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def run_step(code, namespace, setup=None):
    """Run ``code`` in ``namespace`` here; print JSON with its seconds, peak and baseline memory (MB).

    The record also has the process's minor page faults and user and system
    CPU seconds (all threads) over ``code``: ``getrusage`` before and after.

    ``setup`` runs first, untimed (e.g. the same fit once, to measure one in
    a warm process). A fit's attributes, left in ``namespace["RESULT"]``, add
    its own seconds, stage timings, count kernel and column block.
    """
    import dask.array  # noqa: F401
    import distributed  # noqa: F401  (dask's compute imports it to look for a client: ~0.3 s that no step should pay)
    import numpy  # noqa: F401
    import zarr  # noqa: F401

    import dist_relu  # noqa: F401

    if setup:
        exec(setup, namespace)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    baseline = status_kb("VmRSS")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    exec(code, namespace)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    record = {"seconds": seconds, "peak_mb": status_kb("VmHWM") / 1024, "baseline_mb": baseline / 1024,
              "minor_faults": after.ru_minflt - usage.ru_minflt, "user_seconds": after.ru_utime - usage.ru_utime,
              "system_seconds": after.ru_stime - usage.ru_stime}
    if "RESULT" in namespace:
        attributes = namespace["RESULT"]
        record.update(fit_seconds=attributes["seconds"], timings=attributes["timings"],
                      count_kernel=attributes.get("count_kernel"), column_block=attributes.get("column_block"))
    print(json.dumps(record))


def measure(script, step, arguments, env=None, attempts=4, wait=30):
    """Run ``script --child step arguments...`` in a fresh process and return its record.

    A failure is retried after ``wait`` seconds (the package may be mid-edit
    on a shared machine); the record says how many attempts failed.
    """
    for attempt in range(attempts):
        result = subprocess.run([sys.executable, str(script), "--child", step, *map(str, arguments)],
                                capture_output=True, text=True, env=env)
        if result.returncode == 0:
            record = json.loads(result.stdout.strip().splitlines()[-1])
            record["failed_attempts"] = attempt
            return record
        print(f"  step {step} failed (attempt {attempt + 1}), retrying in {wait} s:\n"
              + result.stderr.strip().splitlines()[-1], flush=True)
        time.sleep(wait)
    raise RuntimeError(f"step {step} failed {attempts} times:\n{result.stderr}")


def package_fingerprint():
    """Return a SHA-256 prefix of the package's sources: recorded before and after a run, which may see edits."""
    import dist_relu

    digest = hashlib.sha256()
    for path in sorted(Path(dist_relu.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")


def machine(load_before, **extra):
    """Return what the machine is, with the load average before (given) and after the run."""
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "load_average_before": load_before, "load_average_after": os.getloadavg(), **extra}


def add_result_options(parser, quick_help):
    """Add the options every benchmark has: ``--out`` (the results' folder), ``--quick`` and ``--plot-only``."""
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--plot-only", metavar="JSON", help="redraw the figure of a saved result")


def replotted(args, plot):
    """Redraw the figure of the saved result ``--plot-only`` names, beside it; return whether there was one."""
    if not args.plot_only:
        return False
    plot(json.loads(Path(args.plot_only).read_text()), Path(args.plot_only).with_suffix(".png"))
    return True


def write_results(record, out, stem, print_table, plot):
    """Write ``record`` as ``out/stem.json``, print its table, draw ``out/stem.png``.

    Warns when the package's sources changed during the run (the record's
    ``package_sources_sha256`` before and after).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    print_table(record)
    fingerprint = record["package_sources_sha256"]
    if fingerprint["before"] != fingerprint["after"]:
        print("WARNING: the package's sources changed during this run")
    plot(record, out / f"{stem}.png")
    print(f"wrote {out / stem}.json and .png")


def chunk_rows_for(d, chunk_mb, n):
    """Rows per chunk so that a float32 chunk of all d columns is about ``chunk_mb`` MB (a multiple of 1024 rows)."""
    rows = max(1024, round(chunk_mb * 2**20 / (4 * d) / 1024) * 1024)
    return min(rows, n)


class SimulatedStore(NamedTuple):
    """A store ``simulate_figure1`` made, and how."""

    store: str
    out: str  # where a fit of it goes
    chunk_rows: int
    chunk_mb: float
    simulate_seconds: float
    stored_bytes: int


def simulate_figure1(workdir, d, n, chunk_mb):
    """Simulate ``n × d`` samples of ``figure1_truth(d, seed=0)`` (float32 zstd, row chunks of about ``chunk_mb`` MB
    of all columns) into ``workdir``; print a line on it and return the ``SimulatedStore``."""
    import dist_relu

    chunk_rows = chunk_rows_for(d, chunk_mb, n)
    chunk_mb = chunk_rows * d * 4 / 2**20
    store, out = str(Path(workdir) / f"samples-d{d}.zarr"), str(Path(workdir) / f"fit-d{d}.zarr")
    start = time.perf_counter()
    weights, bias = dist_relu.figure1_truth(d, seed=0)
    dist_relu.simulate_to_zarr(store, weights, bias, n, chunk_rows=chunk_rows, seed=0, overwrite=True)
    simulate_seconds = time.perf_counter() - start
    stored_bytes = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    print(f"d = {d}: simulated n = {n:,} in {simulate_seconds:.1f} s, chunks of {chunk_rows:,} rows "
          f"({chunk_mb:.1f} MB), {stored_bytes / 2**20:.0f} MB on disk", flush=True)
    return SimulatedStore(store, out, chunk_rows, chunk_mb, simulate_seconds, stored_bytes)
