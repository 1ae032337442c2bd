"""Spectral signatures: find backdoor poison in a training set from the model's own representations.

Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks" (NeurIPS 2018), Algorithm 1. A backdoor
leaves a trace in the learned representation of the target class: the poisoned records and the clean
ones differ along one direction, which then dominates the covariance of the class. For each class,
the representations R (one row per record) are centred, the top right singular vector v of the
centred matrix is computed, and each record scores ``((R_i - mean) . v)^2``; the top
``removal_factor * expected_fraction * n_class`` records of every class are removed (the paper uses
1.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ramparts.data import Dataset
from ramparts.defenses.detection import DetectionResult
from ramparts.defenses.features import check_expected_fraction, class_features
from ramparts.errors import RampartsTypeError, invalid

__all__ = ["spectral_signatures"]


def spectral_signatures(
    model: nn.Module,
    data: Dataset,
    *,
    layer: str | None = None,
    expected_fraction: float,
    removal_factor: float = 1.5,
    classes: Sequence[int] | None = None,
    batch_size: int = 256,
) -> DetectionResult:
    """Flag the records whose representation projects furthest along their class's top singular vector.

    ``model`` is the network trained on ``data`` (the possibly poisoned set, labels as given). ``layer``:
    see :mod:`ramparts.defenses.features`, default the input of the last ``nn.Linear``.
    ``expected_fraction``: an upper bound on the share of poison among one class's records (the
    paper's epsilon), in (0, 0.5). In each analysed class (``classes``, default every label present),
    ``min(n_class, ceil(removal_factor * expected_fraction * n_class))`` records are flagged.

    Scores are the squared projections. They are comparable within a class only: their scale is the
    class's top singular value squared over ``n_class``, which differs from class to class, so a global
    threshold over them is not meaningful. Records of classes left out score 0 and are never flagged.
    ``extra["per_class"]`` holds, per class, the record count, the flags and the share of the class's
    variance along the signature direction (high when one direction dominates, as poison makes it).
    """
    fraction = check_expected_fraction(expected_fraction)
    if isinstance(removal_factor, bool) or not isinstance(removal_factor, int | float):
        raise invalid("removal_factor", removal_factor, "a number >= 1", cls=RampartsTypeError)
    if removal_factor < 1.0 or removal_factor * fraction > 1.0 or not math.isfinite(removal_factor):
        raise invalid(
            "removal_factor",
            removal_factor,
            f"a number >= 1 with removal_factor * expected_fraction <= 1 (expected_fraction={fraction})",
            "use the paper's 1.5",
        )
    name, feats, per_class_idx = class_features(
        model, data, layer=layer, classes=classes, batch_size=batch_size
    )
    feats = feats.double()
    scores = torch.zeros(len(data), dtype=torch.float64)
    flagged = torch.zeros(len(data), dtype=torch.bool)
    per_class: dict[str, dict[str, float | int]] = {}
    for label, idx in per_class_idx.items():
        n = int(idx.numel())
        k = min(n, math.ceil(removal_factor * fraction * n))
        if n < 2:
            per_class[str(label)] = {"n": n, "flagged": 0, "top_variance_share": float("nan")}
            continue
        centred = feats[idx] - feats[idx].mean(dim=0)
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        class_scores = (centred @ vh[0]) ** 2
        scores[idx] = class_scores
        flagged[idx[torch.topk(class_scores, k).indices]] = True
        energy = float((singular**2).sum())
        per_class[str(label)] = {
            "n": n,
            "flagged": k,
            "top_variance_share": float(singular[0] ** 2) / energy if energy > 0 else 0.0,
        }
    config = {
        "layer": name,
        "expected_fraction": fraction,
        "removal_factor": float(removal_factor),
        "classes": sorted(per_class_idx),
    }
    return DetectionResult(
        method="spectral_signatures",
        config=config,
        flagged=flagged,
        scores=scores.float(),
        extra={"per_class": per_class},
    )
