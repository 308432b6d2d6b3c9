"""Hardening: quantization-aware training of the user's model for a target's plan, with
Defensive Quantization's Lipschitz penalty and/or PGD adversarial training.

What trains. The user's nn.Module's own parameters (conv/linear weight and bias,
BatchNorm's gamma and beta), so the result loads back into the same model with
`-w OUT/weights.safetensors`. The forward pass is the captured graph IR (what every
target runs): BatchNorm folded with its running statistics frozen (Jacob et al., CVPR
2018, late-training freeze), each folded conv/linear weight fake-quantized on the grid
the target's plan rules give it at this step (plan.weight_params: bits, per-channel,
pow2 or float scale, narrow range), every activation tensor fake-quantized on the
plan's grid with the target's rounding mode, straight-through (identity inside the
range, zero where it saturates: the clamp at the calibrated range is DQ's bounded
ReLU). The activation grids are calibrated once, on training samples, before the first
epoch (of each stage: train's `stages`), and stay fixed: the network learns to fit
them. (Re-calibrating every epoch failed: trained activations outgrow the clamp, a
fresh min-max range then widens the 4-bit grid until most values round to zero; on
Fashion-MNIST, validation accuracy fell to 11% after one epoch.) OUT/plan.json is that plan with the final
weights' grids, and the plan to deploy them with (`--plan OUT/plan.json`).
Biases stay float (their int32 grid is far finer than the weights').
Dropout is not applied (the graph is the inference graph).

Methods (METHODS: name -> loss of one batch; see LossFn):
  dq       cross-entropy + (beta/2) * sum_l ||W_l^T W_l - I||_F^2 over every folded
           conv (reshaped to (out, in*k*k)) and linear weight (Lin, Gan, Han, ICLR
           2019, Defensive Quantization). beta = 0 is plain QAT ("vanilla").
  pgd      cross-entropy on PGD examples (Madry et al., ICLR 2018) made against the
           fake-quantized network itself (straight-through: BPDA); no penalty.
  dq+pgd   both: PGD examples and the penalty (beta > 0 required).
Another method (e.g. QA-IBP certified training) plugs in by adding its LossFn to METHODS.

The penalty is computed on the smaller Gram matrix: ||W^T W - I||_F^2 = ||W W^T - I||_F^2
+ (n - m) for W of shape (m, n), m < n (the nonzero eigenvalues of W^T W and W W^T are
the same), so the two differ by a constant and have the same gradient, 2 beta W (W^T W
- I) for (beta/2)||.||^2; the small one costs m^2 n instead of n^2 m.

Data: a validation split (val_fraction of the training split, seeded) is carved off and
never trained on; the test split is never touched. Seeded throughout: the batch order of
epoch e and the PGD start of each step derive from (seed, e, step), so a run resumed
from its checkpoint (OUT/checkpoint.pt, written after every epoch, read with
torch.load(weights_only=True)) ends with the same weights as an uninterrupted one.
Outputs: OUT/weights.safetensors (the module's state_dict), OUT/plan.json (the target's
plan calibrated for those weights), OUT/harden.json (settings, curves, timings)."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import attacks, calibrate, graph as G, plan as P
from . import targets as T
from .errors import InputError
from .io import atomic_write

log = logging.getLogger("deployq")
FORMAT, VERSION = "deployq-harden", 1
QAIBP = "qa-ibp"          # certified training: deployq.qaibp, run by api.harden
CHECKPOINT, WEIGHTS, REPORT, PLAN = "checkpoint.pt", "weights.safetensors", "harden.json", "plan.json"


@dataclass
class Config:
    method: str = "dq"
    epochs: int = 3
    beta: float = 3e-4
    eps: float = 0.03              # PGD training / validation radius, L-inf, input units
    steps: int = 7                 # PGD steps in training
    lr: float = 1e-3               # Adam, cosine-annealed over the epochs
    batch: int = 64
    val_fraction: float = 0.1
    val_samples: int = 500         # validation samples attacked for robust accuracy
    val_steps: int = 10
    seed: int = 0
    calib_samples: int = 512

    def check(self) -> None:
        """Every bad value as one InputError, before any slow work."""
        if self.method not in METHODS:
            raise InputError(f"--method {self.method!r} is unknown; choose one of "
                             f"{', '.join([*METHODS, QAIBP])}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta)
                and self.beta >= 0):
            raise InputError(f"--beta must be a number >= 0, got {self.beta}")
        if self.method == "dq+pgd" and self.beta == 0:
            raise InputError("--method dq+pgd needs --beta > 0 (beta 0 is --method pgd)")
        if self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}")
        if not 0 <= self.eps <= 1 or (self.eps == 0 and "pgd" in self.method):
            raise InputError(f"--eps must be in (0, 1] for PGD training and in [0, 1] "
                             f"otherwise, got {self.eps}")
        if self.steps < 1 or self.val_steps < 1 or self.batch < 1 or self.val_samples < 1:
            raise InputError("--steps, --batch and --val-samples must be at least 1")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")


# --- the penalty --------------------------------------------------------------------

def orthogonality(w: torch.Tensor) -> torch.Tensor:
    """||W^T W - I||_F^2 minus the constant max(0, n - m) (module docstring), W = w
    reshaped to (out, in*k*k) = (m, n); differentiable."""
    w = w.reshape(len(w), -1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return ((gram - torch.eye(len(gram), dtype=w.dtype)) ** 2).sum()


def penalty(weights: list[torch.Tensor], beta: float) -> torch.Tensor:
    """(beta/2) * sum over layers of ||W^T W - I||_F^2 (up to a constant)."""
    return beta / 2 * sum(orthogonality(w) for w in weights)


# --- fake quantization -----------------------------------------------------------

ROUND = {"half_even": torch.round, "rnd_conv": torch.round,
         "half_away": lambda t: torch.sign(t) * torch.floor(t.abs() + 0.5),
         "trn": torch.floor, "rnd": lambda t: torch.floor(t + 0.5)}


def fake_quant(t: torch.Tensor, qp: P.QParams, rounding: str = "half_even") -> torch.Tensor:
    """t on qp's grid (a low-bit grid inside an int8 container included), rounded by
    the target's rule; straight-through inside the range, zero gradient outside."""
    scale, zp, qmin, qmax = qp.scale.astype(np.float32), qp.zero_point, qp.qmin, qp.qmax
    if qp.grid_bits is not None:             # every step-th int8 code: a g-bit grid
        scale, qmax = scale * qp.step, 2 ** (qp.grid_bits - 1) - 1
        qmin = -qmax
    shape = [-1 if d == qp.axis else 1 for d in range(t.ndim)] if qp.axis is not None else []
    s = torch.from_numpy(scale).reshape(shape)
    z = torch.from_numpy(zp.astype(np.float32)).reshape(shape)
    q = torch.clamp(ROUND[rounding](t.detach() / s) + z, qmin, qmax)
    inside = ((t >= (qmin - z) * s) & (t <= (qmax - z) * s)).to(t.dtype)
    return ((q - z) * s).detach() + (t - t.detach()) * inside


