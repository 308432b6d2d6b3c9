"""A self-contained C project for a microcontroller from an exported model.dqm.

write_c_project() copies the C runtime, embeds the model as a 4-byte-aligned constant
array (flash), sizes a static arena from dq_arena_bytes (computed here by the host
build of the same runtime), embeds test inputs with the host runtime's outputs, and
adds a Makefile, a Cortex-M4 startup and linker script for Arm's MPS2-AN386 board, and
semihosting test programs (runtime/mcu/ holds these templates). build() compiles it
with arm-none-eabi-gcc, run_test() and run_stream() run it under qemu-system-arm, and
footprint() gives flash, RAM and instructions per inference (docs/mcu.md)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import rtformat as F
from .errors import ExportError, InputError, TargetError
from .io import StagedDir, atomic_write

TEMPLATES = Path(__file__).resolve().parent.parent / "runtime" / "mcu"
BOARD_FILES = ("startup.c", "semihost.c", "semihost.h", "board.c", "board.h", "mps2_an386.ld")
TEST_FILES = ("test_main.c", "stream_main.c", "footprint_main.c")
HOST_ONLY = ("dq_quantize_multiplier.c", "dq_profile.c")   # double math; host timers
TOOLS = {"arm-none-eabi-gcc": "gcc-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"}
PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
QEMU = ["qemu-system-arm", "-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic",
        "-monitor", "none", "-serial", "none", "-semihosting"]
TEST_COUNT = 20
TIMER_HZ = 25_000_000              # board.h: CMSDK timer 0 at the 25 MHz peripheral clock
INSTRUCTIONS_PER_TICK = 1e9 / TIMER_HZ   # -icount shift=0: 1 ns of virtual time per instruction
CLOCK_MHZ = 168                    # the estimate's clock: an STM32F4-class Cortex-M4


def _sources_dir() -> Path:
    from .runtime import SOURCES
    return SOURCES


def _templates() -> Path:
    here = Path(__file__).resolve().parent
    return next((d for d in (here / "runtime_c" / "mcu", TEMPLATES) if d.is_dir()), TEMPLATES)


def missing_tools(tools=TOOLS) -> list[str]:
    """The tools not on PATH; newlib counts as missing when the compiler has no libc.a."""
    missing = [t for t in tools if shutil.which(t) is None]
    if "arm-none-eabi-gcc" in tools and not missing.count("arm-none-eabi-gcc"):
        libc = subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb",
                               "-print-file-name=libc.a"], capture_output=True, text=True)
        if not Path(libc.stdout.strip()).is_absolute():
            missing.append("newlib (libc.a for arm-none-eabi)")
    return missing


def require_tools(tools=TOOLS) -> None:
    """TargetError with the Debian packages to install when a tool is missing."""
    missing = missing_tools(tools)
    if missing:
        raise TargetError(f"{', '.join(missing)} not found: install the Arm toolchain and "
                          f"emulator (Debian: apt-get install {PACKAGES})")


# --- writing the project -----------------------------------------------------------

def write_c_project(model_path: Path, out_dir: Path, inputs: np.ndarray | None = None,
                    quant: tuple | None = None, kernels: str = "opt") -> Path:
    """Write the C project for model_path into out_dir (replaced as a whole, atomically).
    inputs: int8 rows (N, input bytes), or None (20 seeded random int8 rows); quant:
    the (input, output) QParams for the header's defines, or None. The mcu backend's
    c_project hook gives both from float samples. kernels: the set the Makefile builds
    ("opt": the DSP-extension kernels, runtime/dq_arm_dsp.h; "ref": the reference
    loops). The expected test outputs always come from the host's reference set, so
    the self-checking test program checks the device's kernels against it. Returns
    out_dir."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    from . import runtime
    if kernels not in runtime.KERNELS:
        raise InputError(f"unknown C kernel set {kernels!r} for the C project: choose "
                         f"{' or '.join(runtime.KERNELS)}")
    blob = model_path.read_bytes()
    model = runtime.Model(blob, str(model_path), kernels="ref")
    # the arena holds the device kernels' scratch: planned by the same algorithm on the host
    device = model if kernels == "ref" else runtime.Model(blob, str(model_path),
                                                          kernels=runtime.DSP_TWIN)
    rows = _test_rows(model, inputs)
    expected = model.run(rows)
    with StagedDir(out_dir, (model_path,)) as tmp:
        _copy_sources(tmp, kernels)
        _write(tmp / "model_data.h", _model_data_h(len(blob)))
        _write(tmp / "model_data.c", _model_data_c(blob))
        _write(tmp / "deployq_model.h", _model_header(device, blob, model_path, quant, kernels))
        _write(tmp / "test" / "test_vectors.h", _vectors_h(len(rows)))
        _write(tmp / "test" / "test_vectors.c", _vectors_c(rows, expected))
    return out_dir


