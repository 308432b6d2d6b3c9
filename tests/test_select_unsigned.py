"""`deployq select` on fpga-fixed with [options] relu_unsigned = true (docs/selection.md,
"Unsigned activations"): the selected plan stores post-ReLU tensors on the unsigned grid
(zero point -2^(b-1)), exports, and the C runtime runs it bit-exact with fixedpoint
and the mirror; activation choices stop at 7 bits (an unsigned b-bit tensor needs b + 1
of the runtime's at most 8 bits), and a selection that would give 8-bit unsigned
tensors is refused with one line. Negative controls: the signed target's plan has zero
points 0 and takes 8 bits where the unsigned one takes 7."""
import numpy as np
import pytest

from deployq import backends, plan as P, selection as S, targets as T
from deployq.backends import fpga
from deployq.errors import InputError
from tests.unit.test_fxmirror import _check_exact

RND = {"rounding": "rnd"}
UNSIGNED_HEADS = ("features.0", "features.4", "classifier.1")     # lenet's ReLU layers


@pytest.fixture
def unsigned_dir(tmp_path):
    text = T.get("fpga-fixed").path.read_text()
    assert "relu_unsigned = false" in text
    d = tmp_path / "targets"
    d.mkdir()
    (d / "fpga-fixed.toml").write_text(text.replace("relu_unsigned = false",
                                                    "relu_unsigned = true", 1))
    return d


def test_selected_unsigned_plan_exports_and_runs_on_the_c_runtime(
        run_cli, tmp_path, unsigned_dir, digits_session):
    code, out, err = run_cli("-q", "select", "-m", "zoo:lenet-digits", "--targets-dir",
                             unsigned_dir, "-b", "8bits", "--min-bits", "8", "--clips", "1",
                             "--method", "noise", "--activation-budget", "4.5bits",
                             "--rounding", "rnd", "-o", tmp_path / "sel")
    assert code == 0, err
    path = tmp_path / "sel" / "fpga-fixed" / "plan.json"
    plan = P.QuantPlan.load(path)
    acts = plan.provenance["selection"]["activation_bits"]
    assert set(acts) == set(UNSIGNED_HEADS) and max(acts.values()) <= 7
    for name in UNSIGNED_HEADS:                    # the unsigned grid, at the chosen bits
        b = plan.layers[name].output.bits
        assert b == acts[name] and int(plan.layers[name].output.zero_point[0]) == -2 ** (b - 1)
    assert int(plan.layers["classifier.4"].output.zero_point[0]) == 0    # signed logits
    assert plan.input.zero_point[0] == 0
    # exported by the CLI, run on the C runtime: accurate, and its codes are the
    # fixed-point model's and the mirror's
    code, _, err = run_cli("-q", "export", "-t", "fpga-fixed", "-m", "zoo:lenet-digits", "--targets-dir",
                           unsigned_dir, "--plan", path, "-o", tmp_path / "exp")
    assert code == 0, err
    target = T.get("fpga-fixed", unsigned_dir)
    x, y = digits_session.dataset.test(120)
    runner = fpga.load(tmp_path / "exp" / "fpga-fixed" / fpga.ARTIFACT, target)
    assert np.mean(backends.codes(runner, x).argmax(1) == y) > 0.85
    _check_exact(digits_session.graph, plan, target, x, tmp_path / "check")
    # negative control: a plan at the same activation budget on the signed target
    # stores zero points 0
    signed = S.select(digits_session, "fpga-fixed", "8bits", "uniform", 0.1, RND,
                      activation_budget="4.5bits")
    assert not any(int(v.output.zero_point[0]) for v in signed.layers.values())


def test_activation_choices_stop_at_7_bits(digits_session, unsigned_dir):
    """An 8-bit budget: the uniform plan takes 8 bits on the signed target (negative
    control), 7 on the unsigned one."""
    def acts(targets_dir):
        plan = S.select(digits_session, "fpga-fixed", "8bits", "uniform", 0.1, RND,
                        targets_dir=targets_dir, activation_budget="8bits")
        return set(plan.provenance["selection"]["activation_bits"].values())
    assert acts(None) == {8} and acts(unsigned_dir) == {7}


def test_select_refuses_8_bit_unsigned_activations(run_cli, tmp_path, unsigned_dir,
                                                   digits_session):
    """Without an activation budget every tensor would get the default 8 bits: one
    line, exit 2, nothing written, before calibrating."""
    code, _, err = run_cli("-q", "select", "-m", "zoo:lenet-digits", "--targets-dir",
                           unsigned_dir, "-b", "4bits", "-o", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("deployq: error: fpga-fixed has relu_unsigned = true and 8-bit")
    assert "--activation-budget" in err and not (tmp_path / "o").exists()
    target = T.get("fpga-fixed", unsigned_dir)
    with pytest.raises(InputError, match="at most 7 bits"):
        S.select(digits_session, target, "4bits", "uniform")
    # a default within 7 bits is accepted
    S.check_unsigned(digits_session.graph, target, {"activation_bits": 7}, None)
