"""Feature squeezing: bit-depth reduction, median smoothing, and the detector that compares predictions.

Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018.
A squeezer removes detail an adversary relies on; an input whose prediction moves a lot under
squeezing is flagged. Both squeezers are also plain :class:`Transform` s for ``DefendedModel``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.defenses.adaptive import BPDA
from ramparts.defenses.base import DefendedModel, Detector, Transform
from ramparts.errors import RampartsTypeError, check_int, invalid

__all__ = ["BitDepth", "MedianFilter", "SqueezeDetector", "feature_squeezing"]


class BitDepth(Transform):
    """Reduce inputs in [0, 1] to ``bits`` bits per value: ``round(x (2^b - 1)) / (2^b - 1)`` (Xu et al. 2018).

    Rounding has zero gradient almost everywhere, hence ``differentiable = False`` (an adaptive attack
    uses BPDA, e.g. the identity, for its backward pass).
    """

    differentiable = False

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = check_int("bits", bits, 1)
        self.levels = 2**self.bits - 1

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x.clamp(0.0, 1.0) * self.levels) / self.levels


class MedianFilter(Transform):
    """Median over a ``size`` x ``size`` window per channel, edges replicated (Xu et al. 2018).

    ``size`` must be odd so that the window is centred; the median is piecewise a selection and
    masks gradients, hence ``differentiable = False``.
    """

    differentiable = False

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = check_int("size", size, 1)
        if size % 2 == 0:
            raise invalid("size", size, "an odd window size (1, 3, 5, ...)", f"use {size + 1} or {size - 1}")

    def forward(self, x: Tensor) -> Tensor:
        if self.size == 1:
            return x
        n, c, h, w = x.shape
        r = self.size // 2
        padded = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
        windows = F.unfold(padded, self.size)  # [n*c, size*size, h*w]
        return windows.median(dim=1).values.reshape(n, c, h, w)


class SqueezeDetector(Detector):
    """Score = max over squeezers of ``||softmax(f(x)) - softmax(f(squeeze(x)))||_1`` (Xu et al. 2018).

    Differentiable in ``x`` through the unsqueezed branch (and through each squeezer's own gradient,
    zero for bit depth); calibrate with :meth:`calibrate` at a stated false-positive rate.
    """

    def __init__(self, classifier: nn.Module, squeezers: Sequence[Transform]) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise invalid("classifier", type(classifier).__name__, "an nn.Module", cls=RampartsTypeError)
        if isinstance(squeezers, nn.Module) or not isinstance(squeezers, Sequence) or not squeezers:
            raise invalid(
                "squeezers",
                squeezers,
                "a non-empty sequence of Transforms",
                "e.g. [BitDepth(1), MedianFilter(3)]",
            )
        for i, s in enumerate(squeezers):
            if not isinstance(s, Transform):
                raise invalid(f"squeezers[{i}]", type(s).__name__, "a Transform", cls=RampartsTypeError)
        self.classifier = classifier
        self.squeezers = nn.ModuleList(squeezers)

    def attack_view(self) -> SqueezeDetector:
        """The same detector with each non-differentiable squeezer (bit depth, median) behind BPDA, so an
        adaptive attack gets gradients through every branch (Athalye et al. 2018); the threshold is kept."""
        squeezers = [s if s.differentiable else BPDA(s) for s in self.squeezers if isinstance(s, Transform)]
        view = SqueezeDetector(self.classifier, squeezers)
        view.threshold = self.threshold
        return view

    def score(self, x: Tensor) -> Tensor:
        p = F.softmax(self.classifier(x), dim=1)
        dists = [(p - F.softmax(self.classifier(s(x)), dim=1)).abs().sum(dim=1) for s in self.squeezers]
        return torch.stack(dists, dim=1).amax(dim=1)


def feature_squeezing(
    classifier: nn.Module,
    val_data: Dataset,
    *,
    squeezers: Sequence[Transform] | None = None,
    fpr: float = 0.05,
) -> DefendedModel:
    """``classifier`` with a :class:`SqueezeDetector` calibrated at ``fpr`` on clean ``val_data``.

    Default squeezers: 1-bit depth and a 3x3 median, near the paper's MNIST choice (it used a 2x2
    median, which has no centre; here windows are odd). The classifier sees the raw input, as in the paper.
    """
    if not isinstance(val_data, Dataset):
        raise invalid("val_data", type(val_data).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
    detector = SqueezeDetector(
        classifier, squeezers if squeezers is not None else [BitDepth(1), MedianFilter(3)]
    )
    classifier.eval()
    device = next(classifier.parameters(), torch.empty(0)).device
    detector.calibrate(val_data.x.to(device), fpr)
    return DefendedModel(classifier, detectors=[detector])