# --- the trainable quantized network ----------------------------------------------

@dataclass
class _Layer:
    """A weighted IR node and the module parameters its folded weights come from."""
    module: nn.Module
    bn: nn.Module | None


def _fold(layer: _Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight and bias with its BatchNorm folded in (running statistics,
    as graph._fold_batchnorm), differentiable in the module's parameters."""
    w, b = layer.module.weight, layer.module.bias
    b = torch.zeros(len(w)) if b is None else b
    bn = layer.bn
    if bn is None:
        return w, b
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return w * s.reshape((-1,) + (1,) * (w.ndim - 1)), (b - bn.running_mean) * s + bn.bias


class QatNet:
    """The graph IR driven by the module's parameters, fake-quantized for `target`.
    Call on float (N, C, H, W) in [0, 1] -> logits (differentiable in x and in the
    module's parameters). `calibrate(x)` makes the plan (activation grids) from the
    current weights; `deploy_plan()` is that plan with the current weights' grids."""

    def __init__(self, module: nn.Module, graph: G.Graph, target: T.Target,
                 config: P.PlanConfig | None = None):
        self.module, self.graph, self.target = module.eval(), graph, target
        self.config = config or P.PlanConfig()
        self.layers = _match_layers(module, graph)
        self.plan: P.QuantPlan | None = None

    def folded(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _fold(self.layers[name])

    def weights(self) -> list[torch.Tensor]:
        """Every folded conv/linear weight (what DQ's penalty constrains)."""
        return [self.folded(n)[0] for n in self.layers]

    def float_graph(self) -> G.Graph:
        """The graph with the current folded weights (numpy), e.g. for calibration."""
        nodes = []
        for n in self.graph.nodes:
            if n.name in self.layers:
                w, b = (t.detach().numpy().astype(np.float32) for t in self.folded(n.name))
                n = G.Node(n.name, n.op, n.inputs, n.shape, n.attrs, w, b)
            nodes.append(n)
        return G.Graph(self.graph.input_shape, nodes)

    def calibrate(self, x: np.ndarray) -> P.QuantPlan:
        g = self.float_graph()
        self.plan = P.make(g, calibrate.collect(g, x), self.target, self.config)
        return self.plan

    def deploy_plan(self) -> P.QuantPlan:
        """The training plan with each layer's weight grid made from its current weights."""
        layers = dict(self.plan.layers)
        for name in self.layers:
            lp = layers[name]
            w = self.folded(name)[0].detach().numpy()
            layers[name] = P.LayerPlan(lp.op, lp.settings, lp.output, P.weight_params(
                w, lp.settings, self.target.container_bits))
        return P.QuantPlan(self.plan.target, self.plan.input, layers, self.plan.config,
                           self.plan.provenance)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        values = {G.INPUT: fake_quant(x, plan.input, _rounding(plan, G.INPUT))}
        for n in self.graph.nodes:
            if n.name in self.layers:
                w, b = self.folded(n.name)
                settings = plan.layers[n.name].settings
                qp = P.weight_params(w.detach().numpy(), settings, self.target.container_bits)
                y = _weighted(n, values[n.inputs[0]], fake_quant(w, qp), b)
            else:
                y = G.FLOAT_OPS[n.op](n, [values[i] for i in n.inputs])
            values[n.name] = fake_quant(y, plan.tensor(n.name), _rounding(plan, n.name))
        return values[self.graph.output]


def _rounding(plan: P.QuantPlan, name: str) -> str:
    layer = plan.layers.get(name) or next(iter(plan.layers.values()))
    rounding = layer.settings.get("rounding", "half_even")
    return rounding if rounding in ROUND else "half_even"


def _weighted(n: G.Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    y = G.weighted(n, x, w, b)
    act = n.attrs.get("act")
    return y if act is None else torch.clamp(y, act[0], act[1])


def _match_layers(module: nn.Module, graph: G.Graph) -> dict[str, _Layer]:
    """Each weighted IR node's module (named by its path) and the BatchNorm that
    follows it in module order, checked against the capture's own folded weights."""
    mods = dict(module.named_modules())
    order = [name for name, m in mods.items() if not list(m.children())]
    layers = {}
    for n in (n for n in graph.nodes if n.op in G.WEIGHTED):
        m = mods.get(n.name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise InputError(f"harden: layer '{n.name}' is not an nn.Conv2d/nn.Linear "
                             "module; harden trains models built from torch.nn layers")
        i = order.index(n.name)
        nxt = mods[order[i + 1]] if i + 1 < len(order) else None
        bn = nxt if isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)) else None
        layers[n.name] = _Layer(m, bn)
        with torch.no_grad():
            w, b = (t.numpy() for t in _fold(layers[n.name]))
        if not (np.allclose(w, n.weight, rtol=1e-4, atol=1e-6)
                and np.allclose(b, n.bias, rtol=1e-4, atol=1e-5)):
            raise InputError(f"harden: layer '{n.name}''s folded weights do not match its "
                             "module's; harden needs each BatchNorm right after its "
                             "conv/linear in module order")
    return layers


# --- methods: the loss of one batch -------------------------------------------------

LossFn = Callable[[QatNet, torch.Tensor, torch.Tensor, Config, int], torch.Tensor]
"""loss(net, x, y, config, step) -> scalar to minimise; `step` seeds any randomness."""


def _pgd_examples(net: QatNet, x, y, cfg: Config, step: int) -> torch.Tensor:
    return attacks.pgd(net, x, y, cfg.eps, cfg.steps, seed=cfg.seed * 1_000_003 + step)


def loss_dq(net: QatNet, x, y, cfg: Config, step: int) -> torch.Tensor:
    loss = F.cross_entropy(net(x), y)
    return loss + penalty(net.weights(), cfg.beta) if cfg.beta else loss


def loss_pgd(net: QatNet, x, y, cfg: Config, step: int) -> torch.Tensor:
    return F.cross_entropy(net(_pgd_examples(net, x, y, cfg, step)), y)


def loss_dq_pgd(net: QatNet, x, y, cfg: Config, step: int) -> torch.Tensor:
    return loss_dq(net, _pgd_examples(net, x, y, cfg, step), y, cfg, step)


METHODS: dict[str, LossFn] = {"dq": loss_dq, "pgd": loss_pgd, "dq+pgd": loss_dq_pgd}


# --- training ------------------------------------------------------------------------

@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> Split:
    """A seeded validation split carved from the training data."""
    idx = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * fraction)))
    if n_val >= len(x):
        raise InputError(f"{len(x)} training samples leave none to train on after "
                         f"--val-fraction {fraction}")
    val, train = np.sort(idx[:n_val]), np.sort(idx[n_val:])
    return Split(x[train], y[train], x[val], y[val])


