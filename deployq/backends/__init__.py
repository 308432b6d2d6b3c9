"""One module per runtime backend, found by name (get). Every module has:

  ARTIFACT                      file name of its artifact in OUT/TARGET/
  CAPABILITIES                  the optional parts below it has (a frozenset of names)
  export(graph, plan, target, out_dir, calib) -> (Path, QuantPlan)
      write the artifact into out_dir; return its path and the plan it carries (the
      given plan, or, for a target that calibrates itself, its parameters read back)
  load(path, target, threads=1) -> Runner

and, when listed in CAPABILITIES, the module hooks
  mirror(graph, plan, target, temperature) -> torch callable   its own BPDA mirror
  extras(out_dir) -> dict       figures of the export to add to its profile row
  c_project(artifact, out_dir, inputs) -> Path   a C project for a microcontroller
  hls4ml_project(graph, plan, target, out_dir) -> Path   an hls4ml project computing
      the same integers (with hls4ml_check(graph, target): its refusal, before any work)
  semantics(exported, graph, runner) -> certify.Semantics   the exact integer model the
      certificates are computed on (with certifiable(target): TargetError where the
      target's settings run kernels deployq does not reproduce bit for bit)

Every Runner follows the Runner protocol below; the runner capabilities 'dump' and
'layer_times' add the methods of Dumps and LayerTimes. Code outside this package asks
`supports(module, name)`, never the backend's name and never hasattr: the conformance
test (tests/backends/test_conformance.py) checks that each module declares exactly
what it has."""
from __future__ import annotations

import importlib.util
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import TargetError

RUNNER_CAPABILITIES = ("dump", "layer_times")
# what each backend executes, read by targets.py before any backend is imported (a
# target file may allow a subset): (weight bits, activation bits, container bits). The
# int8 runtimes hold narrower weights on the int8 grid and run 8-bit activations only.
EXECUTED_BITS = {"onnx": (range(2, 9), (8,), 8), "tflite": (range(2, 9), (8,), 8),
                 "mcu": (range(2, 9), (8,), 8), "qemu": (range(2, 9), (8,), 8),
                 "fpga": (range(2, 9), range(2, 9), None)}
HOOKS = ("mirror", "extras", "c_project", "hls4ml_project", "semantics")
# the backends whose runtimes hold a ReLU's output unsigned (the target option
# relu_unsigned; ap_ufixed on the FPGA), read by targets.relu_unsigned
UNSIGNED_RELU = frozenset({"fpga"})
# the packages each backend module imports besides numpy and torch, read by
# missing_package() without importing the module (a sweep checks its grid before torch
# is imported); tests/backends/test_seams.py checks them against the modules' imports
PACKAGES = {"onnx": ("onnx", "onnxruntime"), "tflite": ("ai_edge_litert",),
            "mcu": ("ai_edge_litert",), "qemu": ("ai_edge_litert",), "fpga": ()}


@runtime_checkable
class Runner(Protocol):
    """A loaded artifact on its real runtime.

    input_qp    the grid of the input codes (scale, zero point, bits)
    output_qp   the grid of the integer output codes, or None where the output is float
    quantize(x: float32 (N, C, H, W) in [0, 1]) -> integer input codes, NCHW, rounded
                as the runtime itself rounds (which may differ from input_qp.quantize)
    run_codes(q) -> integer output codes (N, *output shape), the runtime's own integers
    run(x) -> float32 logits (N, classes): output_qp.dequantize(run_codes(quantize(x)))
    """
    input_qp: object
    output_qp: object

    def quantize(self, x: np.ndarray) -> np.ndarray: ...

    def run_codes(self, q: np.ndarray) -> np.ndarray: ...

    def run(self, x: np.ndarray) -> np.ndarray: ...


class Dumps(Protocol):
    """Capability 'dump': every integer tensor of one sample, by the runtime's tensor
    name, and the IR layer each name belongs to ('input' for the input, None when it
    belongs to none)."""

    def dump(self, x: np.ndarray) -> dict[str, np.ndarray]: ...

    def layer_of(self, tensor: str) -> str | None: ...


class LayerTimes(Protocol):
    """Capability 'layer_times': the runtime's own per-layer timers for one sample,
    slowest first: [{'node', 'op', 'us_per_run'}]; LAYER_TIMER names the timer."""
    LAYER_TIMER: str

    def layer_times(self, x: np.ndarray, repeats: int) -> list[dict]: ...


def get(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise TargetError(f"no backend module '{name}'") from None
        raise TargetError(_needs(name, e.name)) from None


def _needs(name: str, package: str) -> str:
    return f"backend '{name}' needs the package '{package}': pip install {package}"


def missing_package(name: str) -> str | None:
    """Why backend `name` cannot be imported for want of a package (get()'s message),
    found without importing it, or None."""
    missing = [p for p in PACKAGES.get(name, ()) if importlib.util.find_spec(p) is None]
    return _needs(name, missing[0]) if missing else None


def unavailable(name: str) -> str | None:
    """Why backend `name` cannot run on this machine (a package, toolchain or emulator
    missing: the TargetError get() raises), or None when it can."""
    try:
        get(name)
    except TargetError as e:
        return str(e)
    return None


def supports(module, capability: str) -> bool:
    """Whether a backend module declares a runner capability or a module hook."""
    if capability not in RUNNER_CAPABILITIES + HOOKS:
        raise ValueError(f"unknown capability {capability!r}")
    return capability in module.CAPABILITIES


def extras(module, out_dir) -> dict:
    """The module's extra profile figures for an export in out_dir ({} without)."""
    return module.extras(out_dir) if supports(module, "extras") else {}


def codes(runner: Runner, x: np.ndarray) -> np.ndarray:
    """A runner's integer output codes for float inputs, quantized as it quantizes."""
    return runner.run_codes(runner.quantize(x))
