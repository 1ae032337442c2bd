"""Steinhardt, Koh & Liang's certified bound for a linear SVM, on digits 8 vs 9 (64 features)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from ramparts.data import Dataset, load_digits
from ramparts.defenses.certified import (
    CertifiedBound,
    FeasibleSet,
    certify_linear_svm,
    hinge_objective,
    train_linear_svm,
)
from ramparts.defenses.sanitization import centroids, fit_sphere_slab
from ramparts.errors import RampartsTypeError, ValidationError


def _split() -> tuple[Dataset, Dataset]:
    digits = load_digits()
    pair = digits.subset((digits.y == 8) | (digits.y == 9))
    perm = torch.randperm(len(pair), generator=torch.Generator().manual_seed(0))
    return pair.subset(perm[:200]), pair.subset(perm[200:])


def _xy(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return data.x.reshape(len(data), -1).double(), torch.where(data.y == 9, 1.0, -1.0).double()


def test_svm_matches_cvxpy_reference() -> None:
    x, y = _xy(_split()[0])
    w, b = train_linear_svm(x, y, l2=0.01)
    wv, bv = cp.Variable(64), cp.Variable()
    margins = cp.multiply(y.numpy(), x.numpy() @ wv + bv)
    objective = cp.sum(cp.pos(1 - margins)) / len(y) + 0.005 * (cp.sum_squares(wv) + cp.square(bv))
    cp.Problem(cp.Minimize(objective)).solve(solver="CLARABEL")
    assert hinge_objective(w, b, x, y, l2=0.01) == pytest.approx(float(objective.value), rel=1e-3)
    assert np.abs(w.numpy() - wv.value).max() < 1e-2
    assert torch.equal(train_linear_svm(x, y, l2=0.01)[0], w)  # deterministic


def test_feasible_maximiser_is_feasible_and_worst() -> None:
    x, y = _xy(_split()[0])
    labels = (y > 0).long()
    mu = centroids(x, labels, kind="oracle", clean=torch.ones(len(y), dtype=torch.bool))
    defence = fit_sphere_slab(x, labels, centers=mu, sphere_quantile=0.8, slab_quantile=0.8)
    w, b = train_linear_svm(x, y, l2=0.01)
    points, losses = FeasibleSet(defence, dim=64, box=True).maximize(w, b)
    assert bool(defence.contains(points, torch.tensor([0, 1]), tol=1e-5).all())
    assert float(points.min()) >= 0.0
    assert float(points.max()) <= 1.0
    clean_loss = (1 - y * (x @ w + b)).clamp_min(0)
    inside = defence.contains(x, labels)
    g = torch.Generator().manual_seed(1)
    for k in range(2):
        own = inside & (labels == k)
        assert float(losses[k]) >= float(clean_loss[own].max()) - 1e-6
        # random feasible points: convex combinations of in-set clean points of the class stay feasible
        weights = torch.rand(50, int(own.sum()), generator=g, dtype=torch.float64)
        random_pts = (weights / weights.sum(1, keepdim=True)) @ x[own]
        random_loss = (1 - (2 * k - 1) * (random_pts @ w + b)).clamp_min(0)
        assert float(losses[k]) >= float(random_loss.max()) - 1e-6
    box_points, box_losses = FeasibleSet(None, dim=64, box=True).maximize(w, b)
    assert bool((box_losses >= losses - 1e-6).all())  # a larger set gives a worse point
    assert set(box_points.unique().tolist()) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def bounds() -> tuple[CertifiedBound, CertifiedBound]:
    """The bound with the oracle sphere+slab defence, and without defence, on digits 8 vs 9."""
    train, test = _split()
    defended = certify_linear_svm(train, test, [0.0, 0.05, 0.3], steps=15)
    undefended = certify_linear_svm(train, test, [0.3], steps=15, sphere_quantile=None, slab_quantile=None)
    return defended, undefended


def test_bound_grows_with_eps_and_starts_at_clean_loss(bounds: tuple[CertifiedBound, CertifiedBound]) -> None:
    res, none = bounds
    assert res.upper_bound[0] == pytest.approx(res.extra["clean_loss"], rel=1e-4)
    assert res.upper_bound[0] < res.upper_bound[1] < res.upper_bound[2]
    assert none.upper_bound[0] > res.upper_bound[2]  # the defence shrinks the attacker's set
    assert res.summary()["n_poison"] == [0, 10, 60]


def test_candidate_attack_raises_test_error(bounds: tuple[CertifiedBound, CertifiedBound]) -> None:
    res, none = bounds
    assert res.extra["removed"][2]["poison"] == 0  # the candidate points pass the defence
    assert res.candidate_test_error[2] > res.clean_test_error
    assert res.candidate_test_error[2] > res.candidate_test_error[0]
    assert none.candidate_test_error[0] > none.clean_test_error
    train, test = _split()
    first = certify_linear_svm(train, test, [0.05], steps=3)
    again = certify_linear_svm(train, test, [0.05], steps=3)
    assert again.upper_bound == first.upper_bound
    assert again.candidate_test_error == first.candidate_test_error


def test_certified_errors() -> None:
    train, test = _split()
    with pytest.raises(ValidationError, match="eps"):
        certify_linear_svm(train, test, [-0.1])
    with pytest.raises(ValidationError, match="eps"):
        certify_linear_svm(train, test, [])
    with pytest.raises(ValidationError, match="sphere_quantile"):
        certify_linear_svm(train, test, [0.1], sphere_quantile=1.2)
    with pytest.raises(ValidationError, match="two labels"):
        certify_linear_svm(load_digits(), test, [0.1])
    with pytest.raises(ValidationError, match="steps"):
        certify_linear_svm(train, test, [0.1], steps=0)
    with pytest.raises(ValidationError, match="box"):
        certify_linear_svm(train, test, [0.1], sphere_quantile=None, slab_quantile=None, box=False)
    x, y = _xy(train)
    with pytest.raises(ValidationError, match="-1/\\+1"):
        train_linear_svm(x, (y > 0).double(), l2=0.01)
    with pytest.raises(ValidationError, match="l2"):
        train_linear_svm(x, y, l2=0.0)
    with pytest.raises(RampartsTypeError):
        certify_linear_svm([x, y], test, [0.1])  # type: ignore[arg-type]
