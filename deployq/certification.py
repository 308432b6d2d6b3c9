"""Certified robustness on the integer arithmetic each target runs (after QA-IBP,
Lechner et al., AAAI 2023): interval bound propagation through the exact integer
semantics (deployq.ibp), soundness checks on the actual runtime, and complete
verification by branch and bound over the finite integer input box.

The threat model: any float32 input x' with |x' - x|_inf <= eps and values in [0, 1],
converted to integers by the target's own input quantization. That conversion is
monotone, so the codes form the box [Q(lo), Q(hi)] with lo, hi the ball's ends (each
rounded outward to float32). A sample is certified at eps when the output bounds over
that box leave its label the argmax: lo[y] > hi[j] for every j < y and lo[y] >= hi[j]
for j > y (ties go to the lower index, as argmax does).

Targets: fpga-fixed (deployq.fixedpoint's integers), mcu-int8 / mcu-qemu (the exported
model.dqm the C runtime loads) and tflite-int8-ref (its .tflite translated to that model
file; LiteRT's reference kernels and the C runtime agree bit for bit, a tested fact).
onnx-int8 and tflite-int8 (XNNPACK) are refused: deployq does not reproduce their
kernels' arithmetic bit for bit, so a bound would certify a model they do not run."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np
import torch

from . import fixedpoint as FX
from . import graph as G
from . import ibp
from .errors import InputError, TargetError

log = logging.getLogger("deployq")
CERTIFIABLE = "fpga-fixed, mcu-int8, mcu-qemu, tflite-int8-ref"


def parse_eps(text: str) -> list[float]:
    """'1/255,0.01' -> [0.00392..., 0.01]; each in (0, 1]."""
    values = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            v = float(Fraction(part))
        except (ValueError, ZeroDivisionError):
            raise InputError(f"--eps takes numbers or fractions like 1/255, got {part!r}") from None
        if not 0 < v <= 1:
            raise InputError(f"--eps {part} is outside (0, 1]; give L-inf budgets in input units")
        values.append(v)
    if not values:
        raise InputError("--eps needs at least one value, e.g. 1/255,2/255,4/255")
    return values


def check_target(target) -> None:
    """Refuse a target whose arithmetic deployq does not model exactly: its backend
    declares the 'semantics' hook, and certifiable(target) accepts its settings."""
    from . import backends
    module = backends.get(target.backend)
    if not backends.supports(module, "semantics"):
        raise TargetError(f"cannot certify {target.name}: it runs {target.description}, "
                          "whose arithmetic deployq does not reproduce bit for bit; certify "
                          f"one of {CERTIFIABLE}")
    module.certifiable(target)


# --- a target's integer semantics ------------------------------------------------------

@dataclass
class Semantics:
    """One target's integer model: codes(x) its input quantization (float NCHW ->
    int64 NCHW), bounds(lo, hi) output bounds over boxes of codes (N, D) in its own
    layout, run(x) the ACTUAL runtime's integer outputs for float inputs."""
    name: str
    codes: Callable[[np.ndarray], np.ndarray]
    flat: Callable[[np.ndarray], np.ndarray]          # NCHW codes -> (N, D) layout
    unflat: Callable[[np.ndarray], np.ndarray]        # (N, D) -> NCHW
    bounds: Callable[[np.ndarray, np.ndarray], tuple]
    dequantize: Callable[[np.ndarray], np.ndarray]    # NCHW codes -> float (approximate)
    run: Callable[[np.ndarray], np.ndarray]
    mirror: object = None                             # differentiable, for attacks
    model: object = None                              # FxModel or S8Program (linbounds)
    linear: object = field(default=None, repr=False)  # linbounds.Net, built when needed

    def box(self, x: np.ndarray, eps: float):
        lo, hi = ball(x, eps)
        return self.flat(self.codes(lo)), self.flat(self.codes(hi))

    def point(self, q: np.ndarray) -> np.ndarray:
        return self.bounds(q, q)[0]


def ball(x: np.ndarray, eps: float):
    """The L-inf ball's ends in [0, 1], rounded outward to float32."""
    v = np.asarray(x, np.float64)
    return (np.maximum(_round32(v - eps, down=True), 0) + np.float32(0),
            np.minimum(_round32(v + eps, down=False), 1))


def _round32(v: np.ndarray, down: bool) -> np.ndarray:
    f = v.astype(np.float32)
    if down:
        return np.where(f > v, np.nextafter(f, np.float32(-np.inf)), f)
    return np.where(f < v, np.nextafter(f, np.float32(np.inf)), f)


