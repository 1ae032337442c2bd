"""What every defence against adversarial examples plugs into: input transforms, detectors, and the defended
model that composes them with a classifier and is itself a model (attackable, servable, auditable).

A *transform* is an ``nn.Module`` from inputs to inputs (a reformer, a squeezer, a quantiser). It says
whether its forward pass has useful gradients (``differentiable``) and whether it is random
(``randomized``); an adaptive attack reads those flags to choose BPDA or EOT. A *detector* scores inputs
(higher = more likely adversarial) and flags those above its threshold, which is chosen at a stated
false-positive rate on clean data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ramparts.errors import RampartsTypeError, invalid

__all__ = ["DefendedModel", "Detector", "Transform", "threshold_at_fpr"]


class Transform(nn.Module):
    """An input transformation applied before the classifier; subclasses implement ``forward``."""

    differentiable: bool = True
    randomized: bool = False


class Detector(nn.Module, ABC):
    """Scores inputs: higher = more likely adversarial. ``threshold`` is set by :meth:`calibrate`."""

    threshold: float | None = None

    @abstractmethod
    def score(self, x: Tensor) -> Tensor:
        """One score per input, shape [N]; differentiable where the detector is."""

    def attack_view(self) -> Detector:
        """The detector as an adaptive attack differentiates it: the same scores and threshold, with any
        non-differentiable part replaced by a gradient approximation (BPDA). Default: the detector itself."""
        return self

    def calibrate(self, clean: Tensor, fpr: float) -> float:
        """Set and return the threshold that flags a share ``fpr`` of the ``clean`` inputs."""
        with torch.no_grad():
            scores = self.score(clean)
        self.threshold = threshold_at_fpr(scores, fpr)
        return self.threshold

    def flags(self, x: Tensor) -> Tensor:
        """Bool [N]: the inputs this detector rejects."""
        if self.threshold is None:
            raise invalid(
                "threshold", None, "a calibrated detector", "call calibrate(clean_inputs, fpr) first"
            )
        with torch.no_grad():
            return self.score(x) > self.threshold


def threshold_at_fpr(scores: Tensor, fpr: float) -> float:
    """The score above which a share ``fpr`` (in [0, 1)) of ``scores`` (clean inputs) lies."""
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 <= fpr < 1:
        raise invalid("fpr", fpr, "a false-positive rate in [0, 1)", "e.g. 0.05")
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.numel() == 0:
        raise invalid("scores", scores, "a non-empty 1-D tensor of clean scores", cls=RampartsTypeError)
    return float(torch.quantile(scores.detach().double().cpu(), 1.0 - fpr))


class DefendedModel(nn.Module):
    """``classifier(transforms(x))``, plus detectors that may reject ``x``: a model like any other.

    ``forward`` returns the classifier's logits on the transformed input, so attacks, the gateway and the
    audit use it unchanged; :meth:`rejects` says which inputs the detectors flag (on the raw input).
    """

    def __init__(
        self,
        classifier: nn.Module,
        *,
        transforms: Sequence[Transform] = (),
        detectors: Sequence[Detector] = (),
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise invalid("classifier", type(classifier).__name__, "an nn.Module", cls=RampartsTypeError)
        for name, items, kind in (("transforms", transforms, Transform), ("detectors", detectors, Detector)):
            for i, item in enumerate(items):
                if not isinstance(item, kind):
                    raise invalid(
                        f"{name}[{i}]", type(item).__name__, f"a {kind.__name__}", cls=RampartsTypeError
                    )
        self.classifier = classifier
        self.transforms = nn.ModuleList(transforms)
        self.detectors = nn.ModuleList(detectors)

    @property
    def differentiable(self) -> bool:
        return all(t.differentiable for t in self.transforms)

    @property
    def randomized(self) -> bool:
        return any(t.randomized for t in self.transforms)

    def preprocess(self, x: Tensor) -> Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.preprocess(x))

    def rejects(self, x: Tensor) -> Tensor:
        """Bool [N]: flagged by at least one detector (all False without detectors)."""
        flagged = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for d in self.detectors:
            flagged |= cast(Detector, d).flags(x).to(x.device)
        return flagged
