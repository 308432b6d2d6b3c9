"""report.html in a real browser (Debian's chromium, headless): it renders without
console messages, every figure has a nonzero size, numeric tick labels and a legend as
the browser laid them out, and a screenshot is kept (in $DEPLOYQ_ARTIFACTS when set,
for CI to upload, else in the test's tmp folder). Negative controls: a figure without
tick labels, one without a legend and a page that logs to the console all fail."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deployq import plots, report

DATA = Path(__file__).parent / "data" / "results-lenet-digits.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not "
                                "installed (apt-get install chromium)")
CATEGORICAL_X = {"amplification"}          # layer names on x; numeric on y
# After load, the page reports what the browser laid out for each figure.
PROBE = """<script>
const out = [...document.querySelectorAll('figure')].map(f => {
  const svg = f.querySelector('svg'), box = svg ? svg.getBoundingClientRect() : {};
  const texts = sel => [...f.querySelectorAll(sel)].map(t => t.textContent.trim())
                                                   .filter(t => t);
  return {id: f.id, width: box.width || 0, height: box.height || 0,
          x: texts('g[id*="xtick_"] text'), y: texts('g[id*="ytick_"] text'),
          legend: texts('g[id*="legend_"] text')};
});
const pre = document.createElement('pre'); pre.id = 'dq-probe';
pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
</script>"""
NUMBER = re.compile(r"^[−-]?\d+(\.\d+)?(e[−-]?\d+)?%?$")


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--enable-logging=stderr", "--v=0", *args,
                           page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=120)


def problems(page: Path) -> list[str]:
    """What is wrong with report.html as chromium renders it (empty: nothing)."""
    probed = page.with_name("probed-" + page.name)
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    run = chromium(probed, "--dump-dom")
    found = [f"console: {line}" for line in run.stderr.splitlines() if ":CONSOLE" in line]
    m = re.search(r"<pre id=\"dq-probe\">(.*?)</pre>", run.stdout, re.S)
    if m is None:
        return found + [f"the page did not render (chromium exit {run.returncode})"]
    figures = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    if len(figures) != page.read_text().count("<svg"):
        found.append(f"{len(figures)} figures laid out, {page.read_text().count('<svg')} "
                     "SVGs in the page")
    return found + [p for f in figures for p in _figure_problems(f)]


def _figure_problems(f: dict) -> list[str]:
    out = []
    if not (f["width"] > 100 and f["height"] > 100):
        out.append(f"{f['id']}: laid out at {f['width']}x{f['height']} px")
    for axis in ("x", "y"):
        numeric = [t for t in f[axis] if NUMBER.match(t)]
        need_numeric = not (axis == "x" and f["id"] in CATEGORICAL_X)
        if len(f[axis]) < 2 or (need_numeric and len(numeric) < 2):
            out.append(f"{f['id']}: {axis} tick labels {f[axis]} (need 2 or more"
                       f"{', numeric' if need_numeric else ''})")
    if not f["legend"]:
        out.append(f"{f['id']}: no legend")
    return out


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DEPLOYQ_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def result():
    """The results of a real `deployq run` on the built-in model and data (every
    target, certify and amplify stages; tests/data/README.md says how it was made)."""
    return report.load(DATA)


def test_report_renders_with_readable_figures(result, tmp_path):
    files = report.write(result, tmp_path)
    names = {f.name for f in files}
    expected = {"accuracy-vs-eps", "pareto-latency", "pareto-size", "certified",
                "amplification"}
    assert {f"plot-{n}.svg" for n in expected} <= names
    page = tmp_path / "report.html"
    assert problems(page) == []
    shot = _artifacts(tmp_path) / "report.png"
    chromium(page, f"--screenshot={shot}", "--window-size=1100,5200")
    assert shot.stat().st_size > 50_000


def test_mcu_qemu_sits_at_device_time_in_the_pareto_view(result, tmp_path):
    """The latency figure places the MCU build at instructions / clock, not at QEMU's
    host time; the clock is the caller's."""
    prof = next(t for t in result["profile"]["targets"] if "mcu_footprint" in t)
    ins = prof["mcu_footprint"]["instructions_per_inference"]["mean"]
    page = report.markdown(result, clock_mhz=48)
    assert f"{ins / 48e3:.3f} ms at 48 MHz" in page
    assert f"{ins / 168e3:.3f} ms at 168 MHz" in report.markdown(result)


@pytest.mark.parametrize("break_it", ["ticks", "legend", "console"])
def test_a_broken_report_fails_the_check(result, tmp_path, monkeypatch, break_it):
    """Negative controls: the check finds a figure without tick labels, one without a
    legend, and a page that writes to the console."""
    if break_it == "ticks":
        original = plots._finish

        def no_ticks(fig, ax, *args):
            ax.set_xticks([])
            ax.set_yticks([])
            return original(fig, ax, *args)
        monkeypatch.setattr(plots, "_finish", no_ticks)
    if break_it == "legend":
        original = plots._finish

        def no_legend(fig, ax, *args):
            svg = original(fig, ax, *args)
            return re.sub(r'<g id="legend_1">.*?</g>\n  </g>\n', "", svg, flags=re.S)
        monkeypatch.setattr(plots, "_finish", no_legend)
    doc = {k: v for k, v in result.items() if k not in ("certify", "amplify", "profile")}
    report.write(doc, tmp_path)
    page = tmp_path / "report.html"
    if break_it == "console":
        page.write_text(page.read_text().replace(
            "</body>", "<script>console.error('broken')</script></body>"))
    found = problems(page)
    assert found, break_it
    assert any({"ticks": "tick labels", "legend": "no legend",
                "console": "console"}[break_it] in p for p in found), found
