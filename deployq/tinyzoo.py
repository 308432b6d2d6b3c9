"""The deployed-in-practice zoo architectures, sized for Fashion-MNIST (1x28x28):
MLPerf Tiny's image-classification ResNet-8 and keyword-spotting DS-CNN, a
MobileNetV2 at width 0.35 and a MobileNetV3-small-style network (Hardswish, SE).

Where an architecture wants 32x32 (ResNet-8, MobileNetV2), the 28x28 image is
zero-padded by 2 on each side inside the first convolution: conv(pad(x, 2), padding=p)
equals conv(x, padding=p + 2) exactly, because zero padding composes. Keras 'same'
padding (which can put one more zero after than before) is an explicit ZeroPad2d with
the pads Keras computes (keras_same)."""
from __future__ import annotations

import torch
from torch import nn

HW = 28                # Fashion-MNIST images; PAD32 more on each side gives 32x32
PAD32 = 2


def keras_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) zeros of Keras/TensorFlow padding='same' on one axis: the output
    has ceil(size / stride) positions and the odd zero, if any, goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_pad2d(hw: tuple[int, int], kernel: tuple[int, int], stride: int) -> nn.ZeroPad2d:
    top, bottom = keras_same(hw[0], kernel[0], stride)
    left, right = keras_same(hw[1], kernel[1], stride)
    return nn.ZeroPad2d((left, right, top, bottom))


def _out(size: int, stride: int) -> int:
    return -(-size // stride)


# --- ResNet-8 (MLPerf Tiny image classification) ---------------------------------

class ResBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU, conv3x3-BN, + shortcut (1x1 conv when the stride or the
    width changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.short is None else self.short(x)))


class ResNet8(nn.Module):
    """MLPerf Tiny IC ResNet-8: conv16, three stacks of 16/32/64 filters (stride 1, 2,
    2), average pool, dense. One input channel, 32x32 by zero padding 28x28.
    PyTorch's symmetric padding=1 on the stride-2 convs (Keras 'same' pads 0/1 there);
    the output sizes are the same."""

    def __init__(self, in_ch: int = 1, hw: int = HW, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 16, 3, 1, 1 + PAD32),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.stacks = nn.Sequential(ResBlock(16, 16, 1), ResBlock(16, 32, 2),
                                    ResBlock(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stacks(self.stem(x))), 1))


# --- DS-CNN (MLPerf Tiny keyword spotting) -----------------------------------------

def _dw_pw(ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(ch, ch, 3, 1, 1, groups=ch), nn.BatchNorm2d(ch), nn.ReLU(),
        nn.Conv2d(ch, ch, 1), nn.BatchNorm2d(ch), nn.ReLU())


