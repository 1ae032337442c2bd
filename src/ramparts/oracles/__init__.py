"""Model back-ends behind the access-level views: torch, scikit-learn (ONNX and HTTP come later)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ramparts.errors import RampartsTypeError, invalid
from ramparts.oracles.base import Knowledge, Oracle
from ramparts.oracles.sklearn import SklearnOracle
from ramparts.oracles.torch import TorchOracle

__all__ = ["Knowledge", "Oracle", "SklearnOracle", "TorchOracle", "as_oracle"]


def as_oracle(target: Any, input_shape: tuple[int, ...] | None = None) -> Oracle:
    """An Oracle as is; an `nn.Module` wrapped in `TorchOracle` (no normalisation); an estimator in
    `SklearnOracle`. `input_shape` lets a module's number of classes be probed."""
    if isinstance(target, Oracle):
        return target
    if isinstance(target, nn.Module):
        return TorchOracle(target, input_shape=input_shape)
    if hasattr(target, "predict"):
        return SklearnOracle(target, input_shape=input_shape)
    raise invalid(
        "target", target, "an Oracle, a TorchOracle-wrapped module or an estimator", cls=RampartsTypeError
    )
