"""Words for the findings: eps labels, the headline sentences at the top of the report, paper citations."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_CITATION = re.compile(r"([A-Z][^.\"]*?(?:et al\.)?[^.\"]*?,\s*\"[^\"]+\",?[^\"]*?(?:19|20)\d\d)")


def eps_label(eps: float, *, bounds: tuple[float, float] = (0.0, 1.0), pixel_scale: float = 255.0) -> str:
    """`8/255` when eps is a whole number of pixel levels, else `0.05 (12.8/255)`."""
    levels = eps / (bounds[1] - bounds[0]) * pixel_scale
    if abs(levels - round(levels)) < 1e-4:
        return f"{round(levels)}/{pixel_scale:g}"
    return f"{eps:.3g} ({levels:.1f}/{pixel_scale:g})"


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def attack_citation(cls: type | Callable[..., Any]) -> str | None:
    """The paper an attack follows, read from its class (or function) docstring or, failing that, its module's."""
    module = sys.modules.get(cls.__module__)
    for doc in (cls.__doc__, module.__doc__ if module else None):
        for paragraph in (doc or "").split("\n\n"):
            if m := _CITATION.search(" ".join(paragraph.split())):
                return m.group(1).strip()
    return None


def headlines(
    *,
    n: int,
    clean: float,
    reference: Mapping[str, Any],
    worst_case: Sequence[Mapping[str, Any]],
    minimum_norm: Mapping[str, Mapping[str, Any]],
    linf_labels: Mapping[str, str],
    main: str | None,
    blackbox: Mapping[str, Any] | None = None,
    theft: Mapping[str, Any] | None = None,
    membership: Mapping[str, Any] | None = None,
    poisoning: Mapping[str, Any] | None = None,
    encryption: Mapping[str, Any] | None = None,
    masking: Sequence[str] = (),
    defense: Mapping[str, Any] | None = None,
) -> list[str]:
    """The summary sentences: clean accuracy, the main attack at the reference eps, where accuracy
    halves and collapses, and the minimum-norm attacks' median distance.

    `linf_labels`: check key -> label of the fixed-budget attacks; `main`: the key to name first.
    """
    lines = [f"Clean accuracy on {n} held-out images: {pct(clean)}."]
    if defense:
        lines.append(defense_headline(defense))
    by_check = reference.get("by_check", {})
    if main is not None and main in by_check:
        text = (
            f"{linf_labels[main]}-linf at eps={reference['eps_label']} lowers accuracy from {pct(clean)} "
            f"to {pct(by_check[main])}"
        )
        together = reference.get("robust_accuracy")
        if len(linf_labels) > 1 and together is not None and together < by_check[main]:
            text += (
                f"; the {len(linf_labels)} attacks together (an image counts as robust only if every attack "
                f"fails) bring it to {pct(together)}"
            )
        lines.append(text + ".")
        half = next((w for w in worst_case if w["robust_accuracy"] <= clean / 2), None)
        low = next((w for w in worst_case if w["robust_accuracy"] <= 0.1), None)
        scope = f"worst case over the {len(linf_labels)} linf attacks" if len(linf_labels) > 1 else "linf"
        if half is not None and low is not None:
            lines.append(
                f"Accuracy halves by eps={half['eps_label']} and falls to 10% or less by "
                f"eps={low['eps_label']} ({scope})."
            )
        elif half is not None:
            lines.append(
                f"Accuracy halves by eps={half['eps_label']} but stays above 10% up to the largest eps ({scope})."
            )
        else:
            lines.append(f"Accuracy stays above half its clean value up to the largest eps tested ({scope}).")
    for stats in minimum_norm.values():
        if stats.get("median_distance") is not None:
            lines.append(
                f"{stats['label']} fools {pct(stats['success_rate'])} of the correctly classified images; "
                f"median L2 distance {stats['median_distance']:.3g} "
                f"(an RMS change of {stats['median_rms_pixels']:.1f}/255 per input value)."
            )
        elif stats.get("attacked"):
            lines.append(f"{stats['label']} found no adversarial example for {stats['attacked']} images.")
    if blackbox and (line := blackbox_headline(blackbox)):
        lines.append(line)
    if theft:
        lines.append(theft_headline(theft))
    if membership:
        lines.append(membership_headline(membership))
    if poisoning:
        lines.append(poisoning_headline(poisoning))
    if encryption:
        lines.append(encryption_headline(encryption))
    if masking:
        lines.append(f"Gradient-masking check: {len(masking)} warning(s); first: {masking[0]}.")
    return lines


def defense_headline(section: Mapping[str, Any]) -> str:
    """One sentence: what the defence is, its robust accuracy under the adaptive attack (the headline), the
    non-adaptive number next to it, and its clean cost."""
    d = section["defense"]
    parts = ", ".join(p["name"] for p in [*d["transforms"], *d["detectors"]]) or "no transform or detector"
    clean, transfer = section["clean"], section["transfer"]
    detected = transfer.get("detection_rate")
    text = (
        f"Defence ({parts}): under the adaptive attack at eps={section['eps_label']} the whole defence keeps "
        f"{pct(section['robust_accuracy'])} of the images (rightly classified or rejected); judged with PGD "
        f"crafted on the bare classifier it would seem to keep {pct(transfer['robust_accuracy'])}"
    )
    if detected is not None:
        text += f" ({pct(detected)} of those examples detected)"
    return text + (
        f". Clean cost: accuracy {pct(clean['classifier_accuracy'])} (classifier alone) -> "
        f"{pct(clean['defended_accuracy'])} (defended), {pct(clean['rejected'])} of clean inputs rejected."
    )


