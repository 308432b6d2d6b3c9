"""The command line: defaults, model inputs, and bad input (exit 2, one line, nothing
written). Runs the real CLI entry point in-process; one test runs it as a program."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from deployq import zoo

FACTORY = """
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))

def gated():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Flatten(),
                         nn.Linear(256, 10))
"""


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [l for l in err.splitlines() if "error" in l.lower()]
    assert len(errors) == 1, err
    return errors[0]


def test_export_with_defaults(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("export")
    assert code == 0, err
    folder = tmp_path / "deployq-out" / "onnx-int8"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "plan.json"]
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["target"] == "onnx-int8" and plan["provenance"]["model"] == "zoo:lenet-digits"


def test_eval_prints_a_table_and_writes_json(run_cli, tmp_path):
    code, out, err = run_cli("eval", "-o", tmp_path, "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "float" in out and "onnx-int8" in out
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["target"] for r in rows] == ["float", "onnx-int8"]
    assert abs(rows[0]["accuracy"] - rows[1]["accuracy"]) <= 0.01


def test_targets_lists_constraints(run_cli):
    code, out, _ = run_cli("targets", "--wide")
    assert code == 0 and "onnx-int8" in out and "per-channel*" in out


def test_factory_file_with_weights(run_cli, tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    ns = {}
    exec(FACTORY, ns)
    torch.save(ns["build"]().state_dict(), tmp_path / "w.pt")
    code, out, err = run_cli("eval", "-m", f"{tmp_path / 'net.py'}:build", "-w",
                             tmp_path / "w.pt", "-d", "digits", "-o", tmp_path / "out",
                             "-n", 50)
    assert code == 0, err
    assert (tmp_path / "out" / "onnx-int8" / "model.onnx").is_file()


def test_pt2_program(run_cli, tmp_path):
    model = zoo.load("dsnet-digits")
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "m.pt2")
    code, out, err = run_cli("eval", "-m", tmp_path / "m.pt2", "-d", "digits", "-o",
                             tmp_path / "out")
    assert code == 0, err
    assert "onnx-int8" in out


@pytest.mark.parametrize("args, message", [
    (["export", "-t", "tpu-int4"], "unknown target 'tpu-int4'"),
    (["eval", "-t", "onnx-int8,nope"], "unknown target 'nope'"),
    (["export", "-m", "zoo:nope"], "unknown zoo model"),
    (["export", "-w", "/nonexistent/w.pt"], "does not exist"),
    (["export", "-d", "imagenet"], "unknown dataset"),
    (["export", "--calibration", "magic"], "Invalid value for '--calibration'"),
    (["eval", "-n", "0"], "Invalid value for '--samples'"),
    (["export", "--bogus"], "No such option"),
])
def test_bad_options(run_cli, tmp_path, args, message):
    code, out, err = run_cli(*args, "-o", tmp_path / "out")
    assert code == 2 and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_files_exit_2_with_one_line_and_nothing_written(run_cli, tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x04garbage")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((20, 1, 12, 12), np.float32), y=np.zeros(20))
    cases = [
        (["-m", f"{tmp_path / 'net.py'}:build", "-w", tmp_path / "corrupt.pt"],
         "cannot read weights"),
        (["-m", f"{tmp_path / 'net.py'}:gated", "-d", "digits"],
         "unsupported op 'aten.gelu.default' at layer '1'"),
        (["-m", f"{tmp_path / 'net.py'}:build", "-d", tmp_path / "wrong.npz"],
         "data"),
        (["-m", tmp_path / "missing.pt2"], "does not exist"),
    ]
    for args, message in cases:
        code, out, err = run_cli("export", *args, "-o", tmp_path / "out")
        assert code == 2, (args, err)
        line = _one_error_line(err)
        assert line.startswith("deployq: error:") and message in line, line
        assert not (tmp_path / "out").exists()


def test_outputs_never_overwrite_inputs(run_cli, tmp_path):
    folder = tmp_path / "onnx-int8"
    folder.mkdir()
    (folder / "net.py").write_text(FACTORY)
    code, _, err = run_cli("export", "-m", f"{folder / 'net.py'}:build", "-o", tmp_path)
    assert code == 2 and "holds the input" in err
    assert (folder / "net.py").read_text() == FACTORY


def test_unwritable_output(run_cli, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli("export", "-o", tmp_path / "file" / "sub")
    assert code == 2 and "choose a writable --out" in err


def test_program_entry_point_and_light_imports():
    # `deployq targets` imports the backends to say which can run here; parsing and
    # help stay free of the frameworks
    code = ("import sys, runpy; sys.argv = ['deployq', 'targets', '--help']\n"
            "try:\n    runpy.run_module('deployq', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    help_out = subprocess.run([sys.executable, "-m", "deployq", "--help"],
                              capture_output=True, text=True, check=True).stdout
    assert "export" in help_out and "eval" in help_out


def test_profile_diff_and_c_project(run_cli, tmp_path):
    pytest.importorskip("tensorflow")
    code, out, err = run_cli("profile", "-t", "onnx-int8,mcu-int8", "--repeats", 3,
                             "--batch", 8, "-o", tmp_path, "--json", tmp_path / "p.json")
    assert code == 0, err
    prof = json.loads((tmp_path / "p.json").read_text())
    assert [t["target"] for t in prof["targets"]] == ["onnx-int8", "mcu-int8"]
    assert prof["targets"][0]["macs"] == prof["targets"][1]["macs"] > 0
    assert "slowest layers" in out
    code, out, err = run_cli("diff", "-t", "tflite-int8-ref,mcu-int8", "-n", 2, "-o", tmp_path)
    assert code == 0, err
    assert "0 LSB" in out and "1 LSB" not in out
    code, out, err = run_cli("export", "-t", "mcu-int8", "-o", tmp_path,
                             "--c-project", tmp_path / "fw", "--kernels", "ref")
    assert code == 0, err
    assert "\nKERNELS ?= ref\n" in (tmp_path / "fw" / "Makefile").read_text()
    code, _, err = run_cli("export", "-t", "onnx-int8", "-o", tmp_path,
                           "--c-project", tmp_path / "fw2")
    assert code == 2 and "needs an mcu target" in err and not (tmp_path / "fw2").exists()
    code, _, err = run_cli("profile", "--repeats", 1, "-o", tmp_path)
    assert code == 2 and "--repeats" in err
