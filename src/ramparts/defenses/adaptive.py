"""Adaptive attacks against defences, and the sanity checks that catch gradient masking.

A defence is only reported with the attack that fits it (Athalye, Carlini & Wagner, "Obfuscated Gradients
Give a False Sense of Security: Circumventing Defenses to Adversarial Examples", ICML 2018):
- a non-differentiable transform is attacked through BPDA: its value in the forward pass, the gradient of a
  differentiable approximation (the identity: straight-through) in the backward pass;
- a randomised defence through EOT: the expectation of its output over the randomness;
- a detector together with the classifier (Carlini & Wagner, "Adversarial Examples Are Not Easily
  Detected: Bypassing Ten Detection Methods", AISec 2017): one loss that pushes the classifier to a wrong
  class while pulling every detector's score under its threshold.
`adaptive_pgd` does all three at once on a `DefendedModel`; `masking_warnings` reads evaluation results for
the four classic symptoms of gradient masking.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramparts.defenses.base import DefendedModel, Detector, Transform
from ramparts.errors import RampartsTypeError, check_int, invalid

__all__ = [
    "BPDA",
    "EOT",
    "AdaptiveResult",
    "adaptive_model",
    "adaptive_pgd",
    "defense_outcome",
    "masking_warnings",
]


class BPDA(Transform):
    """Backward Pass Differentiable Approximation of ``transform`` (Athalye et al. 2018): the output is
    ``transform(x)``, the gradient that of ``approximation(x)`` (default: the identity, straight-through)."""

    def __init__(self, transform: nn.Module, approximation: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(transform, nn.Module):
            raise invalid("transform", type(transform).__name__, "an nn.Module", cls=RampartsTypeError)
        self.transform = transform
        self.approximation = approximation if approximation is not None else nn.Identity()
        self.randomized = bool(getattr(transform, "randomized", False))

    def forward(self, x: Tensor) -> Tensor:
        approx = self.approximation(x)
        with torch.no_grad():
            exact = self.transform(x)
        return approx + (exact - approx).detach()


class EOT(nn.Module):
    """Expectation over Transformation (Athalye et al. 2018): the log of the mean softmax of ``samples``
    draws of a randomised ``model``, so the attack follows the gradient of the expected prediction.
    The draws run as one batch of ``samples x N`` inputs."""

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        self.model = model
        self.samples = check_int("samples", samples, 1)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        logits = self.model(x.repeat(self.samples, *([1] * (x.dim() - 1))))
        probs = logits.float().softmax(dim=-1).view(self.samples, n, -1).mean(dim=0)
        return probs.clamp_min(1e-12).log()


def adaptive_model(defended: DefendedModel, *, eot_samples: int = 1) -> nn.Module:
    """The defended classifier as an adaptive attacker differentiates it: BPDA around every transform that
    is not differentiable, and EOT over ``eot_samples`` draws when a transform is random."""
    if not isinstance(defended, DefendedModel):
        raise invalid("defended", type(defended).__name__, "a DefendedModel", cls=RampartsTypeError)
    transforms = [t if cast(Transform, t).differentiable else BPDA(t) for t in defended.transforms]
    model: nn.Module = nn.Sequential(*transforms, defended.classifier)
    if defended.randomized and eot_samples > 1:
        model = EOT(model, eot_samples)
    return model


@dataclass(frozen=True)
class AdaptiveResult:
    """Adversarial inputs and how the whole defence fares on them.

    `fooled[i]`: the defence classified input i wrongly *and* no detector rejected it (the attacker's
    goal); `rejected[i]`: a detector flagged it; `correct[i]`: accepted and rightly classified.
    """

    x_adv: Tensor
    fooled: Tensor
    rejected: Tensor
    correct: Tensor
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> float:
        """The defence's accuracy under this attack: inputs rightly classified or rejected."""
        return 1.0 - float(self.fooled.float().mean())

    def summary(self) -> dict[str, Any]:
        return {
            "robust_accuracy": self.robust_accuracy,
            "fooled": float(self.fooled.float().mean()),
            "rejected": float(self.rejected.float().mean()),
            "accepted_correct": float(self.correct.float().mean()),
            "config": self.config,
        }


