"""Layer-by-layer comparison of two integer targets: for each tensor, how many elements
differ and by how many LSBs. This is how a user finds where two devices part ways.

Works between targets whose runners can dump every tensor of the same .tflite by name
(tflite-int8, tflite-int8-ref, mcu-int8)."""
from __future__ import annotations

import numpy as np

from . import api, backends
from .errors import InputError


def diff(targets: list[str], session: api.Session, out, samples: int = 20,
         targets_dir=None) -> dict:
    if len(targets) != 2:
        raise InputError(f"deployq diff compares two targets, got {len(targets)}")
    for target in api.targets_or_fail(targets, targets_dir):    # refuse before any export
        if not hasattr(backends.get(target.backend).Runner, "dump"):
            raise InputError(f"target {target.name} cannot dump its tensors; deployq diff "
                             "compares targets that run the same .tflite: tflite-int8, "
                             "tflite-int8-ref, mcu-int8")
    runners = [api.load_runner(api.export(name, session, out, None, targets_dir))
               for name in targets]
    x, _ = session.dataset.test(samples)
    rows: dict[str, dict] = {}
    for sample in x:
        a, b = (r.dump(sample) for r in runners)
        for name in (n for n in a if n in b):
            d = np.abs(a[name].astype(np.int32) - b[name].astype(np.int32))
            row = rows.setdefault(name, {"tensor": name, "elements": 0, "different": 0,
                                         "max_lsb": 0, "layer": _layer(name, session.graph)})
            row["elements"] += d.size
            row["different"] += int((d > 0).sum())
            row["max_lsb"] = max(row["max_lsb"], int(d.max(initial=0)))
    return {"targets": targets, "model": session.model.spec, "samples": int(len(x)),
            "tensors": list(rows.values())}


def _layer(tensor: str, graph) -> str:
    from .backends.tflite import layer_of
    return "input" if tensor.startswith("IN/") else (layer_of(tensor, graph) or "?")


def table(result: dict) -> list[tuple]:
    rows = [("layer", "tensor", "elements differing", "max difference")]
    for r in result["tensors"]:
        share = r["different"] / max(r["elements"], 1)
        rows.append((r["layer"], r["tensor"].split(";")[0][:40], f"{100 * share:.2f}%",
                     f"{r['max_lsb']} LSB"))
    return rows
