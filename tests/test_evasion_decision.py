"""Decision-based attacks (Boundary, HopSkipJump): label-only, batched, budget-honest, and close to C&W."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ramparts.data import load_digits
from ramparts.errors import ValidationError
from ramparts.evasion import ATTACKS, AttackContext, EvasionAttack
from ramparts.oracles import SklearnOracle
from ramparts.results import EvasionResult
from ramparts.targets import LabelBox
from ramparts.threat import ThreatModel

from .conftest import Trained

# Digits are 8x8 in [0, 1]: eps at the l2 diameter keeps every adversarial point (plain minimum distance).
WHOLE_L2 = ThreatModel(norm="l2", eps=8.0)
WHOLE_LINF = ThreatModel(norm="linf", eps=1.0)
# Boundary's defaults follow Foolbox (tuned for long runs); these converge on 8x8 digits in a few hundred steps.
QUICK_BOUNDARY = {"source_step": 0.05, "spherical_step": 0.1, "update_stats_every": 1}


def _attack(
    name: str, t: Trained, threat: ThreatModel, *, max_queries: int | None = None, **kw: Any
) -> EvasionResult:
    return ATTACKS.get(name)(**kw)(t.oracle, t.x, t.y, threat, max_queries=max_queries, early_stop=False)


def _median(r: EvasionResult) -> float:
    assert bool(r.success.all()), f"{r.attack}: success {r.success_rate:.2f}"
    return float(r.distance.median())


@pytest.fixture(scope="module")
def hsj_runs(digits_model: Trained) -> dict[int, EvasionResult]:
    return {q: _attack("hopskipjump", digits_model, WHOLE_L2, max_queries=q) for q in (500, 2000)}


def test_hsj_distance_shrinks_with_the_budget(hsj_runs: dict[int, EvasionResult]) -> None:
    assert _median(hsj_runs[2000]) < 0.95 * _median(hsj_runs[500])
    assert int(hsj_runs[2000].queries.max()) == 2000
    assert hsj_runs[2000].budget_exhausted


def test_hsj_is_close_to_carlini_wagner(digits_model: Trained, hsj_runs: dict[int, EvasionResult]) -> None:
    cw = ATTACKS.get("cw")()(digits_model.oracle, digits_model.x, digits_model.y, WHOLE_L2, early_stop=False)
    # Measured: HSJ 0.67 at 2k label queries per sample, C&W 0.58 with gradients (ratio 1.17).
    assert _median(hsj_runs[2000]) < 1.5 * _median(cw)


def test_hsj_linf_reduces_the_linf_distance(digits_model: Trained) -> None:
    start = _attack("hopskipjump", digits_model, WHOLE_LINF, steps=1, init_evals=20)
    later = _attack("hopskipjump", digits_model, WHOLE_LINF, max_queries=1500)
    assert _median(later) < 0.75 * _median(start)
    # The distance is measured in linf: far below the l2 length of the same perturbations.
    l2 = (later.x_adv - digits_model.x).flatten(1).norm(dim=1)
    assert bool((later.distance < l2).all())


def test_boundary_walks_closer_over_the_steps(digits_model: Trained) -> None:
    few = _attack("boundary", digits_model, WHOLE_L2, steps=20, **QUICK_BOUNDARY)
    many = _attack("boundary", digits_model, WHOLE_L2, steps=600, **QUICK_BOUNDARY)
    assert _median(many) < 0.6 * _median(few)
    assert int(many.queries.max()) > int(few.queries.max())


@pytest.mark.parametrize(
    ("name", "norm", "kw"),
    [
        ("hopskipjump", "l2", {}),
        ("hopskipjump", "linf", {}),
        ("boundary", "l2", {"steps": 600, **QUICK_BOUNDARY}),
    ],
)
def test_targeted_variants_reach_the_target(
    name: str, norm: str, kw: dict[str, Any], digits_model: Trained
) -> None:
    x, y = digits_model.x[:32], digits_model.y[:32]
    targets = (y + 3) % 10
    eps = 8.0 if norm == "l2" else 1.0
    threat = ThreatModel(norm=norm, eps=eps, goal="targeted", target="given")
    r = ATTACKS.get(name)(**kw)(
        digits_model.oracle, x, y, threat, targets=targets, max_queries=1500, early_stop=False
    )
    assert r.targets is not None
    assert torch.equal(r.targets, targets)
    assert torch.equal(r.adv_pred[r.success], targets[r.success])
    # Closer than the start (another digit of the target class, about 3-5 away in l2).
    assert _median(r) < (1.5 if norm == "l2" else 0.3)


@pytest.mark.parametrize("name", ["hopskipjump", "boundary"])
@pytest.mark.parametrize("budget", [2, 40, 333])
def test_queries_never_exceed_the_budget(name: str, budget: int, digits_model: Trained) -> None:
    targeted = ThreatModel(norm="l2", eps=8.0, goal="targeted", target="random")
    for threat, early_stop in ((WHOLE_L2, False), (targeted, False), (ThreatModel(norm="l2", eps=0.5), True)):
        attack = ATTACKS.get(name)()
        r = attack(
            digits_model.oracle,
            digits_model.x,
            digits_model.y,
            threat,
            max_queries=budget,
            early_stop=early_stop,
        )
        assert int(r.queries.max()) <= budget
        assert r.budget_exhausted  # some sample still had work when its budget ran out
        assert bool(threat.contains(r.x_adv, digits_model.x).all())


@pytest.mark.parametrize(("name", "kw"), [("hopskipjump", {"init_evals": 20}), ("boundary", QUICK_BOUNDARY)])
def test_view_calls_grow_with_steps_not_with_samples(
    name: str, kw: dict[str, Any], digits_model: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[int] = []
    original = LabelBox.labels

    def spy(self: LabelBox, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        rows.append(len(x))
        return original(self, x, idx)

    monkeypatch.setattr(LabelBox, "labels", spy)
    steps = {"hopskipjump": (3, 6), "boundary": (50, 100)}[name]
    calls = {}
    for n in (8, 64):
        for s in steps:
            rows.clear()
            r = _attack(
                name,
                Trained(digits_model.oracle, digits_model.model, digits_model.x[:n], digits_model.y[:n]),
                WHOLE_L2,
                steps=s,
                **kw,
            )
            calls[n, s] = len(rows)
            assert sum(rows) == int(r.queries.sum())  # every row is one counted query
    assert calls[64, steps[1]] > calls[64, steps[0]]  # more steps: more calls
    for s in steps:
        assert calls[64, s] <= 1.3 * calls[8, s] + 10  # 8x the samples: about as many calls
    assert calls[64, steps[1]] < 64 * steps[1] / 4  # far from one call per sample and step


@pytest.mark.parametrize("name", ["hopskipjump", "boundary"])
def test_label_only_sklearn_oracle(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_digits()
    model = LogisticRegression(max_iter=300).fit(ds.x[:1400].flatten(1).numpy(), ds.y[:1400].numpy())
    oracle = SklearnOracle(model, input_shape=(1, 8, 8), labels_only=True)
    x, y = ds.x[1400:1424], ds.y[1400:1424]
    keep = oracle.labels(x) == y
    x, y = x[keep], y[keep]
    boxes: list[type] = []
    cls = ATTACKS.get(name)
    original = cls._run

    def spy(self: EvasionAttack, ctx: AttackContext) -> None:
        boxes.append(type(ctx.box))
        assert not hasattr(ctx.box, "log_probs")
        original(self, ctx)

    monkeypatch.setattr(cls, "_run", spy)
    kw = {"steps": 400, **QUICK_BOUNDARY} if name == "boundary" else {}
    r = cls(**kw)(oracle, x, y, WHOLE_L2, max_queries=1000, early_stop=False)
    assert boxes == [LabelBox]
    assert r.adv_conf is None  # the target never gave scores
    assert float(r.success.float().mean()) == 1.0
    assert float(r.distance.median()) < 2.0
    assert torch.equal(torch.as_tensor(model.predict(r.x_adv.flatten(1).numpy())), r.adv_pred)


def test_clean_mistakes_cost_nothing_even_without_early_stop(digits_model: Trained) -> None:
    y = digits_model.y[:8].clone()
    y[0] = (y[0] + 1) % 10
    r = ATTACKS.get("hopskipjump")(steps=2)(
        digits_model.oracle, digits_model.x[:8], y, WHOLE_L2, early_stop=False
    )
    assert int(r.queries[0]) == 0
    assert int(r.queries[1:].min()) > 0
    assert torch.equal(r.x_adv[0], digits_model.x[0])


def test_early_stop_leaves_once_inside_eps(digits_model: Trained) -> None:
    threat = ThreatModel(norm="l2", eps=1.0)
    on = ATTACKS.get("hopskipjump")()(
        digits_model.oracle, digits_model.x, digits_model.y, threat, max_queries=2000
    )
    off = _attack("hopskipjump", digits_model, threat, max_queries=2000)
    assert on.success_rate >= off.success_rate - 0.05
    # Samples that won stopped early; the others ran to the budget.
    assert int(on.queries[on.success].max()) < 2000
    assert int(on.queries[~on.success].min()) == 2000
    assert int(on.queries.sum()) < int(off.queries.sum())


@pytest.mark.parametrize(
    ("name", "params", "param"),
    [
        ("boundary", {"source_step": 1.5}, "source_step"),
        ("boundary", {"step_adaptation": 1.0}, "step_adaptation"),
        ("hopskipjump", {"init": "zeros"}, "init"),
        ("hopskipjump", {"gamma": 0.0}, "gamma"),
    ],
)
def test_bad_hyperparameters_name_the_parameter(
    name: str, params: dict[str, Any], param: str, digits_model: Trained
) -> None:
    with pytest.raises(ValidationError, match=param):
        ATTACKS.get(name)(**params)(digits_model.oracle, digits_model.x, digits_model.y, WHOLE_L2)
