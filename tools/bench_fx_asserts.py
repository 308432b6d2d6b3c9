"""What the C runtime's asserts cost: the host library as deployq builds it (asserts on)
against the same sources built with -DNDEBUG, per kernel set, on fpga-fixed exports of
zoo models (docs/fpga-fixed.md, "Asserts in the host library").

    python tools/bench_fx_asserts.py [zoo names ...]     (default: lenet-digits dsnet-digits)

Checks both builds give the same outputs on 256 seeded random int8 rows, then takes
the best of 9 runs of one dq_invoke call on those rows in process CPU time (less
sensitive than wall time to a shared machine's load) and prints the ratio."""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402

from deployq import api, runtime  # noqa: E402


def main(names) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="deployq-bench-asserts-"))
    for kernels in ("ref", "opt"):
        libs = {"asserts": runtime.library(kernels),
                "NDEBUG": runtime.load_library(runtime.build(
                    kernels, ["-DNDEBUG"], tmp / f"libdq-{kernels}-ndebug.so"))}
        for name in names:
            blob = api.export("fpga-fixed", api.open_session(f"zoo:{name}"),
                              tmp / name).path.read_bytes()
            models = {k: runtime.Model(blob, lib=lib) for k, lib in libs.items()}
            n_in = models["asserts"].tensor_bytes[models["asserts"].input_index]
            rows = np.random.default_rng(0).integers(-128, 128, (256, n_in), dtype=np.int8)
            if not np.array_equal(models["asserts"].run(rows), models["NDEBUG"].run(rows)):
                raise SystemExit(f"{name}: the two builds differ")
            best = {}
            for _ in range(9):
                for k, model in models.items():
                    start = time.process_time()
                    model.run(rows)
                    best[k] = min(best.get(k, float("inf")), time.process_time() - start)
            print(f"{kernels} {name}: asserts {best['asserts'] / 256 * 1e6:.0f} us/sample, "
                  f"NDEBUG {best['NDEBUG'] / 256 * 1e6:.0f} us/sample, "
                  f"ratio {best['asserts'] / best['NDEBUG']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["lenet-digits", "dsnet-digits"]))
