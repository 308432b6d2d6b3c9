import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
torch.set_num_threads(2)


ALL_OPS_SHAPE = (1, 9, 9)


class AllOps(nn.Module):
    """Every op the capture supports, with odd shapes: BN, dilation, groups, depthwise,
    stride, ReLU6, Hardtanh, clamp, max/avg pool (ceil mode, padding), concat, add,
    global average pool, flatten, dropout, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU6()
        self.dil = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3)
        self.dw = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
        self.ht = nn.Hardtanh(-2.0, 2.0)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(12, 7)
        self.fc2 = nn.Linear(7, 5)

    def forward(self, x):
        a = self.act(self.bn(self.conv(x)))
        b = torch.relu(self.dil(a)) + a
        c = torch.cat([b, a], dim=1)
        d = self.ht(self.avg(self.pool(torch.clamp(self.dw(c), -1.0, 3.0))))
        e = self.gap(d).flatten(1)
        f = torch.relu(self.fc(self.drop(e)))
        return self.fc2(f.view(f.shape[0], -1))


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """The model with random weights and BN statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.4)
    return model.eval()


@pytest.fixture
def all_ops():
    return randomized(AllOps())


@pytest.fixture(scope="session")
def digits_session():
    from deployq import api
    return api.open_session("zoo:lenet-digits")


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the deployq CLI in-process: returns (exit code, stdout, stderr)."""
    from deployq.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["deployq", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        return exc.value.code, out, err
    return run


FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
