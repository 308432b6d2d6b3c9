"""Typed results of the Python API. Each keeps the shape older callers use (a dict,
the results.json document; or a tuple that unpacks as before) and adds typed views:

    r = deployq.evaluate(["onnx-int8"], robust=cfg)
    r.score("onnx-int8").accuracy          # as r["results"][1]["accuracy"]
    r.robust("onnx-int8")                  # [RobustScore(eps=0.05, ...), ...]
    result, files = deployq.run(cfg)       # a RunResult: also .result, .files
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


@dataclass(frozen=True)
class Score:
    """A model's clean accuracy on the test split (target 'float' for the float
    model): its Wilson 95% interval, its top-1 agreement with float, its artifact."""
    target: str
    accuracy: float
    ci95: tuple[float, float]
    agreement: float
    artifact: str | None = None


@dataclass(frozen=True)
class RobustScore:
    """Worst-case robust accuracy of one model at one eps, on `samples` test samples,
    with its 95% interval and the accuracy under each source/attack."""
    target: str
    eps: float
    robust: float
    ci95: tuple[float, float]
    samples: int
    by_attack: dict[str, float]           # 'source/attack' -> accuracy


class EvalResult(dict):
    """evaluate's result: the results.json document, with typed views."""

    @property
    def scores(self) -> list[Score]:
        return [Score(r["target"], r["accuracy"], tuple(r["accuracy_ci95"]),
                      r["agreement"], r.get("artifact")) for r in self["results"]]

    def score(self, target: str) -> Score:
        for s in self.scores:
            if s.target == target:
                return s
        raise KeyError(f"no target {target!r} in this result; have "
                       f"{', '.join(s.target for s in self.scores)}")

    def robust(self, target: str) -> list[RobustScore]:
        """Per eps, for one target (or 'float'); [] when no robustness was run."""
        entries = self.get("robustness", {}).get("targets", [])
        entry = next((e for e in entries if e["target"] == target), None)
        if entry is None:
            return []
        return [RobustScore(target, r["eps"], r["robust"], tuple(r["robust_ci95"]),
                            r["samples"], {f"{b['source']}/{b['attack']}": b["accuracy"]
                                           for b in r["by"]})
                for r in entry["eps"]]


class RunResult(NamedTuple):
    """run's result: unpacks as (result, files)."""
    result: EvalResult
    files: list[Path]


class Selection(NamedTuple):
    """select's result: unpacks as (path, plan); plan.provenance['selection'] holds
    the chosen bits and the budget used."""
    path: Path
    plan: object
