"""Model input: 'zoo:NAME', 'path/file.py:factory' (+ weights), or a torch.export .pt2.

Weights are read with torch.load(weights_only=True) or safetensors: nothing the user
gives is ever unpickled as arbitrary objects."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import fingerprint, zoo
from .errors import InputError

DEFAULT_MODEL = "zoo:lenet-digits"


@dataclass
class Model:
    spec: str
    module: nn.Module                       # float reference, eval mode
    program: torch.export.ExportedProgram | None = None   # given as .pt2
    default_data: str | None = None
    files: tuple[Path, ...] = ()            # the user's input files (never overwritten)
    static_batch: int | None = None         # a program exported for one batch size
    num_classes: int | None = None          # K of the (N, K) logits (checked_head)

    def logits(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        batch = self.static_batch or batch
        if self.static_batch and len(x) % batch:
            raise InputError(f"{self.spec} was exported for batch {batch}; export it with "
                             "a dynamic batch (dynamic_shapes) to score other sizes")
        with torch.no_grad():
            return np.concatenate([self.module(torch.from_numpy(x[i:i + batch])).numpy()
                                   for i in range(0, len(x), batch)])

    def fingerprint(self) -> str:
        """sha256 of the weights: identifies the model a plan was made for."""
        module = self.module.inner if isinstance(self.module, SqueezedHead) else self.module
        return fingerprint.of_arrays({name: t.detach().cpu().numpy()
                                      for name, t in module.state_dict().items()})


def load(spec=DEFAULT_MODEL, weights: str | None = None) -> Model:
    """spec: a model string (module docstring), or an nn.Module / ExportedProgram
    object (the Python API)."""
    model = _load(spec, weights) if isinstance(spec, str) else _from_object(spec, weights)
    _check_finite(model)
    return model


def _from_object(obj, weights: str | None) -> Model:
    """A model handed over as an object: an nn.Module (copied, so that eval mode and
    loaded weights leave the caller's module as it was) or a torch.export program."""
    if isinstance(obj, torch.export.ExportedProgram):
        if weights is not None:
            raise InputError("an ExportedProgram carries its own weights; drop weights")
        batch = _input_placeholder(obj).meta["val"].shape[0]
        return Model("python:ExportedProgram", obj.module(), program=obj,
                     static_batch=int(batch) if isinstance(batch, int) else None)
    if isinstance(obj, nn.Module):
        import copy
        module = copy.deepcopy(obj)
        if weights is not None:
            module = _with_weights(module, weights)
        files = (Path(weights),) if weights else ()
        return Model(f"python:{type(obj).__name__}", module.eval(), files=files)
    raise InputError(f"model must be a string (zoo:NAME, file.py:factory, .pt2), an "
                     f"nn.Module or a torch.export.ExportedProgram, got {type(obj).__name__}")


def _load(spec: str, weights: str | None) -> Model:
    if spec.startswith("zoo:"):
        name = spec[4:]
        module = zoo.load(name) if weights is None else _with_weights(zoo.build(name), weights)
        files = (Path(weights),) if weights else ()
        return Model(spec, module, default_data=zoo.default_data(name), files=files)
    if spec.endswith(".pt2"):
        return _program(Path(spec), weights)
    file, sep, factory = spec.rpartition(":")
    if sep and file.endswith(".py"):
        module = _from_factory(Path(file), factory)
        if weights is not None:
            module = _with_weights(module, weights)
        files = (Path(file),) + ((Path(weights),) if weights else ())
        return Model(spec, module.eval(), files=files)
    raise InputError(f"cannot read model '{spec}': use zoo:NAME ({', '.join(zoo.MODELS)}), "
                     "path/to/file.py:factory, or a torch.export program saved as .pt2")


def _program(path: Path, weights: str | None) -> Model:
    if weights is not None:
        raise InputError(f"{path} is a .pt2 program that carries its own weights; "
                         "drop --weights")
    _must_exist(path, "model")
    try:
        with _torch_logs_off():           # torch logs its own traceback before raising
            program = torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a corrupt archive
        raise InputError(f"{path} is not a readable torch.export program "
                         f"({type(e).__name__}: {_first_line(e)}); save it with "
                         "torch.export.save(torch.export.export(model, (x,)), path)") from None
    batch = _input_placeholder(program).meta["val"].shape[0]
    static = int(batch) if isinstance(batch, int) else None
    return Model(str(path), program.module(), program=program, files=(path,),
                 static_batch=static)


@contextlib.contextmanager
def _torch_logs_off():
    """Every torch logger at CRITICAL for the duration (torch sets levels per logger)."""
    names = ["torch"] + [n for n in logging.root.manager.loggerDict if n.startswith("torch")]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _input_placeholder(program):
    user = set(program.graph_signature.user_inputs)
    return next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in user)


