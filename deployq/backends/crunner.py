"""What the runners on the host C runtime share (mcu-int8, fpga-fixed): a model file
loaded by deployq.runtime, NCHW input codes laid out as the runtime's NHWC rows, tensor
dumps, the runtime's own per-op timers, and its planned arena as a profile figure.

A subclass sets `model` (runtime.Model), `names` (the name of each runtime tensor, by
index), input_qp / output_qp, and defines quantize(x) and layer_of(tensor)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CAPABILITIES = frozenset({"dump", "layer_times", "extras"})


def rows(q: np.ndarray) -> np.ndarray:
    """NCHW integer codes -> int8 rows (N, H*W*C) in the runtime's NHWC order."""
    q = np.asarray(q)
    if q.ndim == 4:
        q = q.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(q.reshape(len(q), -1).astype(np.int8))


def arena_extras(model_path: Path) -> dict:
    """The arena the C runtime plans for the model (what a device must reserve)."""
    from .. import runtime
    model = runtime.Model(Path(model_path).read_bytes(), str(model_path))
    return {"runtime_arena_bytes": int(model.arena.size)}


class CRunner:
    LAYER_TIMER = "C runtime timers"

    def rows(self, x: np.ndarray) -> np.ndarray:
        """Float NCHW -> the int8 rows the runtime reads (quantized as quantize does)."""
        return rows(self.quantize(np.asarray(x, np.float32)))

    def raw_codes(self, q: np.ndarray) -> np.ndarray:
        """The runtime's int8 output rows for NCHW input codes: one call for the batch."""
        return self.model.run(rows(q))

    def dump(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor for one float sample, by its name."""
        tensors = self.model.dump(self.rows(np.asarray(x, np.float32)[None])[0])
        return dict(zip(self.names, tensors))

    def layer_times(self, x: np.ndarray, repeats: int = 50) -> list[dict]:
        """The runtime's own per-op timers on one sample, slowest first, each named by
        the IR layer its output tensor belongs to (else by the tensor's name)."""
        out = []
        for o in self.model.op_times(self.rows(x[:1])[0], repeats):
            name = self.names[o["output"]] if o["output"] < len(self.names) else str(o["output"])
            out.append({"node": self.layer_of(name) or name, "op": o["op"],
                        "us_per_run": 1e6 * o["seconds"]})
        return sorted(out, key=lambda r: -r["us_per_run"])
