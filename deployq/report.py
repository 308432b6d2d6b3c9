"""Results: the versioned results.json schema (docs/results-schema.md), its text,
markdown and HTML views, and the compare gate. No heavy imports: the CLI prints from
here."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .io import atomic_write

SCHEMA, SCHEMA_VERSION = "deployq-results", 2
READABLE_VERSIONS = (1, 2)


def columns(rows) -> str:
    """Rows of cells as left-aligned text columns."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in rows)


def _accuracy_rows(result: dict) -> list[tuple]:
    rows = [("target", "accuracy [95% interval]", "top-1 agreement with float")]
    return rows + [(r["target"], _pct_ci(r["accuracy"], r.get("accuracy_ci95")),
                    _pct(r["agreement"])) for r in result["results"]]


def _pair_rows(result: dict) -> list[tuple]:
    """Pairs of targets with the same output grid (the others are not comparable)."""
    rows = [("targets", "bit-identical outputs", "max difference")]
    return rows + [(f"{p['a']} vs {p['b']}", _pct(p["identical"]), f"{p['max_lsb']} LSB")
                   for p in result.get("pairs", []) if p["max_lsb"] is not None]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _pct_ci(v, ci=None, mark: str = "") -> str:
    """An accuracy with its 95% interval when the results carry one (older files
    do not), and a mark (e.g. '*' for a significant difference from float)."""
    if v is None or not ci:
        return _pct(v) + mark
    return f"{100 * v:.1f}%{mark} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _title(result: dict) -> str:
    return f"{result['model']} on {result['data']} ({result['samples']} test samples)"


def text(result: dict) -> str:
    parts = [_title(result), columns(_accuracy_rows(result))]
    pairs = _pair_rows(result)
    if len(pairs) > 1:
        parts += ["", columns(pairs)]
    if "robustness" in result:
        parts += ["", _robust_title(result), columns(_robust_rows(result))]
        parts += [f"flag {f['target']}: {f['message']}" for f in _flags(result)]
    if "profile" in result:
        parts += ["", _machine(result), columns(_profile_rows(result))]
    return "\n".join(parts)


def _robust_title(result: dict) -> str:
    r = result["robustness"]
    if "description" in r:
        return f"Robust accuracy on the runtimes ({r['samples']} samples; {r['description']})"
    return (f"Robust accuracy on the runtimes ({r['samples']} samples; worst case over "
            f"{', '.join(r['sources'])} x {', '.join(r['attacks'])}; PGD {r['steps']} "
            f"steps, {r['restarts']} restart(s); square {r['queries']} queries)")


SIGNIFICANCE_NOTE = ("Intervals are Wilson 95% intervals over the samples; * marks a "
                     "target whose robust accuracy differs from float's on the same "
                     "samples by McNemar's exact test (p < 0.05).")


def _eps_labels(r: dict) -> list[str]:
    """eps as the user wrote them (8/255) when the results keep that, else %g."""
    return r.get("eps_text") or [f"{e:g}" for e in r["eps"]]


def _robust_rows(result: dict) -> list[tuple]:
    r = result["robustness"]
    rows = [("target", "clean") + tuple(f"eps {e}" for e in _eps_labels(r))
            + ("mirror agreement", "flags")]
    for t in r["targets"]:
        m = t.get("mirror")
        mirror = "-" if not m else _pct(m["top1"]) + (
            f" ({_pct(m['identical'])} bit-identical)" if m.get("identical") is not None
            else "")
        rows.append((t["target"], _pct_ci(t["clean"], t.get("clean_ci95")))
                    + tuple(_pct_ci(e["robust"], e.get("robust_ci95"),
                                    "*" if e.get("vs_float", {}).get("significant") else "")
                            for e in t["eps"])
                    + (mirror, str(len(t["flags"])) if t["flags"] else "none"))
    return rows


def _by_rows(result: dict) -> list[tuple]:
    r = result["robustness"]
    rows = [("target", "source", "attack") + tuple(f"eps {e}" for e in _eps_labels(r))]
    for t in r["targets"]:
        keys = list(dict.fromkeys((b["source"], b["attack"])
                                  for e in t["eps"] for b in e["by"]))
        for source, attack in keys:
            found = [next((b for b in e["by"] if (b["source"], b["attack"]) ==
                           (source, attack)), {}) for e in t["eps"]]
            rows.append((t["target"], source, attack) + tuple(
                _pct_ci(b.get("accuracy"), b.get("accuracy_ci95")) for b in found))
    return rows