def accuracy(net: QatNet, x: np.ndarray, y: np.ndarray, cfg: Config,
             eps: float = 0.0, batch: int = 500) -> float:
    """Top-1 accuracy of the fake-quantized network, under PGD (val_steps) when eps>0."""
    correct = 0
    for i in range(0, len(x), batch):
        xb, yb = torch.from_numpy(x[i:i + batch]), torch.from_numpy(y[i:i + batch])
        if eps > 0:
            xb = attacks.pgd(net, xb, yb, eps, cfg.val_steps, seed=cfg.seed + i)
        with torch.no_grad():
            correct += int((net(xb).argmax(1) == yb).sum())
    return correct / len(x)


@dataclass
class State:
    """Everything a checkpoint restores."""
    epoch: int = 0                           # epochs done in the current stage
    curves: list = field(default_factory=list)   # the current stage's
    plan: P.QuantPlan | None = None          # the training plan (activation grids)
    stage: int = 0                           # the current stage, from 0
    done: list = field(default_factory=list)     # finished stages: {curves, plan}
    optimizer: dict | None = None            # a resumed stage's optimizer and scheduler
    scheduler: dict | None = None


def check_stages(stages) -> None:
    if not isinstance(stages, int) or stages < 1:
        raise InputError(f"--stages must be an integer of at least 1, got {stages}")