def semantics(exported, graph: G.Graph, runner) -> Semantics:
    """The target's integer model, from its backend's 'semantics' hook."""
    from . import backends
    check_target(exported.target)
    return backends.get(exported.target.backend).semantics(exported, graph, runner)


def fx_semantics(exported, graph: G.Graph, runner, fx: FX.FxModel, mirror) -> Semantics:
    """fpga-fixed: deployq.fixedpoint's integers of the lowered model fx."""
    shape = graph.input_shape
    return Semantics(
        exported.target.name,
        codes=lambda x: FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant),
        flat=_nchw_flat, unflat=lambda q: q.reshape(len(q), *shape),
        bounds=lambda lo, hi: ibp.fx_bounds(fx, lo.reshape(len(lo), *shape),
                                            hi.reshape(len(hi), *shape)),
        dequantize=lambda q: (q * 2.0 ** -fx.input_frac).astype(np.float32),
        run=lambda x: _codes(runner, x),
        mirror=mirror, model=fx)


def _nchw_flat(q):
    return q.reshape(len(q), -1)


def _codes(runner, x: np.ndarray) -> np.ndarray:
    return runner.run_codes(runner.quantize(x)).astype(np.int64).reshape(len(x), -1)


def s8_semantics(exported, graph: G.Graph, runner, model_file: bytes) -> Semantics:
    """The int8 targets: TFLite's reference int8 rules on the C runtime's model file
    (deployq.ibp.S8Program); runner's input quantization is LiteRT's reference one."""
    from . import mirror as M
    prog = ibp.S8Program(model_file)
    in_qp = runner.input_qp
    c, h, w = graph.input_shape
    scale, zp = float(in_qp.scale[0]), int(in_qp.zero_point[0])
    return Semantics(
        exported.target.name,
        codes=lambda x: runner.quantize(x).astype(np.int64),
        flat=lambda q: q.transpose(0, 2, 3, 1).reshape(len(q), -1),
        unflat=lambda q: q.reshape(len(q), h, w, c).transpose(0, 3, 1, 2),
        bounds=prog.bounds,
        dequantize=lambda q: ((q - zp) * scale).astype(np.float32),
        run=lambda x: _codes(runner, x),
        mirror=M.build(exported.target, graph, exported.plan), model=prog)


# --- certificates ---------------------------------------------------------------------

