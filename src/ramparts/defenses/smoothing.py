"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized
Smoothing"): the smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` of a base classifier
``f``, its Monte Carlo PREDICT and CERTIFY procedures, and Gaussian-noise training for the base classifier.

CERTIFY returns, for each input, a class and an L2 radius within which ``g``'s prediction provably does
not change (with probability at least ``1 - alpha`` over the sampling). The Monte Carlo sampling is
batched on the base model's device (many inputs x many noise samples per forward pass) and counted with
``index_add_``; only the final statistics on the counts (binomial test, Clopper-Pearson bound, normal
quantile) run in scipy. Each call draws its noise from its own ``torch.Generator`` seeded with ``seed``,
so a call repeats exactly on the same device with the same ``batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta, binomtest, norm
from torch import Tensor, nn

from ramparts.errors import RampartsTypeError, check_int, invalid
from ramparts.training import LossHook

__all__ = [
    "ABSTAIN",
    "SmoothedClassifier",
    "abstention_rate",
    "certified_accuracy",
    "certify_from_counts",
    "gaussian_noise_training",
    "predict_from_counts",
]

ABSTAIN = -1
"""The label a smoothed classifier returns when it abstains."""


def _check_sigma(sigma: float) -> float:
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, int | float)
        or not math.isfinite(sigma)
        or sigma <= 0
    ):
        raise invalid("sigma", sigma, "a finite noise level > 0", "e.g. sigma=0.25 (inputs in [0, 1])")
    return float(sigma)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise invalid("alpha", alpha, "a failure probability in (0, 1)", "e.g. alpha=0.001")
    return float(alpha)


def gaussian_noise_training(*, sigma: float) -> LossHook:
    """A loss hook for :func:`ramparts.training.train`: cross-entropy on ``x + N(0, sigma^2 I)``.

    Cohen et al. 2019 (Section 3.3) train the base classifier under the same Gaussian noise it will be
    smoothed with. The noise is drawn from torch's global RNG, which ``train`` seeds with its config's
    seed (in a forked RNG scope), so training stays deterministic.
    """
    sigma = _check_sigma(sigma)

    def hook(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x + sigma * torch.randn_like(x)), y)

    return hook


def predict_from_counts(counts: Tensor, *, alpha: float) -> Tensor:
    """PREDICT's decision from class counts [N, K]: the top class, or :data:`ABSTAIN` where a two-sided
    binomial test (``scipy.stats.binomtest``, p = 1/2) of the top count against the runner-up's does not
    reject at level ``alpha`` (Cohen et al. 2019, Algorithm 1 and Theorem 2)."""
    alpha = _check_alpha(alpha)
    counts = _check_counts("counts", counts)
    top = torch.topk(counts, k=min(2, counts.shape[1]), dim=1)
    n_a = top.values[:, 0].tolist()
    n_b = top.values[:, 1].tolist() if counts.shape[1] > 1 else [0] * counts.shape[0]
    pvalues = [
        binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0 for a, b in zip(n_a, n_b, strict=True)
    ]
    labels = top.indices[:, 0].clone()
    labels[torch.tensor([p > alpha for p in pvalues], dtype=torch.bool, device=labels.device)] = ABSTAIN
    return labels