def poisoning_headline(section: Mapping[str, Any]) -> str:
    """One sentence: what the largest poisoned share does to clean accuracy and, for a backdoor, how often
    it fires; then whether the sanitiser caught it."""
    parts = []
    for row in section["attacks"]:
        last = row["curve"][-1]
        text = (
            f"{row['label']} on {100 * last['fraction']:g}% of the training set: clean accuracy "
            f"{100 * row['baseline_accuracy']:.1f}% -> {100 * last['clean_accuracy']:.1f}%"
        )
        if last.get("attack_success") is not None:
            text += f", the trigger sends {100 * last['attack_success']:.1f}% of test inputs to the attacker's class"
        parts.append(text)
    line = "Poisoning: " + "; ".join(parts) + "."
    defense = section.get("defense")
    if defense:
        d, after = defense["detection"], defense["after"]
        line += (
            f" Spectral signatures flag {100 * d['recall']:.0f}% of the backdoor's poisons "
            f"({100 * d['clean_fpr']:.1f}% of clean records); retrained without them the trigger fires on "
            f"{100 * (after['attack_success'] or 0.0):.1f}%."
        )
    return line


def membership_headline(section: Mapping[str, Any]) -> str:
    """One sentence: the strongest attack's TPR at the section's FPR and AUC, and the shadow-free LOSS's."""
    rows = section["attacks"]
    fpr = float(section["fpr"])
    best = max(rows, key=lambda r: (r["tpr"] or 0.0, r["auc"]))
    text = (
        f"Membership: {best['label']} identifies {_tpr(best['tpr'])} of the training records at "
        f"{100 * fpr:g}% false positives (AUC {best['auc']:.2f})"
    )
    others = [r for r in rows if r is not best]
    if others:
        text += "; " + ", ".join(f"{r['label']}: {_tpr(r['tpr'])} (AUC {r['auc']:.2f})" for r in others)
    return text + "."


def _tpr(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def theft_headline(section: Mapping[str, Any]) -> str:
    """One sentence: the labels the attacker used, the copy's fidelity, and what the attack crafted on the
    copy does to the model at each eps, against random noise of the same size."""
    rows = section.get("transfer") or []
    attack = str(section.get("config", {}).get("transfer_attack", "fgsm")).upper()
    text = (
        f"A label-only attacker with {section['queries']:,} queries copies the model at "
        f"{_whole_pct(section['fidelity'])} fidelity"
    )
    if rows:
        rates = [f"{_whole_pct(r['oracle_error'])} at eps={r['eps_label']}" for r in rows]
        rates[0] = rates[0].replace(" at ", " of the time at ", 1)
        noise = " and ".join(_whole_pct(r.get("noise_error")) for r in rows)
        text += (
            f"; {attack} examples crafted on the copy fool the model {' and '.join(rates)} "
            f"(random noise of the same size: {noise})"
        )
    return text + "."


def _whole_pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.0f}%"


def blackbox_headline(blackbox: Mapping[str, Any]) -> str | None:
    """One sentence: what each black-box attack fools with its largest query budget, against white-box."""
    parts = []
    for section in blackbox.get("checks", {}).values():
        rows = section.get("rows") or []
        if not rows:
            continue
        last = rows[-1]
        norm = "linf" if section["norm"] == "linf" else "L2"
        text = (
            f"{section['label']} ({section['knowledge']}-only, {norm} eps={section['eps_label']}) fools "
            f"{pct(last['success_rate'])} of {section['attacked']} images within {last['budget']:,} queries each"
        )
        ref = section.get("white_box")
        if ref is not None:
            text += f" (white-box: {pct(ref['success_rate'])})"
        parts.append(text)
    if not parts:
        return None
    return "Black-box: " + "; ".join(parts) + "."


def encryption_headline(section: Mapping[str, Any]) -> str:
    """One sentence for the report's summary."""
    measured = section.get("measured")
    if measured is None:
        return "Encryption: the model cannot be evaluated on encrypted inputs as it is " + (
            "(see the section for the layer to replace)." if not section["as_is"]["encryptable"] else "."
        )
    batch, query = measured["batch"], measured["query"]
    prefix = (
        "Encryption: the audited model runs on CKKS-encrypted inputs as it is"
        if section["as_is"]["encryptable"]
        else (
            f"Encryption: not as it is (ReLU/max pooling); {measured['model']} costs "
            f"{100 * section['twin']['cost_vs_audited']:.1f} points of accuracy and runs encrypted"
        )
    )
    return (
        f"{prefix}: {batch['evaluate_images_per_s']:.0f} images/s batched, {query['seconds_per_image']:.2f} s per single "
        f"query, {100 * batch['agreement']:.1f}% agreement with plaintext."
    )
