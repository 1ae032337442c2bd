"""Score-based attacks (NES, SPSA, Square, one-pixel): strength, honesty about queries, their papers' rules."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from ramparts.criteria import Criterion
from ramparts.errors import ValidationError
from ramparts.evasion import ATTACKS
from ramparts.evasion.onepixel import donors, paint
from ramparts.evasion.score import estimate_gradient
from ramparts.evasion.square import p_selection, square_perturbation
from ramparts.oracles.base import Knowledge
from ramparts.targets import ScoreBox, view_for
from ramparts.threat import ThreatModel

from .conftest import Trained

Calls = list[tuple[Tensor, Tensor | None]]


@pytest.fixture
def box_calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every score query an attack makes: (rows queried, the batch samples they belong to)."""
    calls: Calls = []
    original = ScoreBox.log_probs

    def spy(self: ScoreBox, x: Tensor, idx: Tensor | None = None) -> Tensor:
        calls.append((x.clone(), None if idx is None else idx.clone()))
        return original(self, x, idx)

    monkeypatch.setattr(ScoreBox, "log_probs", spy)
    return calls


def _noise_success(t: Trained, threat: ThreatModel, seed: int = 0) -> float:
    """Success rate of random noise of the same size: +-eps signs, an l2 sphere, or k random pixels."""
    gen = torch.Generator().manual_seed(seed)
    x, eps = t.x, threat.eps_value
    if threat.norm == "linf":
        x_adv = x + eps * (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1)
    elif threat.norm == "l2":
        noise = torch.randn(x.shape, generator=gen)
        x_adv = x + eps * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    else:
        k = int(eps)
        genes = torch.cat([torch.randint(0, 8, (len(x), k, 2), generator=gen), torch.rand(len(x), k, 1)], 2)
        x_adv = paint(x, genes.float(), threat.bounds)
    pred = t.model(x_adv.clamp(*threat.bounds)).argmax(dim=1)
    return float((pred != t.y).float().mean())


def _run(t: Trained, name: str, params: dict[str, Any], threat: ThreatModel, **kw: Any) -> Any:
    return ATTACKS.get(name)(**params)(t.oracle, t.x, t.y, threat, **kw)


# --- NES / SPSA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_estimate_correlates_with_the_true_gradient(kind: str, digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    box = view_for(digits_model.oracle, Knowledge.SCORE, len(x))
    assert isinstance(box, ScoreBox)
    crit = Criterion.build(ThreatModel(), y, None, None)
    gen = torch.Generator().manual_seed(0)
    shape = (len(x), 100, *x.shape[1:])
    if kind == "gaussian":
        u = torch.randn(shape, generator=gen)
    else:
        u = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
    est = estimate_gradient(box, crit, "ce", x, torch.arange(len(x)), u, 1e-3, (0.0, 1.0))
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(digits_model.model(xg), y, reduction="sum").backward()
    assert xg.grad is not None
    cos = F.cosine_similarity(est.flatten(1), xg.grad.flatten(1))
    assert float(cos.median()) > 0.7
    assert float(cos.min()) > 0.5
    # 100 antithetic pairs: 200 queries per sample, all in one call.
    assert torch.equal(box.queries, torch.full((len(x),), 200))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("nes", {"steps": 40, "samples": 20}),
        ("spsa", {"steps": 40, "samples": 20}),
        ("spsa", {"steps": 40, "samples": 20, "adam": False}),
    ],
)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_gradient_estimation_breaks_digits(
    name: str, params: dict[str, Any], norm: str, digits_model: Trained, box_calls: Calls
) -> None:
    threat = ThreatModel(norm=norm, eps=0.2 if norm == "linf" else 1.0)
    r = _run(digits_model, name, params, threat)
    assert r.success_rate >= 0.75
    assert r.success_rate > _noise_success(digits_model, threat) + 0.5
    # Each step: one batched estimate (samples rows per active sample) and one query of the iterate.
    sizes = [len(x) for x, _ in box_calls]
    assert len(box_calls) <= 2 * params["steps"]
    assert all(n % params["samples"] == 0 for n in sizes[::2])
    assert int(r.queries.max()) <= params["steps"] * (params["samples"] + 1)


def test_nes_targeted_hits_the_target(digits_model: Trained) -> None:
    targets = (digits_model.y + 3) % 10
    threat = ThreatModel(eps=0.3, goal="targeted", target="given")
    r = _run(digits_model, "nes", {"steps": 40, "samples": 20}, threat, targets=targets)
    assert r.success_rate >= 0.9
    assert torch.equal(r.adv_pred[r.success], targets[r.success])