def certified(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample: the label stays the argmax (first index on ties) over the bounds."""
    n, k = lo.shape
    low_y = lo[np.arange(n), y][:, None]
    j = np.arange(k)[None]
    beats = np.where(j < y[:, None], low_y > hi, low_y >= hi)
    beats[np.arange(n), y] = True
    return beats.all(1)


def batched_bounds(bounds, lo, hi, batch: int = 200):
    parts = [bounds(lo[i:i + batch], hi[i:i + batch]) for i in range(0, len(lo), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def preimage(sem: Semantics, q: np.ndarray, lo32: np.ndarray, hi32: np.ndarray):
    """A float32 input in [lo32, hi32] (NCHW, >= 0) whose codes are q (NCHW), found
    per element by bisection over float32 bit patterns (ordered like the values for
    non-negative floats; the quantization is monotone and elementwise). None where no
    such input exists."""
    a = lo32.astype(np.float32).view(np.int32).astype(np.int64)
    b = hi32.astype(np.float32).view(np.int32).astype(np.int64)
    for _ in range(33):
        mid = (a + b) // 2
        ok = sem.codes(mid.astype(np.int32).view(np.float32)) >= q
        b, a = np.where(ok, mid, b), np.where(ok, a, np.minimum(mid + 1, b))
    x = b.astype(np.int32).view(np.float32)
    return x if np.array_equal(sem.codes(x), q) else None


# --- soundness checks on the runtime ---------------------------------------------------

def corner_points(sem: Semantics, qlo, qhi, x, eps, k: int, seed: int):
    """k random corners of each sample's integer box (with a random interior point
    every other one), as float inputs inside the ball that the runtime maps to them."""
    rng = np.random.default_rng(seed)
    lo32, hi32 = ball(x, eps)
    points = []
    for i in range(k):
        pick = rng.random(qlo.shape) < 0.5
        q = np.where(pick, qlo, qhi)
        if i % 2:
            q = qlo + np.floor(rng.random(qlo.shape) * (qhi - qlo + 1)).astype(np.int64)
        xf = preimage(sem, sem.unflat(q), lo32, hi32)
        if xf is None:
            raise AssertionError(f"{sem.name}: a code of the box has no float input in the ball")
        points.append(xf)
    return points


def attack_points(sem: Semantics, module, x, y, eps, cfg: "Config"):
    """The run's standard attack (deployq.robustness's preset cfg.strength: FGSM,
    APGD-CE, APGD-T at strength standard) from the target's mirror (BPDA) and from the
    float model (transfer); every point is kept, so a sample counts as attacked when
    any of them flips it on the runtime (robustness.py's per-sample worst case). The
    float model's points do not depend on the target: cached in cfg by eps."""
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(y).long()
    points = []
    if sem is not None and sem.mirror is not None:
        points += list(_white_box(sem.mirror, xt, yt, eps, cfg).values())
    key = ("float", eps, len(x))
    if key not in cfg.cache:
        cfg.cache[key] = list(_white_box(module, xt, yt, eps, cfg).values())
    return points + cfg.cache[key]


def _white_box(model, xt, yt, eps: float, cfg: "Config") -> dict:
    from . import robustness as R
    return R._white_box(model, xt, yt, eps, cfg.attack_config(eps))


def check_points(sem: Semantics, points, lo, hi, y):
    """Run each point on the runtime. Per sample: correct on all points; runtime
    outputs inside the box's bounds on all; and equal, on all, to the bounds of the
    point's own codes (a point's bounds are the arithmetic itself, so any wrong rule
    that matters shows here even when a wide box hides it)."""
    correct, inside, exact = (np.ones(len(y), bool) for _ in range(3))
    for p in points:
        out = sem.run(p)
        correct &= out.argmax(1) == y
        inside &= ((out >= lo) & (out <= hi)).all(1)
        exact &= (sem.point(sem.flat(sem.codes(p))) == out).all(1)
    return correct, inside & exact


# --- complete verification: branch and bound over the integer box ---------------------

@dataclass
class Verdict:
    status: str                    # certified, falsified, undecided
    seconds: float
    boxes: int = 0
    cpu_seconds: float = 0.0
    counterexample: np.ndarray | None = field(default=None, repr=False)   # float NCHW


def branch_and_bound(sem: Semantics, score, qlo, qhi, y: int, time_limit: float,
                     batch: int = 32, clock: Callable = time.monotonic
                     ) -> tuple[str, np.ndarray | None, int]:
    """Split the box until every part is certified, a point is misclassified, or time
    runs out. Terminates: the grid is finite and each split shrinks one dimension.
    score(centres, y) -> (n, D) influence of each input dimension (the widest
    influence, width * |gradient|, is split)."""
    start, stack, boxes = clock(), [(qlo, qhi)], 0
    while stack:
        if clock() - start > time_limit:
            return "undecided", None, boxes
        take, stack = stack[-batch:], stack[:-batch]
        lo, hi = np.stack([b[0] for b in take]), np.stack([b[1] for b in take])
        boxes += len(take)
        blo, bhi = sem.bounds(lo, hi)
        open_ = ~certified(blo, bhi, np.full(len(lo), y))
        if not open_.any():
            continue
        lo, hi = lo[open_], hi[open_]
        mid = (lo + hi) // 2
        out = sem.point(mid)
        bad = ~certified(out, out, np.full(len(mid), y))
        if bad.any():
            return "falsified", mid[np.argmax(bad)], boxes
        width = hi - lo
        s = width * (np.abs(score(mid, y)) + 1e-9)
        for i, d in enumerate(np.argmax(s, 1)):
            if width[i, d] == 0:
                continue                # a point whose centre is fine is certified
            cut = mid[i, d]
            left_hi, right_lo = hi[i].copy(), lo[i].copy()
            left_hi[d], right_lo[d] = cut, cut + 1
            stack += [(lo[i], left_hi), (right_lo, hi[i])]
    return "certified", None, boxes


def margin_gradient(sem: Semantics, module) -> Callable:
    """score(q, y): the float model's gradient of (best other logit - logit y) at the
    dequantized codes, in the semantics' layout."""
    def score(q: np.ndarray, y: int) -> np.ndarray:
        x = torch.from_numpy(sem.dequantize(sem.unflat(q))).requires_grad_(True)
        logits = module(x)
        other = logits.clone()
        other[:, y] = -torch.inf
        (other.max(1).values - logits[:, y]).sum().backward()
        return sem.flat(x.grad.numpy())
    return score


CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}


