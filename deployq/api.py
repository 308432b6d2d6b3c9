"""The Python API; the CLI is a thin layer over these same verbs.

    import deployq
    deployq.export("onnx-int8")                        # built-in model and data
    deployq.evaluate(["onnx-int8"], model="zoo:dsnet-digits")
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backends, calibrate, data as D, defaults, graph as G, models, plan as P, report
from . import progress as PG
from . import targets as T
from .defaults import ROBUST_KEYS, RUN_DEFAULTS
from .errors import DeployqError, InputError, TargetError
from . import validate
from .io import StagedDir, atomic_write, out_lock, write_manifest
from .results import EvalResult, RunResult, Selection
from .targets import plan_settings, targets_or_fail  # noqa: F401 (callers use api.*)

log = logging.getLogger("deployq")
DEFAULT_OUT = Path(defaults.OUT)
CALIB_SAMPLES = defaults.CALIB_SAMPLES


@dataclass
class Session:
    """A model, its dataset and its captured graph, with calibration statistics
    collected once and shared by every target."""
    model: models.Model
    dataset: D.Dataset
    data_spec: str
    graph: G.Graph
    seed: int = 0
    calib_samples: int = CALIB_SAMPLES
    _stats: dict | None = None

    @property
    def stats(self) -> dict:
        if self._stats is None:
            x = self.dataset.calibration(self.calib_samples, self.seed)
            log.info("calibrating on %d %s training samples", len(x), self.dataset.name)
            self._stats = calibrate.collect(self.graph, x)
        return self._stats


def open_session(model=models.DEFAULT_MODEL, weights: str | None = None,
                 data=None, seed: int = 0,
                 calib_samples: int = CALIB_SAMPLES) -> Session:
    """The model and its data, ready for every verb. model: 'zoo:NAME',
    'file.py:factory', a .pt2 path, or an nn.Module / torch.export.ExportedProgram
    object. data: a spec (digits, fashion-mnist[:DIR], an IDX folder, an .npz), arrays
    (x, y) or (x, y, x_test, y_test) or a dict with those keys (x in [0, 1],
    (N, C, H, W); without a test split one is drawn, shuffled and stratified), or a
    data.Dataset. A model that is not from the zoo needs its data named."""
    if calib_samples < 1:
        raise InputError(f"calibration needs at least 1 sample, got {calib_samples}")
    validate.seed(seed)
    if isinstance(model, str):
        validate.register_inputs(model, weights, data if isinstance(data, str) else None)
    m = models.load(model, weights)
    spec = data if data is not None else m.default_data
    if spec is None:
        raise InputError(f"{m.spec} is not a zoo model, so deployq cannot know its data: "
                         "give --data (an .npz with x and y, fashion-mnist, an IDX "
                         "folder), or --data digits for the built-in 8x8 digits")
    ds = D.load(spec, seed) if isinstance(spec, str) else D.from_arrays(spec, seed)
    spec = spec if isinstance(spec, str) else ds.name
    m = models.checked_head(m, ds.x_test[:m.static_batch or 2])
    D.check_labels(ds, m.num_classes, spec)
    graph = G.capture(m.module, ds.input_shape, m.program)
    # logged once every check passed: a refusal stays the only line
    PG.stage(f"loaded {m.spec} and {spec} ({len(ds.x_train)} training, "
             f"{len(ds.x_test)} test samples)"
             + (f"; {ds.note}" if ds.note else ""), defer=True)
    return Session(m, ds, spec, graph, seed, calib_samples)


@dataclass
class Exported:
    target: T.Target
    path: Path          # the artifact
    plan: P.QuantPlan


def export(target: str, session: Session | None = None, out: str | Path = DEFAULT_OUT,
           calibration: str | None = None, targets_dir=None, plan: P.QuantPlan | None = None,
           plan_path: str | Path | None = None, settings: dict | None = None,
           **session_args) -> Exported:
    """Write OUT/TARGET/{artifact, plan.json} and return where they are. With `plan`
    (e.g. from `select`, or read from plan_path), export that plan as it is instead of
    calibrating a new one; it must be for this target and name the graph's layers.
    `settings` (e.g. {"weight_bits": 4}) are model-wide plan settings (PlanConfig
    default), checked against the target; a given plan keeps its own."""
    session = session or open_session(**session_args)
    tgt = T.get(target, targets_dir)
    if plan is None and plan_path is not None:
        plan = P.QuantPlan.load(plan_path)
    if plan is None:
        config = P.PlanConfig(default=({"calibration": calibration} if calibration else {})
                              | plan_settings(tgt, settings))
        plan = P.make(session.graph, session.stats, tgt, config, provenance(session))
    else:
        check_plan(plan, session.graph, tgt, plan_path or "the plan")
    backend = backends.get(tgt.backend)
    final = Path(out) / tgt.name
    calib = session.dataset.calibration(session.calib_samples, session.seed)
    protected = tuple(session.model.files) + ((Path(plan_path),) if plan_path else ())
    from .runtime import ModelRejected
    try:
        with StagedDir(final, protected, results=True) as tmp:
            artifact, plan = backend.export(session.graph, plan, tgt, tmp, calib)
            plan.save(tmp / "plan.json")
    except ModelRejected as e:          # name the plan, not the deleted staging folder
        raise InputError(f"{tgt.name}: the C runtime refused the model made from "
                         f"{plan_path or 'the calibrated plan'} ({e.status}: "
                         f"{REJECTED.get(e.status, 'see runtime/dq_runtime.h')}); fix "
                         "that plan value or make the plan with deployq") from None
    log.info("exported %s to %s", tgt.name, final)
    return Exported(tgt, final / artifact.name, plan)


# what each loader status of the C runtime says about the plan (runtime/dq_runtime.h)
REJECTED = {"DQ_ERR_PARAM": "a scale, zero point, multiplier or shift is outside the "
                            "runtime's range",
            "DQ_ERR_LIMITS": "more tensors, ops or bytes than the runtime allows",
            "DQ_ERR_SHAPE": "a layer's shapes do not fit together",
            "DQ_ERR_OP": "an op the runtime does not have",
            "DQ_ERR_TENSOR": "a tensor's type or size is invalid"}


def plan_config(tgt: T.Target, settings: dict | None, output: str | None = None,
                hidden_only: bool = False) -> P.PlanConfig:
    """The one helper for model-wide plan settings ({"weight_bits": 4, ...}; None
    values dropped), each checked against the target before any work, as the
    PlanConfig's default. hidden_only (harden's DQ): the input and the logits (layer
    `output`) keep the target's default activation bits: DQ quantizes the hidden
    activations, not the image, and 4-bit logits tie on argmax."""
    keep = {"activation_bits": tgt.defaults["activation_bits"]}
    return P.PlanConfig(default=plan_settings(tgt, settings),
                        by_type={"input": keep} if hidden_only else {},
                        by_name={output: keep} if hidden_only and output else {})


def provenance(session: Session) -> dict:
    return {"model": session.model.spec, "model_sha256": session.model.fingerprint(),
            "data": session.data_spec, "seed": session.seed,
            "calibration_samples": session.calib_samples}


def check_plan(plan: P.QuantPlan, graph: G.Graph, tgt: T.Target, where) -> None:
    """A given plan fits this graph and target: same target, the same layers (names
    and ops), weight parameters with one scale per output channel or one in all, and
    every setting allowed by the target."""
    if plan.target != tgt.name:
        raise InputError(f"{where} is for target {plan.target}, not {tgt.name}; "
                         f"export it with -t {plan.target} or select for {tgt.name}")
    names, have = [n.name for n in graph.nodes], list(plan.layers)
    if sorted(names) != sorted(have):
        missing, extra = sorted(set(names) - set(have)), sorted(set(have) - set(names))
        raise InputError(f"{where} does not match the model's layers (missing "
                         f"{missing or 'none'}, unknown {extra or 'none'}); make the plan "
                         "from this model")
    for n in graph.nodes:
        layer = plan.layers[n.name]
        bad_weight = n.op in G.WEIGHTED and (layer.weight is None or len(
            layer.weight.scale) not in (1, len(n.weight)))
        if layer.op != n.op or bad_weight:
            raise InputError(f"{where}: layer '{n.name}' is a {layer.op} with "
                             f"{'no' if layer.weight is None else len(layer.weight.scale)} "
                             f"weight scales, the model's is a {n.op}; make the plan "
                             "from this model")
        for key in T.SETTINGS:
            if key in layer.settings:
                tgt.check(key, layer.settings[key], f"{where}, layer '{n.name}'")
        _check_bits(layer, tgt, f"{where}, layer '{n.name}'")
    tgt.check("activation_bits", plan.input.bits, f"{where}, input")


def _check_bits(layer: P.LayerPlan, tgt: T.Target, where: str) -> None:
    """The widths a layer's parameters carry are the ones its settings name and the
    target executes (a hand-edited 'bits' would otherwise be exported as is)."""
    s = layer.settings
    tgt.check("activation_bits", layer.output.bits, f"{where} output")
    if "activation_bits" in s and layer.output.bits != s["activation_bits"]:
        raise InputError(f"{where}: output bits {layer.output.bits} differ from its "
                         f"activation_bits setting {s['activation_bits']}; make the plan "
                         "with deployq")
    w = layer.weight
    if w is None:
        return
    effective = w.grid_bits or w.bits
    tgt.check("weight_bits", effective, f"{where} weight")
    if "weight_bits" in s and effective != s["weight_bits"]:
        raise InputError(f"{where}: weight bits {effective} differ from its weight_bits "
                         f"setting {s['weight_bits']}; make the plan with deployq")
    container = tgt.container_bits
    if container is not None and w.bits != container:
        raise InputError(f"{where}: weights stored in {w.bits} bits but {tgt.name} executes "
                         f"{container}-bit weights; make the plan with deployq")


def select(target: str, budget: str, method: str = "adversarial", eps: float = 0.1,
           session: Session | None = None, out: str | Path = DEFAULT_OUT,
           calibration: str | None = None, rounding: str | None = None,
           targets_dir=None, min_bits: int | None = None,
           clips: tuple[float, ...] | None = None, activation_budget: str | None = None,
           refine: int = 0, progress=None, max_clean_drop: float | None = None,
           **session_args) -> Selection:
    """Choose per-layer weight bits (and clipping) for TARGET under BUDGET
    (deployq.selection) and write the plan to OUT/TARGET/plan.json; returns (path, plan)
    as a Selection. min_bits, clips: the candidates (default selection.MIN_BITS,
    selection.CLIPS); activation_budget: also choose activation bits (targets allowing
    several); refine = K > 0: measure the DP's K best on a validation split and refine;
    max_clean_drop (points, with refine): exclude plans whose validation clean accuracy
    is more than that below the uniform plan's. progress: a callable given every deployq.progress.Progress event."""
    with PG.reporting(progress), PG.stages(2 + (session is None)):
        return _select(target, budget, method, eps, session, out, calibration, rounding,
                       targets_dir, min_bits, clips, activation_budget, refine,
                       max_clean_drop, **session_args)


