"""Poison Frogs: targeted clean-label poisoning by feature collision (Shafahi et al. 2018).

Crafting lives here; measuring the one-shot kill (transfer learning) and end-to-end fine-tuning lives in
`frogs_evaluation`.

The attacker wants one chosen test input (the *target*) classified as a chosen *base* class. It takes
an image of the base class and nudges it until the network's penultimate features match the
target's, while the image stays close to the base in input space; the poison is then added to the
training set with its correct (base) label. A model trained on that set must put the poison, and so
the target that shares its features, on the base side of the decision boundary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from ramparts.errors import RampartsTypeError, check_int, invalid

__all__ = ["FrogsCraft", "PoisonFrogs", "penultimate"]

logger = logging.getLogger(__name__)
# A pair whose step size was halved below lr * this factor has converged (no descent step left).
_MIN_LR_FACTOR = 1e-6


def penultimate(model: nn.Module) -> nn.Module:
    """The feature extractor of a zoo classifier: everything up to (not including) its last linear layer.

    Works for ``features`` + ``classifier`` models (LeNet-5, the Carlini CNN, SmallCNN), the MLP
    (``net``), ResNet-18 (``stem``/``layers``/``pool``/``fc``) and any ``nn.Sequential`` ending in a
    linear layer. The returned module shares its weights with ``model`` (no copy), so it is the
    network the poisons are crafted against and the one a transfer-learning victim freezes.
    """
    if isinstance(model, nn.Sequential):
        return _without_last_linear(model, "model")
    children = dict(model.named_children())
    feats, head, net = children.get("features"), children.get("classifier"), children.get("net")
    if feats is not None and isinstance(head, nn.Linear):
        return feats
    if feats is not None and isinstance(head, nn.Sequential):
        return nn.Sequential(feats, *_without_last_linear(head, "model.classifier"))
    if isinstance(net, nn.Sequential):
        return _without_last_linear(net, "model.net")
    stem, layers, pool = children.get("stem"), children.get("layers"), children.get("pool")
    if (
        stem is not None
        and layers is not None
        and pool is not None
        and isinstance(children.get("fc"), nn.Linear)
    ):
        return nn.Sequential(stem, layers, pool)
    raise invalid(
        "model",
        type(model).__name__,
        "a zoo classifier (features+classifier, net, stem/layers/pool/fc) or an nn.Sequential ending in nn.Linear",
        "pass the feature extractor yourself (the network up to its penultimate layer)",
        cls=RampartsTypeError,
    )


def _without_last_linear(seq: nn.Sequential, param: str) -> nn.Sequential:
    if len(seq) == 0 or not isinstance(seq[-1], nn.Linear):
        raise invalid(param, type(seq).__name__, "an nn.Sequential whose last layer is nn.Linear")
    return nn.Sequential(*list(seq)[:-1])


@dataclass(frozen=True)
class FrogsCraft:
    """The poisons of one :meth:`PoisonFrogs.craft` call, one per (target, base) pair.

    Distances are per pair: ``feature_before``/``feature_after`` = ||f(x) - f(target)||_2 at the
    (unwatermarked) base and at the poison; ``l2``/``linf`` = the poison's distance to its original
    base in input space; ``target_l2`` = the target's distance to the base (the scale to compare with);
    ``steps`` = iterations each pair ran before its relative change fell below ``tol``.
    """

    poisons: Tensor
    feature_before: Tensor
    feature_after: Tensor
    steps: Tensor
    l2: Tensor
    linf: Tensor
    target_l2: Tensor
    beta: float
    config: dict[str, Any]
    seed: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready means of the per-pair distances."""
        return {
            "n_poison": int(self.poisons.shape[0]),
            "beta": self.beta,
            "feature_before_mean": float(self.feature_before.mean()),
            "feature_after_mean": float(self.feature_after.mean()),
            "feature_ratio_mean": float((self.feature_after / self.feature_before.clamp_min(1e-12)).mean()),
            "l2_mean": float(self.l2.mean()),
            "linf_mean": float(self.linf.mean()),
            "target_l2_mean": float(self.target_l2.mean()),
            "steps_mean": float(self.steps.float().mean()),
        }


