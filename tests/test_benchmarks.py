"""The benchmarks run (their --quick versions) and write what they promise."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes, services or statistical sweeps: not in `make test-fast`

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_memory_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "memory_fit.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "memory_fit_quick.json").read_text())
    assert record["n"] == 100_000 and record["d"] == 20
    for step in ("read", "fit", "fit-api"):
        assert record["summary"][step]["median_seconds"] > 0
        assert record["summary"][step]["peak_above_baseline_mb"] > 0
    assert (tmp_path / "memory_fit_quick.png").stat().st_size > 10_000


def test_figure1_quick(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / "figure1.py"), "--quick", "--out", str(tmp_path)],
                            check=True, capture_output=True, text=True, timeout=300)
    with open(tmp_path / "figure1_quick_summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {row["method"] for row in summary} == {"paper (ProjSGD)", "dist_relu default"}
    assert {row["sweep"] for row in summary} == {"n", "d", "kappa"}
    by = {(r["sweep"], r["value"], r["method"]): float(r["err_sigma_mean"]) for r in summary}
    # The default is far more accurate than the paper's method on the same data.
    assert by[("n", "50000", "dist_relu default")] < by[("n", "50000", "paper (ProjSGD)")] / 3
    assert "paper / default error ratio" in result.stdout
    assert (tmp_path / "figure1_quick.png").stat().st_size > 10_000


def test_convert_csv_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "convert_csv.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "convert_csv_quick.json").read_text())
    assert record["n_samples"] > 10_000 and record["n_coordinates"] == 100
    assert 0 < record["peak_above_baseline_mb"] < 20 * record["chunk_mb"]


def test_cluster_overhead_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "cluster_overhead.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "cluster_overhead_quick.json").read_text())
    assert set(record["summary"]) == {"threads", "local-cluster", "cli-cluster"}
    for entry in record["summary"].values():
        assert entry["median_fit_seconds"] > 0
        assert set(entry["median_stage_seconds"]) == {"pass", "inversion", "standard errors", "write"}
    assert record["summary"]["threads"]["wall_ratio_to_threads"] == 1
    assert (tmp_path / "cluster_overhead_quick.png").stat().st_size > 10_000


def test_large_d_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "large_d.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "large_d_quick.json").read_text())
    assert record["d"] == 300 and record["n"] == 20_000
    assert set(record["timings"]) == {"pass", "inversion", "standard errors", "write"}
    assert record["peak_above_baseline_mb"] > 0 and record["errors"]["err_sigma"] < 0.05
    assert (tmp_path / "large_d_quick.png").stat().st_size > 10_000


def test_two_layer_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "two_layer.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "two_layer_quick.json").read_text())
    assert record["timing"] and record["accuracy"]
    assert (tmp_path / "two_layer_quick.png").stat().st_size > 10_000


def test_random_bias_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "random_bias.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "random_bias_quick.json").read_text())
    assert record["timing"]["ratios"]["fit"]["pass_over_read"] and record["passes"]["runs"]
    assert {e["law"] for e in record["table"]["per_law"]} == {"uniform", "t3", "sparse", "gaussian"}
    assert (tmp_path / "random_bias_quick.png").stat().st_size > 10_000


def test_se_coverage_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "se_coverage.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "se_coverage_quick.json").read_text())
    assert record["fits"]["default"] == 24 and not any(record["failed_fits"].values())
    default = [row for row in record["table"] if row["settings"] == "default"]
    assert {row["kind"] for row in default} == {"Σ off-diagonal", "Σ diagonal", "b", "σ"}
    assert all(0.8 <= row["coverage"] <= 1.0 for row in default)
    assert (tmp_path / "se_coverage_quick.png").stat().st_size > 10_000


def test_model_check_benchmark_quick(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / "model_check.py"), "--quick", "--out", str(tmp_path)],
                            check=True, capture_output=True, text=True, timeout=600)
    assert "MODEL_CHECK_MIN_POSITIVES set from 10,000 to 0" in result.stdout
    record = json.loads((tmp_path / "model_check_quick.json").read_text())
    assert record["min_positives_patched"]["to"] == 0
    censored = [row for row in record["null"] if row["method"] == "censored"]
    assert len(censored) == 5 and all(row["not_finite"] == 0 and row["negative"] == 0 for row in censored)
    assert all(1.8 < row["mean"] < 2.2 and 0.005 < row["fractions"][0] < 0.03 for row in censored)
    power = {row["law"]: row for row in record["power"]}
    assert power["normal + 0.3 (control)"]["failed"] == 0
    assert all(row["fraction_failed"] == 1.0 for law, row in power.items() if not law.startswith("normal"))
    assert {row["method"] for row in record["fit_path"]} == {"censored", "truncated"}
    assert (tmp_path / "model_check_quick.png").stat().st_size > 10_000


def test_jackknife_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "jackknife.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "jackknife_quick.json").read_text())
    assert record["groups"] == [0, 4, 10] and [case["d"] for case in record["cases"]] == [10, 20]
    for case in record["cases"]:
        assert case["n"] == 100_000 and set(case["summary"]) == set(case["runs"]) == {"0", "4", "10"}
        reference = case["summary"]["0"]
        assert reference["jackknife_ratios"] == dict.fromkeys(("covariance_ratio", "correlation_ratio", "bias_ratio",
                                                               "scale_ratio"))
        assert reference["median_stored_array_bytes"]["group_counts"] == 0
        for groups in ("4", "10"):
            s = case["summary"][groups]
            assert s["median_seconds"] > 0 and s["median_peak_above_baseline_mb"] > 0
            assert set(s["median_stage_seconds"]) == {"pass", "inversion", "standard errors", "write"}
            assert s["over_reference"]["seconds"] == pytest.approx(s["median_seconds"] / reference["median_seconds"])
            assert s["group_counts_raw_bytes"] == 8 * int(groups) * case["d"] ** 2
            assert s["median_stored_array_bytes"]["group_counts"] > 0
            assert s["median_stored_bytes"] > reference["median_stored_bytes"]
            assert all(0.5 < ratio < 2 for ratio in s["jackknife_ratios"].values())
            assert all(r["jackknife"]["groups"] == int(groups) for r in case["runs"][groups])
    assert (tmp_path / "jackknife_quick.png").stat().st_size > 10_000


def test_codecs_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "codec_study.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "codecs_quick.json").read_text())
    (case,) = record["cases"]
    assert (case["kind"], case["d"], case["n"]) == ("rounded", 20, 32_768) and case["same_sum_every_codec"]
    assert set(case["summary"]) == {"zstd-0", "blosc-lz4-shuffle"}
    assert case["metadata"]["zstd-0"][-1] == {"name": "zstd", "configuration": {"level": 0, "checksum": False}}
    for s in case["summary"].values():
        assert s["compression_ratio"] > 1 and s["write_seconds"] > 0 and s["read_seconds"] > 0
        assert s["fit_seconds"] > 0 and s["fit_over_read"] == pytest.approx(s["fit_seconds"] / s["read_seconds"])
    assert case["summary"]["zstd-0"]["read_over_reference"] == 1
    assert record["choice"]["chosen"] in case["summary"]
    assert (tmp_path / "codecs_quick.png").stat().st_size > 10_000


def test_huge_pages_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "huge_pages.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "huge_pages_quick.json").read_text())
    assert (record["n"], record["d"], record["chunk_rows"], record["repeats"]) == (100_000, 50, 8192, 1)
    assert set(record["runs"]) == set(record["summary"]) == {"read", "fit"}
    for step in ("read", "fit"):
        assert set(record["runs"][step]) == {"plain", "huge pages"}
        for name, tunables in (("plain", None), ("huge pages", "glibc.malloc.hugetlb=1")):
            (run,) = record["runs"][step][name]
            assert run["seconds"] > 0 and run["glibc_tunables"] == tunables
            assert run["minor_faults"] >= 0 and run["user_seconds"] + run["system_seconds"] > 0
            assert record["summary"][step][name]["median_seconds"] == run["seconds"]
        assert record["summary"][step]["plain_over_huge_pages"]["seconds"] > 0
    assert record["glibc"][0] and "cores" in record["machine"] and "enabled" in record["transparent_hugepage"]
    assert (tmp_path / "huge_pages_quick.png").stat().st_size > 10_000


def test_cuts_accuracy_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "cuts_accuracy.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "cuts_accuracy_quick.json").read_text())
    assert (record["d"], record["n"], record["seeds"], record["reference_pairs"]) == (10, 50_000, [0, 1], 10)
    kinds = ("figure1 clipped", "figure1 gaussian", "low-rank clipped", "low-rank gaussian")
    assert set(record["summary"]) == set(kinds) and len(record["runs"]) == 8
    for kind in kinds:
        s = record["summary"][kind]
        for scope, methods in (("all", ("default", "K=3", "K=5", "fit default", "fit K=5")),
                               ("all seen", ("default", "K=3", "K=5", "fit default", "fit K=5")),
                               ("subsample", ("default", "K=3", "K=5", "reference"))):
            assert all(0 < s["mean_mse"][scope][method] < float("inf") for method in methods), (kind, scope)
        assert all(s["mean_process_seconds_per_pair"][method] > 0 for method in ("K=3", "K=5", "reference"))
    # The cut points' point: closer to the truth than one threshold where the biases are clipped at 0.
    for kind in ("figure1 clipped", "low-rank clipped"):
        mse = record["summary"][kind]["mean_mse"]["all"]
        assert mse["K=5"] < mse["default"], (kind, mse)
    assert (tmp_path / "cuts_accuracy_quick.png").stat().st_size > 10_000


def test_cuts_cost_benchmark_quick(tmp_path):
    subprocess.run([sys.executable, str(BENCHMARKS / "cuts_cost.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "cuts_cost_quick.json").read_text())
    assert [case["d"] for case in record["cases"]] == [10, 50] and record["repeats"] == 1
    fits = {"fit K=1": 1, "fit K=3": 3, "fit K=5": 5}
    for case in record["cases"]:
        assert case["n"] == 100_000 and set(case["runs"]) == {"read", *fits}
        for step in ("read", *fits):
            assert case["summary"][step]["median_seconds"] > 0 and len(case["runs"][step]) == 1
        for step, cuts in fits.items():
            assert [r["cuts"] for r in case["runs"][step]] == [cuts], (case["d"], step)
            assert set(case["summary"][step]["median_stage_seconds"]) == {"pass", "inversion", "standard errors",
                                                                           "write"}
        ratios = case["summary"]["ratios"]
        assert ratios["fit K=5 / fit K=1"] == pytest.approx(case["summary"]["fit K=5"]["median_seconds"]
                                                             / case["summary"]["fit K=1"]["median_seconds"])
    assert (tmp_path / "cuts_cost_quick.png").stat().st_size > 10_000


def test_cut_information_benchmark(tmp_path):
    """The calculation of what a margin's cut points keep at ρ = 0: no table keeps more than the values."""
    subprocess.run([sys.executable, str(BENCHMARKS / "cut_information.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    record = json.loads((tmp_path / "cut_information.json").read_text())
    ratio = {(row["bias"], row["cuts"], row["rule"]): row["variance_ratio_margin"] for row in record["rows"]}
    assert len(ratio) == len(record["biases"]) * len(record["cuts"]) * 3
    for bias in record["biases"]:
        for cuts in record["cuts"]:
            first, rule, best = (ratio[bias, cuts, name] for name in ("threshold first", "kernels.cut_points", "best"))
            assert 1 < best <= rule + 1e-9 and rule <= first + 1e-9, (bias, cuts)
            if bias <= 0:  # the threshold is 0: the two rules are one
                assert rule == first
            else:  # 0 below a positive threshold keeps more
                assert rule < first
        assert ratio[bias, 5, "kernels.cut_points"] < ratio[bias, 3, "kernels.cut_points"]
    assert (tmp_path / "cut_information.png").stat().st_size > 10_000
