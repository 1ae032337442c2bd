"""The audit's scorecard: one row per threat with its key number, the attack behind it and a severity.

Built from report.json's sections alone (`scorecard(report.to_dict())`), so an old report can be scored again and
the rules are tested on hand-made dicts. The rules are data (the thresholds below) and each row states the rule
that fired, so a reader can check it. Severities, worst first: critical, high, medium, low; a section that did not
run is "not run", with the reason: the one run_audit records in `config.skipped` (switched off, or the model or the
data do not allow it: training data, gradients, scores, the model's layers), else inferred from the configuration.

- Evasion (white-box, black-box) and the defence: the share of the correctly classified images the model keeps
  under the strongest attack, `kept` = robust accuracy / clean accuracy at the reference eps (black-box: 1 - the
  success rate among the attacked images, which are the correctly classified ones); critical below 25%, high below
  50%, medium below 80%. The black-box row is rated on the attacks whose budget fits in the reference linf ball
  (an L2 attack: eps at most the norm of the ball's corners, eps * sqrt(input size)), so it speaks of the same
  threat as the white-box row; larger budgets are noted, and rated only when nothing else ran.
- Model theft: the label-only copy's fidelity (agreement with the model): critical from 90%, high from 75%,
  medium from 50%.
- Membership inference: lift = TPR / FPR of the strongest attack at the section's low FPR (chance is 1; Carlini
  et al. 2022 judge attacks there): critical from 10, high from 3, medium from 1.5; at most medium when the 95%
  interval of the TPR reaches down to the FPR (not told apart from chance).
- Poisoning: a backdoor that fires on >= 50% of test inputs with <= 1% of the training set poisoned is critical,
  with <= 5% high; >= 20% at any share tested is medium; label flips that cost >= 10 points of clean accuracy are
  high, >= 5 points medium.
- Encryption feasibility: low when the model runs on CKKS ciphertexts as it is, medium when an encryptable twin
  costs at most 5 points of accuracy, high otherwise (or when nothing encryptable was measured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low", "not run")
KEPT_THRESHOLDS: tuple[tuple[float, str], ...] = ((0.25, "critical"), (0.5, "high"), (0.8, "medium"))
FIDELITY_THRESHOLDS: tuple[tuple[float, str], ...] = ((0.9, "critical"), (0.75, "high"), (0.5, "medium"))
LIFT_THRESHOLDS: tuple[tuple[float, str], ...] = ((10.0, "critical"), (3.0, "high"), (1.5, "medium"))
BACKDOOR_SUCCESS = 0.5
BACKDOOR_SHARES: tuple[tuple[float, str], ...] = ((0.01, "critical"), (0.05, "high"))
BACKDOOR_NOTICEABLE = 0.2
FLIP_DROPS: tuple[tuple[float, str], ...] = ((0.10, "high"), (0.05, "medium"))
ENCRYPTION_TWIN_COST = 0.05

THREATS: tuple[tuple[str, str], ...] = (
    ("evasion_whitebox", "Evasion, white-box"),
    ("evasion_blackbox", "Evasion, black-box"),
    ("theft", "Model theft"),
    ("membership", "Membership inference"),
    ("poisoning", "Poisoning"),
    ("encryption", "Encryption feasibility"),
    ("defense", "Defence under adaptive attack"),
)


def scorecard(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of report.json's `scorecard`, in `THREATS` order; the defence row only for a defended model."""
    rows = [
        _evasion_whitebox(report),
        _evasion_blackbox(report),
        _theft(report),
        _membership(report),
        _poisoning(report),
        _encryption(report),
    ]
    if report.get("defense") or (report.get("config") or {}).get("defense"):
        rows.append(_defense(report))
    return rows


def worst(severities: Sequence[str]) -> str:
    """The most severe of `severities` ("not run" when none was rated)."""
    rated = [s for s in severities if s != "not run"]
    return min(rated, key=SEVERITIES.index) if rated else "not run"


