"""The contract every registered evasion attack honours (like scikit-learn's estimator checks)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from ramparts.errors import RampartsError, RampartsTypeError, UnknownNameError, ValidationError
from ramparts.evasion import ATTACKS, AttackContext, AttackProgress, EvasionAttack
from ramparts.evasion.base import auto_batch_size
from ramparts.targets import LabelBox, ScoreBox, WhiteBox
from ramparts.threat import ThreatModel

from .conftest import Trained

# Small settings so the whole contract runs in seconds. Every registered attack must appear here.
FAST: dict[str, dict[str, Any]] = {
    "fgsm": {},
    "bim": {"steps": 5, "step_size": 0.03},
    "ill": {"steps": 5, "step_size": 0.08},
    "mifgsm": {"steps": 5},
    "pgd": {"steps": 5, "restarts": 2},
    "apgd": {"steps": 8},
    "cw": {"steps": 10, "binary_search_steps": 2},
    "nes": {"steps": 10, "samples": 10},
    "spsa": {"steps": 10, "samples": 10},
    "square": {"n_queries": 100},
    "onepixel": {"population": 20, "iterations": 5},
    "boundary": {
        "steps": 400,
        "source_step": 0.05,
        "spherical_step": 0.1,
        "update_stats_every": 1,
        "init": "batch",
    },
    "hopskipjump": {"steps": 5, "init_evals": 20},
}
ITERATIVE = {
    "bim",
    "ill",
    "mifgsm",
    "pgd",
    "apgd",
    "cw",
    "nes",
    "spsa",
    "square",
    "onepixel",
    "boundary",
    "hopskipjump",
}


def make(name: str) -> EvasionAttack:
    return ATTACKS.get(name)(**FAST[name])


def threat_for(name: str, eps: float | None = None) -> ThreatModel:
    """A threat model the attack supports, with a budget at which it should break some digits."""
    cls = ATTACKS.get(name)
    norm = cls.norms[0]
    if norm == "l0":
        return ThreatModel(
            norm="l0",
            eps=eps if eps is not None and eps >= 1 else 3,
            goal="untargeted" if "untargeted" in cls.goals else "targeted",
        )
    if "untargeted" in cls.goals:
        return ThreatModel(norm=norm, eps=eps or (0.1 if norm == "linf" else 1.0))
    eps = max(eps or 0.0, 0.3 if norm == "linf" else 2.0)  # a targeted goal needs a larger budget
    return ThreatModel(norm=norm, eps=eps, goal="targeted", target=(cls.target_rules or ["random"])[0])


def test_every_registered_attack_is_covered() -> None:
    assert set(ATTACKS.names()) == set(FAST)


@pytest.mark.parametrize("name", sorted(FAST))
def test_docstring_cites_a_paper(name: str) -> None:
    doc = ATTACKS.get(name).__doc__ or ""
    assert any(str(year) in doc for year in range(2013, 2026)), f"{name} docstring cites no paper"


@pytest.mark.parametrize("name", sorted(FAST))
def test_init_only_stores(name: str) -> None:
    attack = make(name)
    assert attack.get_params() == {**ATTACKS.get(name)().get_params(), **FAST[name]}
    assert repr(attack).startswith(type(attack).__name__)


@pytest.mark.parametrize("name", sorted(FAST))
def test_result_respects_threat_and_success_is_honest(name: str, digits_model: Trained) -> None:
    threat = threat_for(name)
    result = make(name)(digits_model.oracle, digits_model.x, digits_model.y, threat)
    assert result.x_adv.shape == digits_model.x.shape
    assert bool(threat.contains(result.x_adv, digits_model.x).all())
    lo, hi = threat.bounds
    assert float(result.x_adv.min()) >= lo
    assert float(result.x_adv.max()) <= hi
    # Success recomputed here from the model itself agrees with the result.
    pred = digits_model.model(result.x_adv).argmax(dim=1)
    expected = pred != digits_model.y if result.targets is None else pred == result.targets
    assert torch.equal(result.success, expected)
    assert torch.equal(result.adv_pred, pred)
    assert result.success.any(), f"{name} found no adversarial example at all"
    assert int(result.queries.min()) >= 1
    summary = result.summary()
    assert summary["attack"] == name
    assert 0.0 <= summary["success_rate"] <= 1.0


@pytest.mark.parametrize("name", sorted(FAST))
def test_deterministic_under_seed(name: str, digits_model: Trained) -> None:
    threat = threat_for(name)
    a = make(name)(digits_model.oracle, digits_model.x, digits_model.y, threat, seed=3)
    b = make(name)(digits_model.oracle, digits_model.x, digits_model.y, threat, seed=3)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.queries, b.queries)


@pytest.mark.parametrize("name", sorted(ITERATIVE))
def test_budget_is_enforced(name: str, digits_model: Trained) -> None:
    result = make(name)(digits_model.oracle, digits_model.x, digits_model.y, threat_for(name), max_queries=3)
    assert int(result.queries.max()) <= 3
    assert result.budget_exhausted
    assert bool(threat_for(name).contains(result.x_adv, digits_model.x).all())


@pytest.mark.parametrize("name", sorted(ITERATIVE - {"cw"}))
def test_early_stop_saves_compute(name: str, digits_model: Trained) -> None:
    threat = threat_for(name, eps=0.2)
    on = make(name)(digits_model.oracle, digits_model.x, digits_model.y, threat, early_stop=True)
    off = make(name)(digits_model.oracle, digits_model.x, digits_model.y, threat, early_stop=False)
    assert int(on.queries.sum()) < int(off.queries.sum())
    assert int(on.backwards.sum()) <= int(off.backwards.sum())
    # Stopping at success can only lose samples that a later step would have flipped back: none here.
    assert on.success_rate >= off.success_rate - 0.05


def test_clean_misclassified_samples_cost_nothing(
    digits_model: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attack with a wrong label for the first sample: it is already "adversarial" at the start.
    y = digits_model.y.clone()
    y[0] = (y[0] + 1) % 10
    oracle = digits_model.oracle
    evaluated: list[int] = []
    log_probs = oracle.log_probs

    def spy(x: torch.Tensor) -> torch.Tensor:
        evaluated.append(len(x))
        return log_probs(x)

    monkeypatch.setattr(oracle, "log_probs", spy)
    result = ATTACKS.get("pgd")(steps=5)(oracle, digits_model.x, y, ThreatModel(eps=0.05))
    assert bool(result.success[0])
    assert int(result.backwards[0]) == 0
    assert torch.equal(result.x_adv[0], digits_model.x[0])
    # The final check predicts only the rows the attack changed, and still reports every row right.
    changed = int((result.x_adv != digits_model.x).flatten(1).any(dim=1).sum())
    assert changed < len(y)
    assert evaluated == [len(y), changed]
    probs = digits_model.model(result.x_adv).softmax(dim=1)
    assert torch.equal(result.adv_pred, probs.argmax(dim=1))
    assert result.adv_conf is not None
    assert torch.allclose(result.adv_conf, probs.amax(dim=1), atol=1e-5)


class _Liar(EvasionAttack):
    """A faulty attack (2017): claims success on points outside the ball."""

    norms: ClassVar = ("linf",)

    def _run(self, ctx: AttackContext) -> None:
        idx = torch.arange(len(ctx.x))
        junk = torch.rand(ctx.x.shape, generator=ctx.generator) * 10
        ctx.tracker.offer(idx, junk, torch.full((len(idx),), -1.0))


def test_base_class_projects_and_recomputes(digits_model: Trained) -> None:
    _Liar.name = "liar"
    threat = ThreatModel(eps=0.01)
    result = _Liar()(digits_model.oracle, digits_model.x, digits_model.y, threat)
    assert bool(threat.contains(result.x_adv, digits_model.x).all())
    pred = digits_model.model(result.x_adv).argmax(dim=1)
    assert torch.equal(result.success, pred != digits_model.y)
    assert result.success_rate < 0.5  # the liar claimed 100%


def _bad_inputs(t: Trained) -> list[tuple[dict[str, Any], type[Exception], str]]:
    x, y = t.x, t.y
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    inf = x.clone()
    inf[1, 0, 2, 2] = float("inf")
    return [
        ({"x": nan}, ValidationError, "NaN"),
        ({"x": inf}, ValidationError, "NaN or Inf"),
        ({"x": x * 2 + 0.5}, ValidationError, "bounds"),
        ({"x": x.double()}, RampartsTypeError, "float32"),
        ({"x": x[:, :, :4]}, ValidationError, "shape"),
        ({"x": x.numpy()}, RampartsTypeError, "torch.Tensor"),
        ({"x": x[:0], "y": y[:0]}, ValidationError, "non-empty"),
        ({"y": y + 10}, ValidationError, "labels in"),
        ({"y": y[:-1]}, ValidationError, "one label per input"),
        ({"y": y.float()}, RampartsTypeError, "integer"),
        ({"max_queries": 0}, ValidationError, "max_queries"),
        ({"seed": "1"}, RampartsTypeError, "seed"),
        ({"threat": "linf"}, RampartsTypeError, "ThreatModel"),
    ]


@pytest.mark.parametrize("name", sorted(FAST))
def test_bad_inputs_are_rejected_with_clear_errors(name: str, digits_model: Trained) -> None:
    attack = make(name)
    base = {"x": digits_model.x, "y": digits_model.y, "threat": threat_for(name)}
    for change, error, text in _bad_inputs(digits_model):
        args = {**base, **change}
        extra = {k: args.pop(k) for k in ("max_queries", "seed") if k in args}
        with pytest.raises(error, match=text) as info:
            attack(digits_model.oracle, args["x"], args["y"], args["threat"], **extra)
        message = str(info.value)
        assert "expected" in message, message


@pytest.mark.parametrize("name", sorted(FAST))
def test_unsupported_norm_or_goal_is_refused(name: str, digits_model: Trained) -> None:
    cls = ATTACKS.get(name)
    other_norms = [n for n in ("linf", "l2", "l0") if n not in cls.norms]
    for norm in other_norms:
        with pytest.raises(ValidationError, match=r"threat\.norm"):
            make(name)(digits_model.oracle, digits_model.x, digits_model.y, ThreatModel(norm=norm, eps=1))
    if "confidence" not in cls.goals:
        threat = ThreatModel(norm=cls.norms[0], eps=0.5, goal="confidence", max_true_confidence=0.5)
        with pytest.raises(ValidationError, match=r"threat\.goal"):
            make(name)(digits_model.oracle, digits_model.x, digits_model.y, threat)


@pytest.mark.parametrize(
    ("name", "params", "param"),
    [
        ("pgd", {"steps": 0}, "steps"),
        ("pgd", {"step_size": -1.0}, "step_size"),
        ("pgd", {"loss": "hinge"}, "loss"),
        ("apgd", {"rho": 1.5}, "rho"),
        ("cw", {"lr": 0.0}, "lr"),
        ("bim", {"steps": 2.5}, "steps"),
    ],
)
def test_bad_hyperparameters(name: str, params: dict[str, Any], param: str, digits_model: Trained) -> None:
    attack = ATTACKS.get(name)(**params)  # __init__ only stores
    with pytest.raises(RampartsError, match=param):
        attack(digits_model.oracle, digits_model.x, digits_model.y, threat_for(name))


def test_unknown_attack_lists_the_registry() -> None:
    with pytest.raises(UnknownNameError, match="pgd"):
        ATTACKS.get("deepfool2")


def test_budget_beyond_the_domain_is_refused(digits_model: Trained) -> None:
    # Digits are 8x8 in [0, 1]: the l2 diameter is 8.
    with pytest.raises(ValidationError, match="diameter"):
        ATTACKS.get("pgd")()(
            digits_model.oracle, digits_model.x, digits_model.y, ThreatModel(norm="l2", eps=9.0)
        )


@pytest.mark.parametrize("name", sorted(FAST))
def test_attack_sees_exactly_its_declared_knowledge(
    name: str, digits_model: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = ATTACKS.get(name)
    seen: list[type] = []
    original = cls._run

    def spy(self: EvasionAttack, ctx: AttackContext) -> None:
        seen.append(type(ctx.box))
        original(self, ctx)

    monkeypatch.setattr(cls, "_run", spy)
    make(name)(digits_model.oracle, digits_model.x[:8], digits_model.y[:8], threat_for(name))
    expected = {0: LabelBox, 1: ScoreBox, 2: WhiteBox}[int(cls.knowledge)]
    assert seen == [expected]


def test_summary_reports_query_statistics(digits_model: Trained) -> None:
    result = ATTACKS.get("pgd")(steps=5)(
        digits_model.oracle, digits_model.x, digits_model.y, threat_for("pgd")
    )
    summary = result.summary()
    assert summary["max_queries"] == int(result.queries.max())
    assert summary["median_queries"] == float(result.queries.float().median())
    assert summary["max_queries"] <= 6


@pytest.mark.parametrize("name", ["fgsm", "pgd", "square"])
def test_batch_size_chunks_and_merges(name: str, digits_model: Trained) -> None:
    """Chunked runs give one result in the original order; every chunk is the attack run on its rows."""
    x, y = digits_model.x[:50], digits_model.y[:50]
    threat = threat_for(name)
    seen: list[AttackProgress] = []
    chunked = make(name)(digits_model.oracle, x, y, threat, seed=1, batch_size=16, progress=seen.append)
    assert len(chunked) == 50
    assert torch.equal(chunked.labels, y)
    parts = [
        make(name)(digits_model.oracle, x[s : s + 16], y[s : s + 16], threat, seed=1)
        for s in range(0, 50, 16)
    ]
    for field in ("success", "adv_pred", "queries", "backwards"):
        assert torch.equal(getattr(chunked, field), torch.cat([getattr(p, field) for p in parts]))
    assert torch.allclose(chunked.x_adv, torch.cat([p.x_adv for p in parts]))
    assert chunked.summary()["total_forwards"] == sum(int(p.queries.sum()) for p in parts)
    # Progress speaks of the whole batch, and the last report counts every chunk's successes.
    assert {p.n for p in seen} == {50}
    assert seen[-1].succeeded == int(chunked.success.sum())
    assert seen[-1].queries_total == int(chunked.queries.sum())


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "16"])
def test_bad_batch_size_is_refused(bad: Any, digits_model: Trained) -> None:
    with pytest.raises(RampartsError, match="batch_size"):
        make("fgsm")(digits_model.oracle, digits_model.x, digits_model.y, threat_for("fgsm"), batch_size=bad)


def test_auto_batch_size_fits_the_cpu_caches() -> None:
    assert auto_batch_size("cpu", (1, 28, 28)) == 2**17 // 784
    assert auto_batch_size("cpu", (1, 8, 8)) == 2048
    assert auto_batch_size("cpu", (3, 512, 512)) == 1
    assert auto_batch_size("cuda", (1, 28, 28)) is None