def test_nes_confidence_goal(digits_model: Trained) -> None:
    threat = ThreatModel(eps=0.15, goal="confidence", max_true_confidence=0.5)
    r = _run(digits_model, "nes", {"steps": 20, "samples": 20}, threat)
    true_prob = digits_model.model(r.x_adv).softmax(dim=1).gather(1, digits_model.y[:, None])[:, 0]
    assert r.success_rate >= 0.45  # PGD-20 (white-box): 0.88
    assert bool((true_prob[r.success] < 0.5).all())


def test_odd_number_of_samples_is_refused(digits_model: Trained) -> None:
    with pytest.raises(ValidationError, match=r"NES\.samples.*even"):
        _run(digits_model, "nes", {"samples": 7}, ThreatModel())


# --- Square -------------------------------------------------------------------------------------


def test_p_schedule_is_the_papers_rescaled_to_the_budget() -> None:
    # 10,000 queries: the paper's own iterations.
    assert [p_selection(0.8, it, 10_000) for it in (0, 10, 11, 50, 51, 8000, 8001, 9999)] == [
        0.8,
        0.8,
        0.4,
        0.4,
        0.2,
        0.8 / 256,
        0.8 / 512,
        0.8 / 512,
    ]
    # 100 queries: iteration 1 is already 1% of the budget (past 10 and 50 of 10,000).
    assert p_selection(0.8, 0, 100) == 0.8
    assert p_selection(0.8, 1, 100) == 0.2
    assert p_selection(0.8, 99, 100) == 0.8 / 512


def test_square_perturbation_matches_the_paper() -> None:
    bump = square_perturbation(5)
    assert float(bump.norm()) == pytest.approx(1.0)
    assert bool((bump[:2] > 0).all())
    assert bool((bump[2:] < 0).all())
    # Each half peaks at its centre.
    assert float(bump[1].abs().argmax()) == 2
    assert float(bump[3:].abs().amax()) == float(bump[3, 2].abs())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("linf", 0.2), ("l2", 1.0)])
def test_square_breaks_digits_within_the_ball(
    norm: str, eps: float, digits_model: Trained, box_calls: Calls
) -> None:
    threat = ThreatModel(norm=norm, eps=eps)
    r = _run(digits_model, "square", {"n_queries": 500}, threat)
    noise = _noise_success(digits_model, threat)
    pgd = _run(digits_model, "pgd", {"steps": 40}, threat)
    assert r.success_rate >= pgd.success_rate - 0.1  # black-box, yet about as strong as PGD-40
    assert r.success_rate > noise + 0.3
    assert int(r.queries.max()) <= 500
    # Every point the attack queried lies in the ball and the bounds.
    assert box_calls
    for x, idx in box_calls:
        x0 = digits_model.x if idx is None else digits_model.x[idx]
        assert bool(threat.contains(x, x0).all())
    # One query per active sample per iteration, the init included.
    assert all(idx is not None and len(idx.unique()) == len(idx) for _, idx in box_calls)
    assert len(box_calls) <= 500


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_spends_exactly_its_budget_without_early_stop(norm: str, digits_model: Trained) -> None:
    threat = ThreatModel(norm=norm, eps=0.05 if norm == "linf" else 0.3)
    r = _run(digits_model, "square", {"n_queries": 30}, threat, early_stop=False)
    assert torch.equal(r.queries, torch.full_like(r.queries, 30))
    assert not r.budget_exhausted


