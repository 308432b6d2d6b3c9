"""The report's content on a real run's results (tests/data/results-lenet-digits.json):
the MCU footprint, one clean accuracy and why the attacked subset differs, intervals,
the worst attack per source with the detail folded away, the change vs float with
McNemar's test; and the figures' SVG (ticks, legend, distinct styles)."""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from deployq import htmlreport, plots, report, stats, views as V

DATA = Path(__file__).parent / "data" / "results-lenet-digits.json"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def result():
    return report.load(DATA)


def test_mcu_section_shows_the_device_figures(result):
    fp = next(t for t in result["profile"]["targets"] if "mcu_footprint" in t)["mcu_footprint"]
    md = report.markdown(result)
    section = md[md.index("## Microcontroller footprint"):]
    assert V.size(fp["firmware_flash_bytes"]) in section and V.size(fp["ram_bytes"]) in section
    assert V.size(fp["arena_bytes"]) in section
    assert f"{fp['instructions_per_inference']['mean']:,.0f}" in section
    # the size table shows the flash image and device time, the ELF and host time aside
    row = next(r for r in V.profile_rows(result) if r[0] == "mcu-qemu")
    assert row[3].startswith("flash ") and "device est." in row[-2]


def test_one_clean_accuracy_and_why_the_attacked_subset_differs(result):
    md = report.markdown(result)
    n, m = result["samples"], result["robustness"]["samples"]
    assert f"Clean accuracy is measured on all {n} test samples" in md
    assert f"the first {m} of them" in md and f"eps 0 ({m} attacked samples)" in md
    assert md.count("| clean |") == 0            # no second column called 'clean'


def test_every_accuracy_has_an_interval(result):
    """Every percentage in the report's accuracy tables carries [lo, hi], except the
    mirror's and the pairs' agreement (not accuracies)."""
    for rows in (V.accuracy_rows(result), V.robust_rows(result),
                 V.worst_source_rows(result), V.source_rows(result), V.certify_rows(result)):
        for row in rows[1:]:
            for head, cell in zip(rows[0][1:], row[1:]):
                if "agreement" in head:
                    continue
                for share in re.findall(r"\d+\.\d+%\*?( \[)?", str(cell)):
                    assert share == " [", (rows[0], row)
    row = V.profile_rows(result)[1]
    assert "[" in row[1] and "[" in row[2]


def test_worst_attack_per_source_and_detail_behind_details(result):
    worst = V.worst_source_rows(result)
    detail = V.source_rows(result)
    targets = result["robustness"]["targets"]
    assert len(worst) - 1 == sum(len({b["source"] for b in t["eps"][0]["by"]}) for t in targets)
    assert len(worst) < len(detail)
    t = targets[0]
    e = t["eps"][1]
    low = min((b for b in e["by"] if b["source"] == "transfer"), key=lambda b: b["accuracy"])
    row = next(r for r in worst if r[:2] == (t["target"], "transfer"))
    assert row[3].startswith(V.pct_ci(low["accuracy"], low["accuracy_ci95"]))
    assert f"({low['attack']})" in row[3]
    page = htmlreport.html(result, figs={})
    assert "<details><summary>Accuracy under every source and attack</summary><table>" in page


def test_change_vs_float_is_mcnemar_on_the_same_samples():
    n = 40
    flt = stats.pack([True] * 40)
    worse = stats.pack([True] * 30 + [False] * 10)
    cell = V.change(worse, flt, n, False)
    assert cell.startswith("-25.0 pts") and cell.endswith("*")         # 0 vs 10 discordant
    same = V.change(flt, flt, n, False)
    assert same == "+0.0 pts (p 1)"                                      # negative control


def _svg(result, name):
    if name == "accuracy-vs-eps":
        return htmlreport.accuracy_vs_eps(result)[1]
    return htmlreport.pareto(result, "latency")[1]


def _labels(svg: str, group: str) -> list[str]:
    """The text inside each <g id="{group}_N"> (xtick, ytick, legend) of an SVG."""
    root = ET.fromstring(svg)
    return [t.text.strip() for g in root.iter(f"{SVG}g")
            if re.fullmatch(group + r"_\d+", g.get("id", ""))
            for t in g.iter(f"{SVG}text") if t.text and t.text.strip()]


def test_figures_have_numeric_ticks_legend_and_measured_eps(result):
    svg = _svg(result, "accuracy-vs-eps")
    assert _labels(svg, "xtick") == ["0"] + V.eps_labels(result["robustness"])  # measured eps
    assert _labels(svg, "ytick") == ["0", "20", "40", "60", "80", "100"]
    assert _labels(svg, "legend") == [t["target"] for t in result["robustness"]["targets"]]
    pareto = _svg(result, "pareto-latency")
    ticks = _labels(pareto, "xtick")                 # log axis: plain decimals, no 10^k
    assert len(ticks) >= 2 and all(re.fullmatch(r"[\d.]+", t) for t in ticks)
    assert any("(device est., 168 MHz)" in t for t in _labels(pareto, "legend"))


def test_styles_are_distinct_beyond_ten_series():
    pairs = [plots.style(i) for i in range(30)]
    assert len(set(pairs)) == 30 and len({c for c, _ in pairs}) == 10
    assert plots.style(3, "float") == plots.FLOAT_STYLE


def test_unique_ids_prefix_every_reference():
    svg = '<g id="a"><use xlink:href="#b"/><path clip-path="url(#c)"/></g>'
    assert plots.unique_ids(svg, "f") == ('<g id="f-a"><use xlink:href="#f-b"/>'
                                          '<path clip-path="url(#f-c)"/></g>')


def test_run_amplify_stage_writes_the_table_and_figure(tmp_path):
    from deployq import api
    cfg = {"targets": ["fpga-fixed", "onnx-int8"], "attacks": [], "profile_repeats": 0,
           "amplify": 0.05, "amplify_samples": 5, "samples": 20, "calib_samples": 64,
           "out": str(tmp_path)}
    result, files = api.run(cfg)
    amp = result["amplify"]
    assert list(amp["misclassified"]) == ["float", "fpga-fixed"]     # onnx-int8 cannot dump
    assert amp["samples"] == 5 and all(r["float"] is not None for r in amp["layers"][1:])
    assert tmp_path / "plot-amplification.svg" in files
    assert "Perturbation amplification per layer" in (tmp_path / "report.md").read_text()
    assert "id='amplification'" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("key, value", [("amplify", 2.0), ("amplify_samples", 0),
                                        ("mcu_clock_mhz", -1)])
def test_bad_report_settings_are_refused_before_work(tmp_path, key, value):
    from deployq import api
    from deployq.errors import InputError
    with pytest.raises(InputError, match=key):
        api.run({key: value, "out": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()
