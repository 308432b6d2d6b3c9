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


def __getattr__(name):
    if name == "progress":
        return importlib.import_module(".progress", __name__)
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'deployq' has no attribute {name!r}")
