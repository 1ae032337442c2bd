"""Tests for ramparts.audit.scorecard and ramparts.report.recommend: each severity rule on hand-made report dicts."""

from __future__ import annotations

from typing import Any

import pytest

from ramparts.audit.scorecard import SEVERITIES, THREATS, scorecard, worst
from ramparts.report.recommend import recommendations


def _report(**sections: Any) -> dict[str, Any]:
    """A report.json dict with only the fields the scorecard reads; every optional section off."""
    base: dict[str, Any] = {
        "config": {
            "checks": [{"key": "pgd", "label": "PGD", "norm": "linf"}],
            "blackbox": None,
            "theft": None,
            "membership": None,
            "poisoning": None,
            "encryption": None,
            "defense": None,
        },
        "model": {"arch": "small_cnn"},
        "data": {"n_train": 1000},
        "clean_accuracy": 0.9,
        "reference": {"eps": 0.1, "eps_label": "0.1", "robust_accuracy": 0.45, "strongest": "PGD"},
        "evasion": {"findings": [{"check": "pgd", "label": "PGD", "eps": 0.1, "robust_accuracy": 0.45}]},
        "blackbox": None,
        "theft": None,
        "membership": None,
        "poisoning": None,
        "encryption": None,
        "defense": None,
        "masking_warnings": [],
    }
    for key, value in sections.items():
        if isinstance(value, tuple):
            base[key], base["config"][key] = value
        else:
            base[key] = value
    return base


def _row(report: dict[str, Any], threat: str) -> dict[str, Any]:
    return next(r for r in scorecard(report) if r["threat"] == threat)


@pytest.mark.parametrize(
    ("robust", "severity"), [(0.2, "critical"), (0.4, "high"), (0.6, "medium"), (0.8, "low")]
)
def test_whitebox_severity_is_the_share_of_clean_accuracy_kept(robust: float, severity: str) -> None:
    report = _report()
    report["reference"]["robust_accuracy"] = robust  # clean 0.9: kept 22%, 44%, 67%, 89%
    row = _row(report, "evasion_whitebox")
    assert row["severity"] == severity
    assert row["value"] == robust
    assert row["attack"] == "PGD"
    assert "0.1" in row["text"]


def test_whitebox_not_run_says_why() -> None:
    report = _report()
    report["evasion"]["findings"] = []
    assert "white-box access" in _row(report, "evasion_whitebox")["reason"]
    report["config"]["checks"] = []
    row = _row(report, "evasion_whitebox")
    assert row["severity"] == "not run"
    assert "switched off" in row["reason"]


def test_masking_warnings_are_noted_on_the_whitebox_row() -> None:
    report = _report(masking_warnings=["one-step stronger than iterative"])
    assert "1 gradient-masking warning" in _row(report, "evasion_whitebox")["note"]


def _blackbox(success: float) -> dict[str, Any]:
    rows = [{"budget": 100, "success_rate": success / 2}, {"budget": 1000, "success_rate": success}]
    return {
        "checks": {
            "square": {
                "label": "Square",
                "knowledge": "score",
                "norm": "linf",
                "eps_label": "8/255",
                "attacked": 50,
                "rows": rows,
            }
        }
    }


@pytest.mark.parametrize(
    ("success", "severity"), [(0.9, "critical"), (0.6, "high"), (0.3, "medium"), (0.1, "low")]
)
def test_blackbox_severity_reads_the_largest_budget(success: float, severity: str) -> None:
    report = _report(blackbox=(_blackbox(success), {"checks": []}))
    row = _row(report, "evasion_blackbox")
    assert row["severity"] == severity
    assert row["value"] == success
    assert "1,000 queries" in row["text"]
    assert row["attack"] == "Square (score-only)"


def _hsj(success: float, eps: float) -> dict[str, Any]:
    return {
        "label": "HopSkipJump",
        "knowledge": "label",
        "norm": "l2",
        "eps": eps,
        "eps_label": f"{eps:g}",
        "attacked": 50,
        "rows": [{"budget": 1000, "success_rate": success}],
    }


