"""Train the QA-IBP zoo models (deployq.qaibp) and write deployq/weights/NAME-qaibp.npz
and a training log beside it (NAME-qaibp.log.json).

    python tools/train_qaibp.py lenet-fmnist              # from the zoo's float weights
    python tools/train_qaibp.py lenet-digits --epochs 30 --eps 0.0157
    python tools/train_qaibp.py lenet-fmnist --out my.safetensors   # weights elsewhere

Seeded and single-threaded: the same command gives the same weights on the same machine.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import data, qaibp, zoo  # noqa: E402
from deployq.io import atomic_write  # noqa: E402

EPOCHS = {"lenet-fmnist": 10, "lenet-digits": 60}


def save_npz(name: str, model: torch.nn.Module) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    path = Path(str(zoo.weights_file(name)))
    atomic_write(path, buf.getvalue())
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(EPOCHS))
    ap.add_argument("--eps", type=float, default=4 / 255)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch", action="store_true", help="start from random weights")
    ap.add_argument("--out", default=None, help=".safetensors path instead of the zoo")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    ds = data.load(zoo.default_data(args.model), seed=args.seed)
    model = zoo.build(args.model) if args.scratch else zoo.load(args.model)
    t0 = time.time()

    def progress(epoch, total, e):
        print(f"{args.model}: epoch {epoch}/{total} eps {e['eps']:.4f} kappa {e['kappa']:.2f} "
              f"loss {e['loss']:.3f} val clean {e['val_clean']:.3f} certified "
              f"{e['val_certified']:.3f} ({e['seconds']} s)", file=sys.stderr, flush=True)

    model, log = qaibp.train(model, ds.x_train, ds.y_train, progress=progress,
                             eps=args.eps, epochs=args.epochs or EPOCHS[args.model],
                             bits=args.bits, seed=args.seed)
    doc = {"model": args.model, "command": " ".join(sys.argv), "seconds": round(time.time() - t0),
           "config": log.config, "epochs": log.epochs}
    if args.out:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
        path = Path(args.out)
    else:
        path = save_npz(args.model + "-qaibp", model)
    atomic_write(path.with_suffix(".log.json"), json.dumps(doc, indent=1).encode())
    print(f"{path} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
