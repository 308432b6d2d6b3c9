"""The deployq command line: parse, call the API, print. Every user error ends in one
line on stderr and exit code 2."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import defaults as D
from .errors import InputError

log = logging.getLogger("deployq")
# closed sets the CLI offers as click.Choice (the modules that own them import torch;
# tests/test_cli.py checks these equal selection.METHODS, hardening.METHODS + qa-ibp,
# robustness.ATTACKS/SOURCES/STRENGTHS)
SELECT_METHODS = ("adversarial", "noise", "hessian", "uniform")
HARDEN_METHODS = ("dq", "pgd", "dq+pgd", "qa-ibp")
ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-t")
SOURCES = ("transfer", "bpda", "blackbox")
STRENGTHS = ("fast", "standard", "thorough")


class CommaChoice(click.ParamType):
    """A comma-separated list of names from a closed set; the text is kept (commands
    split it) once every name is known."""
    name = "list"

    def __init__(self, choices):
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(self.choices) + "],..."

    def convert(self, value, param, ctx):
        bad = [v for v in _list(str(value)) if v not in self.choices]
        if bad:
            self.fail(f"{', '.join(map(repr, bad))} is not one of "
                      f"{', '.join(self.choices)} (comma-separated)", param, ctx)
        return value


def _examples(*lines: str) -> str:
    """An --help epilog: the lines kept as written (click's no-rewrap marker)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def _one_target(ctx, param, value):
    """-t/--target/--targets of a command that works on one target."""
    if value is not None and "," in value:
        raise click.BadParameter(f"this command takes one target, got {value!r}")
    return value


def _model_options(f):
    options = [
        click.option("--model", "-m", default=D.MODEL, show_default=True,
                     help="zoo:NAME, path/file.py:factory, or a torch.export .pt2 file."),
        click.option("--weights", "-w", default=None,
                     help="state_dict for --model (.pt/.pth via torch.load(weights_only=True), "
                          "or .safetensors)."),
        click.option("--data", "-d", default=None,
                     help="digits, fashion-mnist[:DIR], an IDX directory or an .npz "
                          "(default: the zoo model's dataset, else digits)."),
        click.option("--out", "-o", default=D.OUT, show_default=True,
                     help="Output directory; each target writes OUT/TARGET/."),
        click.option("--calibration", default=None,
                     type=click.Choice(["minmax", "percentile", "mse", "entropy",
                                        "converter"]),
                     help="Activation range method, or 'converter' for a target that "
                          "calibrates itself (default: the target's)."),
        click.option("--calib-samples", default=D.CALIB_SAMPLES, show_default=True,
                     type=click.IntRange(1),
                     help="Training samples used for calibration."),
        click.option("--seed", default=D.RUN_DEFAULTS["seed"], show_default=True,
                     type=click.IntRange(0, 2**32 - 1),
                     help="Seed for data splits and sampling."),
        click.option("--targets-dir", default=None,
                     help="Extra directory of target TOML files (searched first)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


FX_ROUNDING = ("trn", "rnd", "rnd_conv")     # targets/fpga-fixed.toml's [allowed]


def _plan_option(f):
    return click.option(
        "--plan", "plan_paths", multiple=True, type=click.Path(dir_okay=False),
        help="A plan.json (e.g. from 'deployq select') to export for its target instead "
             "of a calibrated default plan; its target is added to the list. Repeatable, "
             "one per target.")(f)


def _bits_options(f):
    f = click.option("--rounding", default=None, type=click.Choice(FX_ROUNDING),
                     help="Rounding of fpga-fixed's requantizations: trn (AP_TRN, floor), "
                          "rnd (AP_RND), rnd_conv (AP_RND_CONV, the default); the int8 "
                          "targets round as their runtimes do.")(f)
    f = click.option("--activation-bits", default=None, type=click.IntRange(2, 16),
                     help="Activation bits of every layer (default: the target's).")(f)
    return click.option("--weight-bits", default=None, type=click.IntRange(2, 16),
                        help="Weight bits of every layer, for every target without a "
                             "--plan (default: the target's).")(f)


def _session(model, weights, data, seed, calib_samples):
    from . import api
    return api.open_session(model, weights, data, seed, calib_samples)


# --- one place for bad input: preflight checks and the error handler -----------------

VERBOSITY_FLAGS = ("-q", "--quiet", "-v", "--verbose")


class DeployqCommand(click.Command):
    """A command whose options are checked (inputs registered, --seed, --json, --out,
    --c-project) before its body runs: every command inherits the same preflight."""

    def invoke(self, ctx):
        _preflight(ctx.params)
        return super().invoke(ctx)


def _preflight(p: dict) -> None:
    from . import io, validate
    io.clear_inputs()
    plans = list(p.get("plan_paths") or ()) + ([p["plan_path"]] if p.get("plan_path") else [])
    validate.register_inputs(p.get("model"), p.get("weights"), p.get("data"), plans,
                             p.get("targets_dir"), p.get("config"))
    if p.get("results"):
        io.register_input(p["results"])
    if p.get("baseline"):
        io.register_input(p["baseline"])
    if p.get("seed") is not None:
        validate.seed(p["seed"])
    validate.output_file(p.get("json_path"))
    if p.get("out"):
        names = [p["target"]] if p.get("target") else _list(p.get("target_list") or "")
        validate.out_dir(p["out"], names, results=p.get("attacks") is not None)
    if p.get("c_project"):
        validate.c_project(p["c_project"])


class DeployqGroup(click.Group):
    """The deployq group: -q/-v also after the subcommand, and every error one line
    `deployq: error: ...` with exit code 2 (click's usage errors included)."""
    command_class = DeployqCommand

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _verbosity_first(list(args)))

    def format_commands(self, ctx, formatter):
        """Each command's first sentence in full (click cuts it at the line width)."""
        rows = [(name, cmd.get_short_help_str(limit=1000))
                for name, cmd in sorted(self.commands.items()) if not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
        formatter.write_paragraph()
        formatter.write_text("Run 'deployq COMMAND --help' for a command's options and "
                             "examples; -q and -v go before or after the command.")

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        try:
            code = super().main(args, "deployq", complete_var,
                                standalone_mode=False, **extra)
        except SystemExit:
            raise
        except BaseException as e:           # noqa: BLE001 - the one place errors end
            code = _report(e)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _verbosity_first(args: list[str]) -> list[str]:
    """-q/-v given after the subcommand moved before it (not after a '--')."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in VERBOSITY_FLAGS]
    rest = [a for a in args[:end] if a not in VERBOSITY_FLAGS]
    return flags + rest + args[end:]


def _report(e: BaseException) -> int:
    """Print one line for an error and return the exit code."""
    from .errors import DeployqError
    if isinstance(e, DeployqError):
        return _fail(str(e), 2)
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())
    if no_args and isinstance(e, no_args):        # plain `deployq`: the help, not an error
        click.echo(e.ctx.get_help() if e.ctx else e.format_message())
        return 0
    if isinstance(e, click.UsageError):
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        return _fail(e.format_message() + hint, 2)
    if isinstance(e, click.ClickException):
        return _fail(e.format_message(), e.exit_code or 2)
    if isinstance(e, (click.exceptions.Abort, KeyboardInterrupt)):
        click.echo("deployq: interrupted", err=True)
        return 130
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror}; check the path and its permissions", 2)
    if isinstance(e, RecursionError):
        return _fail("an input file is nested too deeply to read; check it is the file "
                     "deployq wrote", 2)
    if log.isEnabledFor(logging.DEBUG):
        raise e
    _fail(f"internal error ({type(e).__name__}: {_first_line(e)}); this is a bug in "
          "deployq: rerun with -v for the traceback and report it", 1)
    return 1


def _fail(message: str, code: int) -> int:
    click.echo(f"deployq: error: {' '.join(message.split())}", err=True)
    return code


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message is logged (a CLI run in-process,
    e.g. by a test runner, swaps it)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("deployq: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    def emit(self, record):
        from .progress import outside_bars
        with outside_bars():                # a progress bar is cleared, then redrawn
            super().emit(record)

    @stream.setter
    def stream(self, value):
        pass


def _log_to_stderr(logger: logging.Logger, level: int) -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(level)
    logger.propagate = False            # the CLI owns the terminal: one copy of each line


@click.group(cls=DeployqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True,
              help="Only print results and errors (third-party output is silenced).")
@click.option("--verbose", "-v", is_flag=True,
              help="Also print debug messages, third-party output and tracebacks.")
@click.version_option(package_name="deployq")
def cli(quiet, verbose):
    """deployq: PyTorch models to integer edge runtimes, with their accuracy and
    robustness measured on those runtimes."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    _log_to_stderr(logging.getLogger("deployq"), level)
    from . import progress
    progress.terminal(not quiet)            # bars only on a terminal, never with -q
    import warnings
    if not verbose:                          # third-party warnings: shown with -v only
        warnings.simplefilter("ignore")
    for name in ("torch", "jax", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)


@cli.command(epilog=_examples("deployq targets", "deployq targets --wide",
                              "deployq targets --targets-dir my-targets/"))
@click.option("--targets-dir", default=None, help="Extra directory of target TOML files.")
@click.option("--wide", is_flag=True,
              help="Also the granularity, scale, calibration and description columns.")
def targets(targets_dir, wide):
    """List every target, whether it can run on this machine, and its constraints
    (allowed values; the default starred)."""
    from .targets import all_targets
    from .report import columns
    head = ("target", "backend", "weight bits", "act bits", "available here")
    rows, notes = [head + (("granularity", "scale", "calibration", "description")
                           if wide else ())], []
    for t in sorted(all_targets(targets_dir).values(), key=lambda t: t.name):
        a, d = t.allowed, t.defaults
        reason = _unavailable(t)
        if reason:
            notes.append(f"{t.name}: {reason}")
        row = (t.name, t.backend, _allowed(a, d, "weight_bits"),
               _allowed(a, d, "activation_bits"), "no (see below)" if reason else "yes")
        rows.append(row + ((_allowed(a, d, "granularity"), _allowed(a, d, "scale"),
                            _allowed(a, d, "calibration"), t.description) if wide else ()))
    click.echo(columns(rows))
    import textwrap
    for note in notes:
        click.echo("\n" + textwrap.fill(note, 100, subsequent_indent="  "))


def _unavailable(target) -> str | None:
    """Why a target cannot run here: its backend's packages, toolchain or emulator
    (asked through backends.unavailable), or the C runtime's compiler."""
    from . import backends, validate
    from .errors import DeployqError
    reason = backends.unavailable(target.backend)
    if reason is None:
        try:
            validate.c_runtime([target])
        except DeployqError as e:
            reason = str(e)
    return reason


def _allowed(allowed: dict, defaults: dict, key: str) -> str:
    """'8' or 'per-channel*|per-tensor': allowed values, the default starred."""
    values = allowed.get(key, [defaults[key]])
    if len(values) == 1:
        return str(values[0])
    return "|".join(f"{v}*" if v == defaults[key] else str(v) for v in values)


@cli.command(epilog=_examples(
    "deployq export -t onnx-int8",
    "deployq export -t mcu-int8 -m my.py:net -w my.pt -d my.npz --c-project fw/",
    "deployq export -t fpga-fixed --plan out/fpga-fixed/plan.json --hls4ml hls/"))
@click.option("--target", "--targets", "-t", "target", default="onnx-int8",
              show_default=True, callback=_one_target,
              help="Target name (see 'deployq targets').")
@_model_options
@click.option("--c-project", default=None, type=click.Path(file_okay=False),
              help="mcu-int8: also write a self-contained Cortex-M C project into DIR.")
@click.option("--kernels", default=None, type=click.Choice(["opt", "ref"]),
              help="C kernel set of the --c-project build: opt (DSP-extension kernels, "
                   "bit-exact with ref) or ref. Default: the target's option 'kernels', "
                   "else opt.")
@click.option("--plan", "plan_path", default=None, type=click.Path(dir_okay=False),
              help="Export this plan.json (e.g. from 'deployq select') as it is, "
                   "instead of calibrating a new plan.")
@click.option("--hls4ml", "hls4ml_dir", default=None, type=click.Path(file_okay=False),
              help="fpga-fixed: also write an hls4ml project (Vivado, io_parallel) into DIR "
                   "whose C simulation computes the same outputs bit for bit.")
def export(target, model, weights, data, out, calibration, calib_samples, seed, targets_dir,
           c_project, kernels, plan_path, hls4ml_dir):
    """Quantize the model for TARGET and write OUT/TARGET/ (artifact and plan.json)."""
    from . import api, backends
    from .plan import QuantPlan
    tgt = api.targets_or_fail([target], targets_dir)[0]
    backend = backends.get(tgt.backend)
    if c_project and not backends.supports(backend, "c_project"):
        raise click.BadParameter(f"needs an mcu target, not {target}", param_hint="--c-project")
    if kernels and not c_project:
        raise click.BadParameter("chooses the kernels of a --c-project build: add --c-project DIR",
                                 param_hint="--kernels")
    if hls4ml_dir and not backends.supports(backend, "hls4ml_project"):
        raise click.BadParameter(f"needs an fpga target, not {target}", param_hint="--hls4ml")
    plan = QuantPlan.load(plan_path) if plan_path else None
    session = _session(model, weights, data, seed, calib_samples)
    if hls4ml_dir:
        backend.hls4ml_check(session.graph, tgt)
    result = api.export(target, session, out, calibration, targets_dir, plan, plan_path)
    click.echo(f"{result.path}\n{result.path.parent / 'plan.json'}")
    if hls4ml_dir:
        click.echo(backend.hls4ml_project(session.graph, result.plan, tgt, Path(hls4ml_dir)))
    if c_project:
        from . import runtime
        click.echo(backend.c_project(result.path, Path(c_project), session.dataset.test(20)[0],
                                     kernels or runtime.kernels_of(tgt)))


@cli.command(name="select", epilog=_examples(
    "deployq select -t fpga-fixed -b 4bits",
    "deployq select -t mcu-int8 -b 12KB --method hessian -o out",
    "deployq select -b 4.5bits && deployq run --plan deployq-out/fpga-fixed/plan.json"))
@click.option("--target", "--targets", "-t", "target", default="fpga-fixed",
              show_default=True, callback=_one_target,
              help="Target name; its allowed weight_bits are the candidates.")
@click.option("--budget", "-b", required=True,
              help="Average weight bits ('4bits', '4.5bits') or packed weight bytes "
                   "('12KB' = 12288 bytes, '3000B'); biases are not counted.")
@click.option("--method", default="adversarial", show_default=True,
              type=click.Choice(SELECT_METHODS),
              help="How layers are ranked (docs/selection.md).")
@click.option("--eps", default=0.1, show_default=True, type=float,
              help="L-inf perturbation (input units) the adversarial method guards against.")
@click.option("--rounding", default=None,
              help="Rounding setting for every layer (default: the target's; "
                   "fpga-fixed: trn, rnd, rnd_conv).")
@click.option("--min-bits", default=3, show_default=True, type=click.IntRange(2, 16),
              help="Smallest weight bits a layer may get (2 opens ternary weights, which "
                   "the error models rank poorly: docs/selection.md).")
@click.option("--clips", default="1,0.75,0.5", show_default=True,
              help="Candidate weight clipping fractions (the grid spans that fraction of "
                   "each channel's largest |weight|); '1' turns clipping off.")
@click.option("--activation-budget", default=None,
              help="Also choose each hidden tensor's activation bits under this budget "
                   "('4bits' average, or packed bytes); targets allowing several "
                   "activation_bits only (fpga-fixed).")
@click.option("--refine", default=0, show_default=True, type=click.IntRange(0, 64),
              help="K > 0: measure the DP's K best plans (robust accuracy through the "
                   "target's mirror on a validation split of the training data) and "
                   "improve the best by local search (docs/selection.md).")
@click.option("--max-clean-drop", default=None,
              help="With --refine: no plan whose validation clean accuracy is more than "
                   "this many points below the uniform plan's may be chosen.")
@_model_options
def select_(target, budget, method, eps, rounding, min_bits, clips, activation_budget,
            refine, max_clean_drop, model, weights, data, out, calibration, calib_samples,
            seed, targets_dir):
    """Choose per-layer weight bits and clipping under BUDGET and write
    OUT/TARGET/plan.json (export it with 'deployq export --plan' or run it with
    'deployq run --plan')."""
    from . import api, progress, report
    api.targets_or_fail([target], targets_dir)
    clip_values = tuple(_floats(clips, "--clips"))
    drop = None if max_clean_drop is None else _number(max_clean_drop, "--max-clean-drop")
    with progress.stages(3):                # loading, calibrating, choosing
        session = _session(model, weights, data, seed, calib_samples)
        path, plan = api.select(target, budget, method, eps, session, out, calibration,
                                rounding, targets_dir, min_bits, clip_values,
                                activation_budget, refine, max_clean_drop=drop)
    sel = plan.provenance["selection"]
    rows = [("layer", "weights", "bits", "clip")] + [
        (name, str(plan_weights(session, name)), str(bits), f"{sel['weight_clip'][name]:g}")
        for name, bits in sel["bits"].items()]
    click.echo(report.columns(rows))
    click.echo(f"{sel['method']}: {sel['average_bits']:.3f} average weight bits, "
               f"{sel['weight_bytes']} weight bytes (budget {sel['budget']})")
    if sel.get("activation_bits"):
        click.echo(f"activation bits {sel['activation_bits']}: "
                   f"{sel['average_activation_bits']:.3f} average")
    click.echo(str(path))


def plan_weights(session, name: str) -> int:
    return int(session.graph.node(name).weight.size)


@cli.command(epilog=_examples("deployq diff",
                              "deployq diff -t tflite-int8,mcu-int8 -n 50 --json d.json"))
@click.option("--targets", "-t", "target_list", default="tflite-int8,tflite-int8-ref",
              show_default=True, help="Two targets that run the same .tflite.")
@_model_options
@click.option("--samples", "-n", default=20, show_default=True, type=click.IntRange(1),
              help="Test samples compared (the first N).")
@click.option("--json", "json_path", default=None, help="Also write the comparison as JSON.")
def diff(target_list, model, weights, data, out, calibration, calib_samples, seed,
         targets_dir, samples, json_path):
    """Per layer: how many elements differ between two integer targets, by how many LSBs."""
    from . import diff as D, report
    names = _split(target_list)
    session = _session(model, weights, data, seed, calib_samples)
    result = D.diff(names, session, out, samples, targets_dir)
    click.echo(f"{names[0]} vs {names[1]}, {result['samples']} test samples")
    click.echo(report.columns(D.table(result)))
    if json_path:
        report.write_json(result, json_path)


@cli.command(name="profile", epilog=_examples(
    "deployq profile", "deployq profile -t onnx-int8,mcu-qemu --repeats 20 --json p.json"))
@click.option("--targets", "-t", "target_list", default="onnx-int8", show_default=True,
              help="Comma-separated targets to export and measure.")
@_model_options
@click.option("--repeats", default=50, show_default=True, type=click.IntRange(3),
              help="Timed batch-1 calls per target (after a warm-up).")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(1),
              help="Batch size for the throughput figure.")
@click.option("--json", "json_path", default=None, help="Also write the profile as JSON.")
def profile_(target_list, model, weights, data, out, calibration, calib_samples, seed,
             targets_dir, repeats, batch, json_path):
    """Size, MACs/BOPs, peak activation memory and latency of each target."""
    from . import api, progress, report, views
    names = _split(target_list)
    api.targets_or_fail(names, targets_dir)
    with progress.stages(1 + len(names)):
        session = _session(model, weights, data, seed, calib_samples)
        prof = api.profile(names, session, out, repeats, batch, targets_dir)
    doc = {"profile": prof}
    click.echo(views.machine(doc))
    click.echo(views.columns(views.profile_rows(doc)))
    for t in prof["targets"]:
        if t.get("slowest_layers"):
            click.echo(f"\n{t['target']}: slowest layers ({t['layer_timer']})")
            click.echo(views.columns(views.layer_rows(t)))
        if t.get("mcu_footprint"):
            click.echo(f"\n{t['target']}: {json.dumps(t['mcu_footprint'])}")
    if json_path:
        report.write_json(prof, json_path)


@cli.command(name="eval", epilog=_examples(
    "deployq eval -t onnx-int8,mcu-int8",
    "deployq eval -m my.py:net -w my.pt -d my.npz -t tflite-int8 -n 500",
    "deployq eval -t fpga-fixed --attacks fgsm,pgd --eps 2/255,8/255 -o out"))
@click.option("--targets", "-t", "target_list", default="onnx-int8", show_default=True,
              help="Comma-separated target names.")
@_model_options
@click.option("--samples", "-n", default=None, type=click.IntRange(1),
              help="Test samples to score (default: the whole test split).")
@click.option("--json", "json_path", default=None, help="Also write the results as JSON.")
@click.option("--attacks", "-a", default=None, type=CommaChoice(ATTACKS),
              help="Comma-separated white-box attacks (fgsm, pgd, apgd-ce, apgd-t): adds "
                   "the robustness evaluation and writes OUT/results.json, report.md, "
                   "report.html (default with --strength: the preset's).")
@click.option("--strength", default=None, type=click.Choice(STRENGTHS),
              help="Attack strength preset: fast, standard or thorough (adds the "
                   "robustness evaluation; --attacks alone uses standard).")
@click.option("--eps", default=D.csv("eps"), show_default=True,
              help="Comma-separated L-inf budgets in input units, in (0, 1]; fractions "
                   "such as 8/255 are kept exact.")
@click.option("--sources", default=D.csv("sources"), show_default=True,
              type=CommaChoice(SOURCES),
              help="Where adversarial examples come from: transfer (float model "
                   "gradients), bpda (the target's mirror), blackbox (Square attack "
                   "querying the runtime).")
@click.option("--steps", default=None, type=click.IntRange(1),
              help="PGD/APGD iterations (default: the strength's).")
@click.option("--restarts", default=None, type=click.IntRange(1),
              help="PGD/APGD-CE random restarts (default: the strength's).")
@click.option("--queries", default=None, type=click.IntRange(1),
              help="Square attack queries per sample (default: the strength's).")
@_plan_option
@_bits_options
@click.pass_context
def eval_(ctx, target_list, model, weights, data, out, calibration, calib_samples, seed,
          targets_dir, samples, json_path, attacks, strength, eps, sources, steps, restarts,
          queries, plan_paths, weight_bits, activation_bits, rounding):
    """Export to each target and compare float and integer accuracy on the test split;
    with --attacks or --strength, also robust accuracy measured on each runtime."""
    from . import api, progress, report
    _attack_options_need_attacks(ctx, attacks is not None or strength is not None)
    plans = api.plans_by_target(plan_paths)
    names = api.with_plan_targets(_split(target_list), plans)
    settings = {"weight_bits": weight_bits, "activation_bits": activation_bits,
                "rounding": rounding}
    for tgt in api.targets_or_fail(names, targets_dir):
        if tgt.name not in plans:
            api.plan_settings(tgt, settings)         # before the session: fail fast
    robust = None
    if attacks is not None or strength is not None:
        from .robustness import Config, parse_eps
        values = [parse_eps(e) for e in _list(eps)]
        robust = Config(_list(attacks) if attacks is not None else None,
                        [v for v, _ in values], _list(sources), steps, restarts, queries,
                        samples, seed=seed, strength=strength or "standard",
                        eps_text=[t for _, t in values])
    from .io import out_lock, write_manifest
    with progress.stages(api.eval_stages(names, robust) + (robust is not None)):
        session = _session(model, weights, data, seed, calib_samples)
        with out_lock(out):
            result = api.evaluate(names, session, out, samples, calibration, targets_dir,
                                  robust, plans, settings)
            if robust is not None:
                progress.stage("writing the report")
            files = report.write(result, out) if robust is not None else []
            if files:
                write_manifest(out, result)
    click.echo(report.text(result))
    if files:
        click.echo("\n".join(str(f) for f in files))
    if json_path:
        report.write_json(result, json_path)
    _exit_if_failed(result)


def _exit_if_failed(result: dict) -> None:
    """Exit 1 after the report when a target failed, one line per failed target."""
    for f in result.get("failed", []):
        click.echo(f"deployq: error: target {f['target']} failed: {f['error']} (the other "
                   "targets' results are reported)", err=True)
    if result.get("failed"):
        raise click.exceptions.Exit(1)


@cli.command(epilog=_examples(
    "deployq compare out/results.json --baseline main/results.json --max-drop 1",
    "deployq compare out/results.json --vs-float --significant"))
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--baseline", "-b", default=None, type=click.Path(dir_okay=False),
              help="A results.json to compare against (same target, attack, eps).")
@click.option("--max-drop", default=1.0, show_default=True, type=float,
              help="Allowed drop in percentage points.")
@click.option("--vs-float", is_flag=True,
              help="Also fail when a target's clean or robust accuracy is more than "
                   "--max-drop below the float model's in RESULTS.")
@click.option("--allow-mismatch", is_flag=True,
              help="Compare even when RESULTS and BASELINE differ in model, data, samples, "
                   "seed or attack settings (a warning per difference instead of an error).")
@click.option("--significant", is_flag=True,
              help="Count a drop only when McNemar's exact test on the per-sample "
                   "results says it is significant (p < 0.05; same samples needed).")
@click.pass_context
def compare(ctx, results, baseline, max_drop, vs_float, allow_mismatch, significant):
    """CI gate: exit 1 when any target's clean or robust accuracy in RESULTS falls more
    than --max-drop points below BASELINE (or below float with --vs-float)."""
    from . import report, validate
    if baseline is None and not vs_float:
        raise click.UsageError("give --baseline FILE, --vs-float, or both")
    current = _results(results)
    reference = _results(baseline) if baseline else None
    if reference is not None:
        differ = validate.mismatches(current, reference)
        if differ and not allow_mismatch:
            raise InputError(f"{results} and {baseline} are not comparable runs "
                             f"({'; '.join(differ)}); re-run with the baseline's settings "
                             "or pass --allow-mismatch")
        for d in differ:
            log.warning("warning: runs differ: %s", d)
    failures = report.compare(current, reference, max_drop, vs_float, significant)
    for line in failures:
        click.echo(f"FAIL {line}")
    if failures:
        ctx.exit(1)
    click.echo(f"ok: no score more than {max_drop:g} points below "
               + " or ".join(filter(None, [baseline and "the baseline",
                                           vs_float and "float"])))


@cli.command(epilog=_examples(
    "deployq run",
    "deployq run -m my.py:net -w my.pt -d my.npz -t onnx-int8,mcu-int8 -o out",
    "deployq run -c deployq.toml -t onnx-int8 --strength standard",
    "deployq run --plan out/fpga-fixed/plan.json -o out2"))
@click.option("--config", "-c", default=None, type=click.Path(dir_okay=False),
              help="deployq.toml with model, weights, data, targets, out, calibration, "
                   "samples, seed, calib_samples, targets_dir, and the robustness "
                   "settings strength, attacks, eps, sources, steps, restarts, "
                   "target_classes, queries, robust_samples, temperature, plans (all "
                   "optional; attacks = [] turns attacks off). Its relative paths are "
                   "relative to the file; the options below override it.")
@click.option("--model", "-m", default=None,
              help=f"zoo:NAME, path/file.py:factory, or a torch.export .pt2 file "
                   f"(default: the config's, else {D.MODEL}).")
@click.option("--weights", "-w", default=None,
              help="state_dict for --model (.pt/.pth via torch.load(weights_only=True), "
                   "or .safetensors).")
@click.option("--data", "-d", default=None,
              help="digits, fashion-mnist[:DIR], an IDX directory or an .npz (default: "
                   "the config's, else the zoo model's dataset; a model of your own "
                   "needs it).")
@click.option("--targets", "-t", "target_list", default=None,
              help="Comma-separated targets (default: the config's, else every target "
                   "that can run here).")
@click.option("--out", "-o", default=None,
              help=f"Output directory (default: the config's, else {D.OUT}).")
@click.option("--seed", default=None, type=click.IntRange(0, 2**32 - 1),
              help="Seed for data splits and sampling (default: the config's, else 0).")
@click.option("--strength", default=None, type=click.Choice(STRENGTHS),
              help="Attack strength preset; overrides the config's 'strength' "
                   f"(default: {D.RUN_DEFAULTS['strength']}).")
@_plan_option
def run(config, model, weights, data, target_list, out, seed, strength, plan_paths):
    """The whole pipeline: export to every target, evaluate clean and under attack
    (white-box attacks from the float model and each target's mirror, and a black-box
    Square attack, all scored on the runtimes), and write OUT/results.json,
    OUT/report.md and OUT/report.html. Settings: options > config > defaults; without
    either, the built-in digits model and every target that can run here."""
    from . import api, report
    cfg = api.read_config(config) if config else {}
    if plan_paths:
        api.plans_by_target(list(plan_paths))       # readable, one per target
    if plan_paths and isinstance(cfg.get("plans", []), list):
        cfg["plans"] = cfg.get("plans", []) + list(plan_paths)
    flags = {"model": model, "weights": weights, "data": data, "out": out, "seed": seed,
             "strength": strength, "targets": target_list and _split(target_list)}
    if model is not None and weights is None:
        cfg.pop("weights", None)            # the config's weights belong to its model
    cfg |= {k: v for k, v in flags.items() if v is not None}
    result, files = api.run(cfg)
    click.echo(report.text(result))
    for skipped in result["skipped"]:
        click.echo(f"skipped {skipped['target']}: {skipped['reason']}")
    click.echo("\n".join(str(f) for f in files))
    _exit_if_failed(result)


def _attack_options_need_attacks(ctx, robust: bool) -> None:
    """--eps, --sources, --steps, --restarts, --queries set the attacks: given without
    --attacks or --strength they would be ignored, so they are refused."""
    from click.core import ParameterSource
    given = [f"--{n}" for n in ("eps", "sources", "steps", "restarts", "queries")
             if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if given and not robust:
        raise click.UsageError(f"{', '.join(given)} only apply to the robustness "
                               "evaluation: add --attacks or --strength")


def _results(path) -> dict:
    """A results.json that compare can trust: readable, well-formed, finite scores."""
    from . import report, validate
    doc = report.load(path)
    validate.results_shape(doc, path)
    validate.scores_finite(report.scores(doc), path)
    return doc


@cli.command(name="harden", epilog=_examples(
    "deployq harden -t fpga-fixed --method dq --epochs 3 -o hard",
    "deployq harden -m my.py:net -w my.pt -d my.npz --method pgd --eps 0.05 -o hard",
    "deployq eval -m my.py:net -w hard/weights.safetensors -d my.npz --plan hard/plan.json"))
@click.option("--method", default="dq", show_default=True, type=click.Choice(HARDEN_METHODS),
              help="dq (Defensive Quantization's penalty; --beta 0: plain QAT), pgd "
                   "(PGD adversarial training), dq+pgd, or qa-ibp (certified training "
                   "through the quantized interval bounds, docs/certify.md).")
@click.option("--target", "--targets", "-t", "target", default="fpga-fixed",
              show_default=True, callback=_one_target,
              help="The target whose plan the model is trained for.")
@_model_options
@click.option("--epochs", default=3, show_default=True, type=int,
              help="Training epochs (per stage with --stages).")
@click.option("--stages", default=1, show_default=True, type=int,
              help="Train in N stages of --epochs each; each stage after the first "
                   "recalibrates the activation grids for the current weights and starts "
                   "a new optimizer and schedule, as `harden -w OUT/weights.safetensors` "
                   "would.")
@click.option("--eps", default=0.03, show_default=True, type=float,
              help="L-inf radius of PGD training and of the robust validation accuracy.")
@click.option("--beta", default=3e-4, show_default=True, type=float,
              help="Weight of DQ's penalty (beta/2) * sum ||W^T W - I||_F^2.")
@click.option("--steps", default=7, show_default=True, type=int, help="PGD steps in training.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Adam learning rate.")
@click.option("--batch", default=64, show_default=True, type=int,
              help="Training batch size.")
@click.option("--val-fraction", default=0.1, show_default=True, type=float,
              help="Share of the training split held out for validation.")
@click.option("--val-samples", default=500, show_default=True, type=int,
              help="Validation samples attacked each epoch (robust accuracy).")
@click.option("--activation-bits", default=None, type=int,
              help="Bits of every activation but the input (default: the target's).")
@click.option("--weight-bits", default=None, type=int,
              help="Bits of every weight (default: the target's).")
def harden_(method, target, model, weights, data, out, calibration, calib_samples, seed,
            targets_dir, epochs, stages, eps, beta, steps, lr, batch, val_fraction,
            val_samples, activation_bits, weight_bits):
    """Quantization-aware training for TARGET's plan with Defensive Quantization's
    Lipschitz penalty and/or PGD adversarial training: OUT/weights.safetensors (for -w),
    OUT/plan.json (for --plan), OUT/harden.json. Resumes from OUT/checkpoint.pt."""
    from . import api
    r = api.harden(target, method, out, epochs, eps, beta, targets_dir=targets_dir,
                   activation_bits=activation_bits, weight_bits=weight_bits,
                   calibration=calibration, stages=stages, steps=steps, lr=lr, batch=batch,
                   val_fraction=val_fraction, val_samples=val_samples, seed=seed,
                   calib_samples=calib_samples, model=model, weights=weights, data=data)
    f = r["final"]
    robust = "-" if f["val_robust"] is None else f"{100 * f['val_robust']:.2f}%"
    click.echo(f"{method} on {target}: validation clean {100 * f['val_clean']:.2f}%, "
               f"robust {robust} (eps {eps}), {r['epoch_seconds']:.0f} s per epoch")
    for name in ("weights.safetensors", "plan.json", "harden.json"):
        click.echo(Path(out) / name)


@cli.command(name="amplify", epilog=_examples(
    "deployq amplify", "deployq amplify -t fpga-fixed --activation-bits 4 --json a.json"))
@click.option("--targets", "-t", "target_list", default="mcu-int8,fpga-fixed",
              show_default=True, help="Targets that dump their tensors (mcu-int8, "
                                      "fpga-fixed, tflite-int8, tflite-int8-ref).")
@_model_options
@click.option("--attack", default="pgd", show_default=True,
              type=click.Choice(["pgd", "noise"]),
              help="PGD on the float model, or uniform noise of +-eps.")
@click.option("--eps", default=0.03, show_default=True, type=float,
              help="L-inf perturbation in input units.")
@click.option("--samples", "-n", default=200, show_default=True, type=int,
              help="Test samples (the first N).")
@click.option("--steps", default=10, show_default=True, type=int, help="PGD steps.")
@click.option("--activation-bits", default=None, type=int,
              help="Bits of every activation but the input and the logits "
                   "(default: each target's).")
@click.option("--weight-bits", default=None, type=int, help="Bits of every weight.")
@click.option("--json", "json_path", default=None, help="Also write the table as JSON.")
@_plan_option
def amplify_(target_list, model, weights, data, out, calibration, calib_samples, seed,
             targets_dir, attack, eps, samples, steps, activation_bits, weight_bits,
             json_path, plan_paths):
    """Per layer: the relative perturbation ||a(x_adv) - a(x)|| / ||a(x)|| under the attack,
    on float and on each target's runtime, and its multiple of float's (DQ's
    error amplification)."""
    from . import amplify as A, api, report
    from .plan import QuantPlan
    names = api.with_plan_targets(_split(target_list), api.plans_by_target(plan_paths))
    tgts = api.targets_or_fail(names, targets_dir)
    plans = {QuantPlan.load(p).target: QuantPlan.load(p) for p in plan_paths}
    session = _session(model, weights, data, seed, calib_samples)
    config = {t.name: api.bits_config(t, activation_bits, weight_bits, calibration,
                                      session.graph.output) for t in tgts
              } if activation_bits or weight_bits or calibration else None
    result = api.amplify(names, session, out, eps, samples, attack, steps, targets_dir,
                         plans, config)
    click.echo(f"{result['model']}: ||a(x_adv) - a(x)|| / ||a(x)|| per layer, {attack} "
               f"eps {eps}, {result['samples']} test samples")
    click.echo(report.columns(A.table(result)))
    if json_path:
        report.write_json(result, json_path)


@cli.command(name="certify", epilog=_examples(
    "deployq certify", "deployq certify -t fpga-fixed --eps 1/255,2/255 -n 100 --complete"))
@click.option("--targets", "-t", "target_list", default="fpga-fixed,mcu-int8",
              show_default=True, help="Targets whose integer arithmetic deployq models "
              "exactly: fpga-fixed, mcu-int8, mcu-qemu, tflite-int8-ref.")
@click.option("--eps", default="1/255,2/255,4/255", show_default=True,
              help="Comma-separated L-inf budgets in input units, numbers or fractions.")
@_model_options
@click.option("--samples", "-n", default=200, show_default=True, type=click.IntRange(1),
              help="Test samples to certify.")
@click.option("--complete", is_flag=True,
              help="Decide the samples IBP leaves open by branch and bound over the "
                   "integer input box (certified / falsified / undecided).")
@click.option("--time-limit", default=10.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds per sample for --complete.")
@click.option("--strength", default="standard", show_default=True,
              type=click.Choice(["fast", "standard", "thorough"]),
              help="Attack preset (as in eval) the certificates are checked against.")
@click.option("--steps", default=None, type=click.IntRange(1),
              help="Attack iterations, overriding the strength preset's.")
@click.option("--json", "json_path", default=None, help="Also write the results as JSON.")
@_plan_option
def certify_(target_list, eps, model, weights, data, out, calibration, calib_samples, seed,
             targets_dir, samples, complete, time_limit, strength, steps, json_path,
             plan_paths):
    """Certified accuracy on each target's exact integer arithmetic (interval bound
    propagation; docs/certify.md), beside float IBP, clean accuracy and accuracy under
    attack on the runtime."""
    from . import api, report
    from .certification import check_target, parse_eps
    plans = api.plans_by_target(plan_paths)
    names = api.with_plan_targets(_split(target_list), plans)
    eps_values = parse_eps(eps)
    for t in api.targets_or_fail(names, targets_dir):
        check_target(t)
    session = _session(model, weights, data, seed, calib_samples)
    result = api.certify(names, eps_values, samples, complete, time_limit, session, out,
                         calibration, targets_dir, plans, steps, strength=strength)
    click.echo(report.certify_text(result))
    if json_path:
        report.write_json(result, json_path)


@cli.command(epilog=_examples(
    "deployq sweep -c sweep.toml -j 2",
    "deployq sweep -m zoo:lenet-digits -t onnx-int8,fpga-fixed --weight-bits 4,8 -o sw"))
@click.option("--config", "-c", default=None, type=click.Path(dir_okay=False),
              help="sweep.toml: models, targets, weight_bits, activation_bits, plans, eps, "
                   "strength, attacks, sources, samples, seed, ... (docs/sweep.md).")
@click.option("--models", "-m", default=None, help="Comma-separated models (zoo:NAME, files).")
@click.option("--targets", "-t", "target_list", default=None, help="Comma-separated targets.")
@click.option("--weight-bits", default=None, help="Comma-separated widths, or 'default'.")
@click.option("--activation-bits", default=None, help="Comma-separated widths, or 'default'.")
@click.option("--eps", default=None, help="Comma-separated L-inf budgets.")
@click.option("--samples", "-n", default=None, type=click.IntRange(1),
              help="Test samples per cell (clean and attacked).")
@click.option("--out", "-o", default=None, help="Output directory (default sweep-out).")
@click.option("--executor", default="local", show_default=True,
              type=click.Choice(["local", "ray"]),
              help="Where cells run: local worker processes or Ray.")
@click.option("--workers", "-j", default=None, type=click.IntRange(1),
              help="Worker processes (local), CPUs of a local Ray, or cells at once on a "
                   "Ray cluster (default: all cores; on a cluster all its CPUs).")
@click.option("--address", default=None, help="Ray cluster address (host:port).")
@click.pass_context
def sweep(ctx, config, models, target_list, weight_bits, activation_bits, eps, samples, out,
          executor, workers, address):
    """Robustness over a grid of models x targets x bits x plans x eps x attack strength:
    every cell one 'eval', cached under OUT/cells/; writes OUT/sweep.json, sweep.csv,
    report.md, report.html. Exit 1 when a cell failed."""
    from . import sweep as S
    cfg = S.read_config(config) if config else {}
    flags = {"models": models and _list(models), "targets": target_list and _list(target_list),
             "weight_bits": weight_bits and _widths(weight_bits, "--weight-bits"),
             "activation_bits": activation_bits and _widths(activation_bits,
                                                            "--activation-bits"),
             "eps": eps and _floats(eps, "--eps"), "samples": samples, "out": out}
    cfg |= {k: v for k, v in flags.items() if v is not None}
    if address and executor != "ray":
        raise click.BadParameter("only with --executor ray", param_hint="--address")
    doc, files = S.run(cfg, executor, workers, address)
    failed = [c for c in doc["cells"] if c["status"] != "ok"]
    click.echo(f"{len(doc['cells'])} cells: {len(doc['cells']) - len(failed)} ok, "
               f"{len(failed)} failed; {len(doc['skipped'])} skipped")
    for c in failed:
        click.echo(f"failed {c['id']}: {c['error']}")
    click.echo("\n".join(str(f) for f in files))
    if failed:
        ctx.exit(1)


def _widths(text: str, option: str) -> list:
    from .errors import InputError
    try:
        return [v if v == "default" else int(v) for v in _list(text)]
    except ValueError:
        raise InputError(f"{option} takes comma-separated integers or 'default', "
                         f"got {text!r}") from None


def _list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in _list(text)]
    except ValueError:
        from .errors import InputError
        raise InputError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _number(text: str, option: str) -> float:
    """A finite number >= 0 (e.g. points of accuracy)."""
    import math
    from .errors import InputError
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise InputError(f"{option} takes a number >= 0 (points), got {text!r}")
    return value


def _split(text: str) -> list[str]:
    names = _list(text)
    if not names:
        raise click.BadParameter("give at least one target", param_hint="--targets")
    return names


def main() -> None:
    """The `deployq` program: a private temp folder for third-party litter, native
    stderr (C++ logs of LiteRT, TensorFlow, torch) kept off the terminal unless -v,
    then the group (which turns every error into one line)."""
    from .runenv import private_run
    with private_run(verbose=any(a in ("-v", "--verbose") for a in sys.argv[1:])):
        code = cli.main(standalone_mode=False)
    sys.exit(code)


if __name__ == "__main__":
    main()