def test_blackbox_is_rated_within_the_reference_budget() -> None:
    """A label-only L2 attack at a budget larger than the reference linf ball (digits 8x8, eps 0.1: corners at
    L2 0.8) does not make the row critical when the score-based attack at the reference eps is weak."""
    square = _blackbox(0.1)["checks"]["square"] | {"eps": 0.1}
    report = _report(blackbox=({"checks": {"square": square, "hsj": _hsj(0.9, 1.0)}}, {"checks": []}))
    report["data"]["input_shape"] = [1, 8, 8]
    row = _row(report, "evasion_blackbox")
    assert (row["severity"], row["attack"]) == ("low", "Square (score-only)")
    assert (
        "HopSkipJump at l2 eps=1 (a larger budget than the reference linf eps=0.1) fools 90.0%: not rated"
        in (row["note"])
    )
    # Within the corners' norm the L2 attack speaks of the same threat, and rates the row.
    report["blackbox"]["checks"]["hsj"] = _hsj(0.9, 0.5)
    row = _row(report, "evasion_blackbox")
    assert (row["severity"], row["attack"], row["note"]) == ("critical", "HopSkipJump (label-only)", None)
    # Only larger budgets ran: rated on them, and the note says so.
    report["blackbox"]["checks"] = {"hsj": _hsj(0.9, 1.0)}
    row = _row(report, "evasion_blackbox")
    assert row["severity"] == "critical"
    assert "no attack ran within the reference budget" in row["note"]


def test_blackbox_switched_off() -> None:
    row = _row(_report(), "evasion_blackbox")
    assert (row["severity"], row["reason"]) == ("not run", "switched off (--blackbox none)")


def _theft(fidelity: float) -> dict[str, Any]:
    return {
        "label": "Jacobian-based substitute training",
        "queries": 400,
        "fidelity": fidelity,
        "transfer": [{"eps_label": "8/255", "oracle_error": 0.3, "noise_error": 0.02}],
    }


@pytest.mark.parametrize(
    ("fidelity", "severity"), [(0.95, "critical"), (0.8, "high"), (0.6, "medium"), (0.3, "low")]
)
def test_theft_severity_is_the_fidelity(fidelity: float, severity: str) -> None:
    row = _row(_report(theft=(_theft(fidelity), {"attack": "jacobian"})), "theft")
    assert row["severity"] == severity
    assert "400 label queries" in row["text"]
    assert "30.0% of the time" in row["note"]


def _membership(tpr: float, ci: list[float] | None = None) -> dict[str, Any]:
    rows = [
        {"label": "LOSS", "tpr": 0.0, "auc": 0.55, "tpr_ci95": [0.0, 0.01]},
        {"label": "LiRA online", "tpr": tpr, "auc": 0.7, "tpr_ci95": ci},
    ]
    return {"fpr": 0.01, "attacks": rows}


@pytest.mark.parametrize(
    ("tpr", "severity"), [(0.2, "critical"), (0.05, "high"), (0.02, "medium"), (0.01, "low")]
)
def test_membership_severity_is_the_lift_over_the_fpr(tpr: float, severity: str) -> None:
    row = _row(_report(membership=(_membership(tpr), {"shadows": 8})), "membership")
    assert row["severity"] == severity
    assert row["attack"] == "LiRA online"
    assert row["text"].startswith(f"TPR {100 * tpr:.1f}% at 1% FPR")


def test_membership_capped_at_medium_when_the_interval_reaches_chance() -> None:
    row = _row(_report(membership=(_membership(0.2, [0.005, 0.3]), {"shadows": 8})), "membership")
    assert row["severity"] == "medium"
    assert "capped at medium" in row["rule"]
    row = _row(_report(membership=(_membership(0.2, [0.05, 0.3]), {"shadows": 8})), "membership")
    assert row["severity"] == "critical"


