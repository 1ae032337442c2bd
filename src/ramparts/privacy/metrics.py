"""How well membership scores separate members (label 1) from non-members (label 0).

The numbers that matter (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022)
are the true-positive rates at very low false-positive rates, not only the AUC: an attack that
identifies a few members with certainty is a real privacy failure even at AUC 0.5. Every rate comes
with a percentile bootstrap confidence interval over the records. A rate at an FPR below 1/(number of
non-members) cannot be resolved and is reported as None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor

from ramparts.errors import RampartsTypeError, invalid

__all__ = ["DEFAULT_FPRS", "check_members", "membership_metrics", "roc", "tpr_at_fpr"]

DEFAULT_FPRS: tuple[float, ...] = (0.01, 0.001, 0.0001)


def check_members(members: Tensor, n: int) -> Tensor:
    """`members` as a bool tensor of length `n` (1/True = member), holding both classes."""
    if not isinstance(members, Tensor):
        raise invalid("members", type(members).__name__, "a tensor of 0/1 or bools", cls=RampartsTypeError)
    m = members.detach().cpu()
    if m.dtype != torch.bool:
        if bool(((m != 0) & (m != 1)).any()):
            raise invalid("members", "values other than 0/1", "1 for members, 0 for non-members")
        m = m.bool()
    if m.shape != (n,):
        raise invalid("members", tuple(m.shape), f"one label per record, shape ({n},)")
    if bool(m.all()) or not bool(m.any()):
        raise invalid("members", "one class only", "both members (1) and non-members (0)")
    return m


def roc(scores: Tensor, members: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve; higher scores mean 'member'."""
    s, m = _arrays(scores, members)
    fpr, tpr, _ = roc_curve(m, s)
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The best TPR among thresholds whose FPR is at most `target` (Carlini et al.'s convention)."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_metrics(
    scores: Tensor,
    members: Tensor,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC, balanced accuracy (at the best threshold) and TPR at each FPR, with 95% bootstrap intervals."""
    s, m = _arrays(scores, members)
    n_out = int((m == 0).sum())
    point = _point(s, m, fprs, n_out)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {k: [] for k in point if point[k] is not None}
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(s), len(s))
        if m[pick].min() == m[pick].max():
            continue
        for k, v in _point(s[pick], m[pick], fprs, n_out).items():
            if k in boot and v is not None:
                boot[k].append(v)
    ci = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in boot.items() if v}
    fpr, tpr = roc(torch.from_numpy(s), torch.from_numpy(m))
    return {
        **point,
        "ci95": ci,
        "n_members": int(m.sum()),
        "n_non_members": n_out,
        "n_bootstrap": n_bootstrap,
        "roc": _thin(fpr, tpr),
    }


def _point(s: np.ndarray, m: np.ndarray, fprs: Sequence[float], n_out: int) -> dict[str, float | None]:
    fpr, tpr, _ = roc_curve(m, s)
    out: dict[str, float | None] = {
        "auc": float(roc_auc_score(m, s)),
        "balanced_accuracy": float(((tpr + 1 - fpr) / 2).max()),
    }
    for f in fprs:
        out[f"tpr@{f:g}"] = tpr_at_fpr(fpr, tpr, f) if f * n_out >= 1 else None
    return out


def _arrays(scores: Tensor, members: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(scores, Tensor) or scores.ndim != 1:
        given = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise invalid("scores", given, "a 1-D tensor, one score per record", cls=RampartsTypeError)
    s = scores.detach().cpu().double().numpy()
    if not np.isfinite(s).all():
        raise invalid("scores", "NaN or infinite values", "finite scores")
    return s, check_members(members, len(s)).numpy().astype(np.int64)


def _thin(fpr: np.ndarray, tpr: np.ndarray, points: int = 400) -> list[list[float]]:
    """At most ~`points` ROC points, spaced evenly on a log FPR axis (for the log-log plot and JSON)."""
    if len(fpr) <= points:
        return [[float(a), float(b)] for a, b in zip(fpr, tpr, strict=True)]
    grid = np.unique(np.concatenate([[0.0], np.geomspace(max(fpr[fpr > 0].min(), 1e-6), 1.0, points)]))
    idx = np.unique(np.searchsorted(fpr, grid, side="right") - 1)
    return [[float(fpr[i]), float(tpr[i])] for i in idx]
