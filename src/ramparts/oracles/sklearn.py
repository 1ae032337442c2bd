"""Any scikit-learn-style estimator (`predict_proba` and/or `predict`) as a score or label oracle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ramparts.errors import RampartsTypeError, invalid
from ramparts.oracles.base import Knowledge, Oracle, log_probabilities


class SklearnOracle(Oracle):
    """Wraps an estimator fitted on flattened inputs; offers scores when it has `predict_proba`.

    Inputs are flattened to 2-D numpy for the estimator (the one conversion a non-torch model forces);
    answers come back as tensors on `device`. `labels_only=True` hides the scores even if present.
    """

    def __init__(
        self,
        estimator: Any,
        *,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        labels_only: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        if not hasattr(estimator, "predict"):
            raise invalid(
                "estimator",
                estimator,
                "an object with predict() (and ideally predict_proba())",
                cls=RampartsTypeError,
            )
        self.estimator = estimator
        self.device = torch.device(device)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        has_proba = hasattr(estimator, "predict_proba") and not labels_only
        self.knowledge = Knowledge.SCORE if has_proba else Knowledge.LABEL
        classes = getattr(estimator, "classes_", None)
        if num_classes is None:
            if classes is None:
                raise invalid("num_classes", None, "an integer (the estimator has no classes_)")
            num_classes = len(classes)
        if classes is not None and not np.array_equal(np.asarray(classes), np.arange(len(classes))):
            raise invalid(
                "estimator.classes_", classes, "the classes 0..K-1", "refit with integer labels 0..K-1."
            )
        self.num_classes = num_classes

    def _numpy(self, x: Tensor) -> np.ndarray:
        return x.detach().flatten(1).cpu().numpy()

    @torch.no_grad()
    def log_probs(self, x: Tensor) -> Tensor:
        if self.knowledge < Knowledge.SCORE:
            raise NotImplementedError("this oracle answers labels only")
        proba = np.asarray(self.estimator.predict_proba(self._numpy(x)), dtype=np.float32)
        return log_probabilities(torch.from_numpy(proba).to(self.device))

    @torch.no_grad()
    def labels(self, x: Tensor) -> Tensor:
        pred = np.asarray(self.estimator.predict(self._numpy(x)), dtype=np.int64)
        return torch.from_numpy(pred).to(self.device)
