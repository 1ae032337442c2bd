"""Tests for ramparts.audit.gate: the --fail-under grammar and its evaluation against a hand-made report."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ramparts.audit.gate import (
    METRICS,
    check_settings,
    evaluate_gate,
    numeric_bound,
    parse_clause,
    parse_gate,
)
from ramparts.audit.profiles import DEFAULTS
from ramparts.errors import UnknownNameError, ValidationError

E8, E16 = 8 / 255, 16 / 255


def _report() -> dict[str, Any]:
    """The fields of report.json (version 3) the gate reads, with made-up numbers."""
    return {
        "config": {"bounds": [0.0, 1.0], "n": 200},
        "clean_accuracy": 0.95,
        "reference": {"eps": E8, "eps_label": "8/255", "robust_accuracy": 0.5},
        "evasion": {
            "findings": [
                {"check": "fgsm", "label": "FGSM", "eps": E8, "eps_label": "8/255", "robust_accuracy": 0.7},
                {"check": "pgd", "label": "PGD", "eps": E8, "eps_label": "8/255", "robust_accuracy": 0.5},
                {"check": "pgd", "label": "PGD", "eps": E16, "eps_label": "16/255", "robust_accuracy": 0.2},
            ],
            "worst_case": [
                {"eps": E8, "eps_label": "8/255", "robust_accuracy": 0.5, "strongest": "PGD"},
                {"eps": E16, "eps_label": "16/255", "robust_accuracy": 0.2, "strongest": "PGD"},
            ],
        },
        "blackbox": {
            "query_budgets": [50, 100],
            "checks": {
                "square": {
                    "label": "Square",
                    "rows": [{"budget": 50, "success_rate": 0.1}, {"budget": 100, "success_rate": 0.3}],
                },
                "hsj": {
                    "label": "HSJ",
                    "rows": [{"budget": 50, "success_rate": 0.2}, {"budget": 100, "success_rate": 0.25}],
                },
            },
        },
        "theft": {
            "label": "Jacobian",
            "queries": 400,
            "fidelity": 0.74,
            "accuracy": 0.73,
            "transfer": [
                {"eps": E8, "eps_label": "8/255", "transfer_rate": 0.02},
                {"eps": 80 / 255, "eps_label": "80/255", "transfer_rate": 0.9},
            ],
        },
        "membership": {
            "fpr": 0.01,
            "config": {"non_members": 449},
            "attacks": [
                {
                    "label": "LOSS",
                    "auc": 0.53,
                    "tpr": 0.0,
                    "tpr@0.01": 0.0,
                    "roc": [[0.0, 0.0], [0.5, 0.6], [1.0, 1.0]],
                },
                {
                    "label": "LiRA",
                    "auc": 0.51,
                    "tpr": 0.03,
                    "tpr@0.01": 0.03,
                    "roc": [[0.0, 0.01], [0.004, 0.02], [0.05, 0.08], [1.0, 1.0]],
                },
            ],
        },
        "poisoning": {
            "attacks": [
                {
                    "label": "Flips",
                    "attack": "flip_random",
                    "curve": [
                        {"fraction": 0.0, "clean_accuracy": 0.95, "attack_success": None},
                        {"fraction": 0.01, "clean_accuracy": 0.94, "attack_success": None},
                        {"fraction": 0.05, "clean_accuracy": 0.90, "attack_success": None},
                    ],
                },
                {
                    "label": "BadNets",
                    "attack": "badnets",
                    "curve": [
                        {"fraction": 0.0, "clean_accuracy": 0.95, "attack_success": 0.0},
                        {"fraction": 0.01, "clean_accuracy": 0.96, "attack_success": 0.45},
                        {"fraction": 0.05, "clean_accuracy": 0.93, "attack_success": 0.95},
                    ],
                },
            ],
            "defense": {"method": "spectral_signatures", "fraction": 0.05, "after": {"attack_success": 0.87}},
        },
        "encryption": {
            "measured": {
                "model": "twin",
                "batch": {"agreement": 1.0, "accuracy": 0.95},
                "query": {"agreement": 0.98, "accuracy": 1.0},
            }
        },
        "defense": None,
        "masking_warnings": ["one"],
    }


def _value(clause: str, report: dict[str, Any] | None = None) -> float | None:
    return evaluate_gate(parse_gate(clause), report or _report()).results[0].value


def test_parse_grammar() -> None:
    c = parse_clause("robust_accuracy@linf:8/255=0.4")
    assert (c.metric, c.at, c.op, c.bound, c.numeric) == ("robust_accuracy", "linf:8/255", ">=", 0.4, False)
    assert parse_clause("mia_tpr@0.001=0.02").op == "<="  # '=' is the metric's safe side
    assert parse_clause("mia_tpr@0.001 >= 0.02").op == ">="
    assert parse_clause("clean_accuracy>=90%").bound == pytest.approx(0.9)
    assert parse_clause("masking_warnings<3").bound == 3
    numeric = parse_clause(" 0.5 ")
    assert (numeric.numeric, numeric.metric, numeric.op, numeric.bound) == (
        True,
        "robust_accuracy",
        ">=",
        0.5,
    )
    clauses = parse_gate(["0.5, theft_fidelity<=0.8", "backdoor_success@0.05<=0.5"])
    assert [c.metric for c in clauses] == ["robust_accuracy", "theft_fidelity", "backdoor_success"]
    assert numeric_bound(clauses) == 0.5
    assert numeric_bound(clauses[1:]) is None
    assert parse_gate(None) == []
    assert parse_gate(0.3)[0].bound == 0.3


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("robust_accuracy~0.4", "METRIC[@ARG]OP BOUND"),
        ("robust_accuracy=banana", "a number or a percentage"),
        ("robust_accuracy@8/255=1.5", "a bound in [0, 1]"),
        ("robust_accuracy@l2:1.0=0.4", "a linf eps"),
        ("robust_accuracy@banana=0.4", "an eps like"),
        ("clean_accuracy@0.1>=0.5", "without an @ argument"),
        ("mia_tpr@2<=0.1", "an FPR in (0, 1)"),
        ("blackbox_success@1.5<=0.1", "a query budget >= 1"),
        ("backdoor_success@0.7<=0.1", "a share in (0, 0.5)"),
        ("7", "an accuracy in [0, 1]"),
    ],
)
def test_parse_errors_name_the_clause(clause: str, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_gate(f"clean_accuracy>=0.5,{clause}")
    message = str(info.value)
    assert message.startswith("fail_under:")
    assert repr(clause) in message
    assert expected in message


def test_parse_errors_unknown_metric_and_two_numbers() -> None:
    with pytest.raises(UnknownNameError) as info:
        parse_gate("robustness>=0.4")
    assert "robustness>=0.4" in str(info.value)
    for name in METRICS:
        assert name in str(info.value)
    with pytest.raises(ValidationError, match="at most one bare accuracy"):
        parse_gate("0.5,0.6")


def test_evaluate_reads_every_metric() -> None:
    expected = {
        "clean_accuracy>=0.9": 0.95,
        "robust_accuracy=0.4": 0.5,
        "robust_accuracy@linf:16/255=0.4": 0.2,
        "robust_accuracy@16px=0.4": 0.2,
        "robust_accuracy@0.0627451=0.4": 0.2,
        "robust_accuracy@fgsm:8/255=0.4": 0.7,
        "blackbox_success<=0.5": 0.3,
        "blackbox_success@50<=0.5": 0.2,
        "theft_fidelity<=0.8": 0.74,
        "theft_accuracy<=0.8": 0.73,
        "transfer_rate<=0.5": 0.02,
        "transfer_rate@80/255<=0.5": 0.9,
        "mia_tpr<=0.02": 0.03,
        "mia_tpr@0.005<=0.02": 0.02,
        "mia_tpr@0.5<=0.02": 0.6,
        "mia_auc<=0.6": 0.53,
        "backdoor_success<=0.5": 0.95,
        "backdoor_success@0.01<=0.5": 0.45,
        "poisoned_accuracy@0.01>=0.9": 0.94,
        "poisoned_accuracy>=0.9": 0.90,
        "sanitized_backdoor_success<=0.5": 0.87,
        "encrypted_agreement>=0.99": 0.98,
        "encrypted_accuracy>=0.9": 0.95,
        "masking_warnings=0": 1.0,
    }
    for clause, value in expected.items():
        assert _value(clause) == pytest.approx(value), clause
    assert {parse_clause(c).metric for c in expected} == set(METRICS) - {"defense_robust_accuracy"}


def test_evaluate_pass_fail_and_lines() -> None:
    outcome = evaluate_gate(
        parse_gate(
            "robust_accuracy@linf:8/255=0.4,mia_tpr<=0.02,clean_accuracy>=0.9,encrypted_agreement>=0.99"
        ),
        _report(),
    )
    assert [r.passed for r in outcome.results] == [True, False, True, False]
    assert not outcome.passed
    lines = [r.line() for r in outcome.failures]
    assert lines == [
        "--fail-under mia_tpr<=0.02: membership TPR (LiRA at FPR 0.01) is 0.03, required <= 0.02",
        "--fail-under encrypted_agreement>=0.99: agreement of encrypted and plain answers (twin) is 0.98, "
        "required >= 0.99",
    ]
    record = outcome.record({"fail_under": 0.5, "robust_accuracy": 0.5, "passed": True})
    assert record["fail_under"] == 0.5  # the numeric form's fields are kept
    assert record["passed"] is False
    assert [c["value"] for c in record["clauses"]] == pytest.approx([0.5, 0.03, 0.95, 0.98])
    assert evaluate_gate(parse_gate("robust_accuracy@8/255>0.5"), _report()).passed is False
    assert evaluate_gate(parse_gate("robust_accuracy@8/255>=0.5"), _report()).passed is True


def test_missing_section_says_which_to_enable() -> None:
    report = _report()
    report["membership"] = None
    with pytest.raises(ValidationError) as info:
        evaluate_gate(parse_gate("mia_tpr@0.01<=0.02"), report)
    assert "membership section was skipped" in str(info.value)
    assert "--membership-shadows" in str(info.value)
    with pytest.raises(ValidationError, match=r"defence.*--defense-steps"):
        evaluate_gate(parse_gate("defense_robust_accuracy>=0.3"), report)


def test_unmeasured_arguments_are_errors() -> None:
    with pytest.raises(ValidationError, match=r"an eps the report measured \(8/255, 16/255\).*--eps"):
        evaluate_gate(parse_gate("robust_accuracy@4/255=0.4"), _report())
    with pytest.raises(ValidationError, match="a linf check of the audit: fgsm, pgd"):
        evaluate_gate(parse_gate("robust_accuracy@apgd-ce:8/255=0.4"), _report())
    with pytest.raises(ValidationError, match=r"the 449 non-members resolve \(>= 0.0022\)"):
        evaluate_gate(parse_gate("mia_tpr@0.001<=0.02"), _report())
    with pytest.raises(ValidationError, match="a query budget the report measured"):
        evaluate_gate(parse_gate("blackbox_success@75<=0.5"), _report())
    with pytest.raises(ValidationError, match="--poisoning-fractions"):
        evaluate_gate(parse_gate("backdoor_success@0.02<=0.5"), _report())


def test_defended_model_gates_on_the_defence_section() -> None:
    report = copy.deepcopy(_report())
    report["defense"] = {
        "eps": E8,
        "eps_label": "8/255",
        "robust_accuracy": 0.3,
        "defense": {"detectors": ["squeeze"]},
    }
    result = evaluate_gate(parse_gate("0.4"), report).results[0]
    assert result.value == pytest.approx(0.3)
    assert "defence section" in result.detail
    assert _value("defense_robust_accuracy>=0.2", report) == pytest.approx(0.3)
    assert _value("robust_accuracy@16/255>=0.1", report) == pytest.approx(0.2)  # other eps: the battery


def test_check_settings_before_the_run() -> None:
    settings = {**DEFAULTS, "membership_shadows": 0, "blackbox": []}
    check_settings(parse_gate("robust_accuracy@linf:80/255=0.1,theft_fidelity<=0.8,0.5"), settings)
    with pytest.raises(ValidationError, match=r"membership section is off.*--membership-shadows"):
        check_settings(parse_gate("mia_tpr<=0.02"), settings)
    with pytest.raises(ValidationError, match=r"the black-box section is off.*--blackbox"):
        check_settings(parse_gate("blackbox_success<=0.5"), settings)
    with pytest.raises(ValidationError, match="an eps of the audit's grid"):
        check_settings(parse_gate("robust_accuracy@linf:3/255=0.4"), settings)
    with pytest.raises(ValidationError, match="a share of --poisoning-fractions"):
        check_settings(parse_gate("backdoor_success@0.2<=0.5"), settings)
    with pytest.raises(ValidationError, match="a budget of --query-budgets"):
        check_settings(parse_gate("blackbox_success@77<=0.5"), {**DEFAULTS})