def train(module: nn.Module, graph: G.Graph, target: T.Target, x: np.ndarray,
          y: np.ndarray, cfg: Config, out: Path, on_epoch=None,
          plan_config: P.PlanConfig | None = None, stages: int = 1) -> dict:
    """Harden `module` in place for `target` on training data (x, y); checkpoints in
    `out` after every epoch and resumes from one written by the same settings.
    `on_epoch(state)` is called after each checkpoint (progress, tests). Returns the
    harden.json contents.

    stages: cfg.epochs epochs in each of `stages` stages. Each stage is what a separate
    run from the previous stage's weights would do (`harden -w OUT/weights.safetensors`,
    same settings): activation grids calibrated afresh for the current weights (the
    penalty shrinks activations under fixed grids), a new optimizer and cosine schedule,
    the seeds of epoch e and step b restarting with the stage. stages=1 is one run."""
    cfg.check()
    check_stages(stages)
    out = Path(out)
    data = split(x, y, cfg.val_fraction, cfg.seed)
    calib = data.x_train[np.sort(np.random.default_rng(cfg.seed).permutation(
        len(data.x_train))[:cfg.calib_samples])]
    net = QatNet(module, graph, target, plan_config)
    ident = _identity(cfg, target.name, net.config, module, stages)
    state = _resume(out, module, ident)
    while True:
        _stage(net, calib, data, cfg, out, ident, state, stages, on_epoch)
        if state.stage + 1 >= stages:
            return _finish(out, net, ident, state, data)
        state.done = state.done + [{"curves": state.curves,
                                    "plan": net.deploy_plan().to_json()}]
        state.stage, state.epoch, state.curves, state.plan = state.stage + 1, 0, [], None


