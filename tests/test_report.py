"""`dist-relu report`: one self-contained HTML file of a one-layer fit, refused for anything else."""

import json
import re
import shutil
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dist_relu
from dist_relu import io, kernels, report, uncertainty
from dist_relu.cli import EXIT_BAD_INPUT, main
from dist_relu.model import predictive_check

from .conftest import digest

pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install '.[report]' or '.[test]')")

SECTIONS = ["provenance", "timings", "status", "correlation", "estimates", "positive-fraction", "spectrum",
            "model-check", "predictive-check"]


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def small_fit(simulated, tmp_path_factory):
    """A real fit of simulated samples with negative biases (some coordinates with few positives): (fit, samples)."""
    samples, _, _ = simulated(100_000, 30, seed=2, bias="gaussian")
    fit = tmp_path_factory.mktemp("report") / "fit.zarr"
    dist_relu.fit_to_zarr(samples, fit)
    return fit, samples


@pytest.fixture
def workspace(small_fit, tmp_path):
    """A directory holding a copy of the small fit (``fit.zarr``), for tests that compare its digest."""
    shutil.copytree(small_fit[0], tmp_path / "fit.zarr")
    return tmp_path


def without_standard_errors(fit):
    """Remove the standard errors from the fit group ``fit``, as fits made before they were stored lack them."""
    for name in ("covariance_se", "correlation_se", "bias_se", "scale_se"):
        shutil.rmtree(fit / name)


def page(path):
    return path.read_text(encoding="utf-8")


def test_the_report_is_one_file_that_refers_to_nothing_outside_it(workspace):
    out = workspace / "report.html"
    result = invoke("report", workspace / "fit.zarr", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in workspace.iterdir()) == ["fit.zarr", "report.html"]  # no lock, no partial
    text = page(out)
    assert not re.search(r"https?://", text) and "<script" not in text and "<link" not in text
    images = re.findall(r'<img src="([^"]*)"', text)
    assert len(images) == 7 and all(src.startswith("data:image/png;base64,") for src in images)
    for section in SECTIONS:
        assert f'<section id="{section}">' in text
    assert '<section id="standard-errors">' in text and 'id="truth"' not in text
    attributes = zarr.open_group(str(workspace / "fit.zarr"), mode="r").attrs
    assert attributes["fit_id"] in text and attributes["dist_relu_version"] in text
    assert all(f"<td>{stage}</td>" in text for stage in attributes["timings"])


def test_the_report_leaves_pyplot_and_the_backend_alone(workspace):
    import matplotlib
    import matplotlib.pyplot as pyplot

    backend = matplotlib.get_backend()
    assert invoke("report", workspace / "fit.zarr", "--out", workspace / "report.html").exit_code == 0
    assert pyplot.get_fignums() == [] and matplotlib.get_backend() == backend


def test_with_the_truth_the_report_gives_evaluates_errors(workspace, small_fit):
    fit, samples = workspace / "fit.zarr", small_fit[1]
    result = invoke("report", fit, "--out", workspace / "report.html", "--truth", samples)
    assert result.exit_code == 0, result.output
    text = page(workspace / "report.html")
    shown = {name: float(value) for name, value in re.findall(r'id="(\w+)" data-value="([^"]+)"', text)}
    evaluated = json.loads(invoke("evaluate", fit, "--truth", samples, "--json").output)
    assert shown == evaluated and set(shown) == {"err_sigma", "err_b", "tv_bound"}
    assert '<section id="truth">' in text and len(re.findall("<img ", text)) == 8


def test_standard_errors_are_shown_when_the_fit_stores_them(workspace):
    fit = workspace / "fit.zarr"
    shown = report.read_fit(fit)
    assert shown.covariance_se.shape == (30, 30) and shown.bias_se.shape == shown.scale_se.shape == (30,)
    assert all(axes.containers for axes in report.estimates_figure(shown).axes[:2])  # b̂ and σ̂: ±1.96 SE bars

    without_standard_errors(fit)
    without = report.read_fit(fit)
    assert without.covariance_se is None and without.bias_se is None and without.scale_se is None
    assert not report.estimates_figure(without).axes[0].containers  # no error bars
    assert invoke("report", fit, "--out", workspace / "report.html").exit_code == 0
    text = page(workspace / "report.html")
    assert 'id="standard-errors"' not in text and len(re.findall("<img ", text)) == 6


def test_the_jackknifes_ratios_are_given_when_the_fit_made_them(relu_data, tmp_path):
    attributes = dist_relu.fit_to_zarr(relu_data, tmp_path / "fit.zarr", jackknife_groups=5)
    assert invoke("report", tmp_path / "fit.zarr", "--out", tmp_path / "report.html").exit_code == 0
    ratio = attributes["jackknife"]["covariance_ratio"]
    assert f"jackknife over 5 groups of consecutive rows gives standard errors {ratio:.2f} for Σ̂" in \
        page(tmp_path / "report.html")


