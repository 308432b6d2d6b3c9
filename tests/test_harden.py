"""deployq harden (quantization-aware training with DQ's penalty and PGD) and deployq
amplify (per-layer perturbation amplification on the runtimes): bad input, the
penalty's gradient, resuming from a checkpoint, and small real runs on the digits data
through the C runtime."""
import json

import numpy as np
import pytest
import torch

from deployq import amplify as A, api, hardening as H, models, targets as T
from deployq.errors import InputError

SMALL = dict(val_samples=40, val_steps=2, steps=2, batch=64, seed=0)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("deployq: error: "), err
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--method", "trades"], "'trades' is not one of"),
    (["--beta", "-0.1"], "--beta must be a number >= 0"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--method", "dq+pgd", "--beta", "0"], "needs --beta > 0"),
    (["--activation-bits", "1"], "activation_bits"),
])
def test_bad_options_one_line_exit_2_nothing_written(run_cli, tmp_path, args, words):
    out = tmp_path / "out"
    code, _, err = run_cli("harden", "-o", out, *args)
    assert code == 2 and words in _one_error_line(err)
    assert not out.exists()


def test_data_without_labels(run_cli, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((20, 1, 8, 8), np.float32))
    out = tmp_path / "out"
    code, _, err = run_cli("harden", "-d", tmp_path / "x.npz", "-o", out)
    assert code == 2 and "'y'" in _one_error_line(err)
    assert not out.exists()


