"""Adversarial training as loss hooks for :func:`ramparts.training.train`: PGD (Madry), TRADES, fast FGSM.

Each defence is a :data:`~ramparts.training.LossHook` ``(model, x, y) -> loss``, so it inherits the
training loop's checkpoints and resumption, progress bars, seeding and its refusal of custom hooks under
DP-SGD. The inner maximisation is a plain batched torch loop on the batch's device (no oracle, no numpy):
it is the hot path of training, run once per batch.

Train/eval mode: the inner attack runs with the model in eval mode (BatchNorm uses its running
statistics and does not update them from the perturbed batches; dropout is off), so the attack sees the
deployed function; the mode is then restored and the outer loss is computed in training mode, where
BatchNorm normalises and updates on the adversarial batch, as in the TRADES reference code. Only the
input receives gradients inside the attack (``torch.autograd.grad``), so no parameter gradient leaks
into the optimiser step.

Randomness: random starts draw from torch's global generator, which :func:`~ramparts.training.train`
seeds with ``config.seed`` (and checkpoints), so the same config gives the same weights, resumed or not.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramparts.errors import RampartsTypeError, check_int, invalid
from ramparts.training import EpochStats

__all__ = [
    "TRADES",
    "FastATMonitor",
    "FastAdversarialTraining",
    "PGDTraining",
    "fast_adversarial_training",
    "linf_pgd",
    "pgd_training",
    "trades",
]

logger = logging.getLogger(__name__)

Objective = Callable[[Tensor], Tensor]
"""Adversarial logits -> the scalar the inner attack maximises."""


def _positive(param: str, value: object, fix: str | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(param, value, "a finite number > 0", fix, cls=RampartsTypeError)
    if not math.isfinite(value) or value <= 0:
        raise invalid(param, value, "a finite number > 0", fix)
    return float(value)


def _bounds(bounds: object) -> tuple[float, float]:
    if (
        not isinstance(bounds, tuple | list)
        or len(bounds) != 2
        or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise invalid("bounds", bounds, "a pair (low, high) of numbers with low < high", "e.g. (0.0, 1.0)")
    return float(bounds[0]), float(bounds[1])


def _check_eps(eps: object, bounds: tuple[float, float]) -> float:
    value = _positive("eps", eps, "e.g. 0.3 for MNIST or 8/255 for CIFAR-10")
    if value > bounds[1] - bounds[0]:
        raise invalid("eps", eps, f"at most the input range {bounds[1] - bounds[0]}")
    return value


def linf_pgd(
    model: nn.Module,
    x: Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    start: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Maximise ``objective(model(x_adv))`` over the linf ball of radius ``eps`` around ``x`` by signed steps.

    Madry et al. 2018's projected gradient ascent; ``start`` is the first iterate (``x`` when None). Runs
    in the model's current mode; returns a detached batch inside the ball and ``bounds``.
    """
    low, high = bounds
    x = x.detach()
    x_adv = (x if start is None else start.detach()).clamp(low, high)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model(x_adv)), x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(low, high)
    return x_adv.detach()


