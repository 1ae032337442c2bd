"""The audit report's figures, drawn from report.json's findings (and the example images the audit picked)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ramparts.report import plots


def evasion_figures(report: Mapping[str, Any], examples: Sequence[plots.Example] = ()) -> dict[str, bytes]:
    """`robustness` (curves), `examples` (panel), `hist_<check>` (minimum-norm distances), `blackbox`
    (success against the query budget), `theft` (the copy's fidelity against the labels used),
    `membership` (the membership attacks' ROC, log-log), `poisoning` (accuracy and attack success against
    the poisoned fraction): PNG bytes."""
    figures: dict[str, bytes] = {}
    evasion = report.get("evasion", {})
    findings = evasion.get("findings", [])
    bounds = tuple(report.get("config", {}).get("bounds", (0.0, 1.0)))
    curves: dict[str, list[tuple[float, float]]] = {}
    for f in findings:
        curves.setdefault(f["label"], []).append((f["eps"], f["robust_accuracy"]))
    if curves:
        worst = [(w["eps"], w["robust_accuracy"]) for w in evasion.get("worst_case", [])]
        figures["robustness"] = plots.robustness_curve(
            curves,
            clean_accuracy=report["clean_accuracy"],
            reference_eps=report.get("reference", {}).get("eps"),
            worst_case=worst if len(curves) > 1 else None,
            bounds_width=bounds[1] - bounds[0],
        )
    if examples:
        figures["examples"] = plots.examples_panel(examples, bounds=(bounds[0], bounds[1]))
    black = (report.get("blackbox") or {}).get("checks", {})

    def name(s: Mapping[str, Any]) -> str:
        return f"{s['label']} ({s['knowledge']}-only, {s['norm']} eps {s['eps_label']})"

    curves_bb = {
        name(s): [(r["budget"], r["success_rate"]) for r in s["rows"]] for s in black.values() if s["rows"]
    }
    if curves_bb:
        refs = {
            name(s): (s["white_box"]["label"], s["white_box"]["success_rate"])
            for s in black.values()
            if s.get("white_box")
        }
        figures["blackbox"] = plots.success_vs_queries(curves_bb, references=refs)
    theft = report.get("theft")
    if theft and theft.get("curve"):
        figures["theft"] = plots.fidelity_vs_queries(
            [(q, f) for q, f in theft["curve"]], accuracy=theft.get("accuracy")
        )
    membership = report.get("membership")
    if membership and membership.get("attacks"):
        figures["membership"] = plots.roc_loglog({r["label"]: r["roc"] for r in membership["attacks"]})
    poisoning = report.get("poisoning")
    if poisoning and poisoning.get("attacks"):
        rows = poisoning["attacks"]
        figures["poisoning"] = plots.poisoning_curves(
            {r["label"]: r["curve"] for r in rows}, baseline=rows[0]["baseline_accuracy"]
        )
    for key, stats in evasion.get("minimum_norm", {}).items():
        if stats.get("distances"):
            figures[f"hist_{key}"] = plots.distance_histogram(
                stats["distances"], median=stats["median_distance"], label=stats["label"]
            )
    return figures
