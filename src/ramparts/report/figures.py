"""The audit report's figures, drawn from report.json's findings (and the example images the audit picked)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ramparts.report import plots


def evasion_figures(report: Mapping[str, Any], examples: Sequence[plots.Example] = ()) -> dict[str, bytes]:
    """`robustness` (curves), `examples` (panel), `hist_<check>` (minimum-norm distances): PNG bytes."""
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
    for key, stats in evasion.get("minimum_norm", {}).items():
        if stats.get("distances"):
            figures[f"hist_{key}"] = plots.distance_histogram(
                stats["distances"], median=stats["median_distance"], label=stats["label"]
            )
    return figures
