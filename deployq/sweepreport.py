"""The views of a sweep document (deployq/sweep.py): sweep.json, a tidy sweep.csv,
report.md and report.html (figures by deployq.plots, also as plot-*.svg) with
  - robust accuracy against eps, one panel per target, one line per weight width
    (Gorsline et al., arXiv 2105.00227),
  - each cell's signed change from float (gains too) with a 95% interval and McNemar's
    paired test on the same samples,
  - plain vs adversarially trained models side by side: absolute and relative loss to
    quantization (Song et al., arXiv 2110.12308).
No heavy imports. Intervals and McNemar's test come from deployq/stats.py; the paired
interval of a difference (Newcombe) is here."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from html import escape
from pathlib import Path

from . import stats
from .io import atomic_write

ADV = "-adv"


# --- statistics (intervals and tests: deployq/stats.py) ---------------------------------

def paired_interval(a, b) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) for two boolean masks on the same samples:
    Newcombe's square-and-add of Wilson intervals with the paired correlation
    (Newcombe 1998, Stat Med 17:2635, method 10)."""
    a, b = [bool(x) for x in a], [bool(y) for y in b]
    n = len(a)
    both, only_a = sum(x and y for x, y in zip(a, b)), sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    neither = n - both - only_a - only_b
    ka, kb = both + only_a, both + only_b
    pa, pb = ka / n, kb / n
    (la, ua), (lb, ub) = stats.wilson(ka, n), stats.wilson(kb, n)
    denom = math.sqrt((both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither))
    phi = (both * neither - only_a * only_b) / denom if denom else 0.0
    d = pa - pb
    low = math.sqrt(max(0.0, (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2))
    high = math.sqrt(max(0.0, (ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2))
    return max(-1.0, d - low), min(1.0, d + high)


def mcnemar(a, b) -> float:
    """Exact two-sided McNemar p-value of two boolean masks on the same samples."""
    return stats.paired([bool(x) for x in a], [bool(y) for y in b])["p"]


# --- reading cells -------------------------------------------------------------------

def _masks(entry: dict, eps_row: dict, n: int):
    import numpy as np
    return (np.array(stats.unpack(entry["clean_mask"], n), bool),
            np.array(stats.unpack(eps_row["robust_mask"], n), bool))


def observations(doc: dict) -> list[dict]:
    """One row per successful cell and subject (float, the cell's target): its axes,
    clean and robust accuracy with Wilson intervals, and for the target the signed
    change from float with its paired interval and McNemar p-value."""
    rows = []
    for cell in doc["cells"]:
        if cell["status"] != "ok":
            continue
        rob = cell["result"]["robustness"]
        n = rob["samples"]
        by = {t["target"]: t for t in rob["targets"]}
        masks = {name: _masks(t, t["eps"][0], n) for name, t in by.items()}
        for name, t in by.items():
            clean, robust = masks[name]
            row = cell["axes"] | {"cell": cell["id"], "subject": name, "samples": n,
                                  "clean": t["clean"], "robust": t["eps"][0]["robust"]}
            lo, hi = stats.wilson(int(robust.sum()), n)
            row |= {"robust_low": lo, "robust_high": hi}
            if name != "float":
                row |= _change(masks["float"], masks[name])
            rows.append(row)
    return rows


def _change(ref, quant) -> dict:
    out = {}
    for i, metric in enumerate(("clean", "robust")):
        a, b = quant[i], ref[i]
        lo, hi = paired_interval(list(a), list(b))
        out |= {f"{metric}_change": float(a.mean() - b.mean()), f"{metric}_change_low": lo,
                f"{metric}_change_high": hi, f"{metric}_mcnemar_p": mcnemar(list(a), list(b))}
    return out


CSV_FIELDS = ("cell", "model", "target", "weight_bits", "activation_bits", "plan", "eps",
              "strength", "subject", "samples", "clean", "robust", "robust_low",
              "robust_high", "clean_change", "clean_change_low", "clean_change_high",
              "clean_mcnemar_p", "robust_change", "robust_change_low", "robust_change_high",
              "robust_mcnemar_p", "status", "reason")


def tidy_csv(doc: dict, rows: list[dict]) -> str:
    """One observation per line; failed and skipped cells as lines with their reason."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r | {"status": "ok"})
    for c in doc["cells"]:
        if c["status"] != "ok":
            w.writerow(c["axes"] | {"cell": c["id"], "status": "failed", "reason": c["error"]})
    for s in doc["skipped"]:
        w.writerow(s["axes"] | {"status": "skipped", "reason": s["reason"]})
    return buf.getvalue()


def width(row: dict) -> str:
    """The line a cell belongs to in the eps figure: its weight width or plan."""
    if row["subject"] == "float":
        return "float"
    label = row["plan"] or (f"w{row['weight_bits']}" if row["weight_bits"] else "w default")
    return label + (f" a{row['activation_bits']}" if row["activation_bits"] else "")


def curves(rows: list[dict]) -> dict:
    """{(model, strength): {target: {line: [(eps, robust)]}}}; float once per target."""
    out: dict = {}
    for r in rows:
        panel = out.setdefault((r["model"], r["strength"]), {}).setdefault(r["target"], {})
        pts = panel.setdefault(width(r), {})
        pts[r["eps"]] = r["robust"]
    return {k: {t: {line: sorted(p.items()) for line, p in lines.items()}
                for t, lines in panels.items()} for k, panels in out.items()}


def song_rows(rows: list[dict]) -> list[dict]:
    """For each model M with M-adv in the sweep: per target, width, eps and strength,
    float and quantized accuracy (clean, robust), absolute and relative loss."""
    quant = {(r["model"], r["target"], width(r), r["eps"], r["strength"]): r
             for r in rows if r["subject"] != "float"}
    floats = {(r["model"], r["eps"], r["strength"]): r for r in rows if r["subject"] == "float"}
    out = []
    for (model, target, line, eps, strength), q in sorted(quant.items(), key=str):
        if model.endswith(ADV) or (model + ADV, target, line, eps, strength) not in quant:
            continue
        row = {"model": model, "target": target, "width": line, "eps": eps,
               "strength": strength}
        for kind, m in (("plain", model), ("adv", model + ADV)):
            f, qr = floats[(m, eps, strength)], quant[(m, target, line, eps, strength)]
            for metric in ("clean", "robust"):
                loss = f[metric] - qr[metric]
                row[f"{kind}_{metric}"] = (f[metric], qr[metric], loss,
                                           loss / f[metric] if f[metric] else None)
        out.append(row)
    return out


# --- views -----------------------------------------------------------------------------

def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _pts(v) -> str:
    return "-" if v is None else f"{100 * v:+.1f}"


def _p(v) -> str:
    return "-" if v is None else (f"{v:.3f}" + (" *" if v < 0.05 else ""))


def _md(rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(map(str, rows[0])) + " |",
             "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows[1:]])


def curve_tables(rows: list[dict]) -> list[tuple[str, list[tuple]]]:
    """(title, table rows) per model, strength and target: robust accuracy by eps."""
    out = []
    for (model, strength), panels in curves(rows).items():
        for target, lines in panels.items():
            eps = sorted({e for pts in lines.values() for e, _ in pts})
            table = [("line",) + tuple(f"eps {e:g}" for e in eps)]
            for line, pts in lines.items():
                d = dict(pts)
                table.append((line,) + tuple(_pct(d.get(e)) for e in eps))
            out.append((f"{model}, {target}, strength {strength}", table))
    return out


def change_table(rows: list[dict], metric: str) -> list[tuple]:
    head = ("model", "target", "width", "strength", "eps", "float", "quantized",
            "change (points)", "95% interval", "McNemar p")
    floats = {(r["cell"]): r for r in rows if r["subject"] == "float"}
    table = [head]
    for r in rows:
        if r["subject"] == "float" or (metric == "clean" and r["eps"] != _first_eps(rows, r)):
            continue
        f = floats[r["cell"]]
        table.append((r["model"], r["target"], width(r), r["strength"],
                      "-" if metric == "clean" else f"{r['eps']:g}", _pct(f[metric]),
                      _pct(r[metric]), _pts(r[f"{metric}_change"]),
                      f"[{_pts(r[f'{metric}_change_low'])}, {_pts(r[f'{metric}_change_high'])}]",
                      _p(r[f"{metric}_mcnemar_p"])))
    return table


def _first_eps(rows: list[dict], r: dict) -> float:
    return min(x["eps"] for x in rows if x["model"] == r["model"] and x["target"] == r["target"])


def song_table(rows: list[dict]) -> list[tuple]:
    table = [("model", "target", "width", "eps", "metric", "plain float", "plain quantized",
              "plain loss (abs, rel)", "adv float", "adv quantized", "adv loss (abs, rel)")]
    seen = set()
    for s in song_rows(rows):
        key = (s["model"], s["target"], s["width"], s["strength"])
        for metric in ("clean", "robust")[key in seen:]:     # clean once per width
            cells = []
            for kind in ("plain", "adv"):
                f, q, loss, rel = s[f"{kind}_{metric}"]
                cells += [_pct(f), _pct(q), f"{_pts(loss)} pts, {_pct(rel)}"]
            table.append((s["model"], s["target"], s["width"],
                          "-" if metric == "clean" else f"{s['eps']:g}", metric, *cells))
        seen.add(key)
    return table


def markdown(doc: dict, rows: list[dict]) -> str:
    cfg, run = doc["config"], doc["run"]
    ok = sum(c["status"] == "ok" for c in doc["cells"])
    parts = [f"# Sweep: {len(doc['cells'])} cells ({ok} ok, "
             f"{len(doc['cells']) - ok} failed), {len(doc['skipped'])} skipped",
             f"Attacks {', '.join(cfg['attacks'])} from {', '.join(cfg['sources'])}, "
             f"{cfg['samples']} samples, seed {cfg['seed']}; ran with the {run['executor']} "
             f"executor, {run['workers']} workers: {run['computed']} computed, "
             f"{run['cached']} cached, {run['wall_seconds']:.1f} s.",
             "## Robust accuracy against eps (worst case, on the runtime)"]
    for title, table in curve_tables(rows):
        parts += [f"### {title}", _md(table)]
    parts += ["## Change from float (robust accuracy; * McNemar p < 0.05)",
              _md(change_table(rows, "robust")),
              "## Change from float (clean accuracy on the attacked samples)",
              _md(change_table(rows, "clean"))]
    song = song_table(rows)
    if len(song) > 1:
        parts += ["## Plain vs adversarially trained: loss to quantization", _md(song)]
    parts += _problems(doc)
    return "\n\n".join(parts) + "\n"


def _problems(doc: dict) -> list[str]:
    parts = []
    failed = [c for c in doc["cells"] if c["status"] != "ok"]
    if failed:
        parts += ["## Failed cells", "\n".join(f"- `{c['id']}` {_axes(c['axes'])}: {c['error']}"
                                               for c in failed)]
    if doc["skipped"]:
        parts += ["## Skipped cells", "\n".join(f"- {_axes(s['axes'])}: {s['reason']}"
                                                for s in doc["skipped"])]
    return parts


def _axes(axes: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in axes.items() if v is not None)


def figures(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """{name: (caption, svg)}: robust accuracy against eps per model, strength and
    target, one line per width, with 95% Wilson intervals (deployq.plots)."""
    from . import plots
    ci = {(r["model"], r["strength"], r["target"], width(r), r["eps"]):
          (r["robust_low"], r["robust_high"]) for r in rows}
    out = {}
    for (model, strength), panels in curves(rows).items():
        for target, lines in panels.items():
            eps = sorted({e for pts in lines.values() for e, _ in pts})
            series = [{"name": line, "x": [e for e, _ in pts], "y": [v for _, v in pts],
                       "lo": [ci[(model, strength, target, line, e)][0] for e, _ in pts],
                       "hi": [ci[(model, strength, target, line, e)][1] for e, _ in pts]}
                      for line, pts in lines.items()]
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{strength}-{target}")
            out[name] = (f"{model}, {target}, strength {strength}", plots.accuracy_chart(
                series, "eps", x_ticks=eps, y_label="robust accuracy (%)"))
    return out


def html(doc: dict, rows: list[dict], figs: dict | None = None) -> str:
    from .plots import unique_ids
    figs = figures(rows) if figs is None else figs
    body = [f"<h1>{escape(markdown(doc, rows).splitlines()[0][2:])}</h1>",
            "<h2>Robust accuracy against eps (95% intervals)</h2>"]
    body += [f"<figure id='{name}'>{unique_ids(svg, name)}<figcaption>{escape(caption)} "
             f"(also plot-{name}.svg)</figcaption></figure>"
             for name, (caption, svg) in figs.items()]
    for title, table in (("Change from float, robust (* McNemar p &lt; 0.05)",
                          change_table(rows, "robust")),
                         ("Plain vs adversarially trained", song_table(rows))):
        if len(table) > 1:
            body += [f"<h2>{title}</h2>", _html_table(table)]
    body += [f"<pre>{escape(p)}</pre>" for p in _problems(doc)]
    return ("<!doctype html><meta charset='utf-8'><title>deployq sweep</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px}"
            "svg{max-width:100%;height:auto}</style>" + "".join(body))


def _html_table(rows: list[tuple]) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write(doc: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    rows = observations(doc)
    figs = figures(rows)
    files = {"sweep.json": json.dumps(doc, indent=1), "sweep.csv": tidy_csv(doc, rows),
             "report.md": markdown(doc, rows), "report.html": html(doc, rows, figs)}
    files |= {f"plot-{name}.svg": svg for name, (_, svg) in figs.items()}
    for name, text in files.items():
        atomic_write(out / name, text.encode())
    return [out / name for name in files]