def _stage(net: QatNet, calib: np.ndarray, data: Split, cfg: Config, out: Path,
           ident: dict, state: State, stages: int, on_epoch) -> None:
    """The epochs of state.stage left to do: grids calibrated for the current weights
    (or the resumed stage's), a fresh Adam and cosine schedule (or the resumed ones)."""
    params = [p for p in net.module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    if state.optimizer is not None:
        opt.load_state_dict(state.optimizer)
        sched.load_state_dict(state.scheduler)
        state.optimizer = state.scheduler = None
    net.plan = state.plan or net.calibrate(calib)
    state.plan = net.plan
    loss_fn = METHODS[cfg.method]
    batches = math.ceil(len(data.x_train) / cfg.batch)
    where = f"stage {state.stage + 1}/{stages}, " if stages > 1 else ""
    for epoch in range(state.epoch, cfg.epochs):
        row = _epoch(net, loss_fn, opt, data, cfg, epoch, batches)
        if stages > 1:
            row = {"stage": state.stage + 1} | row
        sched.step()
        state.epoch, state.curves = epoch + 1, state.curves + [row]
        log.info("%sepoch %d/%d: loss %.4f, validation clean %.2f%%, robust %s "
                 "(PGD-%d, eps %g), %.0f s", where, epoch + 1, cfg.epochs, row["loss"],
                 100 * row["val_clean"], _percent(row["val_robust"]), cfg.val_steps,
                 cfg.eps, row["seconds"])
        _checkpoint(out, net.module, opt, sched, ident, state)
        if on_epoch is not None:
            on_epoch(state)


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _epoch(net: QatNet, loss_fn, opt, data: Split, cfg: Config, epoch: int,
           batches: int) -> dict:
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    order = torch.randperm(len(data.x_train), generator=gen)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    total, seen = 0.0, 0
    for b, idx in enumerate(order.split(cfg.batch)):
        loss = loss_fn(net, x[idx], y[idx], cfg, epoch * batches + b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, seen = total + loss.item() * len(idx), seen + len(idx)
        if (b + 1) % 200 == 0:
            log.info("epoch %d: batch %d/%d, loss %.4f", epoch + 1, b + 1, batches,
                     total / seen)
    train_seconds = time.perf_counter() - t0
    n = cfg.val_samples
    return {"epoch": epoch + 1, "loss": total / seen, "seconds": train_seconds,
            "val_clean": accuracy(net, data.x_val, data.y_val, cfg),
            "val_robust": accuracy(net, data.x_val[:n], data.y_val[:n], cfg, cfg.eps)
            if cfg.eps > 0 else None,
            "penalty": float(penalty(net.weights(), 1.0).detach() * 2)}


# --- checkpoints and outputs -------------------------------------------------------

def _identity(cfg: Config, target: str, plan_config: P.PlanConfig, module,
              stages: int = 1) -> dict:
    """What a checkpoint must match to be resumed: the settings, the plan settings and
    the starting weights (sha256); the number of stages when more than one (so a
    one-stage run's checkpoint and harden.json are as before stages existed)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + t.detach().contiguous().numpy().tobytes())
    return {"format": FORMAT, "version": VERSION, "target": target, "config": asdict(cfg),
            "plan_config": plan_config.to_json(), "start_weights": h.hexdigest()[:16],
            **({"stages": stages} if stages > 1 else {})}


def _checkpoint(out: Path, module, opt, sched, ident: dict, state: State) -> None:
    import io
    buf = io.BytesIO()
    torch.save({"identity": json.dumps(ident), "module": module.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": state.epoch, "curves": json.dumps(state.curves),
                "plan": json.dumps(state.plan.to_json()), "stage": state.stage,
                "done": json.dumps(state.done)}, buf)
    atomic_write(out / CHECKPOINT, buf.getvalue())


def _resume(out: Path, module, ident: dict) -> State:
    """The state of OUT/checkpoint.pt when it was written by the same settings (the
    module's weights loaded; the optimizer's and scheduler's kept for _stage)."""
    path = out / CHECKPOINT
    if not path.is_file():
        return State()
    try:
        ck = torch.load(path, weights_only=True)
        identity = json.loads(ck["identity"])
    except Exception as e:          # a truncated or foreign file: say which, never unpickle
        raise InputError(f"cannot read checkpoint {path} ({type(e).__name__}); delete it "
                         "to start over") from None
    if identity != ident:
        differ = sorted(k for k in ident.keys() | identity.keys()
                        if identity.get(k) != ident.get(k))
        raise InputError(f"{path} was written by other settings (different {', '.join(differ)}"
                         "); use another --out, or delete it to start over")
    module.load_state_dict(ck["module"])
    stage = int(ck.get("stage", 0))
    where = f"stage {stage + 1}, " if ident.get("stages", 1) > 1 else ""
    log.info("resuming from %s after %sepoch %d", path, where, ck["epoch"])
    return State(int(ck["epoch"]), json.loads(ck["curves"]),
                 P.QuantPlan.from_json(json.loads(ck["plan"])), stage,
                 json.loads(ck.get("done", "[]")), ck["optimizer"], ck["scheduler"])


def _finish(out: Path, net: QatNet, ident: dict, state: State, data: Split) -> dict:
    from safetensors.torch import save
    state_dict = {k: v.detach().contiguous() for k, v in net.module.state_dict().items()}
    plan = net.deploy_plan()
    curves = [r for d in state.done for r in d["curves"]] + state.curves
    report = ident | {
        "curves": curves,
        "train_samples": int(len(data.x_train)), "val_samples": int(len(data.x_val)),
        "final": curves[-1] if curves else None,
        "epoch_seconds": float(np.mean([r["seconds"] for r in curves]))}
    if state.done:          # per stage: its curves and its plan (the grids it trained on)
        report["per_stage"] = state.done + [{"curves": state.curves, "plan": plan.to_json()}]
    atomic_write(out / WEIGHTS, save(state_dict))
    plan.save(out / PLAN)
    atomic_write(out / REPORT, json.dumps(report, indent=1).encode())
    return report
