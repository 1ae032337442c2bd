"""What a training-set sanitiser returns: which records it flags, and how well that matches the truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ramparts.errors import RampartsTypeError, invalid

__all__ = ["DetectionResult"]


@dataclass(frozen=True)
class DetectionResult:
    """One sanitiser's verdict on a training set.

    `flagged[i]`: record i is removed as suspected poison. `scores[i]`: its outlier score (higher = more
    suspicious; the flag is a threshold or a top-k of it). `method` and `config` say how it was found.
    """

    method: str
    config: dict[str, Any]
    flagged: Tensor
    scores: Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.flagged, Tensor)
            or self.flagged.dtype != torch.bool
            or self.flagged.dim() != 1
        ):
            raise invalid("flagged", self.flagged, "a 1-D bool tensor", cls=RampartsTypeError)
        if not isinstance(self.scores, Tensor) or self.scores.shape != self.flagged.shape:
            raise invalid("scores", self.scores, f"a tensor of shape {tuple(self.flagged.shape)}")

    def metrics(self, poison: Tensor) -> dict[str, float | int]:
        """Recall (poisons flagged), clean-data false-positive rate (clean records flagged) and precision.

        `poison`: the truth, a bool tensor over the same records (True = poison).
        """
        if not isinstance(poison, Tensor) or poison.dtype != torch.bool or poison.shape != self.flagged.shape:
            raise invalid("poison", poison, f"a bool tensor of shape {tuple(self.flagged.shape)}")
        flagged = self.flagged.cpu()
        truth = poison.cpu()
        hits = int((flagged & truth).sum())
        n_poison, n_clean, n_flagged = int(truth.sum()), int((~truth).sum()), int(flagged.sum())
        return {
            "recall": hits / n_poison if n_poison else float("nan"),
            "clean_fpr": int((flagged & ~truth).sum()) / n_clean if n_clean else float("nan"),
            "precision": hits / n_flagged if n_flagged else float("nan"),
            "flagged": n_flagged,
            "poisons": n_poison,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "config": self.config,
            "flagged": int(self.flagged.sum()),
            **self.extra,
        }