@torch.no_grad()
def defense_outcome(
    defended: DefendedModel, x: Tensor, y: Tensor, *, votes: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """(fooled, rejected, correct) of ``defended`` on ``x``; a random defence decides by a majority of
    ``votes`` draws."""
    rejected = defended.rejects(x)
    if defended.randomized and votes > 1:
        logits = [defended(x) for _ in range(votes)]
        counts = sum(F.one_hot(z.argmax(dim=1), num_classes=z.shape[1]) for z in logits)
        pred = cast(Tensor, counts).argmax(dim=1)
    else:
        pred = defended(x).argmax(dim=1)
    wrong = pred != y
    return wrong & ~rejected, rejected, ~wrong & ~rejected


def adaptive_pgd(
    defended: DefendedModel,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    step_size: float | None = None,
    eot_samples: int = 1,
    detector_weight: float = 1.0,
    restarts: int = 1,
    votes: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    bpda_detectors: bool = True,
) -> AdaptiveResult:
    """PGD-linf against the whole defence (BPDA + EOT + detectors, Athalye et al. 2018; Carlini & Wagner
    2017): maximise the classifier's margin loss on the true label minus ``detector_weight`` times each
    detector's score above its threshold (in units of that detector's threshold), from a random start,
    keeping per input the first point that fools the defence; ``restarts`` fresh starts for the rest. A
    randomised defence answers by a majority of ``votes`` draws (the same for every attack compared).
    Detectors are differentiated through their :meth:`~Detector.attack_view` (BPDA around their own
    non-differentiable parts); ``bpda_detectors=False`` uses them as they are, to measure what that adds."""
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not eps > 0:
        raise invalid("eps", eps, "a perturbation budget > 0")
    check_int("steps", steps, 1)
    check_int("restarts", restarts, 1)
    check_int("eot_samples", eot_samples, 1)
    check_int("votes", votes, 1)
    if not detector_weight >= 0:
        raise invalid("detector_weight", detector_weight, "a weight >= 0")
    alpha = float(step_size) if step_size is not None else 2.5 * float(eps) / steps
    lo, hi = bounds
    device = x.device
    model = adaptive_model(defended, eot_samples=eot_samples)
    detectors = [cast(Detector, d) for d in defended.detectors]
    if bpda_detectors:
        detectors = [d.attack_view() for d in detectors]
    gen = torch.Generator(device=device).manual_seed(seed)
    best = x.clone()
    fooled, rejected, correct = defense_outcome(defended, best, y, votes=votes)
    for _ in range(restarts):
        idx = torch.nonzero(~fooled).flatten()  # the active set: inputs not yet fooled, shrinking each step
        if idx.numel() == 0:
            break
        x0, y0 = x[idx], y[idx]
        noise = (torch.rand(x0.shape, generator=gen, device=device) * 2 - 1) * eps
        adv = (x0 + noise).clamp(lo, hi)
        for _ in range(steps):
            if idx.numel() == 0:
                break
            adv = adv.detach().requires_grad_(True)
            logits = model(adv)
            true = logits.gather(1, y0[:, None]).squeeze(1)
            other = logits.masked_fill(F.one_hot(y0, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
            loss = (other - true).clamp(max=10.0)
            wrong = (other > true).float().detach()  # the detectors matter once the label is wrong
            for d in detectors:
                if d.threshold is not None:
                    excess = (d.score(adv) - d.threshold) / max(abs(d.threshold), 1e-12)
                    loss = loss - detector_weight * wrong * excess.clamp_min(0)
            (grad,) = torch.autograd.grad(loss.sum(), adv)
            with torch.no_grad():
                adv = adv + alpha * grad.sign()
                adv = torch.min(torch.max(adv, x0 - eps), x0 + eps).clamp(lo, hi)
                f, r, c = defense_outcome(defended, adv, y0, votes=votes)
                best[idx[f]] = adv[f]  # the first point that fools the defence is kept
                fooled[idx], rejected[idx], correct[idx] = f, r, c
                keep = ~f
                idx, x0, y0, adv = idx[keep], x0[keep], y0[keep], adv[keep]
    config = {
        "eps": float(eps),
        "steps": steps,
        "step_size": alpha,
        "eot_samples": eot_samples,
        "detector_weight": detector_weight,
        "restarts": restarts,
        "votes": votes,
        "bpda_detectors": bpda_detectors,
        "bpda": [type(t).__name__ for t in defended.transforms if not cast(Transform, t).differentiable]
        + [type(t.transform).__name__ for d in detectors for t in d.modules() if isinstance(t, BPDA)],
        "seed": seed,
    }
    return AdaptiveResult(best.detach(), fooled, rejected, correct, config)


def masking_warnings(
    robust: Mapping[str, Mapping[float, float]],
    *,
    one_step: str = "fgsm",
    iterative: str = "pgd",
    black_box: str | None = None,
    unbounded: float | None = None,
    tolerance: float = 0.02,
) -> list[str]:
    """The four symptoms of gradient masking (Athalye et al. 2018, section 6), read from robust accuracies
    ``robust[attack][eps]`` (lower = stronger attack): a one-step attack stronger than the iterative one,
    a black-box attack stronger than the white-box one, an unbounded attack short of 100% success
    (``unbounded``: its success rate), and robust accuracy that does not fall as eps grows."""
    warnings: list[str] = []
    white = robust.get(iterative, {})
    for name, stronger_than in ((one_step, "iterative"), (black_box, "white-box")):
        if name is None:
            continue
        for eps, acc in sorted(robust.get(name, {}).items()):
            if eps in white and acc < white[eps] - tolerance:
                warnings.append(
                    f"{name} (robust accuracy {acc:.1%}) beats the {stronger_than} {iterative} ({white[eps]:.1%}) "
                    f"at eps {eps:g}: gradients are likely masked; attack with BPDA/EOT"
                )
    if unbounded is not None and unbounded < 1.0 - tolerance:
        warnings.append(
            f"an unbounded attack succeeds on only {unbounded:.1%} of inputs (should be 100%): gradients are "
            "likely masked or the attack is misconfigured"
        )
    for name, curve in robust.items():
        points = sorted(curve.items())
        for (e0, a0), (e1, a1) in itertools.pairwise(points):
            if a1 > a0 + tolerance:
                warnings.append(
                    f"{name}: robust accuracy rises from {a0:.1%} at eps {e0:g} to {a1:.1%} at eps {e1:g}: "
                    "a larger budget should never help the defender"
                )
    return warnings