def test_membership_and_poisoning_need_the_training_data() -> None:
    report = _report(data={"n_train": None})
    for threat in ("membership", "poisoning"):
        row = _row(report, threat)
        assert row["severity"] == "not run"
        assert "needs the training data" in row["reason"]
    assert "--membership-shadows 0" in _row(_report(), "membership")["reason"]


def _poisoning(points: list[tuple[float, float | None, float]], baseline: float = 0.95) -> dict[str, Any]:
    curve = [
        {
            "fraction": 0.0,
            "clean_accuracy": baseline,
            "attack_success": 0.0 if points[0][1] is not None else None,
        }
    ]
    curve += [{"fraction": f, "attack_success": s, "clean_accuracy": acc} for f, s, acc in points]
    return {"attacks": [{"label": "attack", "baseline_accuracy": baseline, "curve": curve}]}


@pytest.mark.parametrize(
    ("points", "severity"),
    [
        ([(0.01, 0.6, 0.95), (0.05, 0.9, 0.95)], "critical"),
        ([(0.01, 0.3, 0.95), (0.05, 0.9, 0.95)], "high"),
        ([(0.01, 0.1, 0.95), (0.1, 0.9, 0.95)], "medium"),
        ([(0.01, 0.25, 0.95)], "medium"),
        ([(0.01, 0.05, 0.95), (0.05, 0.1, 0.95)], "low"),
        ([(0.05, None, 0.94), (0.2, None, 0.83)], "high"),
        ([(0.05, None, 0.94), (0.2, None, 0.88)], "medium"),
        ([(0.05, None, 0.94), (0.2, None, 0.92)], "low"),
    ],
)
def test_poisoning_rules(points: list[tuple[float, float | None, float]], severity: str) -> None:
    row = _row(_report(poisoning=(_poisoning(points), {"fractions": [0.01]})), "poisoning")
    assert row["severity"] == severity


def test_poisoning_notes_what_the_sanitiser_left() -> None:
    section = _poisoning([(0.05, 0.9, 0.95)])
    section["defense"] = {"detection": {"recall": 0.25}, "after": {"attack_success": 0.8}}
    row = _row(_report(poisoning=(section, {"fractions": [0.05]})), "poisoning")
    assert (
        row["note"]
        == "spectral signatures flagged 25.0% of the poisons; retrained without them the trigger fires on 80.0%"
    )


def _encryption(as_is: bool, cost: float | None) -> dict[str, Any]:
    measured = {
        "batch": {"evaluate_images_per_s": 500.0, "agreement": 1.0},
        "query": {"seconds_per_image": 0.3},
    }
    return {
        "as_is": {"encryptable": as_is, "reason": "layer features.1 (ReLU)"},
        "twin": None if cost is None else {"arch": "mlp", "cost_vs_audited": cost},
        "measured": measured if as_is or cost is not None else None,
    }


@pytest.mark.parametrize(
    ("as_is", "cost", "severity"),
    [(True, None, "low"), (False, 0.03, "medium"), (False, 0.08, "high"), (False, None, "high")],
)
def test_encryption_feasibility(as_is: bool, cost: float | None, severity: str) -> None:
    row = _row(_report(encryption=(_encryption(as_is, cost), {"queries": 3})), "encryption")
    assert row["severity"] == severity


def test_encryption_not_run_reasons() -> None:
    assert "--no-encryption" in _row(_report(), "encryption")["reason"]
    report = _report()
    report["config"]["encryption"] = {"queries": 3}
    assert "white-box" in _row(report, "encryption")["reason"]


def _defense(robust: float, transfer: float) -> dict[str, Any]:
    return {
        "eps_label": "0.1",
        "robust_accuracy": robust,
        "clean": {"classifier_accuracy": 0.9},
        "transfer": {"robust_accuracy": transfer},
    }