def test_every_status_is_counted_and_degenerate_coordinates_are_named(relu_data, tmp_path):
    samples = np.hstack([relu_data, np.zeros((relu_data.shape[0], 1)), np.full((relu_data.shape[0], 1), 2.0)])
    dist_relu.ReLUGaussian().fit(samples).save(tmp_path / "fit.zarr")
    fit = report.read_fit(tmp_path / "fit.zarr")
    text = report.render(fit)
    for code, name in kernels.STATUS_NAMES.items():
        assert f"<td>{name}</td><td>{int((fit.status == code).sum()):,}</td>" in text
    assert "<td>all zero</td><td>1</td><td>6</td>" in text and "<td>constant</td><td>1</td><td>7</td>" in text


def section(text, name):
    """Return the HTML of the section ``name`` of a report."""
    return re.search(f'<section id="{name}">(.*?)</section>', text, re.S).group(1)


@pytest.mark.parametrize("exponential_columns", [1, 22])
def test_the_model_check_names_the_coordinates_that_fail(exponential_columns, tmp_path):
    # Positives of an exponential law fail the check by far; 22 failures are more than the page names.
    rng = np.random.default_rng(3)
    n = 30_000
    normal = np.maximum(0, rng.standard_normal((n, 3)) @ rng.standard_normal((3, 3)) + 0.3)
    exponential = np.maximum(0, rng.exponential(size=(n, exponential_columns)) - 0.5)  # 61% positives
    dist_relu.ReLUGaussian().fit(np.hstack([normal, exponential])).save(tmp_path / "fit.zarr")
    fit = report.read_fit(tmp_path / "fit.zarr")
    failed = np.flatnonzero(fit.status == kernels.STATUS_NOT_NORMAL)
    np.testing.assert_array_equal(failed, np.arange(3, 3 + exponential_columns))
    assert fit.attributes["model_check"]["failed"] == exponential_columns
    text = section(report.render(fit), "model-check")
    if exponential_columns == 1:
        assert "Failed: 1, coordinate 3." in text
    else:
        assert f"Failed: 22, coordinates {', '.join(map(str, range(3, 23)))} and 2 more." in text
    figure = report.model_check_figure(fit, uncertainty.MODEL_CHECK_THRESHOLD)
    marked = [line for line in figure.axes[0].lines if line.get_marker() == "x"]
    assert len(marked) == 1 and np.array_equal(marked[0].get_xdata(), failed)


def test_a_negative_model_check_statistic_is_reported(workspace):
    zarr.open_group(str(workspace / "fit.zarr"), mode="r+")["model_check"][4] = -12.5
    text = section(report.render(report.read_fit(workspace / "fit.zarr")), "model-check")
    assert "1 has a negative statistic (coordinate 4)" in text and "None failed." in text


def test_a_fit_stored_before_the_model_check_still_reports(workspace):
    shutil.rmtree(workspace / "fit.zarr" / "model_check")
    result = invoke("report", workspace / "fit.zarr", "--out", workspace / "report.html")
    assert result.exit_code == 0, result.output
    text = page(workspace / "report.html")
    assert "stored before the model check existed" in section(text, "model-check")
    assert 'data-name="largest_coexceedance_error"' in section(text, "predictive-check")
    assert len(re.findall("<img ", text)) == 6


def test_the_predictive_check_in_the_page_is_model_predictive_check(workspace):
    text = page_of(workspace / "fit.zarr")
    shown = {name: float(value) for name, value in re.findall(r'data-name="(\w+)" data-value="([^"]+)"', text)}
    model, group = dist_relu.open_fit(workspace / "fit.zarr")
    n = group.attrs["n_samples"]
    check = predictive_check(model, group["thresholds"][:], group["counts"][:], n, group["n_zero"][:] / n)
    assert shown == {"largest_zero_fraction_error": check.largest_zero_fraction_error,
                     "largest_coexceedance_error": check.largest_coexceedance_error}
    assert 0 < check.largest_coexceedance_error < 0.05  # a real check of a real fit, not a degenerate one


def test_the_predictive_check_is_left_out_beyond_its_dimension_and_says_why(workspace, monkeypatch):
    monkeypatch.setattr(report, "PREDICTIVE_CHECK_MAX_DIMENSION", 29)
    fit = report.read_fit(workspace / "fit.zarr")
    text = section(report.render(fit), "predictive-check")
    assert "Not made: d = 30 is above 29" in text and "growing like d³" in text
    assert "<img " not in text and "data-name" not in text
    assert "repair" not in vars(fit.model)  # the repair, computed on first use, was not made


