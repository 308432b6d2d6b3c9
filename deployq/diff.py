"""Layer-by-layer comparison of two integer targets: for each tensor, how many elements
differ and by how many LSBs. This is how a user finds where two devices part ways.

Works between targets whose runners dump their tensors (backend capability 'dump') by
the same names: those that run the same .tflite (tflite-int8, tflite-int8-ref,
mcu-int8)."""
from __future__ import annotations

import numpy as np

from . import api, backends
from .errors import InputError


def diff(targets: list[str], session: api.Session, out, samples: int = 20,
         targets_dir=None) -> dict:
    if len(targets) != 2:
        raise InputError(f"deployq diff compares two targets, got {len(targets)}")
    for target in api.targets_or_fail(targets, targets_dir):    # refuse before any export
        if not backends.supports(backends.get(target.backend), "dump"):
            raise InputError(f"target {target.name} cannot dump its tensors; deployq diff "
                             "compares targets whose runners dump their tensors by the "
                             "same names: tflite-int8, tflite-int8-ref, mcu-int8")
    runners = [api.load_runner(api.export(name, session, out, None, targets_dir))
               for name in targets]
    x, _ = session.dataset.test(samples)
    rows = _compare(runners, x)
    if not rows:
        raise InputError(f"{targets[0]} and {targets[1]} name no tensor alike; deployq diff "
                         "compares targets that run the same .tflite: tflite-int8, "
                         "tflite-int8-ref, mcu-int8")
    return {"targets": targets, "model": session.model.spec, "samples": int(len(x)),
            "tensors": rows}


def _compare(runners, x) -> list[dict]:
    """Per tensor name both runners dump: elements, how many differ, the largest
    difference in LSBs, and the IR layer (by the first runner's names)."""
    rows: dict[str, dict] = {}
    for sample in x:
        a, b = (r.dump(sample) for r in runners)
        for name in (n for n in a if n in b):
            d = np.abs(a[name].astype(np.int32) - b[name].astype(np.int32))
            row = rows.setdefault(name, {"tensor": name, "elements": 0, "different": 0,
                                         "max_lsb": 0,
                                         "layer": runners[0].layer_of(name) or "?"})
            row["elements"] += d.size
            row["different"] += int((d > 0).sum())
            row["max_lsb"] = max(row["max_lsb"], int(d.max(initial=0)))
    return list(rows.values())


def table(result: dict) -> list[tuple]:
    rows = [("layer", "tensor", "elements differing", "max difference")]
    for r in result["tensors"]:
        share = r["different"] / max(r["elements"], 1)
        rows.append((r["layer"], r["tensor"].split(";")[0][:40], f"{100 * share:.2f}%",
                     f"{r['max_lsb']} LSB"))
    return rows
