"""Results: the versioned results.json schema and its text and markdown views.
No heavy imports: the CLI prints from here."""
from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_write

SCHEMA, SCHEMA_VERSION = "deployq-results", 1


def columns(rows) -> str:
    """Rows of cells as left-aligned text columns."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in rows)


def _accuracy_rows(result: dict) -> list[tuple]:
    rows = [("target", "accuracy", "top-1 agreement with float")]
    return rows + [(r["target"], _pct(r["accuracy"]), _pct(r["agreement"]))
                   for r in result["results"]]


def _pair_rows(result: dict) -> list[tuple]:
    rows = [("targets", "bit-identical outputs", "max difference")]
    return rows + [(f"{p['a']} vs {p['b']}", _pct(p["identical"]),
                    "-" if p["max_lsb"] is None else f"{p['max_lsb']} LSB")
                   for p in result.get("pairs", [])]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _title(result: dict) -> str:
    return f"{result['model']} on {result['data']} ({result['samples']} test samples)"


def text(result: dict) -> str:
    parts = [_title(result), columns(_accuracy_rows(result))]
    pairs = _pair_rows(result)
    if len(pairs) > 1:
        parts += ["", columns(pairs)]
    return "\n".join(parts)


def markdown(result: dict) -> str:
    parts = ["# deployq report", "", f"**{_title(result)}**, seed {result['seed']}", "",
             _md_table(_accuracy_rows(result))]
    pairs = _pair_rows(result)
    if len(pairs) > 1:
        parts += ["", "Integer outputs compared between targets:", "", _md_table(pairs)]
    for skipped in result.get("skipped", []):
        parts += ["", f"- skipped {skipped['target']}: {skipped['reason']}"]
    return "\n".join(parts) + "\n"


def _md_table(rows) -> str:
    lines = ["| " + " | ".join(map(str, rows[0])) + " |",
             "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows[1:]])


def write_json(result: dict, path: str | Path) -> None:
    doc = {"schema": SCHEMA, "version": SCHEMA_VERSION, **result}
    atomic_write(Path(path), (json.dumps(doc, indent=1) + "\n").encode())


def write(result: dict, out_dir: str | Path) -> list[Path]:
    """results.json and report.md in out_dir."""
    out_dir = Path(out_dir)
    write_json(result, out_dir / "results.json")
    atomic_write(out_dir / "report.md", markdown(result).encode())
    return [out_dir / "results.json", out_dir / "report.md"]
