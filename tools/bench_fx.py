"""Host time of the FX (fpga-fixed) kernels, reference vs optimized set, side by side.

    python tools/bench_fx.py [zoo names ...]     (default: lenet-digits dsnet-digits)

Exports each zoo model to fpga-fixed, checks that both libraries give the same outputs
on 256 seeded random int8 rows, then times one dq_invoke call on those 256 rows with
each set in turn, 5 rounds, and prints the best time per sample and the ratio. One
thread; a shared machine's load shows in the absolute figures more than in the ratio."""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402

from deployq import api, runtime  # noqa: E402


def main(names) -> int:
    with tempfile.TemporaryDirectory(prefix="deployq-bench-fx-") as tmp:
        for name in names:
            session = api.open_session(f"zoo:{name}")
            blob = api.export("fpga-fixed", session, Path(tmp) / name).path.read_bytes()
            models = {k: runtime.Model(blob, kernels=k) for k in ("ref", "opt")}
            n_in = models["ref"].tensor_bytes[models["ref"].input_index]
            rows = np.random.default_rng(0).integers(-128, 128, (256, n_in), dtype=np.int8)
            if not np.array_equal(models["ref"].run(rows), models["opt"].run(rows)):
                raise SystemExit(f"{name}: the two sets differ")
            best = {}
            for _ in range(5):
                for k, model in models.items():
                    start = time.perf_counter()
                    model.run(rows)
                    best[k] = min(best.get(k, float("inf")), time.perf_counter() - start)
            print(f"{name} fpga-fixed, batch 256: ref {best['ref'] / 256 * 1e6:.1f} us/sample, "
                  f"opt {best['opt'] / 256 * 1e6:.1f} us/sample, {best['ref'] / best['opt']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["lenet-digits", "dsnet-digits"]))
