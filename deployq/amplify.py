"""Per-layer perturbation amplification (Lin, Gan, Han, ICLR 2019, Defensive
Quantization, Fig. 1): for each layer, the relative change ||a(x_adv) - a(x)|| / ||a(x)||
of its output tensor, measured on the float graph and on every target that can dump its
tensors, and each target's figure over float's.

Each model is attacked through its own gradient: float by PGD on the float model, a
target by PGD through its mirror (BPDA), the adversarial examples then run on the
runtime itself, whose every tensor is read back. 'noise' replaces the attack by uniform
+-eps sign noise (seeded). Norms are L2 over a tensor's elements, per sample, averaged
over the samples whose clean tensor is not zero. Integer tensors are compared as codes
minus their zero point: a per-tensor scale cancels in the ratio.

Targets that dump: the C runtime in both modes (mcu-int8 through the .tflite tensor
names its runner reports, fpga-fixed through the IR tensor names of its model file),
and LiteRT's (tflite-int8, tflite-int8-ref) through its interpreter's tensors."""
from __future__ import annotations

import logging

import numpy as np
import torch

from . import attacks, backends, graph as G, mirror
from .errors import InputError

log = logging.getLogger("deployq")
ATTACKS = ("pgd", "noise")


def can_dump(target) -> bool:
    return backends.supports(backends.get(target.backend), "dump")


def perturb(model, x: np.ndarray, y: np.ndarray, attack: str, eps: float, steps: int,
            seed: int) -> np.ndarray:
    if attack == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(x + rng.choice([-eps, eps], size=x.shape), 0, 1).astype(np.float32)
    return attacks.pgd(model, torch.from_numpy(x), torch.from_numpy(y), eps, steps,
                       seed=seed).numpy()


def relative(clean: dict, adv: dict) -> dict[str, float]:
    """{layer: mean over samples of ||adv - clean|| / ||clean||} for (N, ...) arrays."""
    out = {}
    for name, a in clean.items():
        a = a.reshape(len(a), -1).astype(np.float64)
        d = np.linalg.norm(adv[name].reshape(len(a), -1) - a, axis=1)
        n = np.linalg.norm(a, axis=1)
        out[name] = float(np.mean(d[n > 0] / n[n > 0])) if (n > 0).any() else None
    return out


def float_tensors(graph: G.Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        values = G.run(graph, torch.from_numpy(x), keep=True)
    return {k: values[k].numpy() for k in [G.INPUT] + [n.name for n in graph.nodes]}


def target_tensors(runner, exported, graph: G.Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """{IR layer: (N, elements) codes minus zero point} from the runtime's dumps."""
    layers = {G.INPUT, *(n.name for n in graph.nodes)}
    rows: dict[str, list] = {}
    for sample in x:
        by_layer = {}
        for tensor, codes in runner.dump(sample).items():   # execution order: the last wins
            layer = runner.layer_of(tensor)
            if layer in layers:
                by_layer[layer] = codes.astype(np.int64)
        for layer, codes in by_layer.items():
            zp = int(exported.plan.tensor(layer).zero_point[0])
            rows.setdefault(layer, []).append(codes - zp)
    return {k: np.stack(v) for k, v in rows.items()}


def check(targets, attack: str, eps: float, samples: int, steps: int) -> None:
    """InputError naming what is wrong with an amplify request (targets: Target objects)."""
    if attack not in ATTACKS:
        raise InputError(f"--attack {attack!r} is unknown; choose one of {', '.join(ATTACKS)}")
    if not 0 < eps <= 1 or samples < 1 or steps < 1:
        raise InputError(f"need 0 < --eps <= 1, --samples >= 1, --steps >= 1; got "
                         f"{eps}, {samples}, {steps}")
    for target in targets:
        if not can_dump(target):
            raise InputError(f"target {target.name} cannot dump its tensors; amplify "
                             "measures mcu-int8, fpga-fixed, tflite-int8, tflite-int8-ref")


def measure(session, exports: dict, x: np.ndarray, y: np.ndarray, attack: str, eps: float,
            steps: int) -> dict:
    """The amplification table of float and each target (see the module docstring).
    exports: {target name: (Target, Exported, runner)}, in the table's order."""
    graph, seed = session.graph, session.seed
    x_adv = perturb(session.model.module, x, y, attack, eps, steps, seed)
    columns = {"float": relative(float_tensors(graph, x), float_tensors(graph, x_adv))}
    wrong = {"float": float((session.model.logits(x_adv).argmax(1) != y).mean())}
    for name, (tgt, exported, runner) in exports.items():
        m = mirror.build(tgt, graph, exported.plan)
        xa = perturb(m, x, y, attack, eps, steps, seed)
        log.info("%s: dumping %d clean and %d perturbed samples", name, len(x), len(x))
        columns[name] = relative(target_tensors(runner, exported, graph, x),
                                 target_tensors(runner, exported, graph, xa))
        wrong[name] = float((runner.run(xa).argmax(1) != y).mean())
    layers = [G.INPUT] + [n.name for n in graph.nodes]
    return {"model": session.model.spec, "data": session.data_spec, "attack": attack,
            "eps": eps, "steps": steps, "samples": int(len(x)), "seed": seed,
            "misclassified": wrong,
            "layers": [{"layer": k, **{c: columns[c].get(k) for c in columns}}
                       for k in layers]}


def table(result: dict) -> list[tuple]:
    """Rows: layer, float's ratio, then each target's ratio and its multiple of float's
    (built in deployq.views, which report.html shares)."""
    from .views import amplify_rows
    return amplify_rows(result)
