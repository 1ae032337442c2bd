"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019) on the embedded digits, with a tiny noise-trained MLP."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binom
from torch import Tensor, nn

from ramparts.data import load_digits
from ramparts.defenses.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    abstention_rate,
    certified_accuracy,
    certify_from_counts,
    gaussian_noise_training,
    predict_from_counts,
)
from ramparts.errors import RampartsTypeError, ValidationError
from ramparts.report.plots import certified_accuracy_plot
from ramparts.training import TrainConfig, train

SIGMA = 0.25


@dataclass(frozen=True)
class Smoothed:
    model: nn.Module
    x: Tensor
    y: Tensor


@pytest.fixture(scope="module")
def smoothed() -> Smoothed:
    digits = load_digits()
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    config = TrainConfig(epochs=30, batch_size=64, lr=3e-3, seed=0)
    train(
        model,
        digits.subset(perm[:1400]),
        config=config,
        progress=False,
        loss_hook=gaussian_noise_training(sigma=SIGMA),
    )
    test = digits.subset(perm[1400:1500])
    return Smoothed(model, test.x, test.y)


class _Constant(nn.Module):
    """Always predicts class ``label``."""

    def __init__(self, label: int, num_classes: int = 10) -> None:
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x: Tensor) -> Tensor:
        return F.one_hot(torch.full((x.shape[0],), self.label), self.num_classes).float()


