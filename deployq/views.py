"""Views of a results document: the rows and titles that report.md, report.html and
the console show, built once here. Each row builder returns a header row followed by
one row per entry, every cell already formatted as text. No heavy imports; of deployq
only deployq.stats (pure Python): report.py and htmlreport.py both build on this."""
from __future__ import annotations

from . import stats


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


SIGNIFICANCE_NOTE = ("Intervals are Wilson 95% intervals over the samples; a change vs "
                     "float is in points on the same samples, with McNemar's exact p; * "
                     "marks a significant one (p < 0.05).")


def title(result: dict) -> str:
    return f"{result['model']} on {result['data']} ({result['samples']} test samples)"


def accuracy_rows(result: dict) -> list[tuple]:
    rows = [("target", "accuracy [95% interval]", "change vs float",
             "top-1 agreement with float")]
    base = next((r for r in result["results"] if r["target"] == "float"), None)
    n = result["samples"]
    return rows + [(r["target"], pct_ci(r["accuracy"], r.get("accuracy_ci95")),
                    change(r.get("accuracy_mask"), base and base.get("accuracy_mask"), n,
                           r["target"] == "float"),
                    pct(r["agreement"])) for r in result["results"]]


def change(mask: str | None, float_mask: str | None, n: int, is_float: bool) -> str:
    """A target's accuracy minus float's on the same samples, in points, with McNemar's
    exact p (and * when p < 0.05); '-' for float itself or without per-sample masks."""
    if is_float or not mask or not float_mask:
        return "-"
    test = stats.paired(stats.unpack(mask, n), stats.unpack(float_mask, n))
    d = (test["first_only"] - test["second_only"]) / n
    return f"{100 * d:+.1f} pts (p {test['p']:.2g}){' *' if test['significant'] else ''}"


def clean_note(result: dict) -> str:
    """Why the robustness table's eps-0 column is not the clean accuracy above."""
    r = result["robustness"]
    n, m = result["samples"], r["samples"]
    if m >= n:
        return f"Attacks ran on all {n} test samples, so eps 0 is the clean accuracy above."
    return (f"Clean accuracy is measured on all {n} test samples (above). Attacks are the "
            f"costly part, so they run on the first {m} of them (the robust_samples "
            f"setting); the eps-0 column is the accuracy on that subset, which differs "
            f"from the full-set figure by sampling alone, and every robust accuracy is "
            f"relative to it (a sample counts as robust only if it is also correct "
            f"unperturbed).")


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
    rows = [("target", f"eps 0 ({r['samples']} attacked samples)")
            + tuple(f"eps {e}" for e in eps_labels(r))
            + ("change vs float (pts per eps)", "mirror agreement", "flags")]
    for t in r["targets"]:
        rows.append((t["target"], pct_ci(t["clean"], t.get("clean_ci95")))
                    + tuple(pct_ci(e["robust"], e.get("robust_ci95"),
                                   "*" if e.get("vs_float", {}).get("significant") else "")
                            for e in t["eps"])
                    + (_robust_change(t, r["targets"]), _mirror(t.get("mirror")),
                       str(len(t["flags"])) if t["flags"] else "none"))
    return rows


def _robust_change(t: dict, targets: list[dict]) -> str:
    """Robust accuracy minus float's at each eps, * where McNemar finds it significant."""
    base = next((b for b in targets if b["target"] == "float"), None)
    if base is None or t is base:
        return "-"
    return ", ".join(f"{100 * (e['robust'] - f['robust']):+.1f}"
                     + ("*" if e.get("vs_float", {}).get("significant") else "")
                     for e, f in zip(t["eps"], base["eps"]))


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


def worst_source_rows(result: dict) -> list[tuple]:
    """Per target and source: the accuracy of its strongest attack at each eps (the
    lowest, with its interval), and which attack that was."""
    r = result["robustness"]
    rows = [("target", "source") + tuple(f"eps {e}" for e in eps_labels(r))]
    for t in r["targets"]:
        for source in dict.fromkeys(b["source"] for e in t["eps"] for b in e["by"]):
            cells = []
            for e in t["eps"]:
                mine = [b for b in e["by"] if b["source"] == source]
                worst = min(mine, key=lambda b: b["accuracy"], default=None)
                cells.append("-" if worst is None else
                             f"{pct_ci(worst['accuracy'], worst.get('accuracy_ci95'))} "
                             f"({worst['attack']})")
            rows.append((t["target"], source, *cells))
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


