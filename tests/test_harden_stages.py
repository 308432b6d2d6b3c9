"""deployq harden --stages: the epochs in N stages, the activation grids recalibrated
before each stage after the first. The contract: a 2-stage run equals a run followed by
a second run from its weights (`harden -w OUT/weights.safetensors`), bit for bit, and
resumes into the right stage. Small real runs on the digits data."""
import json

import pytest

from deployq import api, hardening as H

SMALL = dict(val_samples=40, val_steps=2, steps=2, batch=64, seed=0)
BETA = 1e-2         # shrinks the activations enough that stage 2's grids differ


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("deployq: error: "), err
    return lines[0]


@pytest.mark.parametrize("stages", ["0", "-1"])
def test_stages_below_one_one_line_exit_2_nothing_written(run_cli, tmp_path, stages):
    out = tmp_path / "out"
    code, _, err = run_cli("harden", "-o", out, "--stages", stages)
    assert code == 2 and "--stages must be an integer of at least 1" in _one_error_line(err)
    assert not out.exists()


def _run(out, weights=None, on_epoch=None, stages=1):
    session = api.open_session("zoo:lenet-digits", weights)
    return api.harden("fpga-fixed", "dq", out, 2, eps=0.1, beta=BETA, session=session,
                      on_epoch=on_epoch, activation_bits=4, stages=stages, **SMALL)


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    """Stage 1 and stage 2 as two harden runs, the second from the first's weights."""
    d = tmp_path_factory.mktemp("separate")
    _run(d / "s1")
    _run(d / "s2", str(d / "s1" / H.WEIGHTS))
    return d


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    d = tmp_path_factory.mktemp("staged")
    _run(d, stages=2)
    return d


def _same_outputs(a, b) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in (H.WEIGHTS, H.PLAN))


def test_two_stages_equal_two_separate_runs_bit_for_bit(separate, staged):
    assert _same_outputs(staged, separate / "s2")
    doc = json.loads((staged / H.REPORT).read_text())
    assert doc["stages"] == 2
    s1 = json.loads((separate / "s1" / H.REPORT).read_text())
    s2 = json.loads((separate / "s2" / H.REPORT).read_text())
    per_stage = doc["per_stage"]
    assert [len(s["curves"]) for s in per_stage] == [2, 2]
    for stage, (mine, run) in enumerate(zip(per_stage, (s1, s2)), 1):
        assert mine["plan"] == json.loads((separate / f"s{stage}" / H.PLAN).read_text())
        for a, b in zip(mine["curves"], run["curves"]):
            assert a["stage"] == stage
            assert {k: a[k] for k in ("loss", "val_clean", "val_robust", "penalty")} == \
                   {k: b[k] for k in ("loss", "val_clean", "val_robust", "penalty")}
    assert [r["stage"] for r in doc["curves"]] == [1, 1, 2, 2]
    assert doc["final"]["val_clean"] == s2["final"]["val_clean"]
    assert doc["config"]["epochs"] == 2          # per stage
    # the grids moved between the stages (else the recalibration proves nothing)
    grids = [{k: v["output"] for k, v in s["plan"]["layers"].items()} for s in per_stage]
    assert grids[0] != grids[1]


def test_stage_two_without_recalibration_differs(separate, tmp_path, monkeypatch):
    """Negative control: stage 2 kept on stage 1's grids ends elsewhere."""
    calibrate = H.QatNet.calibrate

    def once(self, x):
        return self.plan if self.plan is not None else calibrate(self, x)
    monkeypatch.setattr(H.QatNet, "calibrate", once)
    _run(tmp_path, stages=2)
    assert (tmp_path / H.WEIGHTS).read_bytes() != (separate / "s2" / H.WEIGHTS).read_bytes()
    assert (tmp_path / H.PLAN).read_bytes() != (separate / "s2" / H.PLAN).read_bytes()


@pytest.mark.parametrize("at", [(0, 2), (1, 1)], ids=["end-of-stage-1", "mid-stage-2"])
def test_interrupted_two_stage_run_resumes_into_the_right_stage(staged, tmp_path, at):
    def interrupt(state):
        if (state.stage, state.epoch) == at:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, on_epoch=interrupt, stages=2)
    assert not (tmp_path / H.WEIGHTS).exists()
    resumed = _run(tmp_path, stages=2)
    assert [(r["stage"], r["epoch"]) for r in resumed["curves"]] == [(1, 1), (1, 2),
                                                                     (2, 1), (2, 2)]
    assert _same_outputs(tmp_path, staged)
    assert (tmp_path / H.REPORT).read_text().count('"val_clean"') == \
        (staged / H.REPORT).read_text().count('"val_clean"')


def test_a_one_stage_checkpoint_is_not_resumed_as_two_stages(tmp_path):
    def interrupt(state):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, on_epoch=interrupt)
    with pytest.raises(Exception, match="different stages"):
        _run(tmp_path, stages=2)


def test_a_two_stage_checkpoint_is_not_resumed_as_one_stage(tmp_path):
    def interrupt(state):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, on_epoch=interrupt, stages=2)
    with pytest.raises(Exception, match="different stages"):
        _run(tmp_path)


def test_stages_refused_before_work(tmp_path):
    """qa-ibp has no activation grids to recalibrate; a non-integer count is refused."""
    from deployq.errors import InputError
    with pytest.raises(InputError, match="--stages applies to dq, pgd and dq"):
        api.harden("fpga-fixed", "qa-ibp", tmp_path / "q", epochs=1, stages=2)
    with pytest.raises(InputError, match="--stages must be an integer"):
        api.harden("fpga-fixed", "dq", tmp_path / "d", epochs=1, stages=1.5)
    assert not any(tmp_path.iterdir())
