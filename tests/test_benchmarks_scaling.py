"""The scaling benchmarks (fit against a read, against n, count kernels, large d) run quick and write what they promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_quick(script, tmp_path):
    return subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(tmp_path)],
                          check=True, capture_output=True, text=True, timeout=300)


def test_fit_vs_read_quick(tmp_path):
    run_quick("fit_vs_read.py", tmp_path)
    record = json.loads((tmp_path / "fit_vs_read_quick.json").read_text())
    assert {"cases", "scheduler", "chunking", "machine", "repeats", "dtype"} <= set(record)
    assert [case["d"] for case in record["cases"]] == [10, 50]
    for case in record["cases"]:
        assert case["n"] == 100_000 and case["chunk_rows"] > 0 and case["n_chunks"] >= 1
        summary = case["summary"]
        for step in ("read", "xtx", "xtx-1blas", "fit", "read-warm", "xtx-warm", "fit-warm", "fit-numba-ready"):
            assert summary[step]["median_seconds"] > 0
            assert summary[step]["peak_above_baseline_mb"] > 0
        assert set(summary["fit"]["median_stage_seconds"]) == {"pass", "inversion", "standard errors", "write"}
        assert summary["fit_over_read"] > 0 and summary["fit_over_xtx"] > 0 and summary["fit_over_xtx_1blas"] > 0
        assert summary["fit_warm_over_read"] == pytest.approx(
            summary["fit-warm"]["median_seconds"] / summary["read-warm"]["median_seconds"])
        assert summary["fit_numba_ready_over_read"] == pytest.approx(
            summary["fit-numba-ready"]["median_seconds"] / summary["read"]["median_seconds"])
    assert (tmp_path / "fit_vs_read_quick.png").stat().st_size > 10_000


def test_scaling_n_quick(tmp_path):
    run_quick("scaling_n.py", tmp_path)
    record = json.loads((tmp_path / "scaling_n_quick.json").read_text())
    assert {"cases", "scaling", "scheduler", "chunking", "chunk_rows", "machine", "d"} <= set(record)
    assert record["d"] == 20 and record["n_values"] == [100_000, 400_000]
    for case in record["cases"]:
        for step in ("read", "fit"):
            assert case["summary"][step]["median_seconds"] > 0
            assert case["summary"][step]["seconds_per_million_rows"] > 0
            assert case["summary"][step]["peak_above_baseline_mb"] > 0
        assert set(case["summary"]["fit"]["median_stage_seconds"]) == {"pass", "inversion", "standard errors", "write"}
    assert record["scaling"]["n_ratio"] == 4
    assert {"time_ratio", "log_log_slope", "peak_ratio", "median_peak_ratio", "memory_flat_within_1.2x"} <= set(
        record["scaling"]["fit"])
    assert (tmp_path / "scaling_n_quick.png").stat().st_size > 10_000


def test_count_kernels_quick(tmp_path):
    run_quick("count_kernels.py", tmp_path)
    record = json.loads((tmp_path / "count_kernels_quick.json").read_text())
    assert {"results", "rows", "threads", "machine", "repeats"} <= set(record)
    assert record["rows"] == 8_192 and record["threads"]["OPENBLAS_NUM_THREADS"] == "1"
    assert [entry["d"] for entry in record["results"]] == [16, 64]
    for entry in record["results"]:
        assert entry["choose_count_kernel"] in ("popcount", "gemm")
        assert entry["reference_gemm"]["pair_samples_per_s"] > 0
        for block in ("diagonal", "off-diagonal"):
            assert entry[block]["counts_agree"]
            for path in ("popcount", "gemm", "gemm-only"):
                assert entry[block]["paths"][path]["pair_samples_per_s"] > 0
    assert (tmp_path / "count_kernels_quick.png").stat().st_size > 10_000