def _test_rows(model, inputs) -> np.ndarray:
    n_in = model.tensor_bytes[model.input_index]
    if inputs is None:
        return np.random.default_rng(0).integers(-128, 128, (TEST_COUNT, n_in), dtype=np.int8)
    inputs = np.asarray(inputs)
    rows = np.ascontiguousarray(inputs.reshape(len(inputs), -1))
    if inputs.dtype != np.int8 or rows.shape[1] != n_in or len(rows) < 1:
        raise InputError(f"test inputs for the C project: need int8 rows of {n_in} values, "
                         f"got shape {inputs.shape}")
    return rows


def _copy_sources(tmp: Path, kernels: str = "opt") -> None:
    src = _sources_dir()
    (tmp / "runtime").mkdir()
    for f in sorted(src.glob("*.[ch]")):
        if f.name not in HOST_ONLY:
            shutil.copy2(f, tmp / "runtime" / f.name)
    templates = _templates()
    (tmp / "board").mkdir()
    (tmp / "test").mkdir()
    for name in BOARD_FILES:
        shutil.copy2(templates / name, tmp / "board" / name)
    for name in TEST_FILES:
        shutil.copy2(templates / name, tmp / "test" / name)
    shutil.copy2(templates / "deployq_model.c", tmp / "deployq_model.c")
    makefile = (templates / "Makefile").read_text()
    assert "\nKERNELS ?= opt\n" in makefile, "runtime/mcu/Makefile: the KERNELS line moved"
    _write(tmp / "Makefile", makefile.replace("\nKERNELS ?= opt\n", f"\nKERNELS ?= {kernels}\n"))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _c_array(values, fmt, per_line: int) -> str:
    items = [fmt(v) for v in values]
    return ",\n".join("    " + ", ".join(items[i:i + per_line])
                      for i in range(0, len(items), per_line))


def _model_data_h(size: int) -> str:
    return f"""/* model_data.h: the model file (deployq runtime format), generated by deployq. */
#ifndef DQ_MODEL_DATA_H
#define DQ_MODEL_DATA_H

#include <stdint.h>

#define DQ_MODEL_DATA_BYTES {size}u

/* the union gives the 4-byte alignment dq_model_init requires, in plain C99 */
typedef union {{
    uint32_t align;
    uint8_t bytes[DQ_MODEL_DATA_BYTES];
}} dq_model_blob;

extern const dq_model_blob dq_model_data;      /* const: placed in flash */

#endif
"""


def _model_data_c(blob: bytes) -> str:
    body = _c_array(blob, lambda b: f"0x{b:02x}", 16)
    return f"""/* model_data.c: generated by deployq; do not edit. */
#include "model_data.h"

const dq_model_blob dq_model_data = {{.bytes = {{
{body}
}}}};
"""


def _quant_defines(quant: tuple | None) -> str:
    """Input/output scale and zero point for the caller's own (de)quantization; empty
    without them."""
    if quant is None:
        return ""
    lines = ["/* Quantization of input and output (for the caller; the model itself uses no",
             " * float): q = clamp(round_half_away(x / scale) + zero_point, -128, 127),",
             " * x = scale * (q - zero_point). */"]
    for name, qp in zip(("INPUT", "OUTPUT"), quant):
        lines += [f"#define DEPLOYQ_{name}_SCALE {float(np.ravel(qp.scale)[0]):.9g}f",
                  f"#define DEPLOYQ_{name}_ZERO_POINT {int(np.ravel(qp.zero_point)[0])}"]
    return "\n".join(lines) + "\n"


