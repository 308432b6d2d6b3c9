"""Profiling per target: size, compute, memory and latency, measured the same way for
every target so they can be compared (and set beside accuracy and robustness).

Static figures come from the graph and the plan the artifact carries: MACs per
inference, BOPs (weight bits x activation bits x MACs, per layer), weight bytes at the
stored bit widths (bits packed), and the peak activation memory of a lifetime-planned
arena (what a microcontroller must reserve). Latency is measured on the real runner:
batch 1 (median and p90 over repeated calls after a warm-up) and throughput at a larger
batch, with the runner's thread count fixed and reported."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from . import graph as G
from .plan import QuantPlan

ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon",
             "asimddp", "i8mm")


def macs(node: G.Node, graph: G.Graph) -> int:
    """Multiply-accumulates of one inference of a layer (0 for ops without weights)."""
    if node.op == "conv2d":
        out = int(np.prod(node.shape))
        return out * int(np.prod(node.weight.shape[1:]))
    if node.op == "linear":
        return int(node.weight.size)
    return 0


def static(graph: G.Graph, plan: QuantPlan) -> dict:
    layers = []
    for node in graph.nodes:
        lp = plan.layers[node.name]
        m = macs(node, graph)
        wbits = lp.weight.bits if lp.weight is not None else 0
        abits = plan.tensor(node.inputs[0]).bits
        layers.append({"layer": node.name, "op": node.op, "macs": m,
                       "bops": m * wbits * abits,
                       "weight_bits": wbits, "activation_bits": lp.output.bits,
                       "weight_bytes": _weight_bytes(node, wbits)})
    return {"macs": sum(l["macs"] for l in layers), "bops": sum(l["bops"] for l in layers),
            "weight_bytes": sum(l["weight_bytes"] for l in layers),
            "peak_activation_bytes": peak_activation_bytes(graph, plan), "layers": layers}


def _weight_bytes(node: G.Node, bits: int) -> int:
    """Weights packed at their bit width, plus int32 biases."""
    if node.weight is None:
        return 0
    return (node.weight.size * bits + 7) // 8 + 4 * node.bias.size


def peak_activation_bytes(graph: G.Graph, plan: QuantPlan) -> int:
    """Peak of the live activation bytes when each tensor lives from the layer that
    writes it to the last layer that reads it (bytes = ceil(bits / 8) per element)."""
    last_use = {G.INPUT: 0}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = i
    last_use[graph.output] = len(graph.nodes)
    size = {name: int(np.prod(graph.shape_of(name))) * ((plan.tensor(name).bits + 7) // 8)
            for name in last_use}
    live, peak = {G.INPUT}, size[G.INPUT]
    for i, node in enumerate(graph.nodes):
        live.add(node.name)
        peak = max(peak, sum(size.get(t, 0) for t in live))
        live = {t for t in live if last_use.get(t, -1) > i}
    return peak


def latency(run, x: np.ndarray, repeats: int = 50, batch: int = 256) -> dict:
    """Batch-1 latency (median, p90, spread over `repeats` calls) and throughput at
    `batch` (median of 5), after a warm-up of each."""
    one = x[:1]
    run(one)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - t0)
    xb = np.resize(x, (batch, *x.shape[1:]))
    run(xb)
    big = []
    for _ in range(5):
        t0 = time.perf_counter()
        run(xb)
        big.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"batch1_ms_median": float(np.median(ms)), "batch1_ms_p90": float(np.percentile(ms, 90)),
            "batch1_ms_min": float(ms.min()), "batch1_ms_max": float(ms.max()),
            "repeats": repeats, "throughput_batch": batch,
            "throughput_per_s": float(batch / statistics.median(big))}


def machine() -> dict:
    """The CPU (model name, integer-relevant ISA features) and Python package versions."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    versions = {}
    for pkg in ("onnxruntime", "ai-edge-litert", "tensorflow-cpu", "torch"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": model, "cores": os.cpu_count(), "isa": sorted(flags & set(ISA_FLAGS)),
            "versions": versions}


def onnx_layers(path: Path, x: np.ndarray, runs: int = 20) -> list[dict]:
    """ONNX Runtime's own per-node timings (its profiler), slowest first."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {G.INPUT: x[:1]})
        events = json.loads(Path(session.end_profiling()).read_text())
    total: dict[tuple[str, str], float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", "?"))
            total[key] = total.get(key, 0.0) + e["dur"]
    rows = [{"node": n, "op": op, "us_per_run": v / runs} for (n, op), v in total.items()]
    return sorted(rows, key=lambda r: -r["us_per_run"])


def target(exported, graph: G.Graph, runner, x: np.ndarray, repeats: int = 50,
           batch: int = 256) -> dict:
    """Everything above for one exported target and its runner."""
    row = {"target": exported.target.name, "backend": exported.target.backend,
           "artifact_bytes": exported.path.stat().st_size, "threads": 1}
    row.update(static(graph, exported.plan))
    model = getattr(runner, "model", None)           # the C runtime plans its own arena
    if model is not None and hasattr(model, "arena"):
        row["runtime_arena_bytes"] = int(model.arena.size)
    row["latency"] = latency(runner.run, x, repeats, batch)
    if exported.target.backend == "onnx":
        row["slowest_layers"] = onnx_layers(exported.path, x)[:10]
    elif model is not None and hasattr(model, "op_times"):
        row["slowest_layers"] = runtime_layers(runner, graph, x, repeats)[:10]
    return row


def runtime_layers(runner, graph: G.Graph, x: np.ndarray, runs: int) -> list[dict]:
    """The C runtime's own per-op timers, slowest first, each named by the IR layer that
    its output tensor belongs to (MCU tensors carry .tflite names)."""
    from .backends.tflite import layer_of
    names = runner.names            # every C-runtime runner: its tensor names by index
    rows = []
    for o in runner.model.op_times(runner.quantize(x[:1])[0], runs):
        name = names[o["output"]] if o["output"] < len(names) else str(o["output"])
        rows.append({"node": layer_of(name, graph) or name, "op": o["op"],
                     "us_per_run": 1e6 * o["seconds"]})
    return sorted(rows, key=lambda r: -r["us_per_run"])