def _row(
    threat: str,
    *,
    severity: str,
    value: float | None = None,
    text: str = "",
    attack: str | None = None,
    rule: str = "",
    reason: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    title = dict(THREATS)[threat]
    return {
        "threat": threat,
        "title": title,
        "value": value,
        "text": text,
        "attack": attack,
        "severity": severity,
        "rule": rule,
        "reason": reason,
        "note": note,
    }


def _not_run(threat: str, reason: str) -> dict[str, Any]:
    return _row(threat, severity="not run", text="not run", reason=reason)


# scorecard threat -> its key in report.json's `config.skipped` (written by run_audit: section -> why not run)
SKIP_KEYS = {
    "evasion_whitebox": "evasion_white_box",
    "evasion_blackbox": "evasion_black_box",
    "theft": "theft",
    "membership": "membership",
    "poisoning": "poisoning",
    "encryption": "encryption",
}


def skip_reason(report: Mapping[str, Any], threat: str) -> str | None:
    """Why the audit left a section (or some of its attacks, `section/attack`) out, as run_audit recorded it in
    `config.skipped`; None when it recorded nothing."""
    skipped = (report.get("config") or {}).get("skipped") or {}
    key = SKIP_KEYS.get(threat)
    if key is None:
        return None
    if key in skipped:
        return str(skipped[key])
    parts = [str(reason) for name, reason in skipped.items() if str(name).startswith(key + "/")]
    return "; ".join(dict.fromkeys(parts)) or None


def _at_least(value: float, thresholds: Sequence[tuple[float, str]]) -> str:
    """The first severity whose threshold `value` reaches (thresholds descending), else low."""
    return next((sev for limit, sev in thresholds if value >= limit), "low")


def _below(value: float, thresholds: Sequence[tuple[float, str]]) -> str:
    """The first severity whose threshold `value` is under (thresholds ascending), else low."""
    return next((sev for limit, sev in thresholds if value < limit), "low")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _kept_rule(kept: float) -> str:
    limits = ", ".join(f"{sev} below {100 * limit:g}%" for limit, sev in KEPT_THRESHOLDS)
    return f"kept {_pct(kept)} of the correctly classified images ({limits}, else low)"


def _model_name(report: Mapping[str, Any]) -> str:
    model = report.get("model") or {}
    return str(model.get("arch") or model.get("description") or "the model")


def _evasion_whitebox(report: Mapping[str, Any]) -> dict[str, Any]:
    threat = "evasion_whitebox"
    config = report.get("config") or {}
    findings = (report.get("evasion") or {}).get("findings") or []
    if not findings:
        if reason := skip_reason(report, threat):
            return _not_run(threat, reason)
        if not config.get("checks"):
            return _not_run(threat, "switched off: no white-box attack was configured")
        return _not_run(
            threat, f"needs white-box access (gradients), which {_model_name(report)} does not offer"
        )
    ref = report.get("reference") or {}
    robust, clean = ref.get("robust_accuracy"), report.get("clean_accuracy")
    if robust is None or not clean:
        return _not_run(threat, "no fixed-budget (linf) attack in the battery to rate at the reference eps")
    kept = float(robust) / float(clean)
    linf = sorted({f["label"] for f in findings})
    masking = report.get("masking_warnings") or []
    return _row(
        threat,
        severity=_below(kept, KEPT_THRESHOLDS),
        value=float(robust),
        text=f"robust accuracy {_pct(robust)} at eps={ref.get('eps_label')} (clean {_pct(clean)})",
        attack=ref.get("strongest")
        if len(linf) == 1
        else f"{ref.get('strongest')} (worst case of {len(linf)})",
        rule=_kept_rule(kept),
        note=f"{len(masking)} gradient-masking warning(s): the number may be optimistic" if masking else None,
    )


def _within_reference(report: Mapping[str, Any], section: Mapping[str, Any]) -> bool | None:
    """Whether a black-box attack's budget is no larger than the reference linf ball (None: unknown).

    linf: its eps is at most the reference eps. L2: its eps is at most the L2 norm of the reference ball's
    corners, eps * sqrt(input size), so every perturbation it may use has no more energy than the largest
    one the white-box row allows (digits, 8/255: 0.25; CIFAR-10: 1.74).
    """
    ref = (report.get("reference") or {}).get("eps")
    eps = section.get("eps")
    if ref is None or eps is None:
        return None
    if section.get("norm") == "linf":
        return float(eps) <= float(ref) + 1e-9
    shape = (report.get("data") or {}).get("input_shape")
    if section.get("norm") != "l2" or not shape:
        return None
    return float(eps) <= float(ref) * math.sqrt(math.prod(int(d) for d in shape)) + 1e-9


def _evasion_blackbox(report: Mapping[str, Any]) -> dict[str, Any]:
    threat = "evasion_blackbox"
    reason = skip_reason(report, threat)
    if not (report.get("config") or {}).get("blackbox"):
        return _not_run(threat, reason or "switched off (--blackbox none)")
    checks = [s for s in ((report.get("blackbox") or {}).get("checks") or {}).values() if s.get("rows")]
    if not checks:
        return _not_run(
            threat,
            reason or "no black-box attack produced a result (no correctly classified image to attack)",
        )
    comparable = [s for s in checks if _within_reference(report, s) is not False]
    rated = comparable or checks
    best = max(rated, key=lambda s: s["rows"][-1]["success_rate"])
    last = best["rows"][-1]
    success = float(last["success_rate"])
    notes = []
    ref_label = (report.get("reference") or {}).get("eps_label")
    for other in checks:
        if other in comparable:
            continue
        rate = float(other["rows"][-1]["success_rate"])
        notes.append(
            f"{other['label']} at {other['norm']} eps={other['eps_label']} (a larger budget than the "
            f"reference linf eps={ref_label}) fools {_pct(rate)}"
            + (
                "; rated on it: no attack ran within the reference budget"
                if not comparable
                else ": not rated"
            )
        )
    if reason:
        notes.append(f"not run: {reason}")
    return _row(
        threat,
        severity=_below(1.0 - success, KEPT_THRESHOLDS),
        value=success,
        text=(
            f"fools {_pct(success)} of {best['attacked']} images within {last['budget']:,} queries each "
            f"({best['norm']} eps={best['eps_label']})"
        ),
        attack=f"{best['label']} ({best['knowledge']}-only)",
        rule=_kept_rule(1.0 - success)
        + "; rated on the attacks whose budget fits in the reference linf ball (L2: its corners' norm)",
        note="; ".join(notes) or None,
    )


def _theft(report: Mapping[str, Any]) -> dict[str, Any]:
    threat = "theft"
    section = report.get("theft")
    if not section:
        if reason := skip_reason(report, threat):
            return _not_run(threat, reason)
        if not (report.get("config") or {}).get("theft"):
            return _not_run(threat, "switched off (--theft none)")
        return _not_run(threat, "the theft section produced no result")
    fidelity = float(section["fidelity"])
    limits = ", ".join(f"{sev} from {100 * limit:g}%" for limit, sev in FIDELITY_THRESHOLDS)
    transfer = section.get("transfer") or []
    note = None
    if transfer:
        first = transfer[0]
        note = (
            f"examples crafted on the copy fool the model {_pct(first['oracle_error'])} of the time at "
            f"eps={first['eps_label']} (random noise: {_pct(first.get('noise_error') or 0.0)})"
        )
    return _row(
        threat,
        severity=_at_least(fidelity, FIDELITY_THRESHOLDS),
        value=fidelity,
        text=f"a copy agreeing on {_pct(fidelity)} of the images from {section['queries']:,} label queries",
        attack=str(section.get("label", "model extraction")),
        rule=f"fidelity {_pct(fidelity)} ({limits}, else low)",
        note=note,
    )


def _membership(report: Mapping[str, Any]) -> dict[str, Any]:
    threat = "membership"
    section = report.get("membership")
    if not section:
        reason = skip_reason(report, threat)
        return _not_run(threat, reason or _needs_training_data(report, "--membership-shadows 0"))
    fpr = float(section["fpr"])
    rows = [r for r in section.get("attacks") or [] if r.get("tpr") is not None]
    if not rows or fpr <= 0:
        return _not_run(threat, f"no attack resolved a TPR at {100 * fpr:g}% FPR")
    best = max(rows, key=lambda r: (float(r["tpr"]), float(r["auc"])))
    tpr = float(best["tpr"])
    lift = tpr / fpr
    severity = _at_least(lift, LIFT_THRESHOLDS)
    limits = ", ".join(f"{sev} from {limit:g}" for limit, sev in LIFT_THRESHOLDS)
    rule = f"TPR / FPR = {lift:.1f} ({limits}, else low; chance is 1)"
    interval = best.get("tpr_ci95")
    if interval and float(interval[0]) <= fpr and SEVERITIES.index(severity) < SEVERITIES.index("medium"):
        severity = "medium"
        rule += f"; capped at medium: the 95% interval reaches {_pct(float(interval[0]))}, not above chance"
    return _row(
        threat,
        severity=severity,
        value=tpr,
        text=f"TPR {_pct(tpr)} at {100 * fpr:g}% FPR (AUC {float(best['auc']):.2f})",
        attack=str(best["label"]),
        rule=rule,
    )


def _poisoning(report: Mapping[str, Any]) -> dict[str, Any]:
    threat = "poisoning"
    section = report.get("poisoning")
    if not section:
        reason = skip_reason(report, threat)
        return _not_run(threat, reason or _needs_training_data(report, "--poisoning-fractions none"))
    candidates: list[tuple[str, str, str, float]] = []  # (severity, text, attack, value)
    for attack in section.get("attacks") or []:
        points = [p for p in attack["curve"] if float(p["fraction"]) > 0]
        for p in points:
            success = p.get("attack_success")
            if success is None:
                continue
            success, share = float(success), float(p["fraction"])
            text = f"trigger fires on {_pct(success)} of test inputs with {100 * share:g}% poisoned"
            if success >= BACKDOOR_SUCCESS:
                sev = next((s for limit, s in BACKDOOR_SHARES if share <= limit), "medium")
            else:
                sev = "medium" if success >= BACKDOOR_NOTICEABLE else "low"
            candidates.append((sev, text, attack["label"], success))
        if points and all(p.get("attack_success") is None for p in points):
            last = max(points, key=lambda p: float(p["fraction"]))
            drop = float(attack["baseline_accuracy"]) - float(last["clean_accuracy"])
            text = (
                f"clean accuracy {_pct(attack['baseline_accuracy'])} -> {_pct(last['clean_accuracy'])} with "
                f"{100 * float(last['fraction']):g}% poisoned"
            )
            candidates.append((_at_least(drop, FLIP_DROPS), text, attack["label"], drop))
    if not candidates:
        return _not_run(threat, "no poisoned share was measured")
    sev, text, label, value = min(candidates, key=lambda c: (SEVERITIES.index(c[0]), -c[3]))
    return _row(
        threat,
        severity=sev,
        value=value,
        text=text,
        attack=label,
        rule=(
            f"backdoor success >= {100 * BACKDOOR_SUCCESS:g}% with <= 1% poisoned: critical, <= 5%: high, "
            f">= {100 * BACKDOOR_NOTICEABLE:g}% at any share: medium; label flips costing >= 10 points: high, >= 5: medium"
        ),
        note=_sanitiser_note(section.get("defense")),
    )


def _sanitiser_note(defense: Mapping[str, Any] | None) -> str | None:
    if not defense:
        return None
    after = defense["after"].get("attack_success")
    return (
        f"spectral signatures flagged {_pct(defense['detection']['recall'])} of the poisons; retrained without "
        f"them the trigger fires on {_pct(after or 0.0)}"
    )


def _encryption(report: Mapping[str, Any]) -> dict[str, Any]:
    threat = "encryption"
    section = report.get("encryption")
    if not section:
        if reason := skip_reason(report, threat):
            return _not_run(threat, reason)
        if (report.get("config") or {}).get("encryption") is None:
            return _not_run(threat, "switched off (--no-encryption)")
        return _not_run(
            threat, f"needs the model's PyTorch layers (white-box), which {_model_name(report)} hides"
        )
    measured = section.get("measured")
    speed = (
        f"; {measured['batch']['evaluate_images_per_s']:.0f} images/s batched, "
        f"{measured['query']['seconds_per_image']:.2f} s per query"
        if measured
        else ""
    )
    if section["as_is"]["encryptable"]:
        return _row(
            threat,
            severity="low",
            value=float(measured["batch"]["agreement"]) if measured else None,
            text="runs on CKKS-encrypted inputs as it is" + speed,
            attack="CKKS (CryptoNets packing)",
            rule="encryptable as it is: low",
        )
    twin = section.get("twin")
    limit = f"an encryptable twin costing at most {100 * ENCRYPTION_TWIN_COST:g} points: medium, else high"
    if not twin or not measured:
        return _row(
            threat,
            severity="high",
            text=f"not encryptable as it is ({section['as_is'].get('reason', 'unsupported layer')})",
            attack="CKKS compiler",
            rule=limit + "; no encryptable twin measured (needs the training data)",
        )
    cost = float(twin["cost_vs_audited"])
    return _row(
        threat,
        severity="medium" if cost <= ENCRYPTION_TWIN_COST else "high",
        value=cost,
        text=f"not as it is; an x^2 {twin['arch']} costs {100 * cost:.1f} points of accuracy" + speed,
        attack="CKKS (CryptoNets packing)",
        rule=limit,
    )


def _defense(report: Mapping[str, Any]) -> dict[str, Any]:
    threat = "defense"
    section = report.get("defense")
    if not section:
        return _not_run(threat, "switched off (--defense-steps 0)")
    clean = float(section["clean"]["classifier_accuracy"])
    robust = float(section["robust_accuracy"])
    kept = robust / clean if clean > 0 else 0.0
    gap = float(section["transfer"]["robust_accuracy"]) - robust
    steps = ((report.get("config") or {}).get("defense") or {}).get("adaptive", {}).get("steps")
    return _row(
        threat,
        severity=_below(kept, KEPT_THRESHOLDS),
        value=robust,
        text=f"{_pct(robust)} rightly classified or rejected at eps={section['eps_label']} (clean {_pct(clean)})",
        attack=f"adaptive PGD{f'-{steps}' if steps else ''} (BPDA/EOT, detector term)",
        rule=_kept_rule(kept),
        note=f"judged non-adaptively it looks {100 * gap:.1f} points stronger" if gap > 0.1 else None,
    )


def _needs_training_data(report: Mapping[str, Any], flag: str) -> str:
    if (report.get("data") or {}).get("n_train") is None:
        return "needs the training data (pass the model's training set to the audit)"
    return f"switched off ({flag})"
