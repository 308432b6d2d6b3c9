"""The deployq command line: parse, call the API, print. Every user error ends in one
line on stderr and exit code 2."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .errors import DeployqError

log = logging.getLogger("deployq")


def _model_options(f):
    options = [
        click.option("--model", "-m", default="zoo:lenet-digits", show_default=True,
                     help="zoo:NAME, path/file.py:factory, or a torch.export .pt2 file."),
        click.option("--weights", "-w", default=None,
                     help="state_dict for --model (.pt/.pth via torch.load(weights_only=True), "
                          "or .safetensors)."),
        click.option("--data", "-d", default=None,
                     help="digits, fashion-mnist[:DIR], an IDX directory or an .npz "
                          "(default: the zoo model's dataset, else digits)."),
        click.option("--out", "-o", default="deployq-out", show_default=True,
                     help="Output directory; each target writes OUT/TARGET/."),
        click.option("--calibration", default=None,
                     type=click.Choice(["minmax", "percentile", "mse", "entropy",
                                        "converter"]),
                     help="Activation range method, or 'converter' for a target that "
                          "calibrates itself (default: the target's)."),
        click.option("--calib-samples", default=512, show_default=True, type=click.IntRange(1),
                     help="Training samples used for calibration."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seed for data splits and sampling."),
        click.option("--targets-dir", default=None,
                     help="Extra directory of target TOML files (searched first)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _plan_option(f):
    return click.option(
        "--plan", "plan_paths", multiple=True, type=click.Path(dir_okay=False),
        help="A plan.json (e.g. from 'deployq select') to export for its target instead "
             "of a calibrated default plan; its target is added to the list. Repeatable, "
             "one per target.")(f)


def _session(model, weights, data, seed, calib_samples):
    from . import api
    return api.open_session(model, weights, data, seed, calib_samples)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True, help="Only print results and errors.")
@click.version_option(package_name="deployq")
def cli(quiet):
    """deployq: PyTorch models to integer edge runtimes, with their accuracy and
    robustness measured on those runtimes."""
    logging.basicConfig(format="deployq: %(message)s", stream=sys.stderr,
                        level=logging.WARNING if quiet else logging.INFO)


@cli.command()
@click.option("--targets-dir", default=None, help="Extra directory of target TOML files.")
def targets(targets_dir):
    """List every target with its constraints and defaults."""
    from .targets import all_targets
    from .report import columns
    rows = [("target", "backend", "weight bits", "act bits", "granularity", "scale",
             "calibration", "description")]
    for t in sorted(all_targets(targets_dir).values(), key=lambda t: t.name):
        a, d = t.allowed, t.defaults
        rows.append((t.name, t.backend, _allowed(a, d, "weight_bits"),
                     _allowed(a, d, "activation_bits"), _allowed(a, d, "granularity"),
                     _allowed(a, d, "scale"), _allowed(a, d, "calibration"), t.description))
    click.echo(columns(rows))


def _allowed(allowed: dict, defaults: dict, key: str) -> str:
    """'8' or 'per-channel*|per-tensor': allowed values, the default starred."""
    values = allowed.get(key, [defaults[key]])
    if len(values) == 1:
        return str(values[0])
    return "|".join(f"{v}*" if v == defaults[key] else str(v) for v in values)


@cli.command()
@click.option("--target", "-t", default="onnx-int8", show_default=True,
              help="Target name (see 'deployq targets').")
@_model_options
@click.option("--c-project", default=None, type=click.Path(file_okay=False),
              help="mcu-int8: also write a self-contained Cortex-M C project into DIR.")
@click.option("--plan", "plan_path", default=None, type=click.Path(dir_okay=False),
              help="Export this plan.json (e.g. from 'deployq select') as it is, "
                   "instead of calibrating a new plan.")
def export(target, model, weights, data, out, calibration, calib_samples, seed, targets_dir,
           c_project, plan_path):
    """Quantize the model for TARGET and write OUT/TARGET/ (artifact and plan.json)."""
    from . import api
    from .plan import QuantPlan
    tgt = api.targets_or_fail([target], targets_dir)[0]
    if c_project and tgt.backend != "mcu":
        raise click.BadParameter(f"needs an mcu target, not {target}", param_hint="--c-project")
    plan = QuantPlan.load(plan_path) if plan_path else None
    session = _session(model, weights, data, seed, calib_samples)
    result = api.export(target, session, out, calibration, targets_dir, plan, plan_path)
    click.echo(f"{result.path}\n{result.path.parent / 'plan.json'}")
    if c_project:
        from .cproject import write_c_project
        click.echo(write_c_project(result.path, Path(c_project), session.dataset.test(20)[0]))


@cli.command(name="select")
@click.option("--target", "-t", default="fpga-fixed", show_default=True,
              help="Target name; its allowed weight_bits are the candidates.")
@click.option("--budget", "-b", required=True,
              help="Average weight bits ('4bits', '4.5bits') or packed weight bytes "
                   "('12KB' = 12288 bytes, '3000B'); biases are not counted.")
@click.option("--method", default="adversarial", show_default=True,
              help="adversarial, noise, hessian or uniform (docs/selection.md).")
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
@_model_options
def select_(target, budget, method, eps, rounding, min_bits, clips, model, weights, data,
            out, calibration, calib_samples, seed, targets_dir):
    """Choose per-layer weight bits and clipping under BUDGET and write
    OUT/TARGET/plan.json (export it with 'deployq export --plan' or run it with
    'deployq run --plan')."""
    from . import api, report
    api.targets_or_fail([target], targets_dir)
    clip_values = tuple(_floats(clips, "--clips"))
    session = _session(model, weights, data, seed, calib_samples)
    path, plan = api.select(target, budget, method, eps, session, out, calibration,
                            rounding, targets_dir, min_bits, clip_values)
    sel = plan.provenance["selection"]
    rows = [("layer", "weights", "bits", "clip")] + [
        (name, str(plan_weights(session, name)), str(bits), f"{sel['weight_clip'][name]:g}")
        for name, bits in sel["bits"].items()]
    click.echo(report.columns(rows))
    click.echo(f"{sel['method']}: {sel['average_bits']:.3f} average weight bits, "
               f"{sel['weight_bytes']} weight bytes (budget {sel['budget']})")
    click.echo(str(path))


def plan_weights(session, name: str) -> int:
    return int(session.graph.node(name).weight.size)


@cli.command()
@click.option("--targets", "-t", "target_list", default="tflite-int8,tflite-int8-ref",
              show_default=True, help="Two targets that run the same .tflite.")
@_model_options
@click.option("--samples", "-n", default=20, show_default=True, type=click.IntRange(1))
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


@cli.command(name="profile")
@click.option("--targets", "-t", "target_list", default="onnx-int8", show_default=True)
@_model_options
@click.option("--repeats", default=50, show_default=True, type=click.IntRange(3),
              help="Timed batch-1 calls per target (after a warm-up).")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(1),
              help="Batch size for the throughput figure.")
@click.option("--json", "json_path", default=None, help="Also write the profile as JSON.")
def profile_(target_list, model, weights, data, out, calibration, calib_samples, seed,
             targets_dir, repeats, batch, json_path):
    """Size, MACs/BOPs, peak activation memory and latency of each target."""
    from . import api, report
    names = _split(target_list)
    api.targets_or_fail(names, targets_dir)
    session = _session(model, weights, data, seed, calib_samples)
    prof = api.profile(names, session, out, repeats, batch, targets_dir)
    doc = {"profile": prof}
    click.echo(report._machine(doc))
    click.echo(report.columns(report._profile_rows(doc)))
    for t in prof["targets"]:
        if t.get("slowest_layers"):
            source = "ONNX Runtime profiler" if t["backend"] == "onnx" else "C runtime timers"
            click.echo(f"\n{t['target']}: slowest layers ({source})")
            click.echo(report.columns([("node", "op", "us per run")] + [
                (r["node"], r["op"], f"{r['us_per_run']:.1f}") for r in t["slowest_layers"][:5]]))
        if t.get("mcu_footprint"):
            click.echo(f"\n{t['target']}: {json.dumps(t['mcu_footprint'])}")
    if json_path:
        report.write_json(prof, json_path)


@cli.command(name="eval")
@click.option("--targets", "-t", "target_list", default="onnx-int8", show_default=True,
              help="Comma-separated target names.")
@_model_options
@click.option("--samples", "-n", default=None, type=click.IntRange(1),
              help="Test samples to score (default: the whole test split).")
@click.option("--json", "json_path", default=None, help="Also write the results as JSON.")
@click.option("--attacks", "-a", default=None,
              help="Comma-separated white-box attacks (fgsm, pgd, apgd-ce, apgd-t): adds "
                   "the robustness evaluation and writes OUT/results.json, report.md, "
                   "report.html (default with --strength: the preset's).")
@click.option("--strength", default=None,
              help="Attack strength preset: fast, standard or thorough (adds the "
                   "robustness evaluation; --attacks alone uses standard).")
@click.option("--eps", default="0.05,0.1,0.2", show_default=True,
              help="Comma-separated L-inf budgets in input units, in (0, 1]; fractions "
                   "such as 8/255 are kept exact.")
@click.option("--sources", default="transfer,bpda,blackbox", show_default=True,
              help="Where adversarial examples come from: transfer (float model "
                   "gradients), bpda (the target's mirror), blackbox (Square attack "
                   "querying the runtime).")
@click.option("--steps", default=None, type=int,
              help="PGD/APGD iterations (default: the strength's).")
@click.option("--restarts", default=None, type=int,
              help="PGD/APGD-CE random restarts (default: the strength's).")
@click.option("--queries", default=None, type=int,
              help="Square attack queries per sample (default: the strength's).")
@_plan_option
def eval_(target_list, model, weights, data, out, calibration, calib_samples, seed,
          targets_dir, samples, json_path, attacks, strength, eps, sources, steps, restarts,
          queries, plan_paths):
    """Export to each target and compare float and integer accuracy on the test split;
    with --attacks, also robust accuracy measured on each runtime."""
    from . import api, report
    plans = api.plans_by_target(plan_paths)
    names = api.with_plan_targets(_split(target_list), plans)
    api.targets_or_fail(names, targets_dir)
    robust = None
    if attacks is not None or strength is not None:
        from .robustness import Config, parse_eps
        values = [parse_eps(e) for e in _list(eps)]
        robust = Config(_list(attacks) if attacks is not None else None,
                        [v for v, _ in values], _list(sources), steps, restarts, queries,
                        samples, seed=seed, strength=strength or "standard",
                        eps_text=[t for _, t in values])
    session = _session(model, weights, data, seed, calib_samples)
    result = api.evaluate(names, session, out, samples, calibration, targets_dir, robust,
                          plans)
    click.echo(report.text(result))
    if robust is not None:
        click.echo("\n".join(str(f) for f in report.write(result, out)))
    if json_path:
        report.write_json(result, json_path)


@cli.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--baseline", "-b", default=None, type=click.Path(dir_okay=False),
              help="A results.json to compare against (same target, attack, eps).")
@click.option("--max-drop", default=1.0, show_default=True, type=float,
              help="Allowed drop in percentage points.")
@click.option("--vs-float", is_flag=True,
              help="Also fail when a target's clean or robust accuracy is more than "
                   "--max-drop below the float model's in RESULTS.")
@click.option("--significant", is_flag=True,
              help="Count a drop only when McNemar's exact test on the per-sample "
                   "results says it is significant (p < 0.05; same samples needed).")
@click.pass_context
def compare(ctx, results, baseline, max_drop, vs_float, significant):
    """CI gate: exit 1 when any target's clean or robust accuracy in RESULTS falls more
    than --max-drop points below BASELINE (or below float with --vs-float)."""
    from . import report
    if baseline is None and not vs_float:
        raise click.UsageError("give --baseline FILE, --vs-float, or both")
    current = report.load(results)
    reference = report.load(baseline) if baseline else None
    failures = report.compare(current, reference, max_drop, vs_float, significant)
    for line in failures:
        click.echo(f"FAIL {line}")
    if failures:
        ctx.exit(1)
    click.echo(f"ok: no score more than {max_drop:g} points below "
               + " or ".join(filter(None, [baseline and "the baseline",
                                           vs_float and "float"])))


@cli.command()
@click.option("--config", "-c", default=None, type=click.Path(dir_okay=False),
              help="deployq.toml with model, weights, data, targets, out, calibration, "
                   "samples, seed, calib_samples, targets_dir, and the robustness "
                   "settings strength, attacks, eps, sources, steps, restarts, "
                   "target_classes, queries, robust_samples, temperature, plans (all "
                   "optional; attacks = [] turns attacks off).")
@click.option("--strength", default=None,
              help="Attack strength preset (fast, standard, thorough); overrides the "
                   "config's 'strength' (default: standard).")
@_plan_option
def run(config, strength, plan_paths):
    """The whole pipeline from one config: export to every target, evaluate clean and
    under attack (FGSM and PGD from the float model and each target's mirror, and a
    black-box Square attack, all scored on the runtimes), and write OUT/results.json,
    OUT/report.md and OUT/report.html. Without a config: the built-in digits model and
    every built-in target."""
    from . import api, report
    cfg = api.read_config(config) if config else {}
    if plan_paths and isinstance(cfg.get("plans", []), list):
        cfg["plans"] = cfg.get("plans", []) + list(plan_paths)
    if strength is not None:
        cfg["strength"] = strength
    result, files = api.run(cfg)
    click.echo(report.text(result))
    for skipped in result["skipped"]:
        click.echo(f"skipped {skipped['target']}: {skipped['reason']}")
    click.echo("\n".join(str(f) for f in files))


def _list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in _list(text)]
    except ValueError:
        from .errors import InputError
        raise InputError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _split(text: str) -> list[str]:
    names = _list(text)
    if not names:
        raise click.BadParameter("give at least one target", param_hint="--targets")
    return names


def main() -> None:
    try:
        code = cli.main(standalone_mode=False)
    except DeployqError as e:
        click.echo(f"deployq: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("deployq: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