def _select(target, budget, method, eps, session, out, calibration, rounding, targets_dir,
            min_bits, clips, activation_budget, refine, max_clean_drop=None,
            **session_args) -> Selection:
    from . import selection as S
    tgt = T.get(target, targets_dir)
    budget = S.parse_budget(budget)             # bad input fails before slow work
    S.check_refine(refine, max_clean_drop)
    if method not in S.METHODS:
        raise InputError(f"--method {method!r} is unknown; choose one of {', '.join(S.METHODS)}")
    session = session or open_session(**session_args)
    settings = {k: v for k, v in (("calibration", calibration), ("rounding", rounding)) if v}
    S.check_unsigned(session.graph, tgt, settings, activation_budget)   # before calibrating
    PG.stage("calibrating")
    session.stats                               # noqa: B018 - the slow part, staged
    PG.stage(f"choosing bits for {tgt.name} by {method}")
    plan = S.select(session, tgt, budget, method, eps, settings, provenance=provenance(session),
                    min_bits=S.MIN_BITS if min_bits is None else min_bits,
                    clips=S.CLIPS if clips is None else clips,
                    activation_budget=activation_budget, refine=refine,
                    max_clean_drop=max_clean_drop)
    path = Path(out) / tgt.name / "plan.json"
    if any(_same(path, f) for f in session.model.files):
        raise InputError(f"{path} is an input; choose another --out")
    plan.save(path)
    return Selection(path, plan)


