"""What to do about each finding: the defence Ramparts offers, its measured cost, and the command that applies it.

The costs are our own reproductions, quoted with their setting from docs/defenses.md, docs/membership.md,
docs/theft.md, docs/poisoning.md and docs/encryption.md (a number without its setting would mislead). Which
advice a section gets depends on what it found: its scorecard severity, and details such as gradient-masking
warnings, whether the attacker needed scores, or whether the sanitiser already removed the backdoor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PGD_AT = {
    "defense": "PGD adversarial training (Madry et al. 2018)",
    "cost": (
        "MNIST eps 0.3, carlini_cnn: 90.4% worst-case robust accuracy at 99.0% clean (one H200, 13 epochs, 530 s); "
        "digits MLP eps 0.15: worst case 5.8% -> 61.5%, clean 97.5% -> 96.2% (2-core AMD EPYC, 15 epochs, 3.1 s)"
    ),
    "command": "ramparts harden --defense pgd --eps EPS",
    "source": "docs/defenses.md",
}
TRADES = {
    "defense": "TRADES (Zhang et al. 2019)",
    "cost": "digits MLP eps 0.15, beta 6: worst case 63.5% at 95.7% clean (2-core AMD EPYC, 15 epochs, 2.5 s)",
    "command": "ramparts harden --defense trades --eps EPS",
    "source": "docs/defenses.md",
}
SMOOTHING = {
    "defense": "Randomized smoothing, certified L2 (Cohen et al. 2019)",
    "cost": (
        "MNIST small CNN, sigma 0.5: 88.5% certified at L2 radius 0.5, 93.5% at radius 0 vs 96.5% base "
        "(n = 2,000, 200 images, 2-core AMD EPYC, 7.4 min); each prediction costs n noisy forward passes"
    ),
    "command": "ramparts harden --defense noise --sigma 0.5",
    "source": "docs/defenses.md",
}
NOT_DISTILLATION = {
    "defense": "Avoid defensive distillation and unmonitored fast AT",
    "cost": (
        "distillation masks gradients: digits MLP eps 0.15 looks 75.1% robust to PGD-CE but is 2.8% worst case; "
        "fast AT on MNIST eps 0.3 reached 42.6-50.7% worst case against PGD-AT's 90.4%"
    ),
    "command": "ramparts harden --defense fast (keeps the best epoch with its PGD monitor)",
    "source": "docs/defenses.md",
}
ADAPTIVE = {
    "defense": "Judge any defence with the adaptive attack (Athalye et al. 2018)",
    "cost": (
        "MagNet on MNIST detects 98.5% of PGD-40 at eps 0.3, yet adaptive PGD-100 takes it from 98.6% to 9.4% robust "
        "accuracy; feature squeezing 98.8% -> 82.0%"
    ),
    "command": "ramparts audit --model DEFENDED_DIR (the defence section runs adaptive PGD with BPDA/EOT)",
    "source": "docs/defenses.md",
}
LABELS_ONLY = {
    "defense": "Answer with labels only (output hardening)",
    "cost": (
        "no accuracy cost: the predicted class is unchanged; score-based attacks (Square, NES, SPSA) lose their "
        "signal, label-only ones (HopSkipJump, Boundary) do not"
    ),
    "command": 'ramparts.defenses.hardening.harden(oracle, "labels") in front of the model',
    "source": "src/ramparts/defenses/hardening.py",
}
PRADA = {
    "defense": "PRADA query monitoring (Juuti et al. 2019)",
    "cost": (
        "MNIST carlini_cnn oracle, delta 0.9: flags the Jacobian theft at query 214 of 4,800 (still in its first "
        "round) with 0 false alarms on 10,000 honest queries"
    ),
    "command": "ramparts.defenses.prada.Prada(delta=0.9) on each client's query stream",
    "source": "docs/theft.md",
}
DP_SGD = {
    "defense": "DP-SGD training (Abadi et al. 2016)",
    "cost": (
        "CIFAR-10 small CNN, 4,500 members: LiRA online TPR at 0.1% FPR 7.5% -> 0.11% (chance) at epsilon 16, "
        "test accuracy 50.8% -> 33.4% (17 points; 27 at epsilon 1), recipe not tuned for DP"
    ),
    "command": "ramparts membership --dp-epsilons 1,4,16 --out DIR (measures the trade-off); "
    "TrainConfig(dp=DPConfig(epsilon=...))",
    "source": "docs/membership.md",
}
SPECTRAL = {
    "defense": "Spectral signatures on the conv features (Tran, Li & Madry 2018)",
    "cost": (
        "MNIST LeNet-5 (3 epochs, 20,000 images), BadNets at 1%: recall 0.67 at 13.4% clean FPR, attack success "
        "0.84 -> 0.05 after retraining, clean accuracy 0.956 (2-core AMD EPYC)"
    ),
    "command": "ramparts poison --attack badnets --defense spectral",
    "source": "docs/poisoning.md",
}
CLUSTERING = {
    "defense": "Activation clustering (Chen et al. 2018)",
    "cost": (
        "MNIST LeNet-5, BadNets at 5%: recall 0.81, clean FPR 0.365, attack success 0.99 -> 0.32, clean accuracy "
        "0.864; all-or-nothing at 1% (0.97 recall on one seed, 0 on two)"
    ),
    "command": "ramparts poison --attack badnets --defense clustering",
    "source": "docs/poisoning.md",
}
SPHERE_SLAB = {
    "defense": "Sphere and slab sanitisation, with Steinhardt et al.'s certified bound (2017)",
    "cost": (
        "MNIST 1 vs 7, linear SVM, oracle sphere+slab at q 0.9: the certified loss bound stops growing at 0.067 "
        "from 3% poisoned (0.477 undefended at 10%); clean test error 0.74% -> 2.17% (2-core AMD EPYC)"
    ),
    "command": "ramparts poison --attack flip_loss --defense sphere-slab",
    "source": "docs/poisoning.md",
}
ENCRYPTABLE = {
    "defense": "An encryptable twin: x^2 activations, average pooling (CryptoNets, Gilad-Bachrach et al. 2016)",
    "cost": (
        "MNIST encryptable_cnn: 97.98% on CKKS-encrypted inputs (97.68% with ReLU), 192 images/s batched, 1.05 s "
        "per single query (2-core AMD EPYC)"
    ),
    "command": "ramparts encrypt train, then ramparts encrypt keygen|encrypt|serve|decrypt",
    "source": "docs/encryption.md",
}
SERVE_ENCRYPTED = {
    "defense": "Serve on encrypted inputs (CKKS)",
    "cost": "digits MLP: 3,545 images/s batched, 0.10 s per query, 100% agreement with plaintext (2-core AMD EPYC)",
    "command": "ramparts encrypt keygen|encrypt|serve|decrypt",
    "source": "docs/encryption.md",
}

_SERIOUS = ("critical", "high", "medium")


def recommendations(
    report: Mapping[str, Any], scorecard: Sequence[Mapping[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Per threat of the scorecard: the advice items ({defense, why, cost, command, source}) that fit what the
    section found; empty for a section that did not run."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in scorecard:
        threat, severity = str(row["threat"]), str(row["severity"])
        if severity == "not run":
            out[threat] = []
            continue
        advice = _ADVICE[threat](report, severity)
        out[threat] = [dict(item) for item in advice]
    return out


def _item(base: Mapping[str, str], why: str, eps: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {**base, "why": why}
    if eps is not None:
        item["command"] = str(item["command"]).replace("EPS", eps)
    return item


def _ref_eps(report: Mapping[str, Any]) -> str:
    return f"{float((report.get('reference') or {}).get('eps', 8 / 255)):.4g}"


def _whitebox(report: Mapping[str, Any], severity: str) -> list[dict[str, Any]]:
    eps = _ref_eps(report)
    items = []
    if severity in _SERIOUS:
        items.append(
            _item(
                PGD_AT,
                f"the white-box attacks break the model at eps={eps}; PGD-AT is the defence "
                "whose robustness held under every attack we ran",
                eps,
            )
        )
        items.append(_item(TRADES, "an alternative with a tunable robustness/accuracy trade-off (beta)", eps))
    if (
        any(c.get("norm") == "l2" for c in (report.get("config") or {}).get("checks") or [])
        and severity in _SERIOUS
    ):
        items.append(_item(SMOOTHING, "a certificate rather than an empirical number, for L2 perturbations"))
    if report.get("masking_warnings"):
        items.append(_item(ADAPTIVE, "gradient-masking warnings fired: the numbers above may be optimistic"))
    if severity in _SERIOUS:
        items.append(_item(NOT_DISTILLATION, "defences that look robust without being so"))
    if not items:
        items.append(
            {
                "defense": "No defence needed at this budget",
                "why": f"the model keeps most images at eps={eps}; re-audit at a larger eps or with the thorough "
                "profile before relying on it",
                "cost": "none",
                "command": "ramparts audit --profile thorough",
                "source": "docs/defenses.md",
            }
        )
    return items


def _blackbox(report: Mapping[str, Any], severity: str) -> list[dict[str, Any]]:
    checks = ((report.get("blackbox") or {}).get("checks") or {}).values()
    score_based = [s["label"] for s in checks if s.get("knowledge") == "score" and s.get("rows")]
    items = []
    if score_based and severity in _SERIOUS:
        items.append(_item(LABELS_ONLY, f"{', '.join(score_based)} read the class scores"))
    if severity in _SERIOUS:
        items.append(
            _item(
                PGD_AT,
                "robustness to the perturbation itself also stops query-only attacks",
                _ref_eps(report),
            )
        )
        items.append(_item(PRADA, "query-based attacks send long streams of close, synthetic queries"))
    if not items:
        items.append(
            {
                "defense": "No defence needed at these budgets",
                "why": "the query-only attacks fool few images; re-audit with larger budgets (--query-budgets)",
                "cost": "none",
                "command": "ramparts audit --query-budgets 100,1000,10000",
                "source": "docs/benchmarks.md",
            }
        )
    return items


def _theft(report: Mapping[str, Any], severity: str) -> list[dict[str, Any]]:
    items = [_item(PRADA, "a theft queries synthetic points whose distances to earlier ones look unnatural")]
    if severity in _SERIOUS:
        items.append(
            _item(
                LABELS_ONLY,
                "scores make equation-solving theft exact (Tramer et al. 2016); the label-only attack measured here "
                "is not stopped by it",
            )
        )
    return items


def _membership(report: Mapping[str, Any], severity: str) -> list[dict[str, Any]]:
    if severity not in _SERIOUS:
        return [
            {
                "defense": "No defence needed at this FPR",
                "why": "the attacks identify members at about chance; more shadows (--membership-shadows) sharpen LiRA",
                "cost": "none",
                "command": "ramparts audit --membership-shadows 64",
                "source": "docs/membership.md",
            }
        ]
    return [_item(DP_SGD, "the strongest attack identifies members well above chance at a low FPR")]


def _poisoning(report: Mapping[str, Any], severity: str) -> list[dict[str, Any]]:
    section = report.get("poisoning") or {}
    backdoor = any(
        p.get("attack_success") is not None
        for a in section.get("attacks") or []
        for p in a.get("curve") or []
    )
    flips = any(
        all(p.get("attack_success") is None for p in a.get("curve") or [])
        for a in section.get("attacks") or []
    )
    items = []
    if backdoor and severity in _SERIOUS:
        after = ((section.get("defense") or {}).get("after") or {}).get("attack_success")
        why = "a backdoor fires on a large share of inputs with a small poisoned share"
        if after is not None and after >= 0.5:
            why += f"; the audit's sanitiser left it firing on {100 * after:.1f}%: try the conv features or clustering"
        items.append(_item(SPECTRAL, why))
        items.append(_item(CLUSTERING, "a second detector with a different failure mode"))
    if flips and severity in _SERIOUS:
        items.append(
            _item(SPHERE_SLAB, "label flips cost clean accuracy; sanitising outliers bounds the damage")
        )
    if not items:
        items.append(
            {
                "defense": "Keep the training data's provenance",
                "why": "the poisoned shares tested did little; larger shares or other attacks may not",
                "cost": "none",
                "command": "ramparts poison --attack badnets --fractions 0.01,0.05,0.1",
                "source": "docs/poisoning.md",
            }
        )
    return items


def _encryption(report: Mapping[str, Any], severity: str) -> list[dict[str, Any]]:
    section = report.get("encryption") or {}
    if (section.get("as_is") or {}).get("encryptable"):
        return [_item(SERVE_ENCRYPTED, "the model runs on ciphertexts as it is")]
    return [_item(ENCRYPTABLE, "ReLU and max pooling cannot be computed on CKKS ciphertexts")]


def _defense(report: Mapping[str, Any], severity: str) -> list[dict[str, Any]]:
    items = [
        _item(ADAPTIVE, "this defence's number is the adaptive attack's; a non-adaptive one overstates it")
    ]
    if severity in _SERIOUS:
        items.append(
            _item(
                PGD_AT, "the adaptive attack breaks this defence; train the robustness in", _ref_eps(report)
            )
        )
    return items


_ADVICE = {
    "evasion_whitebox": _whitebox,
    "evasion_blackbox": _blackbox,
    "theft": _theft,
    "membership": _membership,
    "poisoning": _poisoning,
    "encryption": _encryption,
    "defense": _defense,
}