def certify_from_counts(
    selection: Tensor, estimation: Tensor, *, sigma: float, alpha: float
) -> tuple[Tensor, Tensor]:
    """CERTIFY's decision from the selection counts and the (independent) estimation counts, both [N, K].

    The class ``cA`` is the top class of ``selection``; ``pA_lower`` is the one-sided (1 - alpha)
    Clopper-Pearson lower bound on ``P(f(x + noise) = cA)`` from the estimation counts
    (``beta.ppf(alpha, nA, n - nA + 1)``); the radius is ``sigma * Phi^-1(pA_lower)``, and the input is
    abstained on (label :data:`ABSTAIN`, radius 0) where ``pA_lower < 0.5`` (Cohen et al. 2019, Algorithm 1).
    Returns (labels [N] int64, radii [N] float64), on the counts' device.
    """
    sigma = _check_sigma(sigma)
    alpha = _check_alpha(alpha)
    selection = _check_counts("selection", selection)
    estimation = _check_counts("estimation", estimation)
    if selection.shape != estimation.shape:
        raise invalid(
            "estimation",
            tuple(estimation.shape),
            f"counts of the selection's shape {tuple(selection.shape)}",
            "count both stages over the same inputs and classes",
        )
    labels = selection.argmax(dim=1)
    n_a = estimation.gather(1, labels[:, None])[:, 0].cpu().numpy().astype(np.float64)
    n = estimation.sum(dim=1).cpu().numpy().astype(np.float64)
    lower = np.where(n_a > 0, beta.ppf(alpha, np.maximum(n_a, 1), n - n_a + 1), 0.0)
    certified = lower >= 0.5
    radii = np.where(certified, sigma * norm.ppf(np.where(certified, lower, 0.5)), 0.0)
    out_labels = torch.where(
        torch.as_tensor(certified, device=labels.device), labels, torch.full_like(labels, ABSTAIN)
    )
    return out_labels, torch.as_tensor(radii, dtype=torch.float64, device=labels.device)


def _check_counts(param: str, counts: Tensor) -> Tensor:
    if not isinstance(counts, Tensor) or counts.dim() != 2 or counts.shape[1] < 1:
        raise invalid(param, counts, "class counts as a 2-D tensor [N, K]", cls=RampartsTypeError)
    if counts.is_floating_point() or counts.is_complex() or bool((counts < 0).any()):
        raise invalid(param, counts, "non-negative integer counts", "count with an integer dtype")
    return counts


