"""The microcontroller build: the C project compiled with arm-none-eabi-gcc for a
Cortex-M4 and run under qemu-system-arm (MPS2-AN386). Its int8 outputs must equal the
host C runtime's and LiteRT BUILTIN_REF's bit for bit; it must build warning-free
(-Werror, for the Cortex-M4 and the host) with no floating point in the inference
objects; the mcu-qemu runner must score exactly as the mcu-int8 runner."""
import shutil
import subprocess

import numpy as np
import pytest

from deployq import cproject
from deployq.errors import ExportError, TargetError

MISSING = cproject.missing_tools() + [t for t in ("make", "cc") if shutil.which(t) is None]


def test_missing_toolchain_is_one_clear_target_error(monkeypatch):
    monkeypatch.setattr(cproject.shutil, "which", lambda name: None)
    with pytest.raises(TargetError, match="apt-get install gcc-arm-none-eabi "
                                          "libnewlib-arm-none-eabi qemu-system-arm"):
        cproject.require_tools()


needs_toolchain = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (Debian: apt-get install "
                          f"{cproject.PACKAGES})")
N = 20


@pytest.fixture(scope="module", params=["lenet-digits", "dsnet-digits"])
def exported(request, tmp_path_factory):
    """The model exported to mcu-int8 and to mcu-qemu from one session."""
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed")
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    from deployq import api
    session = api.open_session(f"zoo:{request.param}")
    out = tmp_path_factory.mktemp(request.param)
    return session, api.export("mcu-int8", session, out), api.export("mcu-qemu", session, out)


@needs_toolchain
def test_device_outputs_equal_host_runtime_and_litert_reference(exported, tmp_path):
    """Both kernel sets on the device (opt: the DSP-extension kernels) give the host
    reference kernels' and LiteRT BUILTIN_REF's integers; opt in fewer instructions."""
    from deployq import backends
    from deployq.backends import mcu, tflite
    session, host_ex, _ = exported
    x, _ = session.dataset.test(N)
    host = backends.codes(mcu.Runner(host_ex.path, "ref"), x)
    ref = tflite.Runner(host_ex.path.parent / "model.tflite", "reference").run(x)
    ref = host_ex.plan.tensor(session.graph.output).quantize(ref).reshape(N, -1)
    instructions = {}
    for kernels in ("ref", "opt"):
        project = mcu.c_project(host_ex.path, tmp_path / kernels, x, kernels)
        assert f"\nKERNELS ?= {kernels}\n" in (project / "Makefile").read_text()
        cproject.build(project, extra_cflags="-Werror")
        run = cproject.run_test(project)
        assert run["outputs"].shape == (N, host.shape[1])
        np.testing.assert_array_equal(run["outputs"], host)
        np.testing.assert_array_equal(run["outputs"].astype(np.int32), ref)
        instructions[kernels] = run["instructions"].mean()
    assert instructions["opt"] < instructions["ref"] / 1.5, instructions


@needs_toolchain
def test_a_wrong_dsp_kernel_fails_the_device_self_check(exported, tmp_path):
    """Negative control: the opt project with its columns left in natural order (the
    filter still unpacked as {w0, w2}, {w1, w3}) must fail the firmware's comparison."""
    from deployq.backends import mcu
    session, host_ex, _ = exported
    if session.model.spec != "zoo:lenet-digits":
        pytest.skip("one model is enough for the negative control")
    project = mcu.c_project(host_ex.path, tmp_path / "bad", session.dataset.test(N)[0])
    header = project / "runtime" / "dq_arm_dsp.h"
    assert "? k ^ 3 : k;" in header.read_text()
    header.write_text(header.read_text().replace("? k ^ 3 : k;", "? k : k;"))
    cproject.build(project)
    with pytest.raises(ExportError, match="mismatch"):
        cproject.run_test(project)


