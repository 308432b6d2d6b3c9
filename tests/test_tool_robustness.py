"""The tool under stress: two processes writing one OUT, runs killed with SIGKILL at
several points, models whose logits are (N, K, 1, 1), and third-party output kept off
the terminal. Subprocesses only where a second process or a kill is the point."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deployq import io

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
       "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


def _staging(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if io._STAGING.match(p.name)) if folder.is_dir() else []


# --- two processes, one OUT --------------------------------------------------------------

SWAPPER = textwrap.dedent("""
    import contextlib, sys, os
    from pathlib import Path
    from deployq import io
    out, n, locked = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    if not locked:                               # the negative control: no lock
        out.mkdir(parents=True, exist_ok=True)
        io.out_lock = lambda folder: contextlib.nullcontext()
    errors = 0
    for i in range(n):
        try:
            with io.StagedDir(out / "onnx-int8", results=True) as tmp:
                (tmp / "a").write_text(f"{os.getpid()} {i}")
                (tmp / "b").write_text(f"{os.getpid()} {i}")
        except Exception as e:
            errors += 1
    print(errors)
""")


def _race(out: Path, n: int, locked: bool) -> int:
    procs = [subprocess.Popen([sys.executable, "-c", SWAPPER, str(out), str(n),
                               "1" if locked else "0"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = 0
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        errors += int(stdout.strip())
    return errors


def test_two_processes_replace_one_target_safely(tmp_path):
    out = tmp_path / "out"
    assert _race(out, 400, locked=True) == 0
    assert _staging(out) == []
    a, b = ((out / "onnx-int8" / f).read_text() for f in "ab")
    assert a == b                                # one writer's complete folder


def test_without_the_lock_the_same_race_fails(tmp_path):
    """Negative control: the race test can fail (the swap without out_lock breaks)."""
    out = tmp_path / "out"
    errors = _race(out, 400, locked=False)
    leaked = [p for p in out.iterdir() if p.name.startswith(".")]
    if errors == 0 and not leaked:
        pytest.skip("the unlocked race did not trigger on this run (timing)")
    assert errors > 0 or leaked


# --- SIGKILL -------------------------------------------------------------------------

LOOPER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from deployq import io
    out = Path(sys.argv[1])
    i = 0
    while True:
        with io.StagedDir(out / "mcu-int8", results=True) as tmp:
            (tmp / "a").write_text(str(i))
            (tmp / "pad").write_bytes(bytes(200000))
            (tmp / "b").write_text(str(i))
        io.atomic_write(out / "results.json", str(i).encode())
        i += 1
""")


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7, 1.2])
def test_sigkill_while_staging_leaves_out_consistent(tmp_path, delay):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", LOOPER, str(out)], env=ENV,
                         stderr=subprocess.PIPE)
    time.sleep(1.5 + delay)                      # import, then some cycles
    p.send_signal(signal.SIGKILL)
    p.wait()
    target = out / "mcu-int8"
    if target.exists():                          # never half a folder
        assert (target / "a").read_text() == (target / "b").read_text()
    with io.StagedDir(target, results=True) as tmp:   # the next run succeeds
        (tmp / "a").write_text("next")
    assert (target / "a").read_text() == "next"
    assert _staging(out) == [], "stale staging left after the next run"
    assert not (out / "results.json").exists()       # it described the old folder


CONFIG = """
model = "zoo:lenet-digits"
targets = ["onnx-int8", "fpga-fixed"]
samples = 30
calib_samples = 64
attacks = []
profile_repeats = 0
out = "out"
"""


def _run(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deployq", "-q", "run", "-c",
                             str(folder / "deployq.toml")], cwd=folder, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_during_run_then_the_next_run_succeeds(tmp_path):
    (tmp_path / "deployq.toml").write_text(CONFIG)
    out = tmp_path / "out"
    start = time.monotonic()
    first = _run(tmp_path)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    took = time.monotonic() - start
    assert io.check_manifest(out) == []
    for fraction in (0.55, 0.9):
        p = _run(tmp_path)
        time.sleep(took * fraction)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert io.check_manifest(out) == [], f"killed at {fraction:.0%}"
    last = _run(tmp_path)
    _, err = last.communicate(timeout=600)
    assert last.returncode == 0, err
    assert io.check_manifest(out) == [] and (out / "results.json").is_file()
    assert _staging(out) == []
    doc = json.loads((out / "manifest.json").read_text())
    assert sorted(doc["targets"]) == ["fpga-fixed", "onnx-int8"]


def test_manifest_notices_a_replaced_artifact(tmp_path):
    """Negative control for the check above: a changed artifact is reported."""
    target = tmp_path / "onnx-int8"
    target.mkdir()
    (target / "model.onnx").write_bytes(b"one")
    (target / "plan.json").write_text("{}")
    (tmp_path / "results.json").write_text("{}")
    io.write_manifest(tmp_path, {"results": [{"target": "onnx-int8",
                                              "artifact": str(target / "model.onnx")}]})
    assert io.check_manifest(tmp_path) == []
    (target / "model.onnx").write_bytes(b"two")
    assert io.check_manifest(tmp_path) != []