def _model_header(model, blob: bytes, model_path: Path, quant: tuple | None,
                  kernels: str = "opt") -> str:
    header = np.frombuffer(blob[:F.HEADER.itemsize], F.HEADER)[0]
    tensors = np.frombuffer(blob[F.HEADER.itemsize:], F.TENSOR, int(header["n_tensors"]))
    h, w, c = (int(d) for d in tensors[model.input_index]["dims"])
    return f"""/* deployq_model.h: the API of the exported model {model_path.name}, generated by
 * deployq. The model lives in flash (model_data.c); all working memory is given by the
 * caller: a dq_model (validated once by deployq_model_init) and an arena of
 * DEPLOYQ_ARENA_BYTES. deployq_model_invoke allocates nothing, checks nothing, and
 * uses no floating point. Tensors are int8 in NHWC order, one sample after another. */
#ifndef DEPLOYQ_MODEL_H
#define DEPLOYQ_MODEL_H

#include "dq_runtime.h"

#define DEPLOYQ_ARENA_BYTES {model.lib.dq_arena_bytes(model.handle)}u   /* dq_arena_bytes() of the {kernels} kernels (Makefile KERNELS), computed at export */
#define DEPLOYQ_INPUT_H {h}
#define DEPLOYQ_INPUT_W {w}
#define DEPLOYQ_INPUT_C {c}
#define DEPLOYQ_INPUT_BYTES {model.tensor_bytes[model.input_index]}
#define DEPLOYQ_OUTPUT_BYTES {model.tensor_bytes[model.output_index]}

{_quant_defines(quant)}
/* Validates the embedded model into *model (DQ_OK, or the dq_status of what is wrong). */
dq_status deployq_model_init(dq_model *model);

/* Runs n samples: input holds n * DEPLOYQ_INPUT_BYTES, output n * DEPLOYQ_OUTPUT_BYTES;
 * arena is DEPLOYQ_ARENA_BYTES of caller memory, reused by every call. */
dq_status deployq_model_invoke(const dq_model *model, uint8_t *arena, const int8_t *input,
                               int8_t *output, int32_t n);

#endif
"""


def _vectors_h(n: int) -> str:
    return f"""/* test_vectors.h: test inputs and the host C runtime's outputs, generated by deployq. */
#ifndef DQ_TEST_VECTORS_H
#define DQ_TEST_VECTORS_H

#include "deployq_model.h"

#define DQ_TEST_COUNT {n}u

extern const int8_t dq_test_inputs[DQ_TEST_COUNT][DEPLOYQ_INPUT_BYTES];
extern const int8_t dq_test_expected[DQ_TEST_COUNT][DEPLOYQ_OUTPUT_BYTES];

#endif
"""


def _vectors_c(rows: np.ndarray, expected: np.ndarray) -> str:
    def block(arr):
        return ",\n".join("    {\n" + _c_array(r.tolist(), str, 16).replace("\n", "\n    ")
                          .replace("    ", "        ", 1) + "\n    }" for r in arr)
    return f"""/* test_vectors.c: generated by deployq; do not edit. */
#include "test_vectors.h"

const int8_t dq_test_inputs[DQ_TEST_COUNT][DEPLOYQ_INPUT_BYTES] = {{
{block(rows)}
}};

const int8_t dq_test_expected[DQ_TEST_COUNT][DEPLOYQ_OUTPUT_BYTES] = {{
{block(expected)}
}};
"""


# --- building and running ----------------------------------------------------------