class _Random(nn.Module):
    """Uniformly random labels, whatever the input (its own seeded generator)."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = torch.Generator().manual_seed(1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.rand(x.shape[0], 10, generator=self.gen)


def test_noise_hook_is_deterministic_and_noisy() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    hook = gaussian_noise_training(sigma=0.5)
    torch.manual_seed(3)
    a = hook(model, x, y)
    torch.manual_seed(3)
    assert hook(model, x, y).item() == a.item()
    assert a.item() != pytest.approx(F.cross_entropy(model(x), y).item())


def test_same_seed_same_result(smoothed: Smoothed) -> None:
    g = SmoothedClassifier(smoothed.model, sigma=SIGMA, num_classes=10, batch_size=256)
    x = smoothed.x[:20]
    first = g.certify(x, n0=50, n=300, seed=7)
    again = g.certify(x, n0=50, n=300, seed=7)
    other = g.certify(x, n0=50, n=300, seed=8)
    assert torch.equal(first[0], again[0])
    assert torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    assert torch.equal(g.predict(x, n=200, seed=1), g.predict(x, n=200, seed=1))


def test_counts_sum_to_n_and_do_not_depend_on_packing(smoothed: Smoothed) -> None:
    x = smoothed.x[:7]
    gen = torch.Generator().manual_seed(0)
    counts = SmoothedClassifier(smoothed.model, sigma=SIGMA, num_classes=10, batch_size=33).counts(
        x, n=50, generator=gen
    )
    assert counts.shape == (7, 10)
    assert counts.dtype == torch.int64
    assert counts.sum(dim=1).tolist() == [50] * 7
    constant = SmoothedClassifier(_Constant(4), sigma=SIGMA, num_classes=10, batch_size=33)
    assert constant.counts(x, n=50, generator=gen)[:, 4].tolist() == [50] * 7


def test_radius_matches_hand_computation() -> None:
    sigma, alpha, n = 0.5, 0.001, 1000
    # All n copies agree: the Clopper-Pearson lower bound is alpha ** (1 / n) in closed form.
    labels, radii = certify_from_counts(
        torch.tensor([[0, 90, 10]]), torch.tensor([[0, n, 0]]), sigma=sigma, alpha=alpha
    )
    p = alpha ** (1 / n)
    assert labels.tolist() == [1]
    assert 0.5 * (1 + math.erf(radii.item() / sigma / math.sqrt(2))) == pytest.approx(p, abs=1e-9)
    # 900 of 1000: the bound p solves P(Bin(n, p) >= 900) = alpha, and Phi(radius / sigma) = p.
    labels, radii = certify_from_counts(
        torch.tensor([[3, 0, 97]]), torch.tensor([[60, 40, 900]]), sigma=sigma, alpha=alpha
    )
    p = 0.5 * (1 + math.erf(radii.item() / sigma / math.sqrt(2)))
    assert labels.tolist() == [2]
    assert binom.sf(899, n, p) == pytest.approx(alpha, rel=1e-6)
    assert 0.85 < p < 0.9


def test_certify_abstains_below_half_and_uses_the_selected_class() -> None:
    selection = torch.tensor([[10, 0], [0, 10], [10, 0]])
    estimation = torch.tensor([[520, 480], [520, 480], [990, 10]])
    labels, radii = certify_from_counts(selection, estimation, sigma=0.25, alpha=0.001)
    # row 1: selected class 1 holds only 480/1000 in the estimation; row 0: 520/1000 is not significant.
    assert labels.tolist() == [ABSTAIN, ABSTAIN, 0]
    assert radii[:2].tolist() == [0.0, 0.0]
    assert radii[2].item() > 0.45


def test_predict_binomial_test() -> None:
    counts = torch.tensor([[60, 40, 0], [90, 10, 0], [0, 5, 95], [50, 50, 0]])
    # Two-sided p-values: 60 vs 40 ~ 0.057; 90 vs 10 ~ 1e-16; 95 vs 5 tiny; a tie is 1.
    assert predict_from_counts(counts, alpha=0.01).tolist() == [ABSTAIN, 0, 2, ABSTAIN]
    assert predict_from_counts(counts, alpha=0.1).tolist()[0] == 0


def test_certified_accuracy_at_zero_matches_smoothed_accuracy(smoothed: Smoothed) -> None:
    g = SmoothedClassifier(smoothed.model, sigma=SIGMA, num_classes=10)
    labels, radii = g.certify(smoothed.x, n0=100, n=1000, alpha=0.001, seed=0)
    predicted = g.predict(smoothed.x, n=1000, alpha=0.001, seed=1)
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75]
    curve = certified_accuracy(labels, radii, smoothed.y, grid)
    accs = [a for _, a in curve]
    assert [r for r, _ in curve] == grid
    assert all(b <= a for a, b in itertools.pairwise(accs))
    smoothed_acc = float((predicted == smoothed.y).double().mean())
    assert accs[0] > 0.8
    assert accs[0] == pytest.approx(smoothed_acc, abs=0.1)
    assert accs[-1] < accs[0]
    assert 0 <= abstention_rate(labels) < 0.2
    assert bool(((labels == ABSTAIN) == (radii == 0)).all())


def _eot_pgd_l2(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, *, steps: int, samples: int) -> Tensor:
    """L2 PGD on the expected cross-entropy of the base model under the smoothing noise (EOT)."""
    gen = torch.Generator().manual_seed(0)
    delta = torch.zeros_like(x, requires_grad=True)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(steps):
        noisy = (x + delta).repeat_interleave(samples, 0)
        noisy = noisy + SIGMA * torch.randn(noisy.shape, generator=gen)
        loss = F.cross_entropy(model(noisy), y.repeat_interleave(samples))
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta += (eps / 4).view(shape) * step
            delta *= (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(shape)
    return (x + delta).detach()


def test_certified_radius_holds_against_eot_pgd(smoothed: Smoothed) -> None:
    g = SmoothedClassifier(smoothed.model, sigma=SIGMA, num_classes=10)
    labels, radii = g.certify(smoothed.x[:40], n0=100, n=1000, alpha=0.001, seed=0)
    keep = radii > 0.2
    x, c, r = smoothed.x[:40][keep], labels[keep], radii[keep].float()
    assert len(x) >= 5
    inside = g.predict(_eot_pgd_l2(smoothed.model, x, c, 0.95 * r, steps=15, samples=16), n=2000, seed=2)
    assert bool(((inside == c) | (inside == ABSTAIN)).all())
    # Given 1.5x the radius, the same attack flips many predictions: a radius overstated by half would fail.
    outside = g.predict(_eot_pgd_l2(smoothed.model, x, c, 1.5 * r, steps=15, samples=16), n=2000, seed=2)
    assert int(((outside != c) & (outside != ABSTAIN)).sum()) >= len(x) // 4


def test_abstains_on_a_random_model() -> None:
    g = SmoothedClassifier(_Random(), sigma=SIGMA, num_classes=10, batch_size=500)
    x = torch.rand(30, 1, 8, 8)
    labels, radii = g.certify(x, n0=100, n=500, seed=0)
    assert abstention_rate(labels) == 1.0
    assert bool((radii == 0).all())
    assert abstention_rate(g.predict(x, n=500, alpha=0.001, seed=0)) > 0.9


def test_errors(smoothed: Smoothed) -> None:
    model = smoothed.model
    for sigma in (0, -0.1, float("nan")):
        with pytest.raises(ValidationError, match="sigma"):
            SmoothedClassifier(model, sigma=sigma, num_classes=10)
    with pytest.raises(ValidationError, match="sigma"):
        gaussian_noise_training(sigma=0)
    g = SmoothedClassifier(model, sigma=SIGMA, num_classes=10, input_shape=(1, 8, 8))
    x = smoothed.x[:2]
    with pytest.raises(ValidationError, match="n0"):
        g.certify(x, n0=0, n=10)
    with pytest.raises(ValidationError, match="n:"):
        g.certify(x, n0=10, n=0)
    with pytest.raises(RampartsTypeError, match="n:"):
        g.predict(x, n=2.5)  # type: ignore[arg-type]
    for alpha in (0, 1, 1.5):
        with pytest.raises(ValidationError, match="alpha"):
            g.predict(x, n=10, alpha=alpha)
    with pytest.raises(ValidationError, match="x:"):
        g.predict(smoothed.x[0], n=10)
    with pytest.raises(ValidationError, match=r"x:.*\[N, 1, 8, 8\]"):
        g.predict(torch.zeros(2, 1, 28, 28), n=10)
    with pytest.raises(ValidationError, match="num_classes"):
        SmoothedClassifier(model, sigma=SIGMA, num_classes=5).predict(x, n=10)
    with pytest.raises(RampartsTypeError, match="radii"):
        certified_accuracy(torch.zeros(3, dtype=torch.long), torch.zeros(2), torch.zeros(3), [0.0])
    with pytest.raises(ValidationError, match="radii_grid"):
        certified_accuracy(torch.zeros(3, dtype=torch.long), torch.zeros(3), torch.zeros(3), [-1.0])


def test_certified_accuracy_plot_is_a_deterministic_png() -> None:
    curves = {"sigma = 0.25": [(0.0, 0.9), (0.25, 0.8), (0.5, 0.6)], "sigma = 0.5": [(0.0, 0.8), (1.0, 0.4)]}
    png = certified_accuracy_plot(curves, title="digits")
    assert png.startswith(b"\x89PNG")
    assert len(png) > 5000
    assert certified_accuracy_plot(curves, title="digits") == png
    assert certified_accuracy_plot({"one": [(0.0, 0.9)]}) != png
