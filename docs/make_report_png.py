"""Make docs/report.png, the picture of a report in README.md, from scratch.

    PYTHONPATH=. python docs/make_report_png.py    # from a checkout; 22–26 s on 2 cores; writes docs/report.png

In a temporary directory (removed at the end) it runs, with this Python and
the ``dist_relu`` it imports:

    dist-relu simulate --n 200000 --d 300 --kappa 100 --bias gaussian --seed 1 --out sim.zarr
    dist-relu fit sim.zarr --out fit.zarr                       # default settings
    dist-relu report fit.zarr --out report.html
    dist-relu report fit.zarr --out truth.html --truth sim.zarr # only for err_sigma, printed

then draws ``report.html`` with headless Chromium (Debian's package
``chromium``) in a window ``--width`` (900) pixels wide, and keeps the rows
from the top of the section "Coordinates" (the status table) to the end of
"Eigenvalues of Σ̂": the correlations, the standard errors of Σ̂, b̂ and σ̂,
and the positive fractions are between them. Where the sections are on the
page is read from the page itself: a copy of the report with a script added
(the report holds none) writes their positions into the DOM, which Chromium
dumps; the script changes nothing on the page that is seen. The crop is saved
as an RGB PNG (Pillow, which matplotlib needs).

It prints the numbers the README's caption quotes: the coordinates per
status, the report's line on the eigenvalues of Σ̂, and err_sigma.
"""

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIMULATE = ["--n", "200000", "--d", "300", "--kappa", "100", "--bias", "gaussian", "--seed", "1"]
FIRST, LAST = "status", "spectrum"  # sections kept: from the top of FIRST to the bottom of LAST
MARGIN = 8  # pixels kept above the first section's heading and below the last section

# Added to a copy of the report: once the page has loaded, it writes each section's top and bottom (CSS
# pixels from the top of the page) and the page's height into the DOM.
POSITIONS = """<script>
window.addEventListener("load", () => {
  const boxes = {};
  for (const section of document.querySelectorAll("section[id]")) {
    const box = section.getBoundingClientRect();
    boxes[section.id] = [box.top + window.scrollY, box.bottom + window.scrollY];
  }
  const height = document.documentElement.scrollHeight;
  document.body.setAttribute("data-positions", JSON.stringify({boxes, height}));
});
</script>"""


def command(*args, cwd):
    """Run ``dist-relu ARGS`` with this Python; print what it says."""
    result = subprocess.run([sys.executable, "-m", "dist_relu", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True)
    if result.returncode:
        sys.exit(f"dist-relu {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    print(result.stdout + result.stderr, end="", flush=True)


def chromium_binary():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        sys.exit("no chromium binary: install Debian's package chromium (apt-get install chromium)")
    return found


def chromium(*args, profile):
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def positions(report, width, work):
    """Return ``(boxes, height)``: each section's (top, bottom) and the page's height, at ``width`` pixels."""
    checked = work / "positions.html"
    text = report.read_text(encoding="utf-8")
    checked.write_text(text.replace("</body>", POSITIONS + "</body>"), encoding="utf-8")
    dom = chromium("--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",
                   f"--window-size={width},2000", "--dump-dom", checked.as_uri(), profile=work / "profile-dom").stdout
    found = re.search(r'data-positions="([^"]*)"', dom)
    if not found:
        sys.exit(f"the page did not finish loading: {dom[:500]!r}")
    record = json.loads(html.unescape(found.group(1)))
    return record["boxes"], record["height"]


def caption_numbers(report, truth):
    """The numbers of the caption, as the reports give them."""
    text = report.read_text(encoding="utf-8")
    status = re.search(r'<section id="status">.*?</table>', text, re.S).group(0)
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", status)
    spectrum = re.search(r"<p>(Smallest eigenvalue.*?)</p>", text, re.S).group(1)
    err_sigma = re.search(r'id="err_sigma" data-value="([^"]*)"', truth.read_text(encoding="utf-8")).group(1)
    return rows, html.unescape(spectrum), float(err_sigma)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "report.png")
    parser.add_argument("--width", type=int, default=900, help="the browser window's width, pixels")
    args = parser.parse_args()

    import dist_relu
    from PIL import Image

    print(f"dist_relu {dist_relu.__version__} from {Path(dist_relu.__file__).parent}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="report-png-") as name:
        work = Path(name)
        command("simulate", *SIMULATE, "--out", "sim.zarr", cwd=work)
        command("fit", "sim.zarr", "--out", "fit.zarr", cwd=work)
        command("report", "fit.zarr", "--out", "report.html", cwd=work)
        command("report", "fit.zarr", "--out", "truth.html", "--truth", "sim.zarr", cwd=work)
        report = work / "report.html"

        boxes, height = positions(report, args.width, work)
        top, bottom = boxes[FIRST][0] - MARGIN, boxes[LAST][1] + MARGIN
        screenshot = work / "page.png"
        # The window as tall as the page: the screenshot is of the window.
        result = chromium(f"--screenshot={screenshot}", f"--window-size={args.width},{int(height) + 1}",
                          report.as_uri(), profile=work / "profile-shot")
        if not screenshot.exists():
            sys.exit(f"chromium made no screenshot:\n{result.stderr[-2000:]}")
        with Image.open(screenshot) as page:
            page_size = page.size
            crop = page.convert("RGB").crop((0, max(0, int(top)), page.size[0], min(page.size[1], int(bottom) + 1)))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        crop.save(args.out, optimize=True)

        rows, spectrum, err_sigma = caption_numbers(report, work / "truth.html")
    print(f"page {page_size[0]} × {page_size[1]} px; kept rows {int(top)}–{int(bottom)} (sections {FIRST} to "
          f"{LAST}): {crop.size[0]} × {crop.size[1]} px, {args.out.stat().st_size / 1e3:.0f} kB, {args.out}")
    print("for the caption:")
    for status, count, which in rows:
        print(f"  {status}: {count}" + (f" ({which})" if which else ""))
    print(f"  {spectrum}")
    print(f"  err_sigma = {err_sigma:.5f} (with --truth)")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