class SmoothedClassifier:
    """The Gaussian-smoothed version of a base classifier (Cohen, Rosenfeld & Kolter 2019).

    ``base`` maps a batch [B, *input_shape] to logits [B, num_classes]; it should have been trained
    under the same noise (:func:`gaussian_noise_training`). ``batch_size`` is the number of noisy
    copies per forward pass (several inputs share a pass when ``n < batch_size``). ``input_shape``, if
    given, is checked against every input batch.
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        sigma: float,
        num_classes: int,
        batch_size: int = 1000,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(base, nn.Module):
            raise invalid("base", type(base).__name__, "an nn.Module", cls=RampartsTypeError)
        self.base = base
        self.sigma = _check_sigma(sigma)
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)

    @property
    def device(self) -> torch.device:
        """The base model's device (CPU for a model without parameters); noise is drawn there."""
        param = next(iter(self.base.parameters()), None)
        return param.device if param is not None else torch.device("cpu")

    def predict(self, x: Tensor, *, n: int = 100, alpha: float = 0.001, seed: int = 0) -> Tensor:
        """PREDICT: labels [N] (int64, on x's device), :data:`ABSTAIN` where the top two classes' counts
        over ``n`` noisy copies are not significantly different at level ``alpha``."""
        x = self._check_inputs(x)
        n = check_int("n", n, 1)
        alpha = _check_alpha(alpha)
        gen = self._generator(seed)
        return predict_from_counts(self.counts(x, n=n, generator=gen), alpha=alpha).to(x.device)

    def certify(
        self, x: Tensor, *, n0: int = 100, n: int = 100_000, alpha: float = 0.001, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """CERTIFY: (labels [N] with :data:`ABSTAIN`, L2 radii [N] float64), on x's device.

        ``n0`` noisy copies select the class, ``n`` further copies estimate its probability; with
        probability at least ``1 - alpha`` a returned label is the smoothed classifier's prediction
        everywhere within the radius (Cohen et al. 2019, Theorem 1).
        """
        x = self._check_inputs(x)
        n0 = check_int("n0", n0, 1)
        n = check_int("n", n, 1)
        alpha = _check_alpha(alpha)
        gen = self._generator(seed)
        selection = self.counts(x, n=n0, generator=gen)
        estimation = self.counts(x, n=n, generator=gen)
        labels, radii = certify_from_counts(selection, estimation, sigma=self.sigma, alpha=alpha)
        return labels.to(x.device), radii.to(x.device)

    @torch.no_grad()
    def counts(self, x: Tensor, *, n: int, generator: torch.Generator) -> Tensor:
        """How often the base model predicts each class on ``n`` noisy copies of each input: int64 [N, K].

        The N*n (input, copy) pairs are laid out flat and cut into forward batches of ``batch_size``
        copies, so small ``n`` shares a batch among inputs and large ``n`` splits one input over batches.
        """
        device = self.device
        x = self._check_inputs(x).to(device)
        n = check_int("n", n, 1)
        total = x.shape[0] * n
        counts = torch.zeros(x.shape[0] * self.num_classes, dtype=torch.int64, device=device)
        was_training = self.base.training
        self.base.eval()
        try:
            for start in range(0, total, self.batch_size):
                owner = torch.arange(start, min(start + self.batch_size, total), device=device) // n
                clean = x[owner]
                noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
                logits = self.base(clean + self.sigma * noise)
                if logits.dim() != 2 or logits.shape[1] != self.num_classes:
                    raise invalid(
                        "num_classes",
                        self.num_classes,
                        f"the base model's number of outputs (logits of shape {tuple(logits.shape)})",
                        "pass num_classes=<the classifier's number of classes>",
                    )
                slots = owner * self.num_classes + logits.argmax(dim=1)
                counts.index_add_(0, slots, torch.ones_like(slots))
        finally:
            self.base.train(was_training)
        return counts.view(x.shape[0], self.num_classes)

    def _generator(self, seed: int) -> torch.Generator:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise invalid("seed", seed, "an integer", cls=RampartsTypeError)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _check_inputs(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise invalid("x", x, "a floating-point tensor [N, *input_shape]", cls=RampartsTypeError)
        expected = "a batch [N, *input_shape] with N >= 1"
        if x.dim() < 2 or x.shape[0] < 1:
            raise invalid("x", tuple(x.shape), expected, "add a batch dimension: x[None]")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise invalid(
                "x", tuple(x.shape), f"a batch [N, {', '.join(map(str, self.input_shape))}]", "reshape x"
            )
        return x


def certified_accuracy(
    labels: Tensor, radii: Tensor, y: Tensor, radii_grid: Sequence[float]
) -> list[tuple[float, float]]:
    """[(r, share of inputs certified correct with radius >= r)] for each r in ``radii_grid``; abstentions
    count as wrong (the approximate certified test accuracy of Cohen et al. 2019, Section 4)."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.numel() == 0:
        raise invalid("labels", labels, "a non-empty 1-D tensor of labels", cls=RampartsTypeError)
    for name, t in (("radii", radii), ("y", y)):
        if not isinstance(t, Tensor) or t.shape != labels.shape:
            raise invalid(
                name, t, f"a tensor of the labels' shape {tuple(labels.shape)}", cls=RampartsTypeError
            )
    grid = [float(r) for r in radii_grid]
    if not grid or any(not math.isfinite(r) or r < 0 for r in grid):
        raise invalid("radii_grid", radii_grid, "a non-empty sequence of radii >= 0", "e.g. [0, 0.25, 0.5]")
    correct = labels.cpu() == y.cpu()
    r_cpu = radii.detach().cpu().double()
    return [(r, float((correct & (r_cpu >= r)).double().mean())) for r in grid]


def abstention_rate(labels: Tensor) -> float:
    """The share of inputs on which the smoothed classifier abstained."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.numel() == 0:
        raise invalid("labels", labels, "a non-empty 1-D tensor of labels", cls=RampartsTypeError)
    return float((labels == ABSTAIN).double().mean())
