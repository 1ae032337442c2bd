"""Thefts against hardened oracles: what output hardening costs the thief and the honest user."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ramparts.data import Dataset, load_digits
from ramparts.defenses.evaluation import TheftDefenceReport, _fidelity_at, evaluate_theft_defences
from ramparts.errors import RampartsError, UnknownNameError
from ramparts.oracles.sklearn import SklearnOracle
from ramparts.results import TheftResult
from tests.conftest import Trained

SPECS = ["labels", "round:1", "round:2", "topk:1", "reverse_sigmoid:0.5,0.1"]
SCORE_SPECS = [s for s in SPECS if s != "labels"]


def _number(value: float | None) -> float:
    assert value is not None
    return value


@pytest.fixture(scope="module")
def digits_split() -> tuple[Dataset, Dataset]:
    ds = load_digits()
    return ds.subset(range(1400)), ds.subset(range(1400, len(ds)))


@pytest.fixture(scope="module")
def linear_report(digits_split: tuple[Dataset, Dataset]) -> TheftDefenceReport:
    """Equation solving against a softmax regression served with scores, under every hardening."""
    train, test = digits_split
    lr = LogisticRegression(max_iter=2000).fit(train.x.flatten(1).numpy(), train.y.numpy())
    victim = SklearnOracle(lr, input_shape=(1, 8, 8))
    return evaluate_theft_defences(victim, [("equations", {})], SPECS, train.x[:5], test)


@pytest.fixture(scope="module")
def cnn_report(digits_model: Trained, digits_split: tuple[Dataset, Dataset]) -> TheftDefenceReport:
    """A label theft (Jacobian, 2 rounds from 30 seeds) and a score theft (Knockoff) against the CNN."""
    _, test = digits_split
    seeds = test.x[:30].contiguous()
    held = test.subset(range(30, len(test)))
    thefts = [
        ("jacobian", {"rounds": 2, "epochs": 10}),
        ("knockoff", {"budget": 30, "epochs": 2}),
    ]
    return evaluate_theft_defences(
        digits_model.oracle, thefts, ["labels", "round:1", "topk:1", "reverse_sigmoid:0.5,0.1"], seeds, held
    )


def test_equations_exact_undefended_blocked_by_labels(linear_report: TheftDefenceReport) -> None:
    base = linear_report.row("equations")
    assert base.status == "ok"
    assert base.fidelity == 1.0
    assert base.queries == 65  # d + 1
    assert base.fidelity_drop == 0.0
    blocked = linear_report.row("equations", "labels")
    assert blocked.status == "blocked"
    assert blocked.reason is not None
    assert blocked.reason.startswith("blocked: needs score access")
    assert blocked.fidelity is None
    assert blocked.queries is None


def test_rounding_makes_equation_solving_fail_loudly(linear_report: TheftDefenceReport) -> None:
    # Rounding to 1 or 2 decimals (and top-1) sends many probabilities to exactly 0: the log-ratio
    # equations are undefined there, and the theft refuses rather than solving wrong equations.
    for spec in ("round:1", "round:2", "topk:1"):
        row = linear_report.row("equations", spec)
        assert row.status == "failed", spec
        assert row.reason is not None
        assert "underflow" in row.reason
        assert row.fidelity is None


def test_reverse_sigmoid_lowers_equation_fidelity(linear_report: TheftDefenceReport) -> None:
    row = linear_report.row("equations", "reverse_sigmoid:0.5,0.1")
    assert row.status == "ok"
    assert row.queries == 65
    assert row.fidelity is not None
    assert row.fidelity < 0.9
    assert row.undefended_fidelity == 1.0
    assert row.fidelity_drop == pytest.approx(1.0 - row.fidelity)


def test_honest_user_cost_on_linear_victim(linear_report: TheftDefenceReport) -> None:
    for spec in SPECS:
        cost = linear_report.cost(spec)
        assert cost.accuracy_change == 0.0, spec  # every hardening keeps the top-1 label
        assert cost.accuracy == linear_report.victim_accuracy
    labels = linear_report.cost("labels")
    assert labels.knowledge == "label"
    assert labels.mean_abs_prob_change is None
    assert labels.log_loss_change is None
    for spec in SCORE_SPECS:
        cost = linear_report.cost(spec)
        assert _number(cost.mean_abs_prob_change) > 0, spec
        assert _number(cost.log_loss_change) > 0, spec
    # coarser rounding costs the honest user more
    round1, round2 = linear_report.cost("round:1"), linear_report.cost("round:2")
    assert _number(round1.mean_abs_prob_change) > _number(round2.mean_abs_prob_change)


def test_label_theft_is_untouched_by_label_preserving_hardening(cnn_report: TheftDefenceReport) -> None:
    base = cnn_report.row("jacobian")
    assert base.status == "ok"
    assert base.queries == 60
    for spec in ("labels", "round:1", "topk:1", "reverse_sigmoid:0.5,0.1"):
        row = cnn_report.row("jacobian", spec)
        assert row.status == "ok"
        assert row.queries == base.queries
        assert row.fidelity == base.fidelity  # same labels, same seed: the same substitute
        assert row.fidelity_drop == 0.0


def test_score_theft_blocked_by_labels_and_costs(cnn_report: TheftDefenceReport) -> None:
    assert cnn_report.row("knockoff").status == "ok"
    blocked = cnn_report.row("knockoff", "labels")
    assert blocked.status == "blocked"
    assert blocked.reason is not None
    assert "needs score access" in blocked.reason
    assert cnn_report.row("knockoff", "topk:1").status == "ok"
    assert (
        cnn_report.row("knockoff", "round:1").status == "ok"
    )  # rounded rows are renormalised by the attacker
    for cost in cnn_report.costs:
        assert cost.accuracy_change == 0.0
    assert _number(cnn_report.cost("topk:1").mean_abs_prob_change) > 0
    assert _number(cnn_report.cost("reverse_sigmoid:0.5,0.1").mean_abs_prob_change) > 0
    # one row per (theft, oracle): undefended first, then each hardening in order
    assert [(r.theft, r.hardening) for r in cnn_report.rows[:5]] == [
        ("jacobian", h) for h in ("none", "labels", "round:1", "topk:1", "reverse_sigmoid:0.5,0.1")
    ]
    assert len(cnn_report.rows) == 10


def test_summary_is_json_ready(cnn_report: TheftDefenceReport) -> None:
    summary = json.loads(json.dumps(cnn_report.summary()))
    assert len(summary["rows"]) == 10
    assert len(summary["honest_user"]) == 4
    assert summary["rows"][0]["theft"] == "jacobian"
    assert summary["rows"][0]["params"]["rounds"] == 2
    with pytest.raises(AttributeError):
        cnn_report.seed = 1  # type: ignore[misc]


def test_fidelity_at_reads_the_undefended_curve() -> None:
    base = TheftResult("t", {}, 0, None, 200, 0.9, 0.9, 0.9, [(50, 0.4), (100, 0.7), (200, 0.9)], 0.0)
    assert _fidelity_at(base, 100) == 0.7
    assert _fidelity_at(base, 150) == 0.7
    assert _fidelity_at(base, 400) == 0.9
    assert _fidelity_at(base, 10) is None


def test_bad_inputs_fail_before_any_theft(
    digits_model: Trained, digits_split: tuple[Dataset, Dataset]
) -> None:
    _, test = digits_split
    oracle, seeds = digits_model.oracle, test.x[:10]
    with pytest.raises(UnknownNameError, match="hardening"):
        evaluate_theft_defences(oracle, [("jacobian", {})], ["labels", "blur:2"], seeds, test)
    with pytest.raises(RampartsError, match="round"):
        evaluate_theft_defences(oracle, [("jacobian", {})], ["round:x"], seeds, test)
    with pytest.raises(UnknownNameError):
        evaluate_theft_defences(oracle, [("steal_all", {})], ["labels"], seeds, test)
    with pytest.raises(RampartsError, match="thefts"):
        evaluate_theft_defences(oracle, [], ["labels"], seeds, test)
    with pytest.raises(RampartsError, match="hardenings"):
        evaluate_theft_defences(oracle, [("jacobian", {})], "labels", seeds, test)
    with pytest.raises(RampartsError, match="victim"):
        evaluate_theft_defences(torch.nn.Linear(64, 10), [("jacobian", {})], ["labels"], seeds, test)  # type: ignore[arg-type]
