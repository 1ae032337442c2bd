"""Label flipping: the attacker changes the labels of a share of the training set (its size is unchanged).

Follows Biggio et al. 2011, "Support vector machines under adversarial label noise" (random and
targeted label noise), and Xiao et al. 2012, "Adversarial label flips attack on support vector machines"
(flips chosen to maximise the victim's loss, here for a multinomial logistic regression).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, check_int, invalid
from ramparts.poisoning.base import POISONING, PoisoningAttack, choose, relabel

__all__ = ["LossFlip", "PairFlip", "RandomFlip", "fit_linear"]

logger = logging.getLogger(__name__)


def _check_classes(train: Dataset) -> None:
    if train.num_classes < 2:
        raise invalid("train", train.num_classes, "at least 2 classes to flip labels between")


def _check_budget(available: int, n_poison: int, what: str) -> None:
    if available < n_poison:
        raise invalid(
            "fraction",
            f"{n_poison} poisons",
            f"at most {available} ({what})",
            "lower the fraction or use a larger training set",
        )


@POISONING.register("flip_random")
class RandomFlip(PoisoningAttack):
    """Random label noise (Biggio et al. 2011): each chosen record gets a uniformly random *other* label.

    Biggio, Nelson and Laskov, "Support Vector Machines Under Adversarial Label Noise", ACML 2011.
    """

    def __init__(self) -> None:
        super().__init__()

    def _run(self, train: Dataset, n_poison: int, gen: torch.Generator) -> tuple[Dataset, Tensor]:
        _check_classes(train)
        idx = choose(torch.arange(len(train)), n_poison, gen)
        shift = torch.randint(1, train.num_classes, (n_poison,), generator=gen)
        new = (train.y[idx].cpu() + shift) % train.num_classes
        return relabel(train, idx, new)


@POISONING.register("flip_pair")
class PairFlip(PoisoningAttack):
    """Targeted class-pair flips (Biggio et al. 2011): records of class ``source`` are relabelled ``target``.

    Biggio, Nelson and Laskov, "Support Vector Machines Under Adversarial Label Noise", ACML 2011.
    """

    def __init__(self, *, source: int, target: int) -> None:
        super().__init__()
        self.source = check_int("source", source, 0)
        self.target = check_int("target", target, 0)
        if source == target:
            raise invalid(
                "target", target, f"a class other than source={source}", "pick two distinct classes"
            )

    def _run(self, train: Dataset, n_poison: int, gen: torch.Generator) -> tuple[Dataset, Tensor]:
        for param, value in (("source", self.source), ("target", self.target)):
            if value >= train.num_classes:
                raise invalid(param, value, f"a class index in [0, {train.num_classes - 1}]")
        candidates = (train.y.cpu() == self.source).nonzero().flatten()
        _check_budget(
            candidates.numel(),
            n_poison,
            f"the training set has {candidates.numel()} records of class {self.source}",
        )
        idx = choose(candidates, n_poison, gen)
        return relabel(train, idx, torch.full((n_poison,), self.target, dtype=torch.int64))


@POISONING.register("flip_loss")
class LossFlip(PoisoningAttack):
    """Loss-maximising flips against a linear model, chosen greedily (after Xiao et al. 2012).

    A multinomial logistic regression (flattened inputs, L2 penalty ``l2``) is fitted on the clean set by
    full-batch L-BFGS (``steps`` iterations). Then, over ``rounds`` rounds, every candidate flip
    (record i, new label k) is scored by a first-order approximation of the increase of the *clean*
    loss it causes: one gradient step on the flipped training loss moves the weights by
    ``-(g_i(k) - g_i(y_i))``, so the clean loss changes by ``(G_k - G_{y_i}) . x_i``, where ``G`` is the
    gradient of the clean training loss (original labels) at the current model. The best-scoring
    records (each with its best new label) are flipped, the model is refit on the poisoned labels
    (warm start), and the next round scores again. Stochastic only through ties (broken by ``gen``).

    Xiao, Xiao and Eckert, "Adversarial Label Flips Attack on Support Vector Machines", ECAI 2012.
    """

    def __init__(self, *, steps: int = 50, l2: float = 1e-3, rounds: int = 5) -> None:
        super().__init__()
        self.steps = check_int("steps", steps, 1)
        self.rounds = check_int("rounds", rounds, 1)
        if isinstance(l2, bool) or not isinstance(l2, int | float):
            raise invalid("l2", l2, "a number >= 0", cls=RampartsTypeError)
        if not math.isfinite(l2) or l2 < 0:
            raise invalid("l2", l2, "a number >= 0", "try 1e-3")
        self.l2 = float(l2)

    def _run(self, train: Dataset, n_poison: int, gen: torch.Generator) -> tuple[Dataset, Tensor]:
        _check_classes(train)
        k = train.num_classes
        x = train.x.detach().flatten(1).cpu()
        xb = torch.cat([x, torch.ones(len(train), 1)], dim=1)
        y_clean = train.y.cpu()
        y = y_clean.clone()
        flipped = torch.zeros(len(train), dtype=torch.bool)
        # tiny random jitter breaks exact ties reproducibly
        jitter = 1e-9 * torch.rand(len(train), generator=gen)
        linear = fit_linear(x, y, k, steps=self.steps, l2=self.l2)
        done = 0
        for r in range(self.rounds):
            take = math.ceil((n_poison - done) / (self.rounds - r))
            if take == 0:
                break
            grad = _clean_gradient(linear, x, y_clean)  # [K, D+1]
            score = xb @ grad.T  # [N, K]: (G_k . x_i)
            score = score - score.gather(1, y_clean[:, None])
            score[torch.arange(len(train)), y_clean] = -torch.inf
            best, label = score.max(dim=1)
            best = (best + jitter).masked_fill(flipped, -torch.inf)
            idx = best.topk(take).indices
            y[idx] = label[idx]
            flipped[idx] = True
            done += take
            linear = fit_linear(x, y, k, steps=self.steps, l2=self.l2, init=linear)
            logger.debug("flip_loss round %d: %d flips", r + 1, done)
        idx = flipped.nonzero().flatten()
        return relabel(train, idx, y[idx])


def fit_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    steps: int,
    l2: float,
    lr: float = 1.0,
    init: nn.Linear | None = None,
) -> nn.Linear:
    """Multinomial logistic regression on ``x`` [N, D] by full-batch L-BFGS; mean CE + l2/2 * ||W||^2."""
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        if init is None:
            linear.weight.zero_()
            linear.bias.zero_()
        else:
            linear.weight.copy_(init.weight)
            linear.bias.copy_(init.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=lr, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    linear.requires_grad_(False)
    return linear


def _clean_gradient(linear: nn.Linear, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the mean clean CE loss (no penalty) w.r.t. [W | b] (shape [K, D+1]), in closed form."""
    p = torch.softmax(linear(x), dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    gw = p.T @ x / len(y)
    gb = p.mean(dim=0)
    return torch.cat([gw, gb[:, None]], dim=1)