def _uniform_start(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (2 * noise - 1) * eps


class _InEval:
    """Context: the model in eval mode inside, its previous mode restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


@dataclass(frozen=True)
class PGDTraining:
    """PGD adversarial training: the cross-entropy on a linf PGD adversarial batch.

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018. Built by
    :func:`pgd_training`; ``step_size`` is resolved (2.5 eps / steps by default).
    """

    eps: float
    step_size: float
    steps: int
    random_start: bool
    bounds: tuple[float, float]

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        start = _uniform_start(x, self.eps) if self.random_start else None
        with _InEval(model):
            x_adv = linf_pgd(
                model,
                x,
                lambda logits: F.cross_entropy(logits, y, reduction="sum"),
                eps=self.eps,
                step_size=self.step_size,
                steps=self.steps,
                start=start,
                bounds=self.bounds,
            )
        return F.cross_entropy(model(x_adv), y)

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters, JSON-ready."""
        return {"defense": "pgd_training", **_fields(self)}


def pgd_training(
    *,
    eps: float,
    step_size: float | None = None,
    steps: int = 7,
    random_start: bool = True,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> PGDTraining:
    """A loss hook for Madry et al. 2018's PGD adversarial training (linf, ``steps`` inner steps).

    ``step_size`` defaults to 2.5 eps / steps (Madry's MNIST setting is eps 0.3, 40 steps of 0.01).
    """
    lims = _bounds(bounds)
    e = _check_eps(eps, lims)
    n = check_int("steps", steps, 1)
    size = 2.5 * e / n if step_size is None else _positive("step_size", step_size, "e.g. 2.5 * eps / steps")
    if not isinstance(random_start, bool):
        raise invalid("random_start", random_start, "True or False", cls=RampartsTypeError)
    return PGDTraining(eps=e, step_size=size, steps=n, random_start=random_start, bounds=lims)


@dataclass(frozen=True)
class TRADES:
    """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv maximising the KL in the linf ball.

    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019. The
    inner maximisation starts from x + 0.001 N(0, I), as in the paper's code; the KL is batch-averaged
    and differentiated through both the clean and the adversarial outputs. Built by :func:`trades`.
    """

    beta: float
    eps: float
    step_size: float
    steps: int
    bounds: tuple[float, float]

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with _InEval(model):
            with torch.no_grad():
                clean_prob = F.softmax(model(x), dim=1)
            x_adv = linf_pgd(
                model,
                x,
                lambda logits: F.kl_div(F.log_softmax(logits, dim=1), clean_prob, reduction="sum"),
                eps=self.eps,
                step_size=self.step_size,
                steps=self.steps,
                start=x + 0.001 * torch.randn_like(x),
                bounds=self.bounds,
            )
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters, JSON-ready."""
        return {"defense": "trades", **_fields(self)}


def trades(
    *,
    beta: float = 6.0,
    eps: float,
    step_size: float | None = None,
    steps: int = 10,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> TRADES:
    """A loss hook for Zhang et al. 2019's TRADES; ``beta`` (>= 0) weighs robustness against accuracy.

    ``step_size`` defaults to 2.5 eps / steps (the paper: eps 0.3, 40 steps of 0.01 on MNIST; eps 0.031,
    10 steps of 0.007 on CIFAR-10, beta 6).
    """
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta) or beta < 0:
        raise invalid("beta", beta, "a finite number >= 0", "the paper uses 1 to 6; 0 is plain training")
    lims = _bounds(bounds)
    e = _check_eps(eps, lims)
    n = check_int("steps", steps, 1)
    size = 2.5 * e / n if step_size is None else _positive("step_size", step_size, "e.g. 2.5 * eps / steps")
    return TRADES(beta=float(beta), eps=e, step_size=size, steps=n, bounds=lims)


@dataclass(frozen=True)
class FastAdversarialTraining:
    """FGSM adversarial training from a uniform random start ("fast AT").

    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020: one
    signed step of size ``alpha`` from a start uniform in the eps ball, projected back into it. Prone to
    catastrophic overfitting (PGD accuracy suddenly collapsing); pair it with :class:`FastATMonitor`.
    """

    eps: float
    alpha: float
    bounds: tuple[float, float]

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with _InEval(model):
            x_adv = linf_pgd(
                model,
                x,
                lambda logits: F.cross_entropy(logits, y, reduction="sum"),
                eps=self.eps,
                step_size=self.alpha,
                steps=1,
                start=_uniform_start(x, self.eps),
                bounds=self.bounds,
            )
        return F.cross_entropy(model(x_adv), y)

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters, JSON-ready."""
        return {"defense": "fast_adversarial_training", **_fields(self)}


def fast_adversarial_training(
    *, eps: float, alpha: float | None = None, bounds: tuple[float, float] = (0.0, 1.0)
) -> FastAdversarialTraining:
    """A loss hook for Wong et al. 2020's fast AT; ``alpha`` defaults to 1.25 eps, the paper's choice."""
    lims = _bounds(bounds)
    e = _check_eps(eps, lims)
    a = 1.25 * e if alpha is None else _positive("alpha", alpha, "the paper uses 1.25 * eps")
    return FastAdversarialTraining(eps=e, alpha=a, bounds=lims)


@dataclass
class FastATMonitor:
    """Per-epoch early stopping against catastrophic overfitting; pass it as ``train(..., on_epoch=...)``.

    After each epoch it measures PGD accuracy (linf, ``steps`` steps of 2.5 eps / steps from a uniform
    start drawn from a generator seeded with ``seed`` every epoch, model in eval mode) on the held-out
    batch ``(val_x, val_y)``, keeps a copy of the weights of the best epoch so far, and stops training
    when the accuracy falls more than ``drop`` below that best (Wong et al. 2020, section 5.2, stop when
    PGD accuracy collapses). Call :meth:`restore` afterwards to load the best weights. ``history`` holds
    each epoch's PGD accuracy; the rule itself is :meth:`observe`, which takes a measured accuracy.
    """

    val_x: Tensor
    val_y: Tensor
    eps: float
    steps: int = 10
    drop: float = 0.2
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    history: list[float] = field(default_factory=list, init=False)
    best_accuracy: float = field(default=-1.0, init=False)
    best_epoch: int = field(default=0, init=False)
    stopped_at: int | None = field(default=None, init=False)
    best_state: dict[str, Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.val_x, Tensor) or not isinstance(self.val_y, Tensor):
            raise invalid(
                "val_x", type(self.val_x).__name__, "tensors val_x and val_y", cls=RampartsTypeError
            )
        if self.val_x.shape[0] == 0 or self.val_y.shape != (self.val_x.shape[0],):
            raise invalid(
                "val_y", tuple(self.val_y.shape), f"one label per input: shape ({self.val_x.shape[0]},)"
            )
        self.bounds = _bounds(self.bounds)
        self.eps = _check_eps(self.eps, self.bounds)
        check_int("steps", self.steps, 1)
        check_int("seed", self.seed, 0)
        if isinstance(self.drop, bool) or not isinstance(self.drop, int | float) or not 0 < self.drop <= 1:
            raise invalid(
                "drop", self.drop, "an accuracy drop in (0, 1]", "Wong et al. stop on a collapse: 0.2"
            )

    def robust_accuracy(self, model: nn.Module) -> float:
        """PGD accuracy of ``model`` on the held-out batch (eval mode; the model's mode is restored)."""
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x, y = self.val_x.to(device), self.val_y.to(device)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        with _InEval(model):
            x_adv = linf_pgd(
                model,
                x,
                lambda logits: F.cross_entropy(logits, y, reduction="sum"),
                eps=self.eps,
                step_size=2.5 * self.eps / self.steps,
                steps=self.steps,
                start=_uniform_start(x, self.eps, generator),
                bounds=self.bounds,
            )
            with torch.no_grad():
                return float((model(x_adv).argmax(dim=1) == y).float().mean())

    def observe(self, accuracy: float, model: nn.Module) -> bool:
        """Record one epoch's PGD ``accuracy``; keep ``model``'s weights if best; True = stop (collapse)."""
        self.history.append(accuracy)
        epoch = len(self.history)
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        if accuracy < self.best_accuracy - self.drop:
            self.stopped_at = epoch
            logger.info(
                "catastrophic overfitting at epoch %d: PGD accuracy %.3f, best %.3f at epoch %d",
                epoch,
                accuracy,
                self.best_accuracy,
                self.best_epoch,
            )
            return True
        return False

    def __call__(self, stats: EpochStats, model: nn.Module) -> bool:
        """The ``on_epoch`` callback of :func:`~ramparts.training.train`."""
        return self.observe(self.robust_accuracy(model), model)

    def restore(self, model: nn.Module) -> nn.Module:
        """Load the best epoch's weights into ``model`` (in place) and return it."""
        if self.best_state is None:
            raise invalid(
                "best_state", None, "a monitor that has seen an epoch", "pass it to train(on_epoch=...)"
            )
        model.load_state_dict(copy.deepcopy(self.best_state))
        return model


def _fields(hook: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(hook).items()}