def build(project: Path, extra_cflags: str = "", timeout: float = 300) -> dict[str, Path]:
    """`make` in the project; the ELF files by program name. ExportError with the
    compiler's message on failure."""
    require_tools(("arm-none-eabi-gcc",))
    project = Path(project)
    cmd = ["make", "-C", str(project), f"-j{min(os.cpu_count() or 1, 2)}", "all"]
    if extra_cflags:
        cmd.append(f"EXTRA_CFLAGS={extra_cflags}")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise ExportError(f"building the C project {project} failed:\n"
                          f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return {name: project / "build" / f"deployq_{name}.elf"
            for name in ("test", "stream", "footprint")}


def _qemu(elf: Path, cwd: Path, icount: bool, timeout: float) -> str:
    require_tools(("qemu-system-arm",))
    cmd = QEMU + (["-icount", "shift=0"] if icount else []) + ["-kernel", str(Path(elf).resolve())]
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExportError(f"{elf.name} did not finish within {timeout:.0f} s under QEMU") from None
    if result.returncode != 0:
        raise ExportError(f"{elf.name} failed under QEMU (exit {result.returncode}): "
                          f"{(result.stdout + result.stderr).strip()[-500:]}")
    return result.stdout + result.stderr


def run_test(project: Path, timeout: float = 120) -> dict:
    """Run build/deployq_test.elf under QEMU with instruction counting; its int8 outputs
    (N, output bytes), instructions and stack bytes per sample, and the self-check."""
    project = Path(project).resolve()
    text = _qemu(project / "build" / "deployq_test.elf", project, True, timeout)
    rows = re.findall(r"^y (\d+) ([0-9a-f]*) (\d+) (\d+)$", text, re.M)
    if not rows or not re.search(r"^ok \d+$", text, re.M):
        raise ExportError(f"unexpected output of deployq_test.elf: {text.strip()[-500:]}")
    outputs = np.array([np.frombuffer(bytes.fromhex(r[1]), np.int8) for r in rows])
    overhead = int(re.search(r"^timer_overhead (\d+)$", text, re.M).group(1))
    ticks = np.array([int(r[2]) - overhead for r in rows])
    return {"outputs": outputs, "instructions": ticks * INSTRUCTIONS_PER_TICK,
            "stack_bytes": int(re.search(r"^stack (\d+)$", text, re.M).group(1)),
            "log": text}


def run_stream(elf: Path, rows: np.ndarray, output_bytes: int, timeout: float = 600) -> np.ndarray:
    """int8 rows through the emulated device in one QEMU run: in.bin -> out.bin."""
    rows = np.ascontiguousarray(rows, np.int8)
    with tempfile.TemporaryDirectory(prefix="deployq-qemu-") as tmp:
        (Path(tmp) / "in.bin").write_bytes(rows.tobytes())
        _qemu(elf, Path(tmp), False, timeout)
        out = np.fromfile(Path(tmp) / "out.bin", np.int8)
    if out.size != len(rows) * output_bytes:
        raise ExportError(f"the emulated device returned {out.size} bytes for {len(rows)} "
                          f"samples of {output_bytes}")
    return out.reshape(len(rows), output_bytes)


def _size(paths) -> list[dict]:
    """arm-none-eabi-size (Berkeley format) rows: text, data, bss, file."""
    result = subprocess.run(["arm-none-eabi-size", *map(str, paths)], capture_output=True,
                            text=True, check=True)
    rows = []
    for line in result.stdout.splitlines()[1:]:
        text, data, bss, _, _, name = line.split(None, 5)
        rows.append({"text": int(text), "data": int(data), "bss": int(bss), "file": name})
    return rows


def _define(project: Path, name: str) -> int:
    m = re.search(rf"#define {name} (\d+)", (project / "deployq_model.h").read_text())
    return int(m.group(1))


def footprint(project: Path, measure: bool = True) -> dict:
    """Flash and RAM of a built project (arm-none-eabi-size), and with measure=True the
    instructions per inference counted by QEMU (-icount shift=0) over the embedded test
    inputs, the stack high-water mark, and a latency estimate at CLOCK_MHZ."""
    project = Path(project)
    objs = sorted((project / "build").glob("runtime/*.o")) + [
        project / "build" / "deployq_model.o", project / "build" / "model_data.o"]
    lib = _size(objs)
    fw = _size([project / "build" / "deployq_footprint.elf"])[0]
    model_data = next(r for r in lib if r["file"].endswith("model_data.o"))
    result = {
        "model_data_bytes": model_data["text"] + model_data["data"],
        "runtime_code_bytes": sum(r["text"] + r["data"] for r in lib) - model_data["text"],
        "arena_bytes": _define(project, "DEPLOYQ_ARENA_BYTES"),
        "firmware_flash_bytes": fw["text"] + fw["data"],
        "firmware_static_ram_bytes": fw["data"] + fw["bss"],
    }
    if measure:
        run = run_test(project)
        inst = run["instructions"]
        result |= {"stack_bytes": run["stack_bytes"],
                   "ram_bytes": result["firmware_static_ram_bytes"] + run["stack_bytes"],
                   "instructions_per_inference": {"mean": float(inst.mean()),
                                                  "min": float(inst.min()),
                                                  "max": float(inst.max())},
                   "samples": int(len(inst)),
                   "estimated_ms": {"clock_mhz": CLOCK_MHZ,
                                    "ms": float(inst.mean()) / (CLOCK_MHZ * 1e3),
                                    "assumes": "1 instruction per cycle (an estimate)"}}
    return result