def page_of(fit):
    return report.render(report.read_fit(fit))


def test_block_average_keeps_small_matrices_and_averages_large_ones():
    small = np.arange(16.0).reshape(4, 4)
    assert report.block_average(small, max_cells=4)[0] is small
    cells, block = report.block_average(small, max_cells=2)
    assert block == 2 and np.array_equal(cells, [[2.5, 4.5], [10.5, 12.5]])
    ragged = np.ones((5, 5))
    ragged[0, 0] = np.nan
    cells, block = report.block_average(ragged, max_cells=2)
    assert block == 3 and cells.shape == (2, 2) and np.array_equal(cells, np.ones((2, 2)))  # NaN left out
    assert report.block_average(np.zeros((4096, 4096)))[0].shape == (256, 256)


def test_the_spectrum_counts_negative_eigenvalues_beyond_rounding():
    spectrum = report.spectrum_of(np.diag([2.0, 1.0, -0.5]))
    assert spectrum.negative == 1 and spectrum.eigenvalues[-1] == -0.5 and spectrum.eigenvalues[0] == 2.0
    factor = np.random.default_rng(0).standard_normal((50, 10))
    assert report.spectrum_of(factor @ factor.T).negative == 0  # rank 10: 40 eigenvalues of rounding size


def other_model(workspace, model):
    group = zarr.open_group(str(workspace / "fit.zarr"), mode="r+")
    group.attrs["model"] = model


@pytest.mark.parametrize("case", ["two-layer", "random-bias", "missing fit", "out exists", "out not a report",
                                  "out inside the fit", "truth missing"])
def test_refusals_write_nothing_and_leave_the_fit_intact(workspace, small_fit, case):
    fit, out, extra = workspace / "fit.zarr", workspace / "report.html", []
    if case in ("two-layer", "random-bias"):
        other_model(workspace, {"two-layer": "two_layer_relu", "random-bias": "random_bias_relu"}[case])
    elif case == "missing fit":
        fit = workspace / "nothing.zarr"
    elif case == "out exists":
        assert invoke("report", fit, "--out", out).exit_code == 0
    elif case == "out not a report":
        out.write_text("<html>someone else's</html>")
        extra = ["--overwrite"]
    elif case == "out inside the fit":
        out = fit / "report.html"
    elif case == "truth missing":
        extra = ["--truth", workspace / "nothing.zarr"]
    before = digest(workspace)
    result = invoke("report", fit, "--out", out, *extra)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert digest(workspace) == before
    expected = {"two-layer": "two_layer_relu", "random-bias": "random_bias_relu", "missing fit": "no such file",
                "out exists": "--overwrite", "out not a report": "not an output of dist_relu",
                "out inside the fit": "lies inside the input", "truth missing": "no such file"}[case]
    assert expected in result.stderr


def test_overwrite_replaces_an_earlier_report_and_nothing_else(workspace):
    fit, out = workspace / "fit.zarr", workspace / "report.html"
    assert invoke("report", fit, "--out", out).exit_code == 0
    first = page(out)
    without_standard_errors(fit)
    assert invoke("report", fit, "--out", out, "--overwrite").exit_code == 0
    assert page(out) != first and 'id="standard-errors"' not in page(out)
    assert sorted(path.name for path in workspace.iterdir()) == ["fit.zarr", "report.html"]

def test_overwrite_never_replaces_a_fit_by_a_report_nor_a_report_by_a_fit(workspace, small_fit):
    fit, out = workspace / "fit.zarr", workspace / "report.html"
    shutil.copytree(fit, workspace / "other.zarr")
    assert invoke("report", fit, "--out", out).exit_code == 0
    before = digest(workspace)
    result = invoke("report", fit, "--out", workspace / "other.zarr", "--overwrite")
    assert result.exit_code == EXIT_BAD_INPUT and "is a dist_relu fit" in result.stderr
    with pytest.raises(dist_relu.io.InputError, match="is a dist_relu report"):
        dist_relu.fit_to_zarr(small_fit[1], out, overwrite=True)
    assert digest(workspace) == before


def test_a_report_to_an_object_store_url_appears_whole(workspace):
    memory = fsspec.filesystem("memory")
    out = f"memory://dist-relu-report-{np.random.default_rng().integers(1 << 30)}/report.html"
    try:
        assert invoke("report", workspace / "fit.zarr", "--out", out).exit_code == 0
        first = memory.cat_file(out)
        assert first.startswith(b"<!DOCTYPE html>") and len(memory.ls(out.rsplit("/", 1)[0])) == 1
        assert invoke("report", workspace / "fit.zarr", "--out", out).exit_code == EXIT_BAD_INPUT
        without_standard_errors(workspace / "fit.zarr")
        assert invoke("report", workspace / "fit.zarr", "--out", out, "--overwrite").exit_code == 0
        assert memory.cat_file(out) != first and len(memory.ls(out.rsplit("/", 1)[0])) == 1
    finally:
        memory.rm(out.rsplit("/", 1)[0].removeprefix("memory://"), recursive=True)


