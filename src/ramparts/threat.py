"""The threat model: what the adversary may change (norm, budget, bounds) and what it wants (goal).

`ThreatModel` is the only place where norms live: attacks call `project` and `distance` and never
write their own clipping. The goal is turned into a per-batch `Criterion` that says, from the
model's class probabilities, which samples the adversary has already won.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor

from ramparts.errors import RampartsTypeError, invalid, unknown

Norm = Literal["linf", "l2", "l0"]
Goal = Literal["confidence", "untargeted", "targeted"]
TargetRule = Literal["least_likely", "random", "second", "given"]

NORMS: tuple[str, ...] = get_args(Norm)
GOALS: tuple[str, ...] = get_args(Goal)
TARGET_RULES: tuple[str, ...] = get_args(TargetRule)

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?\d+)?)\s*/\s*([0-9]*\.?[0-9]+)\s*$")
_PIXELS = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:px|pixels?)\s*$")
# Slack for float round-off when checking that a point lies in the ball.
_TOL = 1e-5


def parse_eps(eps: float | int | str, *, norm: str, bounds: tuple[float, float], pixel_scale: float) -> float:
    """Turn `0.03`, `"8/255"` or `"5px"` (pixel units on a 0..pixel_scale scale) into a float budget.

    For the `l0` norm the budget is a number of pixels, so `"5px"` and `5` both mean five pixels.
    """
    if isinstance(eps, bool):
        raise invalid("eps", eps, "a positive number, 'a/b' or 'Npx'", "pass e.g. 0.3, '8/255' or '5px'.")
    if isinstance(eps, int | float):
        return float(eps)
    if not isinstance(eps, str):
        raise invalid(
            "eps", eps, "a number or a string", "pass e.g. 0.3, '8/255' or '5px'.", cls=RampartsTypeError
        )
    if m := _FRACTION.match(eps):
        den = float(m.group(2))
        if den == 0:
            raise invalid("eps", eps, "a fraction with a non-zero denominator", "write e.g. '8/255'.")
        return float(m.group(1)) / den
    if m := _PIXELS.match(eps):
        pixels = float(m.group(1))
        if norm == "l0":
            return pixels
        return pixels / pixel_scale * (bounds[1] - bounds[0])
    try:
        return float(eps)
    except ValueError:
        raise invalid(
            "eps",
            eps,
            "a number, a fraction 'a/b' or pixel units 'Npx'",
            "write e.g. '0.3', '8/255' or '5px'.",
        ) from None


@dataclass(frozen=True)
class ThreatModel:
    """What the adversary may do and what it wants.

    - `norm`: `linf`, `l2`, or `l0` (number of pixels changed, all channels of a pixel counting once).
    - `eps`: the budget; a float, a fraction string such as `"8/255"`, or pixel units such as `"5px"`,
      read on a `0..pixel_scale` scale (the overview's "M smaller than 5 out of 255").
    - `bounds`: the valid input domain.
    - `goal`: `confidence` (lower the true class's probability below `max_true_confidence`, or by
      `confidence_margin` from its clean value), `untargeted` (any wrong class) or `targeted`.
    - `target`: for `targeted`, how the class is chosen: `least_likely`, `random`, `second` (the
      runner-up class), or `given` (per-sample targets passed to the attack).
    - `min_target_confidence`: for `targeted`, the probability the target class must reach.
    """

    norm: str = "linf"
    eps: float | int | str = 0.3
    bounds: tuple[float, float] = (0.0, 1.0)
    goal: str = "untargeted"
    target: str | None = None
    min_target_confidence: float | None = None
    max_true_confidence: float | None = None
    confidence_margin: float | None = None
    pixel_scale: float = field(default=255.0, repr=False)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise unknown("norm", self.norm, NORMS)
        if self.goal not in GOALS:
            raise unknown("goal", self.goal, GOALS)
        lo, hi = self._check_bounds()
        if not (isinstance(self.pixel_scale, int | float) and self.pixel_scale > 0):
            raise invalid("pixel_scale", self.pixel_scale, "a positive number", "use 255 for 8-bit images.")
        eps = parse_eps(self.eps, norm=self.norm, bounds=(lo, hi), pixel_scale=self.pixel_scale)
        if not math.isfinite(eps) or eps <= 0:
            raise invalid("eps", self.eps, "a finite budget > 0", "give a positive budget such as 8/255.")
        if self.norm == "linf" and eps > hi - lo:
            raise invalid(
                "eps",
                self.eps,
                f"at most the width of bounds ({hi - lo:g}) for linf",
                "a larger budget allows any input; lower it.",
            )
        if self.norm == "l0" and eps != int(eps):
            raise invalid("eps", self.eps, "a whole number of pixels for l0", "pass e.g. 1, 3 or '5px'.")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "bounds", (lo, hi))
        self._check_goal()

    def _check_bounds(self) -> tuple[float, float]:
        b = self.bounds
        ok = isinstance(b, tuple | list) and len(b) == 2 and all(isinstance(v, int | float) for v in b)
        if not ok or not (math.isfinite(b[0]) and math.isfinite(b[1]) and b[0] < b[1]):
            raise invalid(
                "bounds", b, "a pair (low, high) of finite numbers with low < high", "use (0.0, 1.0)."
            )
        return float(b[0]), float(b[1])

    def _check_goal(self) -> None:
        if self.goal == "targeted":
            if self.target is None:
                object.__setattr__(self, "target", "least_likely")
            elif self.target not in TARGET_RULES:
                raise unknown("target", self.target, TARGET_RULES)
        elif self.target is not None or self.min_target_confidence is not None:
            raise invalid(
                "target",
                self.target,
                "None unless goal='targeted'",
                "set goal='targeted' or drop target/min_target_confidence.",
            )
        _check_probability("min_target_confidence", self.min_target_confidence)
        _check_probability("max_true_confidence", self.max_true_confidence)
        _check_probability("confidence_margin", self.confidence_margin)
        conf_args = (self.max_true_confidence, self.confidence_margin)
        if self.goal == "confidence":
            if sum(a is not None for a in conf_args) != 1:
                raise invalid(
                    "max_true_confidence/confidence_margin",
                    conf_args,
                    "exactly one of the two for goal='confidence'",
                    "e.g. max_true_confidence=0.5 (below a level) or confidence_margin=0.3 (drop by a margin).",
                )
        elif any(a is not None for a in conf_args):
            raise invalid(
                "max_true_confidence/confidence_margin",
                conf_args,
                "None unless goal='confidence'",
                "set goal='confidence' or drop these arguments.",
            )

    @property
    def eps_value(self) -> float:
        """The budget as a float (after parsing)."""
        return float(self.eps)

    def with_eps(self, eps: float | str) -> ThreatModel:
        """The same threat model with another budget."""
        return ThreatModel(
            norm=self.norm,
            eps=eps,
            bounds=self.bounds,
            goal=self.goal,
            target=self.target,
            min_target_confidence=self.min_target_confidence,
            max_true_confidence=self.max_true_confidence,
            confidence_margin=self.confidence_margin,
            pixel_scale=self.pixel_scale,
        )

    def describe(self) -> str:
        """A one-line human description, e.g. `linf eps=0.3 (76.5/255) untargeted`."""
        eps = self.eps_value
        if self.norm == "l0":
            budget = f"{int(eps)} pixels"
        else:
            pixels = eps / (self.bounds[1] - self.bounds[0]) * self.pixel_scale
            budget = f"eps={eps:.4g} ({pixels:.3g}/{self.pixel_scale:g})"
        goal = self.goal if self.goal != "targeted" else f"targeted ({self.target})"
        return f"{self.norm} {budget} {goal}"

    def summary(self) -> dict[str, object]:
        """JSON-ready description."""
        return {
            "norm": self.norm,
            "eps": self.eps_value,
            "bounds": list(self.bounds),
            "goal": self.goal,
            "target": self.target,
            "min_target_confidence": self.min_target_confidence,
            "max_true_confidence": self.max_true_confidence,
            "confidence_margin": self.confidence_margin,
        }

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-sample distance in this threat model's norm; for l0 the number of pixels changed."""
        delta = (x_adv - x).flatten(1) if self.norm != "l0" else x_adv - x
        if self.norm == "linf":
            return delta.abs().amax(dim=1) if delta.shape[1] else delta.new_zeros(len(delta))
        if self.norm == "l2":
            return delta.norm(p=2, dim=1)
        return _changed_pixels(delta).flatten(1).sum(dim=1).to(x.dtype)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Nearest point (for l0: the k largest pixel changes kept) inside the ball around `x` and the bounds."""
        lo, hi = self.bounds
        eps = self.eps_value
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-eps, eps)
        elif self.norm == "l2":
            norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            factor = (eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        else:
            delta = _keep_top_pixels(delta, int(eps))
        return (x + delta).clamp(lo, hi)

    def projector(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """`project` onto the ball around a fixed `x`, for loops that project many times.

        For linf the feasible set is a box: its corners are computed once and each projection is a
        single clamp (and exact, with no round trip through `x_adv - x`).
        """
        if self.norm == "linf":
            lo, hi = self.bounds
            lower = (x - self.eps_value).clamp_min(lo)
            upper = (x + self.eps_value).clamp_max(hi)
            return lambda x_adv: torch.clamp(x_adv, lower, upper)
        return lambda x_adv: self.project(x_adv, x)

    def contains(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Per-sample: inside the bounds and the ball (with a small tolerance for round-off)."""
        lo, hi = self.bounds
        in_bounds = ((x_adv >= lo - _TOL) & (x_adv <= hi + _TOL)).flatten(1).all(dim=1)
        slack = 0.0 if self.norm == "l0" else _TOL * max(1.0, self.eps_value)
        return in_bounds & (self.distance(x_adv, x) <= self.eps_value + slack)

    def random_start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A uniformly random point of the ball around `x` (clipped to the bounds); for l2 uniform in the ball."""
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2 * noise - 1) * self.eps_value
        elif self.norm == "l2":
            d = x[0].numel()
            gauss = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            direction = gauss / gauss.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            u = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
            radius = self.eps_value * u.pow(1.0 / d)
            delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
        else:
            raise invalid(
                "norm", self.norm, "linf or l2 for a random start", "use random_start=False for l0."
            )
        return (x + delta).clamp(*self.bounds)


def _check_probability(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise invalid(name, value, "a probability strictly between 0 and 1", "e.g. 0.5.")


def _changed_pixels(delta: Tensor) -> Tensor:
    """Boolean map N x H x W of the pixels (all channels together) that differ."""
    if delta.dim() == 4:
        return (delta.abs() > _TOL).any(dim=1)
    return delta.abs() > _TOL


def _keep_top_pixels(delta: Tensor, k: int) -> Tensor:
    """Zero all but the k pixels with the largest change (pixel magnitude = max over channels)."""
    magnitude = delta.abs().amax(dim=1).flatten(1) if delta.dim() == 4 else delta.abs().flatten(1)
    k = min(k, magnitude.shape[1])
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    keep.scatter_(1, magnitude.topk(k, dim=1).indices, True)
    keep &= magnitude > 0
    mask = keep.view(delta.shape[0], 1, *delta.shape[2:]) if delta.dim() == 4 else keep.view(delta.shape)
    return delta * mask
