"""Which attack breaks which sample: deployq's attacks at a strength and each of
AutoAttack's four (torchattacks APGD-CE, APGD-T, FAB-T, Square 5000, as
AutoAttack(version='standard') configures them), each run alone on all samples of the
float model, per-sample masks compared.

    python tools/bench_robustness_components.py MODEL EPS [--samples 100]

Prints each attack's robust accuracy and CPU seconds, both worst cases, and the samples
one tool breaks and the other does not, with which attacks broke them."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from deployq import api, robustness as R, stats


def deployq_masks(session, x, y, eps: float, strength: str) -> dict:
    """{'dq:source/attack': per-sample correct} from robustness.evaluate on float."""
    cfg = R.Config(eps=[eps], sources=["transfer", "blackbox"], samples=None,
                   strength=strength)
    subject = R.Subject("float", session.model.logits, {"transfer": session.model.module})
    t0 = time.process_time()
    row = R.evaluate(subject, x, y, cfg)["eps"][0]
    print(f"deployq {strength}: {100 * row['robust']:.1f}% "
          f"({time.process_time() - t0:.1f} CPU s)", flush=True)
    return {f"dq:{b['source']}/{b['attack']}":
            np.array(stats.unpack(b["accuracy_mask"], len(y)), bool) for b in row["by"]}


def autoattack_masks(session, x, y, eps: float, clean) -> dict:
    """{'aa:name': per-sample correct} for AutoAttack standard's four attacks."""
    import torchattacks as T
    m, n_classes = session.model.module, int(session.model.logits(x[:1]).shape[1])
    attacks = {
        "apgd-ce": T.APGD(m, eps=eps, norm="Linf", seed=0, loss="ce", n_restarts=1),
        "apgd-t": T.APGDT(m, eps=eps, norm="Linf", seed=0, n_classes=n_classes,
                          n_restarts=1),
        "fab-t": T.FAB(m, eps=eps, norm="Linf", seed=0, multi_targeted=True,
                       n_classes=n_classes, n_restarts=1),
        "square": T.Square(m, eps=eps, norm="Linf", seed=0, n_queries=5000, n_restarts=1)}
    out = {}
    for name, attack in attacks.items():
        t0 = time.process_time()
        adv = attack(torch.from_numpy(x), torch.from_numpy(y).long()).detach().numpy()
        out[f"aa:{name}"] = (session.model.logits(adv).argmax(1) == y) & clean
        print(f"AutoAttack's {name} alone: {100 * out[f'aa:{name}'].mean():.1f}% "
              f"({time.process_time() - t0:.1f} CPU s)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("eps", type=float)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--strength", default="standard", choices=R.STRENGTHS)
    a = p.parse_args()
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    session = api.open_session(f"zoo:{a.model}")
    x, y = session.dataset.test(a.samples)
    clean = session.model.logits(x).argmax(1) == y
    masks = deployq_masks(session, x, y, a.eps, a.strength)
    masks |= autoattack_masks(session, x, y, a.eps, clean)
    worst = {tool: np.logical_and.reduce([v for k, v in masks.items()
                                          if k.startswith(tool)]) & clean
             for tool in ("dq:", "aa:")}
    print(f"worst case: deployq {100 * worst['dq:'].mean():.1f}%, AutoAttack's four "
          f"{100 * worst['aa:'].mean():.1f}%")
    for left, right in (("dq:", "aa:"), ("aa:", "dq:")):
        for i in np.flatnonzero(worst[left] & ~worst[right]):
            broke = [k for k, v in masks.items() if k.startswith(right) and not v[i]]
            print(f"sample {i}: {left[:2]} leaves it correct; broken by {', '.join(broke)}")


if __name__ == "__main__":
    main()
