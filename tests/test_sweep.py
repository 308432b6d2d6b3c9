"""deployq sweep: grid and validation, bad input (exit 2 before any work), caching and
resume, a killed worker's cell retried, a failing cell reported, and the local and Ray
executors giving the same sweep.json, selected-plan cells (the `plans` axis) against
`deployq select`, and api's one plan-settings helper. Cells are tiny (30 samples, 2 PGD steps) on the
fpga-fixed target (the C runtime: no TensorFlow start-up)."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deployq import stats
import pytest

from deployq import sweep as S, sweepreport as SR

ROOT = Path(__file__).resolve().parents[1]
TINY = """
models = ["zoo:lenet-digits"]
targets = ["fpga-fixed"]
weight_bits = [8, 4]
eps = [0.05, 0.1]
strength = [{name = "fast", steps = 2, restarts = 1, queries = 10}]
samples = 30
"""


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("deployq: error: "), err
    return lines[0]


def _config(tmp_path, text=TINY, name="sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _doc(out) -> dict:
    return json.loads((Path(out) / "sweep.json").read_text())


@pytest.fixture(scope="module")
def local_out(tmp_path_factory):
    """The tiny sweep run once with 2 local workers (a subprocess, as a user runs it)."""
    folder = tmp_path_factory.mktemp("sweep")
    cfg = _config(folder)
    out = folder / "out"
    p = _cli("sweep", "-c", cfg, "-o", out, "-j", "2")
    assert p.returncode == 0, p.stderr
    return out, cfg


def _cli(*args, env=None, **kw):
    env = (env or os.environ) | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "deployq", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600, **kw)


# --- grid and validation (no runtime) -----------------------------------------------------

def test_grid_lists_invalid_cells_and_hashes_the_settings():
    cfg = {"targets": ["fpga-fixed", "onnx-int8"], "activation_bits": [8, 4],
           "weight_bits": [8], "eps": [0.1], "plans": [{"budget": "4bits"}],
           "strength": [{"name": "fast", "steps": 2}]}
    sweep = S.prepare(cfg)
    cells = sweep.cells()
    # 2 targets x (1 width + 1 plan) x 2 activation widths; onnx-int8 executes 8 bits only
    assert len(cells) + len(sweep.skipped) == 8
    assert [s["axes"]["target"] for s in sweep.skipped] == ["onnx-int8", "onnx-int8"]
    assert all("activation_bits=4" in s["reason"] for s in sweep.skipped)
    assert len({c.id for c in cells}) == len(cells)
    assert [c.id for c in S.prepare(cfg).cells()] == [c.id for c in cells]   # stable
    other = S.prepare(cfg | {"samples": 50}).cells()
    assert not {c.id for c in other} & {c.id for c in cells}   # samples changes every id


def test_checking_a_zoo_grid_imports_no_torch():
    """The sweep process checks the grid while its workers import torch: it leaves the
    cores to them (docs/sweep.md). Negative control: loading the model does import it."""
    check = ("import sys; from deployq import sweep as S; "
             "s = S.prepare({'models': ['zoo:lenet-digits'], 'targets': ['fpga-fixed', "
             "'onnx-int8', 'tflite-int8'], 'weight_bits': [8, 4], 'eps': [0.1], "
             "'plans': [{'budget': '4bits'}]}); assert len(s.cells()) == 9; THEN; "
             "print('torch' in sys.modules)")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    for then, imported in (("pass", "False"),
                           ("import deployq.models as M; M.load('zoo:lenet-digits')", "True")):
        out = subprocess.run([sys.executable, "-c", check.replace("THEN", then)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == imported, out.stderr


@pytest.mark.parametrize("args, config, words", [
    ((), "eps = []", "eps"),
    (("-m", "zoo:nope"), "", "unknown zoo model"),
    (("-t", "nope"), "", "unknown target"),
    ((), 'plans = [{method = "bogus", budget = "4bits"}]', "bogus"),
    (("--weight-bits", "12"), "", "outside every target"),
    (("--weight-bits", "8,8"), "", "more than once"),
    ((), "colour = 1", "unknown keys"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(run_cli, tmp_path, args, config, words):
    cfg = _config(tmp_path, config)
    out = tmp_path / "out"
    code, _, err = run_cli("sweep", "-c", cfg, "-o", out, *args)
    assert code == 2 and words in _one_error_line(err)
    assert not out.exists()


def test_unreachable_ray_address_fails_before_any_work(tmp_path):
    pytest.importorskip("ray", reason="Ray not installed (pip install 'deployq[ray]')")
    out = tmp_path / "out"
    p = _cli("sweep", "-c", _config(tmp_path), "-o", out, "--executor", "ray",
             "--address", "127.0.0.1:9")
    assert p.returncode == 2 and "Ray at 127.0.0.1:9" in _one_error_line(p.stderr)
    assert not out.exists()


def test_statistics_helpers():
    lo, hi = stats.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)     # Wilson (1927), tabulated
    a = [True] * 10 + [False] * 10
    b = [False] * 10 + [False] * 10
    assert SR.mcnemar(a, b) == pytest.approx(2 / 1024)           # 10 gains, no loss
    assert SR.mcnemar(a, a) == 1.0                               # negative control
    big = np.arange(200) < 100                  # numpy masks (as the report passes them)
    assert SR.mcnemar(big, np.zeros(200, bool)) == pytest.approx(2 * 0.5 ** 100)
    low, high = SR.paired_interval(a, b)
    assert 0 < low < 0.5 < high <= 1


# --- running: local pool, cache, resume -------------------------------------------------------

def test_local_sweep_writes_every_view(local_out):
    out, _ = local_out
    doc = _doc(out)
    assert [c["status"] for c in doc["cells"]] == ["ok"] * 4
    assert len({c["id"] for c in doc["cells"]}) == 4
    assert all(0 < c["cpu_seconds"] <= c["seconds"] + 1 for c in doc["cells"])
    axes = [(c["axes"]["weight_bits"], c["axes"]["eps"]) for c in doc["cells"]]
    assert axes == [(8, 0.05), (8, 0.1), (4, 0.05), (4, 0.1)]
    cell = doc["cells"][2]
    result = cell["result"]                     # exactly what `deployq eval` returns
    assert [r["target"] for r in result["results"]] == ["float", "fpga-fixed"]
    assert result["robustness"]["eps"] == [0.05] and result["robustness"]["steps"] == 2
    plan = json.loads((out / Path(result["results"][1]["artifact"]).parent
                       / "plan.json").read_text())
    assert {lp["weight"]["bits"] for lp in plan["layers"].values() if "weight" in lp} == {4}
    from deployq.stats import unpack
    def unpacked(text, n):
        return np.array(unpack(text, n), bool)
    for c in doc["cells"]:                      # the per-sample masks give the accuracies
        rob = c["result"]["robustness"]
        for t in rob["targets"]:
            mask = unpacked(t["eps"][0]["robust_mask"], rob["samples"])
            assert mask.mean() == pytest.approx(t["eps"][0]["robust"])
            assert unpacked(t["clean_mask"], rob["samples"]).mean() == pytest.approx(t["clean"])
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 8 and {r["subject"] for r in rows} == {"float", "fpga-fixed"}
    md = (out / "report.md").read_text()
    assert "| w4 |" in md and "McNemar" in md
    assert "<svg" in (out / "report.html").read_text()
    assert len(list(out.glob("plot-*.svg"))) == 1      # one panel: one model, one target


def test_rerun_is_cached_and_resume_computes_only_the_missing(local_out, tmp_path):
    out, cfg = local_out
    first = _doc(out)
    p = _cli("sweep", "-c", cfg, "-o", out, "-j", "2")
    assert p.returncode == 0, p.stderr
    again = _doc(out)
    assert again["run"]["computed"] == 0 and again["run"]["cached"] == 4
    assert S.without_timings(again) == S.without_timings(first)
    for c in first["cells"][1::2]:                   # as if killed half-way
        (out / "cells" / c["id"] / "cell.json").unlink()
    p = _cli("sweep", "-c", cfg, "-o", out, "-j", "1")
    resumed = _doc(out)
    assert resumed["run"]["computed"] == 2 and resumed["run"]["cached"] == 2
    assert S.without_timings(resumed) == S.without_timings(first)


def _sweep_killing_a_worker(tmp_path, *executor, wait: float = 120):
    """A 2-cell sweep with 1 worker whose worker is killed (SIGKILL) while it runs the
    first cell (its worker.pid exists only during run_cell). Returns (killed cell id,
    process, stderr, out)."""
    out = tmp_path / "out"
    cfg = _config(tmp_path, TINY.replace("eps = [0.05, 0.1]", "eps = [0.1]"))
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "deployq", "sweep", "-c", str(cfg),
                             "-o", str(out), "-j", "1", *executor], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline, killed = time.time() + wait, None
    while killed is None and time.time() < deadline and proc.poll() is None:
        for pid_file in out.glob("cells/*/worker.pid"):
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            assert pid != proc.pid
            os.kill(pid, signal.SIGKILL)                     # mid-cell
            killed = pid_file.parent.name
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed, "no worker was seen running a cell"
    return killed, proc, stderr, out


def _each_cell_once(out) -> None:
    doc = _doc(out)
    assert [c["status"] for c in doc["cells"]] == ["ok", "ok"]
    assert sorted(c["id"] for c in doc["cells"]) == sorted(
        p.name for p in (out / "cells").iterdir() if (p / "cell.json").is_file())
    assert doc["run"]["computed"] == 2


def test_killed_worker_cell_is_retried_and_counted_once(tmp_path):
    killed, proc, stderr, out = _sweep_killing_a_worker(tmp_path)
    assert proc.returncode == 0, stderr
    assert f"running cell {killed} died" in stderr and "retrying" in stderr
    _each_cell_once(out)


def test_failing_cell_is_reported_and_the_sweep_goes_on(tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    text = (ROOT / "targets" / "fpga-fixed.toml").read_text()
    (targets / "fpga-acc4.toml").write_text(
        text.replace('name = "fpga-fixed"', 'name = "fpga-acc4"')
            .replace("acc_bits = 32", "acc_bits = 4"))              # outside 8..32
    cfg = _config(tmp_path, TINY.replace('targets = ["fpga-fixed"]',
                                         'targets = ["fpga-fixed", "fpga-acc4"]')
                  .replace("weight_bits = [8, 4]", "weight_bits = [8]")
                  .replace("eps = [0.05, 0.1]", "eps = [0.1]")
                  + f'targets_dir = "{targets}"\n')
    out = tmp_path / "out"
    p = _cli("sweep", "-c", cfg, "-o", out, "-j", "1")
    assert p.returncode == 1
    doc = _doc(out)
    status = {c["axes"]["target"]: c for c in doc["cells"]}
    assert status["fpga-fixed"]["status"] == "ok"
    assert status["fpga-acc4"]["status"] == "failed"
    assert "acc_bits=4" in status["fpga-acc4"]["error"]
    assert "acc_bits=4" in (out / "report.md").read_text()


# --- Ray ----------------------------------------------------------------------------------

def test_ray_and_local_give_the_same_sweep_json(local_out, tmp_path):
    pytest.importorskip("ray", reason="Ray not installed (pip install 'deployq[ray]')")
    out, cfg = local_out
    ray_out = tmp_path / "ray"
    p = _cli("sweep", "-c", cfg, "-o", ray_out, "--executor", "ray", "-j", "2")
    assert p.returncode == 0, p.stderr
    local, ray = _doc(out), _doc(ray_out)
    assert ray["run"]["executor"] == "ray" and ray["run"]["computed"] == 4
    assert S.without_timings(ray) == S.without_timings(local)
    # the comparison has teeth: the cells differ from one another in their masks
    masks = {t["eps"][0]["robust_mask"] for c in local["cells"]
             for t in c["result"]["robustness"]["targets"]}
    assert len(masks) > 2


@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster as `ray start --head` makes it, with token authentication
    (its own token, not the user's), in a session of its own so that exactly its
    processes end afterwards, and its own temp dir (a short path: Ray's sockets are in
    it; not /tmp/ray, where ray.init() would find it). Yields (address, the environment
    without the token, the environment with it)."""
    pytest.importorskip("ray", reason="Ray not installed (pip install 'deployq[ray]')")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token, temp = os.urandom(16).hex(), tempfile.mkdtemp(prefix="dqray-", dir="/tmp")
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    auth = plain | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head",
                             "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], env=auth,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, "ray start failed"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}", plain, auth
    finally:
        os.killpg(head.pid, signal.SIGKILL)     # SIGTERM: `ray start` drains for 30 s
        head.wait(30)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_cluster_wants_its_token_then_gives_the_local_sweep_json(local_out, tmp_path,
                                                                     ray_cluster):
    """--address of a running cluster: without the cluster's token one line, exit 2,
    nothing written; with it (RAY_AUTH_MODE=token) and -j 1 the same sweep.json as the
    local pool. (That -j 1 runs one cell at a time of the cluster's 2 CPUs is measured
    by tools/bench_sweep.py --ray-cluster: 1 worker against 2.)"""
    address, plain, auth = ray_cluster
    out, cfg = local_out
    refused = tmp_path / "refused"
    p = _cli("sweep", "-c", cfg, "-o", refused, "--executor", "ray", "--address", address,
             env=plain)
    assert p.returncode == 2 and "RAY_AUTH_MODE=token" in _one_error_line(p.stderr)
    assert not refused.exists()
    ray_out = tmp_path / "cluster"
    p = _cli("sweep", "-c", cfg, "-o", ray_out, "--executor", "ray", "--address", address,
             "-j", "1", env=auth)
    assert p.returncode == 0, p.stderr
    doc = _doc(ray_out)
    assert doc["run"]["workers"] == 1 and doc["run"]["computed"] == 4
    assert S.without_timings(doc) == S.without_timings(_doc(out))
    # the tasks run in the cluster's own workers (no job runtime_env, which would start
    # new ones), with one thread in every thread pool once one_thread has run
    probe = subprocess.run([sys.executable, "-c", CLUSTER_PROBE, address], env=auth,
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    for runtime_env, pools in json.loads(probe.stdout):
        assert not runtime_env and pools and all(n == 1 for _, n in pools), pools


CLUSTER_PROBE = """
import json, sys
import ray
from deployq import sweep as S
S.connect_ray(None, sys.argv[1])
def probe():
    import numpy                                  # noqa: F401  (its BLAS)
    from threadpoolctl import threadpool_info
    S.one_thread()
    return (dict(ray.get_runtime_context().runtime_env),
            [(p["internal_api"], p["num_threads"]) for p in threadpool_info()])
print(json.dumps(ray.get([ray.remote(num_cpus=1)(probe).remote() for _ in range(2)])))
"""


def test_ray_cells_go_to_the_warmed_worker_when_j_is_below_the_cpus(tmp_path):
    """-j 1 on a 2-CPU Ray: the cell runs in the worker the warm task prepared, so one
    worker process imports torch, not two (a cell submitted beside the warm task would
    take the other idle worker and import torch itself)."""
    pytest.importorskip("ray", reason="Ray not installed (pip install 'deployq[ray]')")
    p = subprocess.run([sys.executable, "-c", WARM_PROBE, str(tmp_path)], capture_output=True,
                       text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    outcomes, with_torch = json.loads(p.stdout)
    assert [o["id"] for o in outcomes] == ["a", "b"]    # (jobs without axes: errors)
    assert with_torch == 1


WARM_PROBE = """
import json, os, sys
from pathlib import Path
import ray
from deployq import sweep as S
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
pool = S.RayPool(1, None)
pool.warm()
outcomes = []
pool.run([{"id": i, "dir": str(Path(sys.argv[1]) / i)} for i in "ab"], outcomes.append)
def descendants(root):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(d))
    todo, seen = [root], []
    while todo:
        seen += (kids := children.get(todo.pop(), []))
        todo += kids
    return seen
def has_torch(pid):
    try:
        return "libtorch" in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False
print(json.dumps([outcomes, sum(map(has_torch, descendants(os.getpid())))]))
ray.shutdown()
"""


def test_one_thread_resizes_thread_pools_loaded_before_it():
    """A process that loaded numpy's BLAS (and torch's OpenMP) with several threads: after
    one_thread every pool has one (the control: before it, more than one where the
    machine has more than one CPU)."""
    script = ("import json\n"
              "from threadpoolctl import threadpool_info\n"
              "import numpy, torch\n"
              "from deployq.runenv import one_thread\n"
              "before = [p['num_threads'] for p in threadpool_info()]\n"
              "one_thread()\n"
              "print(json.dumps([before, [p['num_threads'] for p in threadpool_info()]]))\n")
    env = {k: v for k, v in os.environ.items() if k not in S.THREAD_VARS}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    before, after = json.loads(p.stdout)
    assert after and all(n == 1 for n in after)
    if (os.cpu_count() or 1) > 1:
        assert max(before) > 1


def test_killed_ray_worker_cell_is_rerun_by_ray_and_counted_once(tmp_path):
    """Ray re-runs the task of a worker killed mid-cell (max_retries): the sweep ends
    with exit 0 and each cell once."""
    pytest.importorskip("ray", reason="Ray not installed (pip install 'deployq[ray]')")
    _, proc, stderr, out = _sweep_killing_a_worker(tmp_path, "--executor", "ray", wait=300)
    assert proc.returncode == 0, stderr
    _each_cell_once(out)


def test_local_ray_workers_get_one_thread_and_the_sweep_priority():
    """connect_ray's local instance: the workers that run tasks have THREAD_VARS = 1
    without a job runtime_env (so Ray's prestarted workers serve the tasks), run at this
    process's niceness (Ray's default adds 15), and this process's environment is as it
    was."""
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'deployq[ray]')")
    if ray.is_initialized():
        pytest.skip("Ray already initialised in this process")
    names = [*S.THREAD_VARS, *S.RAY_LOCAL_ENV]
    before = {v: os.environ.get(v) for v in names}
    S.connect_ray(2, None)
    try:
        assert {v: os.environ.get(v) for v in names} == before
        probe = ray.remote(num_cpus=1)(lambda: (
            os.nice(0), {v: os.environ.get(v) for v in S.THREAD_VARS},
            dict(ray.get_runtime_context().runtime_env)))
        seen = ray.get([probe.remote() for _ in range(4)])
    finally:
        ray.shutdown()
    assert {nice for nice, _, _ in seen} == {os.nice(0)}
    assert all(env == {v: "1" for v in S.THREAD_VARS} for _, env, _ in seen)
    assert all(not runtime_env for _, _, runtime_env in seen)


def test_eval_weight_bits_outside_the_target_is_one_line(run_cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "-t", "onnx-int8", "--weight-bits", "9", "-o", out)
    assert code == 2 and "weight_bits=9" in _one_error_line(err)
    assert not out.exists()


# --- selected plans, one plan-settings helper ---------------------------------------------

def test_plan_cells_select_as_deployq_select_does(tmp_path):
    """A plan cell's plan is api.select's (`deployq select`), made once per worker and
    shared by the plan's eps cells; hessian: the cheap method (about 4 CPU-s)."""
    from deployq import api
    cfg = _config(tmp_path, TINY.replace("weight_bits = [8, 4]", "weight_bits = []")
                  + 'plans = [{method = "hessian", budget = "5bits"}]\n')
    out = tmp_path / "out"
    p = _cli("sweep", "-c", cfg, "-o", out, "-j", "1")
    assert p.returncode == 0, p.stderr
    doc = _doc(out)
    assert [(c["status"], c["axes"]["plan"], c["axes"]["weight_bits"]) for c in doc["cells"]] \
        == [("ok", "hessian@5bits", None)] * 2
    plans = [json.loads((out / c["result"]["results"][1]["plan"]).read_text())
             for c in doc["cells"]]
    assert plans[0] == plans[1]                              # one selection, two eps cells
    _, direct = api.select("fpga-fixed", "5bits", "hessian", 0.1,
                           api.open_session("zoo:lenet-digits"), tmp_path / "direct")
    bits = {n: lp.weight.bits for n, lp in direct.layers.items() if lp.weight is not None}
    assert len(set(bits.values())) > 1           # mixed widths: not a uniform export
    assert {n: lp["weight"]["bits"] for n, lp in plans[0]["layers"].items()
            if lp.get("weight")} == bits
    exported = json.loads((out / Path(doc["cells"][0]["result"]["results"][1]["artifact"])
                           .parent / "plan.json").read_text())
    assert {n: lp["weight"]["bits"] for n, lp in exported["layers"].items()
            if lp.get("weight")} == bits                     # eval ran that plan


def test_one_plan_settings_helper_serves_export_and_harden():
    from deployq import api, targets as T
    from deployq.errors import InputError, TargetError
    tgt = T.get("fpga-fixed")
    assert api.plan_settings(tgt, {"weight_bits": 4, "activation_bits": None}) == \
        {"weight_bits": 4}
    config = api.bits_config(tgt, 4, None, None, "logits")
    keep = {"activation_bits": tgt.defaults["activation_bits"]}
    assert config.default == {"activation_bits": 4}
    assert config.by_type == {"input": keep} and config.by_name == {"logits": keep}
    assert api.bits_config(tgt, 4).by_name == {}
    assert api.plan_config(tgt, {"weight_bits": 4}).by_type == {}   # eval: every layer
    with pytest.raises(TargetError, match="weight_bits=12"):
        api.bits_config(tgt, weight_bits=12)
    with pytest.raises(TargetError, match="weight_bits=12"):
        api.plan_settings(tgt, {"weight_bits": 12})
    with pytest.raises(InputError, match="colour"):
        api.plan_settings(tgt, {"colour": 1})


def test_eval_rounding_sets_fpga_fixed_and_leaves_the_int8_targets(run_cli, tmp_path):
    from deployq import api, targets as T
    assert api.plan_settings(T.get("fpga-fixed"), {"rounding": "trn"}) == {"rounding": "trn"}
    assert api.plan_settings(T.get("mcu-int8"), {"rounding": "trn"}) == {}
    out = tmp_path / "out"
    code, _, err = run_cli("eval", "-t", "fpga-fixed,mcu-int8", "--rounding", "trn",
                           "-n", "20", "-o", out)
    assert code == 0, err
    modes = {t: {lp["settings"]["rounding"] for lp in
                 json.loads((out / t / "plan.json").read_text())["layers"].values()}
             for t in ("fpga-fixed", "mcu-int8")}
    assert modes == {"fpga-fixed": {"trn"}, "mcu-int8": {"half_away"}}
    code, _, err = run_cli("eval", "-t", "fpga-fixed", "--rounding", "floor", "-o",
                           tmp_path / "bad")
    assert code == 2 and "floor" in _one_error_line(err)
    assert not (tmp_path / "bad").exists()