def profile_rows(result: dict, clock_mhz: float | None = None) -> list[tuple]:
    """One row per target: accuracy and robustness beside size and speed. A target
    with a device footprint (an MCU build) shows its flash image as its size and its
    estimated device time (device_ms) as its speed; the ELF's size and the emulator's
    host time stay in the JSON (artifact_bytes, latency), out of the terminal's width."""
    acc = {r["target"]: pct_ci(r["accuracy"], r.get("accuracy_ci95"))
           for r in result.get("results", [])}
    eps, robust = pareto_robust(result)
    k = len(result["robustness"]["eps"]) // 2 if robust else 0
    robust = {t["target"]: pct_ci(t["eps"][k]["robust"], t["eps"][k].get("robust_ci95"))
              for t in result["robustness"]["targets"]} if robust else {}
    scored = ("accuracy", f"robust (eps {eps:g})" if eps else "robust") if acc else ()
    rows = [("target", *scored, "artifact", "weights", "MACs", "peak activations",
             "batch 1 p50, p90", "throughput")]
    for t in result["profile"]["targets"]:
        lat = t["latency"]
        scores = (acc.get(t["target"], "-"), robust.get(t["target"], "-")) if acc else ()
        speed = (f"{lat['batch1_ms_median']:.3f}, {lat['batch1_ms_p90']:.3f} ms",
                 f"{lat['throughput_per_s']:,.0f}/s")
        artifact = size(t["artifact_bytes"])
        fp = t.get("mcu_footprint")
        if fp:
            ms, mhz = device_ms(fp, clock_mhz)
            speed = (f"device est. {ms:.3f} ms @{mhz:g} MHz", f"{1000 / ms:,.0f}/s est.")
            artifact = f"flash {size(fp['firmware_flash_bytes'])}"
        rows.append((t["target"], *scores, artifact, size(t["weight_bytes"]),
                     f"{t['macs']:,}", size(t["peak_activation_bytes"]), *speed))
    return rows


def device_ms(footprint: dict, clock_mhz: float | None = None) -> tuple[float, float]:
    """(ms per inference, clock in MHz) on the device: instructions per inference at
    one instruction per cycle (an estimate: a Cortex-M4 retires at most one per cycle,
    and waits on flash above ~30 MHz), at clock_mhz or the clock the export assumed."""
    mhz = clock_mhz or footprint.get("estimated_ms", {}).get("clock_mhz") or DEFAULT_CLOCK_MHZ
    return footprint["instructions_per_inference"]["mean"] / (mhz * 1e3), mhz


DEFAULT_CLOCK_MHZ = 168           # an STM32F4-class Cortex-M4 (deployq/cproject.py's)


def mcu_rows(result: dict, clock_mhz: float | None = None) -> list[tuple]:
    """What a firmware engineer sizes a device by, per target that has any of it:
    flash, RAM (static + stack), the tensor arena, instructions per inference and the
    estimated time at clock_mhz. Host builds of the C runtime have only the arena."""
    mhz = clock_mhz or DEFAULT_CLOCK_MHZ
    rows = [("target", "flash", "RAM (static + stack)", "tensor arena",
             "instructions per inference", "est. ms per inference")]
    for t in result.get("profile", {}).get("targets", []):
        fp = t.get("mcu_footprint")
        if fp:
            ms, mhz_used = device_ms(fp, clock_mhz)
            ins = fp["instructions_per_inference"]
            rows.append((t["target"], size(fp["firmware_flash_bytes"]),
                         f"{size(fp['ram_bytes'])} ({size(fp['firmware_static_ram_bytes'])}"
                         f" + {size(fp['stack_bytes'])})", size(fp["arena_bytes"]),
                         f"{ins['mean']:,.0f} ({ins['min']:,.0f}-{ins['max']:,.0f})",
                         f"{ms:.3f} ms at {mhz_used:g} MHz"))
        elif "runtime_arena_bytes" in t:
            rows.append((t["target"], "-", "-", size(t["runtime_arena_bytes"]), "-", "-"))
    return rows


def mcu_note(clock_mhz: float | None = None) -> str:
    return ("Flash and RAM are the firmware's sections as linked (arm-none-eabi-size); "
            "instructions per inference are counted by QEMU over the test inputs "
            "embedded at export (mean, min-max); the time assumes one instruction per "
            "cycle at the stated clock (an estimate, not a measurement: set the clock "
            "with mcu_clock_mhz). Host-built targets show only the arena the C runtime "
            "plans.")


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
            f"exact integer arithmetic; in parentheses: accuracy under "
            f"{c.get('attack', 'PGD-' + str(c['attack_steps']))} "
            f"and {c['corners']} box points, run on the runtime)")


def certify_rows(result: dict) -> list[tuple]:
    c = result["certify"]
    n = c["samples"]
    rows = [("target", f"unperturbed ({n} samples)")
            + tuple(f"eps {e:.4g}: certified (attacked)" for e in c["eps"])]
    return rows + [(t["target"], _wilson_pct(t["clean"], n)) + tuple(
        f"{_wilson_pct(e['certified'], n)} ({_wilson_pct(e['attacked'], n)})"
        for e in t["eps"]) for t in c["targets"]]


def _wilson_pct(v: float, n: int) -> str:
    """A share of n samples with its Wilson 95% interval (for results that store only
    the share)."""
    return pct_ci(v, stats.wilson(round(v * n), n))


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


def amplify_rows(result: dict) -> list[tuple]:
    """An amplify result (deployq.amplify) as rows: layer, float's relative perturbation,
    then each target's and its multiple of float's; last, the misclassified share."""
    targets = [c for c in result["misclassified"] if c != "float"]
    rows = [("layer", "float") + tuple(h for t in targets for h in (t, "x float"))]
    for r in result["layers"]:
        f = r["float"]
        cells = [r["layer"], _ratio(f)]
        for t in targets:
            v = r.get(t)
            cells += [_ratio(v), "-" if v is None or not f else f"{v / f:.2f}x"]
        rows.append(tuple(cells))
    rows.append(("misclassified", *[f"{100 * result['misclassified']['float']:.1f}%"],
                 *[c for t in targets for c in (f"{100 * result['misclassified'][t]:.1f}%", "")]))
    return rows


def _ratio(v) -> str:
    return "-" if v is None else f"{v:.3f}"