# --- the penalty ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 1, 3, 3), (16, 8, 3, 3), (10, 64), (64, 10)])
def test_penalty_gradient_is_2_beta_w_wtw_minus_i(shape):
    """d/dW (beta/2)||W^T W - I||_F^2 = 2 beta W (W^T W - I) with W = (out, in*k*k) = (m, n),
    and the value is the literal norm minus the constant max(0, n - m)."""
    torch.manual_seed(0)
    w = (torch.randn(shape, dtype=torch.float64) * 0.4).requires_grad_(True)
    beta = 3e-3
    H.penalty([w], beta).backward()
    W = w.detach().reshape(shape[0], -1)
    eye = torch.eye(W.shape[1], dtype=torch.float64)
    expected = 2 * beta * W @ (W.T @ W - eye)
    assert torch.allclose(w.grad.reshape(W.shape), expected, rtol=1e-10, atol=1e-12)
    literal = ((W.T @ W - eye) ** 2).sum()
    assert float(H.orthogonality(W)) == pytest.approx(
        float(literal) - max(0, W.shape[1] - W.shape[0]), rel=1e-10)
    small = (w.detach().reshape(-1)[:15].reshape(3, 5) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(H.orthogonality, (small,))           # wide
    assert torch.autograd.gradcheck(H.orthogonality, (small.detach().T.requires_grad_(),))


def test_orthogonal_weights_have_zero_penalty():
    q, _ = torch.linalg.qr(torch.randn(9, 9, dtype=torch.float64))
    assert float(H.orthogonality(q[:8])) == pytest.approx(0, abs=1e-20)   # rows orthonormal
    assert float(H.orthogonality(2 * q[:8])) > 1


# --- training ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return api.open_session("zoo:lenet-digits")


def _run(session, out, epochs=2, method="dq", on_epoch=None, **kw):
    fresh = api.open_session("zoo:lenet-digits")        # the module trains in place
    session.model.module.load_state_dict(fresh.model.module.state_dict())
    return api.harden("fpga-fixed", method, out, epochs, eps=0.1, beta=kw.pop("beta", 1e-4),
                      session=session, on_epoch=on_epoch, activation_bits=4,
                      **(SMALL | kw))


def test_interrupted_run_resumes_from_its_checkpoint(digits, tmp_path):
    whole = _run(digits, tmp_path / "whole")

    def interrupt(state):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(digits, tmp_path / "cut", on_epoch=interrupt)
    assert not (tmp_path / "cut" / H.WEIGHTS).exists()
    assert (tmp_path / "cut" / H.CHECKPOINT).is_file()
    resumed = _run(digits, tmp_path / "cut")
    assert [r["epoch"] for r in resumed["curves"]] == [1, 2]
    a = models.load("zoo:lenet-digits", str(tmp_path / "whole" / H.WEIGHTS)).module
    b = models.load("zoo:lenet-digits", str(tmp_path / "cut" / H.WEIGHTS)).module
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert whole["curves"][1]["val_clean"] == resumed["curves"][1]["val_clean"]
    with pytest.raises(Exception, match="other settings"):      # a different run: refused
        _run(digits, tmp_path / "cut", beta=2e-4)


def test_tiny_real_run_on_the_c_runtime(digits, tmp_path):
    """dq+pgd for one epoch: the result loads with -w, its plan exports to fpga-fixed,
    the C runtime agrees with the training network, and DQ lowered the penalty
    compared to the same run without it (beta 0, the negative control)."""
    report = _run(digits, tmp_path / "dq", epochs=1, method="dq+pgd", beta=1e-3)
    plain = _run(digits, tmp_path / "plain", epochs=1, method="pgd")
    doc = json.loads((tmp_path / "dq" / H.REPORT).read_text())
    assert doc["config"]["method"] == "dq+pgd" and doc["target"] == "fpga-fixed"
    assert report["final"]["penalty"] < 0.9 * plain["final"]["penalty"]
    assert report["final"]["val_clean"] > 0.5
    session = api.open_session("zoo:lenet-digits", str(tmp_path / "dq" / H.WEIGHTS))
    ex = api.export("fpga-fixed", session, tmp_path / "exp", plan_path=tmp_path / "dq" / H.PLAN)
    assert ex.plan.layers["features.0"].output.bits == 4
    assert ex.plan.input.bits == 8 and ex.plan.tensor(session.graph.output).bits == 8
    net = H.QatNet(session.model.module, session.graph, T.get("fpga-fixed"))
    net.plan = ex.plan
    x, y = session.dataset.test(200)
    with torch.no_grad():
        mine = net(torch.from_numpy(x)).argmax(1).numpy()
    runtime = api.load_runner(ex).run(x).argmax(1)
    assert (mine == runtime).mean() >= 0.95
    assert (runtime == y).mean() > 0.5


# --- amplification ----------------------------------------------------------------

def test_amplify_on_float_and_the_c_runtime(digits, tmp_path):
    session = api.open_session("zoo:lenet-digits")
    r = api.amplify(["mcu-int8", "fpga-fixed"], session, tmp_path, eps=0.1, samples=10,
                    steps=3)
    rows = {row["layer"]: row for row in r["layers"]}
    assert set(rows) == {"input"} | {n.name for n in session.graph.nodes}
    # fpga-fixed holds a flatten before a dense layer channels-last (sum_order hwc): that
    # tensor is not in the IR's element order, so its runner maps it to no layer
    hwc = {n.name for n in session.graph.nodes if n.op == "reshape"}
    for name in ("float", "mcu-int8", "fpga-fixed"):
        rows_measured = [row for row in r["layers"]
                         if not (name == "fpga-fixed" and row["layer"] in hwc)]
        assert all(row[name] is not None and row[name] > 0 for row in rows_measured), name
        # an L-inf step of 0.1 on pixels in [0, 1]: the input moves by 5-60%
        assert 0.05 < rows["input"][name] < 0.6
    table = A.table(r)
    assert table[0] == ("layer", "float", "mcu-int8", "x float", "fpga-fixed", "x float")


def test_amplify_of_identical_inputs_is_zero(digits, tmp_path):
    """Negative control: the same input twice through the runtime's dumps gives 0."""
    ex = api.export("fpga-fixed", digits, tmp_path)
    runner = api.load_runner(ex)
    x, _ = digits.dataset.test(5)
    t = A.target_tensors(runner, ex, digits.graph, x)
    assert set(t) == {"input"} | {n.name for n in digits.graph.nodes if n.op != "reshape"}
    assert all(v == 0 for v in A.relative(t, t).values())
    shifted = A.relative(t, {k: v + 1 for k, v in t.items()})
    assert all(v > 0 for v in shifted.values())


def test_amplify_refuses_a_target_without_dumps(run_cli, tmp_path):
    code, _, err = run_cli("amplify", "-t", "onnx-int8", "-o", tmp_path / "o")
    assert code == 2 and "cannot dump" in _one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_qa_ibp_method_trains_certifiably_and_writes_weights(tmp_path):
    """harden --method qa-ibp runs deployq.qaibp's certified training for the target's
    bits and writes weights every command takes (-w)."""
    from safetensors.torch import load_file
    r = api.harden("fpga-fixed", "qa-ibp", tmp_path, epochs=1, eps=0.02,
                   model="zoo:lenet-digits")
    assert r["method"] == "qa-ibp" and r["config"]["bits"] == 8
    assert 0.5 < r["final"]["val_clean"] <= 1 and 0 <= r["final"]["val_certified"] <= 1
    weights = load_file(str(tmp_path / "weights.safetensors"))
    session = api.open_session("zoo:lenet-digits", str(tmp_path / "weights.safetensors"))
    assert set(weights) == set(session.model.module.state_dict())


def test_qa_ibp_method_refuses_bad_eps_before_work(tmp_path):
    with pytest.raises(InputError, match="eps"):
        api.harden("fpga-fixed", "qa-ibp", tmp_path, epochs=1, eps=0.0)
    assert not any(tmp_path.iterdir())