def test_square_initialisations_reach_the_boundary(digits_model: Trained, box_calls: Calls) -> None:
    """linf: vertical stripes of +-eps; l2: norm eps before clipping to the bounds."""
    x = digits_model.x
    _run(digits_model, "square", {"n_queries": 1}, ThreatModel(eps=0.1))
    first, _ = box_calls[0]
    delta = first - x
    inside = (x > 0.1) & (x < 0.9)  # pixels the clip to [0, 1] cannot touch
    assert torch.allclose(delta[inside].abs(), torch.full_like(delta[inside], 0.1), atol=1e-6)
    # One sign per column.
    signs = torch.where(inside, delta.sign(), torch.zeros_like(delta))
    for col in range(8):
        column = signs[:, 0, :, col]
        assert bool(((column >= 0).all(dim=1) | (column <= 0).all(dim=1)).all())
    box_calls.clear()
    r = _run(digits_model, "square", {"n_queries": 1}, ThreatModel(norm="l2", eps=1.0))
    first, _ = box_calls[0]
    assert float((first - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    assert float((first - x).flatten(1).norm(dim=1).median()) > 0.5
    assert int(r.queries.max()) == 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_targeted_hits_the_target(norm: str, digits_model: Trained) -> None:
    targets = (digits_model.y + 3) % 10
    threat = ThreatModel(norm=norm, eps=0.3 if norm == "linf" else 2.0, goal="targeted", target="given")
    r = _run(digits_model, "square", {"n_queries": 300}, threat, targets=targets)
    assert r.success_rate >= 0.9
    assert torch.equal(r.adv_pred[r.success], targets[r.success])


# --- one-pixel ----------------------------------------------------------------------------------


def test_donors_are_distinct_and_not_the_member_itself() -> None:
    r = donors(50, 6, torch.Generator().manual_seed(0), torch.device("cpu"))
    own = torch.arange(6).view(1, 6, 1)
    assert r.shape == (50, 6, 3)
    assert bool((r != own).all())
    assert bool(((r[..., 0] != r[..., 1]) & (r[..., 0] != r[..., 2]) & (r[..., 1] != r[..., 2])).all())
    assert set(r.unique().tolist()) == set(range(6))


def test_paint_writes_k_pixels_and_a_repeated_pixel_once() -> None:
    x = torch.zeros(2, 3, 4, 4)
    genes = torch.tensor(
        [
            [[0.2, 3.4, 0.1, 0.2, 0.3], [1.0, 1.0, 1.0, 1.0, 1.0]],
            [[2.0, 2.0, 0.5, 0.5, 0.5], [2.2, 1.8, 0.9, 0.9, 0.9]],  # the same pixel (2, 2) twice
        ]
    )
    out = paint(x, genes, (0.0, 1.0))
    assert torch.equal(out[0, :, 0, 3], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(out[0, :, 1, 1], torch.ones(3))
    assert torch.equal(out[1, :, 2, 2], torch.full((3,), 0.5))  # the first value wins
    assert ThreatModel(norm="l0", eps=2).distance(out, x).tolist() == [2.0, 1.0]


@pytest.mark.parametrize("k", [1, 3])
def test_onepixel_changes_at_most_k_pixels_and_queries_once_per_generation(
    k: int, digits_model: Trained, box_calls: Calls
) -> None:
    threat = ThreatModel(norm="l0", eps=k)
    pop, gens = 30, 4
    r = _run(digits_model, "onepixel", {"population": pop, "iterations": gens}, threat, early_stop=False)
    assert len(box_calls) == gens + 1  # the initial population, then one query per generation
    n = len(digits_model.x)
    for x, idx in box_calls:
        assert idx is not None
        assert len(x) == n * pop
        assert torch.equal(idx.bincount(minlength=n), torch.full((n,), pop))
        assert float(threat.distance(x, digits_model.x[idx]).max()) <= k
    assert float(r.distance.max()) <= k
    assert torch.equal(r.queries, torch.full_like(r.queries, pop * (gens + 1)))


def test_onepixel_breaks_digits_better_than_random_pixels(digits_model: Trained) -> None:
    threat = ThreatModel(norm="l0", eps=3)
    r = _run(digits_model, "onepixel", {"population": 100, "iterations": 15}, threat)
    assert r.success_rate >= 0.5
    assert r.success_rate > _noise_success(digits_model, threat) + 0.3
    assert float(r.distance.max()) <= 3
    # Early stopping: samples that broke at once cost one population, the rest more.
    assert int(r.queries.min()) == 100
    assert int(r.queries.max()) <= 1600


def test_onepixel_targeted_hits_the_target(digits_model: Trained) -> None:
    threat = ThreatModel(norm="l0", eps=3, goal="targeted", target="second")
    r = _run(digits_model, "onepixel", {"population": 100, "iterations": 15}, threat)
    assert r.targets is not None
    assert r.success_rate >= 0.4
    assert torch.equal(r.adv_pred[r.success], r.targets[r.success])


# --- budgets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "threat"),
    [
        ("nes", {"steps": 50, "samples": 20}, ThreatModel(eps=0.05)),
        ("spsa", {"steps": 50, "samples": 20}, ThreatModel(norm="l2", eps=0.3)),
        ("square", {"n_queries": 1000}, ThreatModel(eps=0.05)),
        ("onepixel", {"population": 30, "iterations": 10}, ThreatModel(norm="l0", eps=1)),
    ],
)
def test_queries_never_exceed_max_queries(
    name: str, params: dict[str, Any], threat: ThreatModel, digits_model: Trained
) -> None:
    budget = 100  # not a multiple of any attack's cost per step
    r = _run(digits_model, name, params, threat, max_queries=budget)
    assert int(r.queries.max()) <= budget
    assert r.budget_exhausted
    # Samples still unbroken spent as much of the budget as one more step could not exceed.
    step_cost = {"nes": 21, "spsa": 21, "square": 1, "onepixel": 30}[name]
    assert int(r.queries[~r.success].min()) > budget - step_cost
    assert bool(threat.contains(r.x_adv, digits_model.x).all())
