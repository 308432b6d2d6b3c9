"""Report views: one set of row builders (deployq.views) behind report.md, report.html
and the console, on a results document with every section."""
from html import escape

import pytest

from deployq import htmlreport, report, views as V


def _doc():
    by = lambda r: [{"source": "transfer", "attack": "fgsm", "accuracy": r + 0.1},
                    {"source": "bpda", "attack": "pgd", "accuracy": r}]
    target = lambda name, clean, rs, flags: {
        "target": name, "clean": clean, "flags": flags,
        "mirror": {"top1": 0.99, "identical": 0.8, "max_lsb": 2} if name != "float" else None,
        "eps": [{"eps": e, "robust": r, "by": by(r)} for e, r in zip((0.05, 0.1, 0.2), rs)]}
    prof = lambda i, name: {"target": name, "backend": "b", "artifact_bytes": 30000 + i,
                            "weight_bytes": 900, "macs": 27776, "peak_activation_bytes": 640,
                            "latency": {"batch1_ms_median": 0.1 + i, "batch1_ms_p90": 0.2 + i,
                                        "throughput_per_s": 12345.6}}
    return {"model": "zoo:m", "data": "digits", "samples": 360, "seed": 0,
            "results": [{"target": "float", "accuracy": 0.97, "agreement": 1.0},
                        {"target": "onnx-int8", "accuracy": 0.9611, "agreement": 0.99}],
            "pairs": [{"a": "onnx-int8", "b": "mcu-int8", "identical": 0.9, "max_lsb": 1}],
            "robustness": {"attacks": ["fgsm", "pgd"], "eps": [0.05, 0.1, 0.2],
                           "sources": ["transfer", "bpda"], "steps": 10, "restarts": 1,
                           "queries": 100, "samples": 50,
                           "targets": [target("float", 0.98, (0.8, 0.5, 0.1), []),
                                       target("onnx-int8", 0.96, (0.7, 0.4, 0.3),
                                              [{"check": "c", "message": "m <b>"}])]},
            "profile": {"machine": {"cpu": "cpu", "cores": 2, "isa": [], "versions": {}},
                        "targets": [prof(0, "onnx-int8")]}}


@pytest.mark.parametrize("rows", [V.accuracy_rows, V.pair_rows, V.robust_rows,
                                  V.source_rows, V.profile_rows])
def test_every_view_shows_the_same_rows(rows):
    doc = _doc()
    table = rows(doc)
    assert len(table) > 1 and all(len(r) == len(table[0]) for r in table)
    text, md, page = report.text(doc), report.markdown(doc), htmlreport.html(doc, figs={})
    for row in table[1:]:
        assert "| " + " | ".join(map(str, row)) + " |" in md
        assert "".join(f"<td>{escape(str(c))}</td>" for c in row) in page
    if rows is not V.source_rows:                 # the console omits the per-source table
        assert all(str(row[0]) in text for row in table[1:])


def test_a_cell_changes_every_view():
    """Negative control: the pages follow the rows, not a copy of them."""
    doc = _doc()
    before = report.markdown(doc), htmlreport.html(doc, figs={})
    doc["results"][1]["accuracy"] = 0.4321
    after = report.markdown(doc), htmlreport.html(doc, figs={})
    assert all("43.21%" in a and "43.21%" not in b for a, b in zip(after, before))
