"""The attack functions on a small float model (no runtime): budgets, bounds, strength,
seeding, and the honesty checks on a gradient-masked model."""
import numpy as np
import pytest
import torch

from deployq import attacks as A, robustness as R
from deployq.errors import InputError


@pytest.fixture(scope="module")
def lenet():
    from deployq import data, zoo
    ds = data.load("digits")
    x, y = ds.test(120)
    return zoo.load("lenet-digits").eval(), torch.from_numpy(x), torch.from_numpy(y).long()


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_fgsm_stays_in_the_box_and_lowers_accuracy(lenet):
    model, x, y = lenet
    adv = A.fgsm(model, x, y, 0.1)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert _acc(model, adv, y) < _acc(model, x, y) - 0.3


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_respects_its_norm_and_beats_fgsm(lenet, norm, eps):
    model, x, y = lenet
    adv = A.pgd(model, x, y, eps, steps=20, norm=norm)
    d = (adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert size.max() <= eps + 1e-5 and adv.min() >= 0 and adv.max() <= 1
    if norm == "linf":
        assert _acc(model, adv, y) <= _acc(model, A.fgsm(model, x, y, eps), y)


def test_pgd_is_seeded_and_accuracy_falls_with_eps(lenet):
    model, x, y = lenet
    same = A.pgd(model, x, y, 0.1, steps=5, seed=3), A.pgd(model, x, y, 0.1, steps=5, seed=3)
    assert torch.equal(*same)
    accs = [_acc(model, A.pgd(model, x, y, e, steps=10), y) for e in (0.0, 0.05, 0.1, 0.2)]
    assert accs == sorted(accs, reverse=True) and accs[-1] < 0.05, accs


def test_square_attack_only_queries_and_stays_in_the_box(lenet):
    model, x, y = lenet
    calls = []

    def run(v):
        calls.append(len(v))
        with torch.no_grad():
            return model(torch.from_numpy(v)).numpy()
    xn, yn = x.numpy(), y.numpy()
    adv = A.square_attack(run, xn, yn, 0.2, queries=50, seed=1)
    assert np.abs(adv - xn).max() <= 0.2 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert len(calls) <= 51
    assert (run(adv).argmax(1) == yn).mean() < (run(xn).argmax(1) == yn).mean() - 0.3
    np.testing.assert_array_equal(adv, A.square_attack(run, xn, yn, 0.2, 50, seed=1))


class RoundedInput(torch.nn.Module):
    """A float model behind a non-differentiable rounding of its input to 4 levels:
    its gradient is zero almost everywhere, so gradient attacks see nothing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


def test_gradient_masking_fires_the_flags(lenet):
    model, x, y = lenet
    masked = RoundedInput(model)

    def run(v):
        with torch.no_grad():
            return masked(torch.from_numpy(v)).numpy()
    cfg = R.Config(["fgsm", "pgd"], [0.1, 0.3], ["transfer", "blackbox"], steps=10,
                   queries=200, samples=None)
    entry = R.evaluate(R.Subject("masked", run, {"transfer": masked}), x.numpy(),
                       y.numpy(), cfg)
    checks = {f["check"] for f in entry["flags"]}
    assert {"blackbox_beats_whitebox", "large_eps_not_zero"} <= checks, entry


def test_an_honest_model_raises_no_flag(lenet):
    model, x, y = lenet

    def run(v):
        with torch.no_grad():
            return model(torch.from_numpy(v)).numpy()
    cfg = R.Config(["fgsm", "pgd"], [0.1, 0.3], ["transfer", "blackbox"], steps=10,
                   queries=50, samples=None)
    entry = R.evaluate(R.Subject("float", run, {"transfer": model}), x.numpy(), y.numpy(),
                       cfg)
    assert entry["flags"] == [], entry["flags"]


@pytest.mark.parametrize("kwargs, words", [
    ({"eps": [1.5]}, "[0, 1]"), ({"eps": [-0.1]}, "[0, 1]"),
    ({"attacks": ["cw"]}, "unknown attack 'cw'"), ({"sources": ["oracle"]}, "unknown source"),
    ({"attacks": ["pgd", "pgd"]}, "twice"), ({"steps": 0}, "steps")])
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(InputError) as e:
        R.Config(**kwargs)
    assert words in str(e.value)
