"""Train the zoo models and write their weights into deployq/weights/NAME.npz.

    python tools/train_zoo.py                  # every model whose dataset is present
    python tools/train_zoo.py lenet-digits     # one model
    python tools/train_zoo.py --adversarial lenet-digits   # PGD training -> NAME-adv.npz

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
from deployq import attacks, data, zoo  # noqa: E402
from deployq.errors import DeployqError  # noqa: E402
from deployq.io import atomic_write  # noqa: E402

EPOCHS = {"digits": 60, "fmnist": 8}
ADV_EPS = {"digits": 0.1, "fmnist": 0.1}      # L-inf, input units
ADV_STEPS = 7
ADV_EPOCHS = {"digits": 20, "fmnist": 6}      # PGD-7 costs ~8x a plain epoch
# the MLPerf Tiny / MobileNet-style models: (epochs, training images), chosen so that
# each trains in a few CPU-minutes on a machine shared by eight: the first n images of
# a permutation seeded by --seed (None: all 60k)
ARCH_TRAIN = {"resnet8": (3, 12000), "dscnn": (3, 12000), "mobilenetv2": (2, 6000),
              "mnv3s": (4, 12000)}


def train(name: str, seed: int = 0, adversarial: bool = False) -> dict:
    """Plain training, or PGD adversarial training (Madry et al., ICLR 2018): every
    batch is replaced by its PGD-7 examples at ADV_EPS, made with the model in eval
    mode (BN statistics frozen during the attack), from a generator seeded per batch."""
    torch.manual_seed(seed)
    ds = data.load(zoo.default_data(name), seed=seed)
    model = zoo.build(name)
    arch, _, dataset = name.removesuffix(zoo.ADV).partition("-")
    epochs = (ADV_EPOCHS if adversarial else EPOCHS)[dataset]
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    if arch in ARCH_TRAIN:
        epochs, n = ARCH_TRAIN[arch]
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[keep], y[keep]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            xb = x[idx]
            if adversarial:
                model.eval()
                xb = attacks.pgd(model, xb, y[idx], ADV_EPS[dataset], ADV_STEPS,
                                 seed=seed * 1_000_003 + step)
                model.train()
            step += 1
            opt.zero_grad()
            F.cross_entropy(model(xb), y[idx]).backward()
            opt.step()
        sched.step()
        print(f"{name}: epoch {epoch + 1}/{epochs}", file=sys.stderr, end="\r")
    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(ds.x_test)
        pred = torch.cat([model(xt[i:i + 500]).argmax(1) for i in range(0, len(xt), 500)])
        acc = (pred.numpy() == ds.y_test).mean()
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
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--adversarial", action="store_true",
                    help="PGD adversarial training; writes deployq/weights/NAME-adv.npz")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        t0 = time.time()
        try:
            result = train(name, args.seed, args.adversarial)
        except DeployqError as e:
            print(f"{name}: skipped ({e})", file=sys.stderr)
            continue
        path = save(name + zoo.ADV if args.adversarial else name, result["state"])
        print(f"{name}: test accuracy {result['test_accuracy']:.4f} "
              f"({time.time() - t0:.0f} s) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
