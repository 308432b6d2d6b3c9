"""Exceptions. Every error a user can cause is a DeployqError: the CLI prints its one
line and exits with code 2. Messages say what was wrong and how to fix it."""


class DeployqError(Exception):
    """Base of every user-facing error."""


class InputError(DeployqError):
    """A model, weights, data file or option the user gave is missing or invalid."""


class UnsupportedOpError(DeployqError):
    def __init__(self, op: str, layer: str, where: str, supported):
        self.op, self.layer, self.where = op, layer, where
        super().__init__(
            f"unsupported op '{op}' at layer '{layer}' ({where}); "
            f"supported: {', '.join(sorted(supported))}")


class TargetError(DeployqError):
    """An unknown target, a malformed target file, or a plan the target cannot run."""


class ExportError(DeployqError):
    """A backend failed to produce or check its artifact."""
