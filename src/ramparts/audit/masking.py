"""The audit's gradient-masking checks (Athalye, Carlini & Wagner 2018, section 6), read from what the
evasion and black-box sections measured: a one-step attack stronger than the iterative one at some eps, and
a black-box attack stronger than the white-box attacks on the same images at the same budget. (The audit's
robust-accuracy curves are cumulative over eps, so "accuracy rising with eps" cannot occur here; an unbounded
attack is not part of the battery.) For a defended model, the defence section adds one more: the defence judged
with examples crafted on the bare classifier looks much stronger than under the adaptive attack. Each warning is
a sentence; none means no symptom was seen."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ramparts.defenses.adaptive import masking_warnings

TOLERANCE = 0.02
# A defence that looks more than this much stronger judged non-adaptively than adaptively gets a warning.
DEFENSE_GAP = 0.10
# A random defence whose clean predictions change between draws more often than this gets a warning.
DRAW_DISAGREEMENT = 0.05


def masking_checks(
    findings: Sequence[Mapping[str, Any]],
    blackbox: Mapping[str, Any] | None,
    defense: Mapping[str, Any] | None = None,
) -> list[str]:
    """The warnings that fire for this audit (FGSM against PGD per eps; each black-box attack's largest
    budget against its white-box reference; the defence's non-adaptive against its adaptive number)."""
    robust: dict[str, dict[float, float]] = {}
    for f in findings:
        if f.get("check") in ("fgsm", "pgd"):
            robust.setdefault(str(f["check"]), {})[float(f["eps"])] = float(f["robust_accuracy"])
    warnings = masking_warnings(robust, tolerance=TOLERANCE) if len(robust) == 2 else []
    for section in (blackbox or {}).get("checks", {}).values():
        rows, ref = section.get("rows") or [], section.get("white_box")
        if not rows or ref is None:
            continue
        black, white = float(rows[-1]["success_rate"]), float(ref["success_rate"])
        if black > white + TOLERANCE:
            warnings.append(
                f"{section['label']} ({section['knowledge']}-only) fools {black:.1%} at eps {section['eps_label']}, "
                f"more than the {ref['label']} ({white:.1%}): either the white-box attacks are too weak for this "
                "model or its gradients are masked; try more steps, restarts, or BPDA/EOT (ramparts.defenses.adaptive)"
            )
    return warnings + defense_warnings(defense, findings)


def defense_warnings(
    section: Mapping[str, Any] | None, findings: Sequence[Mapping[str, Any]] = ()
) -> list[str]:
    """The defence section's warnings: its non-adaptive robust accuracy (PGD crafted on the bare classifier)
    exceeds the adaptive one by more than the section's `warn_gap` (Athalye et al. 2018); a random defence
    whose clean predictions often change between draws (the battery's one-draw numbers are then noisy); and,
    for a defence without detectors (whose battery numbers are whole-defence numbers), the evasion battery's
    strongest check at the section's eps above the adaptive attack by more than `warn_gap` (its gradients
    through the transforms are masked)."""
    if not section:
        return []
    warnings = []
    agree = section["clean"].get("draw_agreement")
    if agree is not None and agree < 1.0 - DRAW_DISAGREEMENT:
        warnings.append(
            f"the defence is random and only {100 * agree:.1f}% of clean predictions repeat from one draw to the "
            "next: the evasion battery judges one draw, so its curves mix the attack with chance; read the defence "
            "section (majority of draws, EOT)"
        )
    gap, limit = float(section["gap"]), float(section["config"]["warn_gap"])
    at = [float(f["robust_accuracy"]) for f in findings if math.isclose(float(f["eps"]), section["eps"])]
    robust = float(section["robust_accuracy"])
    if at and not section["defense"]["detectors"] and min(at) > robust + limit:
        bpda = section["config"]["adaptive"]["bpda"]
        if bpda:
            cause = f"its non-differentiable transforms ({', '.join(bpda)}) mask the gradients"
        elif section["defense"]["randomized"]:
            cause = "its randomness gives one-draw gradients that mislead plain attacks (EOT averages them)"
        else:
            cause = "plain gradients through its transforms fall short"
        warnings.append(
            f"the evasion battery, attacking through the defended model with plain gradients, leaves "
            f"{100 * min(at):.1f}% robust at eps {section['eps_label']}, the adaptive attack {100 * robust:.1f}%: "
            f"{cause}, so the battery's curves overstate this defence"
        )
    if gap > limit:
        warnings.append(
            f"defence judged non-adaptively looks {100 * gap:.1f} points stronger than it is: examples crafted on "
            f"the bare classifier leave {100 * section['transfer']['robust_accuracy']:.1f}% robust at eps "
            f"{section['eps_label']}, the adaptive attack (BPDA/EOT/detector term) {100 * section['robust_accuracy']:.1f}%; "
            "report the adaptive number"
        )
    return warnings