@dataclass(frozen=True)
class PoisonFrogs:
    """Feature-collision poison crafting, Algorithm 1 of Shafahi et al. (2018), "Poison Frogs!".

    Each step is a forward (gradient) step on ||f(x) - f(t)||^2 followed by the proximal (backward)
    step of beta*||x - b||^2: ``x <- (x + lr*beta*b) / (1 + lr*beta)``, then a clip to [0, 1].
    ``beta=None`` uses the paper's scaling ``beta0 * (feature_dim / input_dim)^2``. ``opacity``
    blends the target into the base first (the paper's watermark; 0 turns it off) and the blend is
    the base the proximal step pulls towards. With ``backtrack`` (default) a step that raises the
    pair's objective ||f(x) - f(t)||^2 + beta*||x - b||^2 is rejected and that pair's step size halved
    (a safeguard of ours: with a fixed ``lr`` above 1/L the iteration diverges, as it did on the digits).
    ``backtrack=False`` is Algorithm 1 with a fixed step. A pair stops when an accepted step moves it
    by ||x_new - x|| / ||x|| < ``tol``, when its step size fell below ``lr * 1e-6``, or after
    ``steps`` iterations.
    """

    beta: float | None = None
    beta0: float = 0.25
    lr: float = 0.01
    steps: int = 1000
    opacity: float = 0.3
    tol: float = 1e-6
    backtrack: bool = True

    def __post_init__(self) -> None:
        for name in ("lr", "beta0", "tol"):
            _check_positive(name, getattr(self, name))
        if self.beta is not None:
            _check_positive("beta", self.beta)
        check_int("steps", self.steps, 1)
        if not isinstance(self.backtrack, bool):
            raise invalid("backtrack", self.backtrack, "True or False", cls=RampartsTypeError)
        opacity = self.opacity
        if isinstance(opacity, bool) or not isinstance(opacity, int | float) or not 0.0 <= opacity <= 1.0:
            raise invalid(
                "opacity", opacity, "a number in [0, 1]", "use 0.3 as in the paper, or 0 for no watermark"
            )

    def config(self) -> dict[str, Any]:
        """The hyperparameters, JSON-ready."""
        return {
            "beta": self.beta,
            "beta0": self.beta0,
            "lr": self.lr,
            "steps": self.steps,
            "opacity": self.opacity,
            "tol": self.tol,
            "backtrack": self.backtrack,
        }

    def craft(
        self, features: nn.Module, targets: Tensor, bases: Tensor, *, seed: int = 0, progress: bool = False
    ) -> FrogsCraft:
        """One poison per row of ``bases``, colliding with the same row of ``targets``; all pairs step together.

        ``features`` is the frozen feature extractor (see :func:`penultimate`); it is put in eval
        mode for the call and its weights are not changed. Crafting is deterministic; ``seed`` is
        recorded for the result.
        """
        _check_images("targets", targets)
        _check_images("bases", bases)
        if targets.shape != bases.shape:
            raise invalid(
                "bases",
                tuple(bases.shape),
                f"the shape of targets {tuple(targets.shape)} (one base per target)",
                "pass as many bases as targets, of the same image size",
            )
        device = _device_of(features)
        was_training = features.training
        features.eval()
        try:
            return self._craft(features, targets.to(device), bases.to(device), seed, progress)
        finally:
            features.train(was_training)

    @staticmethod
    def _objective(
        features: nn.Module, x: Tensor, target_feat: Tensor, anchor: Tensor, beta: float
    ) -> tuple[Tensor, Tensor]:
        """Per-pair ||f(x) - f(t)||^2 + beta*||x - b||^2 and the gradient of its feature term."""
        x = x.detach().requires_grad_(True)
        feat = (features(x).flatten(1) - target_feat).pow(2).sum(dim=1)
        (grad,) = torch.autograd.grad(feat.sum(), x)
        with torch.no_grad():
            obj = feat + beta * (x - anchor).flatten(1).pow(2).sum(dim=1)
        return obj.detach(), grad

    def _craft(
        self, features: nn.Module, targets: Tensor, bases: Tensor, seed: int, progress: bool
    ) -> FrogsCraft:
        with torch.no_grad():
            target_feat = features(targets).flatten(1)
            before = (features(bases).flatten(1) - target_feat).norm(dim=1)
        input_dim = targets[0].numel()
        beta = self.beta if self.beta is not None else self.beta0 * (target_feat.shape[1] / input_dim) ** 2
        anchor = self.opacity * targets + (1.0 - self.opacity) * bases
        x = anchor.clone()
        obj, grad = self._objective(features, x, target_feat, anchor, beta)
        lr = torch.full((x.shape[0],), float(self.lr), device=x.device)
        steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        with _progress(progress) as bar:
            task = bar.add_task("Poison Frogs", total=self.steps)
            for _ in range(self.steps):
                cur, step = x[active], lr[active].view(-1, 1, 1, 1)
                with torch.no_grad():
                    forward = cur - step * grad[active]
                    new = ((forward + step * beta * anchor[active]) / (1.0 + step * beta)).clamp_(0.0, 1.0)
                new_obj, new_grad = self._objective(features, new, target_feat[active], anchor[active], beta)
                with torch.no_grad():
                    keep = (
                        new_obj <= obj[active]
                        if self.backtrack
                        else torch.ones_like(new_obj, dtype=torch.bool)
                    )
                    change = (new - cur).flatten(1).norm(dim=1) / cur.flatten(1).norm(dim=1).clamp_min(1e-12)
                    moved = active[keep]
                    x[moved], obj[moved], grad[moved] = new[keep], new_obj[keep], new_grad[keep]
                    lr[active[~keep]] *= 0.5
                    steps[active] += 1
                    done = (keep & (change < self.tol)) | (lr[active] < self.lr * _MIN_LR_FACTOR)
                    active = active[~done]
                bar.advance(task)
                if active.numel() == 0:
                    break
        with torch.no_grad():
            after = (features(x).flatten(1) - target_feat).norm(dim=1)
            delta = (x - bases).flatten(1)
        logger.info(
            "Poison Frogs: %d pairs, feature distance %.4g -> %.4g (mean), %d steps max",
            x.shape[0],
            float(before.mean()),
            float(after.mean()),
            int(steps.max()),
        )
        return FrogsCraft(
            poisons=x.detach(),
            feature_before=before,
            feature_after=after,
            steps=steps,
            l2=delta.norm(dim=1),
            linf=delta.abs().amax(dim=1),
            target_l2=(targets - bases).flatten(1).norm(dim=1),
            beta=float(beta),
            config=self.config(),
            seed=seed,
        )


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(name, value, "a number > 0", cls=RampartsTypeError)
    if not math.isfinite(value) or value <= 0:
        raise invalid(name, value, "a finite number > 0", f"pass a positive {name}")


def _check_images(name: str, x: object) -> None:
    if not isinstance(x, Tensor):
        raise invalid(name, type(x).__name__, "a torch.Tensor [N, C, H, W]", cls=RampartsTypeError)
    if x.ndim != 4 or x.shape[0] == 0 or not x.dtype.is_floating_point:
        raise invalid(
            name, f"{x.dtype} tensor of shape {tuple(x.shape)}", "a non-empty float tensor [N, C, H, W]"
        )


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    """A rich progress bar on stderr; a silent one when ``enabled`` is False."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    ) as bar:
        yield bar
