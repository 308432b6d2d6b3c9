"""deployq: PyTorch models to integer edge runtimes, with accuracy and robustness
measured on the runtimes themselves.

The API lives in deployq.api and is loaded on first use, so importing deployq stays
cheap:

    import deployq
    s = deployq.open_session(my_module, data=(x, y))      # an nn.Module and arrays
    r = deployq.evaluate(["onnx-int8"], s)
    result, files = deployq.run({"targets": ["onnx-int8"]}, progress=deployq.progress.printer)
"""
__version__ = "0.1.0"
__all__ = ["export", "evaluate", "run", "open_session", "list_targets", "select",
           "profile", "certify", "harden", "load_runner", "load_exported", "read_config",
           "robust_config"]

import importlib
import sys
import types

# API verbs that share their name with a submodule (deployq.select the module holds
# the solver, deployq.select(...) the verb): the submodule is made callable, calling
# the api function, so that `from deployq import select as S` keeps the module.
VERB_MODULES = ("select", "profile", "certify", "harden")


class _VerbModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from . import api
        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    """The deployq package: a verb submodule becomes callable however it is imported
    (the import system sets it here as an attribute)."""

    def __setattr__(self, name, value):
        if name in VERB_MODULES and type(value) is types.ModuleType:
            value.__class__ = _VerbModule
        super().__setattr__(name, value)


def __getattr__(name):
    if name in VERB_MODULES or name == "progress":
        return importlib.import_module(f".{name}", __name__)
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'deployq' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
