"""What every model back-end offers: the most knowledge it can give and batched evaluation."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def log_probabilities(probs: Tensor) -> Tensor:
    """Log of (renormalised) class probabilities, floored at float32's smallest normal number.

    A floor keeps margins finite (log 0 = -inf would turn them into NaN) without distorting them as a
    coarse floor such as 1e-12 (log = -27.6) would.
    """
    return (probs / probs.sum(dim=1, keepdim=True)).clamp_min(torch.finfo(torch.float32).tiny).log()


class Knowledge(enum.IntEnum):
    """Access levels, ordered: a gradient oracle can also answer score and label queries."""

    LABEL = 0
    SCORE = 1
    GRADIENT = 2

    @classmethod
    def parse(cls, value: str | Knowledge) -> Knowledge:
        if isinstance(value, Knowledge):
            return value
        return cls[value.upper()]


class Oracle(ABC):
    """A model behind an API: labels always, scores and gradients where the back-end has them."""

    knowledge: Knowledge
    num_classes: int
    device: torch.device
    input_shape: tuple[int, ...] | None
    # How far below zero a margin must be, relative to the largest |logit|, before early stopping trusts a
    # success: 0 for exact arithmetic; a reduced-precision forward (bf16) sets its rounding slack.
    decision_tolerance: float = 0.0

    def logits(self, x: Tensor) -> Tensor:
        """Differentiable logits (gradient oracles only)."""
        raise NotImplementedError(f"{type(self).__name__} has no gradients")

    def log_probs(self, x: Tensor) -> Tensor:
        """Class log-probabilities without gradient (score oracles and above)."""
        raise NotImplementedError(f"{type(self).__name__} has no scores")

    @abstractmethod
    def labels(self, x: Tensor) -> Tensor:
        """Predicted classes."""

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Put the model in inference mode for the duration, restoring its previous mode."""
        yield
