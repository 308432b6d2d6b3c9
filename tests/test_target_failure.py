"""One target's failure does not hide the others: eval scores every target that works,
names the failed one in results.json and the reports, and exits 1 with one line per
failed target."""
import json

from deployq import api, report


def _broken_target(tmp_path):
    """A real target whose export fails: mcu-int8 with an unknown rounding variant."""
    d = tmp_path / "targets"
    d.mkdir()
    text = (api.T.get("mcu-int8").path.read_text()
            .replace('name = "mcu-int8"', 'name = "mcu-broken"')
            .replace('rounding_variant = "double"', 'rounding_variant = "bogus"'))
    (d / "mcu-broken.toml").write_text(text)
    return d


def test_eval_reports_the_failed_target_and_scores_the_others(run_cli, tmp_path):
    targets = _broken_target(tmp_path)
    out, path = tmp_path / "out", tmp_path / "r.json"
    code, stdout, err = run_cli("eval", "-t", "onnx-int8,mcu-broken", "--targets-dir",
                                targets, "-o", out, "--samples", 50, "--json", path)
    assert code == 1, err
    lines = [l for l in err.splitlines() if l.startswith("deployq: error:")]
    assert len(lines) == 1 and "target mcu-broken failed" in lines[0]
    assert "rounding_variant" in lines[0] and "Traceback" not in err
    doc = json.loads(path.read_text())
    assert [r["target"] for r in doc["results"]] == ["float", "onnx-int8"]
    assert doc["failed"][0]["target"] == "mcu-broken"
    assert "failed mcu-broken" in stdout and "onnx-int8" in stdout
    assert "failed mcu-broken" in report.markdown(doc)


def test_eval_without_failures_exits_0_and_has_no_failed_key(run_cli, tmp_path):
    path = tmp_path / "r.json"
    code, _, err = run_cli("eval", "-t", "onnx-int8", "-o", tmp_path / "out",
                           "--samples", 20, "--json", path)
    assert code == 0, err
    assert "failed" not in json.loads(path.read_text())
