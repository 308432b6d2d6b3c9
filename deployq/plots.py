"""The reports' figures, drawn with matplotlib and returned as self-contained SVG text
(inline in report.html, and written as files beside it).

Contract of every figure: numeric tick labels on the value axes (plain decimals, also on
log axes), a legend naming each series, and one distinct colour + marker pair per
series (10 colours x 11 markers: the pair never repeats below 110 series). Error bars
are the 95% intervals the caller passes. Text stays text in the SVG (svg.fonttype
'none'), so a test or a reader can find the tick labels in it.

matplotlib is imported inside the functions (the CLI and report.md never pay for it)
and used through matplotlib.figure.Figure on an Agg canvas (layout and text metrics),
saved by the SVG backend: no pyplot, no global backend switch, no display needed."""
from __future__ import annotations

import io
import math
import re

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#17becf", "#7f7f7f", "#bcbd22"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h"]
FLOAT_STYLE = ("#000000", "o")        # the float model: black circles in every figure
SIZE = (7.0, 3.6)                      # inches; 100 dpi in the SVG's viewBox units


def style(i: int, name: str = "") -> tuple[str, str]:
    """(colour, marker) of the i-th series; float always black circles."""
    if name == "float":
        return FLOAT_STYLE
    return COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]


def accuracy_chart(series: list[dict], x_label: str, title: str = "",
                   x_ticks: list[float] | None = None, tick_labels: list[str] | None = None,
                   dodge: bool = True, y_label: str = "accuracy (%)") -> str:
    """Lines of accuracy (fractions in [0, 1], drawn in %) against x, one per series
    {name, x: [..], y: [..], lo: [..] | None, hi: [..] | None, dashed: bool, family: str},
    with 95% error bars where lo/hi are given; series of one family share its colour
    (e.g. one target's certified and attacked lines), their markers differ. x_ticks: the measured x values (the ticks sit
    exactly there). dodge: shift series sideways by a few % of the smallest tick gap so
    identical lines stay visible (the ticks stay at the measured values)."""
    fig, ax = _figure()
    shift = _dodge_step(x_ticks or [x for s in series for x in s["x"]]) if dodge else 0.0
    families = list(dict.fromkeys(s.get("family", s["name"]) for s in series))
    for i, s in enumerate(series):
        family = s.get("family", s["name"])
        color, marker = style(families.index(family), family)
        if family != s["name"]:
            marker = MARKERS[i % len(MARKERS)]
        off = shift * (i - (len(series) - 1) / 2)
        xs = [x + off for x in s["x"]]
        ys = [100 * y for y in s["y"]]
        err = None
        if s.get("lo") is not None:
            err = [[100 * (y - lo) for y, lo in zip(s["y"], s["lo"])],
                   [100 * (hi - y) for y, hi in zip(s["y"], s["hi"])]]
        ax.errorbar(xs, ys, yerr=err, label=s["name"], color=color, marker=marker,
                    markersize=5, linewidth=1.4, capsize=2.5, elinewidth=0.8,
                    linestyle="--" if s.get("dashed") else "-")
    if x_ticks is not None:
        ax.set_xticks(x_ticks, labels=tick_labels or [f"{x:g}" for x in x_ticks])
    ax.set_ylim(-3, 103)
    ax.set_yticks(range(0, 101, 20))
    return _finish(fig, ax, x_label, y_label, title)


def scatter_chart(points: list[dict], x_label: str, y_label: str, title: str = "",
                  log_x: bool = True) -> str:
    """One marker per point {name, x, y, lo, hi} (y accuracy in [0, 1], drawn in %),
    named in the legend (no labels beside the points: they cannot collide), with a 95%
    error bar; x on a log axis by default (the targets' latencies span decades)."""
    fig, ax = _figure()
    for i, p in enumerate(points):
        color, marker = style(i, p["name"])
        err = None if p.get("lo") is None else [[100 * (p["y"] - p["lo"])],
                                                [100 * (p["hi"] - p["y"])]]
        ax.errorbar([p["x"]], [100 * p["y"]], yerr=err, label=p["name"], color=color,
                    marker=marker, markersize=7, linestyle="none", capsize=3, elinewidth=0.8)
    if log_x:
        ax.set_xscale("log")
        _log_axis(ax.xaxis, [p["x"] for p in points])
    _pct_axis(ax, [p for q in points for p in (q.get("lo", q["y"]), q.get("hi", q["y"]))])
    return _finish(fig, ax, x_label, y_label, title)


