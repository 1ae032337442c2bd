"""The audit's gradient-masking checks (Athalye, Carlini & Wagner 2018, section 6), read from what the
evasion and black-box sections measured: a one-step attack stronger than the iterative one at some eps, and
a black-box attack stronger than the white-box attacks on the same images at the same budget. (The audit's
robust-accuracy curves are cumulative over eps, so "accuracy rising with eps" cannot occur here; an unbounded
attack is not part of the battery.) Each warning is a sentence; none means no symptom was seen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ramparts.defenses.adaptive import masking_warnings

TOLERANCE = 0.02


def masking_checks(findings: Sequence[Mapping[str, Any]], blackbox: Mapping[str, Any] | None) -> list[str]:
    """The warnings that fire for this audit (FGSM against PGD per eps; each black-box attack's largest
    budget against its white-box reference)."""
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
    return warnings