def test_defense_row_only_for_a_defended_model() -> None:
    assert [r["threat"] for r in scorecard(_report())] == [t for t, _ in THREATS[:-1]]
    config = {"adaptive": {"steps": 50}}
    row = _row(_report(defense=(_defense(0.18, 0.6), config)), "defense")
    assert row["severity"] == "critical"
    assert row["attack"].startswith("adaptive PGD-50")
    assert "42.0 points stronger" in row["note"]
    assert _row(_report(defense=(_defense(0.8, 0.81), config)), "defense")["note"] is None


def test_every_row_has_a_known_severity_and_the_worst_is_picked() -> None:
    report = _report(blackbox=(_blackbox(0.9), {"checks": []}), theft=(_theft(0.3), {"attack": "jacobian"}))
    rows = scorecard(report)
    assert all(r["severity"] in SEVERITIES for r in rows)
    assert worst([r["severity"] for r in rows]) == "critical"
    assert worst(["not run", "low"]) == "low"
    assert worst(["not run"]) == "not run"


def test_recommendations_follow_the_findings() -> None:
    report = _report(
        blackbox=(_blackbox(0.9), {"checks": []}),
        membership=(_membership(0.2, [0.1, 0.3]), {"shadows": 8}),
        poisoning=(_poisoning([(0.01, 0.9, 0.95)]), {"fractions": [0.01]}),
    )
    rows = scorecard(report)
    advice = recommendations(report, rows)
    names = {k: [i["defense"] for i in v] for k, v in advice.items()}
    assert names["evasion_whitebox"][0].startswith("PGD adversarial training")
    assert advice["evasion_whitebox"][0]["command"] == "ramparts harden --defense pgd --eps 0.1"
    assert "90.4%" in advice["evasion_whitebox"][0]["cost"]
    assert names["evasion_blackbox"][0].startswith("Answer with labels only")
    assert names["membership"] == ["DP-SGD training (Abadi et al. 2016)"]
    assert names["poisoning"][0].startswith("Spectral signatures")
    assert advice["theft"] == []
    assert advice["encryption"] == []
    for items in advice.values():
        for item in items:
            assert set(item) == {"defense", "why", "cost", "command", "source"}


def test_recommendations_when_the_model_holds() -> None:
    report = _report()
    report["reference"]["robust_accuracy"] = 0.88
    report["masking_warnings"] = ["black-box stronger than white-box"]
    advice = recommendations(report, scorecard(report))["evasion_whitebox"]
    assert [i["defense"] for i in advice] == [
        "Judge any defence with the adaptive attack (Athalye et al. 2018)"
    ]
    report["masking_warnings"] = []
    advice = recommendations(report, scorecard(report))["evasion_whitebox"]
    assert advice[0]["defense"] == "No defence needed at this budget"


def test_the_reasons_run_audit_recorded_come_first() -> None:
    report = _report(blackbox=(_blackbox(0.3), {"checks": []}))
    report["evasion"]["findings"] = []
    report["config"]["skipped"] = {
        "evasion_white_box": "needs gradients, and the model is an ONNX file",
        "evasion_black_box/square": "Square needs score access",
        "membership": "needs scores (LOSS, LiRA)",
        "encryption": "needs the model's layers",
        "theft": "switched off (theft=none)",
    }
    rows = {r["threat"]: r for r in scorecard(report)}
    assert rows["evasion_whitebox"]["reason"] == "needs gradients, and the model is an ONNX file"
    assert rows["evasion_blackbox"]["severity"] == "medium"
    assert rows["evasion_blackbox"]["note"] == "not run: Square needs score access"
    assert rows["membership"]["reason"] == "needs scores (LOSS, LiRA)"
    assert rows["encryption"]["reason"] == "needs the model's layers"
    assert rows["theft"]["reason"] == "switched off (theft=none)"
    assert rows["poisoning"]["reason"] == "switched off (--poisoning-fractions none)"
    report["blackbox"], report["config"]["blackbox"] = None, None
    assert _row(report, "evasion_blackbox")["reason"] == "Square needs score access"
