"""Model input: zoo, file.py:factory + weights, .pt2; nothing unpickled."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from deployq import models, zoo
from deployq.errors import InputError

FACTORY = """
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))

def not_a_module():
    return 42
"""


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(FACTORY)
    return path


def _module(factory_file):
    ns = {}
    exec(FACTORY, ns)
    return ns["build"]().eval()


def test_zoo_model_loads_shipped_weights():
    m = models.load("zoo:lenet-digits")
    assert m.default_data == "digits" and not m.module.training
    assert m.fingerprint() == models.load("zoo:lenet-digits").fingerprint()


def test_fingerprint_of_a_shipped_file_is_the_loaded_models():
    """sweep fingerprints zoo models from their files, without torch: the value must be
    the loaded model's (cell ids and results carry it), unchanged since it was pinned."""
    from deployq import fingerprint
    shipped = sorted(p.stem for p in Path(str(fingerprint.weights_file("x"))).parent.glob("*.npz"))
    assert len(shipped) >= 15
    for name in shipped:
        assert fingerprint.of_zoo(name) == models.load(f"zoo:{name}").fingerprint(), name
    assert fingerprint.of_zoo("lenet-digits") == "73dceb65d6691522"
    assert fingerprint.of_zoo("nope") is None
    a = {"w": np.zeros(3, np.float32), "b": np.ones(1, np.float32)}
    assert fingerprint.of_arrays(a) != fingerprint.of_arrays(a | {"b": np.zeros(1, np.float32)})
    assert fingerprint.of_arrays(a) != fingerprint.of_arrays({"v": a["w"], "b": a["b"]})


def test_factory_with_torch_weights(tmp_path, factory_file):
    ref = _module(factory_file)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    m = models.load(f"{factory_file}:build", str(tmp_path / "w.pt"))
    x = torch.rand(2, 1, 8, 8)
    np.testing.assert_array_equal(m.module(x).detach(), ref(x).detach())


def test_factory_with_safetensors_and_checkpoint_dict(tmp_path, factory_file):
    from safetensors.torch import save_file
    ref = _module(factory_file)
    save_file(ref.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    for w in ("w.safetensors", "ckpt.pt"):
        m = models.load(f"{factory_file}:build", str(tmp_path / w))
        assert m.fingerprint() == models.Model("ref", ref).fingerprint()


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_pickles_are_never_loaded(tmp_path, factory_file, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"0.weight": Evil()}, f)
    with pytest.raises(InputError, match="not a torch.save file of tensors"):
        models.load(f"{factory_file}:build", str(tmp_path / "evil.pt"))
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("{f}:missing", "has no function 'missing'"),
    ("{f}:not_a_module", "returned int, not a torch.nn.Module"),
    ("/nonexistent/net.py:build", "does not exist"),
    ("zoo:resnet-imagenet", "unknown zoo model"),
    ("model.onnx", "cannot read model"),
])
def test_bad_model_specs(factory_file, spec, message):
    with pytest.raises(InputError, match=message):
        models.load(spec.format(f=factory_file))


def test_weights_that_do_not_fit(tmp_path, factory_file):
    bad = {"0.weight": torch.zeros(4, 1, 5, 5), "extra": torch.zeros(1)}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="do not fit the model: missing .*unexpected extra.*wrong shape 0.weight"):
        models.load(f"{factory_file}:build", str(tmp_path / "bad.pt"))


def test_corrupt_weights_and_pt2(tmp_path, factory_file):
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(InputError, match="cannot read weights"):
        models.load(f"{factory_file}:build", str(tmp_path / "junk.pt"))
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(InputError, match="not a readable torch.export program"):
        models.load(str(tmp_path / "junk.pt2"))


def test_pt2_program(tmp_path):
    ref = zoo.load("lenet-digits")
    path = tmp_path / "lenet.pt2"
    torch.export.save(torch.export.export(ref, (torch.zeros(1, 1, 8, 8),)), path)
    m = models.load(str(path))
    x = torch.rand(3, 1, 8, 8)
    assert m.static_batch == 1                       # exported without dynamic_shapes
    np.testing.assert_allclose(m.logits(x.numpy()), ref(x).detach(), atol=1e-4)
    with pytest.raises(InputError, match="drop --weights"):
        models.load(str(path), "w.pt")