def layer_chart(series: list[dict], layers: list[str], y_label: str, title: str = "",
                log_y: bool = True, reference: float | None = None) -> str:
    """Lines of a per-layer quantity, one per series {name, y: [.. | None]} over the
    layers (categorical x, in execution order); log y by default; an optional dotted
    reference line (e.g. 1.0 for 'equal to float')."""
    fig, ax = _figure()
    xs = list(range(len(layers)))
    for i, s in enumerate(series):
        color, marker = style(i, s["name"])
        ys = [y if y is not None and y > 0 else math.nan for y in s["y"]]   # a gap, not a bridge
        ax.plot(xs, ys, label=s["name"], color=color, marker=marker, markersize=5,
                linewidth=1.4)
    ax.set_xticks(xs, labels=layers, rotation=30, ha="right", fontsize=8)
    values = [y for s in series for y in s["y"] if y is not None and y > 0]
    if reference is not None:
        ax.axhline(reference, color="#555555", linestyle=":", linewidth=1)
        values.append(reference)
    if log_y and values:
        ax.set_yscale("log")
        _log_axis(ax.yaxis, values)
    return _finish(fig, ax, "", y_label, title)


# --- shared ---------------------------------------------------------------------------

def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=SIZE, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, color="#e0e0e0", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig, ax


def _finish(fig, ax, x_label: str, y_label: str, title: str) -> str:
    """Labels, the legend outside the axes on the right, and the SVG text."""
    import matplotlib
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              ncols=1 + len(ax.get_legend_handles_labels()[1]) // 14)
    fig.tight_layout()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "deployq"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _strip_prolog(buf.getvalue())


def _dodge_step(xs: list[float]) -> float:
    xs = sorted(set(xs))
    gaps = [b - a for a, b in zip(xs, xs[1:]) if b > a]
    return 0.03 * min(gaps) if gaps else 0.0


def _pct_axis(ax, values: list[float]) -> None:
    """A % y axis from a little below the lowest value to 100."""
    low = max(0.0, math.floor(10 * min(values, default=0.0)) / 10 - 0.05)
    ax.set_ylim(100 * low - 2, 102)


def _log_axis(axis, values: list[float]) -> None:
    """Plain-decimal labels on a log axis (0.01, 0.1, 1, 10 rather than 10^-2): 1-2-5
    ticks inside the data's range, or its own endpoints when it spans less than a step."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    values = [v for v in values if v > 0]
    if not values:
        return
    lo, hi = min(values), max(values)
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1,
                                          math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
    if len(inside) < 2:
        inside = sorted({lo, hi}) if lo < hi else [lo / 2, lo, lo * 2]
    axis.set_major_locator(FixedLocator(inside))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())
    pad = 1.6
    axis.axes.set_xlim(min(inside + [lo]) / pad, max(inside + [hi]) * pad) \
        if axis is axis.axes.xaxis else \
        axis.axes.set_ylim(min(inside + [lo]) / pad, max(inside + [hi]) * pad)


_ID = re.compile(r'(id="|url\(#|xlink:href="#|href="#)([^"\)]+)')


def unique_ids(svg: str, prefix: str) -> str:
    """The SVG with every id (and every reference to one) prefixed: several figures
    inline in one page must not share ids (matplotlib numbers them per figure)."""
    return _ID.sub(lambda m: m.group(1) + prefix + "-" + m.group(2), svg)


def _strip_prolog(svg: str) -> str:
    """The <svg> element alone (no XML declaration or DOCTYPE), for inlining in HTML."""
    return svg[svg.index("<svg"):]
