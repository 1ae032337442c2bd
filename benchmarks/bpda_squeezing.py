"""Feature squeezing (Xu et al. 2018) on MNIST against non-adaptive and adaptive (BPDA) attacks.

Xu, Evans & Qi, "Feature Squeezing", NDSS 2018: MNIST squeezers 1-bit depth and a median filter
(the paper's 2x2; ``MedianFilter`` takes odd windows only, so 3x3), joint detector = max L1 distance
between the softmax on the input and on each squeezed input, threshold at ``--fpr`` (5%) on held-out
clean MNIST: a seeded random half of the test split, never attacked (the classifier was trained on the
training split; the test split's two halves differ in style, so a random half, not the last one).
Classifier: the cached Carlini/Papernot MNIST CNN of the other benchmarks (trained on first use).

Non-adaptive: FGSM and PGD-40 (linf, each ``--eps``) and C&W-L2 crafted on the bare classifier.
Adaptive (Athalye, Carlini & Wagner, ICML 2018; He et al. 2017, who broke feature squeezing), all
``adaptive_pgd`` judged by the real defence, on the first ``--adaptive-n`` images:
- ``bpda_w{w}``: classifier + detector, the detector's squeezers wrapped in BPDA (straight-through) so
  the detector term has a gradient through the bit-depth branch, at each ``--detector-weights``
  (0 = ignore the detector; still keeps the first iterate the defence accepts);
- ``joint_w1``: the attacker's classifier is the sum of the logits of the raw and the BPDA-squeezed
  inputs, so every branch is pushed to the same wrong class (He et al.'s attack on the ensemble);
- ``native_w1`` (``--native``): the detector differentiated as it is (rounding passes no gradient).
Robust accuracy of the whole defence: an input counts as robust if rightly classified or rejected.
Defaults fit in < 8 minutes on one CPU thread: 1000 images for FGSM/PGD, 100 for C&W, 100 x 50 steps
for each adaptive run.

    python benchmarks/bpda_squeezing.py --json benchmarks/bpda_squeezing.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

import _common as C
from ramparts import data as rdata
from ramparts.defenses.adaptive import adaptive_pgd, defense_outcome
from ramparts.defenses.base import DefendedModel, Detector
from ramparts.defenses.squeezing import BitDepth, MedianFilter, SqueezeDetector, feature_squeezing
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel

log = logging.getLogger("benchmarks.bpda_squeezing")

HELD_OUT = 5000  # test images that calibrate the detector; the attacked ones come from the rest


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-dir", default=str(C.ROOT / "runs" / "bench"))
    p.add_argument("--model-epochs", type=int, default=2, help="epochs of the cached classifier")
    p.add_argument("--fpr", type=float, default=0.05, help="false-positive rate of the detector")
    p.add_argument("--bits", type=int, default=1, help="bit depth of the first squeezer")
    p.add_argument("--median", type=int, default=3, help="median window (odd)")
    p.add_argument("--n", type=int, default=1000, help="test images attacked with FGSM, PGD, adaptive PGD")
    p.add_argument("--cw-n", type=int, default=100, help="test images attacked with C&W-L2")
    p.add_argument("--adaptive-n", type=int, default=100, help="test images attacked adaptively")
    p.add_argument("--eps", type=float, nargs="+", default=[0.3, 0.1])
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--adaptive-steps", type=int, default=50, help="adaptive PGD steps (0: skip)")
    p.add_argument("--detector-weights", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--native", action="store_true", help="also attack the detector without BPDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


class BranchSum(nn.Module):
    """Sum of ``classifier``'s logits on the input and on each squeezed input (the squeezers in BPDA).

    An attacker's view of the whole feature-squeezing ensemble (He et al. 2017): a margin loss on the sum
    pushes every branch to the same wrong class, which is what the detector needs to stay silent.
    """

    def __init__(self, classifier: nn.Module, squeezers: list[nn.Module]) -> None:
        super().__init__()
        self.classifier = classifier
        self.squeezers = nn.ModuleList(squeezers)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(x)
        for s in self.squeezers:
            logits = logits + self.classifier(s(x))
        return logits


def joint_view(defended: DefendedModel) -> DefendedModel:
    """``defended`` with its classifier replaced by the :class:`BranchSum` of its detector's squeezers in BPDA."""
    det = cast(SqueezeDetector, cast(Detector, defended.detectors[0]).attack_view())
    return DefendedModel(
        BranchSum(defended.classifier, list(det.squeezers)),
        detectors=[cast(Detector, d) for d in defended.detectors],
    )


def _measure(defended: DefendedModel, x_adv: Tensor, y: Tensor) -> dict[str, Any]:
    """Detection rate of the misclassified adversarials and the whole defence's robust accuracy."""
    with torch.no_grad():
        rejected = defended.rejects(x_adv)
        wrong = defended(x_adv).argmax(1) != y
    fooled = wrong & ~rejected
    return {
        "misclassified_undefended": float(wrong.float().mean()),
        "detection_rate": float(rejected[wrong].float().mean()) if bool(wrong.any()) else None,
        "rejected": float(rejected.float().mean()),
        "fooled": float(fooled.float().mean()),
        "robust_accuracy": 1.0 - float(fooled.float().mean()),
    }


def _attack(name: str, **hyper: Any) -> Any:
    """The registered evasion attack ``name`` built with ``hyper``."""
    return cast(Any, ATTACKS.get(name))(**hyper)


def _table(runs: dict[str, Any]) -> str:
    rows = []
    for name, r in runs.items():
        rows.append(
            [
                name,
                str(r["n"]),
                C.fmt(r.get("eps"), "g", "-"),
                C.fmt(r.get("detection_rate"), ".1%", "-"),
                C.fmt(r["rejected"], ".1%"),
                C.fmt(r["fooled"], ".1%"),
                C.fmt(r["robust_accuracy"], ".1%"),
                C.fmt(r["seconds"], ".1f"),
            ]
        )
    head = ["attack", "n", "eps", "detected (of misclassified)", "rejected", "fooled", "robust acc", "s"]
    return C.md_table(head, rows)


