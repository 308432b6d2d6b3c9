"""One module per runtime backend, found by name. Each has the same functions:

  export(graph, plan, target, out_dir, calib) -> (Path, QuantPlan)
      write the artifact into out_dir; return its path and the plan it carries (the
      given plan, or, for a target that calibrates itself, its parameters read back)
  load(path, target) -> Runner
  Runner.run(x: float32 (N, C, H, W) in [0, 1]) -> float32 logits (N, classes)

A runner quantizes its input itself, the way its runtime does; its logits are the
dequantized integer outputs, so plan.tensor(output).quantize(logits) gives them back."""
from __future__ import annotations

import importlib

from ..errors import TargetError


def get(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise TargetError(f"no backend module '{name}'") from None
        raise TargetError(f"backend '{name}' needs the package '{e.name}': "
                          f"pip install {e.name}") from None
