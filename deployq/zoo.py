"""Reference models. Names are NAME-DATASET; the weights of every model listed in
WEIGHTS ship with the package (trained by tools/train_zoo.py). NAME-DATASET-adv is the
same architecture adversarially trained (tools/train_zoo.py --adversarial)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import tinyzoo
from .fingerprint import weights_file
from .errors import InputError

DATASETS = {"digits": (1, 8, 8), "fmnist": (1, 28, 28)}
DATA_SPECS = {"digits": "digits", "fmnist": "fashion-mnist"}


class LeNet(nn.Module):
    """LeNet-style CNN: two conv-BN-ReLU-maxpool stages and two linear layers."""

    def __init__(self, in_ch: int = 1, hw: int = 8, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * (hw // 4) ** 2, 64), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(64, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class DSBlock(nn.Module):
    """Depthwise-separable residual block: dw3x3-BN-ReLU6, pw1x1-BN, + x, ReLU."""

    def __init__(self, ch: int):
        super().__init__()
        self.dw = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.act = nn.ReLU6()
        self.pw = nn.Conv2d(ch, ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        return torch.relu(self.bn2(self.pw(self.act(self.bn1(self.dw(x))))) + x)


class DSNet(nn.Module):
    """Small depthwise-separable CNN with a residual add and global average pooling."""

    def __init__(self, in_ch: int = 1, hw: int = 8, classes: int = 10):
        super().__init__()
        stride = 2 if hw > 16 else 1
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 16, 3, stride=stride, padding=1),
                                  nn.BatchNorm2d(16), nn.ReLU6())
        self.block = DSBlock(16)
        self.down = nn.Sequential(
            nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.BatchNorm2d(16),
            nn.ReLU6(), nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.down(self.block(self.stem(x)))), 1))


ARCHS = {"lenet": LeNet, "dsnet": DSNet}
FMNIST_ARCHS = tinyzoo.ARCHS     # MLPerf Tiny / MobileNet-style, Fashion-MNIST only
MODELS = ([f"{arch}-{data}" for arch in ARCHS for data in DATASETS]
          + [f"{arch}-fmnist" for arch in FMNIST_ARCHS])
ADV = "-adv"                  # suffix of adversarially trained weights of a model
DQ = "-dq"                    # Defensive Quantization for fpga-fixed at 4-bit
                              # activations (tools/train_harden_zoo.py)
DQ8 = "-dq8"                  # the same at 8-bit activations (also for the int8 targets)
QAIBP = "-qaibp"              # QA-IBP certified training (tools/train_qaibp.py)
VARIANTS = (ADV, DQ8, DQ, QAIBP)


def _base(name: str) -> str:
    """The architecture-dataset part of a zoo name ('lenet-fmnist-qaibp' -> 'lenet-fmnist')."""
    for suffix in VARIANTS:
        name = name.removesuffix(suffix)
    return name


def build(name: str) -> nn.Module:
    """An untrained zoo model by name, e.g. 'lenet-digits' (or 'lenet-digits-adv')."""
    base = _base(name)
    arch, _, data = base.partition("-")
    if base not in MODELS:
        raise InputError(f"unknown zoo model '{name}': choose one of {', '.join(MODELS)} "
                         f"(NAME{ADV}: adversarially trained weights, NAME{DQ} / NAME{DQ8}: "
                         f"Defensive Quantization at 4 / 8-bit activations, "
                         f"NAME{QAIBP}: certifiably trained)")
    ch, hw, _ = DATASETS[data]
    return {**ARCHS, **FMNIST_ARCHS}[arch](ch, hw, 10)


def load(name: str) -> nn.Module:
    """A zoo model with its shipped weights, in eval mode."""
    model = build(name)
    path = weights_file(name)
    if not path.is_file():
        raise InputError(f"zoo model '{name}' has no shipped weights; train them with "
                         f"'python tools/train_zoo.py {name}' or pass --weights")
    with path.open("rb") as f, np.load(f, allow_pickle=False) as arrays:
        state = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    model.load_state_dict(state)
    return model.eval()


def default_data(name: str) -> str:
    return DATA_SPECS[_base(name).partition("-")[2]]
