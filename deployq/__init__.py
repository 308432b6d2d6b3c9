"""deployq: PyTorch models to integer edge runtimes, with accuracy and robustness
measured on the runtimes themselves.

The API (export, evaluate, run, open_session, list_targets) lives in deployq.api and is
loaded on first use, so importing deployq stays cheap."""
__version__ = "0.1.0"
__all__ = ["export", "evaluate", "run", "open_session", "list_targets"]


def __getattr__(name):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'deployq' has no attribute {name!r}")
