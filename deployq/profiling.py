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
import os
import platform
import statistics
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
    if node.op == "conv_transpose":        # every input element times every tap
        return int(np.prod(graph.shape_of(node.inputs[0]))) * int(node.weight.size) \
            // node.weight.shape[1]
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


def target(exported, graph: G.Graph, runner, x: np.ndarray, repeats: int = 50,
           batch: int = 256) -> dict:
    """Everything above for one exported target and its runner, with the backend's
    extra figures (backends.extras) and, where the runner has them, its runtime's own
    per-layer timers."""
    from . import backends
    module = backends.get(exported.target.backend)
    row = {"target": exported.target.name, "backend": exported.target.backend,
           "artifact_bytes": exported.path.stat().st_size, "threads": 1}
    row.update(static(graph, exported.plan))
    row.update(backends.extras(module, exported.path.parent))
    row["latency"] = latency(runner.run, x, repeats, batch)
    if backends.supports(module, "layer_times"):
        row["slowest_layers"] = runner.layer_times(x, repeats)[:10]
        row["layer_timer"] = runner.LAYER_TIMER
    return row
