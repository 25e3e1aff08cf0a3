"""Peak memory and time of ``dist-relu convert`` on a large CSV file.

Writes a CSV of ReLU samples (``--gb`` gigabytes of text, ``--d`` columns, 6
significant digits), then runs ``dist_relu.convert.convert`` in a fresh process
and reports its time, throughput and peak resident memory above the resident
memory after imports (VmHWM, reset after imports). Memory should stay near a
few chunks however large the file is. Results go to
``benchmarks/results/convert_csv.json``.

    python benchmarks/convert_csv.py              # a 2 GB CSV, d = 100
    python benchmarks/convert_csv.py --quick      # 20 MB, for the tests
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(source, out, chunk_rows):
    from dist_relu.convert import convert

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    baseline = _status_kb("VmRSS")
    start = time.perf_counter()
    summary = convert(source, out, chunk_rows=int(chunk_rows) or None)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_above_baseline_mb": (_status_kb("VmHWM") - baseline) / 1024,
                      **summary}))


def _status_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def write_csv(path, target_bytes, d, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "w") as f:
        f.write(",".join(f"x{i}" for i in range(d)) + "\n")
        while written < target_bytes:
            block = np.maximum(0, rng.standard_normal((20_000, d)) + 0.3)
            text = "\n".join(",".join(f"{v:.6g}" for v in row) for row in block) + "\n"
            f.write(text)
            written += len(text)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--chunk-rows", type=int, default=0, help="0: convert's default (about 32 MB)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--quick", action="store_true", help="a 20 MB file")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.quick:
        args.gb = 0.02

    with tempfile.TemporaryDirectory(prefix="dist-relu-csv-") as tmp:
        source = Path(tmp) / "samples.csv"
        start = time.perf_counter()
        size = write_csv(source, int(args.gb * 1e9), args.d)
        print(f"wrote {size / 1e9:.2f} GB of CSV ({args.d} columns) in {time.perf_counter() - start:.0f} s", flush=True)
        result = subprocess.run([sys.executable, __file__, "--child", str(source), str(Path(tmp) / "out.zarr"),
                                 str(args.chunk_rows)], capture_output=True, text=True, check=True)
        record = json.loads(result.stdout.strip().splitlines()[-1])
    chunk_mb = record["chunk_rows"] * record["n_coordinates"] * 8 / 2**20
    record.update({"csv_bytes": size, "mb_per_second": size / 2**20 / record["seconds"], "chunk_mb": chunk_mb,
                   "peak_in_chunks": record["peak_above_baseline_mb"] / chunk_mb, "cores": os.cpu_count(),
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    print(f"converted {record['n_samples']:,} rows × {record['n_coordinates']} in {record['seconds']:.0f} s "
          f"({record['mb_per_second']:.0f} MB/s of CSV); peak memory {record['peak_above_baseline_mb']:.0f} MB "
          f"above baseline = {record['peak_in_chunks']:.1f} chunks of {chunk_mb:.0f} MB (float64)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "convert_csv_quick.json" if args.quick else "convert_csv.json"
    (out / name).write_text(json.dumps(record, indent=2))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