def decide(sem: Semantics, module, qlo, qhi, y: int, time_limit: float,
           clock: str = "wall", linear: bool = True, linear_share: float = 0.5):
    """The box of codes [qlo, qhi] (semantics layout): ('certified' | 'falsified' |
    'undecided', counterexample codes or None, branches). The activation branch and
    bound gets linear_share of the time limit (its only refutation is the corner of
    its linear bound, weak on a box that is almost all counterexamples); input
    splitting, which runs each part's centre, the rest."""
    from . import linbounds as LB
    tick = CLOCKS[clock]
    t0 = tick()
    status, q, boxes = "stuck", None, 0
    net = linear_net(sem) if linear else None
    if net is not None:
        try:
            status, q, boxes = LB.verify(net, sem.point, qlo, qhi, y,
                                         time_limit * linear_share, tick)
        except LB.NotLinear as e:
            log.info("linear bounds not applicable here (%s)", e)
    if status in ("stuck", "undecided"):
        left = time_limit - (tick() - t0)
        status, q, more = branch_and_bound(sem, margin_gradient(sem, module), qlo, qhi, y,
                                           left, clock=tick)
        boxes += more
    return status, q, boxes


def linear_net(sem: Semantics):
    """sem's model as a linbounds chain (built once), or None where it is not one."""
    from . import linbounds as LB
    if sem.linear is None:
        try:
            sem.linear = LB.build(sem)
        except LB.NotLinear as e:
            log.info("%s: no linear relaxation (%s); input splitting only", sem.name, e)
            sem.linear = False
    return sem.linear or None


def verify(sem: Semantics, module, x1, y1: int, eps: float, time_limit: float,
           clock: str = "wall", linear: bool = True) -> Verdict:
    """Complete verification of one sample (x1: (1, C, H, W)): branch and bound on
    activations with linear relaxation bounds (linbounds) where the model is a chain
    it handles; where that gets stuck (a branch with every activation settled that it
    can neither certify nor refute) or is not available, branch and bound over the
    input box with interval bounds for the time left (complete: the grid is finite).
    clock: 'wall' or 'cpu' (process time, for a loaded machine)."""
    w0, c0 = time.monotonic(), time.process_time()
    qlo, qhi = sem.box(x1, eps)
    status, q, boxes = decide(sem, module, qlo[0], qhi[0], int(y1), time_limit, clock, linear)
    verdict = Verdict(status, 0.0, boxes)
    if q is not None:
        lo32, hi32 = ball(x1, eps)
        xf = preimage(sem, sem.unflat(q[None]), lo32, hi32)
        confirmed = xf is not None and sem.run(xf).argmax(1)[0] != y1
        verdict.status = "falsified" if confirmed else "unconfirmed"
        verdict.counterexample = xf
    verdict.seconds = time.monotonic() - w0
    verdict.cpu_seconds = time.process_time() - c0
    return verdict


# --- the evaluation ---------------------------------------------------------------------

@dataclass
class Config:
    eps: list[float]
    complete: bool = False
    time_limit: float = 10.0
    attack_steps: int | None = None        # None: the strength preset's iterations
    corners: int = 4
    seed: int = 0
    strength: str = "standard"             # deployq.robustness.PRESETS
    clock: str = "wall"                    # the time limit's clock: wall or cpu (process)
    linear: bool = True                    # complete: linear-bound branch and bound first
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.attack_config(self.eps[0] if self.eps else 0.1)   # bad strength: InputError now

    def attack_config(self, eps: float):
        """The robustness preset's white-box settings (sources are this module's)."""
        from . import robustness as R
        return R.Config(eps=[eps], sources=["transfer"], steps=self.attack_steps,
                        strength=self.strength, seed=self.seed)

    def describe(self) -> str:
        """e.g. 'strength standard: FGSM, APGD-CE 100 iterations x 2 restart(s), ...'."""
        c = self.attack_config(self.eps[0] if self.eps else 0.1)
        white = c.describe().split("transfer: ", 1)[1].split(";")[0]
        return (f"strength {self.strength}: {white}; from the target's mirror and from "
                "the float model, worst case per sample on the runtime")