def main() -> None:
    args = _parse()
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clf, model_info = C.get_model(args.model_dir, args.model_epochs, args.seed, device)
    clf = clf.to(device).eval()
    test = rdata.load_shared("mnist", split="test")
    if args.n > len(test) - HELD_OUT or max(args.cw_n, args.adaptive_n) > args.n:
        raise SystemExit(f"--n must be <= {len(test) - HELD_OUT}, --cw-n and --adaptive-n <= --n")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
    val = test.subset(order[:HELD_OUT].tolist())
    attacked = test.subset(order[HELD_OUT : HELD_OUT + args.n].tolist())
    defended = feature_squeezing(
        clf, val, squeezers=[BitDepth(args.bits), MedianFilter(args.median)], fpr=args.fpr
    )
    detector = cast(SqueezeDetector, defended.detectors[0])
    x_all, y_all = attacked.x.to(device), attacked.y.to(device)
    with torch.no_grad():
        clean_rejected = defended.rejects(x_all)
        clean_correct = clf(x_all).argmax(1) == y_all
    clean = {
        "accuracy": float(clean_correct.float().mean()),
        "fpr_test": float(clean_rejected.float().mean()),
        "defence_accuracy": float((clean_correct & ~clean_rejected).float().mean()),
        "robust_accuracy": float((clean_correct | clean_rejected).float().mean()),
    }
    log.info("threshold %.4f; clean %s", detector.threshold, clean)
    oracle = TorchOracle(clf, input_shape=C.INPUT_SHAPE)
    runs: dict[str, Any] = {}
    plans: list[tuple[str, Any, int, ThreatModel, float | None]] = []
    for eps in args.eps:
        plans.append((f"fgsm_eps{eps:g}", _attack("fgsm"), args.n, ThreatModel(eps=eps), eps))
        pgd = _attack("pgd", steps=args.pgd_steps)
        plans.append((f"pgd{args.pgd_steps}_eps{eps:g}", pgd, args.n, ThreatModel(eps=eps), eps))
    if args.cw_n > 0:
        cw = _attack("cw", steps=100, binary_search_steps=5)
        plans.append(("cw_l2", cw, args.cw_n, ThreatModel(norm="l2", eps=10.0), None))
    for name, attack, n, thr, eps in plans:
        t1 = time.perf_counter()
        r = attack(oracle, x_all[:n], y_all[:n], thr, seed=args.seed)
        row = _measure(defended, r.x_adv, y_all[:n])
        row.update(
            n=n,
            eps=eps,
            seconds=round(time.perf_counter() - t1, 1),
            adaptive=False,
            threat=thr.summary(),
            mean_distance=float(r.distance[r.success].mean()) if bool(r.success.any()) else None,
        )
        runs[name] = row
        log.info("%s: %s", name, row)
    variants = [(f"bpda_w{w:g}", defended, w, True) for w in args.detector_weights]
    variants.append(("joint_w1", joint_view(defended), 1.0, True))
    if args.native:
        variants.append(("native_w1", defended, 1.0, False))
    xa, ya = x_all[: args.adaptive_n], y_all[: args.adaptive_n]
    for eps in args.eps if args.adaptive_steps > 0 else []:
        for label, view, weight, bpda in variants:
            t1 = time.perf_counter()
            res = adaptive_pgd(
                view,
                xa,
                ya,
                eps=eps,
                steps=args.adaptive_steps,
                detector_weight=weight,
                seed=args.seed,
                bpda_detectors=bpda,
            )
            # Judge with the real defence: the views' scores may differ in the last ulp, and the joint
            # view's label is the ensemble's, not the classifier's.
            fooled, _, _ = defense_outcome(defended, res.x_adv, ya)
            caught = res.rejected.float().sum()
            off_class = caught + res.fooled.float().sum()
            runs[f"adaptive_{label}_eps{eps:g}"] = {
                "n": args.adaptive_n,
                "eps": eps,
                "adaptive": True,
                "detection_rate": float(caught / off_class) if off_class > 0 else None,
                "rejected": float(res.rejected.float().mean()),
                "fooled": float(fooled.float().mean()),
                "robust_accuracy": 1.0 - float(fooled.float().mean()),
                "fooled_agrees_with_attacker_view": bool(torch.equal(fooled, res.fooled)),
                "seconds": round(time.perf_counter() - t1, 1),
                "attacker_view": res.summary(),
            }
            log.info("adaptive %s eps=%g: %s", label, eps, res.summary())
    out = {
        "paper": "Xu, Evans & Qi 2018, Feature Squeezing, NDSS (MNIST: 1-bit depth + median); "
        "adaptive attack after Athalye, Carlini & Wagner 2018 and He et al. 2017",
        "settings": vars(args) | {"json": str(args.json)},
        "machine": C.machine_info(device, peers=()),
        "classifier": model_info,
        "squeezers": [f"BitDepth({args.bits})", f"MedianFilter({args.median})"],
        "calibration": f"{HELD_OUT} MNIST test images (seeded random half); attacked: {args.n} of the rest",
        "threshold": detector.threshold,
        "clean": clean,
        "notes": {
            "detection_rate": "non-adaptive: share of the misclassified adversarials that are rejected; "
            "adaptive: share of the inputs not left accepted-and-correct that are rejected (last iterate)",
            "robust_accuracy": "1 - share fooled (misclassified and not rejected) by the whole defence",
        },
        "attacks": runs,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    print(_table(runs))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
