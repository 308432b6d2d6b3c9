"""report.html: the report's tables and a hand-drawn SVG of robust accuracy against eps
per target (float included), in one self-contained file with no dependencies."""
from __future__ import annotations

from html import escape

from . import views as V

COLORS = ["#000000", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
          "#e377c2", "#17becf"]
W, H, PAD, RIGHT = 640, 320, 48, 130     # RIGHT: room for the legend


def html(result: dict) -> str:
    """The whole page for a results document."""
    parts = [f"<h1>deployq report</h1><p><b>{escape(V.title(result))}</b>, "
             f"seed {result['seed']}</p>", _table(V.accuracy_rows(result))]
    pairs = V.pair_rows(result)
    if len(pairs) > 1:
        parts += ["<p>Integer outputs compared between targets:</p>", _table(pairs)]
    if "robustness" in result:
        parts += [f"<h2>{escape(V.robust_title(result))}</h2>", plot(result),
                  _table(V.robust_rows(result)), f"<p>{escape(V.SIGNIFICANCE_NOTE)}</p>",
                  "<p>Accuracy per source and attack:</p>",
                  _table(V.source_rows(result))]
        flags = V.flags(result)
        parts.append("<p>Honesty checks: all passed.</p>" if not flags else
                     "<ul>" + "".join(f"<li><b>{escape(f['target'])}</b> "
                                      f"<code>{f['check']}</code>: {escape(f['message'])}</li>"
                                      for f in flags) + "</ul>")
    if "profile" in result:
        parts += ["<h2>Size and speed</h2>", f"<p>{escape(V.machine(result))}</p>",
                  _table(V.profile_rows(result))]
        if "robustness" in result:
            parts += [scatter(result, "latency"), scatter(result, "size")]
    parts += [f"<p>skipped {escape(s['target'])}: {escape(s['reason'])}</p>"
              for s in result.get("skipped", [])]
    parts += [f"<p><b>failed {escape(f['target'])}</b>: {escape(f['error'])}</p>"
              for f in result.get("failed", [])]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>deployq report"
            "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:.2em .6em;text-align:right}td:first-child{text-align:left}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>\n")


def _table(rows) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def plot(result: dict) -> str:
    """SVG line plot: worst-case robust accuracy (clean at eps 0) against eps."""
    series = [(t["target"], [(0.0, t["clean"])] + [(e["eps"], e["robust"]) for e in t["eps"]])
              for t in result["robustness"]["targets"]]
    return line_chart(series, 0.0, max(result["robustness"]["eps"]) or 1.0, "eps")


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], x_min: float,
               x_max: float, x_label: str, y_label: str = "accuracy") -> str:
    """SVG: one labelled polyline per (name, [(x, accuracy in [0, 1])])."""
    def xy(x, a):
        return (PAD + (W - PAD - RIGHT) * (x - x_min) / (x_max - x_min),
                H - PAD - (H - 2 * PAD) * a)

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
           f"font-size='11'>", _axes(x_min, x_max, xy, x_label, y_label)]
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(*p) for p in pts))
        out.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' "
                   f"points='{path}'/>")
        out.append(f"<text x='{W - RIGHT + 8}' y='{PAD + 14 * i}' fill='{color}'>"
                   f"{escape(name)}</text>")
    return "".join(out) + "</svg>"


def scatter(result: dict, kind: str) -> str:
    """The Pareto view: robust accuracy at the middle eps against batch-1 latency or
    artifact size, one labelled point per target."""
    eps, robust = V.pareto_robust(result)
    pts = [(t["target"], t["latency"]["batch1_ms_median"] if kind == "latency"
            else t["artifact_bytes"] / 1024) for t in result["profile"]["targets"]
           if t["target"] in robust]
    if not pts:
        return ""
    x_max = max(v for _, v in pts) * 1.1 or 1.0
    unit = "batch-1 latency (ms)" if kind == "latency" else "artifact size (KB)"
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' font-size='11'>",
           f"<line x1='{PAD}' y1='{H - PAD}' x2='{W - RIGHT}' y2='{H - PAD}' stroke='#444'/>",
           f"<line x1='{PAD}' y1='{H - PAD}' x2='{PAD}' y2='{PAD}' stroke='#444'/>",
           f"<text x='{(W - RIGHT) / 2}' y='{H - 10}' text-anchor='middle'>{unit}</text>",
           f"<text x='12' y='{PAD - 10}'>robust accuracy, eps {eps:g}</text>"]
    for i, (name, v) in enumerate(pts):
        x = PAD + (W - PAD - RIGHT) * v / x_max
        y = H - PAD - (H - 2 * PAD) * robust[name]
        out.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{COLORS[i % len(COLORS)]}'/>"
                   f"<text x='{x + 6:.1f}' y='{y - 6:.1f}'>{escape(name)} "
                   f"({v:.3g}, {100 * robust[name]:.1f}%)</text>")
    return "".join(out) + "</svg>"


def _axes(x_min: float, x_max: float, xy, x_label: str, y_label: str) -> str:
    x0, y0 = xy(x_min, 0)
    x1, y1 = xy(x_max, 1)
    parts = [f"<line x1='{x0}' y1='{y0}' x2='{x1}' y2='{y0}' stroke='#444'/>",
             f"<line x1='{x0}' y1='{y0}' x2='{x0}' y2='{y1}' stroke='#444'/>",
             f"<text x='{(x0 + x1) / 2}' y='{H - 10}' text-anchor='middle'>"
             f"{escape(x_label)}</text>",
             f"<text x='12' y='{PAD - 10}'>{escape(y_label)}</text>"]
    for k in range(6):
        a = k / 5
        _, y = xy(x_min, a)
        parts.append(f"<text x='{x0 - 6}' y='{y + 4:.1f}' text-anchor='end'>"
                     f"{100 * a:.0f}%</text>")
        v = x_min + (x_max - x_min) * k / 5
        x, _ = xy(v, 0)
        parts.append(f"<text x='{x:.1f}' y='{y0 + 16}' text-anchor='middle'>{v:.3g}</text>")
    return "".join(parts)
