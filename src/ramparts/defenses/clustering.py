"""Activation clustering: find backdoor poison by splitting each class's activations in two.

Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy and Srivastava, "Detecting Backdoor Attacks on
Deep Neural Networks by Activation Clustering" (AAAI SafeAI workshop 2019, arXiv:1811.03728). For each
class, the last hidden layer's activations are reduced to ``n_components`` dimensions (the paper:
FastICA to 10), split by 2-means, and the split is judged: a poisoned class holds two kinds of inputs
the network separates well (the real class and the triggered other classes), so its smaller cluster is
small (relative size, ``criterion="size"``) and well separated (``criterion="silhouette"``). Records of
a class judged poisoned that fall in its smaller cluster are flagged.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from torch import Tensor, nn

from ramparts.data import Dataset
from ramparts.defenses.detection import DetectionResult
from ramparts.defenses.features import check_expected_fraction, class_features
from ramparts.errors import RampartsTypeError, check_int, invalid, unknown

__all__ = ["CRITERIA", "REDUCTIONS", "activation_clustering"]

logger = logging.getLogger(__name__)

CRITERIA: tuple[str, ...] = ("size", "silhouette")
REDUCTIONS: tuple[str, ...] = ("ica", "pca")
# Silhouettes are computed on at most this many records of a class (a seeded sample): the score is O(n^2).
_SILHOUETTE_SAMPLE = 2000


def activation_clustering(
    model: nn.Module,
    data: Dataset,
    *,
    layer: str | None = None,
    expected_fraction: float,
    n_components: int = 10,
    criterion: str = "size",
    reduction: str = "ica",
    size_factor: float = 1.5,
    silhouette_threshold: float = 0.25,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> DetectionResult:
    """Flag the smaller 2-means cluster of each class whose split looks like poison.

    ``expected_fraction`` (in (0, 0.5)): an upper bound on the share of poison among one class's
    records. ``criterion="size"``: the smaller cluster is poison when its relative size is at most
    ``min(size_factor * expected_fraction, 0.5)`` (at 0.5 every class is judged poisoned, which is
    logged as a warning); ``"silhouette"``: when the split's silhouette score exceeds
    ``silhouette_threshold`` (0.25 is a heuristic: in benchmarks/backdoor_detection.py the target class
    measured 0.12-0.36 with ICA and clean classes up to 0.26, so no fixed value separates them). ``reduction``: ``"ica"`` (FastICA, the paper) or ``"pca"``.
    FastICA, k-means (10 restarts) and the silhouette sample all use ``seed``.

    Score of a record: one minus the relative size of its cluster, so the members of a small cluster
    score high; it is comparable across classes. ``extra["per_class"]`` holds, per class, both cluster
    sizes, the smaller one's relative size, the silhouette score and whether the class was judged
    poisoned. Classes with fewer than 3 records are not analysed (nothing to split).
    """
    fraction = check_expected_fraction(expected_fraction)
    check_int("n_components", n_components, 1)
    check_int("seed", seed, 0)
    if criterion not in CRITERIA:
        raise unknown("criterion", criterion, CRITERIA)
    if reduction not in REDUCTIONS:
        raise unknown("reduction", reduction, REDUCTIONS)
    for param, value in (("size_factor", size_factor), ("silhouette_threshold", silhouette_threshold)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise invalid(param, value, "a finite number", cls=RampartsTypeError)
    if size_factor < 1.0:
        raise invalid("size_factor", size_factor, "a number >= 1", "use the default 1.5")
    if not -1.0 <= silhouette_threshold <= 1.0:
        raise invalid(
            "silhouette_threshold", silhouette_threshold, "a silhouette score in [-1, 1]", "try 0.25"
        )
    size_threshold = min(size_factor * fraction, 0.5)
    if criterion == "size" and size_threshold >= 0.5:
        logger.warning(
            "size_factor * expected_fraction = %.3g >= 0.5: every class's smaller cluster counts as poison; "
            "lower expected_fraction or use criterion='silhouette'",
            size_factor * fraction,
        )
    name, feats, per_class_idx = class_features(
        model, data, layer=layer, classes=classes, batch_size=batch_size
    )
    scores = torch.zeros(len(data))
    flagged = torch.zeros(len(data), dtype=torch.bool)
    per_class: dict[str, dict[str, Any]] = {}
    for label, idx in per_class_idx.items():
        if idx.numel() < 3:
            per_class[str(label)] = {"n": int(idx.numel()), "poisoned": False}
            continue
        assign, silhouette = _split(feats[idx], n_components, reduction, seed)
        sizes = torch.bincount(assign, minlength=2)
        small = int(sizes.argmin())
        relative = float(sizes[small]) / idx.numel()
        poisoned = relative <= size_threshold if criterion == "size" else silhouette > silhouette_threshold
        scores[idx] = 1.0 - sizes[assign].float() / idx.numel()
        if poisoned:
            flagged[idx[assign == small]] = True
        per_class[str(label)] = {
            "n": int(idx.numel()),
            "cluster_sizes": [int(s) for s in sizes],
            "relative_size": relative,
            "silhouette": silhouette,
            "poisoned": bool(poisoned),
        }
    config = {
        "layer": name,
        "expected_fraction": fraction,
        "n_components": n_components,
        "criterion": criterion,
        "reduction": reduction,
        "size_threshold": size_threshold,
        "silhouette_threshold": float(silhouette_threshold),
        "classes": sorted(per_class_idx),
        "seed": seed,
    }
    return DetectionResult(
        method="activation_clustering",
        config=config,
        flagged=flagged,
        scores=scores,
        extra={"per_class": per_class},
    )


def _split(feats: Tensor, n_components: int, reduction: str, seed: int) -> tuple[Tensor, float]:
    """2-means cluster labels of one class's features after the reduction, and the split's silhouette score."""
    centred = feats.double() - feats.double().mean(dim=0)
    # dead units (constant activations) leave the features rank-deficient; FastICA's whitening needs full rank
    dims = min(n_components, int(torch.linalg.matrix_rank(centred)))
    if dims == 0:
        return torch.zeros(feats.shape[0], dtype=torch.long), 0.0
    reduced = _reduce(centred.numpy(), dims, reduction, seed)
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(reduced)
    if len(np.unique(labels)) < 2:
        return torch.zeros(feats.shape[0], dtype=torch.long), 0.0
    sample = min(feats.shape[0], _SILHOUETTE_SAMPLE)
    silhouette = float(silhouette_score(reduced, labels, sample_size=sample, random_state=seed))
    return torch.from_numpy(labels.astype(np.int64)), silhouette


def _reduce(x: np.ndarray, dims: int, reduction: str, seed: int) -> np.ndarray:
    """``x`` reduced to ``dims`` columns by FastICA (unit-variance sources) or PCA.

    FastICA can break down (a source of zero variance, NaN unmixing; seen on small, barely trained
    classes); then the whitened PCA projection, FastICA's own starting point, is used and a warning logged.
    """
    if reduction == "pca":
        return np.asarray(PCA(n_components=dims, random_state=seed).fit_transform(x))
    with warnings.catch_warnings():
        # FastICA may stop at max_iter on a class with little structure; its output is still a usable basis.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # the division by a zero source std, handled below
        try:
            ica = FastICA(n_components=dims, whiten="unit-variance", max_iter=1000, random_state=seed)
            reduced = np.asarray(ica.fit_transform(x))
        except ValueError:
            reduced = np.full((x.shape[0], dims), np.nan)
    if np.isfinite(reduced).all():
        return reduced
    logger.warning("FastICA broke down on %d records; using the whitened PCA projection instead", x.shape[0])
    return np.asarray(PCA(n_components=dims, whiten=True, random_state=seed).fit_transform(x))
