"""Each attack against a simple reference implementation or a property its paper states."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch.nn import functional as F

from ramparts.criteria import Criterion
from ramparts.evasion import ATTACKS, AttackProgress, Tracker
from ramparts.evasion.apgd import checkpoints, dlr_loss
from ramparts.threat import ThreatModel

from .conftest import Trained


def _grad(t: Trained, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    F.cross_entropy(t.model(x), y, reduction="sum").backward()
    assert x.grad is not None
    return x.grad


def test_fgsm_matches_the_formula(digits_model: Trained) -> None:
    x, y, eps = digits_model.x, digits_model.y, 0.07
    expected = (x + eps * _grad(digits_model, x, y).sign()).clamp(0, 1)
    r = ATTACKS.get("fgsm")()(digits_model.oracle, x, y, ThreatModel(eps=eps), early_stop=False)
    assert torch.allclose(r.x_adv, expected, atol=1e-6)


def test_fgsm_l2_step_has_length_eps(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    g = _grad(digits_model, x, y)
    expected = (x + 0.5 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    r = ATTACKS.get("fgsm")()(digits_model.oracle, x, y, ThreatModel(norm="l2", eps=0.5), early_stop=False)
    assert torch.allclose(r.x_adv, expected, atol=1e-5)


def test_pgd_matches_a_plain_reference_loop(digits_model: Trained) -> None:
    """Without early stopping or a random start, PGD's last iterate is the textbook loop's."""
    x, y, eps, step = digits_model.x, digits_model.y, 0.08, 0.01
    ref = x.clone()
    for _ in range(10):
        ref = (x + (ref + step * _grad(digits_model, ref, y).sign() - x).clamp(-eps, eps)).clamp(0, 1)
    threat = ThreatModel(eps=eps)
    r = ATTACKS.get("pgd")(steps=10, step_size=step, random_start=False)(
        digits_model.oracle, x, y, threat, early_stop=False
    )
    ref_fooled = digits_model.model(ref).argmax(dim=1) != y
    # The per-sample best keeps every success of the reference (and may keep an earlier iterate).
    assert bool((r.success | ~ref_fooled).all())
    assert r.success_rate >= float(ref_fooled.float().mean())


def test_targeted_pgd_hits_the_chosen_class(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    targets = (y + 3) % 10
    threat = ThreatModel(eps=0.3, goal="targeted", target="given")
    r = ATTACKS.get("pgd")(steps=30)(digits_model.oracle, x, y, threat, targets=targets)
    assert r.success_rate > 0.8
    assert torch.equal(r.adv_pred[r.success], targets[r.success])


def test_targeted_with_minimum_confidence(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    threat = ThreatModel(eps=0.3, goal="targeted", target="second", min_target_confidence=0.9)
    r = ATTACKS.get("pgd")(steps=40)(digits_model.oracle, x, y, threat)
    assert r.success.any()
    probs = digits_model.model(r.x_adv).softmax(dim=1)
    assert r.targets is not None
    target_prob = probs.gather(1, r.targets[:, None])[:, 0]
    assert bool((target_prob[r.success] > 0.9).all())
    assert bool((target_prob[~r.success] <= 0.9 + 1e-6).all())


def test_confidence_goal_needs_no_misclassification(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    threat = ThreatModel(eps=0.05, goal="confidence", max_true_confidence=0.6)
    r = ATTACKS.get("pgd")(steps=20)(digits_model.oracle, x, y, threat)
    true_prob = digits_model.model(r.x_adv).softmax(dim=1).gather(1, y[:, None])[:, 0]
    assert torch.equal(r.success, true_prob < 0.6)
    # Some samples reached the goal while still classified correctly: the goal is not misclassification.
    assert bool((r.success & (r.adv_pred == y)).any())


def test_confidence_margin_is_relative_to_the_clean_score(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    threat = ThreatModel(eps=0.05, goal="confidence", confidence_margin=0.3)
    r = ATTACKS.get("bim")(steps=10, step_size=0.01)(digits_model.oracle, x, y, threat)
    p0 = digits_model.model(x).softmax(dim=1).gather(1, y[:, None])[:, 0]
    p1 = digits_model.model(r.x_adv).softmax(dim=1).gather(1, y[:, None])[:, 0]
    assert torch.equal(r.success, p1 < p0 - 0.3)


def test_least_likely_targets(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    r = ATTACKS.get("ill")(steps=10, step_size=0.05)(
        digits_model.oracle, x, y, ThreatModel(eps=0.4, goal="targeted", target="least_likely")
    )
    assert r.targets is not None
    assert torch.equal(r.targets, digits_model.model(x).argmin(dim=1))
    with pytest.raises(ValueError, match="least_likely"):
        ATTACKS.get("ill")()(
            digits_model.oracle, x, y, ThreatModel(eps=0.3, goal="targeted", target="random")
        )


def test_apgd_at_least_as_strong_as_pgd(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    threat = ThreatModel(eps=0.1)
    pgd = ATTACKS.get("pgd")(steps=50)(digits_model.oracle, x, y, threat)
    ce = ATTACKS.get("apgd")(steps=50)(digits_model.oracle, x, y, threat)
    dlr = ATTACKS.get("apgd")(steps=50, loss="dlr")(digits_model.oracle, x, y, threat)
    assert ce.robust_accuracy <= pgd.robust_accuracy + 1 / len(y)
    assert min(ce.robust_accuracy, dlr.robust_accuracy) <= pgd.robust_accuracy


def test_apgd_checkpoints_follow_the_paper() -> None:
    marks = sorted(checkpoints(100))
    assert marks[:4] == [22, 41, 57, 70]
    assert marks[-1] <= 100


def test_dlr_is_scale_invariant() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    assert torch.allclose(dlr_loss(z, y), dlr_loss(7 * z + 3, y), atol=1e-5)


def test_cw_finds_small_l2_perturbations(digits_model: Trained) -> None:
    x, y = digits_model.x, digits_model.y
    r = ATTACKS.get("cw")(steps=100, binary_search_steps=5)(
        digits_model.oracle, x, y, ThreatModel(norm="l2", eps=3.0)
    )
    assert r.success_rate > 0.95
    pgd = ATTACKS.get("pgd")(steps=40)(
        digits_model.oracle, x, y, ThreatModel(norm="l2", eps=float(r.distance.median()))
    )
    # A minimum-norm attack's median distance is a budget at which PGD does not break everything.
    assert pgd.success_rate < 1.0
    assert r.summary()["mean_distance_success"] < 2.0


def test_tracker_keeps_success_first_then_lower_margin() -> None:
    x = torch.zeros(3, 1, 2, 2)
    t = Tracker(x, torch.tensor([1.0, 1.0, -1.0]), ThreatModel(eps=0.5))
    idx = torch.arange(3)
    cand = torch.ones(3, 1, 2, 2) * 0.1
    better = t.offer(idx, cand, torch.tensor([0.5, 2.0, 0.5]))
    assert better.tolist() == [True, False, False]
    assert t.success.tolist() == [False, False, True]


def test_distance_tracker_prefers_the_closest_success() -> None:
    x = torch.zeros(2, 4)
    threat = ThreatModel(norm="l2", eps=1.0)
    t = Tracker(x, torch.tensor([1.0, 1.0]), threat, mode="distance")
    idx = torch.arange(2)
    t.offer(idx, torch.full((2, 4), 0.4), torch.tensor([-1.0, -1.0]))  # distance 0.8: success
    t.offer(idx, torch.full((2, 4), 0.2), torch.tensor([-0.5, 1.0]))  # closer; only sample 0 succeeds
    t.offer(idx, torch.full((2, 4), 0.1), torch.tensor([2.0, 3.0]))  # closer still but failing
    assert torch.allclose(t.x[0], torch.full((4,), 0.2))
    assert torch.allclose(t.x[1], torch.full((4,), 0.4))


def test_criterion_margin_sign_matches_argmax() -> None:
    gen = torch.Generator().manual_seed(1)
    lp = torch.randn(50, 10, generator=gen).log_softmax(dim=1)
    y = torch.randint(0, 10, (50,), generator=gen)
    crit = Criterion("untargeted", y)
    assert torch.equal(crit.reached(lp), lp.argmax(dim=1) != y)
    t = (y + 1) % 10
    assert torch.equal(Criterion("targeted", y, t).reached(lp), lp.argmax(dim=1) == t)


def test_progress_callback_reports_queries_and_successes(digits_model: Trained) -> None:
    seen: list[AttackProgress] = []
    r = ATTACKS.get("pgd")(steps=10)(
        digits_model.oracle, digits_model.x, digits_model.y, ThreatModel(eps=0.2), progress=seen.append
    )
    assert seen, "no progress reported"
    last = seen[-1]
    assert last.succeeded == int(r.success.sum())
    assert last.queries_total == int(r.queries.sum())
    assert all(a.queries_total <= b.queries_total for a, b in pairwise(seen))


def test_distance_tracker_does_not_count_successes_outside_the_ball() -> None:
    x = torch.zeros(1, 4)
    t = Tracker(x, torch.tensor([1.0]), ThreatModel(norm="l2", eps=0.5), mode="distance")
    t.offer(torch.arange(1), torch.full((1, 4), 0.4), torch.tensor([-1.0]))  # adversarial, distance 0.8
    assert not bool(t.success[0])
