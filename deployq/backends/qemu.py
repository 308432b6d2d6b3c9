"""MCU int8 on an emulated microcontroller: the mcu-int8 model compiled for a Cortex-M4
with arm-none-eabi-gcc and run under qemu-system-arm (Arm MPS2-AN386 board).

export() writes what mcu-int8 writes (model.dqm, model.tflite, tensors.json), then the
C project (c-project/, deployq.cproject), builds it, runs its embedded test inputs on
the emulated board (they must equal the host C runtime's outputs), saves flash, RAM and
instructions per inference to footprint.json, and copies the batch-runner firmware to
model.elf, the artifact. A Runner keeps one QEMU process running that firmware
(deployq.qemustream.Session) and streams every batch through it, so evaluation and
attacks (Square's hundreds of queries) score the microcontroller build itself without
starting QEMU per call."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .. import cproject, qemustream
from ..errors import ExportError
from ..io import atomic_write
from . import crunner, mcu

# without the toolchain this backend is unavailable, like one whose package is missing:
# backends.get raises the TargetError naming the Debian packages, and `deployq run`
# lists mcu-qemu as skipped
cproject.require_tools()

ARTIFACT = "model.elf"
PROJECT = "c-project"
FOOTPRINT = "footprint.json"
# no dump or layer timers: the device build has neither (its host twin, mcu-int8, has)
CAPABILITIES = frozenset({"extras", "semantics"})


def export(graph, plan, target, out_dir: Path, calib=None):
    out_dir = Path(out_dir)
    dqm, plan = mcu.export(graph, plan, target, out_dir, calib)
    inputs = None if calib is None else np.asarray(calib[:cproject.TEST_COUNT])
    from .. import runtime
    project = mcu.c_project(dqm, out_dir / PROJECT, inputs, runtime.kernels_of(target))
    elf = cproject.build(project)
    fp = cproject.footprint(project)         # runs the self-checking test program
    atomic_write(out_dir / FOOTPRINT, json.dumps(fp, indent=1).encode())
    shutil.copy2(elf["stream"], out_dir / ARTIFACT)
    return out_dir / ARTIFACT, plan


def certifiable(target) -> None:
    """Every target of this backend runs the C runtime's (= LiteRT reference) integers."""


def semantics(exported, graph, runner):
    from .. import certification as certify
    return certify.s8_semantics(exported, graph, runner,
                                (exported.path.parent / mcu.ARTIFACT).read_bytes())


def load(path: Path, target=None, threads: int = 1) -> "Runner":
    """threads: accepted for the protocol; the emulated device runs one thread."""
    return Runner(Path(path))


def extras(out_dir: Path) -> dict:
    """Flash, RAM and instructions per inference measured at export."""
    return {"mcu_footprint": json.loads((Path(out_dir) / FOOTPRINT).read_text())}


class Runner:
    """Runs model.elf under QEMU; quantization as the mcu-int8 runner (model.dqm and
    model.tflite beside the ELF)."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ExportError(f"{path} does not exist: export the mcu-qemu target first")
        self.elf = path
        self.host = mcu.Runner(path.parent / mcu.ARTIFACT)
        self.input_qp, self.output_qp = self.host.input_qp, self.host.output_qp
        model = self.host.model
        self.output_bytes = model.tensor_bytes[model.output_index]
        self.session = None             # started on the first batch

    def close(self) -> None:
        """Stop the QEMU session (the next batch starts another)."""
        if self.session is not None:
            self.session.close()
            self.session = None

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return self.host.quantize(x)

    def run_codes(self, q: np.ndarray) -> np.ndarray:
        """int8 outputs of the emulated device, from the runner's QEMU session."""
        if self.session is None or self.session.proc is None:   # none yet, or ended
            self.session = qemustream.Session(self.elf, self.output_bytes)
        rows = crunner.rows(q)
        return self.session.run(rows).reshape(len(rows), self.output_bytes)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.output_qp.dequantize(self.run_codes(self.quantize(x)).astype(np.int32))
