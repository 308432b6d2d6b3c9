"""report.html: the report's tables (deployq.views) and its figures (deployq.plots,
inline SVG), in one self-contained file. figures() builds each figure once; report.write
also saves them as plot-<name>.svg beside the page."""
from __future__ import annotations

from html import escape

from . import plots, stats, views as V


def html(result: dict, clock_mhz: float | None = None, figs: dict | None = None) -> str:
    """The whole page for a results document (figs: figures() already drawn)."""
    figs = figures(result, clock_mhz) if figs is None else figs
    parts = [f"<h1>deployq report</h1><p><b>{escape(V.title(result))}</b>, "
             f"seed {result['seed']}</p>", _table(V.accuracy_rows(result)),
             f"<p>{escape(V.SIGNIFICANCE_NOTE)}</p>"]
    pairs = V.pair_rows(result)
    if len(pairs) > 1:
        parts += ["<p>Integer outputs compared between targets:</p>", _table(pairs)]
    if "robustness" in result:
        parts += _robustness(result, figs)
    if "profile" in result:
        parts += ["<h2>Size and speed</h2>", f"<p>{escape(V.machine(result))}</p>",
                  _table(V.profile_rows(result, clock_mhz)),
                  _figure(figs, "pareto-latency"), _figure(figs, "pareto-size")]
        mcu = V.mcu_rows(result, clock_mhz)
        if len(mcu) > 1:
            parts += ["<h2>Microcontroller footprint</h2>", _table(mcu),
                      f"<p>{escape(V.mcu_note(clock_mhz))}</p>"]
    if "certify" in result:
        parts += [f"<h2>{escape(V.certify_title(result))}</h2>", _figure(figs, "certified"),
                  _table(V.certify_rows(result)),
                  "<details><summary>Float vs integer certificates, soundness checks</summary>"
                  + _table(V.certify_detail_rows(result)) + "</details>"]
    if "amplify" in result:
        parts += [f"<h2>{escape(amplify_title(result['amplify']))}</h2>",
                  _figure(figs, "amplification"), _table(V.amplify_rows(result["amplify"]))]
    parts += [f"<p>skipped {escape(s['target'])}: {escape(s['reason'])}</p>"
              for s in result.get("skipped", [])]
    parts += [f"<p><b>failed {escape(f['target'])}</b>: {escape(f['error'])}</p>"
              for f in result.get("failed", [])]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>deployq report"
            "</title><style>body{font-family:sans-serif;max-width:80em;margin:2em auto}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:.2em .6em;text-align:right;white-space:nowrap}"
            "td:first-child{text-align:left}"
            "figure{margin:1em 0}figcaption{font-size:90%;color:#444}"
            "svg{max-width:100%;height:auto}</style>"
            "</head><body>" + "\n".join(p for p in parts if p) + "</body></html>\n")


def _robustness(result: dict, figs: dict) -> list[str]:
    flags = V.flags(result)
    return [f"<h2>{escape(V.robust_title(result))}</h2>", _figure(figs, "accuracy-vs-eps"),
            f"<p>{escape(V.clean_note(result))}</p>", _table(V.robust_rows(result)),
            "<p>The strongest attack per source (the lowest accuracy it left, and which "
            "attack that was):</p>", _table(V.worst_source_rows(result)),
            "<details><summary>Accuracy under every source and attack</summary>"
            + _table(V.source_rows(result)) + "</details>",
            "<p>Honesty checks: all passed.</p>" if not flags else
            "<ul>" + "".join(f"<li><b>{escape(f['target'])}</b> <code>{f['check']}</code>: "
                             f"{escape(f['message'])}</li>" for f in flags) + "</ul>"]


def _table(rows) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(figs: dict, name: str) -> str:
    if name not in figs:
        return ""
    caption, svg = figs[name]
    return (f"<figure id='{name}'>{plots.unique_ids(svg, name)}"
            f"<figcaption>{escape(caption)} (also plot-{name}.svg)</figcaption></figure>")


# --- the figures ---------------------------------------------------------------------------

def figures(result: dict, clock_mhz: float | None = None) -> dict[str, tuple[str, str]]:
    """{name: (caption, svg)} for every figure the results have data for."""
    out = {}
    if "robustness" in result:
        out["accuracy-vs-eps"] = accuracy_vs_eps(result)
        if "profile" in result:
            out["pareto-latency"] = pareto(result, "latency", clock_mhz)
            out["pareto-size"] = pareto(result, "size", clock_mhz)
    if "certify" in result:
        out["certified"] = certified(result["certify"])
    if "amplify" in result:
        out["amplification"] = amplification(result["amplify"])
    return {k: v for k, v in out.items() if v is not None}