def float_entry(graph: G.Graph, module, x, y, cfg: Config) -> tuple[dict, dict]:
    """Float IBP certificates and the standard attack on the float model; also the
    masks by eps."""
    pred = _logits(module, x).argmax(1)
    rows, masks = [], {}
    for eps in cfg.eps:
        lo, hi = ball(x, eps)
        blo, bhi = ibp.float_bounds(graph, lo, hi)
        cert = certified(blo, bhi, y)
        attacked = pred == y
        for adv in attack_points(None, module, x, y, eps, cfg):
            attacked &= _logits(module, adv).argmax(1) == y
        masks[eps] = cert
        rows.append({"eps": eps, "certified": _mean(cert), "attacked": _mean(attacked),
                     "violations": int((cert & ~attacked).sum())})
    return {"target": "float", "semantics": "float IBP (real arithmetic)",
            "clean": _mean(pred == y), "eps": rows}, masks


def _logits(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(np.asarray(x, np.float32))).numpy()


def _mean(mask) -> float:
    return float(np.mean(mask)) if len(mask) else 0.0


def target_entry(sem: Semantics, module, x, y, cfg: Config, float_masks: dict) -> dict:
    clean = sem.run(x).argmax(1) == y
    rows = []
    for eps in cfg.eps:
        log.info("certifying %s at eps %.5f on %d samples", sem.name, eps, len(x))
        rows.append(_eps_row(sem, module, x, y, eps, cfg, clean, float_masks.get(eps)))
    return {"target": sem.name, "semantics": "integer IBP (exact arithmetic)",
            "clean": _mean(clean), "eps": rows}


def _eps_row(sem, module, x, y, eps, cfg: Config, clean, float_cert) -> dict:
    qlo, qhi = sem.box(x, eps)
    lo, hi = batched_bounds(sem.bounds, qlo, qhi)
    cert = certified(lo, hi, y)
    points = ([x] + attack_points(sem, module, x, y, eps, cfg)
              + corner_points(sem, qlo, qhi, x, eps, cfg.corners, cfg.seed))
    correct, inside = check_points(sem, points, lo, hi, y)
    attacked = clean & correct
    row = {"eps": eps, "certified": _mean(cert), "attacked": _mean(attacked),
           "trivial": int((qlo == qhi).all(1).sum()),
           # a certified sample that an attack point flips, or a runtime output
           # outside its bounds or unlike its point's: never expected (soundness)
           "violations": int((cert & ~attacked).sum() + (~inside).sum())}
    if float_cert is not None:
        row |= {"float_certified": int(float_cert.sum()), "certified_n": int(cert.sum()),
                "float_not_here": int((float_cert & ~cert).sum()),
                "here_not_float": int((cert & ~float_cert).sum())}
    if cfg.complete:
        row["complete"] = _complete(sem, module, x, y, eps, cfg, cert, attacked)
    return row


def _complete(sem, module, x, y, eps, cfg: Config, cert, attacked) -> dict:
    """IBP-certified and attack-falsified samples are decided; branch and bound takes
    the rest, each within the time limit."""
    counts = {"certified": int(cert.sum()), "falsified": int((~attacked).sum()),
              "undecided": 0, "unconfirmed": 0}
    seconds, cpu = [], []
    for i in np.flatnonzero(~cert & attacked):
        v = verify(sem, module, x[i:i + 1], int(y[i]), eps, cfg.time_limit, cfg.clock,
                   cfg.linear)
        counts[v.status] += 1
        seconds.append(v.seconds)
        cpu.append(v.cpu_seconds)
    decided = counts["certified"] + counts["falsified"]
    return counts | {"decided": decided / max(1, len(x)), "time_limit": cfg.time_limit,
                     "clock": cfg.clock, "searched": len(seconds),
                     "max_seconds": round(max(seconds, default=0.0), 2),
                     "max_cpu_seconds": round(max(cpu, default=0.0), 2),
                     "mean_cpu_seconds": round(float(np.mean(cpu)) if cpu else 0.0, 2)}


def evaluate(session, runners: dict, x: np.ndarray, y: np.ndarray, cfg: Config) -> dict:
    """runners: {name: (Exported, Runner)}. The float row, then one row per target."""
    module = session.model.module
    entry, masks = float_entry(session.graph, module, x, y, cfg)
    targets = [entry]
    for name, (exported, runner) in runners.items():
        sem = semantics(exported, session.graph, runner)
        targets.append(target_entry(sem, module, x, y, cfg, masks))
    return {"eps": cfg.eps, "samples": int(len(x)), "complete": cfg.complete,
            "time_limit": cfg.time_limit, "strength": cfg.strength,
            "attack_steps": cfg.attack_config(cfg.eps[0]).steps, "attack": cfg.describe(),
            "corners": cfg.corners, "targets": targets}
