"""Views of a results document: the rows and titles that report.md, report.html and
the console show, built once here. Each row builder returns a header row followed by
one row per entry, every cell already formatted as text. No heavy imports and no
imports of other deployq modules: report.py and htmlreport.py both build on this."""
from __future__ import annotations


def columns(rows) -> str:
    """Rows of cells as left-aligned text columns."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in rows)


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def pct_ci(v, ci=None, mark: str = "") -> str:
    """An accuracy with its 95% interval when the results carry one (older files do
    not), and a mark (e.g. '*' for a significant difference from float)."""
    if v is None or not ci:
        return pct(v) + mark
    return f"{100 * v:.1f}%{mark} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


SIGNIFICANCE_NOTE = ("Intervals are Wilson 95% intervals over the samples; * marks a "
                     "target whose robust accuracy differs from float's on the same "
                     "samples by McNemar's exact test (p < 0.05).")


def title(result: dict) -> str:
    return f"{result['model']} on {result['data']} ({result['samples']} test samples)"


def accuracy_rows(result: dict) -> list[tuple]:
    rows = [("target", "accuracy [95% interval]", "top-1 agreement with float")]
    return rows + [(r["target"], pct_ci(r["accuracy"], r.get("accuracy_ci95")),
                    pct(r["agreement"])) for r in result["results"]]


def pair_rows(result: dict) -> list[tuple]:
    """Pairs of targets with the same output grid (the others are not comparable)."""
    rows = [("targets", "bit-identical outputs", "max difference")]
    return rows + [(f"{p['a']} vs {p['b']}", pct(p["identical"]), f"{p['max_lsb']} LSB")
                   for p in result.get("pairs", []) if p["max_lsb"] is not None]


def robust_title(result: dict) -> str:
    r = result["robustness"]
    if "description" in r:
        return f"Robust accuracy on the runtimes ({r['samples']} samples; {r['description']})"
    return (f"Robust accuracy on the runtimes ({r['samples']} samples; worst case over "
            f"{', '.join(r['sources'])} x {', '.join(r['attacks'])}; PGD {r['steps']} "
            f"steps, {r['restarts']} restart(s); square {r['queries']} queries)")


def eps_labels(r: dict) -> list[str]:
    """eps as the user wrote them (8/255) when the results keep that, else %g."""
    return r.get("eps_text") or [f"{e:g}" for e in r["eps"]]


def robust_rows(result: dict) -> list[tuple]:
    r = result["robustness"]
    rows = [("target", "clean") + tuple(f"eps {e}" for e in eps_labels(r))
            + ("mirror agreement", "flags")]
    for t in r["targets"]:
        rows.append((t["target"], pct_ci(t["clean"], t.get("clean_ci95")))
                    + tuple(pct_ci(e["robust"], e.get("robust_ci95"),
                                   "*" if e.get("vs_float", {}).get("significant") else "")
                            for e in t["eps"])
                    + (_mirror(t.get("mirror")), str(len(t["flags"])) if t["flags"] else "none"))
    return rows


def _mirror(m: dict | None) -> str:
    if not m:
        return "-"
    identical = m.get("identical")
    return pct(m["top1"]) + (f" ({pct(identical)} bit-identical)" if identical is not None
                             else "")


def source_rows(result: dict) -> list[tuple]:
    """Accuracy per (source, attack) and eps, one row per target and pair."""
    r = result["robustness"]
    rows = [("target", "source", "attack") + tuple(f"eps {e}" for e in eps_labels(r))]
    for t in r["targets"]:
        keys = list(dict.fromkeys((b["source"], b["attack"])
                                  for e in t["eps"] for b in e["by"]))
        for source, attack in keys:
            found = [next((b for b in e["by"] if (b["source"], b["attack"]) ==
                           (source, attack)), {}) for e in t["eps"]]
            rows.append((t["target"], source, attack) + tuple(
                pct_ci(b.get("accuracy"), b.get("accuracy_ci95")) for b in found))
    return rows


def flags(result: dict) -> list[dict]:
    """Every honesty flag of the robustness stage, with its target."""
    return [f | {"target": t["target"]} for t in result["robustness"]["targets"]
            for f in t["flags"]]


def pareto_robust(result: dict) -> tuple[float | None, dict[str, float]]:
    """The middle eps of the robustness stage and each target's robust accuracy there
    (the largest eps often drives every target to 0, which compares nothing)."""
    r = result.get("robustness")
    if not r or not r["eps"]:
        return None, {}
    k = len(r["eps"]) // 2
    return r["eps"][k], {t["target"]: t["eps"][k]["robust"] for t in r["targets"]}


def profile_rows(result: dict) -> list[tuple]:
    """One row per target: accuracy and robustness beside size and speed."""
    acc = {r["target"]: r["accuracy"] for r in result.get("results", [])}
    eps, robust = pareto_robust(result)
    scored = ("accuracy", f"robust (eps {eps:g})" if eps else "robust") if acc else ()
    rows = [("target", *scored, "artifact", "weights", "MACs", "peak activations",
             "batch 1 (median, p90)", "throughput")]
    for t in result["profile"]["targets"]:
        lat = t["latency"]
        scores = (pct(acc.get(t["target"])), pct(robust.get(t["target"]))) if acc else ()
        rows.append((t["target"], *scores, size(t["artifact_bytes"]),
                     size(t["weight_bytes"]), f"{t['macs']:,}",
                     size(t["peak_activation_bytes"]),
                     f"{lat['batch1_ms_median']:.3f} ms, {lat['batch1_ms_p90']:.3f} ms",
                     f"{lat['throughput_per_s']:,.0f}/s"))
    return rows


def layer_rows(target: dict, top: int = 5) -> list[tuple]:
    """The slowest layers of one profiled target, by its runtime's own timer."""
    return [("node", "op", "us per run")] + [
        (r["node"], r["op"], f"{r['us_per_run']:.1f}") for r in target["slowest_layers"][:top]]