@needs_toolchain
def test_cortex_m7_build_runs_on_the_m7_board(exported):
    """The DSP kernels compiled for a Cortex-M7 (CPU=cortex-m7) pass the self-check on
    QEMU's MPS2-AN500 (Cortex-M7, the same memory map)."""
    project = exported[2].path.parent / "c-project"
    build = subprocess.run(["make", "-C", str(project), "CPU=cortex-m7", "BUILD=build-m7",
                            "EXTRA_CFLAGS=-Werror", "build-m7/deployq_test.elf"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run(["qemu-system-arm", "-machine", "mps2-an500", "-nographic", "-monitor",
                          "none", "-serial", "none", "-semihosting", "-kernel",
                          str(project / "build-m7" / "deployq_test.elf")],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    text = run.stdout + run.stderr                  # semihosting writes to stderr
    assert run.returncode == 0 and f"\nok {cproject.TEST_COUNT}\n" in text, text[-500:]


@needs_toolchain
def test_builds_warning_free_with_no_float_in_the_inference_path(exported):
    project = exported[2].path.parent / "c-project"
    make = lambda *goals: subprocess.run(["make", "-C", str(project), *goals],
                                         capture_output=True, text=True)
    host = make("host-check")
    assert host.returncode == 0, host.stderr
    objects = sorted((project / "build").glob("runtime/*.o")) + [
        project / "build" / "deployq_model.o", project / "build" / "model_data.o"]
    nm = subprocess.run(["arm-none-eabi-nm", "-u", *map(str, objects)], capture_output=True,
                        text=True, check=True).stdout
    floats = [s for s in nm.split() if s.startswith(("__aeabi_f", "__aeabi_d", "__aeabi_i2f",
                                                     "__aeabi_i2d", "__aeabi_l2", "__aeabi_ul2"))
              or s in ("frexp", "round", "floor", "ldexp", "roundf", "floorf")]
    assert not floats
    assert make("check-float").returncode == 0


@needs_toolchain
def test_float_check_would_catch_double_math(tmp_path):
    """The host-only multiplier helper uses double math; the check must flag it."""
    src = cproject._sources_dir() / "dq_quantize_multiplier.c"
    obj = tmp_path / "qm.o"
    subprocess.run(["arm-none-eabi-gcc", "-std=c99", "-mcpu=cortex-m4", "-mthumb",
                    "-mfloat-abi=soft", "-O2", "-c", str(src), "-o", str(obj)], check=True)
    nm = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True,
                        check=True).stdout.split()
    assert "frexp" in nm and any(s.startswith("__aeabi_d") for s in nm)


@needs_toolchain
def test_qemu_runner_scores_as_the_mcu_int8_runner(exported):
    from deployq import api
    session, host_ex, qemu_ex = exported
    assert (host_ex.path.read_bytes()
            == (qemu_ex.path.parent / "model.dqm").read_bytes())
    x, y = session.dataset.test()
    host, device = api.load_runner(host_ex), api.load_runner(qemu_ex)
    host_logits, device_logits = host.run(x), device.run(x)
    np.testing.assert_array_equal(device_logits, host_logits)
    assert (device_logits.argmax(1) == y).mean() == (host_logits.argmax(1) == y).mean()


@needs_toolchain
def test_footprint_is_measured(exported):
    import json
    fp = json.loads((exported[2].path.parent / "footprint.json").read_text())
    assert 0 < fp["firmware_flash_bytes"] < 200_000
    assert fp["arena_bytes"] > 0 and fp["ram_bytes"] >= fp["arena_bytes"] + fp["stack_bytes"]
    inst = fp["instructions_per_inference"]
    assert 1e4 < inst["min"] <= inst["mean"] <= inst["max"] < 1.01 * inst["min"]


@needs_toolchain
def test_persistent_session_outputs_equal_one_shot_runs(exported):
    """One QEMU process answers batch after batch (including one larger than a pipe's
    64 KiB buffer, and an empty one) with exactly the outputs of a fresh QEMU per
    batch; the comparison sees a difference when there is one (negative control: the
    same rows one sample out of order)."""
    from deployq import api, qemustream
    from deployq.backends import crunner
    session, _, qemu_ex = exported
    x, _ = session.dataset.test()
    runner = api.load_runner(qemu_ex)
    rows = crunner.rows(runner.quantize(x))
    big = np.concatenate([rows] * (1 + (1 << 16) // rows.nbytes))
    one_shot = cproject.run_stream(qemu_ex.path, big, runner.output_bytes)
    batches = [rows[:1], rows[1:7], rows[:0], big, rows[7:]]
    with qemustream.Session(qemu_ex.path, runner.output_bytes) as s:
        pid = s.proc.pid
        outs = [s.run(b) for b in batches]
        assert s.proc.pid == pid                        # one process served them all
    assert s.proc is None and not s.dir.exists()       # closed: QEMU ended, pipes gone
    np.testing.assert_array_equal(outs[3], one_shot)
    np.testing.assert_array_equal(np.concatenate([outs[0], outs[1], outs[4]]),
                                  one_shot[:len(rows)])
    assert outs[2].shape == (0, runner.output_bytes)
    shifted = cproject.run_stream(qemu_ex.path, np.roll(rows, 1, 0), runner.output_bytes)
    assert not np.array_equal(shifted, one_shot[:len(rows)])
    # the runner keeps one session across calls, and close() ends it
    runner.run(x[:3])
    pid = runner.session.proc.pid
    np.testing.assert_array_equal(runner.run_codes(runner.quantize(x)), one_shot[:len(rows)])
    assert runner.session.proc.pid == pid
    runner.close()
    assert runner.session is None


@needs_toolchain
def test_session_reports_a_firmware_that_stops(exported):
    """A program that never answers (the footprint firmware exits without reading
    in.bin) is an ExportError naming it, not a hang."""
    from deployq import qemustream
    from deployq.errors import ExportError
    elf = exported[2].path.parent / "c-project" / "build" / "deployq_footprint.elf"
    with qemustream.Session(elf, 10, timeout=60) as s:
        with pytest.raises(ExportError, match="deployq_footprint.elf under QEMU stopped"):
            s.run(np.zeros((2, 64), np.int8))
        assert s.proc is None               # a failed batch ends the session
        with pytest.raises(ExportError, match="closed"):
            s.run(np.zeros((1, 64), np.int8))
