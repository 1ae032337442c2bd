"""Reproduce MagNet (Meng & Chen 2017) on MNIST: detection of FGSM, PGD and C&W-L2 at <= 5% FPR.

Classifier: the cached Carlini/Papernot MNIST CNN of the other benchmarks (trained on first use).
Then the adaptive attack: `adaptive_pgd` through reformer, classifier and detectors at each
`--detector-weights` (0 = ignore the detectors), robust accuracy of the whole defence.
Defence: the paper's two MNIST autoencoders (Detector I: reconstruction L2 and the reformer;
Detector II: reconstruction L1), trained on the first 55,000 training images (``--ae-train-n`` for fewer) with N(0, 0.1^2) noise, thresholds
at a total FPR (split evenly over the detectors) on the other 5,000. ``--temperatures 10 40`` adds
the divergence detectors the paper used on CIFAR-10. Non-adaptive attacks on the undefended
classifier (the paper's setting); the adaptive attack is evaluated elsewhere.

    python benchmarks/magnet.py --device cpu --json benchmarks/magnet.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import _common as C
from ramparts import data as rdata
from ramparts.defenses.adaptive import adaptive_pgd
from ramparts.defenses.base import DefendedModel
from ramparts.defenses.magnet import magnet
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel
from ramparts.training import TrainConfig

log = logging.getLogger("benchmarks.magnet")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-dir", default=str(C.ROOT / "runs" / "bench"))
    p.add_argument("--model-epochs", type=int, default=2, help="epochs of the cached classifier")
    p.add_argument("--ae-epochs", type=int, default=10, help="autoencoder epochs (the paper: 100)")
    p.add_argument("--ae-lr", type=float, default=3e-3)
    p.add_argument("--ae-train-n", type=int, default=55_000, help="training images for the autoencoders")
    p.add_argument("--fpr", type=float, default=0.05, help="total false-positive rate of the detectors")
    p.add_argument("--temperatures", type=float, nargs="*", default=[])
    p.add_argument("--n", type=int, default=1000, help="test images attacked with FGSM and PGD")
    p.add_argument("--cw-n", type=int, default=200, help="test images attacked with C&W-L2")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adaptive-steps", type=int, default=100, help="adaptive PGD steps (0: skip)")
    p.add_argument("--detector-weights", type=float, nargs="+", default=[0.0, 1.0, 10.0])
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def _measure(defended: DefendedModel, x_adv: Tensor, y: Tensor, success: Tensor) -> dict[str, Any]:
    """Detection rate (of the successful adversarials, and per detector) and the whole defence's accuracy."""
    with torch.no_grad():
        rejected = defended.rejects(x_adv)
        correct = defended(x_adv).argmax(1) == y
        per = [d.flags(x_adv) for d in defended.detectors]  # type: ignore[operator]
    ok = success.bool()
    return {
        "attack_success_undefended": float(ok.float().mean()),
        "detection_rate": float(rejected[ok].float().mean()) if bool(ok.any()) else None,
        "detection_rate_per_detector": [float(f[ok].float().mean()) for f in per] if bool(ok.any()) else None,
        "reformed_accuracy_of_undetected": float(correct[~rejected].float().mean())
        if bool((~rejected).any())
        else None,
        "defence_accuracy": float((rejected | correct).float().mean()),
    }


def main() -> None:
    args = _parse()
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clf, model_info = C.get_model(args.model_dir, args.model_epochs, args.seed, device)
    clf = clf.to(device).eval()
    full = rdata.load_shared("mnist", split="train")
    train = full.subset(range(min(args.ae_train_n, 55_000)))
    val = full.subset(range(55_000, len(full)))
    test = rdata.load_shared("mnist", split="test")
    cfg = TrainConfig(
        epochs=args.ae_epochs,
        batch_size=256,
        lr=args.ae_lr,
        weight_decay=1e-9,
        seed=args.seed,
        device=str(device),
    )
    t0 = time.perf_counter()
    defended = magnet(
        clf, train, val, fpr=args.fpr, temperatures=tuple(args.temperatures), config=cfg, seed=args.seed
    )
    train_s = time.perf_counter() - t0
    x_test, y_test = test.x.to(device), test.y.to(device)
    with torch.no_grad():
        rejected = defended.rejects(x_test)
        reformed = defended(x_test).argmax(1) == y_test
        clean_acc = float((clf(x_test).argmax(1) == y_test).float().mean())
    clean_fpr = float(rejected.float().mean())
    reformed_acc = float(reformed.float().mean())
    clean_defence_acc = float((reformed & ~rejected).float().mean())
    log.info(
        "autoencoders %.0fs; clean acc %.4f, reformed %.4f, FPR on test %.4f",
        train_s,
        clean_acc,
        reformed_acc,
        clean_fpr,
    )
    oracle = TorchOracle(clf, input_shape=C.INPUT_SHAPE)
    threat = ThreatModel(eps=args.eps)
    runs: dict[str, Any] = {}
    plans: list[tuple[str, Any, int, ThreatModel]] = [
        ("fgsm", ATTACKS.get("fgsm")(), args.n, threat),
        ("pgd", ATTACKS.get("pgd")(steps=40), args.n, threat),
        (
            "cw_l2",
            ATTACKS.get("cw")(steps=100, binary_search_steps=5),
            args.cw_n,
            ThreatModel(norm="l2", eps=10.0),
        ),
    ]
    for name, attack, n, thr in plans:
        x, y = x_test[:n], y_test[:n]
        t1 = time.perf_counter()
        r = attack(oracle, x, y, thr, seed=args.seed)
        row = _measure(defended, r.x_adv, y, r.success)
        row.update(n=n, seconds=round(time.perf_counter() - t1, 1), threat=thr.summary())
        row["mean_distance"] = float(r.distance[r.success].mean()) if bool(r.success.any()) else None
        runs[name] = row
        log.info("%s: %s", name, row)
    if args.adaptive_steps > 0:
        # The adaptive attack (Carlini & Wagner 2017; Athalye et al. 2018): PGD through reformer, classifier and
        # detectors together; the defence is robust on an input only if it rejects it or classifies it right.
        x, y = x_test[: args.n], y_test[: args.n]
        t1 = time.perf_counter()
        for weight in args.detector_weights:
            adaptive = adaptive_pgd(
                defended,
                x,
                y,
                eps=args.eps,
                steps=args.adaptive_steps,
                detector_weight=weight,
                seed=args.seed,
            )
            runs[f"adaptive_pgd_w{weight:g}"] = {
                **adaptive.summary(),
                "n": args.n,
                "seconds": round(time.perf_counter() - t1, 1),
            }
            log.info("adaptive (weight %g): %s", weight, adaptive.summary())
    out = {
        "paper": "Meng & Chen 2017, MagNet, CCS; MNIST setting of its section 5",
        "settings": vars(args) | {"json": str(args.json)},
        "machine": C.machine_info(device, peers=()),
        "classifier": model_info,
        "autoencoder_train_seconds": round(train_s, 1),
        "thresholds": [d.threshold for d in defended.detectors],  # type: ignore[union-attr]
        "clean": {
            "accuracy": clean_acc,
            "reformed_accuracy": reformed_acc,
            "fpr_test": clean_fpr,
            "defence_accuracy": clean_defence_acc,
        },
        "attacks": runs,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