def size(n) -> str:
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B"


def machine(result: dict) -> str:
    m = result["profile"]["machine"]
    return (f"Measured on {m['cpu']} ({m['cores']} cores; ISA: {', '.join(m['isa']) or '-'}), "
            "one thread per runtime; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))


def certify_title(result: dict) -> str:
    c = result["certify"]
    return (f"Certified accuracy ({c['samples']} samples; interval bounds on each target's "
            f"exact integer arithmetic; in parentheses: accuracy under PGD-{c['attack_steps']} "
            f"and {c['corners']} box points, run on the runtime)")


def certify_rows(result: dict) -> list[tuple]:
    c = result["certify"]
    rows = [("target", "clean") + tuple(f"eps {e:.4g}" for e in c["eps"])]
    return rows + [(t["target"], pct(t["clean"])) + tuple(
        f"{pct(e['certified'])} ({pct(e['attacked'])})" for e in t["eps"])
        for t in c["targets"]]


def certify_detail_rows(result: dict) -> list[tuple]:
    """Per target and eps: float certificates that fail on the target and the reverse,
    boxes the perturbation cannot move, soundness violations, complete verification."""
    rows = [("target", "eps", "float-certified", "certified here", "float only",
             "here only", "unmoved inputs", "violations", "complete: cert/fals/undecided")]
    for t in result["certify"]["targets"][1:]:
        for e in t["eps"]:
            c = e.get("complete")
            rows.append((t["target"], f"{e['eps']:.4g}", e.get("float_certified", "-"),
                         e.get("certified_n", "-"), e.get("float_not_here", "-"),
                         e.get("here_not_float", "-"), e["trivial"], e["violations"],
                         "-" if not c else
                         f"{c['certified']}/{c['falsified']}/{c['undecided'] + c['unconfirmed']}"))
    return rows