def _same(a: Path, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def load_runner(exported: Exported, threads: int = 1) -> backends.Runner:
    return backends.get(exported.target.backend).load(exported.path, exported.target, threads)


def evaluate(targets: list[str], session: Session | None = None,
             out: str | Path = DEFAULT_OUT, samples: int | None = None,
             calibration: str | None = None, targets_dir=None, robust=None,
             plans: dict[str, str | Path] | None = None, settings: dict | None = None,
             progress=None, **session_args) -> EvalResult:
    """Export each target (with its plan.json from `plans`, {target: path}, when given,
    e.g. from `select`), then score the float and integer models on the test split.
    Between integer targets whose outputs share quantization parameters, also count
    bit-identical int8 outputs and the largest difference in LSBs. With `robust` (a
    robustness.Config), also attack float and every target on the first
    robust.samples of those test samples (results under 'robustness'). `settings`:
    model-wide plan settings for every target without a plan (see export).
    progress: a callable given every deployq.progress.Progress event."""
    with PG.reporting(progress), PG.stages(eval_stages(targets, robust, session is None)):
        return EvalResult(_checked_evaluate(targets, session, out, samples, calibration,
                                            targets_dir, robust, plans, settings,
                                            **session_args))


def eval_stages(targets: list[str], robust, load: bool = True) -> int:
    """How many stages evaluate reports: loading, one per target (export and score),
    and with robust one attack stage per target and float."""
    return int(load) + len(targets) + (len(targets) + 1 if robust is not None else 0)


def _checked_evaluate(targets, session, out, samples, calibration, targets_dir, robust,
                      plans, settings, **session_args) -> dict:
    for tgt in targets_or_fail(targets, targets_dir):
        if tgt.name not in (plans or {}):
            plan_settings(tgt, settings)            # bad bits fail before slow work
    validate.out_dir(out, targets)
    session = session or open_session(**session_args)
    if samples is not None and samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    validate.samples(samples, len(session.dataset.x_test))
    with out_lock(out):
        return _evaluate(targets, session, out, samples, calibration, targets_dir, robust,
                         plans, settings)


def _evaluate(targets, session, out, samples, calibration, targets_dir, robust, plans,
              settings):
    x, y = session.dataset.test(samples)
    float_pred = session.model.logits(x).argmax(1)
    rows = [{"target": "float"} | _scored(float_pred, y) | {"agreement": 1.0}]
    outputs, runners, failed = {}, {}, []
    for name in targets:
        PG.stage(f"exporting and scoring {name}")
        try:       # one target's failure is reported in 'failed'; the others go on
            exported, runner, logits = _run_target(name, session, out, calibration,
                                                   targets_dir, plans, settings, x)
        except DeployqError as e:
            log.warning("target %s failed, going on with the others: %s", name, e)
            failed.append({"target": name, "error": str(e)})
            continue
        runners[name] = (exported, runner)
        pred = logits.argmax(1)
        outputs[name] = (exported.plan.tensor(session.graph.output), logits,
                         _weight_grid(exported.plan))
        rows.append({"target": name} | _scored(pred, y) | {
                     "agreement": float((pred == float_pred).mean()),
                     "artifact": str(exported.path)}
                    | ({"plan": str(plans[name])} if name in (plans or {}) else {}))
    result = {"model": session.model.spec, "data": session.data_spec,
              "samples": int(len(x)), "seed": session.seed, "results": rows,
              "pairs": _pairs(outputs)} | ({"failed": failed} if failed else {})
    if robust is not None:
        result["robustness"] = robustness(session, runners, x, y, robust)
    return result


def _run_target(name, session, out, calibration, targets_dir, plans, settings, x):
    """Export one target, load its runner and run it on x: (Exported, runner, logits)."""
    exported = export(name, session, out, calibration, targets_dir,
                      plan_path=(plans or {}).get(name), settings=settings)
    log.info("scoring %s on %d test samples", name, len(x))
    runner = load_runner(exported)
    return exported, runner, runner.run(x)


def failed_targets(result: dict) -> list[str]:
    return [f["target"] for f in result.get("failed", [])]


def robustness(session: Session, runners: dict, x: np.ndarray, y: np.ndarray,
               cfg) -> dict:
    """Attack the float model and each target {name: (Exported, runner)}: transfer
    from the float model, bpda through the target's mirror, black-box on its runner."""
    from . import mirror, robustness as R
    n = cfg.samples or len(x)
    x, y = x[:n], y[:n]
    module = session.model.module
    subjects = [R.Subject("float", session.model.logits, {"transfer": module})]
    for name, (exported, runner) in runners.items():
        m = mirror.build(exported.target, session.graph, exported.plan, cfg.temperature)
        agree = mirror.agreement(m.logits(x), runner.run(x),
                                 exported.plan.tensor(session.graph.output),
                                 runner.output_qp)
        log.info("%s: mirror top-1 agreement %.1f%%", name, 100 * agree["top1"])
        subjects.append(R.Subject(name, runner.run, {"transfer": module, "bpda": m}, agree,
                                  {"transfer": "transfer",
                                   "bpda": _mirror_key(exported, cfg.temperature)}))
    log.info("attacking %d models on %d samples: %s", len(subjects), n, cfg.describe())
    cache: dict = {}
    entries = []
    for s in subjects:
        PG.stage(f"attacking {s.name}")
        with PG.steps(_attack_steps(s, cfg), f"attacking {s.name}", "attack") as bar:
            entries.append(R.evaluate(s, x, y, cfg, cache, on_step=bar.advance))
    R.compare_to_float(entries)
    return cfg.to_json() | {"samples": int(n), "targets": entries}


def _attack_steps(subject, cfg) -> int:
    """The (source, attack) pairs robustness.evaluate scores for a subject, over eps."""
    per_eps = sum(1 if src == "blackbox" else len(cfg.attacks) if src in subject.gradients
                  else 0 for src in cfg.sources)
    return per_eps * len(cfg.eps)


def _mirror_key(exported: Exported, temperature: float) -> str:
    """Two targets get the same mirror (so the same bpda attacks) when their backends
    plan grids. The plan-grid mirror depends on the plan's input and layers only; a
    backend's own mirror may read its target too, so it is keyed by the target."""
    backend = backends.get(exported.target.backend)
    builder = exported.target.name if backends.supports(backend, "mirror") else "grid"
    plan = exported.plan.to_json()
    return json.dumps([builder, temperature, plan["input"], plan["layers"]], sort_keys=True)


def _pairs(outputs: dict) -> list[dict]:
    names, pairs = list(outputs), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (qa, la, wa), (qb, lb, wb) = outputs[a], outputs[b]
            note = ("different output quantization" if qa.to_json() != qb.to_json() else
                    "different weight grids" if wa != wb else None)
            if note:
                pairs.append({"a": a, "b": b, "identical": None, "max_lsb": None,
                              "note": note})
                continue
            diff = np.abs(qa.quantize(la).astype(np.int64) - qb.quantize(lb))
            pairs.append({"a": a, "b": b, "identical": float((diff == 0).all(1).mean()),
                          "identical_values": float((diff == 0).mean()),
                          "max_lsb": int(diff.max())})
    return pairs


def _weight_grid(plan: P.QuantPlan) -> list[dict]:
    """The plan's weight parameters: targets compare outputs only when these match."""
    return [lp.weight.to_json() for lp in plan.layers.values() if lp.weight is not None]


def _acc(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean())


def _scored(pred: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy, its Wilson 95% interval and the per-sample mask (deployq.stats)."""
    from . import stats
    return {"accuracy": _acc(pred, y), "accuracy_ci95": stats.interval(pred == y),
            "accuracy_mask": stats.pack(pred == y)}


def plans_by_target(paths: list[str | Path]) -> dict[str, Path]:
    """{target: path} of plan.json files (each names its target); one plan per target."""
    plans: dict[str, Path] = {}
    for path in paths:
        validate.register_inputs(plans=[path])
        target = P.QuantPlan.load(path).target
        if target in plans:
            raise InputError(f"two plans for {target}: {plans[target]} and {path}; "
                             "give one plan per target")
        plans[target] = Path(path)
    return plans


def with_plan_targets(names: list[str], plans: dict) -> list[str]:
    """The target list with every planned target added (in the plans' order)."""
    return names + [t for t in plans if t not in names]


def robust_config(cfg: dict):
    """The robustness.Config a run config asks for, or None when attacks is empty."""
    from . import robustness as R
    if cfg["attacks"] is not None and not cfg["attacks"]:
        return None
    for key in ("eps", "sources") + (("attacks",) if cfg["attacks"] is not None else ()):
        _config_list(cfg, key)
    settings = {field: cfg[key] for key, field in ROBUST_KEYS.items()}
    eps = [R.parse_eps(e) for e in cfg["eps"]]
    settings |= {"eps": [v for v, _ in eps], "eps_text": [t for _, t in eps]}
    try:
        return R.Config(**settings, seed=cfg["seed"])
    except TypeError as e:
        raise InputError(f"robustness settings of the wrong type: {e}") from None


def _config_list(cfg: dict, key: str) -> list:
    if not isinstance(cfg[key], list):
        raise InputError(f"config key {key!r} must be a list, got {cfg[key]!r}")
    return cfg[key]


def read_config(path: str | Path) -> dict:
    """A deployq.toml: any of RUN_DEFAULTS' keys at top level."""
    config = validate.toml_file(path, RUN_DEFAULTS, "config")
    validate.config(config, path)           # types and ranges, before any work
    return validate.config_paths(config, Path(path).parent)


def run(config: dict | None = None, progress=None) -> "RunResult":
    """The whole pipeline: export to every target, evaluate clean and under attack,
    write results.json, report.md and report.html into OUT. Without a target list, every known target whose backend's
    packages are installed (the others are listed as skipped in the report).
    Returns (result, files) as a RunResult; progress: a callable given every
    deployq.progress.Progress event (deployq.progress.printer prints them)."""
    with PG.reporting(progress):
        result, files = _run(config)
    return RunResult(EvalResult(result), files)


def _run(config: dict | None) -> tuple[dict, list[Path]]:
    cfg = RUN_DEFAULTS | (config or {})
    validate.config({k: v for k, v in (config or {}).items()}, "the run config")
    validate.register_inputs(cfg["model"], cfg["weights"], cfg["data"], cfg["plans"],
                             cfg["targets_dir"])
    robust = robust_config(cfg)
    if cfg["select"]:                                   # budget texts before any work
        from . import selection as S
        for key in ("budget", "activation_budget"):
            if cfg["select"].get(key) is not None:
                S.parse_budget(cfg["select"][key])
    plans = plans_by_target(_config_list(cfg, "plans"))
    names, skipped = cfg["targets"], []
    if names is None:
        names = []
        for t in list_targets(cfg["targets_dir"]):
            try:
                backends.get(t.backend)
                names.append(t.name)
            except TargetError as e:
                skipped.append({"target": t.name, "reason": str(e)})
    names = with_plan_targets(names, plans)
    targets_or_fail(names, cfg["targets_dir"])          # before any slow work
    validate.out_dir(cfg["out"], names, results=True)
    total = (eval_stages(names, robust) + len(names) * bool(cfg["profile_repeats"])
             + bool(cfg["certify"]) + 1)                 # profile: one stage per target
    with PG.stages(total):
        return _run_stages(cfg, names, plans, robust, skipped)


def _run_stages(cfg: dict, names: list[str], plans: dict, robust, skipped: list):
    session = open_session(cfg["model"], cfg["weights"], cfg["data"], cfg["seed"],
                           cfg["calib_samples"])
    validate.samples(cfg["samples"], len(session.dataset.x_test), "samples")
    with out_lock(cfg["out"]):
        plans |= _select_stage(cfg, names, session, plans)
        result = evaluate(names, session, cfg["out"], cfg["samples"], cfg["calibration"],
                          cfg["targets_dir"], robust, plans,
                          {k: cfg[k] for k in ("weight_bits", "activation_bits")})
        names = [n for n in names if n not in failed_targets(result)]
        if cfg["profile_repeats"]:
            result["profile"] = profile(names, session, cfg["out"], cfg["profile_repeats"],
                                        targets_dir=cfg["targets_dir"], reuse=True)
        if cfg["certify"]:
            PG.stage("certifying")
            result["certify"] = _certify_stage(cfg, names, session, plans)
        if cfg["amplify"]:
            result["amplify"] = _amplify_stage(cfg, names, session, plans)
        result["skipped"] = skipped
        PG.stage("writing the report")
        files = report.write(result, cfg["out"], cfg["mcu_clock_mhz"])
        write_manifest(cfg["out"], result)
    return result, files


def _select_stage(cfg: dict, names: list[str], session: Session, plans: dict) -> dict:
    """The run's selection stage (config key `select`): a plan chosen by deployq.selection
    for every target without a plan, written to OUT/selected/TARGET/plan.json.
    `rounding` applies where the target allows it; `activation_budget` on the targets
    that allow several activation bits (the others keep their activation bits)."""
    table = cfg.get("select")
    if not table:
        return {}
    from . import selection as S
    found = {}
    for tgt in targets_or_fail([n for n in names if n not in plans], cfg["targets_dir"]):
        settings = plan_settings(tgt, {"rounding": table.get("rounding")})
        several = len(tgt.allowed.get("activation_bits", [])) > 1
        log.info("selecting bits for %s (%s, budget %s)", tgt.name,
                 table.get("method", "adversarial"), table["budget"])
        plan = S.select(session, tgt, table["budget"], table.get("method", "adversarial"),
                        table.get("eps", 0.1), settings, provenance=provenance(session),
                        activation_budget=table.get("activation_budget") if several else None,
                        refine=table.get("refine", 0),
                        max_clean_drop=table.get("max_clean_drop"))
        path = Path(cfg["out"]) / "selected" / tgt.name / "plan.json"
        plan.save(path)
        found[tgt.name] = path
    return found


def _certify_stage(cfg: dict, names: list[str], session: Session, plans: dict) -> dict:
    """The run's certify stage on the targets whose arithmetic deployq models exactly."""
    from . import certification as C
    chosen = []
    for name in names:
        try:
            C.check_target(T.get(name, cfg["targets_dir"]))
            chosen.append(name)
        except TargetError as e:
            log.info("certify stage: %s", e)
    return certify(chosen, _config_list(cfg, "certify"), cfg["certify_samples"],
                   session=session, out=cfg["out"], calibration=cfg["calibration"],
                   targets_dir=cfg["targets_dir"], plans=plans,
                   strength=cfg.get("strength", "standard"))["certify"]


def _amplify_stage(cfg: dict, names: list[str], session: Session, plans: dict) -> dict:
    """The run's amplify stage (PGD at eps cfg['amplify']) on the targets that can dump
    their tensors."""
    from . import amplify as A
    chosen = [n for n in names if A.can_dump(T.get(n, cfg["targets_dir"]))]
    return amplify(chosen, session, cfg["out"], cfg["amplify"], cfg["amplify_samples"],
                   targets_dir=cfg["targets_dir"], plans=plans)


def load_exported(target: str, out: str | Path = DEFAULT_OUT, targets_dir=None) -> Exported:
    """An export already in OUT/TARGET/ (artifact and plan.json)."""
    tgt = T.get(target, targets_dir)
    folder = Path(out) / tgt.name
    path = folder / backends.get(tgt.backend).ARTIFACT
    if not path.is_file():
        raise InputError(f"no export of {target} in {folder}; run 'deployq export -t {target}'")
    return Exported(tgt, path, P.QuantPlan.load(folder / "plan.json"))


def profile(targets: list[str], session: Session | None = None,
            out: str | Path = DEFAULT_OUT, repeats: int = 50, batch: int = 256,
            targets_dir=None, reuse: bool = False, **session_args) -> dict:
    """Size, compute, memory and latency of each target (exported now, or reused from
    OUT when reuse is set), and the machine they were measured on."""
    from . import profiling as PR
    targets_or_fail(targets, targets_dir)
    if repeats < 3 or batch < 1:
        raise InputError(f"profiling needs --repeats >= 3 and --batch >= 1, got {repeats}, {batch}")
    session = session or open_session(**session_args)
    x, _ = session.dataset.test(batch)
    rows = []
    for name in targets:
        ex = load_exported(name, out, targets_dir) if reuse else export(
            name, session, out, None, targets_dir)
        made_for = ex.plan.provenance.get("model_sha256")
        if reuse and made_for not in (None, session.model.fingerprint()):
            raise InputError(f"{ex.path} was exported from another model ({made_for}); "
                             f"re-export it with 'deployq export -t {name}'")
        PG.stage(f"profiling {name} ({repeats} repeats)")
        rows.append(PR.target(ex, session.graph, load_runner(ex), x, repeats, batch))
    return {"model": session.model.spec, "machine": PR.machine(), "targets": rows}


def list_targets(targets_dir=None) -> list[T.Target]:
    return sorted(T.all_targets(targets_dir).values(), key=lambda t: t.name)




def bits_config(tgt: T.Target, activation_bits: int | None = None,
                weight_bits: int | None = None, calibration: str | None = None,
                output: str | None = None) -> P.PlanConfig:
    """plan_config with hidden_only, from harden's options (harden, amplify)."""
    return plan_config(tgt, {"activation_bits": activation_bits, "weight_bits": weight_bits,
                             "calibration": calibration}, output, hidden_only=True)


def harden(target: str, method: str = "dq", out: str | Path = DEFAULT_OUT, epochs: int = 3,
           eps: float = 0.03, beta: float = 3e-4, session: Session | None = None,
           targets_dir=None, on_epoch=None, activation_bits: int | None = None,
           weight_bits: int | None = None, calibration: str | None = None,
           stages: int = 1, **options) -> dict:
    """Quantization-aware training of the session's model for TARGET's plan with
    METHOD (deployq.hardening.METHODS: dq, pgd, dq+pgd); writes OUT/weights.safetensors,
    OUT/plan.json and OUT/harden.json, checkpoints in OUT and resumes from them.
    stages: `epochs` epochs in each stage, the activation grids recalibrated for the
    current weights before each stage after the first (hardening.train).
    options: hardening.Config fields (steps, lr, batch, val_fraction, ...) and, without
    `session`, open_session's arguments."""
    from . import hardening as H
    H.check_stages(stages)
    if method == H.QAIBP and stages != 1:
        raise InputError("--stages applies to dq, pgd and dq+pgd (qa-ibp has no "
                         "calibrated activation grids); drop --stages")
    if method == H.QAIBP:
        return _harden_qaibp(target, out, epochs, eps, session, targets_dir, **options)
    fields = set(H.Config.__dataclass_fields__)
    cfg = H.Config(method=method, epochs=epochs, eps=eps, beta=beta,
                   **{k: v for k, v in options.items() if k in fields})
    cfg.check()                                       # bad input fails before slow work
    tgt = T.get(target, targets_dir)
    bits_config(tgt, activation_bits, weight_bits, calibration)     # fail early
    session = session or open_session(**{k: v for k, v in options.items()
                                         if k not in fields} | {"seed": cfg.seed})
    _check_trainable(session, out)
    ds = session.dataset
    config = bits_config(tgt, activation_bits, weight_bits, calibration, session.graph.output)
    return H.train(session.model.module, session.graph, tgt, ds.x_train, ds.y_train, cfg,
                   Path(out), on_epoch, config, stages)


def _check_trainable(session: Session, out) -> None:
    """harden trains a module, and its outputs never land on an input file."""
    from . import hardening as H
    if session.model.program is not None:
        raise InputError("harden trains an nn.Module; give the model as zoo:NAME or "
                         "path/file.py:factory, not a .pt2 program")
    outputs = [Path(out) / f for f in (H.WEIGHTS, H.PLAN, H.REPORT, H.CHECKPOINT)]
    if any(_same(o, f) for o in outputs for f in session.model.files):
        raise InputError(f"{out} holds an input file; choose another --out")


def _harden_qaibp(target: str, out, epochs: int, eps: float, session: Session | None,
                  targets_dir, *, seed: int = 0, lr: float | None = None,
                  batch: int | None = None, val_fraction: float | None = None,
                  **options) -> dict:
    """harden --method qa-ibp: QA-IBP certified training (deployq.qaibp) at TARGET's
    default bits; OUT/weights.safetensors and OUT/harden.json (no checkpoints)."""
    from safetensors.torch import save
    from . import hardening as H, qaibp
    tgt = T.get(target, targets_dir)
    given = {"lr": lr, "batch": batch, "val_fraction": val_fraction}
    cfg = qaibp.Config(eps=eps, epochs=epochs, seed=seed,
                       bits=int(tgt.defaults["weight_bits"]),
                       **{k: v for k, v in given.items() if v is not None})
    qaibp.check_config(cfg)                               # before any slow work
    session_args = {k: v for k, v in options.items()
                    if k in ("model", "weights", "data", "calib_samples")}
    session = session or open_session(**session_args, seed=seed)
    _check_trainable(session, out)
    model, train_log = qaibp.train(session.model.module, session.dataset.x_train,
                                   session.dataset.y_train, cfg, _progress_log)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    report = {"format": H.FORMAT, "version": H.VERSION, "method": H.QAIBP,
              "target": tgt.name, "model": session.model.spec, "config": train_log.config,
              "curves": train_log.epochs, "final": train_log.epochs[-1] | {"val_robust": None},
              "epoch_seconds": float(np.mean([e["seconds"] for e in train_log.epochs]))}
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out) / H.WEIGHTS, save(state))
    atomic_write(Path(out) / H.REPORT, json.dumps(report, indent=1).encode())
    return report


def _progress_log(epoch: int, epochs: int, entry: dict) -> None:
    log.info("qa-ibp epoch %d/%d: loss %.3f, validation clean %.1f%%, certified %.1f%%",
             epoch, epochs, entry["loss"], 100 * entry["val_clean"],
             100 * entry["val_certified"])


def amplify(targets: list[str], session: Session, out=DEFAULT_OUT, eps: float = 0.03,
            samples: int = 200, attack: str = "pgd", steps: int = 10, targets_dir=None,
            plans: dict | None = None, config=None) -> dict:
    """Per-layer perturbation amplification of float and each target (deployq.amplify)
    on the first `samples` test samples. plans: {target: QuantPlan} to export instead of
    a calibrated one; config: {target: plan.PlanConfig} for the others (e.g.
    bits_config: 4-bit activations)."""
    from . import amplify as A
    A.check(targets_or_fail(targets, targets_dir), attack, eps, samples, steps)
    exports = {}
    with out_lock(out):                     # the exports are OUT's, as in evaluate
        for name in targets:
            tgt = T.get(name, targets_dir)
            plan = (plans or {}).get(name)
            if plan is None and name in (config or {}):
                plan = P.make(session.graph, session.stats, tgt, config[name],
                              provenance(session))
            exported = export(name, session, out, None, targets_dir, plan=plan)
            exports[name] = (tgt, exported, load_runner(exported))
        x, y = session.dataset.test(samples)
        return A.measure(session, exports, x, y, attack, eps, steps)


def certify(targets: list[str], eps, samples: int | None = 200, complete: bool = False,
            time_limit: float = 10.0, session: Session | None = None,
            out: str | Path = DEFAULT_OUT, calibration: str | None = None, targets_dir=None,
            plans: dict[str, str | Path] | None = None, attack_steps: int | None = None,
            corners: int = 4, strength: str = "standard", clock: str = "wall",
            **session_args) -> dict:
    """Certified accuracy of the float model (IBP) and of each target on its exact
    integer arithmetic (deployq.certification) at each eps (a list, or text like
    '1/255,2/255'), on the first `samples` test samples, next to clean accuracy and
    accuracy under attack on the runtime; with `complete`, branch and bound decides
    the rest within time_limit seconds per sample (clock 'wall', or 'cpu': process
    time, for a loaded machine). The attack is deployq.robustness's preset `strength`
    (attack_steps overrides its iterations). Result under 'certify'."""
    from . import certification as C
    eps = C.parse_eps(eps if isinstance(eps, str) else ",".join(map(str, eps)))
    C.Config(eps, attack_steps=attack_steps, strength=strength)   # bad strength: now
    for t in targets_or_fail(targets, targets_dir):
        C.check_target(t)
    if samples is not None and samples < 1 or time_limit <= 0:
        raise InputError(f"certify needs samples >= 1 and a positive time limit, "
                         f"got {samples}, {time_limit}")
    session = session or open_session(**session_args)
    x, y = session.dataset.test(samples)
    runners = {}
    for name in targets:
        log.info("exporting %s to certify", name)
        exported = export(name, session, out, calibration, targets_dir,
                          plan_path=(plans or {}).get(name))
        runners[name] = (exported, load_runner(exported))
    cfg = C.Config(eps, complete, time_limit, attack_steps, corners, session.seed, strength,
                   clock=clock)
    return {"model": session.model.spec, "data": session.data_spec, "samples": int(len(x)),
            "seed": session.seed, "certify": C.evaluate(session, runners, x, y, cfg)}