def _flags(result: dict) -> list[dict]:
    return [f | {"target": t["target"]} for t in result["robustness"]["targets"]
            for f in t["flags"]]


def _profile_rows(result: dict) -> list[tuple]:
    """One row per target: accuracy and robustness beside size and speed."""
    acc = {r["target"]: r["accuracy"] for r in result.get("results", [])}
    eps, robust = pareto_robust(result)
    scored = ("accuracy", f"robust (eps {eps:g})" if eps else "robust") if acc else ()
    rows = [("target", *scored, "artifact", "weights", "MACs", "peak activations",
             "batch 1 (median, p90)", "throughput")]
    for t in result["profile"]["targets"]:
        lat = t["latency"]
        scores = (_pct(acc.get(t["target"])), _pct(robust.get(t["target"]))) if acc else ()
        rows.append((t["target"], *scores, _bytes(t["artifact_bytes"]),
                     _bytes(t["weight_bytes"]), f"{t['macs']:,}",
                     _bytes(t["peak_activation_bytes"]),
                     f"{lat['batch1_ms_median']:.3f} ms, {lat['batch1_ms_p90']:.3f} ms",
                     f"{lat['throughput_per_s']:,.0f}/s"))
    return rows


def pareto_robust(result: dict) -> tuple[float | None, dict[str, float]]:
    """The middle eps of the robustness stage and each target's robust accuracy there
    (the largest eps often drives every target to 0, which compares nothing)."""
    r = result.get("robustness")
    if not r or not r["eps"]:
        return None, {}
    k = len(r["eps"]) // 2
    return r["eps"][k], {t["target"]: t["eps"][k]["robust"] for t in r["targets"]}


def _bytes(n) -> str:
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B"


