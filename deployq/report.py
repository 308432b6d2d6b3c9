"""Results: the versioned results.json schema (docs/results-schema.md), its text and
markdown pages (rows from deployq.views; report.html from deployq.htmlreport), and the
compare gate. No heavy imports: the CLI prints from here."""
from __future__ import annotations

import json
from pathlib import Path

from . import htmlreport, views as V
from .errors import InputError
from .io import atomic_write
from .views import columns, pareto_robust, pct as _pct  # noqa: F401  (columns,
#   pareto_robust: part of this module's API)

SCHEMA, SCHEMA_VERSION = "deployq-results", 2
READABLE_VERSIONS = (1, 2)


def text(result: dict) -> str:
    parts = [V.title(result), columns(V.accuracy_rows(result))]
    pairs = V.pair_rows(result)
    if len(pairs) > 1:
        parts += ["", columns(pairs)]
    if "robustness" in result:
        parts += ["", V.robust_title(result), columns(V.robust_rows(result))]
        parts += [f"flag {f['target']}: {f['message']}" for f in V.flags(result)]
    if "profile" in result:
        parts += ["", V.machine(result), columns(V.profile_rows(result))]
    if "certify" in result:
        parts += ["", V.certify_title(result), columns(V.certify_rows(result))]
    parts += [f"failed {f['target']}: {f['error']}" for f in result.get("failed", [])]
    return "\n".join(parts)


def certify_text(result: dict) -> str:
    return "\n".join([f"{result['model']} on {result['data']}", V.certify_title(result),
                      columns(V.certify_rows(result)), "", columns(V.certify_detail_rows(result))])


def markdown(result: dict) -> str:
    parts = ["# deployq report", "", f"**{V.title(result)}**, seed {result['seed']}", "",
             md_table(V.accuracy_rows(result))]
    pairs = V.pair_rows(result)
    if len(pairs) > 1:
        parts += ["", "Integer outputs compared between targets:", "", md_table(pairs)]
    if "robustness" in result:
        parts += ["", f"## {V.robust_title(result)}", "", md_table(V.robust_rows(result)),
                  "", V.SIGNIFICANCE_NOTE, "", "Accuracy per source and attack:", "", md_table(V.source_rows(result))]
        flags = V.flags(result)
        parts += ["", "Honesty checks: " + ("all passed." if not flags else
                                            f"{len(flags)} flag(s):")]
        parts += [f"- **{f['target']}** `{f['check']}`: {f['message']}" for f in flags]
    if "profile" in result:
        parts += ["", "## Size and speed", "", V.machine(result), "",
                  md_table(V.profile_rows(result))]
    if "certify" in result:
        parts += ["", f"## {V.certify_title(result)}", "", md_table(V.certify_rows(result)),
                  "", md_table(V.certify_detail_rows(result))]
    for skipped in result.get("skipped", []):
        parts += ["", f"- skipped {skipped['target']}: {skipped['reason']}"]
    for f in result.get("failed", []):
        parts += ["", f"- **failed {f['target']}**: {f['error']}"]
    return "\n".join(parts) + "\n"


def md_table(rows) -> str:
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
    out_dir = Path(out_dir)
    files = {"results.json": _json(result), "report.md": markdown(result).encode(),
             "report.html": htmlreport.html(result).encode()}
    for name, data in files.items():
        atomic_write(out_dir / name, data)
    return [out_dir / name for name in files]


# --- reading results and the compare gate ----------------------------------------

def load(path: str | Path) -> dict:
    """A results.json of a readable schema version, or InputError saying why not."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
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
        for t in doc.get("certify", {}).get("targets", []):
            for e in t["eps"]:
                out[(t["target"], "certified", e["eps"])] = float(e["certified"])
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
