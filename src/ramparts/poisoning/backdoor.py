"""BadNets backdoor (Gu et al. 2017, "BadNets: Identifying vulnerabilities in the machine learning model
supply chain"): a small trigger patch is stamped on a share of the training images, which are relabelled
to the attacker's class; the trained model behaves normally on clean inputs and obeys the trigger.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, check_int, invalid, unknown
from ramparts.poisoning.base import POISONING, PoisoningAttack, choose, relabel

__all__ = ["PATTERNS", "POSITIONS", "BadNets"]

POSITIONS: tuple[str, ...] = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
PATTERNS: tuple[str, ...] = ("square", "checkerboard")


@POISONING.register("badnets")
class BadNets(PoisoningAttack):
    """BadNets (Gu et al. 2017): stamp a ``patch_size`` x ``patch_size`` trigger and relabel to ``target_class``.

    ``pattern="square"`` fills the patch with ``value``; ``"checkerboard"`` alternates ``value`` and
    ``1 - value`` (its top-left cell is ``value``). The patch sits flush in the corner named by
    ``position`` (or the centre), on every channel. Only records whose label is not ``target_class``
    are poisoned, so every poison teaches the trigger; the set size is unchanged.

    Gu, Dolan-Gavitt and Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain", 2017.
    """

    def __init__(
        self,
        *,
        target_class: int = 0,
        patch_size: int = 3,
        position: str = "bottom-right",
        value: float = 1.0,
        pattern: str = "square",
    ) -> None:
        super().__init__()
        self.target_class = check_int("target_class", target_class, 0)
        self.patch_size = check_int("patch_size", patch_size, 1)
        if position not in POSITIONS:
            raise unknown("position", position, POSITIONS)
        if pattern not in PATTERNS:
            raise unknown("pattern", pattern, PATTERNS)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid("value", value, "a pixel value in [0, 1]", cls=RampartsTypeError)
        if not 0.0 <= value <= 1.0:
            raise invalid("value", value, "a pixel value in [0, 1]", "use 1.0 for a white patch")
        self.position = position
        self.value = float(value)
        self.pattern = pattern

    def apply_trigger(self, x: Tensor) -> Tensor:
        """A copy of the batch ``x`` [N, C, H, W] with the trigger stamped on every image."""
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise invalid("x", getattr(x, "shape", type(x).__name__), "a 4-D tensor [N, C, H, W]")
        h, w = int(x.shape[2]), int(x.shape[3])
        p = self.patch_size
        if p > h or p > w:
            raise invalid(
                "patch_size",
                p,
                f"at most the image size {h}x{w}",
                f"pass patch_size <= {min(h, w)}",
            )
        top = {"top": 0, "bottom": h - p}.get(self.position.split("-")[0], (h - p) // 2)
        left = {"left": 0, "right": w - p}.get(self.position.split("-")[-1], (w - p) // 2)
        out = x.clone()
        out[:, :, top : top + p, left : left + p] = self._patch().to(device=x.device, dtype=x.dtype)
        return out

    def _patch(self) -> Tensor:
        p = self.patch_size
        if self.pattern == "square":
            return torch.full((p, p), self.value)
        parity = (torch.arange(p)[:, None] + torch.arange(p)[None, :]) % 2 == 0
        return torch.where(parity, torch.tensor(self.value), torch.tensor(1.0 - self.value))

    def _run(self, train: Dataset, n_poison: int, gen: torch.Generator) -> tuple[Dataset, Tensor]:
        if self.target_class >= train.num_classes:
            raise invalid(
                "target_class",
                self.target_class,
                f"a class index in [0, {train.num_classes - 1}]",
                "pick one of the training set's classes",
            )
        self.apply_trigger(train.x[:1])  # checks the patch fits before choosing anything
        candidates = (train.y.cpu() != self.target_class).nonzero().flatten()
        if candidates.numel() < n_poison:
            raise invalid(
                "fraction",
                f"{n_poison} poisons",
                f"at most {candidates.numel()} (records not of class {self.target_class})",
                "lower the fraction",
            )
        idx = choose(candidates, n_poison, gen)
        stamped = self.apply_trigger(train.x[idx.to(train.x.device)])
        labels = torch.full((n_poison,), self.target_class, dtype=torch.int64)
        return relabel(train, idx, labels, x=stamped)