# --- (N, K, 1, 1) logits on every target ------------------------------------------------

CONV_HEAD = """
import torch
from torch import nn


class ConvHead(nn.Module):
    \"\"\"A conv-only digits classifier: logits come out as (N, 10, 1, 1).\"\"\"

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 10, 4)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.c2(self.pool(torch.relu(self.c1(x))))


def make():
    return ConvHead()
"""


@pytest.fixture(scope="module")
def conv_head(tmp_path_factory):
    from deployq import data
    torch.manual_seed(0)
    ds = data.load("digits")
    ns: dict = {}
    exec(CONV_HEAD, ns)
    model = ns["make"]()
    opt = torch.optim.Adam(model.parameters(), 0.02)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    for _ in range(25):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).flatten(1), y).backward()
        opt.step()
    folder = tmp_path_factory.mktemp("convhead")
    (folder / "net.py").write_text(CONV_HEAD)
    torch.save(model.state_dict(), folder / "w.pt")
    return folder, model.eval(), ds


@pytest.fixture(scope="module")
def head_out(conv_head, tmp_path_factory):
    """OUT of the conv-head model evaluated on every available target."""
    from deployq import api, backends
    folder, model, ds = conv_head
    out = tmp_path_factory.mktemp("head-out")
    session = api.open_session(f"{folder / 'net.py'}:make", str(folder / "w.pt"), "digits")
    names = [t.name for t in api.list_targets() if _available(t, backends)]
    x, y = ds.test(150)
    return out, names, api.evaluate(names, session, out, 150)


def test_conv_head_is_squeezed_on_every_target(conv_head, head_out):
    folder, model, ds = conv_head
    out, names, result = head_out
    x, y = ds.test(150)
    with torch.no_grad():
        raw = model(torch.from_numpy(x)).numpy()
    assert raw.shape[1:] == (10, 1, 1)
    truth = float((raw.reshape(len(x), 10).argmax(1) == y).mean())
    assert truth > 0.85
    # negative control: scored without the squeeze, the same logits give a wrong number
    with np.errstate(all="ignore"):
        wrong = float(np.mean(raw.argmax(1) == y))
    assert abs(wrong - truth) > 0.3
    assert {"onnx-int8", "fpga-fixed", "mcu-int8", "tflite-int8"} <= set(names)
    rows = {r["target"]: r["accuracy"] for r in result["results"]}
    assert rows["float"] == pytest.approx(truth)
    for name in names:
        assert abs(rows[name] - truth) <= 0.04, (name, rows)
    for pair in result["pairs"]:
        if pair["identical"] is not None:
            assert pair["max_lsb"] <= 2, pair


def _available(target, backends) -> bool:
    if target.backend == "qemu":
        import shutil
        if shutil.which("qemu-system-arm") is None:
            return False
    try:
        backends.get(target.backend)
        return True
    except Exception:
        return False


def test_conv_head_program_is_squeezed(conv_head, tmp_path):
    from deployq import api
    folder, model, ds = conv_head
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "head.pt2")
    session = api.open_session(str(tmp_path / "head.pt2"), data="digits")
    result = api.evaluate(["onnx-int8"], session, tmp_path / "out", 100)
    float_acc, onnx_acc = (r["accuracy"] for r in result["results"])
    assert float_acc > 0.85 and abs(float_acc - onnx_acc) <= 0.04


# --- third-party output and temp litter ---------------------------------------------------

LITERT = textwrap.dedent("""
    import sys
    import numpy as np
    from deployq.runenv import private_run
    with private_run(verbose=sys.argv[2] == "1"):
        from deployq import api
        ex = api.load_exported("tflite-int8", sys.argv[1])
        api.load_runner(ex).run(np.zeros((2, 1, 8, 8), np.float32))
    print("ran")
""")


def test_native_stderr_is_kept_off_the_terminal(head_out, tmp_path):
    head_out = head_out[0]
    """LiteRT's C++ INFO line (XNNPACK delegate) and temp files stay inside the run;
    with -v (verbose) the same line reaches the terminal (the negative control)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in ENV.items() if not k.startswith("TF_")} | {"TMPDIR": str(tmp)}
    loud, quiet = (subprocess.run([sys.executable, "-c", LITERT, str(head_out), v], env=env,
                                  capture_output=True, text=True, timeout=300)
                   for v in ("1", "0"))
    assert loud.stdout.strip() == "ran" and quiet.stdout.strip() == "ran", loud.stderr
    if "XNNPACK" not in loud.stderr:
        pytest.skip("this LiteRT build prints no delegate line")
    assert quiet.stderr == "", quiet.stderr
    assert list(tmp.iterdir()) == [], "temp litter left in TMPDIR"


def test_quiet_bad_program_is_one_line(tmp_path):
    (tmp_path / "bad.pt2").write_bytes(b"PK\x03\x04 not an archive")
    r = subprocess.run([sys.executable, "-m", "deployq", "-q", "export", "-m",
                        str(tmp_path / "bad.pt2"), "-o", str(tmp_path / "o2")],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("deployq: error:") and not (tmp_path / "o2").exists()
