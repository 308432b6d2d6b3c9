"""Selection's methods and budgets, without torch: `sweep` and the command line check a
plan entry with these before any slow import (deployq/selection.py uses them)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import InputError

METHODS = ("adversarial", "noise", "hessian", "uniform")


@dataclass(frozen=True)
class Budget:
    """At most `bits` packed weight bits in total (what either unit says)."""
    text: str
    unit: str            # 'bits' (average per weight) or 'bytes'
    value: float

    def capacity(self, n_weights: int) -> int:
        if self.unit == "bits":
            return math.floor(self.value * n_weights + 1e-9)
        return math.floor(self.value * 8 + 1e-9)


_BUDGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(bits?|b|bytes?|kb|kib)\s*$", re.I)
_BYTES = {"b": 1, "byte": 1, "bytes": 1, "kb": 1024, "kib": 1024}


def parse_budget(text: str) -> Budget:
    """'4.0bits' (average bits per weight) or '12KB' / '3000B' (packed weight bytes,
    1 KB = 1024 bytes)."""
    m = _BUDGET.match(str(text))
    if not m:
        raise InputError(f"--budget {text!r} is not a budget; give average weight bits "
                         "like '4bits' or packed weight bytes like '12KB' or '3000B'")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit.startswith("bit"):
        return Budget(text, "bits", value)
    return Budget(text, "bytes", value * _BYTES[unit])
