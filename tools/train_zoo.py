"""Train the zoo models and write their weights into deployq/weights/NAME.npz.

    python tools/train_zoo.py                  # every model whose dataset is present
    python tools/train_zoo.py lenet-digits     # one model

Seeded and single-process: the same command gives the same weights on the same machine.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import data, zoo  # noqa: E402
from deployq.errors import DeployqError  # noqa: E402
from deployq.io import atomic_write  # noqa: E402

EPOCHS = {"digits": 60, "fmnist": 8}


def train(name: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    ds = data.load(zoo.default_data(name), seed=seed)
    model = zoo.build(name)
    epochs = EPOCHS[name.partition("-")[2]]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        print(f"{name}: epoch {epoch + 1}/{epochs}", file=sys.stderr, end="\r")
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean()
    return {"state": model.state_dict(), "test_accuracy": float(acc)}


def save(name: str, state: dict) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().numpy() for k, v in state.items()})
    path = Path(str(zoo.weights_file(name)))
    atomic_write(path, buf.getvalue())
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=zoo.MODELS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name in args.models:
        t0 = time.time()
        try:
            result = train(name, args.seed)
        except DeployqError as e:
            print(f"{name}: skipped ({e})", file=sys.stderr)
            continue
        path = save(name, result["state"])
        print(f"{name}: test accuracy {result['test_accuracy']:.4f} "
              f"({time.time() - t0:.0f} s) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