class DSCNN(nn.Module):
    """MLPerf Tiny KWS DS-CNN: conv 64 (10,4) stride 2 with Keras 'same' padding,
    BN, ReLU, dropout; four depthwise-3x3 + pointwise-64 blocks; dropout, average
    pool over the whole map, dense. On 28x28 Keras 'same' for (10,4) stride 2 pads
    rows 4/4 and columns 1/1 (on KWS's 49x10 it pads rows 4/5)."""

    def __init__(self, in_ch: int = 1, hw: int = HW, classes: int = 10, ch: int = 64):
        super().__init__()
        self.pad = same_pad2d((hw, hw), (10, 4), 2)
        self.stem = nn.Sequential(nn.Conv2d(in_ch, ch, (10, 4), 2), nn.BatchNorm2d(ch),
                                  nn.ReLU(), nn.Dropout(0.2))
        self.blocks = nn.Sequential(*[_dw_pw(ch) for _ in range(4)])
        self.drop = nn.Dropout(0.4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        y = self.drop(self.blocks(self.stem(self.pad(x))))
        return self.fc(torch.flatten(self.pool(y), 1))


# --- MobileNetV2 -------------------------------------------------------------------

def divisible(v: float, d: int = 8) -> int:
    """MobileNet's channel rounding: to a multiple of d, never below 90% of v."""
    r = max(d, int(v + d / 2) // d * d)
    return r + d if r < 0.9 * v else r


class InvertedResidual(nn.Module):
    """expand 1x1-BN-ReLU6 (when t > 1), depthwise 3x3(stride)-BN-ReLU6, project
    1x1-BN (linear bottleneck), + x when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        mid = cin * t
        layers = [] if t == 1 else [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                    nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                   nn.BatchNorm2d(mid), nn.ReLU6(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


# (t, c, n, s) of MobileNetV2 (Sandler et al. 2018); for the 32x32 input the stem keeps
# stride 1, so the four stride-2 stages take 32 -> 2
MNV2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    """MobileNetV2 at width 0.35 (channels rounded to multiples of 8, the last 1x1 conv
    kept at 1280 as for widths below 1), 32x32 by zero padding 28x28."""

    def __init__(self, in_ch: int = 1, hw: int = HW, classes: int = 10,
                 width: float = 0.35, last: int = 1280):
        super().__init__()
        cin = divisible(32 * width)
        layers = [nn.Conv2d(in_ch, cin, 3, 1, 1 + PAD32, bias=False), nn.BatchNorm2d(cin),
                  nn.ReLU6()]
        for t, c, n, s in MNV2_STAGES:
            cout = divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(last, classes)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(self.features(x)), 1)))


# --- MobileNetV3-small-style ---------------------------------------------------------

class SqueezeExcite(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(avgpool(x))))): the (N,C,1,1) gate broadcast
    over (N,C,H,W)."""

    def __init__(self, ch: int):
        super().__init__()
        sq = divisible(ch / 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, sq, 1)
        self.fc2 = nn.Conv2d(sq, ch, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class V3Block(nn.Module):
    """MobileNetV3 bottleneck: expand 1x1-BN-act, depthwise kxk(stride)-BN-act (stride
    2 with Keras 'same' zero padding: asymmetric on an even size), SE, project 1x1-BN,
    + x when the shape is kept."""

    def __init__(self, cin: int, k: int, mid: int, cout: int, se: bool, hs: bool,
                 stride: int, hw: int):
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers = [] if mid == cin else [nn.Conv2d(cin, mid, 1, bias=False),
                                        nn.BatchNorm2d(mid), act()]
        if stride == 1:
            layers.append(nn.Conv2d(mid, mid, k, 1, k // 2, groups=mid, bias=False))
        else:
            layers += [same_pad2d((hw, hw), (k, k), stride),
                       nn.Conv2d(mid, mid, k, stride, 0, groups=mid, bias=False)]
        layers += [nn.BatchNorm2d(mid), act()]
        if se:
            layers.append(SqueezeExcite(mid))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


# (k, expansion, out, SE, hardswish, stride): the first six bottlenecks of
# MobileNetV3-small (Howard et al. 2019, Table 2), stem at stride 1 for 28x28
MNV3S_BLOCKS = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
                (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
                (5, 240, 40, True, True, 1), (5, 120, 48, True, True, 1)]


class MobileNetV3Small(nn.Module):
    """MobileNetV3-small-style at width 0.5: Hardswish stem, the bottlenecks above (28
    -> 14 -> 7 -> 4), 1x1 conv-BN-Hardswish, average pool, dense-Hardswish, dense."""

    def __init__(self, in_ch: int = 1, hw: int = HW, classes: int = 10,
                 width: float = 0.5, head: int = 256):
        super().__init__()
        cin = divisible(16 * width)
        layers = [nn.Conv2d(in_ch, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin),
                  nn.Hardswish()]
        size = hw
        for k, t, c, se, hs, s in MNV3S_BLOCKS:
            cout = divisible(c * width)
            layers.append(V3Block(cin, k, divisible(t * width), cout, se, hs, s, size))
            cin, size = cout, _out(size, s)
        last = 6 * cin
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(last, head), nn.Hardswish(), nn.Dropout(0.2),
                                  nn.Linear(head, classes))

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


ARCHS = {"resnet8": ResNet8, "dscnn": DSCNN, "mobilenetv2": MobileNetV2,
         "mnv3s": MobileNetV3Small}
