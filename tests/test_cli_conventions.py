"""Issue 21 items 3-6: progress, CLI conventions, the Python API on objects and arrays,
data splitting. The expensive checks run one small eval each (onnx-int8, a few dozen
samples, FGSM and a short Square attack)."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from torch import nn

import deployq
from deployq import cli as C, data as D
from deployq.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
NET = """
import torch.nn as nn

def net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))
"""
SMALL_ATTACK = ["--attacks", "fgsm", "--eps", "0.1", "--sources", "transfer,blackbox",
                "--queries", "10"]


def _sorted_digits():
    ds = D.load("digits")
    x, y = np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


@pytest.fixture
def user_files(tmp_path):
    """my.py:net, its weights and a class-sorted .npz without a test split."""
    (tmp_path / "my.py").write_text(NET)
    ns: dict = {}
    exec(NET, ns)
    torch.manual_seed(0)
    torch.save(ns["net"]().state_dict(), tmp_path / "my.pt")
    x, y = _sorted_digits()
    np.savez(tmp_path / "my.npz", x=x, y=y)
    return tmp_path


# --- help, closed sets ---------------------------------------------------------------

def test_every_option_has_help_and_every_command_examples():
    for name, cmd in C.cli.commands.items():
        bare = [p.name for p in cmd.params if isinstance(p, click.Option) and not p.help]
        assert not bare, (name, bare)
        assert "Examples:" in (cmd.epilog or ""), name
        assert f"deployq {name}" in cmd.epilog, name


def test_command_list_is_not_truncated(run_cli):
    code, out, _ = run_cli("--help")
    commands = out.split("Commands:")[1]
    assert code == 0 and "..." not in commands
    assert "OUT/results.json, OUT/report.md and OUT/report.html" in " ".join(out.split())


def test_closed_sets_are_the_modules_own():
    from deployq import hardening as harden, robustness, selection as select
    assert C.SELECT_METHODS == select.METHODS
    assert C.HARDEN_METHODS == tuple(harden.METHODS) + (harden.QAIBP,)
    assert (C.ATTACKS, C.SOURCES, C.STRENGTHS) == (robustness.ATTACKS, robustness.SOURCES,
                                                   robustness.STRENGTHS)


@pytest.mark.parametrize("args, message", [
    (["select", "-b", "4bits", "--method", "magic"], "Invalid value for '--method'"),
    (["harden", "--method", "magic"], "Invalid value for '--method'"),
    (["eval", "--attacks", "fgsm,cw"], "'cw' is not one of"),
    (["eval", "--strength", "max"], "Invalid value for '--strength'"),
    (["run", "--strength", "max"], "Invalid value for '--strength'"),
    (["amplify", "--attack", "cw"], "Invalid value for '--attack'"),
    (["eval", "--eps", "0.1"], "--eps only apply to the robustness evaluation"),
    (["eval", "--sources", "bpda", "--steps", "3"], "--sources, --steps only apply"),
    (["select", "-t", "fpga-fixed,mcu-int8", "-b", "4bits"], "takes one target"),
])
def test_bad_choices_are_one_line(run_cli, tmp_path, args, message):
    code, out, err = run_cli(*args, "-o", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and err.startswith("deployq: error:"), err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_eps_with_attacks_passes_that_check(run_cli, tmp_path):
    """Negative control of the --eps refusal: with --attacks the run gets past it (and
    fails later, on the missing model)."""
    code, _, err = run_cli("eval", "--eps", "0.1", "--attacks", "fgsm", "-m",
                           tmp_path / "none.py:net", "-d", "digits", "-o", tmp_path / "o")
    assert code == 2 and "only apply" not in err and "does not exist" in err


def test_target_aliases(run_cli, tmp_path):
    for flag in ("-t", "--target", "--targets"):
        code, _, err = run_cli("export", flag, "no-such-target", "-o", tmp_path / "o")
        assert code == 2 and "unknown target 'no-such-target'" in err, (flag, err)


# --- targets --------------------------------------------------------------------------

def _targets(env_path: str | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if env_path is not None:
        env["PATH"] = env_path
    return subprocess.run([sys.executable, "-m", "deployq", "targets"], env=env,
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not all(map(__import__("shutil").which,
                                ("arm-none-eabi-gcc", "qemu-system-arm", "cc"))),
                    reason="needs the Arm toolchain, QEMU and a C compiler on PATH")
def test_targets_is_narrow_and_says_what_runs_here(tmp_path):
    out = _targets()
    assert max(map(len, out.splitlines())) <= 100
    rows = {l.split()[0]: l for l in out.splitlines()[1:] if l.strip()}
    assert "available here" in out.splitlines()[0]
    assert rows["mcu-qemu"].rstrip().endswith("yes") and rows["onnx-int8"].rstrip().endswith("yes")
    # the same machine without the Arm toolchain on PATH (cc kept for the C runtime)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "cc").symlink_to(__import__("shutil").which("cc"))
    out = _targets(str(tmp_path / "bin"))
    assert max(map(len, out.splitlines())) <= 100
    rows = {l.split()[0]: l for l in out.splitlines()[1:] if l.strip() and l[0] != " "}
    assert "no" in rows["mcu-qemu"].split()[-3:] and rows["mcu-int8"].rstrip().endswith("yes")
    assert "mcu-qemu: arm-none-eabi-gcc" in out and "apt-get install" in out


# --- data -----------------------------------------------------------------------------

def test_npz_without_test_split_is_shuffled_and_stratified(tmp_path):
    x, y = _sorted_digits()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a = D.load(str(tmp_path / "d.npz"), seed=0)
    assert "shuffled and stratified" in a.note
    counts = np.bincount(a.y_test, minlength=10)
    assert len(a.y_test) == round(0.2 * len(y)) and counts.min() >= 35     # every class
    assert len(a.y_train) + len(a.y_test) == len(y)
    b, c = D.load(str(tmp_path / "d.npz"), seed=0), D.load(str(tmp_path / "d.npz"), seed=1)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    # a class with one sample cannot be stratified: shuffled only, said so
    y1 = y[:41].copy()                                          # zeros, and one 2
    y1[-1] = 2
    np.savez(tmp_path / "one.npz", x=x[:41], y=y1)
    assert "shuffled (seed 0)" in D.load(str(tmp_path / "one.npz")).note
    assert D.load("digits").note is None


def test_user_model_without_data_is_refused(run_cli, user_files, tmp_path):
    model = f"{user_files / 'my.py'}:net"
    code, _, err = run_cli("export", "-m", model, "-o", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and "--data digits" in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="not a zoo model"):
        deployq.open_session(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    code, out, err = run_cli("export", "-m", model, "-d", "digits", "-o", tmp_path / "o")
    assert code == 0, err


# --- the Python API -------------------------------------------------------------------

def test_open_session_takes_modules_programs_and_arrays():
    x, y = _sorted_digits()
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).train()
    s = deployq.open_session(net, data=(x, y))
    assert net.training and s.model.spec == "python:Sequential"    # caller's module kept
    assert len(np.unique(s.dataset.y_test)) == 10
    s4 = deployq.open_session(net, data={"x": x[:100], "y": y[:100], "x_test": x[-50:],
                                         "y_test": y[-50:]})
    assert len(s4.dataset.x_test) == 50
    program = torch.export.export(net.eval(), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    sp = deployq.open_session(program, data="digits")
    assert sp.model.program is not None and sp.model.static_batch is None
    with pytest.raises(InputError, match="nn.Module"):
        deployq.open_session(42, data="digits")
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        deployq.open_session(net, data=(x * 255, y))


def test_top_level_verbs_and_modules():
    import importlib
    from deployq import api, selection as S
    assert S.METHODS and deployq.select is api.select and deployq.profile is api.profile
    prof = importlib.import_module("deployq.profiling")
    assert prof.machine and deployq.profile is api.profile  # importing it changes nothing
    for name in ("certify", "harden", "load_runner", "load_exported", "list_targets"):
        assert callable(getattr(deployq, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        deployq.nonesuch


def test_evaluate_progress_callback_and_typed_result(tmp_path):
    from deployq.progress import printer
    from deployq.robustness import Config
    x, y = _sorted_digits()
    session = deployq.open_session("zoo:lenet-digits")
    events = []
    robust = Config(["fgsm"], [0.1], ["transfer", "blackbox"], queries=5, samples=20)
    r = deployq.evaluate(["onnx-int8"], session, tmp_path, samples=40, robust=robust,
                         progress=events.append)
    stages = [(e.index, e.total, e.text) for e in events if e.kind == "stage"]
    assert stages == [(1, 3, "exporting and scoring onnx-int8"), (2, 3, "attacking float"),
                      (3, 3, "attacking onnx-int8")]
    steps = [(e.done, e.total) for e in events if e.kind == "step"]
    assert steps == [(1, 2), (2, 2)] * 2            # transfer/fgsm, blackbox/square
    assert r.score("onnx-int8").accuracy == r["results"][1]["accuracy"]
    assert [p.eps for p in r.robust("onnx-int8")] == [0.1] and r.robust("nope") == []
    with pytest.raises(InputError, match="progress must be a callable"):
        deployq.evaluate(["onnx-int8"], session, tmp_path, samples=5, progress="yes")
    printer(events[0])


# --- run: flags over config, and progress on a terminal --------------------------------

def test_run_flags_override_the_config(run_cli, user_files, tmp_path):
    cfg = user_files / "cfg"
    cfg.mkdir()
    (cfg / "deployq.toml").write_text(
        'model = "zoo:dsnet-digits"\ntargets = ["fpga-fixed"]\nout = "cfg-out"\n'
        'data = "../my.npz"\nattacks = ["fgsm"]\nsources = ["transfer"]\neps = [0.1]\n'
        'robust_samples = 10\nprofile_repeats = 0\nsamples = 30\n')
    code, out, err = run_cli("run", "-c", cfg / "deployq.toml", "-m",
                             f"{user_files / 'my.py'}:net", "-w", user_files / "my.pt",
                             "-t", "onnx-int8", "-o", tmp_path / "out")
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["model"].endswith("my.py:net") and doc["data"] == str(cfg / "../my.npz")
    assert [r["target"] for r in doc["results"]] == ["float", "onnx-int8"]
    assert not (cfg / "cfg-out").exists()
    assert "[1/5] loaded" in err and "[5/5] writing the report" in err
    assert "[3/5] attacking float" in err and "stratified" in err
    assert "\r" not in err and "attack/s" not in err              # no bar off a TTY


def _on_a_terminal(args: list[str]) -> str:
    """deployq with stderr on a pseudo-terminal: what it wrote there."""
    main, child = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    proc = subprocess.Popen([sys.executable, "-m", "deployq", *args], stderr=child,
                            stdout=subprocess.DEVNULL, env=env)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait() == 0
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_terminal_only_and_never_with_quiet(tmp_path):
    args = ["eval", "-t", "onnx-int8", "-n", "30", *SMALL_ATTACK]
    err = _on_a_terminal(args + ["-o", str(tmp_path / "a")])
    assert "[4/5] attacking onnx-int8" in err and ("attack/s" in err or "s/attack" in err)
    assert "2/2" in err                       # the bar's counter
    quiet = _on_a_terminal(args + ["-o", str(tmp_path / "c"), "-q"])
    assert "attack" not in quiet and "[" not in quiet