def test_without_matplotlib_the_command_names_the_extra(workspace, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    before = digest(workspace)
    result = invoke("report", workspace / "fit.zarr", "--out", workspace / "report.html")
    assert result.exit_code == EXIT_BAD_INPUT and "pip install 'dist_relu[report]'" in result.stderr
    assert digest(workspace) == before


def large_fit(small_fit_path, path, d, seed=0):
    """Write a fit group of ``d`` coordinates with plausible values, standard errors included, without fitting.

    The attributes are those of a real fit; the arrays are written by the writer fits use (``io.write_group``).
    """
    rng = np.random.default_rng(seed)
    attributes = dict(zarr.open_group(str(small_fit_path), mode="r").attrs) | {"n_coordinates": d}
    n = attributes["n_samples"]
    factor = rng.standard_normal((d, 40)) / np.sqrt(40)
    noise = rng.standard_normal((d, d)) * 0.002
    covariance = factor @ factor.T + np.diag(rng.uniform(0.2, 1.0, d)) + noise + noise.T
    scale = np.sqrt(np.diag(covariance))
    bias = rng.standard_normal(d)
    fraction = np.clip(0.5 * (1 + np.tanh(bias / scale)), 1e-4, 1)
    status = np.where(fraction * n < kernels.min_positives("censored"), kernels.STATUS_FEW_POSITIVES, kernels.STATUS_OK)
    model_check = np.where(fraction * n >= uncertainty.MODEL_CHECK_MIN_POSITIVES, rng.chisquare(2, d), np.nan)
    model_check[:40] *= 100  # some coordinates fail
    status = np.where(model_check > uncertainty.MODEL_CHECK_THRESHOLD, kernels.STATUS_NOT_NORMAL, status)
    variances = np.diag(covariance)
    arrays = {"covariance": covariance, "bias": bias, "scale": scale, "status": status.astype(np.int8),
              "positive_fraction": fraction, "model_check": model_check,
              "covariance_se": np.sqrt((np.outer(variances, variances) + covariance**2) / n),
              "bias_se": scale / np.sqrt(fraction * n), "scale_se": scale / np.sqrt(2 * fraction * n)}
    io.write_group(path, arrays, attributes)


@pytest.mark.slow
def test_a_report_at_d_4096_stays_under_5_mb(small_fit, tmp_path):
    fit, out = tmp_path / "large.zarr", tmp_path / "report.html"
    large_fit(small_fit[0], fit, 4096)
    start = time.perf_counter()
    result = invoke("report", fit, "--out", out)
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    size = out.stat().st_size
    print(f"report at d = 4096: {size / 1e6:.2f} MB in {seconds:.1f} s")
    assert size < 5e6
    text = page(out)
    assert "256 × 256 cells, each the mean of 16 × 16 entries" in text and 'id="standard-errors"' in text
    assert "Failed: " in text and f"Not made: d = 4,096 is above {report.PREDICTIVE_CHECK_MAX_DIMENSION:,}" in text


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Put in a copy of the report by the test (the report itself holds no script): once the page has loaded,
# it writes into the DOM how many images decoded.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((image) => image.complete && image.naturalWidth > 0).length;
  document.body.setAttribute("data-images", loaded + "/" + images.length);
});
</script>"""


def run_chromium(*args, profile):
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium binary (Debian's package chromium; .ci/run installs it "
                    "where apt-get works)")
def test_a_browser_shows_every_image(workspace, small_fit):
    fit, out = workspace / "fit.zarr", workspace / "report.html"
    assert invoke("report", fit, "--out", out, "--truth", small_fit[1]).exit_code == 0
    checked = workspace / "checked.html"
    checked.write_text(page(out).replace("</body>", IMAGE_CHECK + "</body>"), encoding="utf-8")

    dom = run_chromium("--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--dump-dom",
                       checked.as_uri(), profile=workspace / "profile-dom").stdout
    found = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert found, f"the page did not finish loading: {dom[:500]!r}"
    assert found.group(1) == found.group(2) == "8"  # every figure, standard errors and truth included

    screenshot = workspace / "report.png"
    result = run_chromium(f"--screenshot={screenshot}", "--window-size=1200,3000", out.as_uri(),
                          profile=workspace / "profile-shot")
    assert screenshot.exists(), result.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(screenshot)
    assert pixels.shape[:2] == (3000, 1200) and pixels[..., :3].var() > 0
