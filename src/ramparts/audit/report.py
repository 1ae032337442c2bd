"""`AuditReport` (report.json in memory) and the tables built from the findings: worst case and reference."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ramparts.audit.checks import parse_grid_eps
from ramparts.audit.scorecard import scorecard
from ramparts.data import Dataset
from ramparts.errors import invalid
from ramparts.report.recommend import recommendations
from ramparts.report.summary import eps_label

# report.json's format version: 2 added `defense` (the defence section of a defended model); 4 added `scorecard`
# (one row per threat: key number, attack, severity, rule) and `recommendations` (per threat, the defence to apply
# and its measured cost), both computed from the other fields.
REPORT_VERSION = 4


@dataclass
class AuditReport:
    """Everything the audit measured; `to_dict()` is report.json, `arrays` go to adv_examples.npz.

    `resumed`: what was reused from an earlier run of the same configuration in the run folder (None:
    everything was measured by this run). `defense`: the defence section of a `DefendedModel` (None for a
    plain model); report.json version 2 added it.
    """

    config: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    clean_accuracy: float
    findings: list[dict[str, Any]]
    worst_case: list[dict[str, Any]]
    minimum_norm: dict[str, Any]
    reference: dict[str, Any]
    headlines: list[str]
    citations: dict[str, str | None]
    timings: dict[str, float]
    environment: dict[str, Any]
    gate: dict[str, Any] | None = None
    out_dir: Path | None = None
    resumed: dict[str, Any] | None = None
    blackbox: dict[str, Any] | None = None
    theft: dict[str, Any] | None = None
    membership: dict[str, Any] | None = None
    poisoning: dict[str, Any] | None = None
    defense: dict[str, Any] | None = None
    encryption: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    masking: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)

    def curve(self, check: str) -> list[tuple[float, float]]:
        """[(eps, accuracy under attack)] of one check, eps ascending (without the clean point)."""
        return [(f["eps"], f["robust_accuracy"]) for f in self.findings if f["check"] == check]

    def success_curve(self, check: str) -> list[tuple[int, float]]:
        """[(queries per image, success rate)] of one black-box check, budgets ascending."""
        section = (self.blackbox or {}).get("checks", {}).get(check)
        if section is None:
            raise invalid(
                "check",
                check,
                f"a black-box check of the audit: {list((self.blackbox or {}).get('checks', {}))}",
            )
        return [(r["budget"], r["success_rate"]) for r in section["rows"]]

    def robust_accuracy(self, eps: float | str | None = None, check: str | None = None) -> float:
        """Accuracy under attack at `eps` (default: the reference eps): worst case, or one check's."""
        lo, hi = self.config["bounds"]
        value = self.reference["eps"] if eps is None else parse_grid_eps(eps, (lo, hi))
        rows = self.worst_case if check is None else [f for f in self.findings if f["check"] == check]
        for row in rows:
            if math.isclose(row["eps"], value, rel_tol=1e-6, abs_tol=1e-9):
                return float(row["robust_accuracy"])
        raise invalid("eps", eps, f"an eps of the audit's grid {[r['eps'] for r in rows]}")

    def to_dict(self) -> dict[str, Any]:
        """report.json: the sections as measured, then the scorecard and recommendations computed from them."""
        data = self._sections()
        data["scorecard"] = scorecard(data)
        data["recommendations"] = recommendations(data, data["scorecard"])
        return data

    def _sections(self) -> dict[str, Any]:
        return {
            "format": "ramparts-audit",
            "version": REPORT_VERSION,
            "headlines": self.headlines,
            "gate": self.gate,
            "config": self.config,
            "settings": self.settings,
            "model": self.model,
            "data": self.data,
            "clean_accuracy": self.clean_accuracy,
            "reference": self.reference,
            "evasion": {
                "findings": self.findings,
                "worst_case": self.worst_case,
                "minimum_norm": self.minimum_norm,
            },
            "blackbox": self.blackbox,
            "theft": self.theft,
            "membership": self.membership,
            "poisoning": self.poisoning,
            "defense": self.defense,
            "encryption": self.encryption,
            "masking_warnings": self.masking,
            "citations": self.citations,
            "timings": self.timings,
            "resumed": self.resumed,
            "environment": self.environment,
            "files": sorted({p.name for p in self.out_dir.iterdir()} | {"report.json"})
            if self.out_dir
            else [],
        }


def describe_data(train_ds: Dataset | None, test_ds: Dataset) -> dict[str, Any]:
    """report.json's `data`: name, sizes, input shape and classes."""
    return {
        "name": test_ds.name,
        "n_train": len(train_ds) if train_ds is not None else None,
        "n_test": len(test_ds),
        "input_shape": list(test_ds.input_shape),
        "classes": list(test_ds.classes),
        "num_classes": test_ds.num_classes,
    }


def worst_case(
    findings: list[dict[str, Any]],
    grid: list[float],
    masks: dict[str, list[torch.Tensor]],
    correct: torch.Tensor,
) -> list[dict[str, Any]]:
    """Per eps, the accuracy when every sample meets every attack: robust only if no attack fooled it."""
    rows = []
    for i, eps in enumerate(grid):
        broken = ~correct
        for per_eps in masks.values():
            broken = broken | per_eps[i]
        at = [f for f in findings if f["eps"] == eps]
        rows.append(
            {
                "eps": eps,
                "eps_label": at[0]["eps_label"] if at else str(eps),
                "robust_accuracy": float((~broken).float().mean()),
                "strongest": min(at, key=lambda f: f["robust_accuracy"])["label"] if at else None,
            }
        )
    return rows


def reference_row(
    findings: list[dict[str, Any]],
    worst: list[dict[str, Any]],
    ref: float,
    clean: float,
    bounds: tuple[float, float],
) -> dict[str, Any]:
    """The summary at the reference eps: worst case, strongest attack and each check's accuracy."""
    at = {f["check"]: f["robust_accuracy"] for f in findings if math.isclose(f["eps"], ref, abs_tol=1e-12)}
    row = next((w for w in worst if math.isclose(w["eps"], ref, abs_tol=1e-12)), None)
    return {
        "eps": ref,
        "eps_label": eps_label(ref, bounds=bounds),
        "clean_accuracy": clean,
        "robust_accuracy": row["robust_accuracy"] if row else None,
        "strongest": row["strongest"] if row else None,
        "by_check": at,
    }