def _machine(result: dict) -> str:
    m = result["profile"]["machine"]
    return (f"Measured on {m['cpu']} ({m['cores']} cores; ISA: {', '.join(m['isa']) or '-'}), "
            "one thread per runtime; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))


def markdown(result: dict) -> str:
    parts = ["# deployq report", "", f"**{_title(result)}**, seed {result['seed']}", "",
             _md_table(_accuracy_rows(result))]
    pairs = _pair_rows(result)
    if len(pairs) > 1:
        parts += ["", "Integer outputs compared between targets:", "", _md_table(pairs)]
    if "robustness" in result:
        parts += ["", f"## {_robust_title(result)}", "", _md_table(_robust_rows(result)),
                  "", SIGNIFICANCE_NOTE, "",
                  "Accuracy per source and attack:", "", _md_table(_by_rows(result))]
        flags = _flags(result)
        parts += ["", "Honesty checks: " + ("all passed." if not flags else
                                            f"{len(flags)} flag(s):")]
        parts += [f"- **{f['target']}** `{f['check']}`: {f['message']}" for f in flags]
    if "profile" in result:
        parts += ["", "## Size and speed", "", _machine(result), "",
                  _md_table(_profile_rows(result))]
    for skipped in result.get("skipped", []):
        parts += ["", f"- skipped {skipped['target']}: {skipped['reason']}"]
    return "\n".join(parts) + "\n"


def _md_table(rows) -> str:
    lines = ["| " + " | ".join(map(str, rows[0])) + " |",
             "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows[1:]])


def _json(result: dict) -> bytes:
    doc = {"schema": SCHEMA, "version": SCHEMA_VERSION, **result}
    return (json.dumps(doc, indent=1) + "\n").encode()


def write_json(result: dict, path: str | Path) -> None:
    atomic_write(Path(path), _json(result))


def write(result: dict, out_dir: str | Path) -> list[Path]:
    """results.json, report.md and report.html in out_dir, each rendered before any
    is written and each written atomically."""
    from .htmlreport import html
    out_dir = Path(out_dir)
    files = {"results.json": _json(result), "report.md": markdown(result).encode(),
             "report.html": html(result).encode()}
    for name, data in files.items():
        atomic_write(out_dir / name, data)
    return [out_dir / name for name in files]


# --- reading results and the compare gate ----------------------------------------

def load(path: str | Path) -> dict:
    """A results.json of a readable schema version, or InputError saying why not."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read results {path}: {type(e).__name__}: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise InputError(f"{path} is not a deployq results file (schema "
                         f"{doc.get('schema') if isinstance(doc, dict) else None!r}, "
                         f"expected {SCHEMA!r})")
    if doc.get("version") not in READABLE_VERSIONS:
        raise InputError(f"{path}: results version {doc.get('version')!r} is not one of "
                         f"{READABLE_VERSIONS}; re-run deployq to regenerate it")
    if not isinstance(doc.get("results"), list):
        raise InputError(f"{path}: no 'results' list")
    return doc


def scores(doc: dict) -> dict[tuple, float]:
    """(target, attack, eps) -> accuracy: ('clean', None) for clean accuracy,
    ('worst-case', eps) for robust accuracy, ('source/attack', eps) for each."""
    try:
        out = {(r["target"], "clean", None): float(r["accuracy"]) for r in doc["results"]}
        for t in doc.get("robustness", {}).get("targets", []):
            for e in t["eps"]:
                out[(t["target"], "worst-case", e["eps"])] = float(e["robust"])
                for b in e["by"]:
                    out[(t["target"], f"{b['source']}/{b['attack']}", e["eps"])] = \
                        float(b["accuracy"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"results file is malformed ({type(e).__name__}: {e}); "
                         "re-run deployq to regenerate it") from None
    return out


def masks(doc: dict) -> dict[tuple, tuple[str, int]]:
    """The keys of scores() -> (per-sample mask in hex, sample count), where the
    results carry masks (deployq.stats.pack)."""
    out = {}
    for r in doc.get("results", []):
        if "accuracy_mask" in r:
            out[(r["target"], "clean", None)] = (r["accuracy_mask"], doc["samples"])
    for t in doc.get("robustness", {}).get("targets", []):
        for e in t["eps"]:
            n = e.get("samples", doc["robustness"].get("samples"))
            if "robust_mask" in e:
                out[(t["target"], "worst-case", e["eps"])] = (e["robust_mask"], n)
            for b in e["by"]:
                if "accuracy_mask" in b:
                    out[(t["target"], f"{b['source']}/{b['attack']}", e["eps"])] = (
                        b["accuracy_mask"], n)
    return out


def compare(current: dict, reference: dict | None, max_drop: float,
            vs_float: bool = False, significant: bool = False) -> list[str]:
    """One line per score more than max_drop percentage points below its reference:
    the same (target, attack, eps) in `reference` (a baseline results document), or
    with vs_float the float model's clean and worst-case robust accuracy. Scores the
    reference lacks are not compared. With `significant`, a drop counts only when
    McNemar's exact test on the two per-sample results (the same samples) finds it
    significant."""
    if not max_drop >= 0:
        raise InputError(f"--max-drop must be >= 0 points, got {max_drop}")
    now = scores(current)
    refs = {}
    if reference is not None:
        refs = scores(reference)
    now_masks = masks(current) if significant else {}
    ref_masks = masks(reference) if significant and reference is not None else {}
    failures = []
    for (target, attack, eps), value in sorted(now.items(), key=str):
        checks = [("baseline", refs.get((target, attack, eps)), ref_masks, target)]
        if vs_float and target != "float" and attack in ("clean", "worst-case"):
            checks.append(("float", now.get(("float", attack, eps)), now_masks, "float"))
        for name, ref, pool, ref_target in checks:
            if ref is None or not value < ref - max_drop / 100:
                continue
            note = ""
            if significant:
                test = _paired(now_masks, (target, attack, eps), pool,
                               (ref_target, attack, eps))
                if not test["significant"]:
                    continue
                note = f", McNemar p = {test['p']:.2g}"
            where = "clean" if eps is None else f"{attack} eps {eps:g}"
            failures.append(f"{target} {where}: {_pct(value)} is "
                            f"{100 * (ref - value):.2f} points below {name} "
                            f"{_pct(ref)} (allowed {max_drop:g}{note})")
    return failures


def _paired(now: dict, key: tuple, pool: dict, ref_key: tuple) -> dict:
    """McNemar between two stored per-sample masks, or InputError why it cannot run."""
    from . import stats
    if key not in now or ref_key not in pool:
        raise InputError(f"--significant needs per-sample results for {key[0]} "
                         f"{key[1]}; these results lack them: re-run deployq to "
                         "regenerate them")
    (a, n), (b, m) = now[key], pool[ref_key]
    if n != m:
        raise InputError(f"--significant needs the same samples, got {n} and {m} for "
                         f"{key[0]} {key[1]}; use the same data, seed and sample counts")
    try:
        return stats.paired(stats.unpack(a, n), stats.unpack(b, n))
    except ValueError as e:
        raise InputError(f"results file is malformed ({e}); re-run deployq") from None
