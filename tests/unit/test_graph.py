"""Capture into the IR: names, folding, fusion, float equivalence, refusals."""
import numpy as np
import pytest
import torch
from torch import nn

from deployq import graph as G
from deployq import zoo
from deployq.errors import UnsupportedOpError
from tests.conftest import ALL_OPS_SHAPE


def test_ir_forward_equals_the_model(all_ops):
    g = G.capture(all_ops, ALL_OPS_SHAPE)
    x = torch.rand(8, *ALL_OPS_SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(G.run(g, x)["output"], all_ops(x), atol=1e-5)


def test_names_are_module_paths_and_bn_and_activations_fold(all_ops):
    g = G.capture(all_ops, ALL_OPS_SHAPE)
    ops = {n.name: n.op for n in g.nodes}
    assert ops["conv"] == "conv2d" and ops["dil"] == "conv2d" and ops["fc2"] == "linear"
    assert ops["pool"] == "maxpool" and ops["avg"] == "avgpool" and ops["gap"] == "gap"
    assert "batchnorm" not in ops.values()
    assert g.node("conv").attrs["act"] == (0.0, 6.0)            # BN then ReLU6, folded
    assert g.node("fc").attrs["act"][0] == 0.0                   # functional relu fused
    assert g.node("dw").attrs["groups"] == 12 and g.node("dil").attrs["dilation"] == (2, 2)
    assert g.node("ht").op == "clamp" and g.node("ht").attrs["lo"] == -2.0


def test_program_saved_as_pt2_captures_the_same(tmp_path, all_ops):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(all_ops, (torch.zeros(1, *ALL_OPS_SHAPE),)), path)
    program = torch.export.load(str(path))
    g1 = G.capture(all_ops, ALL_OPS_SHAPE)
    g2 = G.capture(program.module(), ALL_OPS_SHAPE, program)
    assert [(n.name, n.op) for n in g1.nodes] == [(n.name, n.op) for n in g2.nodes]


@pytest.mark.parametrize("name", zoo.MODELS)
def test_zoo_models_capture(name):
    model = zoo.build(name).eval()
    shape = zoo.DATASETS[name.partition("-")[2]]
    g = G.capture(model, shape)
    x = torch.rand(4, *shape)
    with torch.no_grad():
        np.testing.assert_allclose(G.run(g, x)["output"], model(x), atol=1e-5)


class Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.gate = nn.GELU()

    def forward(self, x):
        return self.gate(self.conv(x)).flatten(1)


def test_unsupported_op_names_op_layer_and_supported_list():
    with pytest.raises(UnsupportedOpError) as exc:
        G.capture(Gelu().eval(), (1, 8, 8))
    msg = str(exc.value)
    assert "aten.gelu" in msg and "'gate'" in msg and "Conv2d" in msg and "MaxPool2d" in msg


def test_batchnorm_without_conv_is_refused():
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(64, 2)).eval()
    with pytest.raises(UnsupportedOpError, match="BatchNorm not after a conv"):
        G.capture(model, (1, 8, 8))


ACTIVATIONS = [nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(),
               nn.LeakyReLU(0.3), nn.Hardtanh(0.0, 3.0)]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__)
def test_activations_capture_and_run_as_the_model(act):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), act, nn.Dropout2d(0.5), nn.Flatten(),
                          nn.Dropout(0.2), nn.Linear(3 * 6 * 6, 4)).eval()
    g = G.capture(model, (1, 8, 8))
    assert "feature_dropout" not in str([n.op for n in g.nodes])
    x = torch.randn(5, 1, 8, 8) * 3
    with torch.no_grad():
        np.testing.assert_allclose(G.run(g, x)["output"], model(x), atol=1e-5)


@pytest.mark.parametrize("final", [nn.Softmax(1), nn.LogSoftmax(1)])
def test_final_softmax_is_dropped_with_a_note(final, caplog):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), final).eval()
    with caplog.at_level("INFO", logger="deployq"):
        g = G.capture(model, (1, 8, 8))
    assert [n.op for n in g.nodes] == ["reshape", "linear"]
    assert "dropped" in caplog.text


def test_softmax_before_the_last_layer_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Softmax(1), nn.Linear(64, 3)).eval()
    with pytest.raises(UnsupportedOpError, match="softmax before the last layer"):
        G.capture(model, (1, 8, 8))