def accuracy_vs_eps(result: dict) -> tuple[str, str]:
    """Worst-case robust accuracy against eps (eps 0: unperturbed), per target."""
    r = result["robustness"]
    series = []
    for t in r["targets"]:
        cis = [t.get("clean_ci95")] + [e.get("robust_ci95") for e in t["eps"]]
        series.append({"name": t["target"], "x": [0.0] + [e["eps"] for e in t["eps"]],
                       "y": [t["clean"]] + [e["robust"] for e in t["eps"]],
                       **_bounds(cis)})
    svg = plots.accuracy_chart(series, "eps (L-inf, input units)", x_ticks=[0.0] + r["eps"],
                               tick_labels=["0"] + V.eps_labels(r),
                               y_label="robust accuracy (%)")
    return (f"Worst-case robust accuracy against eps on {r['samples']} samples, 95% Wilson "
            "intervals as error bars; the lines are shifted sideways by a hair so that "
            "identical targets stay visible (ticks at the measured eps).", svg)


def _bounds(cis: list) -> dict:
    """lo/hi lists from [lo, hi] pairs, or none when any is missing (older results)."""
    if any(not c for c in cis):
        return {}
    return {"lo": [c[0] for c in cis], "hi": [c[1] for c in cis]}


def pareto(result: dict, kind: str, clock_mhz: float | None = None) -> tuple[str, str] | None:
    """Robust accuracy at the middle eps against batch-1 latency or size, one marker per
    target. An MCU build sits at its estimated device time and flash image, not at the
    emulator's host time and the ELF file."""
    eps, robust = V.pareto_robust(result)
    ci = {t["target"]: t["eps"][len(t["eps"]) // 2].get("robust_ci95")
          for t in result["robustness"]["targets"]}
    points, device = [], []
    for t in result["profile"]["targets"]:
        if t["target"] not in robust:
            continue
        x, name = _pareto_x(t, kind, clock_mhz)
        device += [name] if name != t["target"] else []
        c = ci.get(t["target"])
        points.append({"name": name, "x": x, "y": robust[t["target"]],
                       **({"lo": c[0], "hi": c[1]} if c else {})})
    if not points:
        return None
    label = ("batch-1 latency (ms, log scale)" if kind == "latency"
             else "size (KB, log scale)")
    svg = plots.scatter_chart(points, label, f"robust accuracy at eps {eps:g} (%)")
    what = ("median batch-1 latency on this machine, one thread" if kind == "latency" else
            "the exported artifact's size")
    if device:
        what += ("; MCU builds at their estimated device time (instructions per inference "
                 "at the stated clock)" if kind == "latency" else
                 "; MCU builds at their flash image")
    return f"Robust accuracy at eps {eps:g} against {what}; 95% intervals.", svg


def _pareto_x(t: dict, kind: str, clock_mhz: float | None) -> tuple[float, str]:
    fp = t.get("mcu_footprint")
    if kind == "latency":
        if fp:
            ms, mhz = V.device_ms(fp, clock_mhz)
            return ms, f"{t['target']} (device est., {mhz:g} MHz)"
        return t["latency"]["batch1_ms_median"], t["target"]
    if fp:
        return fp["firmware_flash_bytes"] / 1024, f"{t['target']} (flash)"
    return t["artifact_bytes"] / 1024, t["target"]


def certified(c: dict) -> tuple[str, str]:
    """Certified (solid) and attacked (dashed, an upper bound) accuracy against eps."""
    n, series = c["samples"], []
    for t in c["targets"]:
        for key, dashed in (("certified", False), ("attacked", True)):
            ys = [e[key] for e in t["eps"]]
            cis = [stats.wilson(round(v * n), n) for v in ys]
            series.append({"name": f"{t['target']} {key}", "x": c["eps"], "y": ys,
                           "lo": [a for a, _ in cis], "hi": [b for _, b in cis],
                           "dashed": dashed, "family": t["target"]})
    svg = plots.accuracy_chart(series, "eps (L-inf, input units)", x_ticks=c["eps"],
                               tick_labels=[f"{e:.4g}" for e in c["eps"]], dodge=True)
    return (f"Certified accuracy (solid: a proof on the target's integer arithmetic) and "
            f"accuracy under attack on the runtime (dashed: an upper bound on the "
            f"certified one), {n} samples, 95% Wilson intervals.", svg)


def amplify_title(a: dict) -> str:
    return (f"Perturbation amplification per layer ({a['attack']} eps {a['eps']:g}, "
            f"{a['samples']} samples)")


def amplification(a: dict) -> tuple[str, str]:
    """||a(x_adv) - a(x)|| / ||a(x)|| per layer for float and each target."""
    layers = [r["layer"] for r in a["layers"]]
    series = [{"name": name, "y": [r.get(name) for r in a["layers"]]}
              for name in a["misclassified"]]
    svg = plots.layer_chart(series, layers, "relative perturbation ||Δa|| / ||a||")
    return ("Relative perturbation of each layer's output under the attack (log scale): "
            "a target above float amplifies the perturbation more (Defensive "
            "Quantization, Lin et al. 2019); a gap is a layer whose tensor the target "
            "does not dump in the graph's element order ('-' in the table).", svg)