def _from_factory(file: Path, factory: str) -> nn.Module:
    _must_exist(file, "model")
    name = f"deployq_user_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        raise InputError(f"importing {file} failed: {type(e).__name__}: {_first_line(e)}") from None
    except BaseException as e:            # sys.exit() or a KeyboardInterrupt-like exit
        if isinstance(e, KeyboardInterrupt):
            raise
        raise InputError(f"importing {file} exited ({type(e).__name__}: {_first_line(e)}); "
                         "a model file must not exit when imported") from None
    fn = getattr(mod, factory, None)
    if not callable(fn):
        raise InputError(f"{file} has no function '{factory}'; pass file.py:NAME where "
                         "NAME() returns the nn.Module")
    module = _call_factory(fn, f"{file}:{factory}")
    if not isinstance(module, nn.Module):
        raise InputError(f"{file}:{factory}() returned {type(module).__name__}, "
                         "not a torch.nn.Module")
    return module


def _call_factory(fn, where: str):
    """fn() with every failure of the user's code turned into one InputError."""
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except TypeError as e:
        raise InputError(f"{where}() failed ({_first_line(e)}); the factory must take no "
                         "arguments (wrap it: def make(): return Net(...))") from None
    except BaseException as e:           # noqa: BLE001 - the user's code: anything, sys.exit
        raise InputError(f"{where}() failed ({type(e).__name__}: {_first_line(e)}); fix "
                         "the factory so that it returns the nn.Module") from None


def _check_finite(model: Model) -> None:
    """No NaN or inf in the weights: every quantization rule would fail on them."""
    for name, t in model.module.state_dict().items():
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise InputError(f"{model.spec}: the weights hold NaN or inf (in '{name}'); "
                             "check the training run or the weights file")


class SqueezedHead(nn.Module):
    """A model whose logits have shape (N, K, 1, ..., 1), flattened to (N, K) (a conv
    classifier without a final flatten)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.flatten(self.inner(x), 1)

    def train(self, mode: bool = True):
        # the inner module is already in eval mode, and a torch.export program's
        # module refuses train()/eval() calls: only this wrapper's flag changes
        self.training = mode
        return self


def checked_head(model: Model, x: np.ndarray) -> Model:
    """The model with logits of shape (N, K): trailing singleton dims are squeezed (the
    module wrapped, a .pt2 re-exported through the wrapper); any other shape, or a
    non-finite output, is refused."""
    try:
        with torch.no_grad():
            y = model.module(torch.from_numpy(np.ascontiguousarray(x)))
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward pass
        raise InputError(f"{model.spec} fails on the data's input shape {tuple(x.shape[1:])} "
                         f"({type(e).__name__}: {_first_line(e)}); choose --data that "
                         "matches the model") from None
    if not isinstance(y, torch.Tensor) or y.ndim < 2 or y.shape[0] != len(x):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"{model.spec} returns {shape} for {len(x)} samples; a classifier "
                         "must return logits of shape (N, classes)")
    if y.ndim > 2:
        if any(d != 1 for d in y.shape[2:]):
            raise InputError(f"{model.spec} returns logits of shape {tuple(y.shape)}; a "
                             "classifier must return (N, classes) (trailing dims of size 1 "
                             "are squeezed): add a pooling or flatten before the output")
        model.module = SqueezedHead(model.module).eval()   # (train() does not recurse)
        model.program = None             # captured again, through the flatten
    if not bool(torch.isfinite(y).all()):
        raise InputError(f"{model.spec} returns NaN or inf logits on the data; check the "
                         "model and its weights")
    model.num_classes = int(y.shape[1])
    return model


def _with_weights(module: nn.Module, weights: str) -> nn.Module:
    state = read_state_dict(Path(weights))
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"missing {_few(missing)}" if missing else "",
                 f"unexpected {_few(unexpected)}" if unexpected else "",
                 f"wrong shape {_few(wrong)}" if wrong else ""]
        raise InputError(f"weights {weights} do not fit the model: "
                         f"{'; '.join(p for p in parts if p)}")
    module.load_state_dict(state)
    return module.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors, or from torch.save's format without unpickling
    anything but tensors (a {'state_dict': ...} checkpoint is unwrapped)."""
    _must_exist(path, "weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise InputError("reading .safetensors needs the 'safetensors' package: "
                         "pip install safetensors") from None
    except (pickle.UnpicklingError, EOFError):
        raise InputError(f"cannot read weights {path}: not a torch.save file of tensors "
                         "(deployq never unpickles other objects); save them with "
                         "torch.save(model.state_dict(), path)") from None
    except Exception as e:  # corrupt zip, truncated file, bad safetensors header...
        raise InputError(f"cannot read weights {path} ({type(e).__name__}: {_first_line(e)}); "
                         "save them with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state_dict (name -> tensor); "
                         "save it with torch.save(model.state_dict(), path)")
    return state


def _must_exist(path: Path, what: str) -> None:
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist")


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]
